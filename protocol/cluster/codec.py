"""The byte-level pieces every cluster record is built from, and its one error.

Theory of operation
-------------------
Log entries and snapshots travel through the engine as opaque byte strings,
so their format is ours.  It is built from two pieces only:

- an unsigned integer as a *varint* (LEB128: seven bits a byte, low bits
  first, the high bit set on every byte but the last), so the small numbers
  that fill a log (node ids, connection numbers, counts) cost one byte;
- a byte string as its length (a varint) followed by its bytes, used where
  something follows it; a record's last field runs to the end instead.

Decoding is strict, so that every valid record has exactly one encoding:
a varint must be minimal (no ``0x80 0x00`` for zero), at most nine bytes
(below 2**63), and nothing may follow a record's last field.  Anything else
raises ``DecodeError`` and only ``DecodeError``: a reader must never crash,
whatever bytes the engine hands it.
"""

from __future__ import annotations

MAX_VARINT_BYTES = 9
"""At most 63 bits: larger numbers never occur and would only cost memory."""


class DecodeError(ValueError):
    """Bytes that are not a valid record of a known version.

    The only exception ``decode_entry`` and ``decode_snapshot`` raise, for any
    input whatever.
    """


def varint(value: int) -> bytes:
    """``value`` (0 <= value < 2**63) as a minimal LEB128 varint."""
    if value < 0x80:
        if value < 0:
            raise ValueError(f"varints are unsigned: {value}")
        return bytes((value,))
    if value < 0x4000:  # serials pass 127 after the first few entries ...
        return bytes(((value & 0x7F) | 0x80, value >> 7))
    if value < 0x200000:  # ... and 16,383 a few seconds into a busy node's life
        return bytes(((value & 0x7F) | 0x80, ((value >> 7) & 0x7F) | 0x80, value >> 14))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    if len(out) > MAX_VARINT_BYTES:
        raise ValueError("varint too large")
    return bytes(out)


def sized(data: bytes) -> bytes:
    """``data`` preceded by its length, for a field that is not the last."""
    return varint(len(data)) + data


def varint_at(data: bytes, at: int) -> tuple[int, int]:
    """The varint that starts at ``data[at]``, and where the next field starts."""
    try:
        byte = data[at]
    except IndexError:
        raise DecodeError("record ends early") from None
    if byte < 0x80:  # nearly every number in a log
        return byte, at + 1
    value = byte & 0x7F
    end = min(at + MAX_VARINT_BYTES, len(data))
    shift = 7
    for index in range(at + 1, end):
        byte = data[index]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            if byte == 0:
                raise DecodeError("varint is not minimal")
            return value, index + 1
        shift += 7
    raise DecodeError("varint too long" if end - at == MAX_VARINT_BYTES else "record ends early")


class Reader:
    """A cursor over one record's bytes; every read checks its bounds."""

    __slots__ = ("data", "at")

    def __init__(self, data: bytes, at: int = 0) -> None:
        self.data = data
        self.at = at

    def byte(self) -> int:
        at = self.at
        if at >= len(self.data):
            raise DecodeError("record ends early")
        self.at = at + 1
        return self.data[at]

    def varint(self) -> int:
        value, self.at = varint_at(self.data, self.at)
        return value

    def sized(self) -> bytes:
        length = self.varint()
        end = self.at + length
        if end > len(self.data):
            raise DecodeError("field runs past the end of the record")
        field = self.data[self.at : end]
        self.at = end
        return field

    def rest(self) -> bytes:
        field = self.data[self.at :]
        self.at = len(self.data)
        return field

    def count(self, smallest_item: int) -> int:
        """A count of items to come, checked against the bytes left.

        Each item takes at least ``smallest_item`` bytes, so a forged count
        of a billion fails here instead of looping a billion times.
        """
        number = self.varint()
        if number * smallest_item > len(self.data) - self.at:
            raise DecodeError("count larger than the record")
        return number

    def end(self) -> None:
        if self.at != len(self.data):
            raise DecodeError("bytes after the end of the record")
