"""Tests for reactor.timerwheel: examples, properties and a stateful model.

Time is always a float passed in by hand: no sleeps, no clock.  Where a test
claims a cost bound ("a long sleep does not loop over every tick"), it counts
the Python lines the wheel's module executes (``WorkBudget``) instead of
timing anything; a budget overrun raises inside the wheel, so a per-tick loop
over ten million ticks fails at once instead of hanging the suite.
"""

from __future__ import annotations

import ast
import math
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from reactor import timerwheel
from reactor.timerwheel import Timer, TimerWheel

WHEEL_FILE = TimerWheel.advance.__code__.co_filename

# Ticks and origins chosen to exercise rounding: 0.1, 0.3 and 0.01 are not
# binary fractions, and a large origin leaves fewer bits for the fraction.
TICKS = [0.1, 0.25, 1.0, 0.3, 0.01, 7.0]
ORIGINS = [0.0, 2.5, -3.0, 1000.3, 1e6 + 0.1]


def eps(*values: float) -> float:
    """Slack for float noise in time arithmetic (never used for 'never early')."""
    return 1e-9 * max([1.0, *(abs(v) for v in values)])


def boundary(origin: float, tick: float, deadline: float) -> float:
    """The first tick boundary at or after ``deadline``: the latest firing time."""
    return origin + math.ceil((deadline - origin) / tick) * tick


class WorkBudgetExceeded(Exception):
    pass


class WorkBudget:
    """Count the lines executed in the wheel's module; stop it past ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.lines = 0

    def __enter__(self) -> WorkBudget:
        self._previous = sys.gettrace()
        sys.settrace(self._on_call)
        return self

    def __exit__(self, *exc_info: object) -> None:
        sys.settrace(self._previous)

    def _on_call(self, frame, event, arg):
        return self._on_line if frame.f_code.co_filename == WHEEL_FILE else None

    def _on_line(self, frame, event, arg):
        if event == "line":
            self.lines += 1
            if self.lines > self.limit:
                raise WorkBudgetExceeded(f"more than {self.limit} lines")
        return self._on_line


def drive(wheel: TimerWheel, max_turns: int) -> list[tuple[float, Timer]]:
    """Run the wheel like the reactor: sleep exactly until next_wakeup()."""
    fired = []
    for _ in range(max_turns):
        now = wheel.next_wakeup()
        if now is None:
            return fired
        fired += [(now, timer) for timer in wheel.advance(now)]
    raise AssertionError(f"{len(wheel)} timers still pending after {max_turns} wakeups")


# -- examples -------------------------------------------------------------------


def test_worked_example_from_the_module_docstring():
    wheel = TimerWheel(0.0, tick=0.1, slots=512)
    a, b = Timer("a"), Timer("b")
    wheel.schedule(a, 0.25)
    wheel.schedule(b, 60.0)
    assert wheel.advance(0.29) == []
    assert wheel.advance(0.31) == [a]
    assert wheel.next_wakeup() == pytest.approx(8.8)
    assert wheel.advance(8.85) == []
    assert wheel.next_wakeup() == pytest.approx(60.0)
    assert wheel.advance(1e6) == [b]
    assert len(wheel) == 0


def test_fires_at_the_first_boundary_after_the_deadline_and_not_before():
    wheel = TimerWheel(0.0, tick=0.25)
    timer = Timer("conn")
    wheel.schedule(timer, 0.3)  # due boundary: 0.5
    for now in (0.1, 0.25, 0.2999, 0.3, 0.49):
        assert wheel.advance(now) == [], now
        assert timer.pending and timer.deadline == 0.3
    assert wheel.advance(0.5) == [timer]
    assert not timer.pending and timer.deadline is None


def test_a_deadline_on_a_boundary_fires_exactly_there():
    wheel = TimerWheel(10.0, tick=0.5)
    timer = Timer(None)
    wheel.schedule(timer, 11.0)
    assert wheel.advance(10.999) == []
    assert wheel.advance(11.0) == [timer]


def test_rounding_never_fires_a_timer_before_its_deadline():
    # 0.9 / 0.1 and 0.9000000000000001 / 0.1 both round to exactly 9.0, so
    # tick 9 is "reached" at now=0.9 while the deadline is one ulp later.
    wheel = TimerWheel(0.0, tick=0.1)
    timer = Timer(None)
    deadline = math.nextafter(0.9, math.inf)
    wheel.schedule(timer, deadline)
    assert wheel.advance(0.9) == []
    assert wheel.advance(0.9) == []  # its tick is behind us, its deadline not
    assert timer.pending
    assert wheel.next_wakeup() <= deadline
    assert wheel.advance(deadline) == [timer]


def test_a_straggler_scheduled_after_its_tick_still_waits_for_its_deadline():
    wheel = TimerWheel(0.0, tick=0.1)
    wheel.advance(0.9)  # tick 9 reached
    timer = Timer(None)
    deadline = math.nextafter(0.9, math.inf)  # due tick 9, yet in the future
    wheel.schedule(timer, deadline)
    assert wheel.advance(0.9) == []
    assert wheel.advance(deadline) == [timer]


def test_a_deadline_already_passed_fires_at_the_next_advance():
    wheel = TimerWheel(0.0, tick=0.1)
    wheel.advance(0.28)
    late, past, now = Timer("late"), Timer("past"), Timer("now")
    wheel.schedule(late, 0.25)  # due tick 3 is still ahead, but 0.25 <= 0.28
    wheel.schedule(past, -5.0)
    wheel.schedule(now, 0.28)
    assert wheel.next_wakeup() <= 0.28
    assert set(wheel.advance(0.28)) == {late, past, now}
    assert len(wheel) == 0


def test_cancel():
    wheel = TimerWheel(0.0, tick=0.1)
    keep, drop = Timer("keep"), Timer("drop")
    wheel.schedule(keep, 1.0)
    wheel.schedule(drop, 1.0)
    wheel.cancel(drop)
    assert not drop.pending and drop.deadline is None
    assert len(wheel) == 1
    wheel.cancel(drop)  # not pending: a no-op
    wheel.cancel(Timer("never scheduled"))
    assert wheel.advance(100.0) == [keep]
    assert len(wheel) == 0


def test_cancel_an_overdue_timer():
    wheel = TimerWheel(0.0, tick=0.1)
    wheel.advance(5.0)
    timer = Timer(None)
    wheel.schedule(timer, 1.0)
    wheel.cancel(timer)
    assert len(wheel) == 0 and wheel.next_wakeup() is None
    assert wheel.advance(5.0) == []


def test_scheduling_again_replaces_the_old_entry():
    wheel = TimerWheel(0.0, tick=0.1)
    timer = Timer(None)
    wheel.schedule(timer, 1.0)
    wheel.schedule(timer, 5.0)  # an idle timer pushed back by a new line
    assert len(wheel) == 1 and timer.deadline == 5.0
    assert wheel.advance(4.9) == []
    assert wheel.advance(5.0) == [timer]
    wheel.schedule(timer, 9.0)
    wheel.schedule(timer, 6.0)  # pulled forward
    assert wheel.advance(6.0) == [timer]
    assert wheel.advance(20.0) == []


def test_rearm_from_inside_the_result_of_advance():
    """The idle-timeout loop: each fired timer is armed again at once."""
    wheel = TimerWheel(0.0, tick=0.25)
    timers = [Timer(i) for i in range(3)]
    for timer in timers:
        wheel.schedule(timer, 1.0)
    firings = 0
    for step in range(1, 41):
        now = step * 0.25
        for timer in wheel.advance(now):
            assert not timer.pending
            wheel.schedule(timer, now + 1.0)
            firings += 1
    assert firings == 3 * 10  # at 1, 2, ..., 10
    assert len(wheel) == 3
    assert all(timer.deadline == 11.0 for timer in timers)


def test_many_timers_in_one_slot_fire_together_in_scheduling_order():
    wheel = TimerWheel(0.0, tick=0.1)
    timers = [Timer(i) for i in range(1000)]
    for timer in timers:
        wheel.schedule(timer, 2.0)
    wheel.schedule(timers[0], 2.0)  # re-armed: now scheduled last
    assert wheel.advance(1.9) == []
    assert wheel.advance(2.0) == timers[1:] + timers[:1]


def test_one_slot_holds_timers_for_several_rounds():
    wheel = TimerWheel(0.0, tick=1.0, slots=8)
    rounds = [Timer(r) for r in range(3)]
    for r, timer in enumerate(rounds):
        wheel.schedule(timer, 3.0 + 8 * r)  # slot 3 every time
    fired = {}
    for now in range(1, 30):
        for timer in wheel.advance(float(now)):
            fired[timer.payload] = now
    assert fired == {0: 3, 1: 11, 2: 19}


@pytest.mark.parametrize("slots", [1, 2, 4, 512])
def test_deadlines_several_turns_away(slots):
    wheel = TimerWheel(0.0, tick=1.0, slots=slots)
    timer = Timer(None)
    deadline = 3 * slots + 2.5  # three turns and a half tick
    wheel.schedule(timer, deadline)
    now = 0.0
    while now < deadline:
        assert wheel.advance(now) == [], now
        now += 0.5
    assert wheel.advance(deadline) == []  # the boundary is 3*slots + 3
    assert wheel.advance(math.ceil(deadline)) == [timer]


def test_firing_order_is_due_tick_then_scheduling_order_even_after_a_long_jump():
    wheel = TimerWheel(0.0, tick=1.0, slots=4)
    late, early, tie_a, tie_b = (Timer(n) for n in ("late", "early", "a", "b"))
    wheel.schedule(late, 6.0)  # slot 2, second round
    wheel.schedule(early, 3.0)  # slot 3, first round
    wheel.schedule(tie_b, 5.0)  # slot 1, second round
    wheel.schedule(tie_a, 5.0)
    wheel.schedule(tie_b, 5.0)  # re-armed after tie_a
    assert wheel.advance(1000.0) == [early, tie_a, tie_b, late]


def test_ties_between_a_slotted_and_a_past_deadline_follow_scheduling_order():
    wheel = TimerWheel(0.0, tick=0.25)
    first, second = Timer("first"), Timer("second")
    wheel.schedule(first, 0.6)  # due tick 3 (0.75), in its slot
    wheel.advance(0.7)
    wheel.schedule(second, 0.65)  # due tick 3 too, but already past
    assert wheel.advance(0.75) == [first, second]


def test_a_long_jump_fires_everything_due_with_bounded_work():
    wheel = TimerWheel(0.0, tick=0.1, slots=512)
    due = [Timer(i) for i in range(200)]
    for i, timer in enumerate(due):
        wheel.schedule(timer, 0.05 + i * 37.3)  # spread over many rounds
    later = Timer("later")
    wheel.schedule(later, 2e6)
    with WorkBudget(limit=8 * 512 + 30 * 201) as budget:
        fired = wheel.advance(1e6)  # ten million ticks
    assert fired == due
    assert len(wheel) == 1 and later.pending
    assert budget.lines > 512  # the budget did watch the wheel at work
    assert wheel.advance(2e6) == [later]


def test_advance_work_is_proportional_to_the_slots_crossed():
    """10,000 idle connections elsewhere on the wheel cost a tick nothing."""
    wheel = TimerWheel(0.0, tick=0.1, slots=512)
    for i in range(10_000):
        wheel.schedule(Timer(i), 10.0 + (i % 400) * 0.1)  # slots 100..499
    with WorkBudget(limit=400):  # one loop over the timers: 10,000+
        for step in range(1, 6):
            assert wheel.advance(step * 0.1) == []
    assert len(wheel) == 10_000


def test_schedule_and_cancel_do_not_walk_the_pending_timers():
    wheel = TimerWheel(0.0, tick=0.1)
    timers = [Timer(i) for i in range(10_000)]
    for timer in timers:
        wheel.schedule(timer, 30.0)  # all in the same slot
    with WorkBudget(limit=100 * 80):  # a walk: 10,000 a call
        for timer in timers[:100]:
            wheel.schedule(timer, 31.0)
            wheel.cancel(timer)
    assert len(wheel) == 9_900


# -- next_wakeup ----------------------------------------------------------------


def test_next_wakeup_is_none_when_nothing_is_pending():
    wheel = TimerWheel(0.0)
    assert wheel.next_wakeup() is None
    timer = Timer(None)
    wheel.schedule(timer, 1.0)
    wheel.cancel(timer)
    assert wheel.next_wakeup() is None
    wheel.schedule(timer, 1.0)
    wheel.advance(1.0)
    assert wheel.next_wakeup() is None


def test_next_wakeup_is_the_due_boundary_of_a_lone_timer():
    wheel = TimerWheel(0.0, tick=0.25)
    timer = Timer(None)
    wheel.schedule(timer, 1.1)
    assert wheel.next_wakeup() == 1.25


def test_next_wakeup_drops_when_an_earlier_timer_is_scheduled():
    wheel = TimerWheel(0.0, tick=0.25)
    wheel.schedule(Timer("late"), 10.0)
    assert wheel.next_wakeup() == 10.0  # now cached
    wheel.schedule(Timer("early"), 2.1)
    assert wheel.next_wakeup() == 2.25


def test_next_wakeup_moves_on_once_time_passes_it():
    wheel = TimerWheel(0.0, tick=0.25)
    first, second = Timer(1), Timer(2)
    wheel.schedule(first, 1.0)
    wheel.schedule(second, 3.0)
    assert wheel.next_wakeup() == 1.0
    assert wheel.advance(1.0) == [first]
    assert wheel.next_wakeup() == 3.0


def test_next_wakeup_after_cancel_may_be_early_but_never_late():
    wheel = TimerWheel(0.0, tick=0.25)
    first, second = Timer(1), Timer(2)
    wheel.schedule(first, 1.0)
    wheel.schedule(second, 3.0)
    assert wheel.next_wakeup() == 1.0
    wheel.cancel(first)
    assert wheel.next_wakeup() <= 3.0
    assert wheel.advance(wheel.next_wakeup()) == []  # the spurious wakeup
    assert wheel.next_wakeup() == 3.0  # ... happens once


def test_next_wakeup_is_cached():
    wheel = TimerWheel(0.0, tick=0.1, slots=512)
    for i in range(1000):
        wheel.schedule(Timer(i), 50.0)  # 500 empty slots ahead
    with WorkBudget(limit=1000 * 25):  # a scan: 500 a call
        for _ in range(1000):
            assert wheel.next_wakeup() == pytest.approx(50.0)


@pytest.mark.parametrize("origin", [0.0, 1.5, 1000.3])
@pytest.mark.parametrize("tick", [0.1, 0.3, 0.01])
def test_sleeping_until_next_wakeup_always_makes_progress(origin, tick):
    # origin + k * tick can round to a time that advance() places in tick
    # k - 1 (for instance 43 * 0.1): a loop that slept exactly until then
    # would wake up to no work forever.
    wheel = TimerWheel(origin, tick=tick, slots=64)
    timers = [Timer(k) for k in range(1, 301)]
    for timer in timers:
        wheel.schedule(timer, origin + timer.payload * tick)
    fired = drive(wheel, max_turns=2 * 300 + 10)
    assert sorted(t.payload for _, t in fired) == list(range(1, 301))
    assert all(t.deadline is None for t in timers)


def test_sleeping_until_next_wakeup_waits_for_a_straggler():
    wheel = TimerWheel(0.0, tick=0.1)
    on_time, straggler = Timer("on time"), Timer("straggler")
    wheel.schedule(on_time, 0.9)
    wheel.schedule(straggler, math.nextafter(0.9, math.inf))
    fired = drive(wheel, max_turns=5)
    assert [t for _, t in fired] == [on_time, straggler]
    assert fired[1][0] >= math.nextafter(0.9, math.inf)


def test_next_wakeup_forgets_overdue_timers_once_they_fire():
    # A straggler left alone after an overdue timer fired: a wakeup still
    # pointing at the fired one's deadline (in the past) would spin forever.
    wheel = TimerWheel(0.0, tick=0.1)
    straggler, past = Timer("straggler"), Timer("past")
    wheel.schedule(straggler, math.nextafter(0.9, math.inf))
    assert wheel.advance(0.9) == []
    wheel.schedule(past, 0.5)
    fired = drive(wheel, max_turns=5)
    assert [t for _, t in fired] == [past, straggler]


# -- time going backwards, errors, purity ---------------------------------------


def test_time_going_backwards_is_no_time_passing():
    wheel = TimerWheel(0.0, tick=0.25)
    soon, later = Timer("soon"), Timer("later")
    wheel.schedule(later, 10.5)
    assert wheel.advance(10.0) == []
    assert wheel.advance(5.0) == []  # backwards: harmless
    assert wheel.advance(-1e9) == []
    wheel.schedule(soon, 7.0)  # before the time already reached (10.0)
    assert wheel.advance(5.0) == [soon]
    assert wheel.advance(10.4) == []
    assert wheel.advance(10.5) == [later]


def test_a_wheel_with_one_slot_still_works():
    wheel = TimerWheel(0.0, tick=0.5, slots=1)
    timers = [Timer(i) for i in range(4)]
    for i, timer in enumerate(timers):
        wheel.schedule(timer, 0.4 + i)
    assert [wheel.advance(t) for t in (0.5, 1.0, 1.5, 2.5, 3.5)] == [
        [timers[0]], [], [timers[1]], [timers[2]], [timers[3]],
    ]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"tick": 0.0},
        {"tick": -0.1},
        {"tick": math.nan},
        {"tick": math.inf},
        {"slots": 0},
        {"slots": -5},
    ],
)
def test_bad_wheel_parameters(kwargs):
    with pytest.raises(ValueError):
        TimerWheel(0.0, **kwargs)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_times_are_rejected(bad):
    with pytest.raises(ValueError):
        TimerWheel(bad)
    wheel = TimerWheel(0.0)
    timer = Timer(None)
    with pytest.raises(ValueError):
        wheel.schedule(timer, bad)
    assert not timer.pending and len(wheel) == 0
    with pytest.raises(ValueError):
        wheel.advance(bad)


def test_a_timer_belongs_to_one_wheel_at_a_time():
    first, second = TimerWheel(0.0), TimerWheel(0.0)
    timer = Timer(None)
    first.schedule(timer, 1.0)
    with pytest.raises(ValueError):
        second.schedule(timer, 2.0)
    assert timer.deadline == 1.0 and len(first) == 1 and len(second) == 0
    second.cancel(timer)  # not pending on `second`: a no-op
    assert timer.pending and len(first) == 1
    first.cancel(timer)
    second.schedule(timer, 2.0)  # released, so it may move
    assert second.advance(2.0) == [timer]


def test_a_timer_cancels_itself_on_the_wheel_that_holds_it():
    wheel = TimerWheel(0.0, tick=0.25)
    timer = Timer("t")
    timer.cancel()  # not pending: a no-op
    wheel.schedule(timer, 1.0)
    timer.cancel()
    assert not timer.pending and len(wheel) == 0
    assert wheel.advance(2.0) == []


def test_timers_are_slotted_and_keep_their_payload():
    payload = object()
    timer = Timer(payload)
    assert timer.payload is payload
    assert not timer.pending and timer.deadline is None
    with pytest.raises(AttributeError):
        timer.extra = 1


def test_the_wheel_imports_only_pure_standard_modules():
    with open(timerwheel.__file__, encoding="utf-8") as source:
        tree = ast.parse(source.read())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported <= {"__future__", "itertools", "math", "operator"}, imported


# -- properties -----------------------------------------------------------------


@given(
    origin=st.sampled_from(ORIGINS),
    tick=st.sampled_from(TICKS),
    slots=st.sampled_from([1, 3, 512]),
    ticks_away=st.one_of(st.integers(0, 3000), st.floats(0, 3000)),
    step_fraction=st.one_of(st.just(1.0), st.floats(0.05, 1.0)),
)
def test_never_early_and_at_most_one_tick_late(origin, tick, slots, ticks_away, step_fraction):
    wheel = TimerWheel(origin, tick=tick, slots=slots)
    timer = Timer(None)
    deadline = origin + ticks_away * tick
    wheel.schedule(timer, deadline)
    previous = max(origin, deadline - 2 * tick)
    fired = wheel.advance(previous)  # possibly a jump over many turns
    if not fired:
        step = step_fraction * tick
        for _ in range(int(3 / step_fraction) + 3):
            now = previous + step
            fired = wheel.advance(now)
            if fired:
                break
            previous = now
        else:
            pytest.fail(f"not fired by {now}, deadline {deadline}")
    else:
        now = previous
    assert fired == [timer]
    assert deadline <= now  # never early: exact, no slack
    assert previous < boundary(origin, tick, deadline) + eps(deadline)


# -- a stateful model: the wheel against a plain dict ---------------------------

POOL = 6

# A time is described relative to the model's state and resolved in a rule:
#   ("ticks", x)     now + x ticks, fractions included;
#   ("boundary", n)  exactly the n-th tick boundary after the current one;
#   ("turns", (r, x)) r whole turns of the wheel and x ticks from now;
#   ("seconds", s)   now + s seconds (the long sleep).
TICKS_AWAY = st.one_of(
    st.tuples(st.just("ticks"), st.floats(-3, 12)),
    st.tuples(st.just("ticks"), st.sampled_from([0.0, 0.5, 0.999, 1.0, 1.001])),
    st.tuples(st.just("boundary"), st.integers(-3, 12)),
    st.tuples(st.just("turns"), st.tuples(st.integers(1, 4), st.floats(0, 2))),
)
STEPS = st.one_of(
    TICKS_AWAY,
    st.tuples(st.just("seconds"), st.sampled_from([1e3, 1e6])),
)


class WheelAgainstDict(RuleBasedStateMachine):
    """The wheel must fire exactly what a {timer: deadline} dict says is due.

    A pending timer is due at advance(now) when it was scheduled at or before
    the time already reached, or when its deadline is <= now and its due tick
    ceil((deadline - origin) / tick) has been reached.  The model computes
    both with the same formulas as the specification, so the comparison is
    exact: no slack except in the time-based "at most one tick late" checks.
    """

    def __init__(self) -> None:
        super().__init__()
        self.wheel: TimerWheel | None = None
        self.pool = [Timer(i) for i in range(POOL)]
        self.model: dict[Timer, float] = {}
        self.order: dict[Timer, tuple[int, int]] = {}  # (due tick, scheduling seq)
        self.armed_in_past: set[Timer] = set()
        self.seq = 0

    @initialize(
        origin=st.sampled_from(ORIGINS),
        tick=st.sampled_from(TICKS),
        slots=st.sampled_from([1, 2, 3, 8, 64, 512]),
    )
    def make_wheel(self, origin, tick, slots):
        self.wheel = TimerWheel(origin, tick=tick, slots=slots)
        self.origin, self.tick, self.slots = origin, tick, slots
        self.now = origin

    def due_tick(self, deadline: float) -> int:
        return math.ceil((deadline - self.origin) / self.tick)

    def reached_tick(self) -> int:
        return math.floor((self.now - self.origin) / self.tick)

    def resolve(self, when) -> float:
        kind, amount = when
        if kind == "ticks":
            return self.now + amount * self.tick
        if kind == "boundary":
            return self.origin + (self.reached_tick() + amount) * self.tick
        if kind == "turns":
            turns, extra = amount
            return self.now + (turns * self.slots + extra) * self.tick
        return self.now + amount

    def arm(self, timer: Timer, deadline: float) -> None:
        self.wheel.schedule(timer, deadline)
        self.model[timer] = deadline
        self.order[timer] = (self.due_tick(deadline), self.seq)
        self.seq += 1
        if deadline <= self.now:
            self.armed_in_past.add(timer)
        else:
            self.armed_in_past.discard(timer)

    def forget(self, timer: Timer) -> None:
        del self.model[timer]
        del self.order[timer]
        self.armed_in_past.discard(timer)

    def is_due(self, timer: Timer, now: float, reached: int) -> bool:
        if timer in self.armed_in_past:
            return True
        return self.model[timer] <= now and self.order[timer][0] <= reached

    def advance(self, now: float) -> list[Timer]:
        self.now = max(now, self.now)
        reached = self.reached_tick()
        expected = [t for t in self.model if self.is_due(t, self.now, reached)]
        expected.sort(key=self.order.__getitem__)
        fired = self.wheel.advance(now)
        for timer in fired:
            assert timer in self.model, "fired a timer that was not pending"
            assert self.model[timer] <= self.now, "fired before its deadline"
            assert not timer.pending and timer.deadline is None
        assert fired == expected
        for timer in fired:
            self.forget(timer)
        slack = self.tick + eps(self.now, self.origin)
        for deadline in self.model.values():
            assert deadline > self.now - slack, "left pending more than a tick late"
        return fired

    @rule(i=st.integers(0, POOL - 1), when=TICKS_AWAY)
    def schedule(self, i, when):
        self.arm(self.pool[i], self.resolve(when))

    @rule(i=st.integers(0, POOL - 1))
    def cancel(self, i):
        self.wheel.cancel(self.pool[i])
        if self.pool[i] in self.model:
            self.forget(self.pool[i])

    @rule(step=STEPS, rearm=st.none() | TICKS_AWAY)
    def advance_and_maybe_rearm(self, step, rearm):
        fired = self.advance(self.resolve(step))
        if rearm is not None:
            for timer in fired:
                self.arm(timer, self.resolve(rearm))

    @rule(back=st.floats(0, 1e6))
    def advance_backwards(self, back):
        self.advance(self.now - back)

    @precondition(lambda self: self.model)
    @rule()
    def sleep_until_next_wakeup(self):
        self.advance(self.wheel.next_wakeup())

    @invariant()
    def pending_timers_match_the_model(self):
        if self.wheel is None:
            return
        assert len(self.wheel) == len(self.model)
        for timer in self.pool:
            assert timer.pending == (timer in self.model)
            assert timer.deadline == self.model.get(timer)

    @invariant()
    def next_wakeup_is_never_late(self):
        if self.wheel is None:
            return
        wakeup = self.wheel.next_wakeup()
        if not self.model:
            assert wakeup is None
            return
        reached = self.reached_tick()
        latest = min(
            deadline
            if timer in self.armed_in_past or self.order[timer][0] <= reached
            else self.origin + self.order[timer][0] * self.tick
            for timer, deadline in self.model.items()
        )
        assert wakeup is not None
        assert wakeup <= latest + eps(latest, self.origin)


TestWheelAgainstDict = WheelAgainstDict.TestCase
