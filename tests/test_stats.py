"""The reactor's counters and its periodic-callback hook, on real sockets."""

from __future__ import annotations

import socket

from reactor.config import Config
from reactor.loop import Reactor
from reactor.stats import COUNTER_FIELDS, Counters, Stats


def test_counters_and_call_every_report_what_the_loop_did():
    listener = socket.create_server(("127.0.0.1", 0))
    reactor = Reactor([listener], Config(host="127.0.0.1", port=0))
    client = socket.create_connection(reactor.addresses[0], timeout=5)
    client.sendall(b"LOGIN ann\nPING\nWHO\n")
    seen: list[Stats] = []

    def tick() -> None:
        if seen and seen[-1].lines_out >= 3:
            return  # shutting down: the figures of interest are taken
        seen.append(reactor.stats())
        if seen[-1].lines_out >= 3 or len(seen) >= 500:  # about 10 s at most
            reactor.request_shutdown()

    reactor.call_every(0.02, tick)
    try:
        reactor.serve_forever()
    finally:
        reactor.close()
        client.close()
    last = seen[-1]
    assert (last.users, last.connections, last.accepted, last.refused) == (1, 1, 1, 0)
    assert (last.lines_in, last.lines_out) == (3, 3)  # OK, PONG, USER ann
    assert last.bytes_in == len(b"LOGIN ann\nPING\nWHO\n")
    assert last.bytes_out == len(b"OK\nPONG\nUSER ann\n")
    assert (last.evictions, last.flood_pauses) == (0, 0)
    assert last.uptime > 0
    assert len(seen) >= 1


def test_the_stats_line_names_every_field():
    stats = Stats(users=2, connections=3, uptime=61.4, **{name: 7 for name in COUNTER_FIELDS})
    line = stats.line()
    assert line.startswith("stats: users=2 connections=3 accepted=7 ")
    assert line.endswith(" uptime=61s")
    assert set(COUNTER_FIELDS) == {f for f in Counters.__dataclass_fields__}


def test_call_every_rejects_a_useless_interval():
    listener = socket.create_server(("127.0.0.1", 0))
    reactor = Reactor([listener], Config(host="127.0.0.1", port=0))
    try:
        for bad in (0, -1.0):
            try:
                reactor.call_every(bad, lambda: None)
            except ValueError:
                continue
            raise AssertionError(f"call_every({bad}) was accepted")
    finally:
        reactor.close()
