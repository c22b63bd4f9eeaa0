"""The chat machine against docs/protocol.md, by example.

Most examples are rows of ``tests/examples.py``: a small chat, a few events,
and after each what every connection received and which connections the
server closed.  Each row is played here on the ``ChatMachine`` and on the
independent model of ``tests/model.py``; a row both of them fail is
probably wrong itself.

The tests below need more than bytes and closes: the kinds of effects and
their order (``Reply`` before ``Close``; replies apart from lines from other
users), close reasons and their order in a batch, ``ProtocolUsageError``
for a breach of the event contract, two machines side by side.  They use
``helpers.Chat`` and assert on *everybody's* output (``Chat.outputs()``), so
a reply that leaks to a second connection, or a broadcast that also reaches
the sender, fails as surely as a wrong reply.

Every expected value is written from the spec, not from the implementation.
"""

from __future__ import annotations

import pytest
from examples import EXAMPLES, HTTP_LINES, Example, err, play
from helpers import Chat, MachineUnderTest, ModelUnderTest

from protocol import (
    Broadcast,
    Close,
    CloseReason,
    ConnectionsTimedOut,
    Deliver,
    IdleTimedOut,
    ProtocolUsageError,
    Reply,
    ShutdownStarted,
    TLSHelloReceived,
)


def room(*names: str, **options) -> Chat:
    """A chat where each of ``names`` is logged in, in order, on a connection of that name."""
    chat = Chat(**options)
    for name in names:
        chat.login(name, name)
    return chat


# ---------------------------------------------------------------------------
# The table of examples, on the machine and on the model
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda example: example.name)
def test_the_machine_and_the_model_follow_the_example(example: Example):
    differences = {
        "machine": play(example, MachineUnderTest(example.max_clients)),
        "model": play(example, ModelUnderTest(example.max_clients)),
    }
    assert differences == {"machine": None, "model": None}, "a misreading of protocol.md"


# ---------------------------------------------------------------------------
# Closing: the reply before the close, the reasons, INFO exactly once
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("word", [b"QUIT", b"EXIT", b"quit", b"exit", b"Quit", b"eXiT"])
@pytest.mark.parametrize("args", [b"", b" now please"], ids=["bare", "with-args"])
def test_quit_says_goodbye_closes_and_tells_the_others(word, args):
    chat = room("Naman", "Yudi", "Ana")
    chat.open("anon")
    effects = chat.send("Naman", word + args)
    assert chat.output("Naman") == b"Goodbye!\n"
    assert chat.closed() == [("Naman", CloseReason.QUIT)]
    # Goodbye! is queued before the close is asked for.
    kinds = [type(e).__name__ for e in effects if getattr(e, "conn", None) == "Naman"]
    assert kinds.index("Reply") < kinds.index("Close")
    chat.close("Naman")
    # Whether INFO goes out at QUIT or at the close, it goes exactly once.
    info = b"INFO Naman disconnected\n"
    assert chat.outputs() == {"Yudi": info, "Ana": info}
    assert chat.closed() == []


@pytest.mark.parametrize("word", [b"QUIT", b"exit"])
def test_quit_before_login_says_goodbye_and_informs_nobody(word):
    chat = room("Yudi")
    chat.open("anon")
    chat.send("anon", word)
    assert chat.outputs() == {"anon": b"Goodbye!\n"}
    assert chat.closed() == [("anon", CloseReason.QUIT)]
    chat.close("anon")
    assert chat.outputs() == {}


def test_a_tls_client_on_the_plaintext_port_is_closed_silently():
    chat = room("Yudi")
    chat.open("tls")
    assert chat.event(TLSHelloReceived("tls")) == [Close("tls", CloseReason.TLS_ON_PLAIN_PORT)]
    assert chat.outputs() == {}
    assert not CloseReason.TLS_ON_PLAIN_PORT.flush_first
    assert chat.event(TLSHelloReceived("tls")) == []  # closing already: nothing more
    chat.close("tls")
    assert chat.outputs() == {}


def test_idle_timeout_of_a_logged_in_user():
    chat = room("Naman", "Yudi")
    chat.open("anon")
    chat.event(IdleTimedOut("Naman"))
    assert chat.output("Naman") == err("idle-timeout")
    assert chat.closed() == [("Naman", CloseReason.IDLE_TIMEOUT)]
    chat.close("Naman")
    # INFO goes once to the others, whether at the timeout or at the close.
    assert chat.outputs() == {"Yudi": b"INFO Naman disconnected\n"}


def test_idle_timeout_before_login_informs_nobody():
    chat = room("Yudi")
    chat.open("anon")
    chat.event(IdleTimedOut("anon"))
    assert chat.outputs() == {"anon": err("idle-timeout")}
    assert chat.closed() == [("anon", CloseReason.IDLE_TIMEOUT)]
    chat.close("anon")
    assert chat.outputs() == {}


def test_idle_timeouts_of_one_turn_are_one_departure():
    chat = room("Naman", "Yudi", "Ana")
    chat.open("anon")
    chat.event(ConnectionsTimedOut(("Naman", "anon", "Yudi")))
    assert chat.outputs() == {
        "Naman": err("idle-timeout"),  # nothing about Yudi: both are leaving
        "Yudi": err("idle-timeout"),
        "anon": err("idle-timeout"),
        "Ana": b"INFO Naman disconnected\nINFO Yudi disconnected\n",
    }
    assert chat.closed() == [
        ("Naman", CloseReason.IDLE_TIMEOUT),
        ("anon", CloseReason.IDLE_TIMEOUT),
        ("Yudi", CloseReason.IDLE_TIMEOUT),
    ]
    assert chat.machine.usernames() == ["Ana"]


def test_a_batch_of_timeouts_skips_connections_already_closing_and_checks_the_contract():
    chat = room("Naman", "Yudi")
    chat.send("Naman", b"QUIT")
    chat.outputs(), chat.closed()
    chat.event(ConnectionsTimedOut(("Naman", "Yudi")))
    assert chat.outputs() == {"Yudi": err("idle-timeout")}
    with pytest.raises(ProtocolUsageError):
        chat.event(ConnectionsTimedOut(("Yudi", "Yudi")))
    with pytest.raises(ProtocolUsageError):
        chat.event(ConnectionsTimedOut(("nobody",)))


def test_server_full_refuses_the_connection_beyond_max_clients():
    chat = Chat(max_clients=2)
    chat.open("a", "b")
    assert chat.outputs() == {}
    chat.open("c")
    assert chat.outputs() == {"c": err("server-full")}
    assert chat.closed() == [("c", CloseReason.SERVER_FULL)]


def test_shutdown_tells_every_open_connection_and_closes_it():
    chat = room("Naman", "Yudi")
    chat.open("anon")
    effects = chat.event(ShutdownStarted())
    line = err("server-shutting-down")
    assert chat.outputs() == {"Naman": line, "Yudi": line, "anon": line}
    assert sorted(chat.closed(), key=repr) == sorted(
        [(c, CloseReason.SHUTTING_DOWN) for c in ("Naman", "Yudi", "anon")], key=repr
    )
    # Each connection's ERR is queued before its close.
    for conn in ("Naman", "Yudi", "anon"):
        kinds = [type(e).__name__ for e in effects if getattr(e, "conn", None) == conn]
        assert kinds == ["Reply", "Close"]
    # Nobody gets INFO at shutdown: everyone is leaving.
    for conn in ("Naman", "Yudi", "anon"):
        chat.close(conn)
    assert chat.outputs() == {}
    assert chat.machine.usernames() == []
    assert len(chat.machine) == 0


def test_a_connection_opened_during_shutdown_is_refused():
    chat = room("Naman")
    chat.event(ShutdownStarted())
    chat.outputs()
    chat.closed()
    chat.open("late")
    assert chat.outputs() == {"late": err("server-shutting-down")}
    assert chat.closed() == [("late", CloseReason.SHUTTING_DOWN)]


@pytest.mark.parametrize("line", list(HTTP_LINES.values()), ids=list(HTTP_LINES))
@pytest.mark.parametrize("before", [[], [b"PING"], [b"LOGIN bad name"]], ids=["first-line", "after-ping", "after-failed-login"])
def test_cross_protocol_request_before_login_closes_silently(line, before):
    chat = room("Yudi")
    chat.open("browser")
    for earlier in before:
        chat.send("browser", earlier)
    chat.outputs()
    chat.send("browser", line)
    assert chat.outputs() == {}
    assert chat.closed() == [("browser", CloseReason.CROSS_PROTOCOL)]
    # Nothing it sends afterwards runs.
    for later in [b"LOGIN Naman", b"MSG hi", b"PING", b"QUIT"]:
        chat.send("browser", later)
    assert chat.outputs() == {}
    assert chat.closed() == []
    chat.close("browser")
    assert chat.outputs() == {}
    # "LOGIN Naman" never ran, so the name is free.
    chat.login("other", "Naman")



# ---------------------------------------------------------------------------
# Isolation, and the kinds of effects
# ---------------------------------------------------------------------------


def test_two_machines_do_not_interfere():
    one, two = Chat(max_clients=2), Chat(max_clients=2)
    one.login("a", "Naman")
    one.login("b", "Yudi")
    # Same connection ids and the same name on the other machine.
    two.login("a", "Naman")
    two.open("b")
    one.send("a", b"MSG hello one")
    one.send("b", b"WHO")
    assert one.outputs() == {"b": b"MSG Naman hello one\nUSER Naman\nUSER Yudi\n"}
    assert two.outputs() == {}
    two.send("a", b"WHO")
    assert two.outputs() == {"a": b"USER Naman\n"}
    one.close("a")
    assert two.outputs() == {}
    two.send("b", b"LOGIN Yudi")
    assert two.outputs() == {"b": b"OK\n"}


def test_replies_are_replies_and_lines_from_others_are_not():
    """The reactor may evict for piled-up lines from others, never for replies."""
    chat = room("Naman", "Yudi")
    own = chat.send("Naman", b"WHO") + chat.send("Naman", b"PING") + chat.send("Naman", b"FOO")
    assert own and all(isinstance(e, Reply) and e.conn == "Naman" for e in own)
    others = chat.send("Naman", b"MSG hi") + chat.send("Naman", b"DM Yudi hi")
    assert others and all(isinstance(e, (Broadcast, Deliver)) for e in others)

