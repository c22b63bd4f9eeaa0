"""The line framer: one connection's byte stream in, line events out.

Theory of operation
-------------------
TCP delivers a stream, not messages: one ``recv`` may hold half a line, or
forty lines and the start of the next.  ``LineFramer`` turns whatever
arrives into events for the machine (``LineReceived``, ``LineTooLong``,
``TelnetOptionRequested``) and is the only place that knows about LF, CR,
line length and Telnet.

It works in two steps, so that its caller controls the pace:

- ``feed(data)`` only stores the bytes (O(1) when nothing is left over);
- ``take(max_tokens, max_work)`` parses as far as two budgets allow and
  returns a ``Taken``: the events, and what they cost.

*Tokens* are the flood-control currency (protocol.md, Limits): each complete
line costs one, and a line too long for ``max_line`` costs one for every
``max_line`` bytes received, so a stream that never sends LF is paced too.
*Work* bounds the effort of one call for fairness: every line, every Telnet
command and every overlong charge counts one.  When a budget runs out the
rest stays stored, unparsed, for the next call; the caller should not read
more from the socket until ``pending`` is false, which bounds memory to one
read plus ``max_line``.

Parsing is O(bytes): ``bytes.find`` jumps to the next LF (and, only when the
stream contains 0xFF at all, to the next IAC), nothing already scanned is
scanned again, and a complete line that arrived in one piece is sliced out
directly, without passing through the partial-line buffer.

Rules it enforces (protocol.md, Framing):

- a line is the bytes before LF; a CR just before the LF is dropped, but
  counts toward ``max_line``;
- an unfinished line never holds more than ``max_line`` bytes: at the first
  byte past the limit the framer emits ``LineTooLong`` once and discards the
  line's bytes up to and including the next LF;
- Telnet commands (RFC 854) are removed before lines are cut.  Each whole
  command (an option request or refusal, NOP, IP, a whole subnegotiation)
  costs one token, as a line does, so a stream of them is paced like a
  stream of lines; their bytes do not count toward the line length.
  ``IAC IAC`` is a literal 0xFF byte, 0xFF before a byte that is no Telnet
  command stays as data, ``IAC DO x`` and ``IAC WILL x`` become
  ``TelnetOptionRequested`` events (the machine refuses them), and an LF
  abandons an unfinished command or subnegotiation, unpaid, so Telnet can
  never swallow a line;
- at end of stream, an unfinished last line is dropped;
- a stream that begins like a TLS record (0x16 0x03: a TLS client's
  ClientHello, sent to the plaintext port) is not chat: the framer emits
  ``TLSHelloReceived`` once and ignores everything the client sends after.

Nothing a client sends can make it raise.
"""

from __future__ import annotations

from typing import NamedTuple

from .events import ConnId, Event, LineReceived, LineTooLong, TelnetOptionRequested, TLSHelloReceived
from .wire import DO, DONT, IAC, SB, SE, WILL

DEFAULT_MAX_LINE = 4096

_SPENT: list[Event] = []  # never appended to: take() makes each turn's own list
"""What ``_events`` holds between two takes, so an idle framer keeps no events alive."""

_LF = b"\n"
_CR = 13
_IAC_BYTE = bytes((IAC,))

# How the stream began (``_opening``), for the TLS guard.
_UNSEEN = 0
_FIRST_BYTE_SEEN = 1  # 0x16, the first byte of a TLS record
_PLAIN = 2  # anything else: a chat client
_TLS = 3  # 0x16 0x03: a TLS client; TLSHelloReceived not yet taken
_TLS_REPORTED = 4
_TLS_RECORD = b"\x16\x03"

# Telnet parser states.
_DATA = 0  # plain data
_COMMAND = 1  # after IAC
_OPTION = 2  # after IAC WILL/WONT/DO/DONT, waiting for the option byte
_SUBNEGOTIATION = 3  # after IAC SB, until IAC SE
_SUBNEGOTIATION_IAC = 4  # after IAC inside a subnegotiation


class Taken(NamedTuple):
    """What one ``take`` produced and what it cost."""

    events: list[Event]
    tokens: int
    """Flood-control tokens spent."""
    lines: int
    """Complete lines seen (including overlong ones): the idle timer's notion of activity."""
    pending: bool
    """Whether stored bytes still wait to be parsed (``LineFramer.pending`` after this take)."""


class LineFramer:
    """Cuts one connection's bytes into line events, within budgets.

    ``conn`` is the connection id put into the events; ``max_line`` the
    longest accepted line in bytes, CR included, LF excluded.
    """

    __slots__ = (
        "_conn",
        "_max_line",
        "_data",
        "_pos",
        "_may_hold_iac",
        "_partial",
        "_overlong",
        "_overlong_bytes",
        "_charged",
        "_telnet",
        "_telnet_verb",
        "_ended",
        "_opening",
        "_events",
        "_tokens",
        "_work",
        "_lines",
    )

    def __init__(self, conn: ConnId, max_line: int = DEFAULT_MAX_LINE) -> None:
        if max_line < 1:
            raise ValueError("max_line must be at least 1")
        self._conn = conn
        self._max_line = max_line
        self._data = b""  # bytes received and not yet parsed, from _pos on
        self._pos = 0
        self._may_hold_iac = False  # whether _data[_pos:] may contain 0xFF
        self._partial: bytes | bytearray = b""  # the unfinished line (Telnet removed), <= max_line
        self._overlong = False  # discarding the rest of a too-long line
        self._overlong_bytes = 0  # bytes of that line so far
        self._charged = 0  # tokens charged for it: always _overlong_bytes // max_line
        self._telnet = _DATA
        self._telnet_verb = 0
        self._ended = False
        self._opening = _UNSEEN  # how the stream began: is it a TLS client's?
        self._events: list[Event] = _SPENT
        self._tokens = 0
        self._work = 0
        self._lines = 0

    # -- the interface -----------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Store ``data`` for parsing; cheap, and parses nothing."""
        if not data:
            return
        if self._opening != _PLAIN:
            if self._opening < _PLAIN:
                self._look_at_opening(data)
            if self._opening >= _TLS:
                return  # a TLS client: nothing it sends is chat
        if self._pos < len(self._data):
            self._data = self._data[self._pos :] + data
            self._may_hold_iac = self._may_hold_iac or _IAC_BYTE in data
        else:
            self._data = data
            self._may_hold_iac = _IAC_BYTE in data
        self._pos = 0

    def end_of_stream(self) -> None:
        """No more bytes will come; an unfinished last line will be dropped."""
        self._ended = True
        self._drop_unfinished_if_done()

    @property
    def ended(self) -> bool:
        """Whether ``end_of_stream`` was called: no more bytes will come."""
        return self._ended

    @property
    def pending(self) -> bool:
        """Whether stored bytes wait to be parsed (a budget ran out)."""
        return self._pos < len(self._data)

    @property
    def buffered(self) -> int:
        """Bytes held: unparsed input plus the unfinished line."""
        return len(self._data) - self._pos + len(self._partial)

    def take(self, max_tokens: int, max_work: int) -> Taken:
        """Parse stored bytes until they run out or a budget would be passed."""
        if self._opening >= _TLS:
            return self._tls_taken()
        events: list[Event] = []
        self._events = events
        self._tokens = 0
        self._work = 0
        self._lines = 0
        data = self._data
        end = len(data)
        while self._pos < end and self._work < max_work:
            if not (self._partial or self._overlong or self._may_hold_iac or self._telnet):
                if self._whole_lines(data, max_tokens, max_work):
                    continue
            if not self._step(data, end, max_tokens):
                break
        if self._ended:
            self._drop_unfinished_if_done()
        # tuple.__new__ skips the NamedTuple's Python-level __new__: this is per read.
        pending = self._pos < len(self._data)
        if not pending:
            self._data, self._pos = b"", 0  # an idle connection holds no bytes of its last read
        self._events = _SPENT
        return tuple.__new__(Taken, (events, self._tokens, self._lines, pending))

    # -- the opening: a TLS client on the plaintext port ---------------------

    def _look_at_opening(self, data: bytes) -> None:
        """A TLS record starts with 0x16 0x03 (handshake, version 3.x); no chat line does."""
        if self._opening == _UNSEEN:
            if data[0] != _TLS_RECORD[0]:
                self._opening = _PLAIN
                return
            self._opening = _FIRST_BYTE_SEEN
            data = data[1:]
            if not data:
                return
        self._opening = _TLS if data[0] == _TLS_RECORD[1] else _PLAIN
        if self._opening == _TLS:
            self._data, self._pos, self._partial = b"", 0, b""

    def _tls_taken(self) -> Taken:
        """``TLSHelloReceived`` once; nothing ever after."""
        events: list[Event] = []
        if self._opening == _TLS:
            self._opening = _TLS_REPORTED
            events.append(TLSHelloReceived(self._conn))
        return tuple.__new__(Taken, (events, 0, 0, False))

    # -- parsing -----------------------------------------------------------

    def _whole_lines(self, data: bytes, max_tokens: int, max_work: int) -> bool:
        """The common case, kept tight: whole lines, no Telnet, nothing unfinished.

        Returns whether it took any line; the general ``_step`` handles the
        rest (a budget that ran out, an overlong line, a line without its LF).
        """
        conn = self._conn
        append = self._events.append
        find = data.find
        max_line = self._max_line
        pos = start = self._pos
        tokens = self._tokens
        work = self._work
        while tokens < max_tokens and work < max_work:
            lf = find(_LF, pos)
            if lf < 0 or lf - pos > max_line:
                break
            line = data[pos:lf]
            if line and line[-1] == _CR:
                line = line[:-1]
            append(LineReceived(conn, line))
            tokens += 1
            work += 1
            pos = lf + 1
        taken = tokens - self._tokens
        self._tokens = tokens
        self._work = work
        self._lines += taken
        self._pos = pos
        return pos > start

    def _step(self, data: bytes, end: int, max_tokens: int) -> bool:
        """Parse one piece in any state; False if a budget stops it."""
        pos = self._pos
        if self._telnet != _DATA:
            return self._telnet_byte(data[pos], max_tokens)
        lf = data.find(_LF, pos)
        stop = end if lf < 0 else lf
        iac = data.find(_IAC_BYTE, pos, stop) if self._may_hold_iac else -1
        segment_end = stop if iac < 0 else iac
        consumed = self._add(data, pos, segment_end, max_tokens)
        self._pos = consumed
        if consumed < segment_end:
            return False  # out of tokens for an overlong line
        if iac >= 0:
            self._pos = iac + 1
            self._telnet = _COMMAND
        elif lf >= 0:
            if not self._end_line(max_tokens):
                return False
            self._pos = lf + 1
        else:
            return False  # all stored bytes parsed; the line continues in the next feed
        return True

    def _add(self, data: bytes, start: int, stop: int, max_tokens: int) -> int:
        """Append ``data[start:stop]`` (no LF, no Telnet) to the current line.

        Returns how far it got: short of ``stop`` only when the line is too
        long and the tokens for discarding more of it ran out.
        """
        if start >= stop:
            return stop
        max_line = self._max_line
        if not self._overlong:
            room = max_line - len(self._partial)
            if not self._partial:  # made when a line arrives in pieces; b"" otherwise
                self._partial = bytearray()
            if stop - start <= room:
                self._partial += data[start:stop]
                return stop
            self._partial += data[start : start + room]
            start += room
            if self._tokens >= max_tokens:
                return start
            self._partial = b""
            self._overlong = True
            self._overlong_bytes = max_line
            self._charged = 0
            self._events.append(LineTooLong(self._conn))
        # Discard, charging one token each time the line passes a multiple of
        # max_line, but no further than the tokens left allow.
        affordable = (self._charged + max_tokens - self._tokens + 1) * max_line - 1
        taken = min(stop - start, affordable - self._overlong_bytes)
        self._overlong_bytes += taken
        charges = self._overlong_bytes // max_line - self._charged
        self._charged += charges
        self._tokens += charges
        self._work += charges
        return start + taken

    def _end_line(self, max_tokens: int) -> bool:
        """The current line met its LF; False if there is no token to pay for it."""
        if self._overlong:
            self._overlong = False
            self._overlong_bytes = 0
            self._charged = 0
            self._work += 1
            self._lines += 1
            return True
        if self._tokens >= max_tokens:
            return False
        line = bytes(self._partial)
        self._partial = b""
        if line and line[-1] == _CR:
            line = line[:-1]
        self._events.append(LineReceived(self._conn, line))
        self._tokens += 1
        self._work += 1
        self._lines += 1
        return True

    def _telnet_byte(self, byte: int, max_tokens: int) -> bool:
        """Consume one byte of a Telnet command; False if the budget stops it.

        A byte that turns out to be data is left in place for the data path
        (``_pos`` is not advanced), after the state goes back to ``_DATA``.
        """
        state = self._telnet
        if state == _COMMAND:
            return self._after_iac(byte, max_tokens)
        if byte == 10:  # LF abandons any unfinished command, unpaid: it ends the line instead
            self._telnet = _DATA
            return True
        if state == _OPTION:
            return self._option_byte(byte, max_tokens)
        if state == _SUBNEGOTIATION:
            self._skip_subnegotiation()
            return True
        return self._after_subnegotiation_iac(byte, max_tokens)

    def _after_iac(self, byte: int, max_tokens: int) -> bool:
        if byte == IAC or byte < SE:
            # IAC IAC is an escaped 0xFF; IAC before a non-command keeps both as data.
            if self._add(_IAC_BYTE, 0, 1, max_tokens) == 0:
                return False
            self._telnet = _DATA
            if byte == IAC:
                self._pos += 1
            return True
        if WILL <= byte <= DONT:
            self._telnet = _OPTION
            self._telnet_verb = byte
        elif byte == SB:
            self._telnet = _SUBNEGOTIATION
        elif not self._pay_for_command(max_tokens):
            return False
        else:
            self._telnet = _DATA  # a two-byte command (NOP, IP, AYT, ...): dropped
        self._pos += 1
        return True

    def _option_byte(self, option: int, max_tokens: int) -> bool:
        if not self._pay_for_command(max_tokens):
            return False
        self._pos += 1
        self._telnet = _DATA
        if self._telnet_verb in (DO, WILL):
            self._events.append(TelnetOptionRequested(self._conn, self._telnet_verb, option))
        return True

    def _skip_subnegotiation(self) -> None:
        """Skip the negotiation's payload in one step, up to its IAC or an LF."""
        data = self._data
        stop = len(data)
        for needle in (_IAC_BYTE, _LF):
            found = data.find(needle, self._pos, stop)
            if found >= 0:
                stop = found
        if stop < len(data) and data[stop] == IAC:
            self._telnet = _SUBNEGOTIATION_IAC
            stop += 1
        self._pos = stop

    def _after_subnegotiation_iac(self, byte: int, max_tokens: int) -> bool:
        if byte == SE:
            if not self._pay_for_command(max_tokens):
                return False
            self._telnet = _DATA
        else:
            self._telnet = _SUBNEGOTIATION  # IAC IAC inside it, or a stray IAC: still inside
        self._pos += 1
        return True

    def _pay_for_command(self, max_tokens: int) -> bool:
        """A whole Telnet command costs one token, as a line does, and one unit of work."""
        if self._tokens >= max_tokens:
            return False
        self._tokens += 1
        self._work += 1
        return True

    def _drop_unfinished_if_done(self) -> None:
        if self._ended and not self.pending:
            self._partial = b""
            self._overlong = False
            self._overlong_bytes = 0
            self._charged = 0
            self._telnet = _DATA
