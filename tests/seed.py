"""The seed README's two sessions, written once, and a driver that plays them over any line terminal.

seed-README.md shows two sessions: "Example Session" (Naman and Yudi, one
transcript per terminal) and "Testing with Multiple Terminals" (alice and
bob, as numbered steps).  Each is a script below, one line of text each:

    Naman > LOGIN Naman       Naman types a line
    Naman < OK                Naman's terminal receives a line
    Naman x quit              the server closes Naman's connection (the close reason)

What a terminal receives is caused by the nearest typed line above it.  A
driver types one line, then waits until every terminal has received what
the script says that line causes, before the next line is typed: over any
transport the server sees the lines in the same order, and each terminal's
transcript (``Session.transcript``) comes out as the README prints it.
protocol.md: Naman's README transcript omits one line his terminal receives
(``README_OMITS``); Yudi's is complete.

Each transport plays each session once:

- the pure library, framers and machine, whole and one byte at a time, LF
  and CRLF: ``test_protocol_fuzz.py``;
- raw TCP against the threaded server, once per selector kind:
  ``test_selectors.py``;
- ``python -m reactor`` as a subprocess, and netcat: ``test_daemon.py``;
- TLS beside plaintext: ``test_tls.py``; the one-page example server:
  ``test_minimal_server.py``.

A new transport (TLS, a cluster of nodes) needs only a way to open a
terminal: ``play(session, connect)`` for each session of ``SESSIONS``,
where ``connect()`` returns a connected ``Terminal``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Step:
    """One typed line and everything it causes: the lines each terminal receives, the closes."""

    who: str
    typed: str
    received: dict[str, tuple[str, ...]]
    closes: dict[str, str]

    def output(self) -> dict[str, bytes]:
        """The bytes each terminal receives because of this step."""
        return {name: "".join(line + "\n" for line in lines).encode() for name, lines in self.received.items()}


@dataclass(frozen=True)
class Session:
    """A named script: the terminals, in the order they connect, and the steps."""

    name: str
    terminals: tuple[str, ...]
    steps: tuple[Step, ...]

    @classmethod
    def parse(cls, name: str, script: str) -> Session:
        steps: list[Step] = []
        terminals: dict[str, None] = {}
        for text in script.strip().splitlines():
            who, mark, rest = text.split(maxsplit=2)
            terminals.setdefault(who)
            if mark == ">":
                steps.append(Step(who, rest, {}, {}))
            elif mark == "<":
                steps[-1].received[who] = (*steps[-1].received.get(who, ()), rest)
            elif mark == "x":
                steps[-1].closes[who] = rest
            else:
                raise ValueError(f"{name}: not a script line: {text!r}")
        return cls(name, tuple(terminals), tuple(steps))

    def transcript(self, who: str) -> str:
        """What ``who``'s terminal shows: the lines typed (echoed) and received, in order."""
        lines: list[str] = []
        for step in self.steps:
            if step.who == who:
                lines.append(step.typed)
            lines.extend(step.received.get(who, ()))
        return "".join(line + "\n" for line in lines)

    def stream(self, who: str) -> bytes:
        """Every byte ``who`` receives from the server, in order."""
        return b"".join(step.output().get(who, b"") for step in self.steps)

    def closes(self) -> list[tuple[str, str]]:
        """The connections the server closes, with their reasons, in order."""
        return [close for step in self.steps for close in step.closes.items()]

    def still_open(self) -> list[str]:
        """The terminals the server never closes."""
        closed = {who for who, _ in self.closes()}
        return [who for who in self.terminals if who not in closed]


EXAMPLE_SESSION = Session.parse(
    "example-session",
    """
    Naman > LOGIN Naman
    Naman < OK
    Yudi  > LOGIN Yudi
    Yudi  < OK
    Naman > MSG hi everyone!
    Yudi  < MSG Naman hi everyone!
    Naman > MSG how are you?
    Yudi  < MSG Naman how are you?
    Yudi  > MSG hello Naman!
    Naman < MSG Yudi hello Naman!
    Naman > WHO
    Naman < USER Naman
    Naman < USER Yudi
    Naman > QUIT
    Naman < Goodbye!
    Naman x quit
    Yudi  < INFO Naman disconnected
    """,
)
"""seed-README.md, "Example Session": Terminal 2 (Naman) and Terminal 3 (Yudi)."""

MULTIPLE_TERMINALS = Session.parse(
    "multiple-terminals",
    """
    alice > LOGIN alice
    alice < OK
    bob   > LOGIN bob
    bob   < OK
    alice > MSG Hello everyone!
    bob   < MSG alice Hello everyone!
    bob   > MSG Hi alice!
    alice < MSG bob Hi alice!
    bob   > WHO
    bob   < USER alice
    bob   < USER bob
    alice > DM bob Private message
    bob   < DM alice Private message
    alice > PING
    alice < PONG
    bob   > EXIT
    bob   < Goodbye!
    bob   x quit
    alice < INFO bob disconnected
    alice > QUIT
    alice < Goodbye!
    alice x quit
    """,
)
"""seed-README.md, "Testing with Multiple Terminals", step 4: "In either
terminal" is bob's for WHO and alice's for PING; "QUIT or EXIT" is both,
bob first."""

SESSIONS = (EXAMPLE_SESSION, MULTIPLE_TERMINALS)

# Verbatim from seed-README.md, "Terminal 2 - Client 1 (Naman)" and
# "Terminal 3 - Client 2 (Yudi)".
README_TRANSCRIPTS = {
    "Naman": """\
LOGIN Naman
OK
MSG hi everyone!
MSG how are you?
WHO
USER Naman
USER Yudi
QUIT
Goodbye!
""",
    "Yudi": """\
LOGIN Yudi
OK
MSG Naman hi everyone!
MSG Naman how are you?
MSG hello Naman!
INFO Naman disconnected
""",
}
README_OMITS = {"Naman": "MSG Yudi hello Naman!\n"}
"""protocol.md: "Naman's omits the ``MSG Yudi hello Naman!`` that his terminal receives"."""


def session_name(session: Session) -> str:
    """A pytest id."""
    return session.name


# -- playing a session over line terminals -------------------------------------------------


class Terminal(Protocol):
    """A user at a terminal: ``netutil.Client`` is one (raw TCP)."""

    def say(self, *lines: str) -> None:
        """Type each line, LF-terminated."""

    def line(self) -> bytes:
        """The next line received, without its LF; AssertionError if none comes in time."""

    def read_until_closed(self) -> bytes:
        """Everything received until the server closes the connection."""

    def close(self) -> int | None:
        """Hang up; a terminal that is a program (netcat) returns its exit status."""


def play(session: Session, connect: Callable[[], Terminal]) -> None:
    """Play ``session`` over terminals opened by ``connect()``, one per user, byte for byte.

    Every line must arrive exactly as written, LF-terminated, and no other
    line before it; a connection the server closes gets nothing after its
    last line; a terminal left open gets nothing more than the script says
    (PING gets PONG next); each terminal hangs up cleanly (exit status 0 for
    a program).
    """
    terminals: dict[str, Terminal] = {}
    try:
        for who in session.terminals:
            terminals[who] = connect()
        for step in session.steps:
            terminals[step.who].say(step.typed)
            context = f"{session.name}: after {step.who} typed {step.typed!r}"
            for who, lines in step.received.items():
                for expected in lines:
                    got = terminals[who].line()
                    assert got == expected.encode(), f"{context}, {who} got {got!r}, not {expected!r}"
            for who in step.closes:
                rest = terminals[who].read_until_closed()
                assert rest == b"", f"{context}, {who} got {rest!r} before the server closed it"
        for who in session.still_open():
            terminals[who].say("PING")
            got = terminals[who].line()
            assert got == b"PONG", f"{session.name}: at the end, {who} got {got!r} before PONG"
        for who, terminal in terminals.items():
            status = terminal.close()
            assert status in (None, 0), f"{session.name}: {who}'s terminal exited with status {status}"
    finally:
        for terminal in terminals.values():
            terminal.close()
