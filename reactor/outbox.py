"""The outbox: one loop turn's output, gathered so every connection gets one send.

Theory of operation
-------------------
During a loop turn the machine's effects arrive one at a time: a ``Reply``
here, a ``Broadcast`` of a MSG there.  Sending each at once would cost one
system call per line per recipient.  Instead the reactor files every effect
in the ``Outbox`` and, at the end of the turn, ``drain`` hands each
connection all of its bytes together, in the order the machine produced
them.

The point is to make a broadcast cost O(1) Python work per recipient per
*turn*, not per *message*.  Broadcasts go into one shared log.  Consecutive
broadcasts that name the same audience object (the machine reuses one tuple
until somebody logs in or out) form a *run*; a run's lines are joined into
one ``bytes`` once, and every ordinary member of the audience is handed that
same object.  A room of 1,000 users receiving 500 messages in one turn costs
500 appends to the log, one join, and 1,000 hand-overs.

Some connections are not ordinary in a turn: a sender must not receive its
own MSG (an *exclusion*), and a connection may have private lines (a
``Reply`` or a ``Deliver``) that must appear at the right place between the
broadcasts.  Those few are *marked*; each marked connection's bytes are
assembled separately, by slicing the log around its marks.  That costs
O(marks + runs) for that connection, which is proportional to what it sent
or was sent privately, never to the size of the room.

Positions make the order exact: a private line filed when the log holds
``p`` lines goes out after log line ``p - 1`` and before log line ``p``.

The outbox knows nothing of sockets.  ``drain`` hands the output over
through two callbacks.  When the turn's broadcasts form a single run (the
usual case) it makes one ``share(audience, payload, skip)`` call for all
the run's ordinary members, so the caller can hand out the bytes in a loop
of its own, without a function call per recipient.  Everyone else gets one
``hand_over(conn, pieces, reply_bytes)`` call, where ``pieces`` is a list
of ``bytes`` to send in order and ``reply_bytes`` how many of those bytes
are replies to the connection's own input.  The rest came from other users
(MSG, DM, INFO), and only that part can make a client a slow consumer
(protocol.md, Limits).  Either callback may file more output (an eviction
makes the machine broadcast INFO); ``drain`` empties the outbox before it
starts, so that output waits for the next ``drain``.

The outbox also answers, while a turn's output is being filed, how many
reply bytes a connection has been given so far (``file_reply`` returns
it): the loop stops handling a connection's commands the moment its
replies, sent or not, pass ``--max-output``, instead of queueing a whole
burst of WHO replies first.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Hashable, Sequence

Conn = Hashable
HandOver = Callable[[Conn, list[bytes], int], None]
"""``hand_over(conn, pieces, reply_bytes)``: one connection's output for the turn."""
Share = Callable[[Sequence[Conn], bytes, Container[Conn]], None]
"""``share(audience, payload, skip)``: one run's bytes for every member not in ``skip``."""


class _Run:
    """Consecutive log lines that share one audience."""

    __slots__ = ("audience", "start", "end", "payload", "_members")

    def __init__(self, audience: Sequence[Conn], start: int) -> None:
        self.audience = audience
        self.start = start
        self.end = start
        self.payload = b""
        self._members: frozenset | None = None

    def has_member(self, conn: Conn) -> bool:
        members = self._members
        if members is None:
            members = self._members = frozenset(self.audience)
        return conn in members


class _Marks:
    """What makes one connection's output differ from its audience's this turn."""

    __slots__ = ("private", "excluded", "reply_bytes")

    def __init__(self) -> None:
        self.private: list[tuple[int, bytes]] = []  # (log position, data)
        self.excluded: list[int] = []  # log positions it must not receive
        self.reply_bytes = 0  # bytes of replies among the private lines


class Outbox:
    """Collects a turn's output; ``drain`` hands it out, one call per connection."""

    __slots__ = ("_log", "_runs", "_marks")

    def __init__(self) -> None:
        self._log: list[bytes] = []
        self._runs: list[_Run] = []
        self._marks: dict[Conn, _Marks] = {}

    def __bool__(self) -> bool:
        return bool(self._log or self._marks)

    def file_reply(self, conn: Conn, data: bytes) -> int:
        """File ``data`` for ``conn``, caused by its own input; its reply bytes so far this turn."""
        marks = self._marks.get(conn)  # _mark(), written out: every reply comes here
        if marks is None:
            marks = self._marks[conn] = _Marks()
        marks.private.append((len(self._log), data))
        marks.reply_bytes += len(data)
        return marks.reply_bytes

    def file_direct(self, conn: Conn, data: bytes) -> None:
        """File ``data``, a line from another user, for ``conn`` alone."""
        self._mark(conn).private.append((len(self._log), data))

    def file_broadcast(self, data: bytes, audience: Sequence[Conn], exclude: Conn | None) -> None:
        """File ``data`` for every member of ``audience`` but ``exclude``."""
        runs = self._runs
        if not runs or runs[-1].audience is not audience:
            runs.append(_Run(audience, len(self._log)))
        if exclude is not None:
            self._mark(exclude).excluded.append(len(self._log))
        self._log.append(data)
        runs[-1].end += 1

    def _mark(self, conn: Conn) -> _Marks:
        marks = self._marks.get(conn)
        if marks is None:
            marks = self._marks[conn] = _Marks()
        return marks

    def drain(self, hand_over: HandOver, share: Share | None = None) -> None:
        """Hand every connection its output for the turn, then start empty.

        ``share(audience, payload, skip)``, if given, takes the hot path in
        one call: when the turn's broadcasts form one run, every member of
        ``audience`` not in ``skip`` gets ``payload`` (each exactly as
        ``hand_over(conn, [payload], 0)`` would).  The members in ``skip``
        are handed their own bytes by ``hand_over`` afterwards.  One call
        per run, not per recipient: the caller's loop does the
        per-recipient work.
        """
        log, runs, marks = self._log, self._runs, self._marks
        self._log, self._runs, self._marks = [], [], {}
        if not runs:  # private lines only (a PING, a WHO): nothing to interleave
            for conn, conn_marks in marks.items():
                hand_over(conn, [data for _, data in conn_marks.private], conn_marks.reply_bytes)
            return
        for run in runs:
            run.payload = log[run.start] if run.end - run.start == 1 else b"".join(
                log[run.start : run.end]
            )
        if len(runs) == 1:
            (share or _share_one_by_one(hand_over))(runs[0].audience, runs[0].payload, marks)
        else:
            _hand_out_runs(runs, marks, hand_over)
        for conn, conn_marks in marks.items():
            pieces = _assemble(conn, conn_marks, log, runs)
            if pieces:
                hand_over(conn, pieces, conn_marks.reply_bytes)


def _share_one_by_one(hand_over: HandOver) -> Share:
    """``share`` made of ``hand_over`` calls, for callers without a loop of their own."""

    def share(audience: Sequence[Conn], payload: bytes, skip: Container[Conn]) -> None:
        for conn in audience:
            if conn not in skip:
                hand_over(conn, [payload], 0)

    return share


def _hand_out_runs(runs: list[_Run], marks: Container[Conn], hand_over: HandOver) -> None:
    """Several runs (somebody logged in or out mid-turn): each unmarked member its runs' payloads."""
    pending: dict[Conn, list[bytes]] = {}
    for run in runs:
        payload = run.payload
        for conn in run.audience:
            if conn not in marks:
                pieces = pending.get(conn)
                if pieces is None:
                    pending[conn] = [payload]
                else:
                    pieces.append(payload)
    for conn, pieces in pending.items():
        hand_over(conn, pieces, 0)


def _assemble(conn: Conn, marks: _Marks, log: list[bytes], runs: list[_Run]) -> list[bytes]:
    """A marked connection's pieces: its runs' lines, minus exclusions, with its private lines in place."""
    pieces: list[bytes] = []
    private, excluded = marks.private, marks.excluded
    p = x = 0  # next private line, next exclusion
    no_more = len(log) + 1
    for run in runs:
        member = run.has_member(conn)
        cursor = run.start  # first log line of the run not yet handed out
        while True:
            next_private = private[p][0] if p < len(private) else no_more
            next_excluded = excluded[x] if x < len(excluded) else no_more
            mark = min(next_private, next_excluded)
            if mark >= run.end:
                break
            if member and cursor < mark:
                pieces.append(_slice(log, run, cursor, mark))
            if next_private <= next_excluded:
                pieces.append(private[p][1])
                p += 1
                cursor = max(cursor, mark)
            else:
                x += 1
                cursor = mark + 1
        if member and cursor < run.end:
            pieces.append(_slice(log, run, cursor, run.end))
    pieces += [data for _, data in private[p:]]
    return pieces


def _slice(log: list[bytes], run: _Run, start: int, end: int) -> bytes:
    if start == run.start and end == run.end:
        return run.payload
    if end - start == 1:
        return log[start]
    return b"".join(log[start:end])
