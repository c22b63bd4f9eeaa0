"""Events: what the outside world tells the machine has happened.

Every event is a past-tense fact about one connection (or, for shutdown, about
the server), a small frozen value with no behaviour.  The machine turns each
one into effects (``protocol.effects``); it never asks the world a question
back, so the same events in the same order always give the same effects.

A connection is named by a *connection id*: any hashable value the caller
chooses.  The reactor uses its own connection objects; tests use small
integers or strings.  The machine only compares ids and uses them as dict
keys, and it never iterates a set of them, so ids need no ordering and
identity-hashed objects keep the machine deterministic.

Who produces what:

- the reactor: ``ConnectionOpened``, ``ConnectionClosed`` (or
  ``ConnectionsClosed`` for several at once), ``IdleTimedOut`` (or
  ``ConnectionsTimedOut``), ``ShutdownStarted`` (it owns sockets, the clock and signals);
- the line framer (``protocol.framing``), which the reactor feeds with the
  bytes it reads: ``LineReceived``, ``LineTooLong``,
  ``TelnetOptionRequested`` and ``TLSHelloReceived``.

Contract for callers: open a connection before anything else happens on it,
and report its end exactly once (with ``ConnectionClosed`` or within one
``ConnectionsClosed``), even when the machine itself asked for the close.
Breaking that contract is a programming error and raises ``ProtocolUsageError``; nothing a *client* sends can.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from .values import fast_init

ConnId = Hashable


@fast_init
@dataclass(frozen=True, slots=True)
class ConnectionOpened:
    """A client connected; the machine decides whether it may stay."""

    conn: ConnId


@fast_init
@dataclass(frozen=True, slots=True)
class LineReceived:
    """One complete line arrived: the bytes before the LF, minus a CR just before it.

    The bytes are raw: not yet decoded, not yet trimmed.  Deciding what they
    mean (UTF-8, whitespace, the command word) is the machine's job.
    """

    conn: ConnId
    line: bytes


@fast_init
@dataclass(frozen=True, slots=True)
class LineTooLong:
    """A line passed the size limit; its bytes up to the next LF are being discarded."""

    conn: ConnId


@fast_init
@dataclass(frozen=True, slots=True)
class TelnetOptionRequested:
    """A Telnet client asked to enable an option (``IAC DO x`` or ``IAC WILL x``).

    ``command`` is the Telnet verb byte (253 for DO, 251 for WILL), ``option``
    the option byte.
    """

    conn: ConnId
    command: int
    option: int


@fast_init
@dataclass(frozen=True, slots=True)
class TLSHelloReceived:
    """The stream began with a TLS record: a TLS client on the plaintext port.

    A ClientHello may hold no LF at all, so it would never make a line; the
    framer recognises its first two bytes instead.
    """

    conn: ConnId


@fast_init
@dataclass(frozen=True, slots=True)
class IdleTimedOut:
    """No complete line arrived on the connection for the configured idle time."""

    conn: ConnId


@fast_init
@dataclass(frozen=True, slots=True)
class ConnectionsTimedOut:
    """Several connections reached their idle deadline at the same moment (in one turn).

    One departure, as for ``ConnectionsClosed``: each leaver gets its
    ``ERR idle-timeout``, each remaining user one INFO per leaver, and the
    leavers none about each other.  Thousands of clients that connected
    together time out together; told one by one, they would cost
    N * N / 2 INFO lines, nearly all to clients about to be closed.
    """

    conns: tuple[ConnId, ...]


@fast_init
@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The connection is gone: end of stream, reset, eviction, or a close the machine asked for."""

    conn: ConnId


@fast_init
@dataclass(frozen=True, slots=True)
class ConnectionsClosed:
    """Several connections ended at the same moment (in one turn of the loop).

    Each remaining user hears about each leaver, and the leavers are not told
    about each other: a mass disconnect of N users costs N lines per survivor,
    not N * N / 2 lines, most of them to sockets that are already gone.
    """

    conns: tuple[ConnId, ...]


@fast_init
@dataclass(frozen=True, slots=True)
class ShutdownStarted:
    """The server is stopping; every open connection is about to be closed."""


Event = (
    ConnectionOpened
    | LineReceived
    | LineTooLong
    | TelnetOptionRequested
    | TLSHelloReceived
    | IdleTimedOut
    | ConnectionsTimedOut
    | ConnectionClosed
    | ConnectionsClosed
    | ShutdownStarted
)
