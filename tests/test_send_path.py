"""The reactor's one send path, ``Reactor._send_to``, on its unusual members.

A turn's output reaches the kernel through one loop, whether it is a
broadcast shared by a whole audience (``_share``, the hot path) or one
connection's own output (``_hand_over``).  Most recipients take one
``send`` that the kernel accepts whole; the server tests cover that.  These
drive the loop directly, through both entries, on real loopback TCP
connections, with one member in the middle of the audience that is not
usual: reset by its peer, with a kernel buffer that takes only part of the
bytes, or none at all (EAGAIN).  Whatever happens to it, the members after
it get the same bytes, and it is closed, queued or evicted as the rules say.
"""

from __future__ import annotations

import socket
import struct

import pytest

from reactor.config import Config
from reactor.connection import CLOSED, WRITE
from reactor.loop import Reactor

PAYLOAD = b"MSG u1 hello\n"


def share(reactor, members, payload):
    """The hot path: one call for the whole audience."""
    reactor._share(members, payload, {})


def hand_over(reactor, members, payload):
    """The general path: each member's own output, a line from another user."""
    for conn in members:
        reactor._hand_over(conn, [payload], 0)


entries = pytest.mark.parametrize("send", [share, hand_over])


def loop_ended(reactor):
    """The connections whose end the machine will hear of at the flush."""
    return reactor._closer.ended


@pytest.fixture
def room():
    """A reactor and three connections (server side, client side), in audience order.

    With ``small_middle`` the middle connection's buffers are tiny (its
    client never reads), so a large send to it is cut short.
    """
    listener = socket.create_server(("127.0.0.1", 0))
    reactors = []
    clients = []

    def make(max_output: int, small_middle: bool = False):
        reactor = Reactor([listener], Config(rate=0, idle_timeout=0, max_output=max_output))
        reactors.append(reactor)
        members = []
        for index in range(3):
            small = small_middle and index == 1
            client = socket.socket()
            if small:
                client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)  # before connect
            client.settimeout(5)
            client.connect(listener.getsockname())
            clients.append(client)
            sock, address = listener.accept()
            if small:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 2048)
            reactor.adopt(sock, address)
            members.append(next(conn for conn in reactor._connections if conn.sock is sock))
        return reactor, members, clients[-3:]

    yield make
    for client in clients:
        client.close()
    for reactor in reactors:
        reactor.close()


def receive(client: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = client.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


@entries
def test_a_reset_member_is_closed_and_the_members_after_it_still_get_the_bytes(room, send):
    reactor, (first, middle, last), (first_client, middle_client, last_client) = room(1 << 20)
    middle_client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    middle_client.close()  # RST
    for _ in range(2):  # on loopback the reset is already there; elsewhere the next send sees it
        send(reactor, (first, middle, last), PAYLOAD)
        if middle.phase is CLOSED:
            break
    assert middle.phase is CLOSED
    assert middle in loop_ended(reactor)  # the machine will be told, at the flush
    assert first.phase is not CLOSED and last.phase is not CLOSED
    assert receive(first_client, len(PAYLOAD)) == PAYLOAD
    assert receive(last_client, len(PAYLOAD)) == PAYLOAD


@entries
def test_a_member_whose_kernel_buffer_fills_keeps_the_rest_queued_and_waits_to_write(room, send):
    reactor, (first, middle, last), (first_client, middle_client, last_client) = room(
        1 << 30, small_middle=True
    )
    big = b"MSG u1 " + b"x" * (512 << 10) + b"\n"
    send(reactor, (middle,), big)
    assert middle.queue, "the kernel took 512 KiB at once: the test cannot see a partial send"
    assert middle.written + middle.queued == len(big)
    assert bytes(middle.queue[0]) == big[middle.written :]  # the unsent tail, in order
    assert middle.mask & WRITE  # the selector will say when it can take more
    assert middle.foreign_bytes == middle.queued  # other users' bytes: they count toward eviction
    # A later broadcast goes behind the waiting tail, not ahead of it.
    send(reactor, (first, middle, last), PAYLOAD)
    assert bytes(middle.queue[-1]) == PAYLOAD
    assert receive(first_client, len(PAYLOAD)) == PAYLOAD
    assert receive(last_client, len(PAYLOAD)) == PAYLOAD


@entries
def test_a_member_whose_kernel_takes_nothing_queues_it_all(room, send):
    """EAGAIN: the kernel buffer is already full, and the send takes no byte."""
    reactor, (first, middle, last), (first_client, middle_client, last_client) = room(
        1 << 30, small_middle=True
    )
    middle.sock.setblocking(False)
    try:
        while True:
            middle.sock.send(b"." * 65536)  # fill it behind the reactor's back
    except BlockingIOError:
        pass
    written_before = middle.written
    send(reactor, (first, middle, last), PAYLOAD)
    assert middle.written == written_before
    assert [bytes(piece) for piece in middle.queue] == [PAYLOAD]
    assert middle.mask & WRITE
    assert receive(first_client, len(PAYLOAD)) == PAYLOAD
    assert receive(last_client, len(PAYLOAD)) == PAYLOAD


@entries
def test_a_member_pushed_past_max_output_is_evicted_and_the_rest_are_served(room, send):
    """512 KiB to everyone, with --max-output 256 KiB: only the member whose
    kernel took just a few KiB of it is a slow consumer."""
    reactor, (first, middle, last), (first_client, middle_client, last_client) = room(
        256 << 10, small_middle=True
    )
    big = b"MSG u1 " + b"x" * (512 << 10) + b"\n"
    send(reactor, (first, middle, last), big)
    assert middle.phase is CLOSED  # evicted at once
    assert middle in loop_ended(reactor)  # the others will be told it left
    for conn, client in ((first, first_client), (last, last_client)):
        assert conn.phase is not CLOSED
        assert conn.written + conn.queued == len(big)  # sent, or the rest queued in order
        assert receive(client, conn.written) == big[: conn.written]
