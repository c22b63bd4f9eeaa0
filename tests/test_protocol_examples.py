"""Example-based tests of the chat machine against /work/shared/spec/protocol.md.

One test (or one parametrized family) per row of the spec's command table and
error table, per server-initiated line, and per "detail that decides an edge
case" that the machine owns.  Framing (CR stripping, Telnet parsing, the byte
limit) belongs to ``protocol.framing`` and is tested there; here a line is a
``LineReceived`` and an over-long line a ``LineTooLong``.

Every expected value is written from the spec, not from the implementation.
Most tests assert on *everybody's* output (``Chat.outputs()``), so a reply
that leaks to a second connection, or a broadcast that also reaches the
sender, fails as surely as a wrong reply.
"""

from __future__ import annotations

import pytest
from helpers import Chat

from protocol import (
    Broadcast,
    CloseReason,
    ConnectionsTimedOut,
    Deliver,
    IdleTimedOut,
    LineTooLong,
    ProtocolUsageError,
    Reply,
    ShutdownStarted,
    TelnetOptionRequested,
)

# Telnet bytes (RFC 854).
IAC, DONT, DO, WONT, WILL = 255, 254, 253, 252, 251

JOSE_COMPOSED = "Jos\u00e9"
JOSE_DECOMPOSED = "Jose\u0301"


def room(*names: str, **options) -> Chat:
    """A chat where each of ``names`` is logged in, in order, on a connection of that name."""
    chat = Chat(**options)
    for name in names:
        chat.login(name, name)
    return chat


def me_beside_yudi(logged_in: bool) -> Chat:
    """Yudi logged in, and connection "me", logged in as Naman or not."""
    chat = room("Yudi")
    if logged_in:
        chat.login("me", "Naman")
    else:
        chat.open("me")
    return chat


def err(code: str) -> bytes:
    return b"ERR " + code.encode() + b"\n"


def assert_error_only(chat: Chat, conn, line: bytes, code: str) -> None:
    """``line`` from ``conn`` gets ``ERR code``, nobody else gets anything, nothing closes."""
    chat.send(conn, line)
    assert chat.outputs() == {conn: err(code)}
    assert chat.closed() == []


# ---------------------------------------------------------------------------
# Command table
# ---------------------------------------------------------------------------


def test_login_replies_ok_and_tells_nobody_else():
    chat = room("Yudi")
    chat.open("anon", "new")
    chat.send("new", b"LOGIN Naman")
    assert chat.outputs() == {"new": b"OK\n"}
    assert chat.closed() == []
    assert chat.machine.usernames() == ["Yudi", "Naman"]


def test_msg_reaches_every_other_logged_in_user_only():
    chat = room("Naman", "Yudi", "Ana")
    chat.open("anon")
    chat.send("Naman", b"MSG hi everyone!")
    line = b"MSG Naman hi everyone!\n"
    # Not the sender, not the connection that never logged in.
    assert chat.outputs() == {"Yudi": line, "Ana": line}


def test_msg_with_nobody_else_logged_in_goes_nowhere():
    chat = room("Naman")
    chat.open("anon")
    chat.send("Naman", b"MSG anyone?")
    assert chat.outputs() == {}


@pytest.mark.parametrize(
    "line, text",
    [
        (b"MSG a  b\t\tc", b"a  b\t\tc"),
        (b"MSG \t  spaced out", b"spaced out"),
        (b"MSG\thi", b"hi"),
        (b"MSG hi there \t ", b"hi there"),
        ("MSG \u3000wide\u00a0".encode(), "\u3000wide\u00a0".encode()),
        (b"MSG DM Yudi not a dm", b"DM Yudi not a dm"),
    ],
    ids=[
        "inner-spaces-and-tabs-kept",
        "separator-run-dropped",
        "tab-separator",
        "trailing-whitespace-trimmed",
        "unicode-spaces-are-text",
        "command-words-inside-text",
    ],
)
def test_msg_text_is_the_rest_of_the_line(line, text):
    chat = room("Naman", "Yudi")
    chat.send("Naman", line)
    assert chat.outputs() == {"Yudi": b"MSG Naman " + text + b"\n"}


def test_who_lists_users_in_login_order_sender_included():
    chat = Chat()
    chat.open("c1", "c2", "c3", "anon")
    # Login order differs from connection order on purpose.
    for conn, name in [("c3", b"Zed"), ("c1", b"Amy"), ("c2", b"Bob")]:
        chat.send(conn, b"LOGIN " + name)
    chat.outputs()
    chat.send("c1", b"WHO")
    assert chat.outputs() == {"c1": b"USER Zed\nUSER Amy\nUSER Bob\n"}


def test_who_puts_a_returning_user_at_the_end():
    chat = room("Amy", "Bob", "Cid")
    chat.send("Amy", b"QUIT")
    chat.close("Amy")
    chat.login("Amy2", "Amy")
    chat.outputs()
    chat.send("Bob", b"WHO")
    assert chat.outputs() == {"Bob": b"USER Bob\nUSER Cid\nUSER Amy\n"}


def test_who_follows_logins_and_departures():
    chat = room("Amy", "Bob")
    chat.send("Amy", b"WHO")
    assert chat.outputs() == {"Amy": b"USER Amy\nUSER Bob\n"}
    chat.login("Cid", "Cid")
    chat.send("Amy", b"WHO")
    assert chat.outputs() == {"Amy": b"USER Amy\nUSER Bob\nUSER Cid\n"}
    chat.close("Bob")
    chat.outputs()
    chat.send("Cid", b"WHO")
    assert chat.outputs() == {"Cid": b"USER Amy\nUSER Cid\n"}


def test_dm_reaches_that_user_only():
    chat = room("Naman", "Yudi", "Ana")
    chat.open("anon")
    chat.send("Naman", b"DM Yudi psst  just\tyou")
    assert chat.outputs() == {"Yudi": b"DM Naman psst  just\tyou\n"}


def test_dm_separators_may_be_runs_of_spaces_and_tabs():
    chat = room("Naman", "Yudi")
    chat.send("Naman", b"DM\t Yudi \t hi there")
    assert chat.outputs() == {"Yudi": b"DM Naman hi there\n"}


def test_dm_to_oneself_is_delivered():
    chat = room("Naman", "Yudi")
    chat.send("Naman", b"DM Naman note to self")
    assert chat.outputs() == {"Naman": b"DM Naman note to self\n"}


@pytest.mark.parametrize(
    "owner, typed",
    [
        ("Naman", "NAMAN"),
        ("Naman", "naman"),
        ("Naman", "\uff4e\uff41\uff4d\uff41\uff4e"),
        (JOSE_COMPOSED, JOSE_DECOMPOSED),
        (JOSE_DECOMPOSED, "JOS\u00c9"),
        ("Stra\u00dfe", "STRASSE"),
        ("\uff21\uff22\uff23", "abc"),
    ],
    ids=["upper", "lower", "full-width", "decomposed", "upper-composed", "sharp-s-casefold", "shown-form"],
)
def test_dm_compares_names_like_login(owner, typed):
    chat = room(owner, "Yudi")
    chat.send("Yudi", b"DM " + typed.encode() + b" hi")
    assert chat.outputs() == {owner: b"DM Yudi hi\n"}


def test_dm_shows_the_sender_in_nfkc_form_with_typed_case():
    chat = room("\uff21\uff42\uff43", "Yudi")  # full-width "Abc"
    chat.send("\uff21\uff42\uff43", b"DM Yudi hi")
    assert chat.outputs() == {"Yudi": b"DM Abc hi\n"}


@pytest.mark.parametrize("line", [b"PING", b"ping", b"PiNg", b"PING extra words", b"PING \x1b\x00"])
@pytest.mark.parametrize("logged_in", [False, True], ids=["before-login", "after-login"])
def test_ping_gets_pong(line, logged_in):
    chat = me_beside_yudi(logged_in)
    chat.send("me", line)
    assert chat.outputs() == {"me": b"PONG\n"}
    assert chat.closed() == []


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


def test_goodbye_is_the_last_line_a_quitting_user_gets():
    chat = room("Naman", "Yudi")
    chat.send("Naman", b"QUIT")
    chat.output("Naman")
    chat.send("Yudi", b"MSG still there?")
    chat.close("Naman")
    assert chat.output("Naman") == b""


def test_a_name_is_free_again_after_its_owner_left():
    chat = room("Naman", "Yudi")
    chat.send("Naman", b"QUIT")
    chat.close("Naman")
    chat.open("again")
    chat.send("again", b"LOGIN naman")
    assert chat.output("again") == b"OK\n"


# ---------------------------------------------------------------------------
# Error table
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "first, second",
    [
        ("Naman", "Naman"),
        ("Naman", "naman"),
        ("Naman", "NAMAN"),
        ("Naman", "\uff4e\uff41\uff4d\uff41\uff4e"),
        ("\uff4e\uff41\uff4d\uff41\uff4e", "Naman"),
        (JOSE_COMPOSED, JOSE_DECOMPOSED),
        (JOSE_DECOMPOSED, JOSE_COMPOSED),
        (JOSE_COMPOSED, "jos\u00c9"),
        ("Strasse", "Stra\u00dfe"),
        ("\u216b", "xii"),  # ROMAN NUMERAL TWELVE is XII under NFKC
        ("\u01c5", "\u01c4"),  # Dž / DŽ: NFKC then casefold
    ],
    ids=[
        "same",
        "lower",
        "upper",
        "full-width-second",
        "full-width-first",
        "composed-then-decomposed",
        "decomposed-then-composed",
        "composed-other-case",
        "casefold-sharp-s",
        "roman-numeral",
        "dz-digraph",
    ],
)
def test_username_taken(first, second):
    chat = room("Ana")
    chat.login("first", first)
    chat.open("second")
    assert_error_only(chat, "second", b"LOGIN " + second.encode(), "username-taken")
    # The refused connection stays anonymous; the room is unchanged.
    assert_error_only(chat, "second", b"WHO", "not-logged-in")
    assert len(chat.machine.usernames()) == 2


INVALID_NAMES = {
    "33-chars": "a" * 33,
    "leading-combining-mark": "\u0301abc",
    "inner-space": "Na man",
    "inner-tab": "Na\tman",
    "no-break-space": "Na\u00a0man",
    "ideographic-space": "Na\u3000man",
    "c0-control": "Na\x01man",
    "only-a-control": "\x01",
    "esc-sequence": "Na\x1b[31mman",
    "del": "Na\x7fman",
    "c1-nel": "Na\u0085man",
    "line-separator": "Na\u2028man",
    "zero-width-space": "Na\u200bman",
    "zero-width-joiner": "Na\u200dman",
    "bom": "\ufeffNaman",
    "bidi-rlo": "\u202eNaman",
    "bidi-isolate": "Na\u2066man\u2069",
    "fdfa-nfkc-has-spaces": "\ufdfa",
    "vulgar-fraction": "\u00bc",  # NFKC 1⁄4, FRACTION SLASH is Sm
    "letter-number-not-nd": "\u2182",  # ROMAN NUMERAL TEN THOUSAND, Nl, no decomposition
    "exclamation": "Naman!",
    "at-sign": "a@b",
    "slash": "a/b",
    "apostrophe": "O'Brien",
    "minus-sign": "a\u2212b",
    "emoji": "Naman\U0001f600",
    "ligatures-over-32-after-nfkc": "\ufb01" * 17,  # 17 code points typed, 34 after NFKC
    "33-astral-letters": "\U00020000" * 33,
}


@pytest.mark.parametrize("name", list(INVALID_NAMES.values()), ids=list(INVALID_NAMES))
def test_invalid_username(name):
    chat = room("Yudi")
    chat.open("anon")
    assert_error_only(chat, "anon", b"LOGIN " + name.encode(), "invalid-username")
    assert chat.machine.usernames() == ["Yudi"]


VALID_NAMES = {
    "32-chars": "a" * 32,
    "devanagari": "\u0938\u0941\u0930\u0947\u0936",  # सुरेश: letters and combining marks
    "mark-not-first": "x\u0301",
    "punctuation-allowed": "a_b-c.d",
    "only-dot": ".",
    "only-underscore": "_",
    "ascii-digits": "123",
    "arabic-indic-digits": "\u0663\u0664",
    "superscript-digit-nfkc": "x\u00b2",
    "32-decomposed-chars": "e\u0301" * 32,  # 64 code points typed, 32 after NFKC
    "16-ligatures": "\ufb01" * 16,  # 32 after NFKC
    "cjk": "\u4e2d\u6587",
    "modifier-letter": "\u30fc\u30a2",
    "turkish-dotted-capital": "\u0130stanbul",
    "32-astral-letters": "\U00020000" * 32,  # length is in code points, not UTF-16 units
}


@pytest.mark.parametrize("name", list(VALID_NAMES.values()), ids=list(VALID_NAMES))
def test_valid_username(name):
    chat = room("Yudi")
    chat.open("new")
    chat.send("new", b"LOGIN " + name.encode())
    assert chat.outputs() == {"new": b"OK\n"}


@pytest.mark.parametrize(
    "typed, shown",
    [
        ("\uff21\uff22\uff23", "ABC"),
        ("NaMaN", "NaMaN"),
        (JOSE_DECOMPOSED, JOSE_COMPOSED),
        ("\u216b", "XII"),
        ("\ufb01x", "fix"),
        ("x\u00b2", "x2"),
        ("\u0938\u0941\u0930\u0947\u0936", "\u0938\u0941\u0930\u0947\u0936"),
        ("Stra\u00dfe", "Stra\u00dfe"),
    ],
    ids=["full-width", "typed-case", "decomposed", "roman-numeral", "ligature", "superscript", "devanagari", "sharp-s-kept"],
)
def test_name_is_shown_in_nfkc_form_with_typed_case(typed, shown):
    chat = room("Yudi")
    chat.login("new", typed)
    chat.send("new", b"WHO")
    chat.send("new", b"MSG hi")
    wire = shown.encode()
    assert chat.outputs() == {"new": b"USER Yudi\nUSER " + wire + b"\n", "Yudi": b"MSG " + wire + b" hi\n"}
    chat.close("new")
    assert chat.outputs() == {"Yudi": b"INFO " + wire + b" disconnected\n"}


@pytest.mark.parametrize("line", [b"LOGIN", b"login", b"LOGIN   ", b"LOGIN \t ", b"\tLOGIN\t"])
def test_missing_username(line):
    chat = room("Yudi")
    chat.open("anon")
    assert_error_only(chat, "anon", line, "missing-username")


@pytest.mark.parametrize(
    "line",
    [b"LOGIN Other", b"LOGIN Naman", b"LOGIN naman", b"LOGIN Yudi", b"LOGIN", b"LOGIN bad name!", b"login \x01"],
    ids=["new-name", "own-name", "own-name-other-case", "taken-name", "no-name", "invalid-name", "control"],
)
def test_already_logged_in_whatever_the_argument(line):
    chat = room("Naman", "Yudi")
    assert_error_only(chat, "Naman", line, "already-logged-in")
    # Still logged in under the old name.
    chat.send("Naman", b"MSG still me")
    assert chat.outputs() == {"Yudi": b"MSG Naman still me\n"}
    assert chat.machine.usernames() == ["Naman", "Yudi"]


@pytest.mark.parametrize(
    "line",
    [b"MSG hi", b"msg hi", b"WHO", b"who is there", b"DM Yudi hi", b"DM Nobody hi", b"MSG", b"DM", b"DM Yudi"],
)
def test_not_logged_in(line):
    chat = room("Yudi")
    chat.open("anon")
    assert_error_only(chat, "anon", line, "not-logged-in")


def test_not_logged_in_after_a_refused_login():
    chat = room("Yudi")
    chat.open("anon")
    chat.send("anon", b"LOGIN bad name")
    chat.send("anon", b"LOGIN yudi")
    chat.outputs()
    assert_error_only(chat, "anon", b"MSG hi", "not-logged-in")


@pytest.mark.parametrize(
    "line",
    [
        b"MSG",
        b"msg   \t",
        b"MSG \x1b",
        b"MSG \x00\x07\x7f",
        "MSG \u0085\u2028\u2029".encode(),
        b"DM",
        b"DM Yudi",
        b"DM\tYudi\t",
        b"DM Nobody",
        b"DM Yudi \x1b\x00",
        b"DM Nobody \x1b\x7f",
    ],
    ids=[
        "msg-no-text",
        "msg-whitespace-only",
        "msg-only-esc",
        "msg-only-c0-and-del",
        "msg-only-c1-and-separators",
        "dm-no-name",
        "dm-no-text",
        "dm-no-text-tabs",
        "dm-unknown-name-no-text",
        "dm-only-controls",
        "dm-unknown-name-only-controls",
    ],
)
def test_missing_text(line):
    chat = room("Naman", "Yudi")
    assert_error_only(chat, "Naman", line, "missing-text")


@pytest.mark.parametrize(
    "target",
    [b"Nobody", b"Yud", b"Yudi2", "Yu\u200bdi".encode(), b"Yu\x00di", "\uff59\uff55\uff44\uff49\uff58".encode()],
    ids=["unknown", "prefix", "longer", "zero-width-inside", "control-inside", "full-width-other-name"],
)
def test_user_not_found(target):
    chat = room("Naman", "Yudi")
    chat.open("anon")
    assert_error_only(chat, "Naman", b"DM " + target + b" hi", "user-not-found")


def test_user_not_found_after_they_left():
    chat = room("Naman", "Yudi")
    chat.close("Yudi")
    chat.outputs()
    assert_error_only(chat, "Naman", b"DM Yudi are you there?", "user-not-found")


def test_user_not_found_for_a_connection_that_is_not_logged_in():
    chat = room("Naman")
    chat.open("anon")
    chat.send("anon", b"LOGIN Naman")  # refused: taken
    chat.outputs()
    assert_error_only(chat, "Naman", b"DM anon hi", "user-not-found")


UNKNOWN_COMMANDS = {
    "plain": b"FOO",
    "with-args": b"HELLO there",
    "dotless-i-ping": "p\u0131ng".encode(),
    "dotless-i-quit": "qu\u0131t".encode(),
    "dotless-i-login": "log\u0131n Naman".encode(),
    "dotted-capital-i": "P\u0130NG".encode(),
    "long-s-msg": "M\u017fG hi".encode(),
    "full-width-ping": "\uff30\uff29\uff2e\uff27".encode(),
    "nbsp-after-word": "PING\u00a0".encode(),
    "nbsp-before-word": "\u00a0PING".encode(),
    "nbsp-only": "\u00a0".encode(),
    "nbsp-separator": "MSG\u00a0hi".encode(),
    "ideographic-space-before": "\u3000PING".encode(),
    "vertical-tab-is-not-whitespace": b"\x0bPING",
    "form-feed-is-not-whitespace": b"PING\x0c",
    "cr-is-not-whitespace": b"PING\r",
    "glued-argument": b"LOGINNaman",
    "prefix": b"MS hi",
    "longer-word": b"QUITE",
    "server-word-ok": b"OK",
    "server-word-err": b"ERR x",
    "server-word-user": b"USER Naman",
    "server-word-info": b"INFO x",
    "slash-command": b"/quit",
}


@pytest.mark.parametrize("line", list(UNKNOWN_COMMANDS.values()), ids=list(UNKNOWN_COMMANDS))
@pytest.mark.parametrize("logged_in", [False, True], ids=["before-login", "after-login"])
def test_unknown_command(line, logged_in):
    chat = me_beside_yudi(logged_in)
    assert_error_only(chat, "me", line, "unknown-command")


@pytest.mark.parametrize(
    "line, reply",
    [
        (b"login Naman", b"OK\n"),
        (b"LoGiN Naman", b"OK\n"),
        (b"Ping", b"PONG\n"),
    ],
)
def test_command_word_is_case_insensitive_before_login(line, reply):
    chat = Chat()
    chat.open("me")
    chat.send("me", line)
    assert chat.outputs() == {"me": reply}


@pytest.mark.parametrize(
    "line, to_yudi, to_naman",
    [
        (b"msg hi", b"MSG Naman hi\n", b""),
        (b"Msg hi", b"MSG Naman hi\n", b""),
        (b"dm Yudi hi", b"DM Naman hi\n", b""),
        (b"Dm Yudi hi", b"DM Naman hi\n", b""),
        (b"who", b"", b"USER Naman\nUSER Yudi\n"),
        (b"wHo", b"", b"USER Naman\nUSER Yudi\n"),
    ],
)
def test_command_word_is_case_insensitive_after_login(line, to_yudi, to_naman):
    chat = room("Naman", "Yudi")
    chat.send("Naman", line)
    assert chat.output("Yudi") == to_yudi
    assert chat.output("Naman") == to_naman


@pytest.mark.parametrize("logged_in", [False, True], ids=["before-login", "after-login"])
def test_line_too_long_gets_one_error_and_the_connection_stays(logged_in):
    chat = me_beside_yudi(logged_in)
    chat.event(LineTooLong("me"))
    assert chat.outputs() == {"me": err("line-too-long")}
    assert chat.closed() == []
    chat.send("me", b"PING")
    assert chat.outputs() == {"me": b"PONG\n"}


INVALID_UTF8 = {
    "lone-ff": b"\xff",
    "lone-continuation": b"\x80",
    "latin-1-text": b"MSG caf\xe9",
    "bad-continuation": b"MSG \xc3\x28",
    "overlong-slash": b"MSG \xc0\xaf",
    "surrogate": b"MSG \xed\xa0\x80",
    "above-10ffff": b"MSG \xf4\x90\x80\x80",
    "truncated": b"MSG \xe2\x82",
    "quit-with-bad-arg": b"QUIT \xff",
    "exit-with-bad-arg": b"exit \xc3",
    "ping-with-bad-arg": b"PING \xff",
    "unknown-with-bad-arg": b"FOO \xff",
    "login-latin-1-name": b"LOGIN Jos\xe9",
    "dm-bad-text": b"DM Yudi \xff",
    "bad-command-word": b"P\xc9NG",
}


@pytest.mark.parametrize("line", list(INVALID_UTF8.values()), ids=list(INVALID_UTF8))
@pytest.mark.parametrize("logged_in", [False, True], ids=["before-login", "after-login"])
def test_invalid_utf8_gets_that_error_and_nothing_else(line, logged_in):
    chat = me_beside_yudi(logged_in)
    assert_error_only(chat, "me", line, "invalid-utf8")
    # Nothing changed: still open, still in the same state.
    chat.send("me", b"WHO")
    expected = b"USER Yudi\nUSER Naman\n" if logged_in else err("not-logged-in")
    assert chat.outputs() == {"me": expected}


# ---------------------------------------------------------------------------
# Framing details the machine owns: whitespace, ignored arguments
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("line", [b"", b" ", b"\t", b" \t \t "], ids=["empty", "space", "tab", "mixed"])
@pytest.mark.parametrize("logged_in", [False, True], ids=["before-login", "after-login"])
def test_empty_or_whitespace_only_line_gets_no_reply(line, logged_in):
    chat = me_beside_yudi(logged_in)
    chat.send("me", line)
    assert chat.outputs() == {}
    assert chat.closed() == []


@pytest.mark.parametrize("line", [b"  PING", b"PING  ", b"\tPING\t", b" \t PING \t "])
def test_leading_and_trailing_space_and_tab_are_trimmed(line):
    chat = Chat()
    chat.open("me")
    chat.send("me", line)
    assert chat.outputs() == {"me": b"PONG\n"}


def test_trimming_applies_to_login_names():
    chat = room("Yudi")
    chat.open("me")
    chat.send("me", b"\t LOGIN \t Naman \t")
    chat.send("me", b"MSG hi")
    assert chat.outputs() == {"me": b"OK\n", "Yudi": b"MSG Naman hi\n"}


@pytest.mark.parametrize(
    "line, reply",
    [
        (b"WHO is there", b"USER Naman\n"),
        (b"WHO\t\x1b[2J", b"USER Naman\n"),
        (b"PING hello", b"PONG\n"),
        (b"PING\tNaman", b"PONG\n"),
    ],
)
def test_arguments_after_who_and_ping_are_ignored(line, reply):
    chat = room("Naman")
    chat.send("Naman", line)
    assert chat.outputs() == {"Naman": reply}


# ---------------------------------------------------------------------------
# Text that reaches another user: control characters out, the rest kept
# ---------------------------------------------------------------------------

TEXT_CLEANING = {
    "ansi-escape": (b"\x1b[31mred\x1b[0m", b"[31mred[0m"),
    "nul": (b"a\x00b", b"ab"),
    "del": (b"a\x7fb", b"ab"),
    "bell-backspace": (b"a\x07\x08b", b"ab"),
    "inner-cr": (b"a\rb", b"ab"),
    "inner-lf-like-c0": (b"a\x0b\x0c\x1fb", b"ab"),
    "c1-nel": ("a\u0085b".encode(), b"ab"),
    "c1-csi": ("\u009b31mx".encode(), b"31mx"),
    "line-separator": ("a\u2028b".encode(), b"ab"),
    "paragraph-separator": ("a\u2029b".encode(), b"ab"),
    "tab-kept": (b"a\tb", b"a\tb"),
    "bidi-override-kept": ("\u202eevil".encode(), "\u202eevil".encode()),
    "bidi-isolates-kept": ("a\u2066b\u2069c\u202ad\u202c".encode(), "a\u2066b\u2069c\u202ad\u202c".encode()),
    "neighbours-kept": ("\u2027\u2026\u0100\u00a0\u200b\u00a9".encode(), "\u2027\u2026\u0100\u00a0\u200b\u00a9".encode()),
    "cleaned-after-split": (b"\x00 hi", b" hi"),
}


@pytest.mark.parametrize("sent, delivered", list(TEXT_CLEANING.values()), ids=list(TEXT_CLEANING))
def test_msg_text_is_cleaned_of_control_characters(sent, delivered):
    chat = room("Naman", "Yudi")
    chat.send("Naman", b"MSG " + sent)
    assert chat.outputs() == {"Yudi": b"MSG Naman " + delivered + b"\n"}


@pytest.mark.parametrize("sent, delivered", list(TEXT_CLEANING.values()), ids=list(TEXT_CLEANING))
def test_dm_text_is_cleaned_of_control_characters(sent, delivered):
    chat = room("Naman", "Yudi")
    chat.send("Naman", b"DM Yudi " + sent)
    assert chat.outputs() == {"Yudi": b"DM Naman " + delivered + b"\n"}


def test_dm_name_is_split_off_before_the_text_is_cleaned():
    chat = room("Naman", "Yudi")
    # The TAB after the NUL is text, not a separator: cleaning comes after splitting.
    chat.send("Naman", b"DM Yudi \x00\thi")
    assert chat.outputs() == {"Yudi": b"DM Naman \thi\n"}


# ---------------------------------------------------------------------------
# Server-initiated lines
# ---------------------------------------------------------------------------


def test_info_goes_to_the_remaining_users_when_a_logged_in_connection_ends():
    chat = room("Naman", "Yudi", "Ana")
    chat.open("anon")
    chat.close("Naman")
    info = b"INFO Naman disconnected\n"
    assert chat.outputs() == {"Yudi": info, "Ana": info}
    assert chat.closed() == []
    assert chat.machine.usernames() == ["Yudi", "Ana"]


def test_no_info_when_an_anonymous_connection_ends():
    chat = room("Yudi")
    chat.open("anon")
    chat.send("anon", b"LOGIN bad name")
    chat.outputs()
    chat.close("anon")
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


def test_idle_timeout_line_is_the_last_line():
    chat = room("Naman", "Yudi")
    chat.event(IdleTimedOut("Naman"))
    chat.output("Naman")
    chat.send("Yudi", b"MSG anyone?")
    chat.send("Yudi", b"DM Naman you there?")
    chat.close("Naman")
    assert chat.output("Naman") == b""


def test_server_full_refuses_the_connection_beyond_max_clients():
    chat = Chat(max_clients=2)
    chat.open("a", "b")
    assert chat.outputs() == {}
    chat.open("c")
    assert chat.outputs() == {"c": err("server-full")}
    assert chat.closed() == [("c", CloseReason.SERVER_FULL)]


def test_anonymous_connections_take_places_too():
    chat = Chat(max_clients=2)
    chat.login("a", "Amy")
    chat.open("b")  # never logs in
    chat.open("c")
    assert chat.outputs() == {"c": err("server-full")}


def test_a_refused_connection_does_not_take_a_place():
    chat = Chat(max_clients=1)
    chat.open("a")
    chat.open("refused")  # refused; its ConnectionClosed has not come yet
    chat.outputs()
    chat.closed()
    chat.close("a")
    chat.open("b")
    assert chat.outputs() == {}
    assert chat.closed() == []
    chat.send("b", b"LOGIN Bob")
    assert chat.outputs() == {"b": b"OK\n"}


def test_a_place_frees_when_a_connection_closes():
    chat = Chat(max_clients=2)
    chat.login("a", "Amy")
    chat.login("b", "Bob")
    chat.open("c")
    chat.close("c")
    chat.outputs()
    chat.closed()
    chat.close("a")
    chat.open("d")
    chat.send("d", b"LOGIN Dee")
    assert chat.outputs() == {"b": b"INFO Amy disconnected\n", "d": b"OK\n"}
    assert chat.closed() == []
    chat.open("e")
    assert chat.outputs() == {"e": err("server-full")}


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


# ---------------------------------------------------------------------------
# Cross-protocol guard, Telnet refusals, closing connections, isolation
# ---------------------------------------------------------------------------

HTTP_LINES = {
    "get": b"GET / HTTP/1.1",
    "get-path-1.0": b"GET /favicon.ico HTTP/1.0",
    "post": b"POST /chat HTTP/1.1",
    "head": b"HEAD / HTTP/1.1",
    "options-asterisk": b"OPTIONS * HTTP/1.1",
    "webdav-method": b"PROPFIND /calendar HTTP/1.1",
    "host-header": b"Host: localhost:4000",
    "host-header-lower-case": b"host: localhost",
}


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


@pytest.mark.parametrize("line", list(HTTP_LINES.values()), ids=list(HTTP_LINES))
def test_http_looking_line_after_login_is_just_an_unknown_command(line):
    chat = room("Naman", "Yudi")
    assert_error_only(chat, "Naman", line, "unknown-command")


@pytest.mark.parametrize(
    "command, option, answer",
    [
        (DO, 6, bytes([IAC, WONT, 6])),  # DO TIMING-MARK (Ctrl+C in telnet)
        (DO, 1, bytes([IAC, WONT, 1])),  # DO ECHO
        (DO, 24, bytes([IAC, WONT, 24])),  # DO TERMINAL-TYPE
        (WILL, 1, bytes([IAC, DONT, 1])),
        (WILL, 3, bytes([IAC, DONT, 3])),  # WILL SUPPRESS-GO-AHEAD
        (WILL, 31, bytes([IAC, DONT, 31])),  # WILL NAWS
    ],
    ids=["do-timing-mark", "do-echo", "do-ttype", "will-echo", "will-sga", "will-naws"],
)
@pytest.mark.parametrize("logged_in", [False, True], ids=["before-login", "after-login"])
def test_telnet_option_request_is_refused(command, option, answer, logged_in):
    chat = me_beside_yudi(logged_in)
    chat.event(TelnetOptionRequested("me", command, option))
    assert chat.outputs() == {"me": answer}
    assert chat.closed() == []


def _quit(chat, conn):
    chat.send(conn, b"QUIT")


def _idle(chat, conn):
    chat.event(IdleTimedOut(conn))


def _shutdown(chat, conn):
    chat.event(ShutdownStarted())


def _cross_protocol(chat, conn):
    chat.send(conn, b"GET / HTTP/1.1")


@pytest.mark.parametrize("closing", [_quit, _idle, _shutdown], ids=["quit", "idle", "shutdown"])
def test_lines_from_a_logged_in_connection_being_closed_produce_nothing(closing):
    chat = room("Naman", "Yudi")
    closing(chat, "Naman")
    chat.outputs()
    chat.closed()
    for line in [b"PING", b"MSG ghost", b"DM Yudi ghost", b"WHO", b"LOGIN x", b"FOO", b"\xff", b"QUIT"]:
        chat.send("Naman", line)
    chat.event(LineTooLong("Naman"))
    chat.event(IdleTimedOut("Naman"))
    assert chat.outputs() == {}
    assert chat.closed() == []


@pytest.mark.parametrize(
    "closing", [_quit, _idle, _shutdown, _cross_protocol], ids=["quit", "idle", "shutdown", "cross-protocol"]
)
def test_lines_from_an_anonymous_connection_being_closed_produce_nothing(closing):
    chat = room("Yudi")
    chat.open("anon")
    closing(chat, "anon")
    chat.outputs()
    chat.closed()
    for line in [b"PING", b"LOGIN Naman", b"MSG hi", b"FOO", b"\xff", b"EXIT"]:
        chat.send("anon", line)
    chat.event(LineTooLong("anon"))
    chat.event(IdleTimedOut("anon"))
    assert chat.outputs() == {}
    assert chat.closed() == []


def test_lines_from_a_connection_refused_as_full_produce_nothing():
    chat = Chat(max_clients=1)
    chat.login("a", "Amy")
    chat.open("b")
    chat.outputs()
    chat.closed()
    for line in [b"PING", b"LOGIN Bob", b"MSG hi", b"QUIT"]:
        chat.send("b", line)
    chat.event(IdleTimedOut("b"))
    assert chat.outputs() == {}
    assert chat.closed() == []


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
