"""The loop's time-driven behaviour, on a clock the test moves by hand.

Every test here runs ``Reactor.run_once`` itself over socket pairs
(``tests/loopharness.py``): no sleeps, and time is exact, so each deadline
is checked at the instant it falls due and an instant before.  The wheel's
tick is 0.1 s: a timer fires no earlier than its deadline and at most one
tick after it.
"""

from __future__ import annotations

import errno
import math
import socket

from loopharness import LoopHarness

import reactor.loop
from reactor.acceptor import ACCEPT_RETRY
from reactor.closing import FLUSH_TIMEOUT
from reactor.connection import CLOSED, FLUSHING, LINGERING
from reactor.loop import TICK

IAC, DO, NOP = 255, 253, 241


# -- idle timeout --------------------------------------------------------------


def test_idle_timeout_fires_at_its_deadline_and_not_an_instant_before(harness):
    loop = harness(idle_timeout=60)
    ann = loop.login("ann")  # at the wheel's origin: the deadline is a tick boundary
    watcher = loop.connect()
    loop.advance_to(59.999)
    assert ann.lines() == [] and not ann.ended
    loop.advance_to(60.0)
    assert ann.lines() == ["ERR idle-timeout"]
    loop.advance(FLUSH_TIMEOUT)  # it lingers until our end of stream or the deadline
    assert ann.ended
    assert watcher.lines() == ["ERR idle-timeout"]  # anonymous, connected at the same time


def test_a_storm_of_idle_deadlines_gathers_and_leaves_as_one_departure(harness):
    """40 clients reach their deadline at 60 s, 10 more at 60.2 s: one turn finds a storm
    (IDLE_STORM or more), gathers for IDLE_STORM_WINDOW, and all 50 leave together, none
    told about the others; one that spoke meanwhile stays."""
    loop = harness(idle_timeout=60, rate=0)
    first = [loop.login(f"a{i}") for i in range(40)]
    loop.advance(0.2)
    second = [loop.login(f"b{i}") for i in range(10)]
    loop.advance_to(59.0)
    stayer = loop.login("stayer")
    talker = first.pop()
    loop.advance_to(60.0)
    assert all(peer.lines() == [] for peer in first), "the storm left before it gathered"
    talker.say("PING")  # inside the window: it is not idle any more
    loop.advance_to(60.2)
    assert talker.lines() == ["PONG"]
    loop.advance_to(60.0 + reactor.loop.IDLE_STORM_WINDOW + TICK)  # the window, plus a tick at most
    for peer in first + second:
        assert peer.lines() == ["ERR idle-timeout"]  # and no INFO about the others
    infos = stayer.lines()
    assert len(infos) == 49 and all(line.startswith("INFO ") for line in infos)
    assert "INFO a39 disconnected" not in infos  # the talker
    assert talker.lines() == infos  # it saw them all leave
    loop.advance_to(100)
    stayer.say("PING")  # keeps itself out of the talker's timeout
    loop.turn()
    assert stayer.lines() == ["PONG"]
    loop.advance_to(60.2 + 60.0 + 2 * TICK)  # its line of 60.2, plus the timeout, plus a tick (and some)
    assert talker.lines() == ["ERR idle-timeout"]  # watched again after the storm


def test_a_large_departure_tells_the_others_at_once_and_closes_the_leavers_a_batch_a_turn(harness, monkeypatch):
    """The machine hears of all 40 in one event and the stayer of all 40 at once; the leavers' own
    last line and close go ``LEAVERS_PER_TURN`` a turn, and what a leaver sends meanwhile is ignored."""
    monkeypatch.setattr(reactor.loop, "LEAVERS_PER_TURN", 16)
    loop = harness(idle_timeout=60, rate=0)
    leavers = [loop.login(f"a{i:02}") for i in range(40)]
    loop.advance_to(30.0)
    stayer = loop.login("stayer")
    loop.advance_to(60.0)  # a storm: it gathers
    loop.advance_to(60.0 + reactor.loop.IDLE_STORM_WINDOW + TICK)  # the window, plus a tick at most
    told_per_turn = [sum(1 for peer in leavers if peer.lines() == ["ERR idle-timeout"])]
    assert stayer.lines() == [f"INFO a{i:02} disconnected" for i in range(40)]  # all of them at once
    leavers[-1].say("WHO")  # one still waiting for its turn to leave: ignored, it is closing
    for _ in range(4):
        loop.turn()
        told_per_turn.append(sum(1 for peer in leavers if peer.lines() == ["ERR idle-timeout"]))
    assert told_per_turn == [16, 16, 8, 0, 0]
    assert loop.reactor.stats().users == 1
    assert all(peer.lines() == [] for peer in leavers)  # the WHO got nothing
    loop.advance(FLUSH_TIMEOUT + TICK)
    assert all(peer.ended for peer in leavers)


def test_a_few_idle_deadlines_close_at_once(harness):
    loop = harness(idle_timeout=60)
    ann = loop.login("ann")
    loop.advance(0.05)
    bob = loop.login("bob")
    loop.advance_to(60.05)
    assert ann.lines() == ["ERR idle-timeout"]  # no gathering for two
    assert bob.lines() == ["INFO ann disconnected"]
    loop.advance_to(60.05 + TICK)
    assert bob.lines() == ["ERR idle-timeout"]


def test_a_complete_line_postpones_the_idle_timeout_and_bytes_without_lf_do_not(harness):
    loop = harness(idle_timeout=10)
    ann = loop.login("ann")
    loop.advance_to(6)
    ann.say("PING")  # activity at 6: the deadline moves to 16
    loop.turn()
    assert ann.lines() == ["PONG"]
    for second in range(7, 16):  # a slowloris: a byte a second, never an LF
        ann.send(b"x")
        loop.advance_to(second)
    assert ann.lines() == []
    loop.advance_to(15.999)
    assert ann.lines() == []
    loop.advance_to(16.0)
    assert ann.lines() == ["ERR idle-timeout"]


def test_idle_timeouts_of_one_turn_are_one_departure(harness):
    loop = harness(idle_timeout=60)
    leavers = [loop.login(name) for name in ("ann", "bob", "cy")]
    loop.advance(10)
    stayer = loop.login("dee")
    loop.advance_to(60)
    for leaver in leavers:
        assert leaver.lines() == ["ERR idle-timeout"]  # nothing about the other leavers
    assert stayer.lines() == ["INFO ann disconnected", "INFO bob disconnected", "INFO cy disconnected"]
    assert loop.reactor.stats().users == 1


def test_timer_work_per_turn_is_bounded_and_the_rest_follows_at_once(harness, monkeypatch):
    monkeypatch.setattr(reactor.loop, "TIMERS_PER_TURN", 10)
    loop = harness(idle_timeout=0)
    calls: list[int] = []
    for _ in range(25):
        loop.reactor.call_every(5.0, lambda: calls.append(loop.clock.now))
    loop.clock.advance(5.0)
    done = []
    for _ in range(3):  # the clock does not move: the loop must not wait for it
        loop.turn()
        done.append(len(calls))
    assert done == [10, 20, 25]


def test_idle_deadlines_are_not_cut_into_batches(harness, monkeypatch):
    """Before, the timer cap split 5,000 simultaneous timeouts into five departures, and each
    later batch got an INFO per earlier leaver: ten million lines."""
    monkeypatch.setattr(reactor.loop, "TIMERS_PER_TURN", 10)
    loop = harness(idle_timeout=60)
    idlers = [loop.login(f"idler{i}") for i in range(25)]
    loop.advance_to(60)
    assert all(idler.lines() == ["ERR idle-timeout"] for idler in idlers)  # one turn, no INFO


# -- flood control ---------------------------------------------------------------


def run_until(loop: LoopHarness, peer, count: int, step: float, limit: float) -> tuple[list[str], float]:
    """Move the clock by ``step`` a turn until ``peer`` has ``count`` lines; the time of the last."""
    got: list[str] = []
    for _ in range(math.ceil(limit / step)):
        got += peer.lines()
        if len(got) >= count:
            return got, loop.elapsed
        loop.advance(step)
    raise AssertionError(f"only {len(got)} of {count} lines within {limit} s")


def test_a_paced_client_gets_its_rate_whatever_the_tick(harness):
    """Rate 7, burst 1: a token every 1/7 s, falling between the wheel's ticks.

    Woken up to a tick late for each token, a bucket that forgot the wait
    would run at one line per 0.2 s (5.8 s for 30 lines) instead of 1/7 s.
    """
    loop = harness(rate=7, burst=1, idle_timeout=0)
    ann = loop.connect()
    ann.say(*["PING"] * 30)
    loop.turn()
    pongs, last = run_until(loop, ann, 30, step=0.01, limit=10)
    assert pongs == ["PONG"] * 30
    ideal = 29 / 7  # the first at once, then one per token
    assert ideal - 0.01 <= last <= ideal + TICK + 0.01, last


def test_every_telnet_command_costs_a_token(harness):
    loop = harness(rate=10, burst=10, idle_timeout=0)
    ann = loop.connect()
    ann.send(bytes([IAC, NOP]) * 40 + bytes([IAC, DO, 1]) * 10 + b"PING\n")  # 51 tokens
    loop.turn()
    received = b""
    for _ in range(600):  # 6 s in steps of 10 ms
        received += ann.read()
        if received.endswith(b"PONG\n"):
            break
        loop.advance(0.01)
    assert received == bytes([IAC, 252, 1]) * 10 + b"PONG\n"
    # 10 at once, then 41 at 10 a second.
    assert 4.1 - 0.01 <= loop.elapsed <= 4.1 + TICK + 0.02, loop.elapsed


# -- closing deadlines -------------------------------------------------------------


def fill_up(loop: LoopHarness, reader, sender, rounds: int = 60) -> None:
    """Lines from ``sender`` to ``reader`` (which never reads) until the kernel holds no more."""
    line = "MSG " + "x" * 4000
    for _ in range(rounds):
        try:
            sender.say(*[line] * 10)
        except BlockingIOError:
            pass
        loop.turn()
    assert loop.server_side[reader].queue, "the socket pair took everything: nothing to flush"


def test_a_closing_connection_gets_until_its_flush_deadline(harness):
    loop = harness(rate=0, idle_timeout=0, max_output=1 << 30)
    slow, talker = loop.login("slow"), loop.login("talker")
    fill_up(loop, slow, talker)
    slow.say("QUIT")
    loop.turn()
    conn = loop.server_side[slow]
    assert conn.phase is FLUSHING
    assert talker.lines()[-1] == "INFO slow disconnected"
    loop.advance(FLUSH_TIMEOUT - 0.001)
    assert conn.phase is FLUSHING
    loop.advance(0.001)
    assert conn.phase is CLOSED


def test_a_flushed_connection_lingers_until_the_peer_ends_its_stream(harness):
    loop = harness(idle_timeout=0)
    ann = loop.login("ann")
    ann.say("QUIT")
    loop.turn()
    conn = loop.server_side[ann]
    assert ann.lines() == ["Goodbye!"] and ann.ended  # our side is shut: end of stream
    assert conn.phase is LINGERING
    ann.send(b"late input is read and dropped\n")
    loop.turn()
    assert conn.phase is LINGERING
    ann.sock.shutdown(socket.SHUT_WR)
    loop.turn()
    assert conn.phase is CLOSED


def test_shutdown_tells_everyone_and_ends_by_its_deadline(harness):
    loop = harness(rate=0, idle_timeout=0, max_output=1 << 30)
    slow, talker = loop.login("slow"), loop.login("talker")
    fill_up(loop, slow, talker)
    loop.reactor.request_shutdown()
    loop.turn()
    assert talker.lines() == ["ERR server-shutting-down"]
    assert not loop.reactor.finished  # slow has not taken its last line
    loop.advance(FLUSH_TIMEOUT - 0.001)
    assert not loop.reactor.finished
    loop.advance(0.001)
    assert loop.reactor.finished
    assert loop.server_side[slow].phase is CLOSED


def test_a_second_shutdown_request_stops_waiting(harness):
    loop = harness(rate=0, idle_timeout=0, max_output=1 << 30)
    slow, talker = loop.login("slow"), loop.login("talker")
    fill_up(loop, slow, talker)
    loop.reactor.request_shutdown()
    loop.turn()
    assert not loop.reactor.finished
    loop.reactor.request_shutdown()
    loop.turn()
    assert loop.reactor.finished


# -- accepting -------------------------------------------------------------------


class RunsOutOfDescriptors(socket.socket):
    """A listening socket whose next ``failures`` accepts fail with EMFILE."""

    failures = 0
    accepts = 0

    def accept(self):
        self.accepts += 1
        if self.failures:
            self.failures -= 1
            raise OSError(errno.EMFILE, "Too many open files")
        return super().accept()


def test_out_of_descriptors_pauses_accepting_then_resumes(harness):
    listener = RunsOutOfDescriptors(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    loop = harness(listener=listener)
    listener.failures = 1
    client = socket.create_connection(listener.getsockname())
    try:
        loop.turn()
        assert listener.accepts == 1
        for _ in range(20):  # the listener stays readable; nobody may ask it again
            loop.advance((ACCEPT_RETRY - 0.001) / 20)
        assert listener.accepts == 1
        assert loop.reactor.stats().connections == 0
        loop.advance_to(ACCEPT_RETRY + TICK)  # the pause ends (at most a tick late): watched again
        loop.turn()
        assert listener.accepts >= 2
        assert loop.reactor.stats().connections == 1
    finally:
        client.close()
