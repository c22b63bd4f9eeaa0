"""A reference model of the chat protocol, written from protocol.md alone.

Theory of operation
-------------------
``ChatModel`` is the slow, obvious twin of ``protocol.ChatMachine``.  It was
written from docs/protocol.md (the wire protocol, in this project's words) and
the public API docstrings only, never from ``protocol/machine.py`` or its
helpers, so that the two implementations check each other: where they
disagree, one of them misreads the spec.

It has one method per event (``open``, ``line``, ``too_long``, ``telnet``,
``idle``, ``closed``, ``shutdown``).  Each returns an ``Expected``: the bytes
every connection should receive, split into replies (caused by the
connection's own input or about its own connection) and lines from other
users (MSG, DM, INFO), plus the connections the server must close and why.

It imports nothing from ``protocol``: close reasons are the plain strings of
``CloseReason.value``.  Clarity beats speed everywhere: lists are scanned,
names are re-normalised on every comparison.

Readings of protocol.md where it leaves room (each marked AMBIGUOUS below):

1. A line is checked for UTF-8 before anything else, the HTTP guard
   included: an invalid-UTF-8 line never "looks like" HTTP.
2. "Looks like an HTTP request line": after trimming, ``METHOD SP target SP
   HTTP/d.d`` with METHOD uppercase ASCII letters (any token, as RFC 9110
   allows extension methods) and target printable ASCII; a header is
   ``Host:`` at the start of the trimmed line, ASCII-case-insensitive.
   The machine reads this more broadly (e.g. ``GET /`` with no version, a
   TAB between the parts, trailing junk after the version, ``Host :``); the
   strategies only draw the canonical browser lines on which every reading
   agrees, so these differences are reported, not tested.
3. A LOGIN name is not cleaned of control characters: a control character
   makes it ``invalid-username`` (the name rule has no room for one).
4. The validity rule is checked before the taken check (an invalid name is
   ``invalid-username`` even if its key equals a logged-in user's key).
5. "Empty after cleaning" means zero characters: MSG text that is only a
   TAB (or only spaces left between removed controls) is sent as is.
6. After ``ShutdownStarted`` every user has left at once: ``usernames()`` is
   empty, though the connections stay open (closing) until ConnectionClosed.
7. ``--max-clients`` counts the connections admitted and not yet reported
   closed (a closing one still holds its socket); a connection refused with
   ``server-full`` does not count.
8. A DM's target name is a word, not text: it is not cleaned either, so a
   control character in it makes the lookup fail (``user-not-found``).
9. A connection opened after ``ShutdownStarted`` (the reactor stops
   accepting, but one may race it) is told ``ERR server-shutting-down`` and
   closed at once, before any ``server-full`` check; a second
   ``ShutdownStarted`` finds nobody left to tell.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Hashable
from typing import NamedTuple

Conn = Hashable

AWAITING_LOGIN = "awaiting-login"
LOGGED_IN = "logged-in"
CLOSING = "closing"

COMMANDS = ("LOGIN", "MSG", "WHO", "DM", "PING", "QUIT", "EXIT")
ALLOWED_BEFORE_LOGIN = ("LOGIN", "PING", "QUIT", "EXIT")
MAX_NAME = 32

TELNET_DO = 253
TELNET_WILL = 251

# -- text rules --------------------------------------------------------------


def is_whitespace(ch: str) -> bool:
    """protocol.md: only ASCII space and TAB are whitespace."""
    return ch in (" ", "\t")


def trim(s: str) -> str:
    return s.strip(" \t")


def split_word(s: str) -> tuple[str, str]:
    """The first word of ``s`` and the rest after the whitespace that follows it."""
    i = 0
    while i < len(s) and not is_whitespace(s[i]):
        i += 1
    return s[:i], s[i:].lstrip(" \t")


def is_control(ch: str) -> bool:
    """C0 except TAB, DEL, C1, U+2028 and U+2029 (protocol.md, Framing)."""
    o = ord(ch)
    return (o <= 0x1F and ch != "\t") or o == 0x7F or 0x80 <= o <= 0x9F or o in (0x2028, 0x2029)


def clean(text: str) -> str:
    return "".join(ch for ch in text if not is_control(ch))


def command_of(word: str) -> str | None:
    """The command a word names, ASCII-case-insensitively (``pıng`` names none)."""
    if not word.isascii():
        return None
    upper = word.upper()
    return upper if upper in COMMANDS else None


# AMBIGUOUS (2): the shape of an HTTP request line.
_REQUEST_LINE = re.compile(r"[A-Z]+ [!-~]+ HTTP/[0-9]\.[0-9]")


def looks_like_http(line: str) -> bool:
    """``line`` is already trimmed."""
    if _REQUEST_LINE.fullmatch(line):
        return True
    head = line[:5]
    return head.isascii() and head.lower() == "host:"


# -- names -------------------------------------------------------------------


def nfkc(s: str) -> str:
    return unicodedata.normalize("NFKC", s)


def name_key(name: str) -> str:
    """NFKC(casefold(NFKC(name))): the key names compare by."""
    return nfkc(nfkc(name).casefold())


def is_valid_shown_name(shown: str) -> bool:
    """The rule, on the NFKC form: 1-32 code points of L*, M* (not first), Nd, _ - ."""
    if not 1 <= len(shown) <= MAX_NAME:
        return False
    for i, ch in enumerate(shown):
        category = unicodedata.category(ch)
        if category.startswith("L") or category == "Nd" or ch in "_-.":
            continue
        if category.startswith("M") and i > 0:
            continue
        return False
    return True


# -- what the model answers ----------------------------------------------------


class Expected(NamedTuple):
    """What one event should produce.

    ``sends`` is every line in order as ``(conn, kind, data)`` with kind
    ``"reply"`` (the connection's own business) or ``"peer"`` (a line from
    another user); ``closes`` maps each connection to close to its reason.
    """

    sends: list[tuple[Conn, str, bytes]]
    closes: dict[Conn, str]

    def output(self, kinds: tuple[str, ...] = ("reply", "peer")) -> dict[Conn, bytes]:
        """The bytes each connection receives, like ``protocol.output_by_connection``."""
        out: dict[Conn, bytes] = {}
        for conn, kind, data in self.sends:
            if kind in kinds:
                out[conn] = out.get(conn, b"") + data
        return out

    @property
    def closed(self) -> list[Conn]:
        return list(self.closes)


def line_bytes(text: str) -> bytes:
    return text.encode("utf-8") + b"\n"


class ChatModel:
    """The chat protocol as a few dicts and lists; one method per event."""

    def __init__(self, max_clients: int | None = None) -> None:
        self.max_clients = max_clients
        self.state: dict[Conn, str] = {}  # every open conn, in open order
        self.names: dict[Conn, str] = {}  # logged-in conn -> shown name
        self.login_order: list[Conn] = []  # logged-in conns
        self.admitted: list[Conn] = []  # conns counted against max_clients
        self.shut_down = False
        self._sends: list[tuple[Conn, str, bytes]] = []
        self._closes: dict[Conn, str] = {}

    # -- queries -------------------------------------------------------------

    def usernames(self) -> list[str]:
        return [self.names[conn] for conn in self.login_order]

    def state_of(self, conn: Conn) -> str | None:
        return self.state.get(conn)

    # -- events --------------------------------------------------------------

    def open(self, conn: Conn) -> Expected:
        assert conn not in self.state, "model misuse: double open"
        full = self.max_clients is not None and len(self.admitted) >= self.max_clients
        self.state[conn] = AWAITING_LOGIN
        if self.shut_down:  # AMBIGUOUS (9): a connection that races the shutdown.
            self._reply(conn, "ERR server-shutting-down")
            self._close(conn, "server-shutting-down")
        elif full:
            self._reply(conn, "ERR server-full")
            self._close(conn, "server-full")
        else:
            self.admitted.append(conn)
        return self._done()

    def line(self, conn: Conn, raw: bytes) -> Expected:
        if self._gone(conn):
            return self._done()
        try:  # AMBIGUOUS (1): UTF-8 first, then the HTTP guard.
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            self._reply(conn, "ERR invalid-utf8")
            return self._done()
        line = trim(text)
        if not line:
            return self._done()
        logged_in = self.state[conn] == LOGGED_IN
        if not logged_in and looks_like_http(line):
            self._close(conn, "cross-protocol")
            return self._done()
        word, rest = split_word(line)
        command = command_of(word)
        if command is None:
            self._reply(conn, "ERR unknown-command")
        elif not logged_in and command not in ALLOWED_BEFORE_LOGIN:
            self._reply(conn, "ERR not-logged-in")
        else:
            getattr(self, "_cmd_" + command.lower())(conn, rest)
        return self._done()

    def tls_hello(self, conn: Conn) -> Expected:
        """A TLS ClientHello opened the stream: before LOGIN, closed silently."""
        if not self._gone(conn) and self.state[conn] != LOGGED_IN:
            self._close(conn, "tls-on-plaintext-port")
        return self._done()

    def too_long(self, conn: Conn) -> Expected:
        if not self._gone(conn):
            self._reply(conn, "ERR line-too-long")
        return self._done()

    def telnet(self, conn: Conn, command: int, option: int) -> Expected:
        if not self._gone(conn):
            refusal = {TELNET_DO: 252, TELNET_WILL: 254}[command]  # WONT, DONT
            self._sends.append((conn, "reply", bytes([255, refusal, option])))
        return self._done()

    def idle(self, conn: Conn) -> Expected:
        if not self._gone(conn):
            self._reply(conn, "ERR idle-timeout")
            self._close(conn, "idle-timeout")
        return self._done()

    def idle_together(self, conns: list[Conn]) -> Expected:
        """Several idle timeouts at once: one departure, as for closes."""
        going = [conn for conn in conns if not self._gone(conn)]
        leaving = [self.names[conn] for conn in going if self.state[conn] == LOGGED_IN]
        for conn in going:
            self._reply(conn, "ERR idle-timeout")
            self._close(conn, "idle-timeout", tell_others=False)
        for name in leaving:
            self._tell_others(None, f"INFO {name} disconnected")
        return self._done()

    def closed(self, conn: Conn) -> Expected:
        assert conn in self.state, "model misuse: close of a conn not open"
        if self.state[conn] == LOGGED_IN:
            self._leave(conn)
        del self.state[conn]
        if conn in self.admitted:
            self.admitted.remove(conn)
        return self._done()

    def closed_together(self, conns: list[Conn]) -> Expected:
        """Several connections ended at once: the rest hear of each leaver; leavers of none."""
        for conn in conns:
            assert conn in self.state, "model misuse: close of a conn not open"
        leaving = [self.names[conn] for conn in conns if conn in self.names]
        for conn in conns:
            if self.state[conn] == LOGGED_IN:
                self._leave(conn, tell_others=False)
            del self.state[conn]
            if conn in self.admitted:
                self.admitted.remove(conn)
        for name in leaving:
            self._tell_others(None, f"INFO {name} disconnected")
        return self._done()

    def shutdown(self) -> Expected:
        self.shut_down = True
        for conn in list(self.state):
            if self.state[conn] != CLOSING:
                self._reply(conn, "ERR server-shutting-down")
                self._close(conn, "server-shutting-down", tell_others=False)
        return self._done()

    # -- commands --------------------------------------------------------------

    def _cmd_login(self, conn: Conn, rest: str) -> None:
        if self.state[conn] == LOGGED_IN:
            self._reply(conn, "ERR already-logged-in")
            return
        if not rest:
            self._reply(conn, "ERR missing-username")
            return
        shown = nfkc(rest)  # AMBIGUOUS (3): not cleaned of controls first.
        if not is_valid_shown_name(shown):  # AMBIGUOUS (4): before the taken check.
            self._reply(conn, "ERR invalid-username")
            return
        if self._find_user(shown) is not None:
            self._reply(conn, "ERR username-taken")
            return
        self.state[conn] = LOGGED_IN
        self.names[conn] = shown
        self.login_order.append(conn)
        self._reply(conn, "OK")

    def _cmd_msg(self, conn: Conn, rest: str) -> None:
        text = clean(rest)
        if not text:  # AMBIGUOUS (5): only a truly empty text is missing.
            self._reply(conn, "ERR missing-text")
            return
        self._tell_others(conn, f"MSG {self.names[conn]} {text}")

    def _cmd_who(self, conn: Conn, rest: str) -> None:
        for name in self.usernames():
            self._reply(conn, f"USER {name}")

    def _cmd_dm(self, conn: Conn, rest: str) -> None:
        name, raw_text = split_word(rest)
        text = clean(raw_text)
        if not name or not text:
            self._reply(conn, "ERR missing-text")
            return
        target = self._find_user(name)  # AMBIGUOUS (8): the name is not cleaned.
        if target is None:
            self._reply(conn, "ERR user-not-found")
            return
        self._sends.append((target, "peer", line_bytes(f"DM {self.names[conn]} {text}")))

    def _cmd_ping(self, conn: Conn, rest: str) -> None:
        self._reply(conn, "PONG")

    def _cmd_quit(self, conn: Conn, rest: str) -> None:
        self._reply(conn, "Goodbye!")
        self._close(conn, "quit")

    _cmd_exit = _cmd_quit

    # -- helpers ---------------------------------------------------------------

    def _gone(self, conn: Conn) -> bool:
        """Whether the server already closed ``conn`` (its events produce nothing)."""
        assert conn in self.state, "model misuse: event for a conn not open"
        return self.state[conn] == CLOSING

    def _find_user(self, name: str) -> Conn | None:
        key = name_key(name)
        for conn in self.login_order:
            if name_key(self.names[conn]) == key:
                return conn
        return None

    def _reply(self, conn: Conn, text: str) -> None:
        self._sends.append((conn, "reply", line_bytes(text)))

    def _tell_others(self, sender: Conn, text: str) -> None:
        for conn in self.login_order:
            if conn != sender:
                self._sends.append((conn, "peer", line_bytes(text)))

    def _leave(self, conn: Conn, tell_others: bool = True) -> None:
        name = self.names.pop(conn)
        self.login_order.remove(conn)
        if tell_others:
            self._tell_others(conn, f"INFO {name} disconnected")

    def _close(self, conn: Conn, reason: str, tell_others: bool = True) -> None:
        if self.state[conn] == LOGGED_IN:
            self._leave(conn, tell_others)  # AMBIGUOUS (6) when tell_others is False
        self.state[conn] = CLOSING
        self._closes[conn] = reason

    def _done(self) -> Expected:
        expected = Expected(self._sends, self._closes)
        self._sends, self._closes = [], {}
        return expected
