"""Command words, and the guard against other protocols' requests.

The command word is the first word of a line, matched case-insensitively in
ASCII only: ``bytes.upper`` leaves non-ASCII bytes alone, so ``pıng`` (with a
dotless i) stays an unknown command instead of becoming ``PING``.
"""

from __future__ import annotations

import enum
import re


class Command(enum.Enum):
    """What a client can ask for."""

    LOGIN = "LOGIN"
    MSG = "MSG"
    WHO = "WHO"
    DM = "DM"
    PING = "PING"
    QUIT = "QUIT"


COMMAND_WORDS = {
    b"LOGIN": Command.LOGIN,
    b"MSG": Command.MSG,
    b"WHO": Command.WHO,
    b"DM": Command.DM,
    b"PING": Command.PING,
    b"QUIT": Command.QUIT,
    b"EXIT": Command.QUIT,
}
"""Upper-cased command word -> command.  ``EXIT`` is another name for ``QUIT``."""

ALLOWED_BEFORE_LOGIN = frozenset({Command.LOGIN, Command.PING, Command.QUIT})
"""The commands that work before a successful LOGIN; the others get ``ERR not-logged-in``."""


# A request line (RFC 9112): method token, target, version.  HTTP/0.9's bare
# "GET /path" and a known method followed by a URL count too.  Header names
# are case-insensitive; methods and "HTTP/" are not.
_HTTP = re.compile(
    rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+[ \t]+[^ \t]+[ \t]+HTTP/[0-9]+(?:\.[0-9]+)?\Z"
    rb"|(?:GET|HEAD|POST|PUT|DELETE|CONNECT|OPTIONS|TRACE|PATCH)[ \t]+(?:/|\*|[A-Za-z][A-Za-z0-9+.-]*://)"
    rb"|(?i:host)[ \t]*:"
)


# What every match starts with or contains, found at C speed: only a line
# that has it goes through the pattern above, whose backtracking over a long
# LOGIN line (a 4 KB name) costs tens of nanoseconds a byte.
_HTTP_START = re.compile(rb"(?:GET|HEAD|POST|PUT|DELETE|CONNECT|OPTIONS|TRACE|PATCH)[ \t]|(?i:host)[ \t]*:")


def looks_like_http(line: bytes) -> bool:
    """Whether a trimmed line looks like an HTTP request line or a ``Host:`` header.

    A web page can make a browser POST a form to the chat port; the body of
    that request must not run as chat commands, so the machine closes any
    connection whose pre-login lines look like HTTP (protocol.md, Framing).
    """
    if b"HTTP/" not in line and _HTTP_START.match(line) is None:
        return False
    return _HTTP.match(line) is not None
