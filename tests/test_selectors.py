"""The loop under every readiness API this platform has, not only its default.

``selectors.DefaultSelector`` is epoll on Linux, kqueue on macOS and plain
``select`` on Windows.  The loop is written against the ``selectors``
interface alone, so each of them must give the same behaviour; running the
core paths under each here (the seed README's sessions among them: this is
their raw-TCP transport) means a Linux run also checks the Windows
(``SelectSelector``) and BSD-style (``PollSelector``) ones: reading,
write interest when a kernel buffer fills, end of stream, and timers.
"""

from __future__ import annotations

import selectors
import time

import pytest
import seed
from netutil import Client, SmallBufferClient, login, threaded_server

KINDS = [
    name
    for name in ("SelectSelector", "PollSelector", "EpollSelector", "KqueueSelector", "DevpollSelector")
    if hasattr(selectors, name)
]


@pytest.fixture(params=KINDS)
def selector_kind(request):
    return getattr(selectors, request.param)


@pytest.mark.parametrize("session", seed.SESSIONS, ids=seed.session_name)
def test_the_seed_readme_sessions_over_raw_tcp(selector_kind, session):
    """The raw-TCP transport of tests/seed.py: every selector kind, byte for byte."""
    with threaded_server(selector_kind()) as server:
        assert type(server.reactor._selector) is selector_kind
        seed.play(session, lambda: Client(server.port))


def test_a_reader_that_falls_behind_gets_every_line_in_order_once_it_reads(selector_kind):
    """Output past the kernel buffers waits in the queue, and write interest sends it."""
    with threaded_server(selector_kind(), rate=0, max_output=64 << 20) as server:
        sender = login(server.port, "sender")
        reader = SmallBufferClient(server.port, rcvbuf=4096)
        reader.say("LOGIN reader")
        reader.expect("OK")
        port = reader.sock.getsockname()[1]
        pad = b"z" * 4000
        count = 2000  # 8 MB: more than the kernel buffers between us can hold
        sender.send(b"".join(b"MSG %05d %s\n" % (i, pad) for i in range(count)))
        sender.sync()  # every MSG handled; the reader has read nothing yet
        conn = next(c for c in server.reactor._connections if c.peer.endswith(f", {port})"))
        assert conn.queued > 0, "nothing was queued: the test did not exercise write interest"
        for i in range(count):
            assert reader.line() == b"MSG sender %05d %s" % (i, pad)
        reader.sync()


def test_end_of_stream_is_answered_then_closed(selector_kind):
    with threaded_server(selector_kind()) as server:
        client = Client(server.port)
        client.send(b"LOGIN eve\nPING\n")
        client.half_close()
        assert client.read_until_closed() == b"OK\nPONG\n"


def test_the_idle_timeout_fires(selector_kind):
    with threaded_server(selector_kind(), idle_timeout=0.3) as server:
        client = login(server.port, "sleepy")
        started = time.monotonic()
        data = client.read_until_closed(timeout=5)
        elapsed = time.monotonic() - started
        assert data.startswith(b"ERR ") and data.endswith(b"\n"), data
        assert 0.2 <= elapsed < 3, elapsed
