"""ChatMachine against the reference model (tests/model.py), step by step.

Layers: a table of examples whose expected bytes are written out by hand
from protocol.md (each checked against the model and the machine, so the
model is tested too), then a hypothesis ``RuleBasedStateMachine`` that opens
and closes several connections and sends them random valid and invalid
commands, idle timeouts, overlong lines, Telnet requests and a shutdown,
comparing after every step:

- the bytes each connection receives (``protocol.output_by_connection``),
  split into replies and lines from other users (``Reply`` versus
  ``Deliver``/``Broadcast``: only the latter can evict a slow consumer);
- the connections closed, with their reasons, and that nothing is sent to a
  connection after its ``Close`` in the same batch;
- ``usernames()`` (login order) and ``state_of()`` of every connection.

The event contract is respected throughout: only open connections get
events, each opened connection gets ``ConnectionClosed`` exactly once, and
connections the machine already closed keep getting events (which must
produce nothing) until then.
"""

from __future__ import annotations

import pytest
import strategies as gen
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    rule,
)
from model import ChatModel, Expected

from protocol import (
    Broadcast,
    ChatMachine,
    Close,
    ConnectionClosed,
    ConnectionOpened,
    ConnectionsClosed,
    ConnectionsTimedOut,
    Deliver,
    IdleTimedOut,
    LineReceived,
    LineTooLong,
    Reply,
    ShutdownStarted,
    TelnetOptionRequested,
    output_by_connection,
)

# -- comparing one step ---------------------------------------------------------


def split_lines(output: dict[object, bytes]) -> dict[object, list[bytes]]:
    """Per connection, its bytes as a list of lines (for readable failures)."""
    return {conn: data.splitlines(keepends=True) for conn, data in output.items() if data}


def by_kind(effects) -> dict[str, dict[object, bytes]]:
    replies = [e for e in effects if isinstance(e, Reply)]
    peers = [e for e in effects if isinstance(e, (Deliver, Broadcast))]
    return {"reply": output_by_connection(replies), "peer": output_by_connection(peers)}


def assert_same(event, effects, expected: Expected) -> None:
    """The machine's ``effects`` for ``event`` say what the model ``expected``."""
    got = split_lines(output_by_connection(effects))
    want = split_lines(expected.output())
    assert got == want, f"output differs for {event!r}"
    kinds = by_kind(effects)
    for kind in ("reply", "peer"):
        got_kind = split_lines(kinds[kind])
        want_kind = split_lines(expected.output((kind,)))
        assert got_kind == want_kind, f"{kind} lines differ for {event!r}"
    closes = {e.conn: e.reason.value for e in effects if isinstance(e, Close)}
    assert len(closes) == sum(isinstance(e, Close) for e in effects), f"double Close for {event!r}"
    assert closes == expected.closes, f"closes differ for {event!r}"
    closed = set()
    for effect in effects:
        if isinstance(effect, Close):
            closed.add(effect.conn)
        elif isinstance(effect, (Reply, Deliver)):
            assert effect.conn not in closed, f"{effect!r} after its Close for {event!r}"
        elif isinstance(effect, Broadcast):
            late = closed.intersection(effect.recipients())
            assert not late, f"{effect!r} reaches closed {late} for {event!r}"


def step(machine: ChatMachine, model: ChatModel, event) -> None:
    """Hand ``event`` to both and compare."""
    if isinstance(event, ConnectionOpened):
        expected = model.open(event.conn)
    elif isinstance(event, LineReceived):
        expected = model.line(event.conn, event.line)
    elif isinstance(event, LineTooLong):
        expected = model.too_long(event.conn)
    elif isinstance(event, TelnetOptionRequested):
        expected = model.telnet(event.conn, event.command, event.option)
    elif isinstance(event, IdleTimedOut):
        expected = model.idle(event.conn)
    elif isinstance(event, ConnectionClosed):
        expected = model.closed(event.conn)
    elif isinstance(event, ConnectionsClosed):
        expected = model.closed_together(list(event.conns))
    elif isinstance(event, ConnectionsTimedOut):
        expected = model.idle_together(list(event.conns))
    elif isinstance(event, ShutdownStarted):
        expected = model.shutdown()
    else:  # pragma: no cover
        raise AssertionError(event)
    assert_same(event, machine.handle(event), expected)
    assert machine.usernames() == model.usernames(), f"usernames differ after {event!r}"


# -- examples written out by hand from protocol.md --------------------------------

# Each script: (conn, line) pairs on connections 1 and 2 (both opened first),
# then the bytes each receives in total.  A few lines stand for other events:
# "!idle", "!too-long", "!telnet <verb> <option>", "!shutdown" (any conn).
EXAMPLES = {
    "ping before login": ([(1, b"ping")], {1: b"PONG\n"}),
    "case-insensitive command, tabs": (
        [(1, b"\tLoGiN \t Naman  "), (1, b"Who extra")],
        {1: b"OK\nUSER Naman\n"},
    ),
    "empty and blank lines are ignored": ([(1, b""), (1, b" \t ")], {}),
    "unknown before not-logged-in": ([(1, b"FOO"), (1, b"MSG hi")], {1: b"ERR unknown-command\nERR not-logged-in\n"}),
    "ASCII-only case folding": ([(1, "pıng".encode()), (1, "PİNG".encode())], {1: b"ERR unknown-command\n" * 2}),
    "nbsp is not whitespace": ([(1, "PING\u00a0".encode())], {1: b"ERR unknown-command\n"}),
    "CR in the middle is not whitespace": ([(1, b"PING\r")], {1: b"ERR unknown-command\n"}),
    "invalid utf-8": ([(1, b"LOGIN \xff")], {1: b"ERR invalid-utf8\n"}),
    "login errors": (
        [(1, b"LOGIN"), (1, b"LOGIN   "), (1, b"LOGIN a b"), (1, b"LOGIN " + b"a" * 33), (1, "LOGIN \u0301a".encode())],
        {1: b"ERR missing-username\n" * 2 + b"ERR invalid-username\n" * 3},
    ),
    "32 code points is fine": ([(1, b"LOGIN " + b"a" * 32)], {1: b"OK\n"}),
    "names collide under NFKC and casefold": (
        [(1, b"LOGIN Naman"), (2, b"LOGIN naman"), (2, "LOGIN ｎａｍａｎ".encode()), (2, "LOGIN Jose\u0301".encode())],
        {1: b"OK\n", 2: b"ERR username-taken\nERR username-taken\nOK\n"},
    ),
    "shown in NFKC form with the typed case": (
        [(1, "LOGIN ＮａＭａｎ".encode()), (1, b"WHO")],
        {1: b"OK\nUSER NaMan\n"},
    ),
    "already logged in whatever the argument": (
        [(1, b"LOGIN a"), (1, b"LOGIN"), (1, b"LOGIN a b")],
        {1: b"OK\n" + b"ERR already-logged-in\n" * 2},
    ),
    "message text keeps inner whitespace, loses controls": (
        [(1, b"LOGIN a"), (2, b"LOGIN b"), (1, "MSG  x \t y\x1b[31m\u2028z\x85 ".encode())],
        {1: b"OK\n", 2: b"OK\nMSG a x \t y[31mz\n"},
    ),
    "text empty after cleaning is missing": (
        [(1, b"LOGIN a"), (1, b"MSG \x01\x7f"), (1, b"DM a \x00"), (1, b"DM"), (1, b"DM zz")],
        {1: b"OK\n" + b"ERR missing-text\n" * 4},
    ),
    "DM checks text before the name": (
        [(1, b"LOGIN a"), (1, b"DM nobody"), (1, b"DM nobody hi")],
        {1: b"OK\nERR missing-text\nERR user-not-found\n"},
    ),
    "DM by key, to oneself too": (
        [(1, b"LOGIN Naman"), (2, b"LOGIN b"), (2, "DM ｎａｍａｎ  hi  there".encode()), (1, b"DM NAMAN me")],
        {1: b"OK\nDM b hi  there\nDM Naman me\n", 2: b"OK\n"},
    ),
    "quit tells the others": (
        [(1, b"LOGIN a"), (2, b"LOGIN b"), (1, b"exit now")],
        {1: b"OK\nGoodbye!\n", 2: b"OK\nINFO a disconnected\n"},
    ),
    "idle timeout before login": ([(1, b"!idle")], {1: b"ERR idle-timeout\n"}),
    "idle timeout tells the others": (
        [(1, b"LOGIN a"), (2, b"LOGIN b"), (2, b"!idle")],
        {1: b"OK\nINFO b disconnected\n", 2: b"OK\nERR idle-timeout\n"},
    ),
    "WHO lists in login order, sender included": (
        [(2, b"LOGIN b"), (1, b"LOGIN a"), (1, b"WHO")],
        {1: b"OK\nUSER b\nUSER a\n", 2: b"OK\n"},
    ),
    "MSG goes to the others only, not to those not logged in": (
        [(1, b"LOGIN a"), (1, b"MSG hi"), (2, b"LOGIN b"), (1, b"msg\thi  you")],
        {1: b"OK\n", 2: b"OK\nMSG a hi  you\n"},
    ),
    "quit before login": ([(1, b"QUIT"), (1, b"PING"), (2, b"LOGIN b")], {1: b"Goodbye!\n", 2: b"OK\n"}),
    "a quitter's name is free again": (
        [(1, b"LOGIN a"), (1, b"QUIT"), (2, b"LOGIN A")],
        {1: b"OK\nGoodbye!\n", 2: b"OK\n"},
    ),
    "line too long keeps the connection": ([(1, b"!too-long"), (1, b"PING")], {1: b"ERR line-too-long\nPONG\n"}),
    "telnet refusals": (
        [(1, b"!telnet 253 6"), (1, b"!telnet 251 1")],
        {1: b"\xff\xfc\x06\xff\xfe\x01"},
    ),
    "shutdown tells everyone, no INFO": (
        [(1, b"LOGIN a"), (2, b"LOGIN b"), (1, b"!shutdown"), (1, b"PING"), (2, b"!idle")],
        {1: b"OK\nERR server-shutting-down\n", 2: b"OK\nERR server-shutting-down\n"},
    ),
    "HTTP before login closes silently": ([(1, b"PING"), (1, b"GET / HTTP/1.1"), (1, b"PING")], {1: b"PONG\n"}),
    "Host header before login closes silently": ([(1, b"Host: localhost:4000"), (1, b"PING")], {}),
    "HTTP after login is an unknown command": (
        [(1, b"LOGIN a"), (1, b"POST /x HTTP/1.0")],
        {1: b"OK\nERR unknown-command\n"},
    ),
}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_examples(name):
    script, want = EXAMPLES[name]
    model, machine = ChatModel(), ChatMachine()
    seen: dict[str, dict[int, bytes]] = {"model": {}, "machine": {}}
    for conn in (1, 2):
        step(machine, model, ConnectionOpened(conn))
    for conn, line in script:
        if line == b"!idle":
            event, expected = IdleTimedOut(conn), model.idle(conn)
        elif line == b"!too-long":
            event, expected = LineTooLong(conn), model.too_long(conn)
        elif line.startswith(b"!telnet "):
            command, option = map(int, line.split()[1:])
            event, expected = TelnetOptionRequested(conn, command, option), model.telnet(conn, command, option)
        elif line == b"!shutdown":
            event, expected = ShutdownStarted(), model.shutdown()
        else:
            event, expected = LineReceived(conn, line), model.line(conn, line)
        outputs = {"model": expected.output(), "machine": output_by_connection(machine.handle(event))}
        for subject, out in outputs.items():
            for c, data in out.items():
                seen[subject][c] = seen[subject].get(c, b"") + data
    assert split_lines(seen["model"]) == split_lines(want), "the model misreads protocol.md"
    assert split_lines(seen["machine"]) == split_lines(want), "the machine misreads protocol.md"


# -- the stateful comparison -------------------------------------------------------


class ChatComparison(RuleBasedStateMachine):
    """Several connections, random traffic, machine and model in lock step."""

    conns = Bundle("conns")

    def __init__(self) -> None:
        super().__init__()
        self.machine = ChatMachine()
        self.model = ChatModel()
        self.next_conn = 0
        self.open_conns: list[int] = []

    @initialize(max_clients=st.one_of(st.none(), st.none(), st.none(), st.integers(1, 3)))
    def start(self, max_clients):
        self.machine = ChatMachine(max_clients=max_clients)
        self.model = ChatModel(max_clients=max_clients)

    def send(self, event) -> None:
        step(self.machine, self.model, event)

    @rule(target=conns, login=st.one_of(st.none(), gen.names, gen.plain_names))
    def open(self, login):
        """A client connects and, usually, logs in at once (so that MSG and DM have an audience)."""
        conn = self.next_conn
        self.next_conn += 1
        self.open_conns.append(conn)
        self.send(ConnectionOpened(conn))
        if login is not None:
            self.send(LineReceived(conn, b"LOGIN " + login.encode("utf-8")))
        return conn

    @rule(conn=conns, line=gen.lines)
    def line(self, conn, line):
        self.send(LineReceived(conn, line))

    @rule(conn=conns, line=gen.command_lines().map(lambda s: s.encode("utf-8")))
    def well_formed_line(self, conn, line):
        self.send(LineReceived(conn, line))

    @rule(conn=conns, name=gen.names)
    def login(self, conn, name):
        self.send(LineReceived(conn, b"LOGIN " + name.encode("utf-8")))

    @rule(conn=conns, text=gen.texts)
    def msg(self, conn, text):
        self.send(LineReceived(conn, f"MSG {text}".encode()))

    @rule(conn=conns, data=st.data(), text=gen.texts)
    def dm(self, conn, data, text):
        users = self.model.usernames()
        known = st.sampled_from(users).flatmap(gen.name_variant) if users else gen.names
        name = data.draw(st.one_of(known, known, gen.names), label="name")
        self.send(LineReceived(conn, f"DM {name} {text}".encode()))

    @rule(conn=conns, kind=st.sampled_from(("too_long", "telnet", "telnet", "idle")), request=gen.telnet_requests)
    def stream_event(self, conn, kind, request):
        if kind == "too_long":
            self.send(LineTooLong(conn))
        elif kind == "telnet":
            self.send(TelnetOptionRequested(conn, *request))
        else:
            self.send(IdleTimedOut(conn))

    @rule(first=conns, second=conns, third=st.one_of(st.none(), conns))
    def idle_together(self, first, second, third):
        """Several idle deadlines fall due in one turn of the loop."""
        together = list(dict.fromkeys(c for c in (first, second, third) if c is not None))
        self.send(ConnectionsTimedOut(tuple(together)))

    @rule(conn=consumes(conns))
    def close(self, conn):
        self.open_conns.remove(conn)
        self.send(ConnectionClosed(conn))

    @rule(first=consumes(conns), second=consumes(conns), third=st.one_of(st.none(), consumes(conns)))
    def close_together(self, first, second, third):
        """A mass disconnect: several connections end in one turn of the loop."""
        together = [conn for conn in (first, second, third) if conn is not None]
        for conn in together:
            self.open_conns.remove(conn)
        self.send(ConnectionsClosed(tuple(together)))

    @rule(now=st.integers(0, 3))
    def shutdown(self, now):
        if now == 0:  # rarely: it ends the run's interesting part
            self.send(ShutdownStarted())

    @invariant()
    def states_agree(self):
        for conn in range(self.next_conn):
            got = self.machine.state_of(conn)
            assert (got.value if got is not None else None) == self.model.state_of(conn), conn

    def teardown(self):
        # The contract: every opened connection is reported closed exactly once.
        for conn in list(self.open_conns):
            self.send(ConnectionClosed(conn))
        assert self.machine.usernames() == []


ChatComparison.TestCase.settings = settings(stateful_step_count=50)
test_chat_machine_matches_model = ChatComparison.TestCase
