"""Cluster nodes over an in-memory log, example by example (spec: cluster.md).

Each test drives two or three ``ClusterNode`` through ``cluster_sim`` and
states what every client receives.  ``Cluster.send(..., settle=False)``
leaves the command's entry on its way, so a test can look at the moment
before the log answers.  The exhaustive name race is here too.
"""

from __future__ import annotations

import itertools
import unicodedata

import pytest
from cluster_sim import Cluster, Engine, SimNode

from protocol import (
    Broadcast,
    ChatMachine,
    CloseReason,
    ConnectionClosed,
    ConnectionOpened,
    ConnectionsClosed,
    IdleTimedOut,
    LineReceived,
    LineTooLong,
    ProtocolUsageError,
    ShutdownStarted,
    TelnetOptionRequested,
)
from protocol.cluster import (
    Append,
    ClusterUnavailable,
    LogRead,
    Msg,
    NodeDown,
    NodeExpired,
    NodeStarted,
    NodeUp,
    Phase,
    decode_entry,
    decode_snapshot,
    encode_entry,
    encode_snapshot,
)


def logged_in(cluster: Cluster, *users: tuple[int, str]) -> None:
    """Open each (node, name) as a connection named ``name`` and log it in."""
    for node, name in users:
        cluster.connect(node, name)
        cluster.send(node, name, b"LOGIN " + name.encode())
        assert cluster.received(node, name) == b"OK\n"
        cluster.nodes[node].received.pop(name)
        cluster.nodes[node].replies.pop(name)


def appends(effects) -> list:
    return [decode_entry(e.entry) for e in effects if isinstance(e, Append)]


# -- what a client sees ---------------------------------------------------------------


def test_the_seed_session_across_two_nodes():
    """Naman on node 1, Yudi on node 2: the seed README's transcripts, byte for byte."""
    cluster = Cluster(2)
    cluster.connect(0, "naman")
    cluster.connect(1, "yudi")
    for node, conn, line in [
        (0, "naman", b"LOGIN Naman"),
        (1, "yudi", b"LOGIN Yudi"),
        (0, "naman", b"MSG hi everyone!"),
        (0, "naman", b"MSG how are you?"),
        (1, "yudi", b"MSG hello Naman!"),
        (0, "naman", b"WHO"),
        (0, "naman", b"QUIT"),
    ]:
        cluster.send(node, conn, line)
    assert cluster.nodes[0].closes == {"naman": CloseReason.QUIT}
    cluster.nodes[0].handle(ConnectionClosed("naman"))
    cluster.settle()
    assert cluster.received(0, "naman") == (
        b"OK\nMSG Yudi hello Naman!\nUSER Naman\nUSER Yudi\nGoodbye!\n"
    )
    assert cluster.received(1, "yudi") == (
        b"OK\nMSG Naman hi everyone!\nMSG Naman how are you?\nINFO Naman disconnected\n"
    )
    assert cluster.nodes[0].node.usernames() == cluster.nodes[1].node.usernames() == ["Yudi"]


def test_who_and_dm_reach_across_nodes():
    cluster = Cluster(2)
    logged_in(cluster, (0, "naman"), (1, "Yudi"), (0, "ann"))
    cluster.send(1, "Yudi", b"WHO")
    cluster.send(1, "Yudi", "DM ＮＡＭＡＮ  psst  there".encode())
    cluster.send(0, "ann", b"DM nobody hi")
    cluster.send(0, "ann", b"DM yudi")
    assert cluster.received(1, "Yudi") == b"USER naman\nUSER Yudi\nUSER ann\n"
    assert cluster.received(0, "naman") == b"DM Yudi psst  there\n"
    assert cluster.received(0, "ann") == b"ERR user-not-found\nERR missing-text\n"


def test_a_ping_after_a_pending_who_waits_behind_it():
    """Replies keep command order even when one command waits for the log."""
    cluster = Cluster(2)
    logged_in(cluster, (0, "naman"), (1, "yudi"))
    for line in (b"WHO", b"PING", b"FOO", b"\xff"):
        cluster.send(0, "naman", line, settle=False)
    cluster.nodes[0].handle(LineTooLong("naman"))
    cluster.nodes[0].handle(TelnetOptionRequested("naman", 253, 6))
    assert cluster.received(0, "naman") == b""  # all of it waits for the WHO
    assert cluster.nodes[0].node.waiting("naman") == 6
    cluster.send(1, "yudi", b"MSG in between")  # reaches the log after the WHO
    assert cluster.received(0, "naman") == (
        b"USER naman\nUSER yudi\nPONG\nERR unknown-command\nERR invalid-utf8\nERR line-too-long\n"
        b"\xff\xfc\x06MSG yudi in between\n"
    )
    assert cluster.nodes[0].node.waiting("naman") == 0


def test_local_commands_answer_at_once_and_cost_the_log_nothing():
    cluster = Cluster(2)
    sim = cluster.nodes[0]
    sim.handle(ConnectionOpened("anon"))
    for line in (b"PING", b"FOO", b"MSG hi", b"WHO", b"DM a b", b"\xfe", b"  ", b""):
        assert not appends(sim.handle(LineReceived("anon", line)))
    assert sim.received["anon"] == (
        b"PONG\nERR unknown-command\nERR not-logged-in\nERR not-logged-in\nERR not-logged-in\nERR invalid-utf8\n"
    )
    logged_in(cluster, (0, "naman"))
    assert not appends(sim.handle(LineReceived("naman", b"LOGIN again")))
    assert sim.received["naman"] == b"ERR already-logged-in\n"


def test_commands_sent_while_the_login_is_pending_are_decided_by_the_log():
    """Until the LOGIN is back, the node cannot know the state: the log decides."""
    cluster = Cluster(2)
    logged_in(cluster, (1, "Naman"))
    sim = cluster.nodes[0]
    sim.handle(ConnectionOpened("late"))
    sim.handle(LineReceived("late", b"LOGIN naman"))  # taken, but nobody knows yet
    kinds = [type(e).__name__ for line in (b"MSG hi", b"WHO", b"LOGIN ann", b"MSG hi again")
             for e in appends(sim.handle(LineReceived("late", line)))]
    assert kinds == ["Msg", "Who", "Login", "Msg"]
    cluster.settle()
    assert sim.received["late"] == b"ERR username-taken\nERR not-logged-in\nERR not-logged-in\nOK\n"
    assert cluster.received(1, "Naman") == b"MSG ann hi again\n"


def test_an_http_line_while_the_login_is_pending():
    """The HTTP guard needs the state too: the log decides, and what followed is dropped."""
    cluster = Cluster(2)
    logged_in(cluster, (1, "taken"))
    sim = cluster.nodes[0]
    for conn, name in (("browser", b"taken"), ("user", b"free")):
        sim.handle(ConnectionOpened(conn))
        sim.handle(LineReceived(conn, b"LOGIN " + name))
        sim.handle(LineReceived(conn, b"GET / HTTP/1.1"))
        sim.handle(LineReceived(conn, b"PING"))
    cluster.settle()
    assert sim.received["browser"] == b"ERR username-taken\n"
    assert sim.closes == {"browser": CloseReason.CROSS_PROTOCOL}
    assert sim.received["user"] == b"OK\nERR unknown-command\nPONG\n"


def test_an_http_line_before_any_login_is_closed_locally():
    cluster = Cluster(2)
    sim = cluster.nodes[0]
    sim.handle(ConnectionOpened("browser"))
    assert not appends(sim.handle(LineReceived("browser", b"POST /form HTTP/1.1")))
    assert sim.closes == {"browser": CloseReason.CROSS_PROTOCOL}
    assert not appends(sim.handle(ConnectionClosed("browser")))


def test_quit_and_idle_timeout_go_through_the_log():
    cluster = Cluster(2)
    logged_in(cluster, (0, "a"), (0, "b"), (1, "c"))
    cluster.send(0, "a", b"QUIT", settle=False)
    cluster.nodes[0].handle(IdleTimedOut("b"))
    cluster.send(0, "a", b"PING", settle=False)  # ignored: it quit
    assert cluster.received(0, "a") == b""
    cluster.settle()
    assert cluster.received(0, "a") == b"Goodbye!\n"
    assert cluster.received(0, "b") == b"INFO a disconnected\nERR idle-timeout\n"
    assert cluster.received(1, "c") == b"INFO a disconnected\nINFO b disconnected\n"
    assert cluster.nodes[0].closes == {"a": CloseReason.QUIT, "b": CloseReason.IDLE_TIMEOUT}
    assert cluster.nodes[1].node.usernames() == ["c"]


def test_an_idle_client_the_log_never_saw_is_closed_locally():
    cluster = Cluster(2)
    sim = cluster.nodes[0]
    sim.handle(ConnectionOpened("x"))
    assert not appends(sim.handle(IdleTimedOut("x")))
    assert sim.received["x"] == b"ERR idle-timeout\n"
    assert sim.closes == {"x": CloseReason.IDLE_TIMEOUT}


def test_connections_that_end_together_are_one_entry_and_one_departure():
    cluster = Cluster(2)
    logged_in(cluster, (0, "a"), (0, "b"), (1, "c"))
    cluster.connect(0, "anon")
    (entry,) = appends(cluster.nodes[0].handle(ConnectionsClosed(("b", "anon", "a"))))
    assert entry.conns == (2, 1)  # b and a, in the order reported; anon never reached the log
    cluster.settle()
    assert cluster.received(1, "c") == b"INFO b disconnected\nINFO a disconnected\n"


def test_max_clients_is_per_node():
    cluster = Cluster(2, max_clients=1)
    cluster.connect(0, "a")
    cluster.connect(0, "b")
    cluster.connect(1, "c")
    assert cluster.received(0, "b") == b"ERR server-full\n"
    assert cluster.nodes[0].closes == {"b": CloseReason.SERVER_FULL}
    assert cluster.received(1, "c") == b""


# -- the name race --------------------------------------------------------------------


STEPS = ("send A", "send B", "commit A", "commit B", "read A", "read A", "read B", "read B")


def interleavings():
    """Every order of the steps in which a node commits only after it sent."""
    seen = set()
    for order in itertools.permutations(STEPS):
        if order in seen:
            continue
        seen.add(order)
        if order.index("commit A") > order.index("send A") and order.index("commit B") > order.index("send B"):
            yield order


@pytest.mark.parametrize("names", [(b"naman", b"naman"), (b"Naman", "ｎａｍａｎ".encode())])
def test_the_name_race_has_exactly_one_winner_in_every_interleaving(names):
    count = 0
    for order in interleavings():
        count += 1
        cluster = Cluster(2)
        a, b = cluster.nodes
        a.handle(ConnectionOpened("a"))
        b.handle(ConnectionOpened("b"))
        for step in order:
            verb, who = step.split()
            sim, conn, name = (a, "a", names[0]) if who == "A" else (b, "b", names[1])
            if verb == "send":
                sim.handle(LineReceived(conn, b"LOGIN " + name))
            elif verb == "commit":
                sim.commit()
            else:
                sim.read()
        cluster.settle()
        outcomes = sorted([a.received["a"], b.received["b"]])
        assert outcomes == [b"ERR username-taken\n", b"OK\n"], order
        winner = names[0] if a.received["a"] == b"OK\n" else names[1]
        shown = unicodedata.normalize("NFKC", winner.decode())
        assert a.node.usernames() == b.node.usernames() == [shown], order
    assert count == 2520  # 8! / (2! 2!) orders of the steps, halved once per commit-after-send rule


# -- nodes that fail ------------------------------------------------------------------


def test_a_dead_node_s_users_leave_in_login_order_and_their_names_are_free():
    cluster = Cluster(3)
    logged_in(cluster, (1, "b1"), (0, "a"), (1, "b2"), (2, "c"))
    dead = cluster.nodes[1]
    dead.handle(LineReceived("b1", b"MSG last words"))  # appended, never committed: lost
    cluster.nodes.remove(dead)  # kill -9
    down = appends(cluster.nodes[1].handle(NodeExpired(2)))
    assert down == [NodeDown(3, 3, 2)]
    assert appends(cluster.nodes[0].handle(NodeExpired(2))) == [NodeDown(1, 3, 2)]  # both noticed
    cluster.settle()
    for node, conn in ((0, "a"), (1, "c")):
        assert cluster.received(node, conn) == b"INFO b1 disconnected\nINFO b2 disconnected\n"
    assert cluster.nodes[0].node.usernames() == ["a", "c"]
    assert cluster.nodes[0].node.live_nodes() == [1, 3]
    logged_in(cluster, (0, "b1"))
    assert appends(cluster.nodes[0].handle(NodeExpired(2))) == []  # not live any more


def test_a_node_declared_dead_by_mistake_does_not_resurrect_its_users():
    cluster = Cluster(2)
    logged_in(cluster, (0, "a"), (1, "b"))
    zombie = cluster.nodes[1]
    cluster.nodes[0].handle(NodeExpired(2))
    cluster.nodes[0].commit()
    zombie.handle(LineReceived("b", b"MSG after my death"))  # appended after the NodeDown
    zombie.handle(ConnectionOpened("late"))  # it does not know yet: it still serves
    zombie.handle(LineReceived("late", b"LOGIN late"))
    zombie.commit()
    cluster.nodes[0].read()
    assert cluster.received(0, "a") == b"INFO b disconnected\n"  # the MSG is ignored
    cluster.send(0, "a", b"WHO")
    assert cluster.received(0, "a") == b"INFO b disconnected\nUSER a\n"  # and so is the LOGIN
    zombie.read()
    assert zombie.received["b"] == zombie.received["late"] == b"ERR server-unavailable\n"
    assert zombie.closes == {"b": CloseReason.SERVER_UNAVAILABLE, "late": CloseReason.SERVER_UNAVAILABLE}
    assert zombie.node.phase is Phase.DOWN
    zombie.handle(ConnectionOpened("new"))
    assert zombie.received["new"] == b"ERR server-unavailable\n"
    assert not appends(zombie.handle(ConnectionClosed("b")))


def test_a_node_that_loses_the_cluster_closes_its_clients_and_says_so():
    cluster = Cluster(2)
    logged_in(cluster, (0, "a"), (1, "b"))
    cluster.send(0, "a", b"WHO", settle=False)  # dropped: the close comes instead
    effects = cluster.nodes[0].handle(ClusterUnavailable())
    assert appends(effects) == [NodeDown(1, 4, 1)]
    assert cluster.received(0, "a") == b"ERR server-unavailable\n"
    cluster.settle()
    assert cluster.received(1, "b") == b"INFO a disconnected\n"
    assert cluster.nodes[0].received["a"] == b"ERR server-unavailable\n"  # nothing after the close


def test_shutdown_tells_its_own_users_at_once_and_the_others_through_the_log():
    cluster = Cluster(2)
    logged_in(cluster, (0, "a"), (0, "b"), (1, "c"))
    effects = cluster.nodes[0].handle(ShutdownStarted())
    assert appends(effects) == [NodeDown(1, 4, 1)]  # after its NodeUp and two logins
    assert cluster.received(0, "a") == cluster.received(0, "b") == b"ERR server-shutting-down\n"
    cluster.connect(0, "late")
    assert cluster.received(0, "late") == b"ERR server-shutting-down\n"
    assert cluster.received(1, "c") == b""
    cluster.settle()
    assert cluster.received(1, "c") == b"INFO a disconnected\nINFO b disconnected\n"
    assert cluster.nodes[0].node.unconfirmed() == []  # its NodeDown is in the log: it may exit


def test_a_node_serves_only_once_it_has_read_its_own_node_up():
    engine = Engine()
    sim = SimNode(engine, 1)
    sim.handle(ConnectionOpened("early"))
    assert sim.received["early"] == b"ERR server-unavailable\n"
    assert appends(sim.handle(NodeStarted())) == [NodeUp(1, 1)]
    assert sim.node.phase is Phase.JOINING
    sim.commit()
    sim.read()
    assert sim.node.joined
    with pytest.raises(ProtocolUsageError):
        sim.handle(NodeStarted())


# -- joining late, copies, bad entries -----------------------------------------------


def test_a_node_starts_late_from_a_snapshot_and_the_log_after_it():
    cluster = Cluster(2)
    logged_in(cluster, (0, "a"), (1, "b"), (0, "gone"))
    cluster.connect(1, "anon")
    cluster.send(1, "anon", b"LOGIN a")  # known to the log, not logged in
    cluster.send(0, "gone", b"QUIT")  # closing, its end not yet appended
    assert cluster.nodes[0].received.pop("a") == b"INFO gone disconnected\n"
    source = cluster.nodes[0]
    snapshot = decode_snapshot(encode_snapshot(source.node.snapshot()))
    assert snapshot.position == str(len(cluster.engine.log))
    assert [name for _, _, name in snapshot.users] == [b"a", b"b"]
    assert snapshot.waiting == ((2, 2),) and snapshot.closing == ((1, 2),)
    late = SimNode(cluster.engine, 3, snapshot=snapshot, cursor=source.cursor)
    cluster.nodes.append(late)
    late.handle(NodeStarted())
    cluster.send(1, "b", b"MSG before the join is read", settle=False)
    cluster.settle()
    assert late.node.joined
    assert late.node.usernames() == source.node.usernames() == ["a", "b"]
    assert late.node.snapshot() == source.node.snapshot()
    logged_in(cluster, (2, "c"))
    cluster.send(2, "c", b"MSG hello from the new node")
    assert cluster.received(0, "a") == b"MSG b before the join is read\nMSG c hello from the new node\n"
    source.handle(ConnectionClosed("gone"))
    cluster.settle()
    assert late.node.snapshot() == source.node.snapshot()


def test_entries_that_reach_the_log_twice_are_applied_once():
    """After a reconnect a node appends again what it is unsure of; the copies change nothing."""
    cluster = Cluster(2)
    logged_in(cluster, (0, "a"), (1, "b"))
    sim = cluster.nodes[0]
    sim.handle(LineReceived("a", b"MSG once"))
    sim.handle(LineReceived("a", b"WHO"))
    sim.commit()
    assert len(sim.node.unconfirmed()) == 2
    sim.outgoing = sim.node.unconfirmed()  # reconnected: send both again
    cluster.settle()
    assert cluster.received(1, "b") == b"MSG a once\n"
    assert cluster.received(0, "a") == b"USER a\nUSER b\n"
    assert sim.node.unconfirmed() == []


def test_a_retired_node_cannot_come_back_even_with_a_copy_of_its_node_up():
    engine = Engine()
    a, b = SimNode(engine, 1), SimNode(engine, 2)
    a.handle(NodeStarted())
    b.handle(NodeStarted())
    b.commit()
    b.outgoing = b.node.unconfirmed()  # its NodeUp, once more, still to be sent
    a.commit()
    a.read()
    a.handle(NodeExpired(2))
    a.commit()
    b.commit()  # the copy lands after its NodeDown
    b.handle(ConnectionOpened("x"))  # refused: not joined yet
    engine.log.append(encode_entry(Msg(2, 9, 1, b"ghost")))
    a.read()
    b.read()
    assert a.node.live_nodes() == [1]
    assert b.node.phase is Phase.DOWN
    assert a.node.snapshot().retired == (2,)


def test_a_malformed_entry_is_skipped_by_every_node_alike():
    cluster = Cluster(2)
    logged_in(cluster, (0, "a"), (1, "b"))
    cluster.engine.log += [b"", b"\x09garbage", b"\x01\x04\x01"]
    cluster.send(0, "a", b"MSG still here")
    assert cluster.received(1, "b") == b"MSG a still here\n"
    assert cluster.nodes[0].node.malformed == cluster.nodes[1].node.malformed == 3


def test_a_log_read_with_no_entries_only_moves_the_position():
    cluster = Cluster(2)
    assert cluster.nodes[0].handle(LogRead((), "1700000000000-5")) == []
    assert cluster.nodes[0].node.position == "1700000000000-5"


# -- the hot path -----------------------------------------------------------------------


def test_broadcasts_share_one_local_audience_until_local_membership_changes():
    cluster = Cluster(2)
    logged_in(cluster, (0, "a"), (0, "b"), (1, "c"))

    def audiences(sim):
        return [e.audience for e in sim.read() if isinstance(e, Broadcast)]

    sim = cluster.nodes[0]
    for line in (b"MSG one", b"MSG two"):
        cluster.nodes[1].handle(LineReceived("c", line))
    cluster.nodes[1].commit()
    first, second = audiences(sim)
    assert first is second and first == ("a", "b")
    logged_in(cluster, (1, "d"))  # a login elsewhere does not rebuild it
    cluster.nodes[1].handle(LineReceived("d", b"MSG three"))
    cluster.nodes[1].commit()
    (third,) = audiences(sim)
    assert third is first
    logged_in(cluster, (0, "e"))  # a local one does
    cluster.nodes[1].handle(LineReceived("d", b"MSG four"))
    cluster.nodes[1].commit()
    (fourth,) = audiences(sim)
    assert fourth == ("a", "b", "e")


def test_a_local_msg_is_one_append_and_nothing_else():
    cluster = Cluster(2)
    logged_in(cluster, (0, "a"))
    effects = cluster.nodes[0].handle(LineReceived("a", b"MSG hi there"))
    assert len(effects) == 1 and decode_entry(effects[0].entry) == Msg(1, 3, 1, b"hi there")


def test_the_standalone_machine_knows_nothing_of_clusters():
    """Standalone keeps ChatMachine as it was: no cluster import, no new effect kind."""
    import protocol.machine

    assert "cluster" not in protocol.machine.__dict__
    assert all(type(e).__module__ == "protocol.effects" for e in ChatMachine().handle(ShutdownStarted()))
