"""Properties of LineFramer + ChatMachine under hostile input.

Layers:

- (a) arbitrary bytes for several connections, cut into arbitrary chunks,
  through one ``LineFramer`` per connection into one ``ChatMachine``: nothing
  raises, and every byte string the machine sends is well-formed wire data
  (a three-byte Telnet refusal, or complete UTF-8 lines of a known shape with
  no control character);
- (b) the same input fed whole, split anywhere, one byte at a time, or taken
  with budgets of one gives the same events and the same effects;
- (c) determinism: two fresh machines given the same events (with
  identity-hashed connection ids, different objects in each) agree;
- (d) ``ProtocolUsageError``, and nothing else, for breaches of the event
  contract;
- the seed README's sessions (``tests/seed.py``), byte for byte, whole and one
  byte at a time, with LF and with CRLF.
"""

from __future__ import annotations

import dataclasses
import unicodedata
from collections.abc import Callable, Sequence

import pytest
import seed
import strategies as gen
from hypothesis import given
from hypothesis import strategies as st
from model import is_control, is_valid_shown_name

from protocol import (
    Broadcast,
    ChatMachine,
    Close,
    ConnectionClosed,
    ConnectionOpened,
    Deliver,
    IdleTimedOut,
    LineFramer,
    LineReceived,
    LineTooLong,
    ProtocolUsageError,
    Reply,
    ShutdownStarted,
    TelnetOptionRequested,
    output_by_connection,
)

BIG = 10**9  # a budget that never runs out

# -- driving framers and a machine ------------------------------------------------

# An op is ("data", i, bytes), ("idle", i), ("eof", i) or ("shutdown",), where i
# indexes the connections, all opened first.  Whatever is left open at the end
# gets end of stream and ConnectionClosed, as the reactor would.
def ops_for(n: int):
    conn = st.integers(0, n - 1)
    return st.lists(
        st.one_of(
            st.tuples(st.just("data"), conn, gen.stream_bytes),
            st.tuples(st.just("data"), conn, gen.stream_bytes),
            st.tuples(st.just("data"), conn, gen.stream_bytes),
            st.tuples(st.just("data"), conn, gen.chat_bytes),
            st.tuples(st.just("data"), conn, gen.chat_bytes),
            st.tuples(st.just("data"), conn, st.binary(max_size=64)),
            st.tuples(st.sampled_from(("idle", "eof")), conn),
            st.just(("shutdown",)),
        ),
        max_size=12,
    )


scenarios = st.sampled_from((2, 2, 3, 1)).flatmap(
    lambda n: st.tuples(st.just(n), st.sampled_from((4096, 4096, 4096, 4096, 32, 5, 1)), ops_for(n))
)
"""(number of connections, max_line, ops)."""

Splitter = Callable[[bytes], list[bytes]]


def whole(data: bytes) -> list[bytes]:
    return [data]


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


class Replay:
    """One ``LineFramer`` per connection in front of one machine, driven as the reactor would.

    Every connection is opened first; ``apply`` plays one op; ``finish``
    gives whatever is still open end of stream and ``ConnectionClosed``.
    ``events`` and ``effects`` record everything the machine was handed and
    answered, in order.
    """

    def __init__(
        self,
        machine: ChatMachine,
        conns: Sequence[object],
        max_line: int,
        split: Splitter,
        budget: tuple[int, int],
    ) -> None:
        self.machine = machine
        self.conns = list(conns)
        self.max_line = max_line
        self.split = split
        self.budget = budget
        self.framers = {conn: LineFramer(conn, max_line) for conn in self.conns}
        self.shut = False
        self.events: list = []
        self.effects: list = []
        for conn in self.conns:
            self.handle(ConnectionOpened(conn))

    def handle(self, event) -> None:
        self.events.append(event)
        self.effects.extend(self.machine.handle(event))

    def drain(self, framer: LineFramer) -> None:
        """Take every event out of ``framer``, within the budget per call."""
        for _ in range(100_000):
            for event in framer.take(*self.budget).events:
                self.handle(event)
            if not framer.pending:
                # protocol.md: never more than --max-line bytes of an unfinished line.
                assert framer.buffered <= self.max_line, (framer.buffered, self.max_line)
                return
        raise AssertionError("the framer never stops being pending")

    def apply(self, op: tuple) -> None:
        if op[0] == "shutdown":
            self.shutdown()
            return
        conn = self.conns[op[1]]
        if conn not in self.framers:
            return  # already reported closed
        if op[0] == "data":
            self.receive(conn, op[2])
        elif op[0] == "idle":
            self.handle(IdleTimedOut(conn))
        else:
            self.end_of_stream(conn)

    def shutdown(self) -> None:
        """Only the first shutdown op reaches the machine: the reactor begins its shutdown once."""
        if not self.shut:
            self.shut = True
            self.handle(ShutdownStarted())

    def receive(self, conn: object, data: bytes) -> None:
        for piece in self.split(data):
            self.framers[conn].feed(piece)
            self.drain(self.framers[conn])

    def end_of_stream(self, conn: object) -> None:
        framer = self.framers.pop(conn)
        framer.end_of_stream()
        self.drain(framer)
        self.handle(ConnectionClosed(conn))

    def finish(self) -> None:
        for conn in list(self.framers):
            self.end_of_stream(conn)


def run(
    n: int,
    max_line: int,
    ops: Sequence[tuple],
    split: Splitter = whole,
    budget: tuple[int, int] = (BIG, BIG),
    conns: Sequence[object] = (),
    machine: ChatMachine | None = None,
) -> tuple[list, list]:
    """Feed ``ops`` through framers into a machine; return (events, effects)."""
    replay = Replay(machine or ChatMachine(), list(conns) or list(range(n)), max_line, split, budget)
    for op in ops:
        replay.apply(op)
    replay.finish()
    return replay.events, replay.effects


# -- (a) nothing raises, and all output is well-formed ------------------------------------

ERROR_CODES = {
    "username-taken",
    "invalid-username",
    "missing-username",
    "already-logged-in",
    "not-logged-in",
    "missing-text",
    "user-not-found",
    "unknown-command",
    "line-too-long",
    "invalid-utf8",
    "idle-timeout",
    "server-full",
    "server-shutting-down",
}  # protocol.md; rate-limited is "never sent"


def check_name(name: str) -> None:
    assert name == unicodedata.normalize("NFKC", name) and is_valid_shown_name(name), name


def check_line(line: str) -> None:
    """One server line, without its LF: a known shape, no control character."""
    assert line, "empty line"
    assert not any(is_control(ch) for ch in line), ascii(line)
    if line in ("OK", "PONG", "Goodbye!"):
        return
    word, _, rest = line.partition(" ")
    if word == "ERR":
        assert rest in ERROR_CODES, line
    elif word == "USER":
        check_name(rest)
    elif word == "INFO":
        name, _, tail = rest.partition(" ")
        check_name(name)
        assert tail == "disconnected", line
    elif word in ("MSG", "DM"):
        name, _, text = rest.partition(" ")
        check_name(name)
        assert text, line
    else:
        raise AssertionError(f"unknown line {line!r}")


def check_wire(data: bytes, many_lines: bool) -> None:
    """Well-formed output: a Telnet refusal, or complete lines (several only in a Reply)."""
    assert data, "empty send"
    if data[0] == 0xFF:
        assert len(data) == 3 and data[1] in (0xFC, 0xFE), data
        return
    text = data.decode("utf-8")
    assert text.endswith("\n"), data
    lines = text[:-1].split("\n")
    assert many_lines or len(lines) == 1, data
    for line in lines:
        check_line(line)


def check_output(effects) -> None:
    for effect in effects:
        if isinstance(effect, Reply):
            check_wire(effect.data, many_lines=True)  # WHO answers in one Reply
        elif isinstance(effect, (Deliver, Broadcast)):
            check_wire(effect.data, many_lines=False)
        else:
            assert isinstance(effect, Close), effect


@given(scenarios)
def test_any_bytes_give_well_formed_output(scenario):
    n, max_line, ops = scenario
    _, effects = run(n, max_line, ops)
    check_output(effects)


@given(st.lists(st.tuples(st.integers(0, 2), st.binary(min_size=1, max_size=200)), max_size=10))
def test_raw_binary_never_raises(chunks):
    ops = [("data", i, data) for i, data in chunks]
    _, effects = run(3, 16, ops)
    check_output(effects)


# -- (b) however the bytes are cut, the same events and effects --------------------------------


@given(scenarios, st.data())
def test_split_anywhere_changes_nothing(scenario, data):
    n, max_line, ops = scenario

    def anywhere(chunk: bytes) -> list[bytes]:
        cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(chunk) - 1)), max_size=6)))
        bounds = [0] + [c for c in cuts if c < len(chunk)] + [len(chunk)]
        return [chunk[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if a < b]

    reference = run(n, max_line, ops)
    assert run(n, max_line, ops, split=anywhere) == reference
    assert run(n, max_line, ops, split=bytewise) == reference
    assert run(n, max_line, ops, budget=(1, 1)) == reference


def test_one_byte_at_a_time_example():
    stream = b"\xff\xfd\x06LOGIN a\r\nPI\xff\xf4NG\nMSG " + b"x" * 50 + b"\nWHO\n"
    ops = [("data", 0, stream)]
    reference = run(1, 32, ops)
    assert run(1, 32, ops, split=bytewise) == reference
    assert output_by_connection(reference[1]) == {
        0: b"\xff\xfc\x06OK\nPONG\nERR line-too-long\nUSER a\n"
    }


# -- (c) determinism ---------------------------------------------------------------------------


class Ident:
    """A connection id that hashes by identity, like the reactor's connection objects."""

    def __init__(self, label: int) -> None:
        self.label = label

    def __repr__(self) -> str:
        return f"Ident({self.label})"


def relabel(effect, mapping: dict[object, object]):
    """``effect`` with every connection id translated through ``mapping``."""
    if isinstance(effect, Broadcast):
        exclude = None if effect.exclude is None else mapping[effect.exclude]
        return Broadcast(effect.data, tuple(mapping[c] for c in effect.audience), exclude)
    return dataclasses.replace(effect, conn=mapping[effect.conn])


@given(scenarios)
def test_same_events_same_effects(scenario):
    n, max_line, ops = scenario
    first = [Ident(i) for i in range(n)]
    second = [Ident(i) for i in range(n)]
    _, effects_a = run(n, max_line, ops, conns=first)
    _, effects_b = run(n, max_line, ops, conns=second)
    back = dict(zip(second, first, strict=True))
    assert [relabel(e, back) for e in effects_b] == effects_a
    _, effects_c = run(n, max_line, ops, conns=first)
    assert effects_c == effects_a


# handle_msg's shortcut must be the MSG line's one path, in every state and for any text.
msg_texts = st.one_of(
    st.binary(max_size=40),
    st.lists(st.sampled_from([b" ", b"\t", b"x", b"HTTP/1.1", b"GET /", b"\xc3\xa9", b"\xc3", b"\x1b",
                              b"\xe2\x80\xa8", b"\r", b"\n"]), max_size=8).map(b"".join),
)


@given(st.sampled_from(["awaiting", "logged-in", "quit"]), st.lists(msg_texts, min_size=1, max_size=5))
def test_handle_msg_is_the_msg_line(state, texts):
    machines = [ChatMachine(), ChatMachine()]
    for machine in machines:
        for conn in (1, 2):
            machine.handle(ConnectionOpened(conn))
        machine.handle(LineReceived(2, b"LOGIN other"))
        if state != "awaiting":
            machine.handle(LineReceived(1, b"LOGIN sender"))
        if state == "quit":
            machine.handle(LineReceived(1, b"QUIT"))
    slow, fast = machines
    for text in texts:
        assert fast.handle_msg(1, text) == slow.handle(LineReceived(1, b"MSG " + text))
        assert fast.state_of(1) == slow.state_of(1)


# -- (d) contract breaches raise ProtocolUsageError, and only that ---------------------------------

EVENTS_FOR = {
    "line": lambda c: LineReceived(c, b"PING"),
    "too-long": lambda c: LineTooLong(c),
    "telnet": lambda c: TelnetOptionRequested(c, 253, 6),
    "idle": lambda c: IdleTimedOut(c),
    "closed": lambda c: ConnectionClosed(c),
}


@pytest.mark.parametrize("kind", sorted(EVENTS_FOR))
def test_event_for_a_never_opened_conn_raises(kind):
    machine = ChatMachine()
    machine.handle(ConnectionOpened("a"))
    with pytest.raises(ProtocolUsageError):
        machine.handle(EVENTS_FOR[kind]("nobody"))


@pytest.mark.parametrize("kind", sorted(EVENTS_FOR))
def test_event_after_connection_closed_raises(kind):
    machine = ChatMachine()
    machine.handle(ConnectionOpened("a"))
    machine.handle(ConnectionClosed("a"))
    with pytest.raises(ProtocolUsageError):
        machine.handle(EVENTS_FOR[kind]("a"))


@pytest.mark.parametrize("before", [[], [b"LOGIN a"], [b"QUIT"], [b"GET / HTTP/1.1"]])
def test_double_open_raises(before):
    machine = ChatMachine()
    machine.handle(ConnectionOpened("a"))
    for line in before:
        machine.handle(LineReceived("a", line))
    with pytest.raises(ProtocolUsageError):
        machine.handle(ConnectionOpened("a"))


@given(scenarios, st.sampled_from(sorted(EVENTS_FOR) + ["open"]), st.booleans())
def test_breach_after_any_history_raises(scenario, kind, on_closed_conn):
    n, max_line, ops = scenario
    machine = ChatMachine()
    run(n, max_line, ops, machine=machine)  # every conn 0..n-1 is reported closed by now
    users = machine.usernames()
    if kind == "open":
        machine.handle(ConnectionOpened("fresh"))
        event = ConnectionOpened("fresh")
    else:
        event = EVENTS_FOR[kind](0 if on_closed_conn else "never")
    with pytest.raises(ProtocolUsageError):
        machine.handle(event)
    assert machine.usernames() == users


# -- the seed README's sessions (tests/seed.py), through framers and a machine ----------------


def test_the_seed_session_table_says_what_the_readme_says():
    for who, printed in seed.README_TRANSCRIPTS.items():
        transcript = seed.EXAMPLE_SESSION.transcript(who)
        omitted = seed.README_OMITS.get(who)
        if omitted is not None:
            assert transcript.count(omitted) == 1, who
            transcript = transcript.replace(omitted, "", 1)
        assert transcript == printed, who


@pytest.mark.parametrize("session", seed.SESSIONS, ids=seed.session_name)
@pytest.mark.parametrize("newline", [b"\n", b"\r\n"], ids=["lf", "crlf"])
@pytest.mark.parametrize("split", [whole, bytewise], ids=["whole", "bytewise"])
def test_the_seed_readme_sessions_through_framers_and_machine(session, newline, split):
    """Step by step: each typed line's bytes go in, and out comes exactly what the step says."""
    conns = list(session.terminals)
    replay = Replay(ChatMachine(), conns, 4096, split, (BIG, BIG))
    for step in session.steps:
        already = len(replay.effects)
        replay.apply(("data", conns.index(step.who), step.typed.encode() + newline))
        effects = replay.effects[already:]
        assert output_by_connection(effects) == step.output(), step
        assert {e.conn: e.reason.value for e in effects if isinstance(e, Close)} == step.closes, step
    already = len(replay.effects)
    replay.finish()  # everyone still connected hangs up
    assert output_by_connection(replay.effects[already:]) == {}
