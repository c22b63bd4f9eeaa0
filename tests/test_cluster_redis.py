"""Cluster mode for real: ``python -m reactor --cluster redis://...`` nodes on a real ``redis-server``.

Every test starts its own Redis (tests/redisutil.py) and its own node
processes (netutil.cluster_processes), and plays what the spec
(shared/spec/cluster.md) promises through raw TCP clients: one chat
across nodes, one winner of a name race, a dead node's users reported
within the lease, and the engine's failures (restarted, gone, emptied,
paused) costing a delay, never a line.  Where a process cannot aim at a
moment (the turn a link comes back), one node runs in the test's thread,
turn by turn, on a clock the test moves (``HandDriven``).  Every wait is
bounded; timing figures the spec states (the lease) are asserted with
their margin, the others (stalls, memory) are printed (``-s``) for
docs/performance.md.

Elsewhere: the seed README's sessions on two nodes are in test_daemon.py,
and test_server.py runs against a cluster of two as well as standalone
(conftest.py's ``serve`` and ``daemons``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import pytest
import test_interop
from loopharness import FakeClock, NeverSleeps, Peer
from netutil import ROOT, Client, cluster_processes, cluster_settings, login, node_process, threaded_cluster
from redisutil import RedisServer, free_port, redis_servers

import reactor.cluster
from protocol.cluster import NodeExpired, Phase
from reactor.cluster import ClusterDriver
from reactor.config import Config
from reactor.engine import LinkState
from reactor.loop import Reactor

HALF_CLOSE_SCRIPTS = test_interop.SCRIPTS
"""Lines and the answers to them before the end of stream (the interoperability tests' table)."""

@pytest.fixture
def redis(tmp_path):
    """``redis(**options)`` starts a ``RedisServer`` for this test; all are killed at the end."""
    with redis_servers(tmp_path) as make:
        yield make


def clean_exit(nodes, *clients: Client) -> None:
    """The clients hang up, then SIGTERM: every node leaves the cluster and exits 0, no traceback."""
    for client in clients:
        client.close()
    for node in nodes:
        status, _, err = node.stop()
        assert status == 0 and b"Traceback" not in err, err.decode(errors="replace")


def lines_before_pong(client: Client) -> list[bytes]:
    """PING, and the lines that arrive before its PONG."""
    client.say("PING")
    lines = []
    while (line := client.line()) != b"PONG":
        lines.append(line)
    return lines


def keep_active_until_closed(
    leaver: Client, active: list[Client], timeout: float = 10.0
) -> tuple[bytes, list[list[bytes]]]:
    """What ``leaver`` gets until the server closes it, while the ``active`` clients PING.

    Also returns what each active client received meanwhile, besides its PONGs.
    """
    deadline = time.monotonic() + timeout
    data = b""
    received: list[list[bytes]] = [[] for _ in active]
    while time.monotonic() < deadline:
        for client, lines in zip(active, received, strict=True):
            lines += lines_before_pong(client)
        leaver.sock.settimeout(0.2)
        try:
            chunk = leaver.sock.recv(65536)
        except TimeoutError:
            continue
        if not chunk:
            return data, received
        data += chunk
    raise AssertionError(f"still open after {timeout} s (got {data!r})")


# -- one chat across nodes ---------------------------------------------------------------------


def test_who_and_dm_across_nodes(redis):
    with cluster_processes(redis().url(), 2) as nodes:
        naman = login(nodes[0].port, "Naman")
        yudi = login(nodes[1].port, "Yudi")
        ana = login(nodes[0].port, "Ana")
        for asker in (naman, yudi, ana):
            asker.say("WHO")
            asker.expect("USER Naman", "USER Yudi", "USER Ana")  # login order, cluster-wide
        naman.say("DM yudi across")  # the name's key, as protocol.md compares them
        yudi.expect("DM Naman across")
        yudi.say("DM Ana back", "DM nobody hello")
        ana.expect("DM Yudi back")
        yudi.expect("ERR user-not-found")
        taken = Client(nodes[1].port)
        taken.say("LOGIN NAMAN")
        taken.expect("ERR username-taken")
        for client in (naman, yudi, ana, taken):
            client.sync()  # nothing else arrived
        clean_exit(nodes, naman, yudi, ana, taken)


@pytest.mark.parametrize("how", ["quit", "idle-timeout", "end-of-stream"])
def test_info_across_nodes_when_a_user_leaves(redis, how):
    with cluster_processes(redis().url(), 2, "--idle-timeout", "1") as nodes:
        watchers = [login(nodes[0].port, "w1"), login(nodes[1].port, "w2")]
        leaver = login(nodes[1].port, "leaver")
        watchers[0].say("MSG hello")
        watchers[1].expect("MSG w1 hello")
        leaver.expect("MSG w1 hello")
        received: list[list[bytes]] = [[], []]
        if how == "quit":
            leaver.say("QUIT")
            leaver.expect("Goodbye!")
            assert leaver.read_until_closed() == b""
        elif how == "idle-timeout":
            data, received = keep_active_until_closed(leaver, watchers)
            assert data == b"ERR idle-timeout\n"
        else:
            leaver.send(b"MSG last words\nMSG unfinished")
            leaver.half_close()
            for watcher in watchers:
                watcher.expect("MSG leaver last words")
        for watcher, lines in zip(watchers, received, strict=True):
            # The INFO comes once: while the watchers kept busy (idle timeout), or now.
            assert (lines or [watcher.line()]) == [b"INFO leaver disconnected"]
            watcher.say("WHO")
            watcher.expect("USER w1", "USER w2")
            watcher.sync()
        clean_exit(nodes, leaver, *watchers)


def test_a_node_started_before_redis_joins_when_it_comes_and_its_clients_wait(tmp_path):
    """The engine unreachable at start: retried, logged once per attempt, the password never shown;
    a client that connected meanwhile waits in the listen queue and is served once the node joins."""
    engine = RedisServer(tmp_path / "redis", password="s3cret-pw")
    port = free_port()
    started: list = []
    starter = threading.Thread(
        target=lambda: started.append(node_process(engine.url(password="s3cret-pw"), "--port", str(port)))
    )
    try:
        starter.start()
        early = connect_when_listening(port)
        early.say("LOGIN early")
        engine.start()
        early.expect("OK")  # LOGIN waited for the engine
        starter.join(10)
        (node,) = started
        node.wait_for_stderr(rb"WARNING: engine redis://:\*\*\*@127.0.0.1:\d+/0: connection attempt 1 failed")
        clean_exit([node], early)
        assert b"s3cret-pw" not in node.stderr
    finally:
        for node in started:
            node.kill()
        engine.cleanup()


def test_a_node_stopped_while_it_waits_for_redis_exits_zero():
    """SIGTERM before the node ever joined: nothing to tell anyone, exit 0, no startup line."""
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    process = subprocess.Popen(
        [sys.executable, "-m", "reactor", "--host", "127.0.0.1", "--port", "0", "--cluster", url],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        stderr = b""
        deadline = time.monotonic() + 10
        while b"connection attempt 1 failed" not in stderr:
            assert time.monotonic() < deadline and process.poll() is None, stderr
            if select.select([process.stderr], [], [], 0.5)[0]:
                stderr += os.read(process.stderr.fileno(), 65536)
        process.send_signal(signal.SIGTERM)
        out, rest = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)
    assert process.returncode == 0 and out == b""
    assert (stderr + rest).decode().splitlines()[-1] == "Server stopped"


def connect_when_listening(port: int, timeout: float = 10.0) -> Client:
    """Connect as soon as something listens on ``port`` (a process that is starting)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return Client(port)
        except ConnectionRefusedError:
            assert time.monotonic() < deadline, f"nothing listens on {port} after {timeout} s"
            time.sleep(0.02)  # the process binds when it is ready to; nothing to wait on before


def test_two_cluster_names_on_one_redis_are_two_chats(redis):
    engine = redis()
    with cluster_processes(engine.url(), 2) as one, cluster_processes(engine.url(), 1, "--cluster-name", "other") as two:
        alice = login(one.port, "alice")
        bob = login(one.port, "bob")
        other_alice = login(two.port, "alice")  # another chat: the name is free there
        alice.say("MSG hi")
        bob.expect("MSG alice hi")
        other_alice.say("WHO")
        other_alice.expect("USER alice")
        other_alice.sync()  # and no MSG from the first chat
        assert engine.command("EXISTS", "other:log") == 1
        clean_exit([*one, *two], alice, bob, other_alice)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_node_stopped_by_a_signal_tells_its_users_and_the_others_see_them_leave(redis, signum):
    with cluster_processes(redis().url(), 2) as nodes:
        alice, bob = login(nodes[0].port, "alice"), login(nodes[0].port, "bob")
        carol = login(nodes[1].port, "carol")
        carol.sync()
        nodes[0].process.send_signal(signum)
        for client in (alice, bob):
            assert client.read_until_closed() == b"ERR server-shutting-down\n"
            client.close()
        carol.expect("INFO alice disconnected", "INFO bob disconnected")  # in login order
        carol.say("WHO")
        carol.expect("USER carol")
        carol.sync()
        nodes[0].process.wait(timeout=10)  # it exits by itself (a second signal could land in its exit)
        status, _, err = nodes[0].stop()
        assert status == 0 and b"Traceback" not in err
        heir = login(nodes[1].port, "alice")  # the name is free
        clean_exit(nodes[1:], carol, heir)


@pytest.mark.parametrize("script", sorted(HALF_CLOSE_SCRIPTS))
def test_every_line_before_end_of_stream_is_answered_before_the_node_closes(redis, script):
    """A client that sends its lines and half-closes at once (``printf ... | nc -N``) gets every answer:
    the end of its stream comes before the log's answers do, and must wait for them."""
    sent, expected = HALF_CLOSE_SCRIPTS[script]
    with threaded_cluster(redis().url(), 2) as nodes:
        client = Client(nodes[0].port)
        client.send(sent)
        client.half_close()
        assert client.read_until_closed() == expected
        # "a" left: its node appended its departure when it closed it, before it could read
        # a later LOGIN.  (On the other node that LOGIN may reach the log first: one order,
        # but nothing orders one node's close before another node's next line.)
        watcher = login(nodes[0].port, "watcher")
        watcher.say("WHO")
        watcher.expect("USER watcher")
        watcher.close()


def test_a_hundred_connections_on_three_nodes_race_for_one_name(redis):
    with cluster_processes(redis().url(), 3) as nodes:
        racers = [Client(nodes.port) for _ in range(100)]
        for racer in racers:
            racer.sync()  # every one is accepted and served: the race starts now
        for racer in racers:
            racer.say("LOGIN Naman")
        replies = [racer.line() for racer in racers]
        assert replies.count(b"OK") == 1
        assert replies.count(b"ERR username-taken") == 99
        winner = racers[replies.index(b"OK")]
        for racer in racers:
            racer.say("WHO")
            racer.expect("USER Naman") if racer is winner else racer.expect("ERR not-logged-in")
        clean_exit(nodes, *racers)


LEASE = 2.0
"""A short ``--cluster-lease`` for the failure tests: a dead node's users are reported within it."""


def test_a_killed_node_s_users_are_reported_within_the_lease_and_their_names_freed(redis):
    with cluster_processes(redis().url(), 2, "--cluster-lease", str(LEASE)) as nodes:
        doomed = [login(nodes[0].port, f"doomed{i}") for i in range(50)]
        others = [login(nodes[1].port, f"other{i}") for i in range(5)]
        for other in others:
            other.sync()
        killed_at = time.monotonic()
        nodes[0].process.kill()  # SIGKILL: no goodbye
        expected = [f"INFO doomed{i} disconnected".encode() for i in range(50)]
        for other in others:
            got = [other.line(timeout=LEASE + 1 - (time.monotonic() - killed_at)) for _ in expected]
            assert got == expected  # every one, once, in login order
        late = time.monotonic() - killed_at
        print(f"the last INFO came {late:.2f} s after the kill (lease {LEASE:g} s)")
        assert late <= LEASE + 1
        for other in others:
            other.sync()  # nothing more
        heir = login(nodes[1].port, "doomed7")  # the names are free
        heir.say("WHO")
        heir.expect(*[f"USER other{i}" for i in range(5)], "USER doomed7")
        for client in doomed:
            client.close()
        clean_exit(nodes[1:], heir, *others)


class Receiver(threading.Thread):
    """Reads one client's lines in the background, each with the time it came."""

    def __init__(self, client: Client) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.lines: list[tuple[float, bytes]] = []
        self.error: BaseException | None = None
        self._stop_at: float | None = None
        self.start()

    def run(self) -> None:
        try:
            while self._stop_at is None or time.monotonic() < self._stop_at:
                try:
                    line = self.client.line(timeout=0.2)
                except AssertionError as error:
                    if "no line within" in str(error):
                        continue
                    raise
                self.lines.append((time.monotonic(), line))
        except BaseException as error:
            self.error = error

    def finish(self, until: Callable[[list[bytes]], bool], timeout: float) -> list[bytes]:
        """Wait (at most ``timeout``) until ``until(lines)``, then stop reading; the lines."""
        deadline = time.monotonic() + timeout
        while not until(self.received()) and time.monotonic() < deadline and self.error is None:
            time.sleep(0.05)  # polling another thread's progress, bounded by the deadline
        self._stop_at = time.monotonic()
        self.join(1.0)
        assert self.error is None, self.error
        return self.received()

    def received(self) -> list[bytes]:
        return [line for _, line in list(self.lines)]

    def max_gap(self, start: float, end: float) -> float:
        """The longest time without a line between ``start`` and ``end``."""
        times = [start] + [t for t, _ in self.lines if start < t < end] + [end]
        return max(b - a for a, b in zip(times, times[1:], strict=False))


def send_steadily(senders: list[Client], rate: float, duration: float, first: int = 0) -> int:
    """Each sender sends ``MSG <n>`` ``rate`` times a second for ``duration``; the next n."""
    n = first
    start = time.monotonic()
    while time.monotonic() - start < duration:
        for sender in senders:
            sender.say(f"MSG {n}")
        n += 1
        pause = start + (n - first) / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)  # the steady rate is the point: nothing to wait for
    return n


def test_redis_restarted_within_the_lease_loses_duplicates_and_reorders_nothing(redis):
    engine = redis(appendonly=True)
    with cluster_processes(engine.url(), 2, "--cluster-lease", "5") as nodes:
        senders = [login(nodes.port, f"s{i}") for i in range(10)]
        watchers = [login(nodes.port, f"w{i}") for i in range(2)]  # they receive every line
        readers = {client: Receiver(client) for client in senders + watchers}
        n = send_steadily(senders, rate=20, duration=1.0)
        outage_start = time.monotonic()
        engine.kill()
        n = send_steadily(senders, rate=20, duration=0.5, first=n)
        engine.restart()
        n = send_steadily(senders, rate=20, duration=1.0, first=n)
        outage_end = time.monotonic()

        def expected(me: Client) -> list[bytes]:
            return [f"MSG s{i} {k}".encode() for k in range(n) for i, s in enumerate(senders) if s is not me]

        def complete(me: Client) -> Callable[[list[bytes]], bool]:
            count = len(expected(me))
            return lambda lines: len(lines) >= count

        got = {client: reader.finish(complete(client), timeout=15) for client, reader in readers.items()}
        for client, lines in got.items():
            mine = sorted(expected(client))
            assert sorted(lines) == mine, "lost or duplicated lines"  # nothing lost, nothing twice
            for i, sender in enumerate(senders):
                if sender is not client:
                    own = [line for line in lines if line.startswith(f"MSG s{i} ".encode())]
                    assert own == [f"MSG s{i} {k}".encode() for k in range(n)], f"s{i}'s lines reordered"
        assert got[watchers[0]] == got[watchers[1]], "two users received common lines in different orders"
        stall = max(reader.max_gap(outage_start, outage_end) for reader in readers.values())
        print(f"{n * 10} lines from 10 senders at 20/s each; Redis down 0.5 s: the longest gap {stall:.2f} s")
        for client in senders + watchers:
            client.sync()
        clean_exit(nodes, *senders, *watchers)


def test_a_node_paused_past_its_lease_does_not_resurrect_its_users(redis):
    """SIGSTOP a node for longer than the lease: the others see its users leave; when it wakes, its
    users are closed with ERR server-unavailable, their last lines reach nobody, and it starts afresh."""
    with cluster_processes(redis().url(), 2, "--cluster-lease", str(LEASE)) as nodes:
        alice = login(nodes[0].port, "alice")
        bob = login(nodes[1].port, "bob")
        bob.sync()
        nodes[0].process.send_signal(signal.SIGSTOP)
        try:
            bob.expect("INFO alice disconnected")  # (netutil's 5 s wait covers the lease)
            alice.say("MSG from beyond")  # waits in the stopped node's socket
        finally:
            nodes[0].process.send_signal(signal.SIGCONT)
        assert alice.read_until_closed() == b"ERR server-unavailable\n"
        nodes[0].wait_for_stderr(  # whichever it noticed first
            rb"ERROR: cluster: node 1 leaves the cluster: (its lease could not be renewed|the others declared it down)"
        )
        again = login_when_back(nodes[0].port, "alice")  # a new node, and the name is free
        bob.say("WHO")
        bob.expect("USER bob", "USER alice")  # the new alice, and nothing from the old one
        bob.sync()
        clean_exit(nodes, alice, bob, again)


def login_when_back(port: int, name: str, timeout: float = 15.0, taken_for: float = 0.0) -> Client:
    """LOGIN as soon as the node serves again: until then each attempt is refused, ERR server-unavailable.

    ``taken_for``: the name may still be taken for that long after the node serves
    (its owner's node is dead, and its departure not yet in the log).
    """
    deadline = time.monotonic() + timeout
    free_by: float | None = None
    while True:
        client = Client(port)
        client.say(f"LOGIN {name}")
        reply = client.line()
        if reply == b"OK":
            return client
        if reply == b"ERR username-taken":
            free_by = free_by or time.monotonic() + taken_for
            assert time.monotonic() < free_by, f"{name} still taken {taken_for} s after the node served"
        else:
            assert reply == b"ERR server-unavailable", reply
            assert client.read_until_closed() == b""
        client.close()
        assert time.monotonic() < deadline, f"the node did not serve again within {timeout} s"


def lines_until(client: Client, last: bytes, allowed: Callable[[bytes], bool]) -> None:
    """Read up to ``last``; every line before it must be ``allowed``."""
    while (line := client.line()) != last:
        assert allowed(line), line


def test_redis_gone_longer_than_the_lease_closes_clients_refuses_new_ones_and_recovers(redis):
    engine = redis(appendonly=True)  # it keeps its data: the nodes lost their leases, not the log
    with cluster_processes(engine.url(), 2, "--cluster-lease", str(LEASE)) as nodes:
        users = [login(nodes.port, f"u{i}") for i in range(4)]
        for user in users:
            user.sync()
        engine.kill()
        for user in users:
            assert user.read_until_closed(timeout=LEASE + 2) == b"ERR server-unavailable\n"
        for node in nodes:
            refused = Client(node.port)
            assert refused.read_until_closed() == b"ERR server-unavailable\n"
            node.wait_for_stderr(rb"cluster: node \d+ leaves the cluster: its lease could not be renewed")
        engine.restart()
        back = [login_when_back(node.port, f"back{i}") for i, node in enumerate(nodes)]
        # The users of the nodes that gave up are gone: an INFO each (to whoever logged in
        # before their departure was in the log) and their names free within a lease.
        for i in range(4):
            back.append(login_when_back(nodes[i % 2].port, f"u{i}", taken_for=LEASE + 1))
        back[0].say("MSG hello again")
        left = re.compile(rb"INFO u\d disconnected")
        for client in back[1:]:
            lines_until(client, b"MSG back0 hello again", left.fullmatch)
        back[1].say("WHO")
        back[1].expect("USER back0", "USER back1", "USER u0", "USER u1", "USER u2", "USER u3")
        for node in nodes:
            assert node.process.poll() is None  # it never exited
        clean_exit(nodes, *back)


# -- one node in this process, turn by turn: the driver's moments ------------------------------------


class HandDriven:
    """A cluster node run in this thread one turn at a time, on a clock the test moves.

    For the moments a process test cannot aim at: what the driver does in
    the very turn a link comes back, say.  Clients are socket pairs
    (loopharness.Peer); Redis is real.
    """

    def __init__(self, url: str, join: bool = True, **settings) -> None:
        self.clock = FakeClock()
        listener = socket.create_server(("127.0.0.1", 0))
        config = dataclasses.replace(Config(host="127.0.0.1", port=0), **cluster_settings(url, **settings))
        self.driver = ClusterDriver(
            config.cluster, name=config.cluster_name, lease=config.cluster_lease,
            buffer=config.cluster_buffer, max_clients=config.max_clients,
        )
        self.reactor = Reactor([listener], config, clock=self.clock, selector=NeverSleeps(), cluster=self.driver)
        self.peers: list[Peer] = []
        if join:
            self.until(lambda: self.driver.joined, "joined")

    def until(self, condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
        """Run turns (polls: the selector never sleeps) until ``condition()``, within ``timeout`` real seconds."""
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"not {what} within {timeout} s"
            self.reactor.run_once()

    def until_ticking(self, condition: Callable[[], bool], what: str, step: float = 0.1, timeout: float = 10.0) -> None:
        """Run turns until ``condition()``, the clock moving ``step`` seconds after each turn in which
        the writer waits for no reply: backoffs pass, but no reply deadline runs out on a Redis that
        answers in real time."""
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"not {what} within {timeout} s"
            self.reactor.run_once()
            if not self.driver.writer.pending_commands:
                self.clock.advance(step)

    def connect(self) -> Peer:
        server_end, client_end = socket.socketpair()
        peer = Peer(client_end)
        self.peers.append(peer)
        assert self.reactor.adopt(server_end, ("pair", len(self.peers))) is not None
        return peer

    def login(self, name: str) -> Peer:
        peer = self.connect()
        peer.say(f"LOGIN {name}")
        self.lines(peer, ["OK"])
        return peer

    def lines(self, peer: Peer, expected: list[str], timeout: float = 5.0) -> None:
        """Run turns until ``peer`` has received ``len(expected)`` lines, and check them."""
        got: list[str] = []
        deadline = time.monotonic() + timeout
        while len(got) < len(expected):
            assert time.monotonic() < deadline, f"{got} within {timeout} s, not {expected}"
            self.reactor.run_once()
            got += peer.lines()
        assert got == expected

    def close(self) -> None:
        self.reactor.close()
        for peer in self.peers:
            peer.close()


@pytest.fixture
def hand_driven():
    made: list[HandDriven] = []

    def make(url: str, join: bool = True, **settings) -> HandDriven:
        made.append(HandDriven(url, join, **settings))
        return made[-1]

    yield make
    for node in made:
        node.close()


def readable(fileno: int, timeout: float = 5.0) -> None:
    """Wait until ``fileno`` has something to read (without reading it)."""
    assert select.select([fileno], [], [], timeout)[0], f"nothing to read within {timeout} s"


def test_a_turns_appends_are_one_stream_entry_of_at_most_a_batch(redis, hand_driven, monkeypatch):
    """One XADD per turn (cut at APPEND_BATCH entries), each log entry a field, read back in order."""
    monkeypatch.setattr(reactor.cluster, "APPEND_BATCH", 3)
    engine = redis()
    node = hand_driven(engine.url())
    alice, bob = node.login("alice"), node.login("bob")
    before = len(engine.command("XRANGE", "chat:log", "-", "+"))
    alice.say(*(f"MSG m{i}" for i in range(7)))  # one write: one turn reads all seven
    node.lines(bob, [f"MSG alice m{i}" for i in range(7)])
    records = engine.command("XRANGE", "chat:log", "-", "+")[before:]
    assert [len(fields) // 2 for _, fields in records] == [3, 3, 1]
    assert all(fields[::2] == [b"e"] * (len(fields) // 2) for _, fields in records)
    texts = [entry[-2:] for _, fields in records for entry in fields[1::2]]
    assert texts == [f"m{i}".encode() for i in range(7)]


def test_a_line_read_in_the_turn_the_writer_comes_back_goes_after_the_ones_that_waited(redis, hand_driven):
    """Lines that waited for the engine are appended again before any new one, or the fold drops them."""
    engine = redis()
    node = hand_driven(engine.url())
    alice, bob = node.login("alice"), node.login("bob")
    writer = node.driver.writer
    engine.command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")  # both links drop; Redis keeps its data
    node.until(lambda: not writer.ready, "the writer lost")
    alice.say("MSG one")  # waits for the engine
    node.until(lambda: node.driver.node.unconfirmed_bytes, "MSG one waiting")
    node.clock.advance(writer.wakeup_at - node.clock() + 0.2)  # (the timer wheel ticks every 0.1 s)
    node.until(lambda: writer.state is LinkState.HANDSHAKING, "the writer reconnecting")
    readable(writer.fileno())  # the handshake's reply is here: the next turn makes the writer ready ...
    alice.say("MSG two")  # ... and reads this line in the same turn
    node.reactor.run_once()
    assert writer.ready
    node.clock.advance(0.3)  # the reader's reconnection too
    node.lines(bob, ["MSG alice one", "MSG alice two"])


def test_a_node_the_others_declared_down_closes_its_clients_and_starts_a_new_node(redis, hand_driven, caplog):
    """The log says it is dead (another node saw its lease gone): it never serves again, its process does."""
    engine = redis()
    doomed, judge = hand_driven(engine.url()), hand_driven(engine.url())
    alice = doomed.login("alice")
    old = doomed.driver.node
    judge.reactor.feed_machine(NodeExpired(old.node_id))  # as if its lease had run out
    judge.until(lambda: not judge.driver.node.unconfirmed_count, "the NodeDown in the log")
    doomed.lines(alice, ["ERR server-unavailable"])
    alice.close()
    doomed.until(lambda: doomed.driver.node is not old and doomed.driver.joined, "a new node serving")
    bob = doomed.login("bob")
    bob.say("WHO")
    doomed.lines(bob, ["USER bob"])
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [f"cluster: node {old.node_id} leaves the cluster: the others declared it down"]


def test_a_writer_back_after_the_lease_ran_out_sends_none_of_the_lines_that_waited(redis, hand_driven):
    """The lease ran out between two looks at it, and the writer reconnects just then: the node gives
    up (its clients are told) and appends nothing, or a line its sender saw fail would reach others."""
    engine = redis()
    judge = hand_driven(engine.url(), cluster_lease=60)  # (its own clock does not move: a long lease)
    doomed = hand_driven(engine.url(), cluster_lease=LEASE)
    bob, alice = judge.login("bob"), doomed.login("alice")
    writer = doomed.driver.writer
    renewed = doomed.driver._renewed_at
    engine.command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    engine.pause()  # connections are accepted, nothing answers
    try:
        doomed.until(lambda: not writer.ready, "the writer lost")
        alice.say("MSG late")  # waits for the engine
        doomed.until(lambda: doomed.driver.node.unconfirmed_count, "the line waiting")
        # Every timer due up to the lease's end runs (the writer tries again, its handshake gets
        # no answer; the lease is looked at every third of it and has not run out); then the
        # clock moves just past the end, before the next look.
        wheel, limit = doomed.reactor._wheel, renewed + LEASE
        for _ in range(100):
            due = wheel.next_wakeup()
            if due is None or due > limit:
                break
            doomed.clock.now = max(doomed.clock.now, due)
            doomed.reactor.run_once()
        doomed.clock.now = limit + 0.01
        assert wheel.next_wakeup() > doomed.clock.now
        doomed.reactor.run_once()
        doomed.until(lambda: writer.state is LinkState.HANDSHAKING, "the writer handshaking")
        assert doomed.driver.joined
    finally:
        engine.resume()
    doomed.lines(alice, ["ERR server-unavailable"])  # noticed when the writer came back
    doomed.until(lambda: writer.ready and not writer.pending_commands, "the writer's commands done")
    links = (judge.driver.writer, judge.driver.reader)
    judge.until(lambda: not any(link.ready for link in links), "the judge's links cut too")
    judge.clock.advance(0.5)  # they try again
    judge.until(lambda: all(link.ready for link in links), "the judge's links back")
    bob.say("WHO")
    judge.lines(bob, ["USER bob", "USER alice"])  # and no MSG alice late before them


def test_an_append_the_engine_refuses_closes_the_clients_and_a_new_node_joins(redis, hand_driven, caplog):
    """Redis out of memory refuses the XADD: the line can never be delivered, so nobody may think it was."""
    engine = redis()
    node = hand_driven(engine.url())
    alice, bob = node.login("alice"), node.login("bob")
    old = node.driver.node
    engine.command("CONFIG", "SET", "maxmemory-policy", "noeviction")
    engine.command("CONFIG", "SET", "maxmemory", "1")  # every write refused: OOM
    alice.say("MSG lost")
    node.lines(alice, ["ERR server-unavailable"])
    node.lines(bob, ["ERR server-unavailable"])  # not "MSG alice lost" first, nor ever
    engine.command("CONFIG", "SET", "maxmemory", "0")
    alice.close()
    bob.close()
    node.until_ticking(lambda: node.driver.node is not old and node.driver.joined, "a new node serving")
    carol = node.login("carol")
    carol.say("WHO")
    node.lines(carol, ["USER carol"])  # alice and bob left with the old node
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors[0].startswith("cluster: an append was refused: OOM")
    assert errors[1] == f"cluster: node {old.node_id} leaves the cluster: the engine refused an append"


def lose_the_lease(node: HandDriven, engine) -> None:
    """Cut both links and let more than a lease pass on the node's clock: it gives up its node."""
    engine.command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    node.until(lambda: not node.driver.writer.ready and not node.driver.reader.ready, "both links lost")
    node.clock.advance(LEASE + 0.5)
    node.until(lambda: node.driver.node.phase is Phase.DOWN, "the node given up")


def test_a_new_node_waits_for_the_clients_the_old_one_refused(redis, hand_driven, caplog):
    """A client refused while the new node starts keeps the old one busy: the new one takes over after it."""
    engine = redis()
    node = hand_driven(engine.url(), cluster_lease=LEASE)
    alice = node.login("alice")
    old = node.driver.node
    lose_the_lease(node, engine)
    node.lines(alice, ["ERR server-unavailable"])
    alice.close()
    node.clock.advance(LEASE)  # past the backoff before the next node
    node.until(lambda: node.driver._starting, "the engine back, alice gone: a new node starting")
    bob = node.connect()  # refused by the old node, and it does not hang up yet
    node.until(lambda: node.driver._leased is not None, "the new node's lease taken")
    node.reactor.run_once()
    assert node.driver.node is old and len(old) == 1  # bob is still the old node's
    node.lines(bob, ["ERR server-unavailable"])
    bob.close()
    node.until(lambda: node.driver.node is not old and node.driver.joined, "the new node serving")
    carol = node.login("carol")
    carol.say("WHO")
    node.lines(carol, ["USER carol"])  # alice left with the old node, whose lease is gone
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [f"cluster: node {old.node_id} leaves the cluster: its lease could not be renewed for 2 s"]


def test_redis_restarted_without_its_data_closes_clients_and_the_nodes_start_afresh(redis):
    """A new epoch: whatever the nodes folded is gone, so they close their clients and join anew."""
    engine = redis()  # no persistence
    with cluster_processes(engine.url(), 2) as nodes:
        users = [login(nodes.port, f"u{i}") for i in range(4)]
        for user in users:
            user.sync()
        engine.kill()
        engine.restart()
        for user in users:
            assert user.read_until_closed() == b"ERR server-unavailable\n"
        for node in nodes:
            node.wait_for_stderr(rb"cluster: node \d+ leaves the cluster: the engine lost its data")
        back = [login_when_back(node.port, f"u{i}") for i, node in enumerate(nodes)]  # the names are free
        back[1].say("WHO")
        back[1].expect("USER u0", "USER u1")
        clean_exit(nodes, *back)


def test_after_redis_lost_its_data_no_node_retires_a_new_node_that_got_its_old_id(redis, hand_driven):
    """Ids start again at 1 in an empty Redis: a node's predecessor in the old log is not one in the new.

    The second node rejoins first and gets id 1, the first node's old id;
    when the first node rejoins, it must not report its predecessor (1)
    expired, or it would take the second node's new users with it.
    """
    engine = redis()  # no persistence
    first, second = hand_driven(engine.url()), hand_driven(engine.url())
    assert (first.driver.node.node_id, second.driver.node.node_id) == (1, 2)
    engine.kill()
    engine.restart()
    for node, new_id in ((second, 1), (first, 2)):
        old = node.driver.node
        node.until_ticking(lambda n=node, o=old: n.driver.node is not o and n.driver.joined, "a new node serving")
        assert node.driver.node.node_id == new_id
    first.until(lambda: not first.driver.node.unconfirmed_count, "the first node's entries in the log")
    bob = second.login("bob")
    first.login("alice")
    bob.say("WHO")
    second.lines(bob, ["USER bob", "USER alice"])
    assert second.driver.node.phase is Phase.JOINED


def rss(pid: int) -> int:
    """The resident memory of process ``pid``, in bytes (Linux: /proc/PID/status, VmRSS)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


class Drain(threading.Thread):
    """Reads a client's bytes in the background; keeps the MSG lines of ``keep`` senders, counts the rest."""

    def __init__(self, client: Client, keep: bool) -> None:
        super().__init__(daemon=True)
        self.client, self.keep = client, keep
        self.lines: list[bytes] = []
        self.count = 0
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.start()

    def run(self) -> None:
        rest = b""
        sock = self.client.sock
        sock.settimeout(30)
        try:
            while not self.done.is_set():
                data = sock.recv(1 << 20)
                if not data:
                    raise AssertionError("the server closed a reader")
                *lines, rest = (rest + data).split(b"\n")
                self.count += len(lines)
                if self.keep:
                    self.lines += lines
        except BaseException as error:
            if not self.done.is_set():
                self.error = error


LINES_IN = re.compile(rb"stats: users=\d+ connections=\d+ accepted=\d+ refused=\d+ lines_in=(\d+)")


def lines_in(node, count: int) -> int:
    """SIGUSR1, and the ``lines_in`` of the node's ``count``-th statistics line."""
    node.process.send_signal(signal.SIGUSR1)
    return int(node.wait_for_stderr(LINES_IN.pattern, count=count)[-1].group(1))


@pytest.mark.slow
def test_redis_paused_under_full_load_bounds_memory_and_pauses_senders(redis):
    """SIGSTOP on Redis for 2 s while four users send as fast as they can (no flood control)."""
    engine = redis()
    buffer = 4 * 1024 * 1024
    senders_count, per_sender, text = 4, 15_000, "x" * 100
    with cluster_processes(
        engine.url(), 1, "--cluster-buffer", str(buffer), "--rate", "0", "--idle-timeout", "0"
    ) as nodes:
        node = nodes[0]
        pid = node.process.pid
        watcher = login(node.port, "watcher")
        senders = [login(node.port, f"s{i}") for i in range(senders_count)]
        drains = [Drain(watcher, keep=True)] + [Drain(sender, keep=False) for sender in senders]
        blob = "".join(f"MSG {k} {text}\n" for k in range(per_sender)).encode()
        threads = [threading.Thread(target=sender.send, args=(blob,), daemon=True) for sender in senders]
        for thread in threads:
            thread.start()
        loaded = [rss(pid)]
        deadline = time.monotonic() + 20
        while drains[0].count < 5000:  # the load is on
            assert time.monotonic() < deadline, drains[0].count
            loaded.append(rss(pid))
            time.sleep(0.02)  # sampling memory while the load runs
        engine.pause()
        paused_at = time.monotonic()
        paused = []
        taken: list[int] = []
        for half in (1, 2):
            while time.monotonic() - paused_at < half:
                paused.append(rss(pid))
                time.sleep(0.02)  # the pause lasts 2 s; memory sampled through it
            taken.append(lines_in(node, half))
        engine.resume()
        expected = senders_count * per_sender
        deadline = time.monotonic() + 60
        while drains[0].count < expected:
            assert time.monotonic() < deadline, f"{drains[0].count} of {expected} lines"
            assert all(d.error is None for d in drains), [d.error for d in drains]
            time.sleep(0.05)  # the backlog drains at the node's pace; polled with a deadline
        for i in range(senders_count):
            own = [line for line in drains[0].lines if line.startswith(f"MSG s{i} ".encode())]
            assert own == [f"MSG s{i} {k} {text}".encode() for k in range(per_sender)], f"s{i}"
        growth = max(paused) - max(loaded)
        print(
            f"VmRSS under load {max(loaded) / 2**20:.1f} MiB, with Redis paused {max(paused) / 2**20:.1f} MiB "
            f"(+{growth / 2**20:.2f} MiB; --cluster-buffer {buffer / 2**20:g} MiB); "
            f"lines taken in the pause's second half: {taken[1] - taken[0]}"
        )
        assert taken[1] == taken[0] < expected, "the senders were not paused"
        assert growth <= buffer + 2 * 1024 * 1024  # the buffer, one turn's lines, the allocator's arenas
        for drain in drains:
            drain.done.set()
        assert b"slow consumer" not in node.stderr
        clean_exit(nodes, watcher, *senders)


# -- snapshots: a node joins late, whatever is stored ---------------------------------------------


def eventually(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    """Poll Redis's state (another process's progress) until ``condition()``, within ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not {what} within {timeout} s"
        time.sleep(0.01)


def stream_info(engine) -> dict[bytes, object]:
    reply = engine.command("XINFO", "STREAM", "chat:log")
    return dict(zip(reply[::2], reply[1::2], strict=True))


@pytest.mark.parametrize("stored", [b"not a snapshot", b"\x01" * 40, "a list"])
def test_a_bad_stored_snapshot_does_not_stop_a_node_from_joining(redis, stored):
    """Undecodable bytes, or a key of another type: logged, and the node folds the log from its start."""
    engine = redis()
    with cluster_processes(engine.url(), 1) as nodes:
        alice = login(nodes[0].port, "alice")
        if stored == "a list":
            engine.command("RPUSH", "chat:snapshot", "x")
        else:
            engine.command("SET", "chat:snapshot", stored)
        nodes.servers.append(node_process(engine.url()))  # it joins: its startup line came
        bob = login(nodes[1].port, "bob")
        bob.say("WHO")
        bob.expect("USER alice", "USER bob")
        alice.sync()
        nodes[1].wait_for_stderr(rb"ERROR: cluster: the stored snapshot does not decode \(.+\): starting from the log")
        clean_exit(nodes, alice, bob)


def test_a_node_joins_from_the_snapshot_once_the_log_is_trimmed_and_waits_for_a_good_one(
    redis, hand_driven, monkeypatch
):
    """Snapshots every 10 entries here.  A node that finds the log trimmed joins from the snapshot;
    with the snapshot damaged it cannot join (it would show a partial picture), so it tries again,
    backing off, and joins once a live node has stored a new one."""
    monkeypatch.setattr(reactor.cluster, "SNAPSHOT_EVERY", 10)
    engine = redis()
    with threaded_cluster(engine.url(), 1) as first:
        alice, bob = login(first.port, "alice"), login(first.port, "bob")
        for round_start in (0, 12, 24):  # a snapshot after each round, the log trimmed to the one before
            alice.say(*[f"MSG {k}" for k in range(round_start, round_start + 12)])
            bob.expect(*[f"MSG alice {k}" for k in range(round_start, round_start + 12)])
        eventually(lambda: stream_info(engine)[b"length"] < stream_info(engine)[b"entries-added"], "a trim")
        late = hand_driven(engine.url())  # from the stored snapshot
        carol = late.login("carol")
        carol.say("WHO")
        late.lines(carol, ["USER alice", "USER bob", "USER carol"])
        engine.command("SET", "chat:snapshot", "damaged")
        later = hand_driven(engine.url(), join=False)
        later.until(lambda: later.driver.node is not None and later.driver._down, "its first node given up")
        assert not later.reactor.serving
        position = engine.command("GET", "chat:snapshot-position")
        alice.say(*[f"MSG {k}" for k in range(36, 48)])  # the live node stores a new snapshot
        bob.expect(*[f"MSG alice {k}" for k in range(36, 48)])
        eventually(lambda: engine.command("GET", "chat:snapshot-position") != position, "a new snapshot")
        deadline = time.monotonic() + 10
        while not later.driver.joined:  # the next attempts, on its clock
            assert time.monotonic() < deadline, "the late node never joined"
            later.clock.advance(0.5)
            later.reactor.run_once()
        dave = later.login("dave")
        dave.say("WHO")
        later.lines(dave, ["USER alice", "USER bob", "USER carol", "USER dave"])
        first[0].errors.clear()  # the late nodes' ERROR lines went through this process's logger


# -- the driver's pure pieces ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "a, b, later",
    [
        ("2-0", "1-0", True), ("1-0", "2-0", False), ("1-1", "1-1", False),
        ("1-10", "1-9", True), ("10-0", "9-99", True),  # numbers, not strings
        ("1700000000000-1", "1700000000000", True), ("5", "5-0", False),  # a bare time is its -0
        ("0-1", "0-0", True),
    ],
)
def test_later_compares_stream_ids_as_two_numbers(a, b, later):
    assert reactor.cluster._later(a, b) is later


def test_trimmed_past_on_real_xinfo_replies(redis):
    """Redis 7's own answers: a young stream, one trimmed (XTRIM MINID), one with an entry deleted, an emptied one."""
    trimmed_past = reactor.cluster._trimmed_past
    engine = redis()

    def info() -> list:
        return engine.command("XINFO", "STREAM", "s")

    ids = [engine.command("XADD", "s", f"1-{k}", "e", "x").decode() for k in range(1, 6)]
    for position in ["0-0", *ids]:
        assert not trimmed_past(info(), position)  # nothing removed: any position may read on
    engine.command("XTRIM", "s", "MINID", ids[2])  # 1-1 and 1-2 are gone
    assert trimmed_past(info(), "0-0")  # a new node without a snapshot would miss them
    assert trimmed_past(info(), ids[0])  # a node that folded 1-1 would miss 1-2
    assert trimmed_past(info(), ids[1])  # conservative: nothing says there was nothing between 1-2 and 1-3
    assert not trimmed_past(info(), ids[2]) and not trimmed_past(info(), ids[4])
    engine.command("XDEL", "s", ids[3])  # max-deleted-entry-id
    assert trimmed_past(info(), ids[2]) and not trimmed_past(info(), ids[3])
    engine.command("XTRIM", "s", "MAXLEN", "0")
    assert trimmed_past(info(), ids[3]) and not trimmed_past(info(), ids[4])


def test_trimmed_past_on_redis_6_2_replies():
    """No entries-added and no max-deleted-entry-id: a first entry later than the position counts."""
    trimmed_past = reactor.cluster._trimmed_past

    def info(first: str | None) -> list:
        entry = [first.encode(), [b"e", b"x"]] if first else None
        return [b"length", 3, b"radix-tree-keys", 1, b"radix-tree-nodes", 2,
                b"last-generated-id", b"1-9", b"groups", 0, b"first-entry", entry, b"last-entry", entry]

    assert trimmed_past(info("1-5"), "1-2") and not trimmed_past(info("1-5"), "1-5")
    assert not trimmed_past(info("1-5"), "0-0")  # a young log or a trimmed one: 6.2 cannot tell
    assert not trimmed_past(info(None), "1-2")
