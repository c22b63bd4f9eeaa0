"""Log entries: what nodes append, and every node reads back in the same order.

Theory of operation
-------------------
An entry is a fact that every node must apply at the same point of the
one order: a login attempt, a MSG, a node that is gone.  Each names its
*author* (the node that appended it) and the author's *serial* (1 for its
first entry, then 2, 3, ...), so a node can tell its own entries when they
come back, and an entry that reached the log twice (sent again after a
reconnect, when the first copy's acknowledgement was lost) is applied once.
A client connection is named by its author's node id plus the
``conn`` number that node gave it: the pair is its *global id*.

Kinds, and what folding them does (``protocol.cluster.state``):

=========  ======================  =============================================
kind       fields after the header  folded as (on every node)
=========  ======================  =============================================
NodeUp     (none)                  the author joins; its entries count from now
NodeDown   node                    that node is gone: each of its users leaves
                                   (INFO to the rest); first one wins, the rest
                                   and all the node's later entries are ignored
Login      conn, name              ``LOGIN <name>``
Msg        conn, text              ``MSG <text>``
Dm         conn, rest              ``DM <rest>`` (rest: target and text)
Who        conn                    ``WHO``, answered at this point of the order
Quit       conn                    ``QUIT``
Line       conn, line              a raw line whose meaning depends on the
                                   connection's state here (say, an HTTP-looking
                                   line sent while a LOGIN was still pending)
Idle       conns                   the connections' idle timeouts
Closed     conns                   the connections ended (end of stream, reset,
                                   eviction, or after a close the node asked for)
=========  ======================  =============================================

Arguments are carried as the client sent them, after the command word:
every decision about them (is the name valid, is the text empty once
cleaned, is the target logged in) is taken when the entry is folded, by the
same ``ChatMachine`` code as in standalone mode, so no node can decide
differently from another.

Encoding (``codec`` has the two building blocks)::

    entry  = VERSION KIND author serial body
    body   = ""                        NodeUp
           | node                      NodeDown
           | conn                      Who, Quit
           | conn bytes-to-the-end     Login, Msg, Dm, Line
           | count conn{count}         Idle, Closed (count >= 1, no repeats)

``VERSION`` is the byte 1; ``KIND`` one byte; every number a varint.  A MSG
of 64 bytes from a node with a small id is 69 bytes.  A reader that meets
another version, an unknown kind, or any bytes that do not parse exactly
raises ``DecodeError``; the fold skips such an entry on every node alike.
"""

from __future__ import annotations

from dataclasses import dataclass

from .codec import DecodeError, Reader, varint, varint_at

VERSION = 1


@dataclass(frozen=True, slots=True)
class NodeUp:
    """The author joins the cluster; it serves clients once it reads this back."""

    author: int
    serial: int


@dataclass(frozen=True, slots=True)
class NodeDown:
    """``node`` is gone (shut down, lease expired, or cut off); its users leave."""

    author: int
    serial: int
    node: int


@dataclass(frozen=True, slots=True)
class Login:
    """A LOGIN attempt with ``name``, the rest of the line as sent."""

    author: int
    serial: int
    conn: int
    name: bytes


@dataclass(frozen=True, slots=True)
class Msg:
    """A MSG; ``text`` as sent, cleaned when folded."""

    author: int
    serial: int
    conn: int
    text: bytes


@dataclass(frozen=True, slots=True)
class Dm:
    """A DM; ``rest`` is everything after the command word (target, then text)."""

    author: int
    serial: int
    conn: int
    rest: bytes


@dataclass(frozen=True, slots=True)
class Who:
    """A WHO, answered with the users logged in at this point of the log."""

    author: int
    serial: int
    conn: int


@dataclass(frozen=True, slots=True)
class Quit:
    """A QUIT or EXIT."""

    author: int
    serial: int
    conn: int


@dataclass(frozen=True, slots=True)
class Line:
    """A trimmed line the author could not classify without the log's state."""

    author: int
    serial: int
    conn: int
    line: bytes


@dataclass(frozen=True, slots=True)
class Idle:
    """The connections timed out for idleness, together."""

    author: int
    serial: int
    conns: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Closed:
    """The connections ended, together (one departure, like ``ConnectionsClosed``)."""

    author: int
    serial: int
    conns: tuple[int, ...]


Entry = NodeUp | NodeDown | Login | Msg | Dm | Who | Quit | Line | Idle | Closed
ConnEntry = Login | Msg | Dm | Who | Quit | Line
"""The entries about one connection's command."""

# Kind bytes.  Never reuse a retired number: old entries may still be in a log.
_NODE_UP, _NODE_DOWN, _LOGIN, _MSG, _DM, _WHO, _QUIT, _LINE, _IDLE, _CLOSED = range(1, 11)

_KIND_OF: dict[type, int] = {
    NodeUp: _NODE_UP, NodeDown: _NODE_DOWN, Login: _LOGIN, Msg: _MSG, Dm: _DM,
    Who: _WHO, Quit: _QUIT, Line: _LINE, Idle: _IDLE, Closed: _CLOSED,
}
_PAYLOAD_KINDS: dict[int, type[Login | Msg | Dm | Line]] = {_LOGIN: Login, _MSG: Msg, _DM: Dm, _LINE: Line}
_CONN_ONLY_KINDS: dict[int, type[Who | Quit]] = {_WHO: Who, _QUIT: Quit}
_CONNS_KINDS: dict[int, type[Idle | Closed]] = {_IDLE: Idle, _CLOSED: Closed}


def encode_entry(entry: Entry) -> bytes:
    """The entry's one and only byte encoding."""
    header = bytes((VERSION, _KIND_OF[type(entry)])) + varint(entry.author) + varint(entry.serial)
    if isinstance(entry, Login):
        return header + varint(entry.conn) + entry.name
    if isinstance(entry, Msg):
        return header + varint(entry.conn) + entry.text
    if isinstance(entry, Dm):
        return header + varint(entry.conn) + entry.rest
    if isinstance(entry, Line):
        return header + varint(entry.conn) + entry.line
    if isinstance(entry, (Who, Quit)):
        return header + varint(entry.conn)
    if isinstance(entry, (Idle, Closed)):
        if not entry.conns or len(set(entry.conns)) != len(entry.conns):
            raise ValueError(f"an entry names each connection once, and at least one: {entry!r}")
        return header + varint(len(entry.conns)) + b"".join(varint(conn) for conn in entry.conns)
    if isinstance(entry, NodeDown):
        return header + varint(entry.node)
    return header


def msg_entry(author: int, serial: int, conn: int, text: bytes) -> bytes:
    """``encode_entry(Msg(...))`` without building the object."""
    return msg_head(author) + varint(serial) + varint(conn) + text


def msg_head(author: int) -> bytes:
    """What every MSG entry of ``author`` begins with: a node computes it once.

    The hot path's encoder is then ``head + varint(serial) + varint(conn) + text``.
    """
    return bytes((VERSION, _MSG)) + varint(author)


def decode_msg(data: bytes) -> tuple[int, int, int, bytes] | None:
    """``(author, serial, conn, text)`` if ``data`` is a MSG entry, ``None`` if it is another kind.

    The reader's hot path: no entry object.  ``DecodeError`` as ``decode_entry``.
    """
    if len(data) < 2 or data[1] != _MSG or data[0] != VERSION:
        return None
    author, at = varint_at(data, 2)
    serial, at = varint_at(data, at)
    if at < len(data) and data[at] < 0x80:  # a connection number of one byte: nearly always
        return author, serial, data[at], data[at + 1 :]
    conn, at = varint_at(data, at)
    return author, serial, conn, data[at:]


def decode_entry(data: bytes) -> Entry:
    """The entry ``data`` encodes; ``DecodeError`` for anything else, never another exception."""
    if len(data) < 2:
        raise DecodeError("too short for an entry")
    if data[0] != VERSION:
        raise DecodeError(f"unknown entry version {data[0]}")
    kind = data[1]
    author, at = varint_at(data, 2)
    serial, at = varint_at(data, at)
    payload_type = _PAYLOAD_KINDS.get(kind)
    if payload_type is not None:  # MSG among them: the hot path
        conn, at = varint_at(data, at)
        return payload_type(author, serial, conn, data[at:])
    reader = Reader(data, at)
    conn_only = _CONN_ONLY_KINDS.get(kind)
    if conn_only is not None:
        conn = reader.varint()
        reader.end()
        return conn_only(author, serial, conn)
    conns_type = _CONNS_KINDS.get(kind)
    if conns_type is not None:
        count = reader.count(1)
        if count == 0:
            raise DecodeError("an entry about connections names at least one")
        conns = tuple(reader.varint() for _ in range(count))
        reader.end()
        if len(set(conns)) != count:
            raise DecodeError("a connection is named twice")
        return conns_type(author, serial, conns)
    if kind == _NODE_DOWN:
        node = reader.varint()
        reader.end()
        return NodeDown(author, serial, node)
    if kind == _NODE_UP:
        reader.end()
        return NodeUp(author, serial)
    raise DecodeError(f"unknown entry kind {kind}")
