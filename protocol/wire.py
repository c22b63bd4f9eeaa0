"""The exact bytes the server sends.

Every line the server writes is built here, so the wire format can be read in
one place.  Lines end with a single LF.  Names arrive already encoded (the
machine keeps each user's name as UTF-8 bytes from the moment of login), so
building a line is concatenation, never encoding.
"""

from __future__ import annotations

OK = b"OK\n"
PONG = b"PONG\n"
GOODBYE = b"Goodbye!\n"

# Every ``ERR`` code the server can send, in the order protocol.md lists them.
ERROR_CODES = (
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
    "rate-limited",
    "idle-timeout",
    "server-full",
    "server-shutting-down",
    "server-unavailable",  # cluster mode only (docs/cluster.md)
)

_ERRORS = {code: b"ERR " + code.encode("ascii") + b"\n" for code in ERROR_CODES}


def error(code: str) -> bytes:
    """The ``ERR <code>`` line; an unknown code is a programming error (KeyError)."""
    return _ERRORS[code]


def user_line(name: bytes) -> bytes:
    """One line of a WHO reply."""
    return b"USER " + name + b"\n"


def msg_prefix(name: bytes) -> bytes:
    """What precedes the text of every MSG this user sends; built once per login."""
    return b"MSG " + name + b" "


def dm_prefix(name: bytes) -> bytes:
    """What precedes the text of every DM this user sends; built once per login."""
    return b"DM " + name + b" "


def disconnected(name: bytes) -> bytes:
    """The notice the others receive when a user's connection ends."""
    return b"INFO " + name + b" disconnected\n"


# Telnet (RFC 854) command bytes: the framer recognises them, the machine answers.
IAC = 255
DONT = 254
DO = 253
WONT = 252
WILL = 251
SB = 250  # subnegotiation begins
SE = 240  # subnegotiation ends; the lowest command byte


def telnet_refusal(command: int, option: int) -> bytes:
    """Refuse a Telnet option request: ``DO x`` gets ``WONT x``, ``WILL x`` gets ``DONT x``.

    Refusing everything keeps the client in plain line mode; agreeing to
    nothing also means the server never has to track option state.
    """
    answer = WONT if command == DO else DONT
    return bytes((IAC, answer, option))
