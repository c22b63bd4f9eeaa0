"""LineFramer: examples for each framing rule, then properties against a
byte-at-a-time reference model under arbitrary chunking and budgets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import LineFramer, LineReceived, LineTooLong, TelnetOptionRequested, TLSHelloReceived

IAC, DONT, DO, WONT, WILL, SB, SE, IP, NOP = 255, 254, 253, 252, 251, 250, 240, 244, 241
TIMING_MARK = 6
UNLIMITED = 10**9


def frame(data: bytes, max_line: int = 4096, ended: bool = False):
    framer = LineFramer("c", max_line=max_line)
    framer.feed(data)
    if ended:
        framer.end_of_stream()
    taken = framer.take(UNLIMITED, UNLIMITED)
    assert not framer.pending
    return taken


def lines(data: bytes, **kwargs):
    return [event.line for event in frame(data, **kwargs).events]


# -- lines ---------------------------------------------------------------------


def test_lines_are_cut_at_lf_and_a_cr_before_it_is_dropped():
    assert lines(b"LOGIN a\r\nMSG hi\nWHO\r\n") == [b"LOGIN a", b"MSG hi", b"WHO"]


def test_only_the_cr_right_before_lf_is_dropped():
    assert lines(b"a\rb\r\r\n\r\n") == [b"a\rb\r", b""]


def test_empty_lines_are_events_and_cost_a_token_each():
    taken = frame(b"\n\n\r\n")
    assert [e.line for e in taken.events] == [b"", b"", b""]
    assert (taken.tokens, taken.lines) == (3, 3)


def test_a_line_split_across_feeds_is_reassembled():
    framer = LineFramer("c")
    for chunk in (b"LO", b"GIN al", b"ice\r", b"\nPI", b"NG\n"):
        framer.feed(chunk)
        events = framer.take(UNLIMITED, UNLIMITED).events
        if chunk.endswith(b"\n"):
            assert events
    framer.feed(b"")
    assert framer.buffered == 0


def test_events_carry_the_connection_id():
    framer = LineFramer(("peer", 7))
    framer.feed(b"x\n")
    assert framer.take(1, 1).events == [LineReceived(("peer", 7), b"x")]


def test_an_unfinished_last_line_is_dropped_at_end_of_stream():
    framer = LineFramer("c")
    framer.feed(b"PING\nhalf a li")
    framer.end_of_stream()
    assert [e.line for e in framer.take(UNLIMITED, UNLIMITED).events] == [b"PING"]
    assert framer.buffered == 0


def test_end_of_stream_keeps_complete_lines_that_wait_for_tokens():
    framer = LineFramer("c")
    framer.feed(b"a\nb\nc")
    framer.end_of_stream()
    assert [e.line for e in framer.take(1, UNLIMITED).events] == [b"a"]
    assert framer.pending
    assert [e.line for e in framer.take(5, UNLIMITED).events] == [b"b"]
    assert not framer.pending and framer.buffered == 0


# -- the line limit --------------------------------------------------------------


def test_a_line_of_exactly_max_line_bytes_is_accepted():
    assert lines(b"x" * 10 + b"\n", max_line=10) == [b"x" * 10]


def test_the_cr_counts_toward_max_line():
    taken = frame(b"x" * 10 + b"\r\n", max_line=10)
    assert taken.events == [LineTooLong("c")]


def test_a_line_past_max_line_is_reported_once_and_discarded_to_its_lf():
    taken = frame(b"y" * 25 + b"\nPING\n", max_line=10)
    assert taken.events == [LineTooLong("c"), LineReceived("c", b"PING")]
    assert taken.lines == 2


def test_line_too_long_is_reported_before_the_lf_arrives():
    framer = LineFramer("c", max_line=10)
    framer.feed(b"z" * 11)
    assert framer.take(UNLIMITED, UNLIMITED).events == [LineTooLong("c")]
    framer.feed(b"z" * 100)
    assert framer.take(UNLIMITED, UNLIMITED).events == []
    framer.feed(b"z\nok\n")
    assert framer.take(UNLIMITED, UNLIMITED).events == [LineReceived("c", b"ok")]


def test_an_overlong_line_costs_a_token_per_max_line_bytes_and_nothing_at_its_lf():
    taken = frame(b"y" * 25 + b"\n", max_line=10)
    assert taken.tokens == 2  # 25 // 10
    assert frame(b"y" * 11 + b"\n", max_line=10).tokens == 1


def test_fifty_megabytes_without_lf_hold_at_most_max_line_bytes():
    framer = LineFramer("c", max_line=4096)
    chunk = b"A" * 65536
    reports = 0
    for _ in range(800):  # 52 MB
        framer.feed(chunk)
        reports += len(framer.take(UNLIMITED, UNLIMITED).events)
        assert framer.buffered <= 4096
    assert reports == 1
    framer.feed(b"\nPING\n")
    assert framer.take(UNLIMITED, UNLIMITED).events == [LineReceived("c", b"PING")]


def test_a_stream_without_lf_is_paced_by_tokens():
    framer = LineFramer("c", max_line=10)
    framer.feed(b"q" * 100)
    first = framer.take(3, UNLIMITED)
    assert first.events == [LineTooLong("c")]
    assert first.tokens == 3
    assert framer.pending  # the rest waits until tokens refill
    rest = framer.take(UNLIMITED, UNLIMITED)
    assert rest.tokens == 10 - 3 and not framer.pending


# -- budgets ---------------------------------------------------------------------


def test_tokens_bound_the_lines_taken_and_the_rest_waits():
    framer = LineFramer("c")
    framer.feed(b"1\n2\n3\n4\n5\n")
    assert [e.line for e in framer.take(2, UNLIMITED).events] == [b"1", b"2"]
    assert framer.pending
    assert framer.take(0, UNLIMITED).events == []
    assert [e.line for e in framer.take(10, UNLIMITED).events] == [b"3", b"4", b"5"]
    assert not framer.pending


def test_every_telnet_command_costs_a_token_and_a_unit_of_work():
    framer = LineFramer("c")
    framer.feed(bytes([IAC, NOP]) * 10 + b"x\n")
    taken = framer.take(UNLIMITED, 4)
    assert taken.tokens == 4 and framer.pending
    taken = framer.take(UNLIMITED, UNLIMITED)
    assert taken.events == [LineReceived("c", b"x")] and taken.tokens == 7


@pytest.mark.parametrize(
    "command",
    [
        bytes([IAC, NOP]),
        bytes([IAC, IP]),
        bytes([IAC, DO, 1]),
        bytes([IAC, WONT, 1]),
        bytes([IAC, SB, 24, 0]) + b"xterm" + bytes([IAC, SE]),
    ],
    ids=["NOP", "IP", "DO", "WONT", "subnegotiation"],
)
def test_a_stream_of_telnet_commands_is_paced_like_a_stream_of_lines(command):
    framer = LineFramer("c")
    framer.feed(command * 5)
    assert framer.take(2, UNLIMITED).tokens == 2 and framer.pending
    assert framer.take(0, UNLIMITED).tokens == 0 and framer.pending  # no token, no progress
    assert framer.take(3, UNLIMITED).tokens == 3 and not framer.pending


def test_an_unfinished_telnet_command_abandoned_at_lf_costs_only_the_line():
    framer = LineFramer("c")
    framer.feed(bytes([IAC, DO]) + b"\n" + bytes([IAC, SB, 24]) + b"junk\n")
    taken = framer.take(UNLIMITED, UNLIMITED)
    assert taken.tokens == 2 and taken.lines == 2


def test_feeding_while_bytes_are_pending_keeps_their_order():
    framer = LineFramer("c")
    framer.feed(b"a\nb\n")
    framer.take(1, UNLIMITED)
    framer.feed(b"c\n")
    assert [e.line for e in framer.take(UNLIMITED, UNLIMITED).events] == [b"b", b"c"]


# -- Telnet ----------------------------------------------------------------------


def test_ctrl_c_in_telnet_is_removed_and_the_timing_mark_request_reported():
    # What telnet sends for Ctrl+C: IAC IP IAC DO TIMING-MARK, glued to the next line.
    data = bytes([IAC, IP, IAC, DO, TIMING_MARK]) + b"PING\r\n"
    assert frame(data).events == [
        TelnetOptionRequested("c", DO, TIMING_MARK),
        LineReceived("c", b"PING"),
    ]


@pytest.mark.parametrize("verb", [DO, WILL])
def test_option_requests_are_reported(verb):
    assert frame(bytes([IAC, verb, 24]) + b"\n").events == [
        TelnetOptionRequested("c", verb, 24),
        LineReceived("c", b""),
    ]


@pytest.mark.parametrize("verb", [DONT, WONT])
def test_option_refusals_need_no_answer(verb):
    assert lines(b"a" + bytes([IAC, verb, 1]) + b"b\n") == [b"ab"]


def test_iac_iac_is_a_literal_0xff_byte():
    assert lines(b"a" + bytes([IAC, IAC]) + b"b\n") == [b"a\xffb"]


def test_0xff_before_a_non_command_byte_stays_as_data():
    assert lines(b"a\xffb\n\xff\n") == [b"a\xffb", b"\xff"]


def test_a_subnegotiation_is_removed():
    assert lines(b"LOG" + bytes([IAC, SB, 24, 0]) + b"xterm" + bytes([IAC, SE]) + b"IN a\n") == [
        b"LOGIN a"
    ]


def test_a_subnegotiation_is_abandoned_at_the_next_lf():
    assert lines(bytes([IAC, SB, 24]) + b"junk\nPING\n") == [b"", b"PING"]


def test_an_unfinished_option_command_is_abandoned_at_lf():
    assert lines(b"a" + bytes([IAC, DO]) + b"\nPING\n") == [b"a", b"PING"]


def test_telnet_bytes_do_not_count_toward_max_line():
    padded = b"x" * 5 + bytes([IAC, NOP]) * 20 + bytes([IAC, SB]) + b"s" * 50 + bytes([IAC, SE])
    assert lines(padded + b"y" * 5 + b"\n", max_line=10) == [b"x" * 5 + b"y" * 5]


def test_a_telnet_command_split_across_feeds_is_still_removed():
    framer = LineFramer("c")
    got = []
    for byte in bytes([IAC, DO, TIMING_MARK]) + b"hi\n":
        framer.feed(bytes([byte]))
        got += framer.take(UNLIMITED, UNLIMITED).events
    assert got == [TelnetOptionRequested("c", DO, TIMING_MARK), LineReceived("c", b"hi")]


# -- a TLS client on the plaintext port -------------------------------------------


@pytest.mark.parametrize("cut", [1, 2, 5])
def test_a_stream_that_begins_with_a_tls_record_is_reported_once_and_ignored(cut):
    hello = b"\x16\x03\x01\x02\x00\x01" + b"\x00" * 40 + b"\nPING\n"  # an LF inside, as may happen
    framer = LineFramer("c")
    events = []
    for start in range(0, len(hello), cut):
        framer.feed(hello[start : start + cut])
        events += framer.take(UNLIMITED, UNLIMITED).events
    framer.feed(b"PING\n")
    events += framer.take(UNLIMITED, UNLIMITED).events
    assert events == [TLSHelloReceived("c")]
    assert not framer.pending and framer.buffered == 0


@pytest.mark.parametrize("opening", [b"\x16PING\n", b"\x16", b"PING\n\x16\x03\n", b"\x03\x16\n"])
def test_only_the_first_two_bytes_decide(opening):
    events = frame(opening).events
    assert not any(isinstance(event, TLSHelloReceived) for event in events)


# -- properties against a reference model ----------------------------------------


class _Reference:
    """A byte-at-a-time statement of the framing rules, with no budgets."""

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self.events: list = []
        self.line = bytearray()
        self.overlong, self.overlong_bytes = False, 0
        self.tokens = self.complete = 0
        self.state, self.verb = "data", 0

    def data_byte(self, byte: int) -> None:
        if self.overlong:
            self.overlong_bytes += 1
        elif len(self.line) == self.max_line:
            self.events.append(LineTooLong("c"))
            self.overlong, self.overlong_bytes = True, self.max_line + 1
            self.line.clear()
        else:
            self.line.append(byte)

    def end_line(self) -> None:
        self.complete += 1
        if self.overlong:
            self.tokens += self.overlong_bytes // self.max_line
            self.overlong = False
        else:
            self.tokens += 1
            text = bytes(self.line)
            self.events.append(LineReceived("c", text[:-1] if text.endswith(b"\r") else text))
        self.line.clear()

    def command_byte(self, byte: int) -> bool:
        """One byte after IAC; False if it is data to read again."""
        if byte == IAC or byte < SE:
            self.data_byte(IAC)
            self.state = "data"
            return byte == IAC
        self.state = "option" if WILL <= byte <= DONT else "sub" if byte == SB else "data"
        if self.state == "data":
            self.tokens += 1  # a two-byte command
        self.verb = byte
        return True

    def telnet_byte(self, byte: int) -> bool:
        """One byte inside an option or subnegotiation; False if it is data to read again."""
        if byte == 10:
            self.state = "data"  # abandoned, unpaid
            return False
        if self.state == "option":
            if self.verb in (DO, WILL):
                self.events.append(TelnetOptionRequested("c", self.verb, byte))
            self.tokens += 1
            self.state = "data"
        elif self.state == "sub":
            self.state = "sub-iac" if byte == IAC else "sub"
        elif byte == SE:  # sub-iac
            self.tokens += 1
            self.state = "data"
        else:
            self.state = "sub"
        return True

    def run(self, stream: bytes):
        i = 0
        while i < len(stream):
            byte = stream[i]
            if self.state == "command":
                i += self.command_byte(byte)
                continue
            if self.state != "data" and self.telnet_byte(byte):
                i += 1
                continue
            i += 1
            if byte == IAC:
                self.state = "command"
            elif byte == 10:
                self.end_line()
            else:
                self.data_byte(byte)
        if self.overlong:
            self.tokens += self.overlong_bytes // self.max_line
        return self.events, self.tokens, self.complete


def reference(stream: bytes, max_line: int):
    """The events, the tokens they cost and the complete lines seen, by the rules."""
    if stream.startswith(b"\x16\x03"):  # a TLS record: a TLS client on the plaintext port
        return [TLSHelloReceived("c")], 0, 0
    return _Reference(max_line).run(stream)


streams = st.lists(
    st.one_of(
        st.binary(max_size=30),
        st.sampled_from(
            [b"\n", b"\r\n", b"\xff", bytes([IAC, DO, 1]), bytes([IAC, WILL, 3]), bytes([IAC, IP]),
             bytes([IAC, SB, 24]), bytes([IAC, SE]), bytes([IAC, IAC]), b"LOGIN a\n", b"x" * 17]
        ),
    ),
    max_size=25,
).map(b"".join)


def split_points(stream: bytes):
    return st.lists(st.integers(0, len(stream)), max_size=8).map(sorted)


@given(stream=streams, max_line=st.integers(1, 20), data=st.data())
def test_any_chunking_and_any_budgets_give_the_reference_events(stream, max_line, data):
    cuts = data.draw(split_points(stream))
    chunks = [stream[a:b] for a, b in zip([0] + cuts, cuts + [len(stream)], strict=True)]
    framer = LineFramer("c", max_line=max_line)
    events, tokens, complete = [], 0, 0
    for chunk in chunks:
        framer.feed(chunk)
        for _ in range(4 * len(stream) + 4):  # bounded; each take makes progress
            taken = framer.take(data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4)))
            events += taken.events
            tokens += taken.tokens
            complete += taken.lines
            assert framer.buffered <= max_line + len(stream)
            if not framer.pending:
                break
        assert not framer.pending
    assert (events, tokens, complete) == reference(stream, max_line)


@given(stream=streams)
def test_whole_and_byte_at_a_time_feeding_agree(stream):
    whole = frame(stream, max_line=8).events
    framer = LineFramer("c", max_line=8)
    one_by_one = []
    for byte in stream:
        framer.feed(bytes([byte]))
        one_by_one += framer.take(UNLIMITED, UNLIMITED).events
    assert one_by_one == whole


@given(st.binary(max_size=300), st.integers(1, 64))
def test_arbitrary_bytes_never_raise_and_lines_never_hold_lf_or_pass_the_limit(stream, max_line):
    for event in frame(stream, max_line=max_line, ended=True).events:
        if isinstance(event, LineReceived):
            assert b"\n" not in event.line
            assert len(event.line) <= max_line
