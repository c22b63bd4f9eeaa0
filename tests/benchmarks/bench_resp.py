"""Micro-benchmark: parsing the replies cluster mode reads, hiredis against plain Python.

Not a test (pytest does not collect it); run it from the repository root:

    python tests/benchmarks/bench_resp.py [--entries 100] [--size 100] [--repeat 5]

Why it exists: cluster mode parses RESP with ``hiredis`` (an optional
dependency, the ``cluster`` extra) rather than with Python of our own, and
``docs/cluster.md`` justifies that with the figure printed here.

What it measures, per reply and per stream entry:

- ``hiredis``: ``Reader.feed`` of one whole ``XREAD`` reply (``--entries``
  entries of one field whose value is ``--size`` bytes, the shape a node
  reads from the stream) then ``gets()``, what ``RedisLink`` does per read;
- ``python``: the same bytes through ``parse_python`` below, the 30-line
  recursive parser one would write instead.  It is given the whole reply in
  one buffer and never has to resume a partial one, which flatters it: a
  real one must also keep its state across reads.

It also times the other direction, ``encode_command`` (ours, by hand) for
an ``XADD`` against ``hiredis.pack_command``, to show that writing commands
by hand costs nothing worth a dependency.

Each figure is the best of ``--repeat`` runs of ``--number`` parses (timeit's
method: the minimum is the run least disturbed by the rest of the machine).
The two parsers' results are compared once, so the figures are for the
same work.  It runs for a few seconds on one core.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import timeit

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

import hiredis  # noqa: E402

from reactor.engine import encode_command  # noqa: E402


class PythonReplyError(Exception):
    pass


def parse_python(data: bytes, pos: int = 0):
    """One RESP2 reply from ``data`` at ``pos``: (value, next position).  The whole of it."""
    end = data.index(b"\r\n", pos)
    kind, line = data[pos:pos + 1], data[pos + 1:end]
    pos = end + 2
    if kind == b"+":
        return line, pos
    if kind == b"-":
        return PythonReplyError(line.decode()), pos
    if kind == b":":
        return int(line), pos
    if kind == b"$":
        length = int(line)
        if length < 0:
            return None, pos
        return data[pos:pos + length], pos + length + 2
    if kind == b"*":
        count = int(line)
        if count < 0:
            return None, pos
        items = []
        for _ in range(count):
            item, pos = parse_python(data, pos)
            items.append(item)
        return items, pos
    raise ValueError(f"bad reply type {kind!r}")


def bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def xread_reply(entries: int, size: int) -> bytes:
    """``XREAD ... STREAMS chat:log <id>``'s reply: one stream, ``entries`` entries of one field."""
    parts = [b"*1\r\n*2\r\n", bulk(b"chat:log"), b"*%d\r\n" % entries]
    for n in range(entries):
        entry_id = b"1733240000000-%d" % n
        value = (b"MSG naman %d " % n).ljust(size, b"x")
        parts += [b"*2\r\n", bulk(entry_id), b"*2\r\n", bulk(b"e"), bulk(value)]
    return b"".join(parts)


def parse_hiredis(data: bytes):
    reader = hiredis.Reader()
    reader.feed(data)
    return reader.gets()


def best(function, number: int, repeat: int) -> float:
    """Seconds per call, the best of ``repeat`` runs of ``number`` calls."""
    return min(timeit.repeat(function, number=number, repeat=repeat)) / number


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=100, help="stream entries per XREAD reply (default 100)")
    parser.add_argument("--size", type=int, default=100, help="bytes of each entry's value (default 100)")
    parser.add_argument("--number", type=int, default=2000, help="parses per run (default 2000)")
    parser.add_argument("--repeat", type=int, default=5, help="runs; the best counts (default 5)")
    args = parser.parse_args()

    data = xread_reply(args.entries, args.size)
    assert parse_python(data) == (parse_hiredis(data), len(data)), "the two parsers disagree"

    fast = best(lambda: parse_hiredis(data), args.number, args.repeat)
    slow = best(lambda: parse_python(data), args.number, args.repeat)
    xadd = ["XADD", "chat:log", "MAXLEN", "~", "100000", "*", "e", b"MSG naman " + b"x" * (args.size - 10)]
    ours = best(lambda: encode_command(xadd), args.number * 10, args.repeat)
    theirs = best(lambda: hiredis.pack_command(tuple(xadd)), args.number * 10, args.repeat)

    print(f"python {platform.python_version()}, hiredis {hiredis.__version__}, {platform.machine()}, "
          f"{os.cpu_count()} cores")
    print(f"command: python {' '.join(sys.argv)}")
    print(f"reply: XREAD with {args.entries} entries of {args.size} bytes = {len(data)} bytes; "
          f"best of {args.repeat} x {args.number}")
    print()
    print(f"{'parser':<24} {'us/reply':>10} {'us/entry':>10} {'MB/s':>8}")
    for name, seconds in (("hiredis.Reader", fast), ("pure Python (30 lines)", slow)):
        print(f"{name:<24} {seconds * 1e6:>10.1f} {seconds * 1e6 / args.entries:>10.3f} "
              f"{len(data) / seconds / 1e6:>8.0f}")
    print(f"python / hiredis: {slow / fast:.1f}x")
    print()
    print(f"{'encoder (one XADD)':<24} {'us/command':>10}")
    print(f"{'encode_command (ours)':<24} {ours * 1e6:>10.2f}")
    print(f"{'hiredis.pack_command':<24} {theirs * 1e6:>10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
