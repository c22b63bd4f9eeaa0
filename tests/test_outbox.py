"""Outbox: what each connection is handed equals a naive per-recipient rendering."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from reactor.outbox import Outbox

CONNS = ["a", "b", "c", "d", "e"]


def drained(outbox: Outbox):
    calls = []
    outbox.drain(lambda conn, pieces, foreign: calls.append((conn, list(pieces), foreign)))
    return calls


def by_conn(calls):
    """{conn: (bytes handed over, how many of them are replies)}"""
    result = {}
    for conn, pieces, reply_bytes in calls:
        assert conn not in result, "one delivery per connection per drain"
        result[conn] = (b"".join(pieces), reply_bytes)
    return result


def test_one_run_hands_every_member_the_same_bytes_object():
    outbox = Outbox()
    audience = ("a", "b", "c")
    outbox.file_broadcast(b"MSG a 1\n", audience, "a")
    outbox.file_broadcast(b"MSG a 2\n", audience, "a")
    calls = drained(outbox)
    shared = [pieces[0] for conn, pieces, _ in calls if conn in ("b", "c")]
    assert shared[0] is shared[1] and shared[0] == b"MSG a 1\nMSG a 2\n"
    assert "a" not in by_conn(calls)  # the sender is handed nothing, not even an empty list


def test_private_lines_keep_their_place_between_broadcasts():
    outbox = Outbox()
    audience = ("a", "b")
    outbox.file_broadcast(b"1\n", audience, None)
    outbox.file_reply("b", b"PONG\n")
    outbox.file_broadcast(b"2\n", audience, None)
    result = by_conn(drained(outbox))
    assert result["b"] == (b"1\nPONG\n2\n", 5)
    assert result["a"] == (b"1\n2\n", 0)


def test_replies_are_counted_and_deliveries_are_not():
    outbox = Outbox()
    outbox.file_reply("a", b"OK\n")
    outbox.file_direct("b", b"DM a hi\n")
    outbox.file_reply("b", b"PONG\n")
    assert by_conn(drained(outbox)) == {"a": (b"OK\n", 3), "b": (b"DM a hi\nPONG\n", 5)}


def test_drain_empties_the_outbox_and_output_filed_meanwhile_waits():
    outbox = Outbox()
    outbox.file_reply("a", b"x\n")
    later = []

    def hand_over(conn, pieces, reply_bytes):
        outbox.file_reply("b", b"later\n")
        later.append(conn)

    outbox.drain(hand_over)
    assert later == ["a"]
    assert outbox
    assert by_conn(drained(outbox)) == {"b": (b"later\n", 6)}
    assert not outbox


def naive(ops):
    result = {}
    for op in ops:
        kind = op[0]
        if kind in ("reply", "deliver"):
            _, conn, data = op
            text, replies = result.get(conn, (b"", 0))
            result[conn] = (text + data, replies + (len(data) if kind == "reply" else 0))
        else:
            _, data, audience, exclude = op
            for conn in audience:
                if conn != exclude:
                    text, replies = result.get(conn, (b"", 0))
                    result[conn] = (text + data, replies)
    return result


@st.composite
def operations(draw):
    audiences = draw(
        st.lists(st.lists(st.sampled_from(CONNS), unique=True).map(tuple), min_size=1, max_size=3)
    )
    ops = []
    for index in range(draw(st.integers(0, 30))):
        kind = draw(st.sampled_from(["reply", "deliver", "broadcast", "broadcast"]))
        data = b"%d\n" % index
        if kind == "broadcast":
            audience = draw(st.sampled_from(audiences))  # the same objects recur, like the machine's
            exclude = draw(st.one_of(st.none(), st.sampled_from(audience or ("a",))))
            ops.append(("broadcast", data, audience, exclude))
        else:
            ops.append((kind, draw(st.sampled_from(CONNS)), data))
    return ops


def filed(ops) -> Outbox:
    outbox = Outbox()
    for op in ops:
        if op[0] == "reply":
            outbox.file_reply(op[1], op[2])
        elif op[0] == "deliver":
            outbox.file_direct(op[1], op[2])
        else:
            outbox.file_broadcast(op[1], op[2], op[3])
    return outbox


@given(operations())
def test_drain_equals_the_naive_rendering(ops):
    got = {conn: value for conn, value in by_conn(drained(filed(ops))).items() if value[0]}
    assert got == {conn: value for conn, value in naive(ops).items() if value[0]}


@given(operations())
def test_a_share_caller_hands_out_exactly_the_naive_rendering(ops):
    """The reactor's hot path: one ``share`` call for a single run, ``hand_over`` for the rest."""
    calls = []
    runs = []

    def share(audience, payload, skip):
        runs.append(payload)
        for conn in audience:
            if conn not in skip:
                calls.append((conn, [payload], 0))

    filed(ops).drain(lambda conn, pieces, replies: calls.append((conn, list(pieces), replies)), share)
    got = {conn: value for conn, value in by_conn(calls).items() if value[0]}
    assert got == {conn: value for conn, value in naive(ops).items() if value[0]}
    audiences = [op[2] for op in ops if op[0] == "broadcast"]
    run_count = sum(1 for i, audience in enumerate(audiences) if i == 0 or audience is not audiences[i - 1])
    assert len(runs) == (1 if run_count == 1 else 0)  # the hot path is taken exactly for one run
