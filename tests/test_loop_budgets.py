"""The loop's budgets, turn by turn: what one connection may cost in memory and time.

Driven by hand (``tests/loopharness.py``) so each assertion is about one
turn: how much output a client that never reads can pin, and how the
work of one turn is shared when many connections are busy at once.
"""

from __future__ import annotations

import itertools
import socket

from loopharness import LoopHarness

import reactor.loop

IAC, DO = 255, 253


def who_reply_size(loop: LoopHarness) -> int:
    return sum(len(b"USER \n") + len(name.encode()) for name in loop.reactor._machine.usernames())


def test_a_burst_of_who_without_reading_pins_at_most_max_output_and_one_reply(harness):
    """Before the check moved into the turn, one turn queued up to 1,024 WHO replies."""
    max_output = 16 << 10
    loop = harness(rate=0, idle_timeout=0, max_output=max_output)
    for i in range(300):
        loop.connect().say(f"LOGIN user{i:03}")
    loop.turn()
    asker = loop.login("asker")
    conn = loop.server_side[asker]
    reply = who_reply_size(loop)
    assert reply > 3000
    asker.send(b"WHO\n" * 3000)  # and never reads
    worst = 0
    for _ in range(20):
        loop.turn()
        worst = max(worst, conn.queued)
    assert max_output < worst <= max_output + reply
    assert conn.unhandled or conn.framer.pending, "it was paused, not done"
    # It reads: every reply arrives, in order, and nothing was dropped.
    received = b""
    for _ in range(10_000):
        received += asker.read()
        if not (conn.unhandled or conn.framer.pending or conn.queue):
            break
        loop.turn()
    received += asker.read()
    assert received.count(b"USER asker\n") == 3000


def test_a_telnet_refusal_storm_without_reading_is_bounded_the_same_way(harness):
    max_output = 1 << 10  # a turn's 1,024 refusals are 3 KiB: the check must stop it mid-turn
    loop = harness(rate=0, idle_timeout=0, max_output=max_output)
    storm = loop.connect()
    conn = loop.server_side[storm]
    worst = 0
    for _ in range(100):  # until the kernel's buffers are full and the server holds the rest
        try:
            storm.send(bytes([IAC, DO, 1]) * 20_000)
        except BlockingIOError:
            pass  # the server stopped reading: the point
        loop.turn(5)
        worst = max(worst, conn.queued)
        if conn.queued and not conn.mask & 1:  # holding output, and no longer reading
            break
    assert max_output < worst <= max_output + 3


def test_a_busy_turn_stops_reading_at_its_budget_and_serves_everyone_in_turn(harness, monkeypatch):
    """30 connections with more work than a turn allows, and one that just pings.

    The clock moves a millisecond each time the loop reads it, so a 9.5 ms
    budget lets a turn serve about nine connections, and 31 ready
    connections share the turn's 1,024 lines: 33 or 34 each.  Those put off go
    first next turn: the pinger is answered within a few turns, and every
    flooder is served as often as every other.
    """
    monkeypatch.setattr(reactor.loop, "READ_BUDGET", 0.0095)
    loop = harness(rate=0, idle_timeout=0, max_output=1 << 30)
    flooders = [loop.connect() for _ in range(30)]
    lines = 600
    for flooder in flooders:
        flooder.send(b"PING\n" * lines)  # about 18 shares each
    pinger = loop.connect()
    pinger.say("PING")
    ticking = loop.clock
    real_call = type(ticking).__call__

    def tick(clock) -> float:
        clock.now += 0.001
        return real_call(clock)

    monkeypatch.setattr(type(ticking), "__call__", tick)
    served = {flooder: 0 for flooder in flooders}
    answered_in = None
    for turn in itertools.count(1):
        assert turn <= 200, "the flooders never finished"
        busy = sum(1 for count in served.values() if count < lines)  # each is ready: backlog or socket
        share = max(reactor.loop.MIN_SHARE, reactor.loop.WORK_PER_TURN // busy)
        loop.turn()
        if answered_in is None and pinger.lines() == ["PONG"]:
            answered_in = turn
        this_turn = [flooder.read().count(b"PONG\n") for flooder in flooders]
        assert max(this_turn) <= share, f"a connection got more than its share: {max(this_turn)}"
        for flooder, count in zip(flooders, this_turn, strict=True):
            served[flooder] += count
        if turn == 1:
            reached = sum(1 for count in served.values() if count)
            assert reached <= 12, f"one turn served {reached} connections past its budget"
        if all(count == lines for count in served.values()):
            break
        if turn == 20:
            counts = sorted(served.values())
            assert counts[0] > 0, f"a flooder starved: {counts}"
            assert counts[-1] <= 2 * counts[0] + share, f"served unevenly: {counts}"
    assert answered_in is not None and answered_in <= 5, answered_in


def test_a_lone_busy_connection_gets_the_whole_turn(harness):
    """The shares are for when several are busy: alone, a flooder gets all 1,024 lines."""
    loop = harness(rate=0, idle_timeout=0, max_output=1 << 30)
    flooder = loop.connect()
    flooder.send(b"PING\n" * 3000)
    loop.turn()
    assert flooder.read().count(b"PONG\n") == reactor.loop.WORK_PER_TURN


def test_a_loop_behind_on_its_readers_accepts_fewer_until_it_catches_up(harness, monkeypatch):
    """200 clients log in at once, and each turn serves one: new ones wait in the listen queue.

    Each connection put off with its input unread is reported by ``select``
    again every turn, so a loop that went on accepting full batches would
    pay for the whole crowd every turn.  It accepts a batch less what it
    put off, never fewer than ``ACCEPTS_WHEN_BEHIND``, and every client is
    served in the end.
    """
    monkeypatch.setattr(reactor.loop, "READ_BUDGET", 0.0)  # a turn serves one connection
    monkeypatch.setattr(reactor.loop, "ACCEPTS_PER_TURN", 32)
    monkeypatch.setattr(reactor.loop, "ACCEPTS_WHEN_BEHIND", 4)
    listener = socket.create_server(("127.0.0.1", 0), backlog=512)  # room for all 200 in the queue
    loop = harness(listener=listener, rate=0, idle_timeout=0)
    clients = [socket.create_connection(listener.getsockname(), timeout=5) for _ in range(200)]
    try:
        for number, client in enumerate(clients):
            client.sendall(f"LOGIN user{number}\n".encode())
        accepted = []
        for _ in range(10):
            loop.turn()
            accepted.append(loop.reactor.stats().connections)
        assert accepted[1] == 64  # two full batches while nothing was put off yet
        assert accepted[-1] <= 64 + 8 * 4, f"accepted {accepted} while 30 and more waited"
        assert all(b - a >= 4 for a, b in itertools.pairwise(accepted[1:])), accepted
        answered: set[socket.socket] = set()
        for client in clients:
            client.setblocking(False)
        for _ in range(2000):  # everyone is served in the end (a turn serves one or more)
            loop.turn()
            for client in clients:
                if client not in answered:
                    try:
                        if client.recv(16) == b"OK\n":
                            answered.add(client)
                    except BlockingIOError:
                        pass
            if len(answered) == len(clients):
                break
        assert len(answered) == 200
    finally:
        for client in clients:
            client.close()
