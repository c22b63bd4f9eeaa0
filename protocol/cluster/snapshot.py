"""The snapshot: the fold of the log up to one position, so a node can start late.

Theory of operation
-------------------
Folding the log from its first entry would make a node's start time (and
the log's size) grow without end.  A snapshot is what every node's
replicated state holds after folding every entry up to and including
``position``, and nothing else:

- ``position``: the log's own id of the last entry folded (for Redis, a
  stream id such as ``1700000000000-0``), opaque to this package;
- ``nodes``: the live nodes, each with the serial of its last entry applied
  (so a copy of an entry that is already folded is recognised as one);
- ``retired``: the nodes that are down, whose entries are never applied again;
- ``users``: the logged-in users in login order, each as its global id
  (node, conn) and its name as shown;
- ``waiting``: connections the log knows that are not logged in (a LOGIN of
  theirs failed), and ``closing``: connections the fold has closed (QUIT,
  idle timeout) whose end their node has not yet appended.

It holds nothing about any node's local connections: those are not
replicated.  Because it is a pure function of the log prefix, no entry can
fall between a snapshot and the log: a node that starts from it folds
exactly the entries *after* ``position``, and taking it needs no lock (any
node may take one between two reads, and every node would take the same).

Encoding: the byte 1 (version), the byte ``S`` (so a snapshot is never
mistaken for an entry), then the fields above in that order, each list as a
count and its items, names and the position as sized byte strings.
``decode_snapshot`` raises ``DecodeError``, and only that, for anything
else.
"""

from __future__ import annotations

from dataclasses import dataclass

from .codec import DecodeError, Reader, sized, varint

VERSION = 1
_MAGIC = ord("S")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The replicated state after the entry at ``position``; see the module docstring."""

    position: str = ""
    nodes: tuple[tuple[int, int], ...] = ()
    retired: tuple[int, ...] = ()
    users: tuple[tuple[int, int, bytes], ...] = ()
    waiting: tuple[tuple[int, int], ...] = ()
    closing: tuple[tuple[int, int], ...] = ()


def encode_snapshot(snapshot: Snapshot) -> bytes:
    """The snapshot's one and only byte encoding."""
    parts = [bytes((VERSION, _MAGIC)), sized(snapshot.position.encode("utf-8"))]
    parts.append(varint(len(snapshot.nodes)))
    parts += [varint(node) + varint(serial) for node, serial in snapshot.nodes]
    parts.append(varint(len(snapshot.retired)))
    parts += [varint(node) for node in snapshot.retired]
    parts.append(varint(len(snapshot.users)))
    parts += [varint(node) + varint(conn) + sized(name) for node, conn, name in snapshot.users]
    for pairs in (snapshot.waiting, snapshot.closing):
        parts.append(varint(len(pairs)))
        parts += [varint(node) + varint(conn) for node, conn in pairs]
    return b"".join(parts)


def decode_snapshot(data: bytes) -> Snapshot:
    """The snapshot ``data`` encodes; ``DecodeError`` for anything else, never another exception."""
    if len(data) < 2 or data[0] != VERSION or data[1] != _MAGIC:
        raise DecodeError("not a snapshot of a known version")
    reader = Reader(data, 2)
    try:
        position = reader.sized().decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError("snapshot position is not UTF-8") from None
    nodes = tuple((reader.varint(), reader.varint()) for _ in range(reader.count(2)))
    retired = tuple(reader.varint() for _ in range(reader.count(1)))
    users = tuple((reader.varint(), reader.varint(), reader.sized()) for _ in range(reader.count(3)))
    waiting = _pairs(reader)
    closing = _pairs(reader)
    reader.end()
    return Snapshot(position, nodes, retired, users, waiting, closing)


def _pairs(reader: Reader) -> tuple[tuple[int, int], ...]:
    return tuple((reader.varint(), reader.varint()) for _ in range(reader.count(2)))
