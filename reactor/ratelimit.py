"""Flood control: one token bucket per connection.

A bucket holds up to ``burst`` tokens and gains ``rate`` tokens a second;
every line a client sends costs one (``protocol.framing`` says exactly what
counts as a line).  The reactor never rejects a line for want of tokens: it
parses only as many lines as there are tokens, and while the bucket is empty
it stops reading the socket, so TCP's own flow control pushes back on the
client (protocol.md, Limits).  Nothing is lost; the flooder just waits.

Time comes in as an argument, like everywhere in the reactor but the loop's
clock, so tests can drive it by hand.  The loop wakes a paused client on
the timer wheel's tick, up to a tick after its token was due; the bucket
credits that time (``available(now, waiting=True)``), so the client still
gets ``rate`` lines a second on average, whatever ``burst`` is.
"""

from __future__ import annotations

UNLIMITED = 1 << 62
"""What ``available`` reports when flood control is off (``rate`` 0)."""


class TokenBucket:
    """Tokens for one connection's lines."""

    __slots__ = ("_rate", "_burst", "_tokens", "_stamp")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        if rate < 0 or burst < 1:
            raise ValueError("rate must be >= 0 and burst >= 1")
        self._rate = rate
        self._burst = burst
        self._tokens = float(burst)
        self._stamp = now

    def available(self, now: float, waiting: bool = False) -> int:
        """Whole tokens that may be spent now.

        ``waiting`` says the client has had input waiting since the last
        call (the loop paused it, or put it off for others).  Its tokens
        then accrue for the whole time, uncapped: the cap of ``burst`` is
        for a client that was quiet, and a paced client woken a timer tick
        after its token came due must not lose that time, or a bucket of
        one token would run at the tick's rate instead of ``rate``.
        """
        if not self._rate:
            return UNLIMITED
        if now > self._stamp:
            tokens = self._tokens + (now - self._stamp) * self._rate
            self._tokens = tokens if waiting else min(self._burst, tokens)
            self._stamp = now
        elif not waiting and self._tokens > self._burst:
            self._tokens = self._burst
        return int(self._tokens)

    def spend(self, tokens: int) -> None:
        """Take ``tokens`` (never more than ``available`` said)."""
        if self._rate:
            self._tokens -= tokens

    def next_token_at(self) -> float:
        """When the bucket will next hold a whole token (after the last ``available``)."""
        missing = 1.0 - self._tokens
        if not self._rate or missing <= 0:
            return self._stamp
        return self._stamp + missing / self._rate
