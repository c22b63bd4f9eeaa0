"""The cluster's byte formats: log entries and snapshots.

Each has exactly one encoding, so for *any* bytes the decoder either raises
``DecodeError`` (and nothing else) or returns a value that encodes back to
those very bytes.  Hypothesis checks that on arbitrary bytes, on valid
records damaged at random, and on every kind built from its fields.
"""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from protocol.cluster import (
    Closed,
    ClusterState,
    DecodeError,
    Dm,
    Idle,
    Line,
    Login,
    Msg,
    NodeDown,
    NodeUp,
    Quit,
    Snapshot,
    Who,
    decode_entry,
    decode_snapshot,
    encode_entry,
    encode_snapshot,
)
from protocol.cluster.codec import varint
from protocol.cluster.entries import decode_msg, msg_entry

numbers = st.one_of(st.integers(0, 300), st.integers(0, 2**63 - 1))
small = st.integers(0, 2**20)
payloads = st.binary(max_size=40)
conn_lists = st.lists(numbers, min_size=1, max_size=5, unique=True).map(tuple)

entries = st.one_of(
    st.builds(NodeUp, numbers, numbers),
    st.builds(NodeDown, numbers, numbers, numbers),
    st.builds(Login, numbers, numbers, numbers, payloads),
    st.builds(Msg, numbers, numbers, numbers, payloads),
    st.builds(Dm, numbers, numbers, numbers, payloads),
    st.builds(Who, numbers, numbers, numbers),
    st.builds(Quit, numbers, numbers, numbers),
    st.builds(Line, numbers, numbers, numbers, payloads),
    st.builds(Idle, numbers, numbers, conn_lists),
    st.builds(Closed, numbers, numbers, conn_lists),
)

pairs = st.lists(st.tuples(small, small), max_size=4).map(tuple)
snapshots = st.builds(
    Snapshot,
    position=st.text(max_size=20),
    nodes=pairs,
    retired=st.lists(small, max_size=4).map(tuple),
    users=st.lists(st.tuples(small, small, payloads), max_size=4).map(tuple),
    waiting=pairs,
    closing=pairs,
)


# -- entries -----------------------------------------------------------------------


@given(entries)
def test_every_entry_survives_its_encoding(entry):
    data = encode_entry(entry)
    assert decode_entry(data) == entry
    assert data[0] == 1  # the version byte


@given(st.binary(max_size=60))
@example(b"")
@example(b"\x01")
@example(b"\x02\x03\x01\x01\x01")  # a later version
@example(b"\x01\x00\x01\x01")  # kind 0
@example(b"\x01\x0b\x01\x01")  # kind 11
@example(b"\x01\x06\x80\x00\x01\x01")  # a varint that is not minimal
@example(b"\x01\x06" + b"\xff" * 9 + b"\x01\x01\x01")  # a varint that is too long
@example(b"\x01\x06\x01\x01\x01\x00")  # a WHO with a byte after its end
@example(b"\x01\x09\x01\x01\x02\x05\x05")  # Idle naming a connection twice
@example(b"\x01\x0a\x01\x01\x00")  # Closed naming none
@example(b"\x01\x0a\x01\x01\xff\xff\xff\xff\x0f\x01")  # a count larger than the record
def test_arbitrary_bytes_decode_exactly_or_raise_decode_error(data):
    decodes_exactly_or_is_refused(data)


def decodes_exactly_or_is_refused(data: bytes) -> None:
    try:
        entry = decode_entry(data)
    except DecodeError:
        assert refused_by_the_msg_reader_too(data)
        return
    assert encode_entry(entry) == data
    fields = decode_msg(data)  # the reader's hot path agrees with the general decoder
    if isinstance(entry, Msg):
        assert fields == (entry.author, entry.serial, entry.conn, entry.text)
    else:
        assert fields is None


def refused_by_the_msg_reader_too(data: bytes) -> bool:
    try:
        return decode_msg(data) is None  # not a MSG: the general decoder's refusal stands
    except DecodeError:
        return True


@given(entries, st.data())
def test_damaged_entries_decode_exactly_or_raise_decode_error(entry, data):
    raw = bytearray(encode_entry(entry))
    how = data.draw(st.sampled_from(("flip", "cut", "insert", "append")))
    at = data.draw(st.integers(0, len(raw)))
    if how == "flip" and at < len(raw):
        raw[at] ^= data.draw(st.integers(1, 255))
    elif how == "cut":
        del raw[at:]
    elif how == "insert":
        raw[at:at] = data.draw(st.binary(min_size=1, max_size=3))
    else:
        raw += data.draw(st.binary(min_size=1, max_size=3))
    decodes_exactly_or_is_refused(bytes(raw))


@given(small, small, small, payloads)
def test_the_hot_path_encoder_agrees_with_the_general_one(author, serial, conn, text):
    assert msg_entry(author, serial, conn, text) == encode_entry(Msg(author, serial, conn, text))


def test_a_msg_costs_five_bytes_beside_its_text():
    assert len(encode_entry(Msg(3, 100, 5, b"x" * 64))) == 69
    assert encode_entry(Who(1, 2, 3)) == b"\x01\x06\x01\x02\x03"


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2**14 - 1, 2**14, 2**21 - 1, 2**21, 2**32, 2**63 - 1])
def test_varints_are_minimal_and_round_trip(value):
    data = varint(value)
    assert len(data) == max(1, (value.bit_length() + 6) // 7)
    assert decode_entry(b"\x01\x01" + varint(value) + data) == NodeUp(value, value)


@pytest.mark.parametrize("entry", [Idle(1, 1, ()), Closed(1, 1, (2, 2))])
def test_the_encoder_refuses_what_the_decoder_would(entry):
    with pytest.raises(ValueError):
        encode_entry(entry)


# -- snapshots ---------------------------------------------------------------------


@given(snapshots)
def test_every_snapshot_survives_its_encoding(snapshot):
    assert decode_snapshot(encode_snapshot(snapshot)) == snapshot


@given(st.binary(max_size=80))
@example(b"\x01S")
@example(b"\x01S\x00\x00\x00\x00\x00\x00")
@example(b"\x01S\x02\xff\xfe\x00\x00\x00\x00\x00")  # a position that is not UTF-8
@example(b"\x02S\x00\x00\x00\x00\x00\x00")
@example(b"\x01\x01\x01\x01")  # an entry is not a snapshot
def test_arbitrary_bytes_decode_as_a_snapshot_exactly_or_raise_decode_error(data):
    try:
        snapshot = decode_snapshot(data)
    except DecodeError:
        return
    assert encode_snapshot(snapshot) == data


@given(snapshots)
def test_restoring_any_decoded_snapshot_gives_a_state_or_decode_error(snapshot):
    """A snapshot that decodes but describes no possible state is refused the same way."""
    try:
        state = ClusterState.from_snapshot(snapshot)
    except DecodeError:
        return
    assert ClusterState.from_snapshot(state.snapshot()).snapshot() == state.snapshot()


@pytest.mark.parametrize(
    "snapshot",
    [
        Snapshot(users=((1, 1, b"ann"), (2, 1, b"ANN"))),  # one name twice
        Snapshot(users=((1, 1, b"a b"),)),  # not a name
        Snapshot(users=((1, 1, b"ann"),), waiting=((1, 1),)),  # one connection twice
        Snapshot(nodes=((1, 1), (1, 2))),  # one node twice
        Snapshot(nodes=((1, 1),), retired=(1,)),  # live and retired
    ],
)
def test_snapshots_that_describe_no_state_are_refused(snapshot):
    with pytest.raises(DecodeError):
        ClusterState.from_snapshot(snapshot)
