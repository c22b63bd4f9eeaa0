"""ChatMachine against the reference model (tests/model.py), step by step.

A hypothesis ``RuleBasedStateMachine`` opens and closes several connections
and sends them random valid and invalid commands, idle timeouts, overlong
lines, Telnet requests and a shutdown, comparing after every step:

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

The model itself is checked against protocol.md by the table of examples in
``tests/examples.py``, which test_protocol_examples.py plays on the model
and on the machine alike.
"""

from __future__ import annotations

import strategies as gen
from helpers import model_expects
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
    assert_same(event, machine.handle(event), model_expects(model, event))
    assert machine.usernames() == model.usernames(), f"usernames differ after {event!r}"


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
