"""A cluster of 2-4 nodes against ONE standalone ChatMachine, step by step.

Theory of operation
-------------------
Hypothesis runs a cluster over an in-memory log (``cluster_sim``): clients
spread over the nodes send random commands; each node's appends reach the
log when a rule says so (so appends of different nodes interleave in every
way), and each node reads the log with its own delay; nodes are killed,
declared dead by others (sometimes wrongly: a false suspicion), lose the
cluster, shut down, re-send what they are unsure of (duplicates), and new
nodes join late from a snapshot.

After every step these hold:

1. **Cluster equals one server.**  Every client's transcript is exactly
   what one standalone ``ChatMachine`` gives that client when fed every
   client's commands in *log order*.  The order is built from what the
   test saw, never from the node's internals: a command that produced an
   entry sits at the entry's position in the log; a command answered
   locally sits where its node was in the log when it got the command, but
   never before the same client's previous command (so a PING queued
   behind a WHO sits right after the WHO).  A ``NodeDown`` sits at its
   position as the departure of all of that node's users.  A client whose
   connection ended, or that was closed by a cluster-only reason (``ERR
   server-unavailable``, ``ERR server-shutting-down``), is compared up to
   that moment (plus that one line).
2. **Replies in command order**: the same comparison on ``Reply`` output
   alone.
3. **Names unique, states equal**: at every position of the log, the
   replicated state's list of users is the one server's, with no two names
   alike; and every node's list is the one at its own position.
4. **One order**: any two clients received the MSG and DM lines they both
   got in the same relative order, and each sender's lines in the order it
   sent them.
5. At the end, snapshots survive their encoding and restore to the same state.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import strategies as gen
from cluster_sim import Engine, SimNode
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from protocol import (
    Broadcast,
    ChatMachine,
    Close,
    CloseReason,
    ConnectionClosed,
    ConnectionOpened,
    ConnectionsClosed,
    ConnState,
    Deliver,
    IdleTimedOut,
    LineReceived,
    LineTooLong,
    Reply,
    ShutdownStarted,
    TelnetOptionRequested,
    name_key,
)
from protocol.cluster import (
    Append,
    Closed,
    ClusterState,
    ClusterUnavailable,
    Idle,
    NodeDown,
    NodeExpired,
    NodeStarted,
    NodeUp,
    decode_entry,
    decode_snapshot,
    encode_snapshot,
)

INF = 10**9
MAX_NODES = 4  # running at once
CLUSTER_ONLY = {
    CloseReason.SERVER_UNAVAILABLE: b"ERR server-unavailable\n",
    CloseReason.SHUTTING_DOWN: b"ERR server-shutting-down\n",
}
# Colliding names (case, width, composition, the Kelvin sign), a few distinct ones so that
# several users are logged in at once, and an invalid one.
NAMES = (
    "Naman", "naman", "ｎａｍａｎ", "Yudi", "YUDI", "Jos\u00e9", "Jose\u0301", "k", "\u212a",
    "ann", "bob", "cy", "dee", "eve", "a b",
)
TOKEN = re.compile(rb"@@(\d+)\n\Z")  # the strategies' alphabets have no '@'



@dataclass(eq=False)
class Item:
    """One client event, placed in the one order once its place is known."""

    event: object  # the event for the reference machine (reference ids)
    tick: int
    fold: int  # how many entries the client's node had read when it got the event
    entry: tuple[int, int] | None = None  # (author, serial) if the event became an entry
    key: tuple[int, int, int] | None = None


@dataclass(eq=False)
class Client:
    ref: int
    node: int
    conn: str
    items: list[Item] = field(default_factory=list)
    reported_closed: bool = False
    bound: tuple[int, int, int] | None = None  # compared up to here (it ended, or its node died)
    extra: bytes = b""  # the cluster-only last line after the bound
    refused: bytes | None = None  # refused at connect: this is all it got


class ClusterVsOneServer(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.engine = Engine()
        self.sims: dict[int, SimNode] = {}
        self.running: list[int] = []  # node ids whose process runs
        self.next_node = 1
        self.clients: list[Client] = []
        self.by_conn: dict[str, Client] = {}
        self.tick = 0
        self.token = 0
        self.owner: dict[tuple[int, int], Item] = {}  # (author, serial) -> the item it came from
        self.position: dict[tuple[int, int], int] = {}  # (author, serial) -> first log position
        self.sender_of: dict[int, Client] = {}  # MSG/DM token -> sender
        self.decoded: list = []  # the log's entries, decoded

    # -- plumbing ----------------------------------------------------------

    def start_node(self, snapshot_from: int | None = None) -> int:
        node_id = self.next_node
        self.next_node += 1
        if snapshot_from is None:
            sim = SimNode(self.engine, node_id)
        else:
            source = self.sims[snapshot_from]
            snapshot = decode_snapshot(encode_snapshot(source.node.snapshot()))
            sim = SimNode(self.engine, node_id, snapshot=snapshot, cursor=source.cursor)
        self.sims[node_id] = sim
        self.running.append(node_id)
        self.handle(sim, NodeStarted())
        return node_id

    def handle(self, sim: SimNode, event) -> list:
        self.tick += 1
        fold_before = sim.cursor
        effects = sim.handle(event)
        self.note_cluster_only_closes(sim, effects, (fold_before, 0, self.tick))
        return effects

    def note_cluster_only_closes(self, sim: SimNode, effects, bound) -> None:
        for effect in effects:
            if isinstance(effect, Close) and effect.reason in CLUSTER_ONLY:
                client = self.by_conn[effect.conn]
                if client.refused is None and client.bound is None:
                    client.bound = bound
                    client.extra = CLUSTER_ONLY[effect.reason]

    def client_event(self, client: Client, event, reference_event) -> None:
        """Hand a client's event to its node; record where it goes in the one order."""
        sim = self.sims[client.node]
        fold = sim.cursor
        effects = self.handle(sim, event)
        entries = [decode_entry(e.entry) for e in effects if isinstance(e, Append)]
        assert len(entries) <= 1, entries
        if client.bound is not None or client.refused is not None:
            return  # the node closed it for a cluster-only reason: the one server never hears of it
        item = Item(reference_event, self.tick, fold)
        if entries:
            entry = entries[0]
            conns = entry.conns if isinstance(entry, Idle) else (entry.conn,)
            assert entry.author == client.node and conns == (sim.node.conn_number(client.conn),), entry
            item.entry = (entry.author, entry.serial)
            self.owner[item.entry] = item
        client.items.append(item)

    def open_client(self, node: int) -> Client:
        ref = len(self.clients)
        client = Client(ref, node, f"c{ref}")
        self.clients.append(client)
        self.by_conn[client.conn] = client
        sim = self.sims[node]
        effects = self.handle(sim, ConnectionOpened(client.conn))
        if effects:
            client.refused = sim.received[client.conn]
            client.reported_closed = True
            self.handle(sim, ConnectionClosed(client.conn))
        else:
            client.items.append(Item(ConnectionOpened(ref), self.tick, sim.cursor))
        return client

    def usable(self) -> list[Client]:
        return [c for c in self.clients if not c.reported_closed and c.node in self.running]

    def joined(self) -> list[int]:
        return [n for n in self.running if self.sims[n].node.joined]

    # -- rules -------------------------------------------------------------

    @initialize(
        nodes=st.integers(2, 3),
        users=st.lists(st.sampled_from(("ann", "bob", "cy", "dee", "eve", "Naman")), unique=True, max_size=5),
    )
    def start(self, nodes, users):
        """A running cluster, usually with a few users logged in on each node already."""
        for _ in range(nodes):
            self.start_node()
        self.sync()
        assert len(self.joined()) == nodes
        for index, name in enumerate(users):
            client = self.open_client(self.running[index % nodes])
            line = b"LOGIN " + name.encode()
            self.client_event(client, LineReceived(client.conn, line), LineReceived(client.ref, line))
        self.sync()

    def read_all(self, node: int) -> None:
        sim = self.sims[node]
        self.tick += 1
        effects = sim.read()
        self.note_cluster_only_closes(sim, effects, (sim.cursor, 0, -1))

    @precondition(lambda self: self.running)
    @rule(data=st.data(), login=st.one_of(st.none(), st.sampled_from(NAMES), st.sampled_from(NAMES)))
    def connect(self, data, login):
        node = data.draw(st.sampled_from(self.running), label="node")
        client = self.open_client(node)
        if login is not None and client.refused is None:
            line = b"LOGIN " + login.encode()
            self.client_event(client, LineReceived(client.conn, line), LineReceived(client.ref, line))

    @precondition(lambda self: self.usable())
    @rule(data=st.data(), kind=st.sampled_from(
        ("login", "msg", "msg", "msg", "dm", "dm", "who", "who", "ping", "ping", "quit", "junk", "junk", "http")
    ))
    def command(self, data, kind):
        client = data.draw(st.sampled_from(self.usable()), label="client")
        if kind == "login":
            line = b"LOGIN " + data.draw(st.sampled_from(NAMES)).encode()
        elif kind in ("msg", "dm"):
            self.token += 1
            self.sender_of[self.token] = client
            text = data.draw(gen.texts).encode() + b" @@%d" % self.token
            target = data.draw(st.sampled_from(NAMES)).encode() + b" " if kind == "dm" else b""
            line = (b"MSG " if kind == "msg" else b"DM ") + target + text
        elif kind == "junk":
            line = data.draw(gen.lines, label="junk")
        elif kind == "http":
            line = data.draw(st.sampled_from(gen.HTTP_LINES)).encode()
        else:
            line = kind.upper().encode()
        self.client_event(client, LineReceived(client.conn, line), LineReceived(client.ref, line))

    @precondition(lambda self: self.usable())
    @rule(data=st.data(), kind=st.sampled_from(("too-long", "telnet", "idle")), request=gen.telnet_requests)
    def stream_event(self, data, kind, request):
        client = data.draw(st.sampled_from(self.usable()), label="client")
        if kind == "too-long":
            pair = LineTooLong(client.conn), LineTooLong(client.ref)
        elif kind == "telnet":
            pair = TelnetOptionRequested(client.conn, *request), TelnetOptionRequested(client.ref, *request)
        else:
            pair = IdleTimedOut(client.conn), IdleTimedOut(client.ref)
        self.client_event(client, *pair)

    @precondition(lambda self: self.usable())
    @rule(data=st.data())
    def disconnect(self, data):
        """One client's connection ends, or several of one node's in one turn."""
        first = data.draw(st.sampled_from(self.usable()), label="client")
        mates = [c for c in self.usable() if c.node == first.node and c is not first]
        others = data.draw(st.lists(st.sampled_from(mates), unique=True, max_size=2) if mates else st.just([]))
        group = [first, *others]
        sim = self.sims[first.node]
        fold = sim.cursor
        numbers = {client.conn: sim.node.conn_number(client.conn) for client in group}
        for client in group:
            client.reported_closed = True
        event = ConnectionClosed(first.conn) if len(group) == 1 else ConnectionsClosed(tuple(c.conn for c in group))
        effects = self.handle(sim, event)
        entries = [decode_entry(e.entry) for e in effects if isinstance(e, Append)]
        assert len(entries) <= 1 and all(isinstance(e, Closed) for e in entries), entries
        in_log = set(entries[0].conns) if entries else set()
        # A client already closed for a cluster-only reason is gone for the one server too: its
        # departure is its node's NodeDown, wherever the log has it.
        heard = [c for c in group if c.bound is None]
        logged = [c for c in heard if numbers[c.conn] in in_log]
        assert len(logged) == len(in_log), (logged, in_log)
        for client in heard:
            client.bound = (fold, 0, self.tick)
            if client not in logged:
                client.items.append(Item(ConnectionClosed(client.ref), self.tick, fold))
        if logged:
            refs = tuple(c.ref for c in logged)
            item = Item(ConnectionClosed(refs[0]) if len(refs) == 1 else ConnectionsClosed(refs), self.tick, fold)
            item.entry = (entries[0].author, entries[0].serial)
            self.owner[item.entry] = item
            for client in logged:
                client.items.append(item)

    @precondition(lambda self: any(self.sims[n].outgoing for n in self.running))
    @rule(data=st.data(), count=st.integers(1, 4))
    def commit(self, data, count):
        """The engine takes the next few appends of one node."""
        node = data.draw(st.sampled_from([n for n in self.running if self.sims[n].outgoing]), label="node")
        self.sims[node].commit(count)

    @precondition(lambda self: any(self.sims[n].lag for n in self.running))
    @rule(data=st.data(), count=st.integers(1, 5))
    def read(self, data, count):
        """One node reads the next few entries, at its own pace."""
        node = data.draw(st.sampled_from([n for n in self.running if self.sims[n].lag]), label="node")
        sim = self.sims[node]
        self.tick += 1
        effects = sim.read(count)
        self.note_cluster_only_closes(sim, effects, (sim.cursor, 0, -1))

    @precondition(lambda self: any(self.sims[n].outgoing or self.sims[n].lag for n in self.running))
    @rule()
    def sync_rule(self):
        self.sync()

    def sync(self):
        """The engine takes every append, and every node catches up."""
        for node in self.running:
            self.sims[node].commit()
        for node in self.running:
            self.read_all(node)

    @precondition(lambda self: len(self.running) < MAX_NODES and self.next_node <= 6)
    @rule(data=st.data(), late=st.booleans(), dice=st.integers(0, 2))
    def add_node(self, data, late, dice):
        """A node starts: from a snapshot of another (late start), or from the first entry."""
        if dice:  # failures and new nodes are rarer than traffic, so that traffic builds up between them
            return
        sources = self.joined()
        if late and sources:
            self.start_node(snapshot_from=data.draw(st.sampled_from(sources), label="snapshot of"))
        else:
            self.start_node()

    @precondition(lambda self: len(self.running) > 1)
    @rule(data=st.data(), survives=st.integers(0, 3), noticed=st.booleans(), dice=st.integers(0, 2))
    def kill(self, data, survives, noticed, dice):
        """kill -9: the appends already sent may reach the log, the rest are lost.

        Often another node then notices the lease ran out (``noticed``).
        """
        if dice:
            return
        node = data.draw(st.sampled_from(self.running), label="node")
        sim = self.sims[node]
        sim.commit(survives)
        sim.outgoing.clear()
        self.running.remove(node)
        self.tick += 1
        for client in self.clients:
            if client.node == node and client.bound is None and client.refused is None:
                client.bound = (sim.cursor, 0, self.tick)
        if noticed and self.joined():
            observer = data.draw(st.sampled_from(self.joined()), label="observer")
            self.handle(self.sims[observer], NodeExpired(node))

    @precondition(lambda self: self.joined())
    @rule(data=st.data(), dice=st.integers(0, 2))
    def expire(self, data, dice):
        """A node notices a lease ran out: a dead node's, or a live one's (a false suspicion)."""
        if dice:
            return
        observer = data.draw(st.sampled_from(self.joined()), label="observer")
        subject = data.draw(st.sampled_from(range(1, self.next_node)), label="subject (dead or alive)")
        self.handle(self.sims[observer], NodeExpired(subject))

    @precondition(lambda self: self.running)
    @rule(data=st.data(), how=st.sampled_from(("unavailable", "shutdown", "resend", "resend")), dice=st.integers(0, 2))
    def node_trouble(self, data, how, dice):
        if dice:
            return
        node = data.draw(st.sampled_from(self.running), label="node")
        sim = self.sims[node]
        if how == "unavailable":
            self.handle(sim, ClusterUnavailable())
        elif how == "shutdown":
            self.handle(sim, ShutdownStarted())
        else:  # reconnected to the engine, unsure what made it: send everything unconfirmed again
            sim.outgoing = sim.node.unconfirmed()

    # -- the one server ----------------------------------------------------

    def place(self) -> None:
        """Give every item whose place is known its key in the one order."""
        for entry, item in self.owner.items():
            if item.key is None and entry in self.position:
                item.key = (self.position[entry], 1, 0)
        for client in self.clients:
            before: tuple[int, int, int] | None = (0, 0, 0)
            for item in client.items:
                if item.entry is not None:
                    before = item.key
                elif before is None:
                    item.key = None
                else:
                    item.key = max((item.fold, 0, item.tick), (before[0], before[1], item.tick))
                    before = item.key
                if before is None:
                    break

    def note_positions(self) -> None:
        """Decode the entries new in the log (once: the log only grows) and note where each is."""
        for index in range(len(self.decoded), len(self.engine.log)):
            entry = decode_entry(self.engine.log[index])
            self.decoded.append(entry)
            self.position.setdefault((entry.author, entry.serial), index)

    def replay(self):
        """Feed one ChatMachine everything placed, in order; its output per client, keyed."""
        self.note_positions()
        self.place()
        steps: list[tuple[tuple[int, int, int], object]] = [
            ((p, 1, 0), p) for p in range(len(self.engine.log))
        ]
        seen_items = set()
        for client in self.clients:
            for item in client.items:
                if item.key is not None and item.entry is None and id(item) not in seen_items:
                    seen_items.add(id(item))
                    steps.append((item.key, item))
        steps.sort(key=lambda step: step[0])
        one = ChatMachine()
        out: dict[int, list[tuple[tuple[int, int, int], bytes, bool]]] = {}
        users_at = [[]]
        open_refs: set[int] = set()
        login_order: dict[int, None] = {}
        live: dict[int, int] = {}
        retired: set[int] = set()
        fold = ClusterState()  # the replicated state, checked at every point of the log
        for key, what in steps:
            if isinstance(what, int):
                event = self.entry_event(what, live, retired, open_refs, login_order)
                if event is not None:
                    self.feed(one, event, key, out, open_refs, login_order)
                users_at.append(one.usernames())
                fold.fold(self.decoded[what])
                users = fold.usernames()
                assert users == users_at[-1], f"the fold disagrees with the one server after entry {what}"
                keys = [name_key(name.encode()) for name in users]
                assert len(set(keys)) == len(keys), f"a name twice after entry {what}: {users}"
            else:
                self.feed(one, what.event, key, out, open_refs, login_order)
        return out, users_at

    def entry_event(self, position, live, retired, open_refs, login_order):
        """The event the one server sees for the log entry at ``position`` (None: ignored)."""
        entry = self.decoded[position]
        author = entry.author
        if author not in live:
            if isinstance(entry, NodeUp) and author not in retired:
                live[author] = entry.serial
            return None
        if entry.serial <= live[author]:
            return None  # a copy
        live[author] = entry.serial
        if isinstance(entry, NodeDown):
            if entry.node not in live:
                return None
            del live[entry.node]
            retired.add(entry.node)
            mine = [c.ref for c in self.clients if c.node == entry.node and c.ref in open_refs]
            leaving = [ref for ref in login_order if ref in mine] + [ref for ref in mine if ref not in login_order]
            return ConnectionsClosed(tuple(leaving)) if leaving else None
        if isinstance(entry, NodeUp):
            return None
        item = self.owner[(author, entry.serial)]
        assert self.position[(author, entry.serial)] == position
        return item.event

    @staticmethod
    def feed(one, event, key, out, open_refs, login_order) -> None:
        refs = (event.conn,) if hasattr(event, "conn") else ()
        if isinstance(event, ConnectionOpened):
            open_refs.add(event.conn)
        elif isinstance(event, (ConnectionClosed, ConnectionsClosed)):
            refs = (event.conn,) if isinstance(event, ConnectionClosed) else event.conns
            refs = tuple(ref for ref in refs if ref in open_refs)
            if not refs:
                return
            open_refs.difference_update(refs)
            for ref in refs:
                login_order.pop(ref, None)
            event = ConnectionClosed(refs[0]) if len(refs) == 1 else ConnectionsClosed(refs)
        elif event.conn not in open_refs:
            return
        for effect in one.handle(event):
            if isinstance(effect, Broadcast):
                for ref in effect.recipients():
                    out.setdefault(ref, []).append((key, effect.data, False))
            elif isinstance(effect, (Reply, Deliver)):
                out.setdefault(effect.conn, []).append((key, effect.data, isinstance(effect, Reply)))
        for ref in refs:  # only an event's own connections change state
            if one.state_of(ref) is ConnState.LOGGED_IN:
                login_order.setdefault(ref, None)
            else:
                login_order.pop(ref, None)

    # -- invariants --------------------------------------------------------

    @invariant()
    def cluster_equals_one_server(self):
        out, users_at = self.replay()
        for client in self.clients:
            sim = self.sims[client.node]
            got = sim.received.get(client.conn, b"")
            if client.refused is not None:
                assert got == client.refused and client.refused.startswith(b"ERR server-"), client
                continue
            bound = client.bound or (sim.cursor, 0, INF)
            chunks = [c for c in out.get(client.ref, []) if c[0] < bound]
            want = b"".join(data for _, data, _ in chunks) + client.extra
            assert got.splitlines() == want.splitlines(), f"client {client.ref} on node {client.node}"
            replies = sim.replies.get(client.conn, b"")
            want_replies = b"".join(data for _, data, reply in chunks if reply) + client.extra
            assert replies == want_replies, f"replies of client {client.ref}"
        for node in self.running:
            sim = self.sims[node]
            users = sim.node.usernames()
            assert users == users_at[sim.cursor], f"node {node} at {sim.cursor} disagrees with the one server"
            keys = [name_key(name.encode()) for name in users]
            assert len(set(keys)) == len(keys), users

    @invariant()
    def one_order(self):
        tokens = {}
        for client in self.clients:
            data = self.sims[client.node].received.get(client.conn, b"")
            seen = []
            for line in data.splitlines(keepends=True):
                match = TOKEN.search(line)
                if match and (line.startswith(b"MSG ") or line.startswith(b"DM ")):
                    seen.append(int(match.group(1)))
            tokens[client.ref] = seen
            by_sender: dict[int, list[int]] = {}
            for token in seen:
                by_sender.setdefault(self.sender_of[token].ref, []).append(token)
            for sender, sent in by_sender.items():
                assert sent == sorted(sent), f"client {client.ref} got sender {sender}'s lines out of order"
        refs = [ref for ref, seen in tokens.items() if seen]
        for a in refs:
            for b in refs:
                if a < b:
                    common = set(tokens[a]) & set(tokens[b])
                    order_a = [t for t in tokens[a] if t in common]
                    order_b = [t for t in tokens[b] if t in common]
                    assert order_a == order_b, f"clients {a} and {b} disagree on the order"

    def snapshots_restore(self):
        for node in self.running:
            snapshot = self.sims[node].node.snapshot()
            assert ClusterState.from_snapshot(decode_snapshot(encode_snapshot(snapshot))).snapshot() == snapshot

    def teardown(self):
        # Everything in flight reaches the log and every running node reads it all.
        for _ in range(3):
            for node in self.running:
                self.sims[node].commit()
            for node in self.running:
                self.read_all(node)
        self.cluster_equals_one_server()
        self.one_order()
        self.snapshots_restore()


# Runs of 60 steps; in CI at most 200 of them (about 15 s on 2 shared cores).
ClusterVsOneServer.TestCase.settings = settings(
    stateful_step_count=60, max_examples=min(settings.default.max_examples, 200)
)
test_cluster_behaves_as_one_server = ClusterVsOneServer.TestCase
