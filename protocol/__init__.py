"""The chat protocol as a pure library: bytes and events in, effects out.

Theory of operation
-------------------
Two objects do all the protocol work, and neither touches a socket, a clock,
a thread or a log:

- ``LineFramer`` (one per connection) cuts the bytes a client sends into
  line events, removing Telnet commands and enforcing the line-length limit
  (``protocol.framing``);
- ``ChatMachine`` (one per server) turns each event into effects: replies,
  deliveries, broadcasts and closes (``protocol.machine``).

The caller owns all I/O and all time.  The reactor in this repository is one
such caller; a fuzzer, a test or a different event loop can be another::

    from protocol import ChatMachine, ConnectionOpened, LineReceived, output_by_connection

    machine = ChatMachine()
    effects = []
    for event in [ConnectionOpened("alice"), LineReceived("alice", b"LOGIN alice"),
                  LineReceived("alice", b"PING")]:
        effects += machine.handle(event)
    assert output_by_connection(effects) == {"alice": b"OK\\nPONG\\n"}

This package imports only side-effect-free standard modules (``re``,
``unicodedata``, ``dataclasses``, ``enum``, ``typing``, ``collections.abc``)
and its own modules; a test checks that, and ``mypy --strict`` checks its
types.  docs/protocol.md describes the wire protocol and how to
use the library.
"""

from .commands import Command, looks_like_http
from .effects import (
    Broadcast,
    Close,
    CloseReason,
    Deliver,
    Effect,
    Reply,
    output_by_connection,
)
from .events import (
    ConnectionClosed,
    ConnectionOpened,
    ConnectionsClosed,
    ConnectionsTimedOut,
    ConnId,
    Event,
    IdleTimedOut,
    LineReceived,
    LineTooLong,
    ShutdownStarted,
    TelnetOptionRequested,
    TLSHelloReceived,
)
from .framing import DEFAULT_MAX_LINE, LineFramer, Taken
from .machine import ChatMachine, ConnState, ProtocolUsageError
from .names import (
    MAX_NAME_BYTES,
    MAX_NAME_CODE_POINTS,
    MAX_NAME_LENGTH,
    Username,
    maybe_name_key,
    name_key,
    parse_username,
)
from .text import clean_text
from .wire import ERROR_CODES

__version__ = "0.1.0"

__all__ = [
    "Broadcast",
    "ChatMachine",
    "Close",
    "CloseReason",
    "Command",
    "ConnId",
    "ConnState",
    "ConnectionClosed",
    "ConnectionOpened",
    "ConnectionsClosed",
    "ConnectionsTimedOut",
    "DEFAULT_MAX_LINE",
    "Deliver",
    "ERROR_CODES",
    "Effect",
    "Event",
    "IdleTimedOut",
    "LineFramer",
    "LineReceived",
    "LineTooLong",
    "MAX_NAME_BYTES",
    "MAX_NAME_CODE_POINTS",
    "MAX_NAME_LENGTH",
    "ProtocolUsageError",
    "Reply",
    "ShutdownStarted",
    "Taken",
    "TelnetOptionRequested",
    "TLSHelloReceived",
    "Username",
    "clean_text",
    "looks_like_http",
    "maybe_name_key",
    "name_key",
    "output_by_connection",
    "parse_username",
]
