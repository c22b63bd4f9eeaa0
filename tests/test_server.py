"""The server over real TCP on 127.0.0.1: every command, framing, idle timeouts,
abrupt disconnects.  A reactor runs in a thread of the test process; the
daemon's own behaviour (signals, exit statuses) is in test_daemon.py, and the
seed README's sessions over raw TCP, once per selector kind, in
test_selectors.py.

Every test that takes ``server`` or ``serve`` runs twice: against one
server, and against a cluster of two nodes on a real Redis (conftest.py),
its clients alternating between the nodes; a client cannot tell the
difference.  Four tests are about one process and run standalone only:
the wheel with no idle timer (a node also has its lease's timers), the
accepted sockets' TCP_NODELAY and the socket margin past --max-clients
(one process's sockets and machine; --max-clients is per node), and an
internal error in the machine (in a cluster the replica's ChatMachine
runs on every node, so a bug there is not one connection's)."""

from __future__ import annotations

import socket

import pytest
from netutil import Client, login, threaded_server

import reactor.loop
from protocol import ChatMachine, LineReceived


@pytest.fixture
def server(serve):
    """One server, or a cluster of two (conftest.py's ``serve``): every test that takes it runs on both."""
    with serve() as running:
        yield running


@pytest.fixture
def one_process():
    """For the tests about one process's own parts (its wheel, its sockets, its machine)."""
    with threaded_server() as running:
        yield running


# -- every command and error ---------------------------------------------------------


@pytest.mark.parametrize(
    "lines, replies",
    [
        (["PING"], ["PONG"]),
        (["ping"], ["PONG"]),
        (["LOGIN"], ["ERR missing-username"]),
        (["LOGIN bad name"], ["ERR invalid-username"]),
        (["LOGIN " + "x" * 33], ["ERR invalid-username"]),
        (["LOGIN carol", "LOGIN dave"], ["OK", "ERR already-logged-in"]),
        (["MSG hi"], ["ERR not-logged-in"]),
        (["WHO"], ["ERR not-logged-in"]),
        (["DM x hi"], ["ERR not-logged-in"]),
        (["LOGIN carol", "MSG"], ["OK", "ERR missing-text"]),
        (["LOGIN carol", "DM"], ["OK", "ERR missing-text"]),
        (["LOGIN carol", "DM nobody"], ["OK", "ERR missing-text"]),
        (["LOGIN carol", "DM nobody hi"], ["OK", "ERR user-not-found"]),
        (["DANCE"], ["ERR unknown-command"]),
        (["LOGIN carol", "DANCE"], ["OK", "ERR unknown-command"]),
        (["LOGIN carol", "WHO"], ["OK", "USER carol"]),
        (["LOGIN carol", "DM carol note to self"], ["OK", "DM carol note to self"]),
        (["", "   ", "\t", "PING"], ["PONG"]),
    ],
)
def test_replies_to_the_sender(server, lines, replies):
    client = Client(server.port)
    client.say(*lines)
    client.expect(*replies)
    client.sync()


def test_username_taken_compares_like_protocol_md(server):
    owner = login(server.port, "Naman")
    for taken in ["Naman", "naman", "ＮＡＭＡＮ"]:
        other = Client(server.port)
        other.say(f"LOGIN {taken}")
        other.expect("ERR username-taken")
    owner.sync()


def test_msg_reaches_every_other_logged_in_user_and_not_the_anonymous(server):
    alice, bob, carol = (login(server.port, name) for name in ("alice", "bob", "carol"))
    anonymous = Client(server.port)
    alice.say("MSG  spaced   out\ttext ")  # the text starts after the separating run
    bob.expect("MSG alice spaced   out\ttext")
    carol.expect("MSG alice spaced   out\ttext")
    for client in (alice, anonymous):
        client.sync()


def test_dm_reaches_only_its_target(server):
    alice, bob, carol = (login(server.port, name) for name in ("alice", "bob", "carol"))
    alice.say("DM BOB psst")
    bob.expect("DM alice psst")
    alice.sync()
    for client in (alice, carol):
        client.sync()


def test_line_too_long_and_invalid_utf8(server):
    client = Client(server.port)
    client.send(b"x" * 5000 + b"\nPING\n")
    client.expect("ERR line-too-long", "PONG")
    client.send(b"PING \xc3\x28\n")  # 0xFF would start a Telnet command instead
    client.expect("ERR invalid-utf8")
    client.sync()


def test_control_characters_never_reach_another_user(server):
    alice, bob = login(server.port, "alice"), login(server.port, "bob")
    alice.send("MSG \x1b[31mred\x00\x7f\u0085\u2028alert\n".encode())
    assert bob.line() == b"MSG alice [31mredalert"


def test_telnet_option_requests_are_refused(server):
    client = Client(server.port)
    client.send(b"\xff\xf4\xff\xfd\x06PING\r\n")  # what telnet sends for Ctrl+C
    assert client.sock.recv(3) == b"\xff\xfc\x06"  # IAC WONT TIMING-MARK
    client.expect("PONG")


def test_an_http_request_runs_nothing_and_is_closed(server):
    watcher = login(server.port, "watcher")
    browser = Client(server.port)
    browser.send(b"POST /chat HTTP/1.1\r\nHost: evil.example\r\n\r\nLOGIN mallory\nMSG spam\n")
    assert browser.read_until_closed() == b""
    watcher.say("WHO")
    watcher.expect("USER watcher")
    watcher.sync()


# -- framing over TCP -------------------------------------------------------------------


def test_crlf_lines(server):
    client = Client(server.port)
    client.send(b"LOGIN crlf\r\nWHO\r\nPING\r\n")
    client.expect("OK", "USER crlf", "PONG")


def test_a_command_delivered_one_byte_at_a_time(server):
    client = Client(server.port)
    for byte in b"LOGIN slow\nPING\n":
        client.send(bytes([byte]))
    client.expect("OK", "PONG")


def test_several_commands_in_one_segment(server):
    alice = login(server.port, "alice")
    bob = Client(server.port)
    bob.send(b"LOGIN bob\nMSG one\nMSG two\nWHO\nPING\n")
    bob.expect("OK", "USER alice", "USER bob", "PONG")
    alice.expect("MSG bob one", "MSG bob two")


# -- disconnects --------------------------------------------------------------------------


def _assert_exactly_one_info(watchers, name):
    for watcher in watchers:
        watcher.expect(f"INFO {name} disconnected")
        watcher.sync()  # and nothing more before PONG


@pytest.mark.parametrize("how", ["reset", "half-close", "close-mid-line", "quit", "exit"])
def test_every_way_of_leaving_gives_one_info_per_remaining_user(server, how):
    watchers = [login(server.port, "w1"), login(server.port, "w2")]
    leaver = login(server.port, "leaver")
    if how == "reset":
        leaver.reset()
    elif how == "half-close":
        leaver.say("PING")
        leaver.half_close()
        leaver.expect("PONG")
        assert leaver.read_until_closed() == b""
    elif how == "close-mid-line":
        leaver.send(b"MSG never final")
        leaver.close()
    else:
        leaver.say(how.upper())
        leaver.expect("Goodbye!")
        assert leaver.read_until_closed() == b""
    _assert_exactly_one_info(watchers, "leaver")


def test_an_unfinished_last_line_is_discarded_at_end_of_stream(server):
    watcher = login(server.port, "watcher")
    leaver = login(server.port, "leaver")
    leaver.send(b"MSG complete\nMSG incomplete")
    leaver.half_close()
    watcher.expect("MSG leaver complete", "INFO leaver disconnected")
    watcher.sync()


def test_lines_sent_after_quit_are_not_run(server):
    watcher = login(server.port, "watcher")
    leaver = login(server.port, "leaver")
    leaver.send(b"QUIT\nMSG after quit\n")
    leaver.expect("Goodbye!")
    watcher.expect("INFO leaver disconnected")
    watcher.sync()


# -- idle timeout ---------------------------------------------------------------------------
# Its timing (at the deadline, a tick late, postponed by a line, not by a
# byte, one departure for a batch) is tested on a hand-moved clock in
# tests/test_loop_clock.py; here, that it works over real TCP.


def test_idle_anonymous_connection_times_out_too(serve):
    with serve(idle_timeout=0.2) as server:
        client = Client(server.port)
        assert client.read_until_closed() == b"ERR idle-timeout\n"


def test_idle_timeout_zero_turns_it_off():
    with threaded_server(idle_timeout=0) as server:
        assert server.reactor._wheel.next_wakeup() is None
        client = Client(server.port)
        client.sync()
        assert len(server.reactor._wheel) == 0


# -- sockets are tuned ------------------------------------------------------------------------


def test_accepted_sockets_have_tcp_nodelay(one_process):
    server = one_process
    client = login(server.port, "fast")
    (conn,) = list(server.reactor._connections)
    assert conn.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    client.sync()


# -- robustness -----------------------------------------------------------------------------


def test_an_internal_error_costs_only_the_connection_that_caused_it(monkeypatch):
    handle = ChatMachine.handle

    def buggy_handle(machine, event):
        if isinstance(event, LineReceived) and event.line == b"MSG trigger the bug":
            raise RuntimeError("a bug in the machine")
        return handle(machine, event)

    monkeypatch.setattr(ChatMachine, "handle", buggy_handle)
    with threaded_server() as server:
        watcher = login(server.port, "watcher")
        victim = login(server.port, "victim")
        victim.say("MSG trigger the bug", "MSG never runs")
        assert victim.read_until_closed() == b""
        watcher.expect("INFO victim disconnected")
        watcher.sync()
        assert [record.getMessage() for record in server.errors] == [
            f"internal error while serving {victim.sock.getsockname()}; closing it"
        ]
        server.errors.clear()


def test_sockets_past_max_clients_and_a_margin_are_refused_before_the_machine(monkeypatch):
    monkeypatch.setattr(reactor.loop, "SOCKET_MARGIN", 0)
    with threaded_server(max_clients=1) as server:
        first = login(server.port, "first")
        second = Client(server.port)
        assert second.read_until_closed() == b"ERR server-full\n"
        first.sync()
        assert len(server.reactor._machine) == 1  # the machine never saw the second
