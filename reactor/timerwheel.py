"""A hashed timing wheel: every deadline of the event loop, at O(1) a timer.

Theory of operation
===================

What it owns.  The wheel owns every pending deadline of the reactor: idle
timeouts, close-after-flush deadlines, flood-control resumptions.  It owns no
clock.  The caller reads its own clock and passes the time in (``advance(now)``,
``schedule(timer, deadline)``), so tests move time by hand and the wheel never
sleeps, never blocks and never asks the operating system anything.  It may
import ``math``, ``itertools`` and ``operator``, nothing else: no ``time``, no
``socket``, no ``selectors``, no threads.

Why a wheel.  A loop holding 10,000 connections re-arms an idle timer on every
line it reads, and almost none of those timers ever fires (the Linux
``kernel/time/timer.c`` observation: most timeouts are cancelled or re-armed
before expiry).  A heap makes every re-arm O(log n) and leaves dead entries
behind; a sweep over all connections is O(n) per check.  A hashed wheel
(Varghese & Lauck, scheme 6) makes arming, re-arming and cancelling O(1):

* time is cut into ticks of ``tick`` seconds counted from the wheel's origin,
  the ``now`` given to the constructor; tick ``k`` ends at the boundary
  ``origin + k * tick``;
* a timer for ``deadline`` is *due* at tick ``ceil((deadline - origin) / tick)``,
  the first boundary at or after its deadline, and lives in slot
  ``due % slots``; a slot is a dict used as an insertion-ordered set, so
  removal is O(1) and a slot keeps its timers in scheduling order;
* ``advance(now)`` visits the slots of the ticks crossed since the last call
  and fires the timers whose due tick has been reached.

Deadlines beyond one turn.  The wheel covers ``tick * slots`` seconds (51.2 s
with the defaults) but a deadline may be any distance away.  Each timer stores
its absolute due tick, which plays the part of netty's ``remainingRounds``:
a slot visited for tick ``k`` fires only the timers with ``due <= k`` and
leaves the ones for a later round where they are.  Such a timer is examined,
and skipped, once a turn: the price of O(1) arming.

Cost model.  ``schedule`` and ``cancel`` are O(1).  ``advance`` costs one visit
per slot crossed, plus one look at every timer in those slots, plus a sort of
the fired timers (already in order except after a long jump, so linear in
practice).  A long sleep crosses millions of ticks but at most ``slots``
distinct slots: once a whole turn has been crossed, each slot is visited
once and everything due in it fires.  ``next_wakeup`` is amortised O(1): it
caches the next non-empty tick, lowers the cache when a schedule lands
earlier, and rescans (at most ``slots`` slots) only after time has passed
the cached tick.  It ignores cancellations, so its answer may be early (a
spurious wakeup, at most once per slot per round) but never late.

Accuracy contract (netty's).  A timer never fires before its deadline, and it
fires at the first ``advance`` whose ``now`` has reached the first tick
boundary at or after its deadline: at most one tick late, if the caller
advances at least once a tick.  Two details keep this honest:

* Floating point.  The due tick is computed with a division that may round,
  so when a slot comes due the timer's real deadline is compared with ``now``
  as well.  A timer whose tick has been reached but whose deadline, by a few
  units in the last place, has not, moves to the *overdue* set.
* The overdue set holds timers whose due tick has already been reached:
  those stragglers, and timers scheduled for a deadline at or before the time
  the wheel has already advanced to.  Every ``advance`` fires each one whose
  deadline is ``<= now``, so a timer scheduled "in the past" fires at the very
  next call.

Time never runs backwards here: an ``advance`` to a time earlier than the
last one is treated as no time passing.  ``advance`` returns the fired timers
in order of due tick, ties in scheduling order (re-arming counts as
scheduling again), each already released, so the caller may re-arm it at once.

Worked example
==============

A wheel made at t=0 with tick 0.1 s and 512 slots covers 51.2 s a turn.

* ``schedule(a, 0.25)``: due tick ceil(2.5) = 3, slot 3.
* ``schedule(b, 60.0)``: due tick 600, slot 600 % 512 = 88: a second-round
  timer.
* ``advance(0.29)``: tick floor(2.9) = 2 is reached; slots 1 and 2 are
  empty; nothing fires, although nothing is due yet either.
* ``advance(0.31)``: tick 3 is crossed; slot 3 holds ``a``, due 3 and
  deadline 0.25 <= 0.31: ``[a]`` is returned, 0.06 s after its deadline and
  never before it.  ``next_wakeup()`` now answers 8.8: slot 88 is not empty,
  although ``b`` is for a later round (a harmless early wakeup).
* ``advance(8.85)``: ticks 4..88 are crossed.  Slot 88 holds ``b``, but its
  due tick is 600 > 88, so it stays: it was examined, not fired.
  ``next_wakeup()`` now answers 60.0 (tick 600).
* ``advance(1e6)``: ten million ticks are crossed, which is more than a turn,
  so each of the 512 slots is visited once; ``b`` (due 600 <= 10**7) fires.
"""

from __future__ import annotations

import itertools
import math
import operator

__all__ = ["Timer", "TimerWheel"]


class Timer:
    """One re-armable deadline for one payload (e.g. a connection).

    A connection keeps one Timer for its whole life and re-arms it on every
    line, so arming allocates nothing: the timer object *is* the wheel entry.
    """

    __slots__ = ("payload", "_deadline", "_due", "_seq", "_bucket", "_wheel")

    def __init__(self, payload: object) -> None:
        self.payload = payload
        self._deadline: float | None = None
        self._due = 0
        self._seq = 0
        self._bucket: dict[Timer, None] | None = None
        self._wheel: TimerWheel | None = None

    @property
    def deadline(self) -> float | None:
        """The time it is armed for; ``None`` while it is not pending."""
        return self._deadline

    @property
    def pending(self) -> bool:
        return self._wheel is not None

    def cancel(self) -> None:
        """Disarm it wherever it is pending; one that is not pending is left alone."""
        if self._wheel is not None:
            self._wheel.cancel(self)

    def __repr__(self) -> str:
        state = f"deadline={self._deadline!r}" if self.pending else "idle"
        return f"<Timer {state} payload={self.payload!r}>"

    def _release(self) -> None:
        self._deadline = None
        self._bucket = None
        self._wheel = None


# Firing order: due tick first, then the order in which timers were scheduled.
_firing_order = operator.attrgetter("_due", "_seq")


def _finite(value: float, name: str) -> float:
    """Reject NaN and infinities: either would poison the tick arithmetic."""
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, not {value!r}")
    return value


class TimerWheel:
    """Deadlines in O(1), driven by a clock the caller owns (see module doc)."""

    __slots__ = (
        "_origin",
        "_tick",
        "_slots",
        "_now",
        "_current",
        "_overdue",
        "_overdue_min",
        "_slotted",
        "_wake_tick",
        "_wake_boundary",
        "_seq",
    )

    def __init__(self, now: float, tick: float = 0.1, slots: int = 512) -> None:
        tick = _finite(tick, "tick")
        slots = operator.index(slots)
        if tick <= 0:
            raise ValueError(f"tick must be > 0, not {tick!r}")
        if slots < 1:
            raise ValueError(f"slots must be >= 1, not {slots!r}")
        self._origin = _finite(now, "now")
        self._tick = tick
        self._slots: list[dict[Timer, None]] = [{} for _ in range(slots)]
        self._now = self._origin  # the latest time advanced to
        self._current = 0  # the last tick whose boundary has been reached
        self._overdue: dict[Timer, None] = {}  # due tick reached, see doc
        self._overdue_min = math.inf  # lower bound of the overdue deadlines
        self._slotted = 0  # pending timers that sit in slots
        self._wake_tick: int | None = None  # cached next non-empty tick
        self._wake_boundary: tuple = (None, 0.0)  # (tick, its boundary): called every loop turn
        self._seq = itertools.count()

    def __len__(self) -> int:
        return self._slotted + len(self._overdue)

    def __repr__(self) -> str:
        return (
            f"<TimerWheel now={self._now!r} tick={self._tick!r} "
            f"slots={len(self._slots)} pending={len(self)}>"
        )

    # -- arming ---------------------------------------------------------------

    def schedule(self, timer: Timer, deadline: float) -> None:
        """Arm or re-arm ``timer``; re-arming replaces the old entry in O(1)."""
        if timer._wheel is not None and timer._wheel is not self:
            raise ValueError("timer is pending on another TimerWheel")
        deadline = _finite(deadline, "deadline")
        self.cancel(timer)
        timer._deadline = deadline
        timer._due = self._due_tick(deadline)
        timer._seq = next(self._seq)
        timer._wheel = self
        if deadline <= self._now or timer._due <= self._current:
            self._add_overdue(timer)
        else:
            self._add_slotted(timer)

    def cancel(self, timer: Timer) -> None:
        """Disarm in O(1); the cached wakeup may turn early, which is allowed."""
        if timer._wheel is not self:
            return
        bucket = timer._bucket
        del bucket[timer]
        if bucket is self._overdue:
            self._forget_overdue_min()
        else:
            self._slotted -= 1
        timer._release()

    def _due_tick(self, deadline: float) -> int:
        return math.ceil((deadline - self._origin) / self._tick)

    def _tick_at(self, now: float) -> int:
        return math.floor((now - self._origin) / self._tick)

    def _add_slotted(self, timer: Timer) -> None:
        due = timer._due
        bucket = self._slots[due % len(self._slots)]
        bucket[timer] = None
        timer._bucket = bucket
        self._slotted += 1
        if self._slotted == 1:
            self._wake_tick = due  # the only slotted timer: the cache is exact
        elif self._wake_tick is not None and due < self._wake_tick:
            self._wake_tick = due

    def _add_overdue(self, timer: Timer) -> None:
        self._overdue[timer] = None
        timer._bucket = self._overdue
        self._overdue_min = min(self._overdue_min, timer._deadline)

    def _forget_overdue_min(self) -> None:
        if not self._overdue:
            self._overdue_min = math.inf

    # -- time passing ---------------------------------------------------------

    def advance(self, now: float) -> list[Timer]:
        """Move to ``now`` and hand back, released, every timer that is due."""
        now = max(_finite(now, "now"), self._now)
        target = self._tick_at(now)
        fired = self._fire_overdue(now)
        if target > self._current:
            fired += self._fire_crossed(target, now)
            self._current = target
            if self._wake_tick is not None and self._wake_tick <= target:
                self._wake_tick = None
        self._now = now
        fired.sort(key=_firing_order)
        for timer in fired:
            timer._release()
        return fired

    def _fire_overdue(self, now: float) -> list[Timer]:
        """The overdue set is small: stragglers and timers armed in the past."""
        overdue = self._overdue
        fired = [timer for timer in overdue if timer._deadline <= now]
        for timer in fired:
            del overdue[timer]
        # Exact again (cancels may have left it early): a stale minimum in the
        # past would make a loop that sleeps until next_wakeup() spin.
        self._overdue_min = min((t._deadline for t in overdue), default=math.inf)
        return fired

    def _fire_crossed(self, target: int, now: float) -> list[Timer]:
        """Visit each crossed slot once, even when a whole turn was crossed."""
        slots = self._slots
        first = self._current + 1
        crossed = min(target - self._current, len(slots))
        fired: list[Timer] = []
        for k in range(first, first + crossed):
            fired += self._fire_slot(slots[k % len(slots)], target, now)
        return fired

    def _fire_slot(
        self, bucket: dict[Timer, None], target: int, now: float
    ) -> list[Timer]:
        """Fire what is due; timers for a later round stay where they are."""
        due = [timer for timer in bucket if timer._due <= target]
        for timer in due:
            del bucket[timer]
        self._slotted -= len(due)
        fired = [timer for timer in due if timer._deadline <= now]
        if len(fired) < len(due):
            self._keep_stragglers(due, now)
        return fired

    def _keep_stragglers(self, due: list[Timer], now: float) -> None:
        """Rounding put their tick before their deadline: never fire early."""
        for timer in due:
            if timer._deadline > now:
                self._add_overdue(timer)

    # -- sleeping -------------------------------------------------------------

    def next_wakeup(self) -> float | None:
        """When ``advance`` may next have work, so the loop can sleep until then."""
        if not (self._slotted or self._overdue):  # len(self) without the call: every turn
            return None
        wake = self._overdue_min
        if self._slotted:
            wake = min(wake, self._boundary(self._next_slotted_tick()))
        return wake

    def _next_slotted_tick(self) -> int:
        if self._wake_tick is None:
            self._wake_tick = self._scan()
        return self._wake_tick

    def _scan(self) -> int:
        """The first tick ahead whose slot is not empty (one turn at most)."""
        slots = self._slots
        first = self._current + 1
        for k in range(first, first + len(slots)):
            if slots[k % len(slots)]:
                return k
        raise AssertionError("slotted timers counted but no slot holds one")

    def _boundary(self, k: int) -> float:
        """The end of tick ``k``, nudged up until ``advance`` agrees it is reached.

        ``origin + k * tick`` may round so that ``_tick_at`` of it gives
        ``k - 1``; a loop that slept exactly until then would wake, find no
        work and sleep for zero seconds again.  A few ulps later is harmless.
        The last answer is kept: the loop asks for the same tick every turn.
        """
        cached_tick, cached_when = self._wake_boundary
        if cached_tick == k:
            return cached_when
        when = self._origin + k * self._tick
        while self._tick_at(when) < k:
            when = math.nextafter(when, math.inf)
        self._wake_boundary = (k, when)
        return when
