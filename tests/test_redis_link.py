"""Tests for reactor.engine: the cluster's connection to Redis, against a real redis-server.

Layers: the URL parser and the redacted address (pure); ``Backoff`` and
``encode_command`` (pure); then ``RedisLink`` driven by a small loop of our
own (select, on_events, tick, flush: the reactor's order) against a
``redis-server`` each test starts (tests/redisutil.py): pipelining, AUTH,
ACL users, SELECT, error replies, a killed and restarted Redis with the
backoff shown on an injected clock, a paused Redis that never blocks the
loop, a blocking XREAD on a second link; and the standalone server, which
must not import hiredis.
"""

from __future__ import annotations

import errno
import logging
import os
import selectors
import socket
import subprocess
import sys
import time
from urllib.parse import quote

import hypothesis
import pytest
from hypothesis import given
from hypothesis import strategies as st
from loopharness import FakeClock
from redisutil import redis_servers

from reactor.config import Config
from reactor.engine import (
    INSTALL_HINT,
    Backoff,
    EngineError,
    LinkLost,
    LinkState,
    MissingExtra,
    RedisAddress,
    RedisLink,
    ReplyError,
    encode_command,
    encode_xadd,
    hiredis_available,
    load_hiredis,
    parse_redis_url,
)
from reactor.logs import LOGGER_NAME

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WAIT = 10.0  # seconds any wait for the engine may take before the test fails
PASSWORD = "s3cret:/@#?pw"  # every character a URL cares about
ENCODED = "s3cret%3A%2F%40%23%3Fpw"


# -- the URL -------------------------------------------------------------------------

GOOD_URLS = [
    ("redis://127.0.0.1", RedisAddress(host="127.0.0.1")),
    ("redis://localhost:6380", RedisAddress(host="localhost", port=6380)),
    ("REDIS://Redis.Example.org:1/15", RedisAddress(host="Redis.Example.org", port=1, db=15)),
    ("redis://127.0.0.1/", RedisAddress(host="127.0.0.1")),
    ("redis://127.0.0.1:65535/0", RedisAddress(host="127.0.0.1", port=65535)),
    ("redis://[::1]", RedisAddress(host="::1")),
    ("redis://[::1]:7000/2", RedisAddress(host="::1", port=7000, db=2)),
    ("redis://:pw@h", RedisAddress(host="h", password="pw")),
    ("redis://alice:pw@h:1/1", RedisAddress(host="h", port=1, db=1, username="alice", password="pw")),
    (f"redis://:{ENCODED}@h", RedisAddress(host="h", password=PASSWORD)),
    ("redis://al%69ce:p%C3%A9@h", RedisAddress(host="h", username="alice", password="p\u00e9")),
    ("redis://u:a:b@h", RedisAddress(host="h", username="u", password="a:b")),
    ("unix:///tmp/redis.sock", RedisAddress(path="/tmp/redis.sock")),
    ("unix:///tmp/redis.sock?db=3", RedisAddress(path="/tmp/redis.sock", db=3)),
    ("unix://:pw@/run/r.sock", RedisAddress(path="/run/r.sock", password="pw")),
    ("unix://bob:pw@/run/r.sock?db=1", RedisAddress(path="/run/r.sock", db=1, username="bob", password="pw")),
]


@pytest.mark.parametrize("text, expected", GOOD_URLS)
def test_good_urls_parse(text, expected):
    assert parse_redis_url(text) == expected


BAD_URLS = [
    ("", "empty"),
    ("127.0.0.1:6379", "must start with redis:// or unix://"),
    ("http://h", "must start with redis:// or unix://"),
    ("rediss://h", "rediss:// (TLS to Redis) is not supported"),
    ("rediss://:hunter2@h", "not supported"),
    ("redis://", "no host"),
    ("redis://:6379", "no host"),
    ("redis://h:0", "port must be a whole number from 1 to 65535"),
    ("redis://h:65536", "port"),
    ("redis://h:port", "port"),
    ("redis://h:+1", "port"),
    ("redis://h:", "port"),
    ("redis://h/db", "database number"),
    ("redis://h/-1", "database number"),
    ("redis://h/1/2", "database number"),
    ("redis://h/99999999999", "database number"),
    ("redis://h?db=1", "takes no ?query"),
    ("redis://h#x", "fragment"),
    ("redis://::1", "brackets"),
    ("redis://[::1", "brackets"),
    ("redis://[nothost]", "not an IPv6 address"),
    ("redis://[::1]x", "brackets"),
    ("redis://h st", "space"),
    ("redis://h\x00", "control character"),
    ("redis://exa*mple", "host must be a name"),
    ("redis://hunter2@h", "no password"),
    ("redis://alice:@h", "password before @ is empty"),
    ("redis://:%ff%fe@h", "not UTF-8"),
    ("unix://", "absolute path"),
    ("unix://h/tmp/s", "no host"),
    ("unix:///", "absolute path"),
    ("unix:///tmp/", "absolute path"),
    ("unix:///tmp/s?db=x", "database number"),
    ("unix:///tmp/s?timeout=1", "?db=N"),
    ("unix:///tmp/s?db=1&x=2", "?db=N"),
]


@pytest.mark.parametrize("text, message", BAD_URLS)
def test_bad_urls_are_refused_with_a_reason(text, message):
    with pytest.raises(ValueError) as info:
        parse_redis_url(text)
    assert message in str(info.value)


SECRET_URLS = [
    "redis://:hunter2@h:99999",  # a bad port
    "redis://u:hunter2@h/x",  # a bad database
    "redis://u:hun/ter2@h",  # an unencoded slash: part of the password looks like a port and a path
    "redis://u:hunter2@h:6379/hunter2",
    "redis://hunter2@h",  # a password without its colon
    "redis://:hunter2@h?db=1",
    "redis://:hunter2@h#hunter2",
    "redis://:hunter2@[::1",
    "rediss://:hunter2@h",
    "unix://:hunter2@host/p",
    "unix://:hunter2@/p?hunter2=1",
    "hunter2://h",
]


@pytest.mark.parametrize("text", SECRET_URLS)
def test_no_refusal_quotes_any_part_of_the_url(text):
    with pytest.raises(ValueError) as info:
        parse_redis_url(text)
    assert "hunter2" not in str(info.value)
    assert "hun" not in str(info.value)


@given(
    user=st.one_of(st.none(), st.text(min_size=1, max_size=20)),
    password=st.text(min_size=1, max_size=30),
    host=st.sampled_from(["127.0.0.1", "redis.example.org", "::1", "r_1"]),
    port=st.integers(1, 65535),
    db=st.integers(0, 2**31 - 1),
)
def test_any_credentials_round_trip_percent_encoded(user, password, host, port, db):
    hypothesis.assume(not any(0xD800 <= ord(c) <= 0xDFFF for c in (user or "") + password))
    shown_host = f"[{host}]" if ":" in host else host
    text = f"redis://{quote(user or '', safe='')}:{quote(password, safe='')}@{shown_host}:{port}/{db}"
    address = parse_redis_url(text)
    assert address == RedisAddress(host=host, port=port, db=db, username=user, password=password)
    assert "***" in str(address)


def test_the_address_never_shows_its_password():
    address = parse_redis_url(f"redis://alice:{ENCODED}@127.0.0.1:6380/2")
    assert address.password == PASSWORD
    assert str(address) == "redis://alice:***@127.0.0.1:6380/2"
    assert repr(address) == "RedisAddress('redis://alice:***@127.0.0.1:6380/2')"
    assert f"{address}" == f"{address!s}" == str(address)
    config = Config(cluster=address)
    for shown in (repr(address), str(address), repr(config), str(config), repr([address]), repr({"a": address})):
        assert PASSWORD not in shown
        assert "s3cret" not in shown
        assert ENCODED not in shown
    assert str(parse_redis_url("redis://:pw@[::1]")) == "redis://:***@[::1]:6379/0"
    assert str(parse_redis_url("unix://:pw@/tmp/s?db=4")) == "unix://:***@/tmp/s?db=4"
    assert str(parse_redis_url("unix:///tmp/s")) == "unix:///tmp/s"
    assert str(parse_redis_url("redis://h")) == "redis://h:6379/0"


def test_the_address_never_shows_its_password_through_logging(caplog):
    address = parse_redis_url(f"redis://alice:{ENCODED}@127.0.0.1:6380/2")
    logger = logging.getLogger(LOGGER_NAME)
    with caplog.at_level(logging.DEBUG, logger=LOGGER_NAME):
        logger.warning("engine %s", address)
        logger.warning("engine %r", address)
        logger.warning("config %r", Config(cluster=address))
        logger.warning("engine %s", {"address": address})
    assert len(caplog.records) == 4
    for record in caplog.records:
        assert "s3cret" not in record.getMessage()
    assert "s3cret" not in caplog.text


# -- pure parts ------------------------------------------------------------------------


def test_commands_are_arrays_of_bulk_strings():
    assert encode_command(["PING"]) == b"*1\r\n$4\r\nPING\r\n"
    assert encode_command(["SET", "k\u00e9", 12, b"\r\n", 0.5, memoryview(b"mv")]) == (
        b"*6\r\n$3\r\nSET\r\n$3\r\nk\xc3\xa9\r\n$2\r\n12\r\n$2\r\n\r\n\r\n$3\r\n0.5\r\n$2\r\nmv\r\n"
    )
    assert encode_command(["SET", "k", b""]) == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n"
    assert encode_command([bytearray(b"ba"), memoryview(b"\x01\x02\x03\x04").cast("H"), -7]) == (
        b"*3\r\n$2\r\nba\r\n$4\r\n\x01\x02\x03\x04\r\n$2\r\n-7\r\n"
    )
    with pytest.raises(TypeError):
        encode_command(["SET", "k", True])


@given(st.binary(min_size=1, max_size=20), st.binary(max_size=5),
       st.lists(st.one_of(st.binary(max_size=40), st.binary(min_size=1000, max_size=1100)), min_size=1, max_size=8))
def test_the_xadd_encoder_writes_what_encode_command_writes(key, field, values):
    expected = encode_command([b"XADD", key, b"*", *(part for value in values for part in (field, value))])
    assert encode_xadd(key, field, values) == expected


def test_backoff_doubles_to_its_cap_with_jitter_between_half_and_all_of_a_step():
    draws = iter([0.0, 1.0, 0.5, 0.0, 1.0, 0.0, 1.0, 0.25])
    backoff = Backoff(0.1, 1.0, random=lambda: next(draws))
    delays = [backoff.next_delay() for _ in range(7)]
    assert delays == pytest.approx([0.05, 0.2, 0.3, 0.4, 1.0, 0.5, 1.0])
    assert backoff.failures == 7
    backoff.reset()
    assert backoff.failures == 0
    assert backoff.next_delay() == pytest.approx(0.0625)
    huge = Backoff(0.1, 10.0, random=lambda: 1.0)
    huge.failures = 10**6
    assert huge.next_delay() == 10.0
    with pytest.raises(ValueError):
        Backoff(0, 1)
    with pytest.raises(ValueError):
        Backoff(2, 1)


def test_reply_error_code_is_the_first_word():
    assert ReplyError("WRONGTYPE Operation against a key").code == "WRONGTYPE"
    assert ReplyError("").code == ""
    assert issubclass(ReplyError, EngineError) and issubclass(LinkLost, EngineError)


# -- hiredis stays optional ----------------------------------------------------------------


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_the_standalone_server_does_not_import_hiredis():
    result = run_python(
        "import sys, reactor.daemon, reactor.engine, reactor.config\n"
        "reactor.config.parse_config(['--cluster', 'redis://:pw@127.0.0.1/1', '--workers', '2'], {})\n"
        "reactor.engine.parse_redis_url('redis://h')\n"
        "assert reactor.engine.hiredis_available()\n"
        "assert 'hiredis' not in sys.modules, 'hiredis was imported'\n"
    )
    assert result.returncode == 0, result.stderr


def test_without_hiredis_the_link_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "hiredis", None)  # what a missing package looks like to import
    assert not hiredis_available()
    with pytest.raises(MissingExtra) as info:
        load_hiredis()
    assert str(info.value) == INSTALL_HINT
    assert 'pip install "chat-reactor[cluster]"' in INSTALL_HINT
    link = RedisLink(parse_redis_url("redis://127.0.0.1:1"), clock=time.monotonic)
    with pytest.raises(MissingExtra):
        link.start()  # before any socket exists
    assert link.fileno() == -1 and link.state is LinkState.WAITING and link.attempts == 0


# -- a small loop, as the reactor will run the links -----------------------------------------



class Loop:
    """select -> on_events -> tick -> flush, the reactor's order; every wait bounded."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.links: list[RedisLink] = []

    def link(self, url: str, **options) -> RedisLink:
        options.setdefault("clock", time.monotonic)
        link = RedisLink(parse_redis_url(url), selector=self.selector, **options)
        self.links.append(link)
        return link

    def turn(self, timeout: float = 0.05) -> None:
        for key, mask in self.selector.select(timeout):
            key.data.on_events(mask)
        for link in self.links:
            link.tick()
        for link in self.links:
            link.flush()

    def until(self, condition, what: str, timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"not {what} within {timeout} s: {self.links}"
            self.turn()

    def close(self) -> None:
        for link in self.links:
            link.close()
        self.selector.close()


@pytest.fixture
def loop():
    loop = Loop()
    yield loop
    loop.close()


@pytest.fixture
def redis(tmp_path):
    with redis_servers(tmp_path) as make:
        yield make


class Replies:
    """A callback that records what it gets, in order."""

    def __init__(self) -> None:
        self.got: list = []

    def __call__(self, reply) -> None:
        self.got.append(reply)


def connect(loop: Loop, url: str, **options) -> RedisLink:
    link = loop.link(url, **options)
    link.start()
    loop.until(lambda: link.ready, "ready")
    return link


def call(loop: Loop, link: RedisLink, *args):
    """One command through the link, its reply waited for."""
    replies = Replies()
    link.send(list(args), replies)
    loop.until(lambda: replies.got, f"a reply to {args[0]}")
    return replies.got[0]


# -- the link against a real Redis -------------------------------------------------------------


def test_a_thousand_pipelined_commands_leave_in_one_write_and_replies_come_in_order(loop, redis):
    server = redis()
    link = connect(loop, server.url(), client_name="chat-test")
    assert link.interest == selectors.EVENT_READ
    assert loop.selector.get_key(link.fileno()).data is link
    replies = Replies()
    for i in range(1000):
        link.send(["ECHO", f"m{i}"], lambda reply, i=i: replies((i, reply)))
    assert link.pending_commands == 1000
    assert link.unsent_bytes == sum(len(encode_command(["ECHO", f"m{i}"])) for i in range(1000))
    assert server.command("GET", "nothing") is None  # nothing was written yet: send() only queues
    link.flush()
    assert link.unsent_bytes == 0  # one send took all of it (27 KB on loopback)
    loop.until(lambda: len(replies.got) == 1000, "1000 replies")
    assert replies.got == [(i, f"m{i}".encode()) for i in range(1000)]
    assert link.pending_commands == 0
    assert link._sock.gettimeout() == 0.0  # non-blocking from birth
    clients = server.command("CLIENT", "LIST").decode()
    assert "name=chat-test" in clients


def test_an_encoded_command_is_sent_as_it_is(loop, redis):
    server = redis()
    link = connect(loop, server.url())
    replies = Replies()
    link.send_encoded(encode_xadd(b"s", b"e", [b"one", b"", b"three"]), replies)
    link.send(["XRANGE", "s", "-", "+"], replies)
    link.flush()
    loop.until(lambda: len(replies.got) == 2, "two replies")
    entry_id, ((read_id, fields),) = replies.got
    assert read_id == entry_id and fields == [b"e", b"one", b"e", b"", b"e", b"three"]
    link.close()
    with pytest.raises(RuntimeError):
        link.send_encoded(b"*1\r\n$4\r\nPING\r\n")


def test_password_only_auth(loop, redis):
    server = redis(password=PASSWORD)
    link = connect(loop, f"redis://:{ENCODED}@127.0.0.1:{server.port}")
    assert call(loop, link, "SET", "k", "v") == b"OK"
    assert server.command("GET", "k") == b"v"


def test_acl_user_auth(loop, redis):
    server = redis(password="defaultpw", users=[("alice", PASSWORD)])
    link = connect(loop, f"redis://alice:{ENCODED}@127.0.0.1:{server.port}")
    assert call(loop, link, "ACL", "WHOAMI") == b"alice"


@pytest.mark.parametrize(
    "credentials, expected",
    [
        (":wrong@", "AUTH refused: WRONGPASS"),
        ("alice:wrong@", "AUTH refused: WRONGPASS"),
        ("nobody:wrong@", "AUTH refused: WRONGPASS"),
        ("", "CLIENT SETNAME refused: NOAUTH"),
    ],
    ids=["wrong-password", "wrong-user-password", "unknown-user", "no-password"],
)
def test_refused_credentials_give_a_clear_reason_and_log_one_warning_per_attempt(
    loop, redis, caplog, credentials, expected
):
    server = redis(password=PASSWORD, users=[("alice", PASSWORD)])
    clock = FakeClock()
    lost = []
    link = loop.link(
        f"redis://{credentials}127.0.0.1:{server.port}", clock=clock, random=lambda: 0.0, on_lost=lost.append
    )
    with caplog.at_level(logging.INFO, logger=LOGGER_NAME):
        link.start()
        loop.until(lambda: len(lost) == 1, "refused")
        clock.advance(link.wakeup_at - clock())
        loop.until(lambda: len(lost) == 2, "refused again")
    assert not link.ready
    assert link.state is LinkState.WAITING
    assert lost[0].startswith(expected) and lost[1] == lost[0]
    assert link.last_error == lost[0]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"engine {link.address}: connection attempt {n} failed ({lost[0]}); retrying in {delay:.2f} s"
        for n, delay in ((1, 0.05), (2, 0.1))
    ]
    assert "wrong" not in caplog.text and "s3cret" not in caplog.text


def test_select_chooses_the_database(loop, redis):
    server = redis()
    link = connect(loop, server.url(db=3))
    assert call(loop, link, "SET", "where", "three") == b"OK"
    assert server.command("GET", "where", db=3) == b"three"
    assert server.command("GET", "where") is None


def test_unix_socket_with_password_and_database(loop, redis):
    server = redis(unix_socket=True, password="pw")
    link = connect(loop, server.url(password="pw", db=2))
    assert link.address.is_unix
    assert call(loop, link, "SET", "k", "unix") == b"OK"
    assert server.command("GET", "k", db=2) == b"unix"


def test_error_replies_reach_their_callbacks_as_values(loop, redis):
    server = redis()
    link = connect(loop, server.url())
    replies = Replies()
    link.send(["SET", "text", "abc"], replies)
    link.send(["INCR", "text"], replies)
    link.send(["NOSUCHCOMMAND", "x"], replies)
    link.send(["MULTI"], replies)
    link.send(["SET", "n", "1"], replies)
    link.send(["LPUSH", "n", "x"], replies)  # fails inside EXEC: WRONGTYPE
    link.send(["EXEC"], replies)
    link.send(["PING"], replies)
    loop.until(lambda: len(replies.got) == 8, "8 replies")
    ok, not_a_number, unknown, multi, queued1, queued2, exec_result, pong = replies.got
    assert ok == b"OK" and multi == b"OK" and queued1 == queued2 == b"QUEUED" and pong == b"PONG"
    assert isinstance(not_a_number, ReplyError) and not_a_number.code == "ERR"
    assert isinstance(unknown, ReplyError) and "unknown command" in str(unknown)
    assert exec_result[0] == b"OK"
    assert isinstance(exec_result[1], ReplyError) and exec_result[1].code == "WRONGTYPE"
    assert link.ready


def test_a_callback_that_raises_is_logged_and_the_next_reply_still_arrives(loop, redis, caplog):
    server = redis()
    link = connect(loop, server.url())
    replies = Replies()

    def broken(reply):
        raise RuntimeError("owner bug")

    with caplog.at_level(logging.ERROR, logger=LOGGER_NAME):
        link.send(["PING"], broken)
        link.send(["ECHO", "after"], replies)
        loop.until(lambda: replies.got, "the second reply")
    assert replies.got == [b"after"]
    assert "a callback failed" in caplog.text and "owner bug" in caplog.text
    assert link.ready


def test_send_is_refused_until_ready(loop, redis):
    server = redis()
    link = loop.link(server.url())
    with pytest.raises(RuntimeError, match="not ready"):
        link.send(["PING"])
    link.start()
    with pytest.raises(RuntimeError, match="not ready"):
        link.send(["PING"])  # connecting or handshaking


def test_close_fails_pending_commands_and_never_reconnects(loop, redis):
    server = redis()
    lost = []
    link = connect(loop, server.url(), on_lost=lost.append)
    replies = Replies()
    link.send(["PING"], replies)
    link.close()
    assert link.state is LinkState.CLOSED
    assert len(replies.got) == 1 and isinstance(replies.got[0], LinkLost)
    assert link.fileno() == -1 and link.interest == 0 and not loop.selector.get_map()
    assert link.wakeup_at is None and lost == []
    link.close()  # twice is harmless


def test_redis_killed_and_restarted_on_the_same_port(loop, redis, caplog):
    """The link notices, backs off on the injected clock, and redoes its handshake when Redis is back."""
    server = redis(password="pw")
    clock = FakeClock()
    events = []
    link = loop.link(
        server.url(password="pw", db=2), clock=clock, random=lambda: 0.5, client_name="chat-w",
        on_ready=lambda: events.append("ready"), on_lost=lambda reason: events.append(f"lost: {reason}"),
    )
    link.start()
    loop.until(lambda: link.ready, "ready")
    assert events == ["ready"]
    in_flight = Replies()
    with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
        server.kill()
        link.send(["BLPOP", "never", "0"], in_flight)
        loop.until(lambda: not link.ready, "lost")
        assert events[1] in ("lost: the engine closed the connection", "lost: read failed: Connection reset by peer",
                             "lost: write failed: Broken pipe", "lost: write failed: Connection reset by peer")
        assert len(in_flight.got) == 1 and isinstance(in_flight.got[0], LinkLost)
        # Reconnection attempts against a dead port: each one refused, each one logged once,
        # and the wait doubles (random=0.5: three quarters of the step, the step 0.1 s doubling).
        delays = []
        for _ in range(4):
            assert link.state is LinkState.WAITING and link.fileno() == -1
            delay = link.wakeup_at - clock()
            delays.append(delay)
            loop.turn(0)
            assert link.state is LinkState.WAITING, "attempted before its time"
            clock.advance(delay)
            attempts = len(events)
            loop.until(lambda: len(events) > attempts, "the attempt to fail")  # noqa: B023
    assert delays == pytest.approx([0.075, 0.15, 0.3, 0.6])
    refused = [e for e in events[2:]]
    assert all(e == "lost: Connection refused" for e in refused), refused
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 5  # the loss, then one line per failed attempt
    assert warnings[1] == f"engine {link.address}: connection attempt 1 failed (Connection refused); retrying in 0.15 s"
    assert "pw@" not in caplog.text

    server.restart()
    clock.advance(link.wakeup_at - clock())
    loop.until(lambda: link.ready, "ready again")
    assert events[-1] == "ready"
    assert link.backoff.failures == 0 and link.attempts == 0 and link.last_error is None
    assert call(loop, link, "SET", "back", "yes") == b"OK"
    assert server.command("GET", "back", db=2) == b"yes"  # SELECT ran again
    assert "name=chat-w" in server.command("CLIENT", "LIST").decode()  # and CLIENT SETNAME


def test_a_paused_redis_never_blocks_the_loop(loop, redis):
    """SIGSTOP: the kernel still accepts and buffers, nothing answers; deadlines on the injected clock."""
    server = redis()
    clock = FakeClock()
    lost = []
    link = loop.link(server.url(), clock=clock, random=lambda: 1.0, reply_timeout=2.0, on_lost=lost.append)
    link.start()
    loop.until(lambda: link.ready, "ready")
    server.pause()
    replies = Replies()
    link.send(["PING"], replies)
    for _ in range(3):
        started = time.monotonic()
        loop.turn(0)
        assert time.monotonic() - started < 1.0, "a turn waited for the paused engine"
    assert replies.got == [] and link.ready and link.pending_commands == 1
    assert link.wakeup_at == clock() + 2.0
    clock.advance(1.9)
    loop.turn(0)
    assert link.ready
    clock.advance(0.1)
    loop.turn(0)
    assert lost == ["no reply from the engine for 2 s"]
    assert isinstance(replies.got[0], LinkLost)
    # The next attempt connects (the kernel accepts for the stopped process) but the
    # handshake gets no answer: the connect timeout gives up on it, and nothing blocks.
    clock.advance(link.wakeup_at - clock())
    loop.until(lambda: link.state is LinkState.HANDSHAKING, "handshaking")
    for _ in range(3):
        loop.turn(0)
    assert link.state is LinkState.HANDSHAKING
    clock.advance(link.connect_timeout)
    loop.turn(0)
    assert lost[-1] == f"no ready connection within {link.connect_timeout:g} s"
    server.resume()
    clock.advance(link.wakeup_at - clock())
    loop.until(lambda: link.ready, "ready after SIGCONT")
    assert call(loop, link, "PING") == b"PONG"


def test_a_blocking_read_on_its_own_link_does_not_hold_up_the_writes(loop, redis):
    server = redis()
    reader = connect(loop, server.url(), client_name="chat-read", reply_timeout=30.0)
    writer = connect(loop, server.url(), client_name="chat-write")
    entries = Replies()
    reader.send(["XREAD", "BLOCK", "10000", "STREAMS", "chat:log", "$"], entries)
    loop.until(lambda: b"cmd=xread" in server.command("CLIENT", "LIST"), "the XREAD to block")
    added = [call(loop, writer, "PING") for _ in range(3)]  # the writer is not held up
    assert added == [b"PONG"] * 3
    entry_id = call(loop, writer, "XADD", "chat:log", "*", "line", "hello")
    loop.until(lambda: entries.got, "the blocked read to return")
    [[stream, [[got_id, fields]]]] = entries.got[0]
    assert (stream, got_id, fields) == (b"chat:log", entry_id, [b"line", b"hello"])


def test_a_server_that_is_not_redis_is_a_protocol_error(loop):
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    lost = []
    link = loop.link(f"redis://127.0.0.1:{listener.getsockname()[1]}", clock=FakeClock(), on_lost=lost.append)
    try:
        link.start()
        accepted = []

        def accept():
            try:
                accepted.append(listener.accept()[0])
            except BlockingIOError:
                return False
            return True

        loop.until(accept, "accepted")
        accepted[0].sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        loop.until(lambda: lost, "the protocol error")
        assert lost[0].startswith("protocol error from the engine")
    finally:
        for sock in accepted:
            sock.close()
        listener.close()


def test_an_unresolvable_host_is_a_failed_attempt(loop):
    lost = []
    link = loop.link("redis://no-such-host.invalid", clock=FakeClock(), on_lost=lost.append)
    link.start()
    assert link.state is LinkState.WAITING
    assert lost[0].startswith("cannot resolve no-such-host.invalid")


def test_a_host_name_with_several_addresses_tries_each_in_one_attempt(loop, redis, monkeypatch):
    """As localhost is ::1 and 127.0.0.1 on many systems: a refused address is not a failed attempt."""
    server = redis()
    with socket.socket() as refusing:  # bound, never listening
        refusing.bind(("127.0.0.1", 0))
        addresses = [(socket.AF_INET, refusing.getsockname()), (socket.AF_INET, ("127.0.0.1", server.port))]
        link = loop.link(f"redis://redis.example.org:{server.port}", clock=FakeClock())
        monkeypatch.setattr(link, "_resolve", lambda: list(addresses))  # the resolver's answer, nothing else
        link.start()
        loop.until(lambda: link.ready, "ready")
    assert link.backoff.failures == 0 and link.last_error is None
    assert call(loop, link, "PING") == b"PONG"


def test_a_refused_port_is_a_failed_attempt(loop):
    with socket.socket() as probe:  # bound, never listening: connections are refused
        probe.bind(("127.0.0.1", 0))
        lost = []
        link = loop.link(f"redis://127.0.0.1:{probe.getsockname()[1]}", clock=FakeClock(), on_lost=lost.append)
        link.start()
        loop.until(lambda: lost, "refused")
    assert lost == [os.strerror(errno.ECONNREFUSED)]


def test_a_paused_redis_leaves_a_big_pipeline_queued_in_the_link_and_it_drains_on_resume(loop, redis):
    """What the owner bounds with --cluster-buffer: unsent_bytes grows, the loop goes on, nothing is lost."""
    server = redis()
    link = connect(loop, server.url())
    server.pause()
    replies = Replies()
    value = "v" * 1000
    for _ in range(20000):  # about 20 MB: more than the socket buffers on both sides hold
        link.send(["RPUSH", "big", value], replies)
    queued = link.unsent_bytes
    loop.turn(0)
    assert 0 < link.unsent_bytes < queued  # the kernel took some, the rest waits in the link
    assert link.interest == selectors.EVENT_READ | selectors.EVENT_WRITE
    for _ in range(3):
        started = time.monotonic()
        loop.turn(0)
        assert time.monotonic() - started < 1.0, "a turn waited for the paused engine"
    assert link.unsent_bytes > 0 and link.pending_commands == 20000 and not replies.got
    server.resume()
    loop.until(lambda: len(replies.got) == 20000, "every reply", timeout=60)
    assert replies.got == list(range(1, 20001))
    assert link.unsent_bytes == 0 and link.interest == selectors.EVENT_READ


def test_an_owner_without_a_selector_registers_fileno_and_interest_itself(redis):
    server = redis()
    selector = selectors.DefaultSelector()
    link = RedisLink(parse_redis_url(server.url()), clock=time.monotonic)
    registered: list = [None, 0]  # the fd and mask the selector holds

    def sync():
        fd, mask = link.fileno(), link.interest
        if registered != [fd, mask]:
            if registered[0] is not None:
                selector.unregister(registered[0])
            if mask:
                selector.register(fd, mask, link)
            registered[:] = [fd, mask] if mask else [None, 0]

    try:
        link.start()
        sync()
        replies = Replies()
        deadline = time.monotonic() + WAIT
        while not replies.got:
            assert time.monotonic() < deadline
            for key, mask in selector.select(0.05):
                key.data.on_events(mask)
            sync()
            if link.ready and not link.pending_commands:
                link.send(["PING"], replies)
            link.flush()
            sync()
        assert replies.got == [b"PONG"]
    finally:
        link.close()
        selector.close()


def test_redisutil_stops_kills_and_keeps_an_append_only_file(redis):
    """The helper's own promises: SIGTERM exits 0, AOF with fsync always survives SIGKILL."""
    server = redis(appendonly=True)
    assert server.command("CONFIG", "GET", "appendonly") == [b"appendonly", b"yes"]
    assert server.command("CONFIG", "GET", "appendfsync") == [b"appendfsync", b"always"]
    assert server.command("SET", "kept", "1") == b"OK"
    assert server.kill() == -9
    server.restart()
    assert server.command("GET", "kept") == b"1"
    assert server.stop() == 0
    volatile = redis()
    assert volatile.command("CONFIG", "GET", "appendonly") == [b"appendonly", b"no"]
    assert volatile.command("CONFIG", "GET", "save") == [b"save", b""]
    volatile.command("SET", "lost", "1")
    volatile.kill()
    volatile.restart()
    assert volatile.command("GET", "lost") is None
