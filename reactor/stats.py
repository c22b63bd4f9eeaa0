"""What the server has done so far, in numbers an operator can read.

The loop bumps plain integer counters as it works (``Counters``: a few
attribute increments per event, never per recipient), and ``Stats`` is a
frozen snapshot of them plus the live figures (users, connections, uptime),
taken when an operator asks (SIGUSR1, ``--stats-interval``).
docs/operations.md describes every field.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass(slots=True)
class Counters:
    """Totals since the server started; the loop adds to them."""

    accepted: int = 0  # connections accepted
    refused: int = 0  # connections refused with ERR server-full
    lines_in: int = 0  # complete lines received
    lines_out: int = 0  # lines queued for clients (a broadcast counts once per recipient)
    bytes_in: int = 0  # bytes received from clients
    bytes_out: int = 0  # bytes handed to the kernel, closed connections only (Stats adds the open ones)
    evictions: int = 0  # slow consumers disconnected
    flood_pauses: int = 0  # times flood control stopped reading a connection


@dataclass(frozen=True, slots=True)
class Stats:
    """One snapshot, as ``Reactor.stats()`` returns it."""

    users: int  # logged in now
    connections: int  # open now
    accepted: int
    refused: int
    lines_in: int
    lines_out: int
    bytes_in: int
    bytes_out: int
    evictions: int
    flood_pauses: int
    uptime: float  # seconds since the reactor started

    def line(self) -> str:
        """The one log line: ``key=value`` pairs, in field order."""
        parts = []
        for name, value in asdict(self).items():
            shown = f"{value:.0f}s" if name == "uptime" else str(value)
            parts.append(f"{name}={shown}")
        return "stats: " + " ".join(parts)


COUNTER_FIELDS = tuple(f.name for f in fields(Counters))
