"""Examples of protocol.md, one rule each, that the machine and the model both play.

An ``Example`` is a small chat and a script.  The chat: ``users`` logged in
first, each on a connection named after it; then ``anonymous`` connections,
opened and never logged in; ``max_clients`` if the rule needs it.  The
script: events (``line``, ``opened``, ``ended``, ``idle``, ``too_long``,
``telnet``, ``shutdown``, or any ``protocol`` event) and checks.  A check
(``then``) covers everything since the previous one:

- ``output``: the bytes each connection received; a connection not named
  received nothing;
- ``closes``: the connections the server closed, with their reasons
  (``CloseReason.value``); nothing else was closed;
- ``usernames``: if given, ``usernames()`` now, in login order;
- ``watching``: if given, only these connections' output is compared, where
  protocol.md leaves the others' open (whether INFO goes out at QUIT or at
  the close).

Every expected value is written from protocol.md, not from either
implementation.  ``test_protocol_examples.py`` plays every example on the
``ChatMachine`` and on the model of ``tests/model.py`` (written separately
from the same spec), so a row, the machine and the model check one another.
What needs more than bytes and closes (the kinds of effects and their
order, ``ProtocolUsageError``, two machines side by side) is tested there
directly, with the closing tests that go with it.
Framing (CR stripping, Telnet parsing, the byte limit) belongs to
``protocol.framing``: here a line is a ``LineReceived`` and an over-long line
a ``LineTooLong``.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from protocol import (
    ConnectionClosed,
    ConnectionOpened,
    ConnId,
    Event,
    IdleTimedOut,
    LineReceived,
    LineTooLong,
    ShutdownStarted,
    TelnetOptionRequested,
    TLSHelloReceived,
)

# -- the table's vocabulary ------------------------------------------------------------


@dataclass(frozen=True)
class Then:
    """What the events since the previous check produced (see the module docstring)."""

    output: dict[ConnId, bytes] = field(default_factory=dict)
    closes: dict[ConnId, str] = field(default_factory=dict)
    usernames: tuple[str, ...] | None = None
    watching: tuple[ConnId, ...] | None = None

    def difference(self, output: dict[ConnId, bytes], closes: dict[ConnId, str], usernames: list[str]) -> str | None:
        """What is not as expected, or ``None``."""
        want = {conn: data for conn, data in self.output.items() if data}
        got = {conn: data for conn, data in output.items() if data}
        if self.watching is not None:
            got = {conn: data for conn, data in got.items() if conn in self.watching}
        if got != want:
            return f"output {got!r}, expected {want!r}"
        if closes != self.closes:
            return f"closes {closes!r}, expected {self.closes!r}"
        if self.usernames is not None and tuple(usernames) != self.usernames:
            return f"usernames {usernames!r}, expected {list(self.usernames)!r}"
        return None


Step = Event | Then


@dataclass(frozen=True)
class Example:
    """One rule on a small chat: who is there at the start, then the script."""

    name: str
    script: tuple[Step, ...]
    users: tuple[str, ...] = ()
    anonymous: tuple[ConnId, ...] = ()
    max_clients: int | None = None

    def __post_init__(self) -> None:
        assert isinstance(self.script[-1], Then), f"{self.name}: a script ends with a check"

    def steps(self) -> Iterator[Step]:
        """The chat set up, then the script."""
        for name in self.users:
            yield from login(name, name)
        if self.anonymous:
            yield from (ConnectionOpened(conn) for conn in self.anonymous)
            yield then()
        yield from self.script


class Subject(Protocol):
    """The machine or the model (``helpers.MachineUnderTest``, ``helpers.ModelUnderTest``)."""

    def handle(self, event: Event) -> tuple[dict[ConnId, bytes], dict[ConnId, str]]: ...

    def usernames(self) -> list[str]: ...


def play(example: Example, subject: Subject) -> str | None:
    """Play ``example`` on ``subject``: the first way it differs from the example, or ``None``."""
    output: dict[ConnId, bytes] = {}
    closes: dict[ConnId, str] = {}
    last: Event | None = None
    for step in example.steps():
        if isinstance(step, Then):
            difference = step.difference(output, closes, subject.usernames())
            if difference is not None:
                return f"after {last!r}: {difference}"
            output, closes = {}, {}
            continue
        last = step
        step_output, step_closes = subject.handle(step)
        for conn, data in step_output.items():
            output[conn] = output.get(conn, b"") + data
        for conn, reason in step_closes.items():
            if conn in closes:
                return f"after {step!r}: {conn!r} closed twice ({closes[conn]}, then {reason})"
            closes[conn] = reason
    return None


def then(
    output: dict[ConnId, bytes] | None = None,
    *,
    closes: dict[ConnId, str] | None = None,
    usernames: tuple[str, ...] | None = None,
    watching: tuple[ConnId, ...] | None = None,
) -> Then:
    return Then(output or {}, closes or {}, usernames, watching)


def line(conn: ConnId, data: bytes) -> LineReceived:
    return LineReceived(conn, data)


def opened(conn: ConnId) -> ConnectionOpened:
    return ConnectionOpened(conn)


def ended(conn: ConnId) -> ConnectionClosed:
    """The reactor reports that ``conn``'s connection is gone, whoever closed it."""
    return ConnectionClosed(conn)


def idle(conn: ConnId) -> IdleTimedOut:
    return IdleTimedOut(conn)


def too_long(conn: ConnId) -> LineTooLong:
    return LineTooLong(conn)


def telnet(conn: ConnId, command: int, option: int) -> TelnetOptionRequested:
    return TelnetOptionRequested(conn, command, option)


def shutdown() -> ShutdownStarted:
    return ShutdownStarted()


def login(conn: ConnId, name: str) -> tuple[Step, ...]:
    """Open ``conn`` and log it in as ``name``: ``OK``, and nothing for anyone else."""
    return opened(conn), line(conn, b"LOGIN " + name.encode()), then({conn: b"OK\n"})


def error_only(conn: ConnId, data: bytes, code: str, usernames: tuple[str, ...] | None = None) -> tuple[Step, ...]:
    """``data`` from ``conn`` gets ``ERR code``; nobody else gets anything; nothing closes."""
    return line(conn, data), then({conn: err(code)}, usernames=usernames)


def err(code: str) -> bytes:
    return b"ERR " + code.encode() + b"\n"


def info(name: str) -> bytes:
    return b"INFO " + name.encode() + b" disconnected\n"


def nfkc(name: str) -> str:
    return unicodedata.normalize("NFKC", name)


# Telnet bytes (RFC 854).
IAC, DONT, DO, WONT, WILL = 255, 254, 253, 252, 251

JOSE_COMPOSED = "Jos\u00e9"
JOSE_DECOMPOSED = "Jose\u0301"


def beside_yudi(name: str, logged_in: bool, *script: Step) -> Example:
    """``script`` on connection "me", logged in as Naman or not, beside Yudi."""
    if logged_in:
        return Example(f"{name}-after-login", (*login("me", "Naman"), *script), users=("Yudi",))
    return Example(f"{name}-before-login", script, users=("Yudi",), anonymous=("me",))


EXAMPLES: list[Example] = []

# -- the command table -------------------------------------------------------------------

MSG_TEXT_IS_THE_REST = {
    "inner-spaces-and-tabs-kept": (b"MSG a  b\t\tc", b"a  b\t\tc"),
    "separator-run-dropped": (b"MSG \t  spaced out", b"spaced out"),
    "tab-separator": (b"MSG\thi", b"hi"),
    "trailing-whitespace-trimmed": (b"MSG hi there \t ", b"hi there"),
    "unicode-spaces-are-text": ("MSG \u3000wide\u00a0".encode(), "\u3000wide\u00a0".encode()),
    "command-words-inside-text": (b"MSG DM Yudi not a dm", b"DM Yudi not a dm"),
}

DM_COMPARES_NAMES_LIKE_LOGIN = {  # owner, what the sender types
    "upper": ("Naman", "NAMAN"),
    "lower": ("Naman", "naman"),
    "full-width": ("Naman", "\uff4e\uff41\uff4d\uff41\uff4e"),
    "decomposed": (JOSE_COMPOSED, JOSE_DECOMPOSED),
    "upper-composed": (JOSE_DECOMPOSED, "JOS\u00c9"),
    "sharp-s-casefold": ("Stra\u00dfe", "STRASSE"),
    "shown-form": ("\uff21\uff22\uff23", "abc"),
}

PINGS = {"upper": b"PING", "lower": b"ping", "mixed-case": b"PiNg", "with-words": b"PING extra words", "with-controls": b"PING \x1b\x00"}

EXAMPLES += [
    Example(
        "login-replies-ok-and-tells-nobody-else",
        users=("Yudi",),
        anonymous=("anon", "new"),
        script=(line("new", b"LOGIN Naman"), then({"new": b"OK\n"}, usernames=("Yudi", "Naman"))),
    ),
    Example(
        "msg-reaches-every-other-logged-in-user-only",  # not the sender, not the anonymous
        users=("Naman", "Yudi", "Ana"),
        anonymous=("anon",),
        script=(
            line("Naman", b"MSG hi everyone!"),
            then({"Yudi": b"MSG Naman hi everyone!\n", "Ana": b"MSG Naman hi everyone!\n"}),
        ),
    ),
    Example(
        "msg-with-nobody-else-logged-in-goes-nowhere",
        users=("Naman",),
        anonymous=("anon",),
        script=(line("Naman", b"MSG anyone?"), then()),
    ),
    Example(
        "msg-goes-to-the-others-only-not-to-those-not-logged-in",
        anonymous=(1, 2),
        script=(
            line(1, b"LOGIN a"),
            then({1: b"OK\n"}),
            line(1, b"MSG hi"),
            then(),
            line(2, b"LOGIN b"),
            then({2: b"OK\n"}),
            line(1, b"msg\thi  you"),
            then({2: b"MSG a hi  you\n"}),
        ),
    ),
    *(
        Example(
            f"msg-text-is-the-rest-of-the-line-{key}",
            users=("Naman", "Yudi"),
            script=(line("Naman", sent), then({"Yudi": b"MSG Naman " + text + b"\n"})),
        )
        for key, (sent, text) in MSG_TEXT_IS_THE_REST.items()
    ),
    Example(
        "who-lists-users-in-login-order-sender-included",
        anonymous=("c1", "c2", "c3", "anon"),
        script=(
            # Login order differs from connection order on purpose.
            line("c3", b"LOGIN Zed"),
            line("c1", b"LOGIN Amy"),
            line("c2", b"LOGIN Bob"),
            then({"c3": b"OK\n", "c1": b"OK\n", "c2": b"OK\n"}),
            line("c1", b"WHO"),
            then({"c1": b"USER Zed\nUSER Amy\nUSER Bob\n"}),
        ),
    ),
    Example(
        "who-lists-in-login-order-on-two-connections",
        anonymous=(1, 2),
        script=(
            line(2, b"LOGIN b"),
            line(1, b"LOGIN a"),
            line(1, b"WHO"),
            then({1: b"OK\nUSER b\nUSER a\n", 2: b"OK\n"}),
        ),
    ),
    Example(
        "who-puts-a-returning-user-at-the-end",
        users=("Amy", "Bob", "Cid"),
        script=(
            line("Amy", b"QUIT"),
            ended("Amy"),
            then({"Amy": b"Goodbye!\n", "Bob": info("Amy"), "Cid": info("Amy")}, closes={"Amy": "quit"}),
            *login("Amy2", "Amy"),
            line("Bob", b"WHO"),
            then({"Bob": b"USER Bob\nUSER Cid\nUSER Amy\n"}),
        ),
    ),
    Example(
        "who-follows-logins-and-departures",
        users=("Amy", "Bob"),
        script=(
            line("Amy", b"WHO"),
            then({"Amy": b"USER Amy\nUSER Bob\n"}),
            *login("Cid", "Cid"),
            line("Amy", b"WHO"),
            then({"Amy": b"USER Amy\nUSER Bob\nUSER Cid\n"}),
            ended("Bob"),
            then({"Amy": info("Bob"), "Cid": info("Bob")}),
            line("Cid", b"WHO"),
            then({"Cid": b"USER Amy\nUSER Cid\n"}),
        ),
    ),
    Example(
        "dm-reaches-that-user-only",
        users=("Naman", "Yudi", "Ana"),
        anonymous=("anon",),
        script=(line("Naman", b"DM Yudi psst  just\tyou"), then({"Yudi": b"DM Naman psst  just\tyou\n"})),
    ),
    Example(
        "dm-separators-may-be-runs-of-spaces-and-tabs",
        users=("Naman", "Yudi"),
        script=(line("Naman", b"DM\t Yudi \t hi there"), then({"Yudi": b"DM Naman hi there\n"})),
    ),
    Example(
        "dm-to-oneself-is-delivered",
        users=("Naman", "Yudi"),
        script=(line("Naman", b"DM Naman note to self"), then({"Naman": b"DM Naman note to self\n"})),
    ),
    Example(
        "dm-by-key-to-oneself-too",
        anonymous=(1, 2),
        script=(
            line(1, b"LOGIN Naman"),
            line(2, b"LOGIN b"),
            then({1: b"OK\n", 2: b"OK\n"}),
            line(2, "DM ｎａｍａｎ  hi  there".encode()),
            then({1: b"DM b hi  there\n"}),
            line(1, b"DM NAMAN me"),
            then({1: b"DM Naman me\n"}),
        ),
    ),
    *(
        Example(
            f"dm-compares-names-like-login-{key}",
            users=(owner, "Yudi"),
            script=(line("Yudi", b"DM " + typed.encode() + b" hi"), then({owner: b"DM Yudi hi\n"})),
        )
        for key, (owner, typed) in DM_COMPARES_NAMES_LIKE_LOGIN.items()
    ),
    Example(
        "dm-shows-the-sender-in-nfkc-form-with-typed-case",
        users=("\uff21\uff42\uff43", "Yudi"),  # full-width "Abc"
        script=(line("\uff21\uff42\uff43", b"DM Yudi hi"), then({"Yudi": b"DM Abc hi\n"})),
    ),
    *(
        beside_yudi(f"ping-gets-pong-{key}", logged_in, line("me", sent), then({"me": b"PONG\n"}))
        for key, sent in PINGS.items()
        for logged_in in (False, True)
    ),
    Example(
        "quit-tells-the-others",  # at the QUIT, before the connection is reported closed
        anonymous=(1, 2),
        script=(
            line(1, b"LOGIN a"),
            line(2, b"LOGIN b"),
            then({1: b"OK\n", 2: b"OK\n"}),
            line(1, b"exit now"),
            then({1: b"Goodbye!\n", 2: info("a")}, closes={1: "quit"}),
        ),
    ),
    Example(
        "quit-before-login-then-nothing-runs",
        anonymous=(1, 2),
        script=(
            line(1, b"QUIT"),
            then({1: b"Goodbye!\n"}, closes={1: "quit"}),
            line(1, b"PING"),
            then(),
            line(2, b"LOGIN b"),
            then({2: b"OK\n"}),
        ),
    ),
    Example(
        "goodbye-is-the-last-line-a-quitting-user-gets",
        users=("Naman", "Yudi"),
        script=(
            line("Naman", b"QUIT"),
            then({"Naman": b"Goodbye!\n"}, closes={"Naman": "quit"}, watching=("Naman",)),
            line("Yudi", b"MSG still there?"),
            ended("Naman"),
            then({"Naman": b""}, watching=("Naman",)),
        ),
    ),
    Example(
        "a-name-is-free-again-after-its-owner-left",
        users=("Naman", "Yudi"),
        script=(
            line("Naman", b"QUIT"),
            ended("Naman"),
            then({"Naman": b"Goodbye!\n", "Yudi": info("Naman")}, closes={"Naman": "quit"}),
            opened("again"),
            line("again", b"LOGIN naman"),
            then({"again": b"OK\n"}),
        ),
    ),
    Example(
        "a-quitters-name-is-free-at-once",  # before the connection is reported closed
        anonymous=(1, 2),
        script=(
            line(1, b"LOGIN a"),
            line(1, b"QUIT"),
            then({1: b"OK\nGoodbye!\n"}, closes={1: "quit"}),
            line(2, b"LOGIN A"),
            then({2: b"OK\n"}),
        ),
    ),
]

# -- the error table -----------------------------------------------------------------------

USERNAME_TAKEN = {  # the first user's name, the name another tries
    "same": ("Naman", "Naman"),
    "lower": ("Naman", "naman"),
    "upper": ("Naman", "NAMAN"),
    "full-width-second": ("Naman", "\uff4e\uff41\uff4d\uff41\uff4e"),
    "full-width-first": ("\uff4e\uff41\uff4d\uff41\uff4e", "Naman"),
    "composed-then-decomposed": (JOSE_COMPOSED, JOSE_DECOMPOSED),
    "decomposed-then-composed": (JOSE_DECOMPOSED, JOSE_COMPOSED),
    "composed-other-case": (JOSE_COMPOSED, "jos\u00c9"),
    "casefold-sharp-s": ("Strasse", "Stra\u00dfe"),
    "roman-numeral": ("\u216b", "xii"),  # ROMAN NUMERAL TWELVE is XII under NFKC
    "dz-digraph": ("\u01c5", "\u01c4"),  # Dž / DŽ: NFKC then casefold
}

INVALID_NAMES = {
    "33-chars": "a" * 33,
    "leading-combining-mark": "\u0301abc",
    "inner-space": "Na man",
    "inner-tab": "Na\tman",
    "no-break-space": "Na\u00a0man",
    "ideographic-space": "Na\u3000man",
    "c0-control": "Na\x01man",
    "only-a-control": "\x01",
    "esc-sequence": "Na\x1b[31mman",
    "del": "Na\x7fman",
    "c1-nel": "Na\u0085man",
    "line-separator": "Na\u2028man",
    "zero-width-space": "Na\u200bman",
    "zero-width-joiner": "Na\u200dman",
    "bom": "\ufeffNaman",
    "bidi-rlo": "\u202eNaman",
    "bidi-isolate": "Na\u2066man\u2069",
    "fdfa-nfkc-has-spaces": "\ufdfa",
    "vulgar-fraction": "\u00bc",  # NFKC 1⁄4, FRACTION SLASH is Sm
    "letter-number-not-nd": "\u2182",  # ROMAN NUMERAL TEN THOUSAND, Nl, no decomposition
    "exclamation": "Naman!",
    "at-sign": "a@b",
    "slash": "a/b",
    "apostrophe": "O'Brien",
    "minus-sign": "a\u2212b",
    "emoji": "Naman\U0001f600",
    "ligatures-over-32-after-nfkc": "\ufb01" * 17,  # 17 code points typed, 34 after NFKC
    "33-astral-letters": "\U00020000" * 33,
}

VALID_NAMES = {
    "32-chars": "a" * 32,
    "devanagari": "\u0938\u0941\u0930\u0947\u0936",  # सुरेश: letters and combining marks
    "mark-not-first": "x\u0301",
    "punctuation-allowed": "a_b-c.d",
    "only-dot": ".",
    "only-underscore": "_",
    "ascii-digits": "123",
    "arabic-indic-digits": "\u0663\u0664",
    "superscript-digit-nfkc": "x\u00b2",
    "32-decomposed-chars": "e\u0301" * 32,  # 64 code points typed, 32 after NFKC
    "16-ligatures": "\ufb01" * 16,  # 32 after NFKC
    "cjk": "\u4e2d\u6587",
    "modifier-letter": "\u30fc\u30a2",
    "turkish-dotted-capital": "\u0130stanbul",
    "32-astral-letters": "\U00020000" * 32,  # length is in code points, not UTF-16 units
}

SHOWN_IN_NFKC_FORM = {  # typed, shown
    "full-width": ("\uff21\uff22\uff23", "ABC"),
    "typed-case": ("NaMaN", "NaMaN"),
    "decomposed": (JOSE_DECOMPOSED, JOSE_COMPOSED),
    "roman-numeral": ("\u216b", "XII"),
    "ligature": ("\ufb01x", "fix"),
    "superscript": ("x\u00b2", "x2"),
    "devanagari": ("\u0938\u0941\u0930\u0947\u0936", "\u0938\u0941\u0930\u0947\u0936"),
    "sharp-s-kept": ("Stra\u00dfe", "Stra\u00dfe"),
}

MISSING_USERNAME = {
    "bare": b"LOGIN",
    "lower-case": b"login",
    "trailing-spaces": b"LOGIN   ",
    "trailing-space-and-tab": b"LOGIN \t ",
    "tabs-around": b"\tLOGIN\t",
}

ALREADY_LOGGED_IN = {
    "new-name": b"LOGIN Other",
    "own-name": b"LOGIN Naman",
    "own-name-other-case": b"LOGIN naman",
    "taken-name": b"LOGIN Yudi",
    "no-name": b"LOGIN",
    "invalid-name": b"LOGIN bad name!",
    "control": b"login \x01",
}

NOT_LOGGED_IN = {
    "msg": b"MSG hi",
    "msg-lower-case": b"msg hi",
    "who": b"WHO",
    "who-with-words": b"who is there",
    "dm": b"DM Yudi hi",
    "dm-unknown-user": b"DM Nobody hi",
    "msg-no-text": b"MSG",
    "dm-no-name": b"DM",
    "dm-no-text": b"DM Yudi",
}

MISSING_TEXT = {
    "msg-no-text": b"MSG",
    "msg-whitespace-only": b"msg   \t",
    "msg-only-esc": b"MSG \x1b",
    "msg-only-c0-and-del": b"MSG \x00\x07\x7f",
    "msg-only-c1-and-separators": "MSG \u0085\u2028\u2029".encode(),
    "dm-no-name": b"DM",
    "dm-no-text": b"DM Yudi",
    "dm-no-text-tabs": b"DM\tYudi\t",
    "dm-unknown-name-no-text": b"DM Nobody",
    "dm-only-controls": b"DM Yudi \x1b\x00",
    "dm-unknown-name-only-controls": b"DM Nobody \x1b\x7f",
}

USER_NOT_FOUND = {  # the name a DM is sent to, beside Naman and Yudi
    "unknown": b"Nobody",
    "prefix": b"Yud",
    "longer": b"Yudi2",
    "zero-width-inside": "Yu\u200bdi".encode(),
    "control-inside": b"Yu\x00di",
    "full-width-other-name": "\uff59\uff55\uff44\uff49\uff58".encode(),
}

UNKNOWN_COMMANDS = {
    "plain": b"FOO",
    "with-args": b"HELLO there",
    "dotless-i-ping": "p\u0131ng".encode(),
    "dotless-i-quit": "qu\u0131t".encode(),
    "dotless-i-login": "log\u0131n Naman".encode(),
    "dotted-capital-i": "P\u0130NG".encode(),
    "long-s-msg": "M\u017fG hi".encode(),
    "full-width-ping": "\uff30\uff29\uff2e\uff27".encode(),
    "nbsp-after-word": "PING\u00a0".encode(),
    "nbsp-before-word": "\u00a0PING".encode(),
    "nbsp-only": "\u00a0".encode(),
    "nbsp-separator": "MSG\u00a0hi".encode(),
    "ideographic-space-before": "\u3000PING".encode(),
    "vertical-tab-is-not-whitespace": b"\x0bPING",
    "form-feed-is-not-whitespace": b"PING\x0c",
    "cr-is-not-whitespace": b"PING\r",
    "glued-argument": b"LOGINNaman",
    "prefix": b"MS hi",
    "longer-word": b"QUITE",
    "server-word-ok": b"OK",
    "server-word-err": b"ERR x",
    "server-word-user": b"USER Naman",
    "server-word-info": b"INFO x",
    "slash-command": b"/quit",
}

CASE_INSENSITIVE_BEFORE_LOGIN = {  # line, reply
    "login-lower": (b"login Naman", b"OK\n"),
    "login-mixed": (b"LoGiN Naman", b"OK\n"),
    "ping-capitalised": (b"Ping", b"PONG\n"),
}

CASE_INSENSITIVE_AFTER_LOGIN = {  # Naman's line, what Yudi gets, what Naman gets
    "msg-lower": (b"msg hi", b"MSG Naman hi\n", b""),
    "msg-capitalised": (b"Msg hi", b"MSG Naman hi\n", b""),
    "dm-lower": (b"dm Yudi hi", b"DM Naman hi\n", b""),
    "dm-capitalised": (b"Dm Yudi hi", b"DM Naman hi\n", b""),
    "who-lower": (b"who", b"", b"USER Naman\nUSER Yudi\n"),
    "who-mixed": (b"wHo", b"", b"USER Naman\nUSER Yudi\n"),
}

INVALID_UTF8 = {
    "lone-ff": b"\xff",
    "lone-continuation": b"\x80",
    "latin-1-text": b"MSG caf\xe9",
    "bad-continuation": b"MSG \xc3\x28",
    "overlong-slash": b"MSG \xc0\xaf",
    "surrogate": b"MSG \xed\xa0\x80",
    "above-10ffff": b"MSG \xf4\x90\x80\x80",
    "truncated": b"MSG \xe2\x82",
    "quit-with-bad-arg": b"QUIT \xff",
    "exit-with-bad-arg": b"exit \xc3",
    "ping-with-bad-arg": b"PING \xff",
    "unknown-with-bad-arg": b"FOO \xff",
    "login-latin-1-name": b"LOGIN Jos\xe9",
    "dm-bad-text": b"DM Yudi \xff",
    "bad-command-word": b"P\xc9NG",
}

EXAMPLES += [
    *(
        Example(
            f"username-taken-{key}",
            users=("Ana",),
            script=(
                *login("first", first),
                opened("second"),
                *error_only("second", b"LOGIN " + second.encode(), "username-taken"),
                # The refused connection stays anonymous; the room is unchanged.
                *error_only("second", b"WHO", "not-logged-in", usernames=("Ana", nfkc(first))),
            ),
        )
        for key, (first, second) in USERNAME_TAKEN.items()
    ),
    Example(
        "names-collide-under-nfkc-and-casefold",
        anonymous=(1, 2),
        script=(
            line(1, b"LOGIN Naman"),
            then({1: b"OK\n"}),
            *error_only(2, b"LOGIN naman", "username-taken"),
            *error_only(2, "LOGIN ｎａｍａｎ".encode(), "username-taken"),
            line(2, "LOGIN Jose\u0301".encode()),
            then({2: b"OK\n"}),
        ),
    ),
    *(
        Example(
            f"invalid-username-{key}",
            users=("Yudi",),
            anonymous=("anon",),
            script=error_only("anon", b"LOGIN " + name.encode(), "invalid-username", usernames=("Yudi",)),
        )
        for key, name in INVALID_NAMES.items()
    ),
    Example(
        "login-errors-on-two-connections",
        anonymous=(1, 2),
        script=(
            *error_only(1, b"LOGIN", "missing-username"),
            *error_only(1, b"LOGIN   ", "missing-username"),
            *error_only(1, b"LOGIN a b", "invalid-username"),
            *error_only(1, b"LOGIN " + b"a" * 33, "invalid-username"),
            *error_only(1, "LOGIN \u0301a".encode(), "invalid-username"),
        ),
    ),
    *(
        Example(
            f"valid-username-{key}",
            users=("Yudi",),
            anonymous=("new",),
            script=(line("new", b"LOGIN " + name.encode()), then({"new": b"OK\n"})),
        )
        for key, name in VALID_NAMES.items()
    ),
    Example(
        "32-code-points-is-fine",
        anonymous=(1, 2),
        script=(line(1, b"LOGIN " + b"a" * 32), then({1: b"OK\n"})),
    ),
    *(
        Example(
            f"name-is-shown-in-nfkc-form-with-typed-case-{key}",
            users=("Yudi",),
            script=(
                *login("new", typed),
                line("new", b"WHO"),
                line("new", b"MSG hi"),
                then({"new": b"USER Yudi\nUSER " + shown.encode() + b"\n", "Yudi": b"MSG " + shown.encode() + b" hi\n"}),
                ended("new"),
                then({"Yudi": info(shown)}),
            ),
        )
        for key, (typed, shown) in SHOWN_IN_NFKC_FORM.items()
    ),
    Example(
        "shown-in-nfkc-form-with-the-typed-case-in-who",
        anonymous=(1, 2),
        script=(line(1, "LOGIN ＮａＭａｎ".encode()), line(1, b"WHO"), then({1: b"OK\nUSER NaMan\n"})),
    ),
    *(
        Example(
            f"missing-username-{key}",
            users=("Yudi",),
            anonymous=("anon",),
            script=error_only("anon", sent, "missing-username"),
        )
        for key, sent in MISSING_USERNAME.items()
    ),
    *(
        Example(
            f"already-logged-in-whatever-the-argument-{key}",
            users=("Naman", "Yudi"),
            script=(
                *error_only("Naman", sent, "already-logged-in"),
                # Still logged in under the old name.
                line("Naman", b"MSG still me"),
                then({"Yudi": b"MSG Naman still me\n"}, usernames=("Naman", "Yudi")),
            ),
        )
        for key, sent in ALREADY_LOGGED_IN.items()
    ),
    Example(
        "already-logged-in-on-two-connections",
        anonymous=(1, 2),
        script=(
            line(1, b"LOGIN a"),
            then({1: b"OK\n"}),
            *error_only(1, b"LOGIN", "already-logged-in"),
            *error_only(1, b"LOGIN a b", "already-logged-in"),
        ),
    ),
    *(
        Example(
            f"not-logged-in-{key}",
            users=("Yudi",),
            anonymous=("anon",),
            script=error_only("anon", sent, "not-logged-in"),
        )
        for key, sent in NOT_LOGGED_IN.items()
    ),
    Example(
        "not-logged-in-after-a-refused-login",
        users=("Yudi",),
        anonymous=("anon",),
        script=(
            line("anon", b"LOGIN bad name"),
            line("anon", b"LOGIN yudi"),
            then({"anon": err("invalid-username") + err("username-taken")}),
            *error_only("anon", b"MSG hi", "not-logged-in"),
        ),
    ),
    Example(
        "unknown-command-before-not-logged-in",
        anonymous=(1, 2),
        script=(*error_only(1, b"FOO", "unknown-command"), *error_only(1, b"MSG hi", "not-logged-in")),
    ),
    *(
        Example(
            f"missing-text-{key}",
            users=("Naman", "Yudi"),
            script=error_only("Naman", sent, "missing-text"),
        )
        for key, sent in MISSING_TEXT.items()
    ),
    Example(
        "text-empty-after-cleaning-is-missing",
        anonymous=(1, 2),
        script=(
            line(1, b"LOGIN a"),
            then({1: b"OK\n"}),
            *error_only(1, b"MSG \x01\x7f", "missing-text"),
            *error_only(1, b"DM a \x00", "missing-text"),
            *error_only(1, b"DM", "missing-text"),
            *error_only(1, b"DM zz", "missing-text"),
        ),
    ),
    Example(
        "dm-checks-text-before-the-name",
        anonymous=(1, 2),
        script=(
            line(1, b"LOGIN a"),
            then({1: b"OK\n"}),
            *error_only(1, b"DM nobody", "missing-text"),
            *error_only(1, b"DM nobody hi", "user-not-found"),
        ),
    ),
    *(
        Example(
            f"user-not-found-{key}",
            users=("Naman", "Yudi"),
            anonymous=("anon",),
            script=error_only("Naman", b"DM " + target + b" hi", "user-not-found"),
        )
        for key, target in USER_NOT_FOUND.items()
    ),
    Example(
        "user-not-found-after-they-left",
        users=("Naman", "Yudi"),
        script=(
            ended("Yudi"),
            then({"Naman": info("Yudi")}),
            *error_only("Naman", b"DM Yudi are you there?", "user-not-found"),
        ),
    ),
    Example(
        "user-not-found-for-a-connection-that-is-not-logged-in",
        users=("Naman",),
        anonymous=("anon",),
        script=(
            *error_only("anon", b"LOGIN Naman", "username-taken"),
            *error_only("Naman", b"DM anon hi", "user-not-found"),
        ),
    ),
    *(
        beside_yudi(f"unknown-command-{key}", logged_in, *error_only("me", sent, "unknown-command"))
        for key, sent in UNKNOWN_COMMANDS.items()
        for logged_in in (False, True)
    ),
    Example(
        "ascii-only-case-folding",
        anonymous=(1, 2),
        script=(
            *error_only(1, "pıng".encode(), "unknown-command"),
            *error_only(1, "PİNG".encode(), "unknown-command"),
        ),
    ),
    Example(
        "nbsp-is-not-whitespace",
        anonymous=(1, 2),
        script=error_only(1, "PING\u00a0".encode(), "unknown-command"),
    ),
    Example(
        "cr-in-the-middle-is-not-whitespace",
        anonymous=(1, 2),
        script=error_only(1, b"PING\r", "unknown-command"),
    ),
    *(
        Example(
            f"command-word-is-case-insensitive-before-login-{key}",
            anonymous=("me",),
            script=(line("me", sent), then({"me": reply})),
        )
        for key, (sent, reply) in CASE_INSENSITIVE_BEFORE_LOGIN.items()
    ),
    Example(
        "command-word-is-case-insensitive-with-tabs",
        anonymous=(1, 2),
        script=(line(1, b"\tLoGiN \t Naman  "), line(1, b"Who extra"), then({1: b"OK\nUSER Naman\n"})),
    ),
    *(
        Example(
            f"command-word-is-case-insensitive-after-login-{key}",
            users=("Naman", "Yudi"),
            script=(line("Naman", sent), then({"Yudi": to_yudi, "Naman": to_naman})),
        )
        for key, (sent, to_yudi, to_naman) in CASE_INSENSITIVE_AFTER_LOGIN.items()
    ),
    *(
        beside_yudi(
            "line-too-long-gets-one-error-and-the-connection-stays",
            logged_in,
            too_long("me"),
            then({"me": err("line-too-long")}),
            line("me", b"PING"),
            then({"me": b"PONG\n"}),
        )
        for logged_in in (False, True)
    ),
    *(
        beside_yudi(
            f"invalid-utf8-gets-that-error-and-nothing-else-{key}",
            logged_in,
            *error_only("me", sent, "invalid-utf8"),
            # Nothing changed: still open, still in the same state.
            line("me", b"WHO"),
            then({"me": b"USER Yudi\nUSER Naman\n" if logged_in else err("not-logged-in")}),
        )
        for key, sent in INVALID_UTF8.items()
        for logged_in in (False, True)
    ),
    Example(
        "line-too-long-keeps-the-connection",
        anonymous=(1, 2),
        script=(too_long(1), then({1: err("line-too-long")}), line(1, b"PING"), then({1: b"PONG\n"})),
    ),
    Example(
        "invalid-utf8-in-a-login",
        anonymous=(1, 2),
        script=error_only(1, b"LOGIN \xff", "invalid-utf8"),
    ),
]

# -- framing details the machine owns: whitespace, ignored arguments ---------------------------

BLANK_LINES = {"empty": b"", "space": b" ", "tab": b"\t", "mixed": b" \t \t "}

PADDED_PINGS = {"leading": b"  PING", "trailing": b"PING  ", "tabs": b"\tPING\t", "mixed": b" \t PING \t "}

IGNORED_ARGUMENTS = {  # Naman's line, its reply
    "who-words": (b"WHO is there", b"USER Naman\n"),
    "who-escape": (b"WHO\t\x1b[2J", b"USER Naman\n"),
    "ping-words": (b"PING hello", b"PONG\n"),
    "ping-tab-name": (b"PING\tNaman", b"PONG\n"),
}

EXAMPLES += [
    *(
        beside_yudi(f"empty-or-whitespace-only-line-gets-no-reply-{key}", logged_in, line("me", sent), then())
        for key, sent in BLANK_LINES.items()
        for logged_in in (False, True)
    ),
    Example(
        "empty-and-blank-lines-are-ignored",
        anonymous=(1, 2),
        script=(line(1, b""), line(1, b" \t "), then()),
    ),
    *(
        Example(
            f"leading-and-trailing-space-and-tab-are-trimmed-{key}",
            anonymous=("me",),
            script=(line("me", sent), then({"me": b"PONG\n"})),
        )
        for key, sent in PADDED_PINGS.items()
    ),
    Example(
        "ping-before-login",
        anonymous=(1, 2),
        script=(line(1, b"ping"), then({1: b"PONG\n"})),
    ),
    Example(
        "trimming-applies-to-login-names",
        users=("Yudi",),
        anonymous=("me",),
        script=(
            line("me", b"\t LOGIN \t Naman \t"),
            line("me", b"MSG hi"),
            then({"me": b"OK\n", "Yudi": b"MSG Naman hi\n"}),
        ),
    ),
    *(
        Example(
            f"arguments-after-who-and-ping-are-ignored-{key}",
            users=("Naman",),
            script=(line("Naman", sent), then({"Naman": reply})),
        )
        for key, (sent, reply) in IGNORED_ARGUMENTS.items()
    ),
]

# -- text that reaches another user: control characters out, the rest kept --------------------

TEXT_CLEANING = {
    "ansi-escape": (b"\x1b[31mred\x1b[0m", b"[31mred[0m"),
    "nul": (b"a\x00b", b"ab"),
    "del": (b"a\x7fb", b"ab"),
    "bell-backspace": (b"a\x07\x08b", b"ab"),
    "inner-cr": (b"a\rb", b"ab"),
    "inner-lf-like-c0": (b"a\x0b\x0c\x1fb", b"ab"),
    "c1-nel": ("a\u0085b".encode(), b"ab"),
    "c1-csi": ("\u009b31mx".encode(), b"31mx"),
    "line-separator": ("a\u2028b".encode(), b"ab"),
    "paragraph-separator": ("a\u2029b".encode(), b"ab"),
    "tab-kept": (b"a\tb", b"a\tb"),
    "bidi-override-kept": ("\u202eevil".encode(), "\u202eevil".encode()),
    "bidi-isolates-kept": ("a\u2066b\u2069c\u202ad\u202c".encode(), "a\u2066b\u2069c\u202ad\u202c".encode()),
    "neighbours-kept": ("\u2027\u2026\u0100\u00a0\u200b\u00a9".encode(), "\u2027\u2026\u0100\u00a0\u200b\u00a9".encode()),
    "cleaned-after-split": (b"\x00 hi", b" hi"),
}

EXAMPLES += [
    *(
        Example(
            f"{command.lower()}-text-is-cleaned-of-control-characters-{key}",
            users=("Naman", "Yudi"),
            script=(line("Naman", prefix + sent), then({"Yudi": command.encode() + b" Naman " + delivered + b"\n"})),
        )
        for command, prefix in (("MSG", b"MSG "), ("DM", b"DM Yudi "))
        for key, (sent, delivered) in TEXT_CLEANING.items()
    ),
    Example(
        "message-text-keeps-inner-whitespace-loses-controls",
        anonymous=(1, 2),
        script=(
            line(1, b"LOGIN a"),
            line(2, b"LOGIN b"),
            then({1: b"OK\n", 2: b"OK\n"}),
            line(1, "MSG  x \t y\x1b[31m\u2028z\x85 ".encode()),
            then({2: b"MSG a x \t y[31mz\n"}),
        ),
    ),
    Example(
        "dm-name-is-split-off-before-the-text-is-cleaned",
        users=("Naman", "Yudi"),
        # The TAB after the NUL is text, not a separator: cleaning comes after splitting.
        script=(line("Naman", b"DM Yudi \x00\thi"), then({"Yudi": b"DM Naman \thi\n"})),
    ),
]

# -- server-initiated lines ------------------------------------------------------------------

EXAMPLES += [
    Example(
        "info-goes-to-the-remaining-users-when-a-logged-in-connection-ends",
        users=("Naman", "Yudi", "Ana"),
        anonymous=("anon",),
        script=(ended("Naman"), then({"Yudi": info("Naman"), "Ana": info("Naman")}, usernames=("Yudi", "Ana"))),
    ),
    Example(
        "no-info-when-an-anonymous-connection-ends",
        users=("Yudi",),
        anonymous=("anon",),
        script=(*error_only("anon", b"LOGIN bad name", "invalid-username"), ended("anon"), then()),
    ),
    Example(
        "idle-timeout-before-login",
        anonymous=(1, 2),
        script=(idle(1), then({1: err("idle-timeout")}, closes={1: "idle-timeout"})),
    ),
    Example(
        "idle-timeout-tells-the-others",  # at the timeout, before the connection is reported closed
        anonymous=(1, 2),
        script=(
            line(1, b"LOGIN a"),
            line(2, b"LOGIN b"),
            then({1: b"OK\n", 2: b"OK\n"}),
            idle(2),
            then({1: info("b"), 2: err("idle-timeout")}, closes={2: "idle-timeout"}),
        ),
    ),
    Example(
        "idle-timeout-line-is-the-last-line",
        users=("Naman", "Yudi"),
        script=(
            idle("Naman"),
            then({"Naman": err("idle-timeout")}, closes={"Naman": "idle-timeout"}, watching=("Naman",)),
            line("Yudi", b"MSG anyone?"),
            line("Yudi", b"DM Naman you there?"),
            ended("Naman"),
            then({"Naman": b""}, watching=("Naman",)),
        ),
    ),
    Example(
        "anonymous-connections-take-places-too",
        max_clients=2,
        script=(
            *login("a", "Amy"),
            opened("b"),  # never logs in
            opened("c"),
            then({"c": err("server-full")}, closes={"c": "server-full"}),
        ),
    ),
    Example(
        "a-refused-connection-does-not-take-a-place",
        max_clients=1,
        script=(
            opened("a"),
            opened("refused"),  # refused; its ConnectionClosed has not come yet
            then({"refused": err("server-full")}, closes={"refused": "server-full"}),
            ended("a"),
            opened("b"),
            then(),
            line("b", b"LOGIN Bob"),
            then({"b": b"OK\n"}),
        ),
    ),
    Example(
        "a-place-frees-when-a-connection-closes",
        max_clients=2,
        script=(
            *login("a", "Amy"),
            *login("b", "Bob"),
            opened("c"),
            ended("c"),
            then({"c": err("server-full")}, closes={"c": "server-full"}),
            ended("a"),
            opened("d"),
            line("d", b"LOGIN Dee"),
            then({"b": info("Amy"), "d": b"OK\n"}),
            opened("e"),
            then({"e": err("server-full")}, closes={"e": "server-full"}),
        ),
    ),
    Example(
        "shutdown-tells-everyone-no-info",
        anonymous=(1, 2),
        script=(
            line(1, b"LOGIN a"),
            line(2, b"LOGIN b"),
            then({1: b"OK\n", 2: b"OK\n"}),
            shutdown(),
            then(
                {1: err("server-shutting-down"), 2: err("server-shutting-down")},
                closes={1: "server-shutting-down", 2: "server-shutting-down"},
            ),
            line(1, b"PING"),
            idle(2),
            then(),
        ),
    ),
]

# -- cross-protocol guard, Telnet refusals, closing connections --------------------------------

HTTP_LINES = {
    "get": b"GET / HTTP/1.1",
    "get-path-1.0": b"GET /favicon.ico HTTP/1.0",
    "post": b"POST /chat HTTP/1.1",
    "head": b"HEAD / HTTP/1.1",
    "options-asterisk": b"OPTIONS * HTTP/1.1",
    "webdav-method": b"PROPFIND /calendar HTTP/1.1",
    "host-header": b"Host: localhost:4000",
    "host-header-lower-case": b"host: localhost",
}

TELNET_REFUSALS = {  # request, answer
    "do-timing-mark": (DO, 6, bytes([IAC, WONT, 6])),  # Ctrl+C in telnet
    "do-echo": (DO, 1, bytes([IAC, WONT, 1])),
    "do-ttype": (DO, 24, bytes([IAC, WONT, 24])),
    "will-echo": (WILL, 1, bytes([IAC, DONT, 1])),
    "will-sga": (WILL, 3, bytes([IAC, DONT, 3])),  # SUPPRESS-GO-AHEAD
    "will-naws": (WILL, 31, bytes([IAC, DONT, 31])),
}


def _closing(how: str, conn: str, logged_in: bool, others: tuple[str, ...]) -> tuple[Step, ...]:
    """The server closes ``conn`` because of ``how``; ``others`` are logged in."""
    # Whether the others hear a leaving user's INFO now or at the close is left open.
    watching = (conn,) if logged_in else None
    if how == "quit":
        return line(conn, b"QUIT"), then({conn: b"Goodbye!\n"}, closes={conn: "quit"}, watching=watching)
    if how == "idle":
        return idle(conn), then({conn: err("idle-timeout")}, closes={conn: "idle-timeout"}, watching=watching)
    if how == "shutdown":
        everyone = (conn, *others)
        return shutdown(), then(
            {c: err("server-shutting-down") for c in everyone}, closes={c: "server-shutting-down" for c in everyone}
        )
    assert how == "cross-protocol"
    return line(conn, b"GET / HTTP/1.1"), then(closes={conn: "cross-protocol"})


EXAMPLES += [
    *(
        Example(
            f"http-looking-line-after-login-is-just-an-unknown-command-{key}",
            users=("Naman", "Yudi"),
            script=error_only("Naman", sent, "unknown-command"),
        )
        for key, sent in HTTP_LINES.items()
    ),
    Example(
        "http-after-login-is-an-unknown-command",
        anonymous=(1, 2),
        script=(line(1, b"LOGIN a"), then({1: b"OK\n"}), *error_only(1, b"POST /x HTTP/1.0", "unknown-command")),
    ),
    Example(
        "http-before-login-closes-silently",
        anonymous=(1, 2),
        script=(
            line(1, b"PING"),
            then({1: b"PONG\n"}),
            line(1, b"GET / HTTP/1.1"),
            then(closes={1: "cross-protocol"}),
            line(1, b"PING"),
            then(),
        ),
    ),
    Example(
        "a-tls-client-hello-before-login-closes-silently",
        users=("Yudi",),
        anonymous=(1,),
        script=(TLSHelloReceived(1), then(closes={1: "tls-on-plaintext-port"}), line(1, b"PING"), then()),
    ),
    Example(
        "host-header-before-login-closes-silently",
        anonymous=(1, 2),
        script=(line(1, b"Host: localhost:4000"), line(1, b"PING"), then(closes={1: "cross-protocol"})),
    ),
    *(
        beside_yudi(
            f"telnet-option-request-is-refused-{key}",
            logged_in,
            telnet("me", command, option),
            then({"me": answer}),
        )
        for key, (command, option, answer) in TELNET_REFUSALS.items()
        for logged_in in (False, True)
    ),
    Example(
        "telnet-refusals-in-a-row",
        anonymous=(1, 2),
        script=(telnet(1, DO, 6), telnet(1, WILL, 1), then({1: b"\xff\xfc\x06\xff\xfe\x01"})),
    ),
    *(
        Example(
            f"lines-from-a-logged-in-connection-being-closed-produce-nothing-{how}",
            users=("Naman", "Yudi"),
            script=(
                *_closing(how, "Naman", True, ("Yudi",)),
                *(line("Naman", sent) for sent in (b"PING", b"MSG ghost", b"DM Yudi ghost", b"WHO", b"LOGIN x", b"FOO", b"\xff", b"QUIT")),
                too_long("Naman"),
                idle("Naman"),
                then(),
            ),
        )
        for how in ("quit", "idle", "shutdown")
    ),
    *(
        Example(
            f"lines-from-an-anonymous-connection-being-closed-produce-nothing-{how}",
            users=("Yudi",),
            anonymous=("anon",),
            script=(
                *_closing(how, "anon", False, ("Yudi",)),
                *(line("anon", sent) for sent in (b"PING", b"LOGIN Naman", b"MSG hi", b"FOO", b"\xff", b"EXIT")),
                too_long("anon"),
                idle("anon"),
                then(),
            ),
        )
        for how in ("quit", "idle", "shutdown", "cross-protocol")
    ),
    Example(
        "lines-from-a-connection-refused-as-full-produce-nothing",
        max_clients=1,
        script=(
            *login("a", "Amy"),
            opened("b"),
            then({"b": err("server-full")}, closes={"b": "server-full"}),
            *(line("b", sent) for sent in (b"PING", b"LOGIN Bob", b"MSG hi", b"QUIT")),
            idle("b"),
            then(),
        ),
    ),
]

_names = [example.name for example in EXAMPLES]
assert len(set(_names)) == len(_names), sorted(name for name in _names if _names.count(name) > 1)
