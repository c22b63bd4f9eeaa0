"""Hostile and foreign input over real TCP, and real third-party clients.

Issue 4's interoperability parts, each proved on 127.0.0.1 with an OS-chosen
port:

- names and text: usernames that only collide after NFKC or casefolding,
  that grow or gain spaces under NFKC, that hide zero-width, bidirectional
  or control characters; message text full of terminal escapes and line
  separators reaching the other user as one clean line;
- Telnet: the bytes of a Ctrl+C (``IAC IP IAC DO TIMING-MARK``), and the
  real ``telnet`` program driven in tmux;
- cross-protocol and junk: a browser's form post, a TLS ClientHello and
  random binary;
- half-close: ``nc -N``, ``socat`` and ``ncat`` reading every answer before
  the server closes.

Nothing sleeps to wait for something that can be waited on: a PING/PONG
round trip proves that nothing else arrived before it.  The one poll is
tmux's screen, which offers no event to wait on: it is read every 50 ms up
to a deadline.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import tempfile
import time
import unicodedata
from collections.abc import Callable

import pytest
from netutil import Client, login, server_process, threaded_server
from tools import require


@pytest.fixture
def server():
    with threaded_server() as running:
        yield running


def nfkc(text: str) -> str:
    return unicodedata.normalize("NFKC", text)


def name_key(name: str) -> str:
    """protocol.md's comparison key, written from the text, not from protocol/."""
    return nfkc(nfkc(name).casefold())


def follows_the_name_rule(name: str) -> bool:
    """protocol.md's username rule, written from the text, not from protocol/."""
    form = nfkc(name)
    if not 1 <= len(form) <= 32 or unicodedata.category(form[0]).startswith("M"):
        return False
    return all(
        unicodedata.category(char)[0] in "LM" or unicodedata.category(char) == "Nd" or char in "_-."
        for char in form
    )


def send_login(client: Client, name: str) -> None:
    client.send(b"LOGIN " + name.encode("utf-8") + b"\n")


# -- 1. names ----------------------------------------------------------------------------

# (owner, challenger, do they collide?).  The test checks each row against the
# rule key = NFKC(casefold(NFKC(name))) before it asks the server.
COLLISIONS = [
    pytest.param("Naman", "ｎａｍａｎ", True, id="fullwidth-lower"),
    pytest.param("ＮＡＭＡＮ", "naman", True, id="fullwidth-owner"),
    pytest.param("Jos\u00e9", "Jose\u0301", True, id="composed-then-decomposed"),
    pytest.param("Jose\u0301", "JOS\u00c9", True, id="decomposed-then-composed-upper"),
    pytest.param("straße", "STRASSE", True, id="sharp-s-upper"),
    pytest.param("ß", "ss", True, id="sharp-s-lower"),
    pytest.param("SS", "ß", True, id="SS-then-sharp-s"),
    pytest.param("\u1e9e", "ss", True, id="capital-sharp-s"),
    pytest.param("ﬁ", "FI", True, id="ligature"),
    pytest.param("Ⅸ", "ix", True, id="roman-numeral"),
    pytest.param("\u0390", "\u0399\u0308\u0301", True, id="outer-nfkc-recomposes"),
    pytest.param("İ", "i\u0307", True, id="dotted-I-vs-i-combining-dot"),
    pytest.param("İ", "i", False, id="dotted-I-vs-i"),
    pytest.param("i", "İ", False, id="i-vs-dotted-I"),
    pytest.param("İ", "I", False, id="dotted-I-vs-I"),
    pytest.param("ı", "I", False, id="dotless-i-vs-I"),
    pytest.param("ı", "i", False, id="dotless-i-vs-i"),
]


@pytest.mark.parametrize("owner_name, challenger_name, collide", COLLISIONS)
def test_names_collide_exactly_when_their_keys_are_equal(server, owner_name, challenger_name, collide):
    assert (name_key(owner_name) == name_key(challenger_name)) is collide  # the table obeys the rule
    owner_shown = nfkc(owner_name)
    owner = Client(server.port)
    send_login(owner, owner_name)
    owner.expect("OK")
    challenger = Client(server.port)
    send_login(challenger, challenger_name)
    if collide:
        challenger.expect("ERR username-taken")
        challenger.say("LOGIN probe")
        challenger.expect("OK")
        challenger_shown = "probe"
        # DM finds its target by the same comparison: the colliding spelling reaches the owner.
        challenger.send(b"DM " + challenger_name.encode() + b" found you\n")
        owner.expect("DM probe found you")
    else:
        challenger.expect("OK")
        challenger_shown = nfkc(challenger_name)
        # Each spelling reaches its own owner, and only them.
        challenger.send(b"DM " + owner_name.encode() + b" to the owner\n")
        owner.expect(f"DM {challenger_shown} to the owner")
        owner.send(b"DM " + challenger_name.encode() + b" to the challenger\n")
        challenger.expect(f"DM {owner_shown} to the challenger")
    owner.say("WHO")
    owner.expect(f"USER {owner_shown}", f"USER {challenger_shown}")
    owner.sync()
    challenger.sync()


# (name as typed, how it is shown, or None when it must be refused).
NAMES = [
    pytest.param("ＡＢＣ", "ABC", id="fullwidth-shown-as-nfkc"),
    pytest.param("Jose\u0301", "Jos\u00e9", id="decomposed-shown-composed"),
    pytest.param("e\u0301" * 17, "\u00e9" * 17, id="34-code-points-typed-17-after-nfkc"),
    pytest.param("सुरेश", "सुरेश", id="devanagari-with-marks"),
    pytest.param("x²", "x2", id="superscript-digit"),
    pytest.param("Ⅻ", "XII", id="roman-numeral"),
    pytest.param("٣٤", "٣٤", id="arabic-indic-digits"),
    pytest.param("a.b-c_d", "a.b-c_d", id="punctuation"),
    pytest.param("a" * 32, "a" * 32, id="32-ascii"),
    pytest.param("\ufb03" * 10, "ffi" * 10, id="ligatures-30-after-nfkc"),
    pytest.param("\u3300" * 8, "アパート" * 8, id="squared-katakana-32-after-nfkc"),
    pytest.param("a" * 33, None, id="33-ascii"),
    pytest.param("\ufb03" * 11, None, id="ligatures-grow-to-33"),
    pytest.param("\u3300" * 8 + "a", None, id="squared-katakana-grow-to-33"),
    pytest.param("\ufdfa", None, id="U+FDFA-gains-spaces"),
    pytest.param("alice\u00a0", None, id="nbsp-becomes-a-space"),
    pytest.param("\u3000alice", None, id="ideographic-space"),
    pytest.param("½", None, id="fraction-slash"),
    pytest.param("al\u200bice", None, id="zero-width-space"),
    pytest.param("al\u200dice", None, id="zero-width-joiner"),
    pytest.param("ali\u00adce", None, id="soft-hyphen"),
    pytest.param("\u202ealice", None, id="right-to-left-override"),
    pytest.param("\u2066alice\u2069", None, id="left-to-right-isolate"),
    pytest.param("\u0301alice", None, id="combining-mark-first"),
    pytest.param("ali\x00ce", None, id="NUL"),
    pytest.param("ali\x01ce", None, id="SOH"),
    pytest.param("ali\x1b[31mce", None, id="ANSI-escape"),
    pytest.param("ali\x7fce", None, id="DEL"),
    pytest.param("ali\u0085ce", None, id="C1-NEL"),
    pytest.param("ali\u009bce", None, id="C1-CSI"),
    pytest.param("ali\u2028ce", None, id="line-separator"),
    pytest.param("ali\tce", None, id="TAB-inside"),
]


@pytest.mark.parametrize("typed, shown", NAMES)
def test_the_username_rule_over_tcp(server, typed, shown):
    assert follows_the_name_rule(typed) is (shown is not None)  # the table obeys the rule
    watcher = login(server.port, "watcher")
    client = Client(server.port)
    send_login(client, typed)
    if shown is None:
        client.expect("ERR invalid-username")
        client.say("LOGIN fallback")  # a refused name leaves the connection usable
        client.expect("OK")
        shown = "fallback"
    else:
        client.expect("OK")
    client.say("MSG hi")
    assert watcher.line() == b"MSG " + shown.encode("utf-8") + b" hi"
    watcher.say("WHO")
    assert watcher.line() == b"USER watcher"
    assert watcher.line() == b"USER " + shown.encode("utf-8")
    watcher.sync()
    client.sync()


# -- 1. message text ---------------------------------------------------------------------

# (text as sent, the exact bytes the other user receives).
TEXTS = [
    pytest.param("\x1b[31mred\x1b[0m plain", b"[31mred[0m plain", id="ANSI-colour"),
    pytest.param("\x1b]0;pwned\x07title", b"]0;pwnedtitle", id="OSC-title-with-BEL"),
    pytest.param("\x1b[2J\x1b[Hclear", b"[2J[Hclear", id="ANSI-clear-screen"),
    pytest.param("a\x00b", b"ab", id="NUL"),
    pytest.param("a\x7fb", b"ab", id="DEL"),
    pytest.param("a\u0085b", b"ab", id="C1-NEL"),
    pytest.param("a\u009b31mb", b"a31mb", id="C1-CSI"),
    pytest.param("a\u2028b", b"ab", id="line-separator"),
    pytest.param("a\u2029b", b"ab", id="paragraph-separator"),
    pytest.param("a\rb\x0bc\x0cd\x08e", b"abcde", id="CR-VT-FF-BS"),
    pytest.param("a\tb", b"a\tb", id="TAB-kept"),
    pytest.param("\u202eabc\u202c \u2066x\u2069", "\u202eabc\u202c \u2066x\u2069".encode(), id="bidi-kept"),
    pytest.param("caf\u00e9 \u00a0 \u3000 \u00ff", "caf\u00e9 \u00a0 \u3000 \u00ff".encode(), id="non-ASCII-kept"),
    pytest.param(
        "hi\u2028MSG mallory fake\u2029\x1b[1A\x00\x7f\u0085\u009b!",
        b"hiMSG mallory fake[1A!",
        id="everything-at-once",
    ),
]


@pytest.mark.parametrize("command", ["MSG", "DM"])
@pytest.mark.parametrize("text, delivered", TEXTS)
def test_message_text_reaches_the_other_user_as_one_clean_line(server, command, text, delivered):
    alice, bob = login(server.port, "alice"), login(server.port, "bob")
    prefix = b"MSG " if command == "MSG" else b"DM bob "
    alice.send(prefix + text.encode("utf-8") + b"\n" + prefix + b"next\n")
    line = bob.line()
    assert line == command.encode() + b" alice " + delivered
    assert len(line.decode("utf-8").splitlines()) == 1  # not even str.splitlines() splits it
    assert bob.line() == command.encode() + b" alice next"  # nothing forged in between
    bob.sync()
    alice.sync()  # and the sender got no error


@pytest.mark.parametrize("command", ["MSG", "DM bob"])
def test_text_of_control_characters_only_is_missing(server, command):
    alice, bob = login(server.port, "alice"), login(server.port, "bob")
    alice.send(command.encode() + " \x1b\x00\x7f\u0085\u2028\u2029\x07".encode() + b"\n")
    alice.expect("ERR missing-text")
    bob.sync()


# -- 2. Telnet: the bytes --------------------------------------------------------------------

IAC, DONT, DO, WONT, WILL, SB, SE, IP, NOP = 255, 254, 253, 252, 251, 250, 240, 244, 241
TIMING_MARK, ECHO, TERMINAL_TYPE = 6, 1, 24


def test_ctrl_c_from_telnet_is_refused_and_the_glued_line_still_runs(server):
    alice = login(server.port, "alice")
    bob = Client(server.port)
    bob.send(b"LOGIN bob\r\n")
    bob.expect("OK")
    bob.send(bytes([IAC, IP, IAC, DO, TIMING_MARK]) + b"PING\r\n")
    assert bob.line() == bytes([IAC, WONT, TIMING_MARK]) + b"PONG"  # three raw bytes, then the reply
    alice.say("MSG after ctrl-c")
    bob.expect("MSG alice after ctrl-c")
    bob.send(b"WHO\r\n")
    bob.expect("USER alice", "USER bob")
    bob.send(b"MSG back\r\n")
    alice.expect("MSG bob back")
    bob.sync()
    alice.sync()


@pytest.mark.parametrize(
    "sent, expected",
    [
        pytest.param(bytes([IAC, WILL, ECHO]) + b"PING\r\n", bytes([IAC, DONT, ECHO]) + b"PONG", id="WILL-refused"),
        pytest.param(bytes([IAC, WONT, ECHO, IAC, DONT, ECHO]) + b"PING\r\n", b"PONG", id="WONT-DONT-silent"),
        pytest.param(
            bytes([IAC, SB, TERMINAL_TYPE, 0]) + b"xterm" + bytes([IAC, SE]) + b"PING\r\n",
            b"PONG",
            id="subnegotiation-removed",
        ),
        pytest.param(b"PI" + bytes([IAC, NOP]) + b"NG\r\n", b"PONG", id="command-inside-a-word"),
        pytest.param(bytes([IAC, SB, TERMINAL_TYPE]) + b"\nPING\n", b"PONG", id="LF-ends-subnegotiation"),
    ],
)
def test_other_telnet_commands_are_removed_before_lines_are_cut(server, sent, expected):
    client = Client(server.port)
    client.send(sent)
    assert client.line() == expected
    client.sync()


# -- 2. Telnet: the real program in tmux -----------------------------------------------------


class Tmux:
    """One detached tmux session on a private tmux server (``-S``), for one program."""

    def __init__(self, command: str) -> None:
        self.directory = tempfile.mkdtemp(prefix="chat-tmux-")
        self.socket_path = os.path.join(self.directory, "socket")
        self.session = "telnet"
        self.env = {key: value for key, value in os.environ.items() if key != "TMUX"}
        self.run("new-session", "-d", "-s", self.session, "-x", "200", "-y", "50", command)

    def run(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-S", self.socket_path, *args],
            capture_output=True,
            env=self.env,
            timeout=10,
            check=True,
        )
        return done.stdout.decode("utf-8", "replace")

    def keys(self, *keys: str) -> None:
        self.run("send-keys", "-t", self.session, *keys)

    def screen(self) -> list[str]:
        return [line.rstrip() for line in self.run("capture-pane", "-p", "-t", self.session).splitlines()]

    def wait_for(self, what: str, predicate: Callable[[list[str]], bool], timeout: float = 5.0) -> list[str]:
        """Poll the screen (tmux has no event to wait on) every 50 ms until ``predicate`` holds."""
        deadline = time.monotonic() + timeout
        screen: list[str] = []
        for _ in range(int(timeout / 0.05) + 1):
            screen = self.screen()
            if predicate(screen):
                return screen
            if time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        shown = "\n".join(line for line in screen if line)
        raise AssertionError(f"telnet's screen never showed {what}; it shows:\n{shown}")

    def kill(self) -> None:
        """End the session (and with it telnet and this private tmux server)."""
        try:
            subprocess.run(
                ["tmux", "-S", self.socket_path, "kill-session", "-t", self.session],
                capture_output=True,
                env=self.env,
                timeout=10,
            )
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


def _index(screen: list[str], predicate: Callable[[str], bool], after: int = -1) -> int | None:
    for index in range(after + 1, len(screen)):
        if predicate(screen[index]):
            return index
    return None


def test_the_real_telnet_program_survives_ctrl_c(server):
    require("telnet")
    require("tmux")
    tmux = Tmux(f"telnet 127.0.0.1 {server.port}")
    try:
        tmux.wait_for("the connection", lambda s: _index(s, lambda l: l.startswith("Escape character")) is not None)
        tmux.keys("LOGIN alice", "Enter")
        tmux.wait_for("OK after LOGIN", lambda s: _index(s, lambda l: l == "OK") is not None)
        bob = login(server.port, "bob")
        bob.say("DM alice hello from bob")
        tmux.wait_for("bob's DM", lambda s: _index(s, lambda l: l == "DM bob hello from bob") is not None)

        tmux.keys("C-c")  # telnet sends IAC IP IAC DO TIMING-MARK and hides output until answered
        tmux.keys("PING", "Enter")

        def pong_after_ping(screen: list[str]) -> bool:
            typed = _index(screen, lambda l: l.endswith("PING"))
            return typed is not None and _index(screen, lambda l: l == "PONG", typed) is not None

        tmux.wait_for("PONG after PING typed after Ctrl+C", pong_after_ping)
        bob.say("MSG still there, alice?")
        tmux.wait_for(
            "a later MSG from bob",
            lambda s: _index(s, lambda l: l == "MSG bob still there, alice?") is not None,
        )
        bob.say("WHO")
        bob.expect("USER alice", "USER bob")  # alice's session survived the Ctrl+C
        bob.sync()
    finally:
        tmux.kill()


# -- 3. cross-protocol -------------------------------------------------------------------------


def _form_post(body: bytes, content_type: bytes) -> bytes:
    return (
        b"POST /x HTTP/1.1\r\n"
        b"Host: 127.0.0.1:4000\r\n"
        b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
        b"Origin: http://evil.example\r\n"
        b"Content-Type: " + content_type + b"\r\n"
        b"Content-Length: %d\r\n" % len(body) + b"\r\n" + body
    )


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(
            _form_post(b"LOGIN x%0AMSG spam", b"application/x-www-form-urlencoded"), id="urlencoded-form"
        ),
        pytest.param(_form_post(b"\nLOGIN mallory\nMSG spam\n", b"text/plain"), id="text-plain-body-lines"),
        pytest.param(
            _form_post(b"a=1\r\nLOGIN mallory\r\nMSG spam\r\nQUIT\r\n", b"multipart/form-data; boundary=x"),
            id="crlf-body-lines",
        ),
    ],
)
def test_a_browser_form_post_runs_no_chat_command_and_is_closed(request_bytes):
    with server_process() as server:
        watcher = login(server.port, "watcher")
        browser = Client(server.port)
        browser.send(request_bytes)
        assert browser.read_until_closed() == b""  # closed, with no reply at all
        watcher.say("WHO")
        watcher.expect("USER watcher")  # nobody logged in from the request
        watcher.sync()  # no MSG spam, no INFO: PONG is the next line
        for name in ("x", "mallory"):  # and the names are free
            other = Client(server.port)
            other.say(f"LOGIN {name}")
            other.expect("OK")
            other.say("QUIT")
            other.expect("Goodbye!")
            watcher.expect(f"INFO {name} disconnected")
            other.close()
        watcher.sync()
        watcher.close()
        browser.close()
        status, _, err = server.stop()
    assert status == 0
    log = err.decode("utf-8", "replace")
    warnings = [line for line in log.splitlines() if line.startswith("WARNING") and "HTTP" in line]
    assert len(warnings) == 1, log
    assert "spam" not in log


# -- 3. junk ----------------------------------------------------------------------------------

IDLE = 1.0
JUNK_ERRORS = {b"ERR invalid-utf8", b"ERR unknown-command", b"ERR line-too-long"}


def _vector(length_bytes: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(length_bytes, "big") + payload


def tls_client_hello(rng: random.Random) -> bytes:
    """A TLS 1.3 ClientHello record as a browser sends it, with random values.

    Cipher suite 0x000a and extension 0x000a (supported_groups) put real 0x0A
    bytes in it, so the server sees a few "lines".
    """
    suites = bytes.fromhex("130113021303c02bc02fc02cc030cca9cca8c013c014009c009d002f0035000a")
    extensions = b"".join(
        kind.to_bytes(2, "big") + _vector(2, data)
        for kind, data in [
            (0x0000, _vector(2, b"\x00" + _vector(2, b"chat.example.com"))),  # server_name
            (0x000A, _vector(2, bytes.fromhex("0a0a001d00170018"))),  # supported_groups, GREASE first
            (0x000B, _vector(1, b"\x00")),  # ec_point_formats
            (0x000D, _vector(2, bytes.fromhex("0403080404010503080505010806060102010a0a"))),  # signature_algorithms
            (0x0010, _vector(2, _vector(1, b"h2") + _vector(1, b"http/1.1"))),  # ALPN
            (0x002B, _vector(1, bytes.fromhex("03040303"))),  # supported_versions
            (0x0033, _vector(2, b"\x00\x1d" + _vector(2, rng.randbytes(32)))),  # key_share
            (0x0015, _vector(2, bytes(rng.randrange(0, 200)))),  # padding
        ]
    )
    body = (
        b"\x03\x03"
        + rng.randbytes(32)  # random
        + _vector(1, rng.randbytes(32))  # legacy session id
        + _vector(2, suites)
        + _vector(1, b"\x00")  # compression: null
        + _vector(2, extensions)
    )
    handshake = b"\x01" + _vector(3, body)
    return b"\x16\x03\x01" + _vector(2, handshake)


def random_binary(rng: random.Random, size: int) -> bytes:
    return rng.randbytes(size)


def binary_without_line_end(rng: random.Random, size: int) -> bytes:
    """Random bytes with no LF and no 0xFF (which would start a Telnet command)."""
    return bytes(byte for byte in rng.randbytes(size * 2) if byte not in (0x0A, 0xFF))[:size]


def _strip_telnet_refusals(data: bytes) -> bytes:
    """Junk may hold IAC DO x / IAC WILL x: their 3-byte refusals are not lines."""
    return re.sub(rb"\xff[\xfc\xfe].", b"", data, flags=re.DOTALL)


def _read_until_closed_keeping_watcher_busy(junk: Client, watcher: Client, timeout: float) -> bytes:
    """Everything the junk connection gets until the server closes it.

    Meanwhile the watcher does PING round trips every 0.1 s: that keeps it
    active under the short idle timeout, and each PONG arriving as its very
    next line proves it received nothing else.
    """
    deadline = time.monotonic() + timeout
    data = b""
    for _ in range(int(timeout / 0.1) + 2):
        watcher.sync()
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"the junk connection is still open after {timeout} s (got {data!r})"
        junk.sock.settimeout(min(0.1, remaining))
        try:
            chunk = junk.sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk
    raise AssertionError(f"the junk connection is still open after {timeout} s (got {data!r})")


@pytest.mark.parametrize(
    "make_junk",
    [
        pytest.param(lambda rng: random_binary(rng, 4096), id="random-4KiB"),
        pytest.param(lambda rng: random_binary(rng, 16384), id="random-16KiB"),
    ],
)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_junk_gets_at_most_one_err_per_line_then_an_idle_timeout(make_junk, seed):
    rng = random.Random(seed)
    junk_bytes = make_junk(rng)
    if junk_bytes.endswith(b"\n"):
        junk_bytes += b"\x00"  # end in an unfinished line, so the idle timer decides the end
    lines = junk_bytes.count(b"\n")
    assert lines >= 1
    with threaded_server(idle_timeout=IDLE) as server:
        watcher = login(server.port, "watcher")
        junk = Client(server.port)
        for start in range(0, len(junk_bytes), 1000):  # several segments, as a real peer sends them
            junk.send(junk_bytes[start : start + 1000])
        received = _read_until_closed_keeping_watcher_busy(junk, watcher, timeout=IDLE + 4)
        replies = _strip_telnet_refusals(received).split(b"\n")
        assert replies[-1] == b"", f"a partial line: {received!r}"
        *errors, last = replies[:-1]
        assert last == b"ERR idle-timeout", received
        assert len(errors) <= lines, f"{len(errors)} ERR lines for {lines} completed lines"
        assert set(errors) <= JUNK_ERRORS, received
        watcher.say("WHO")
        watcher.expect("USER watcher")
        watcher.sync()  # no INFO: the junk never logged in
        watcher.close()
        junk.close()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_tls_client_hello_on_the_plaintext_port_is_closed_silently_at_once(seed):
    """Before, it got ERR lines and waited for the idle timeout; a TLS client hung meanwhile."""
    hello = tls_client_hello(random.Random(seed))
    with threaded_server(idle_timeout=60) as server:
        watcher = login(server.port, "watcher")
        junk = Client(server.port)
        junk.send(hello[:1])  # the record's first byte alone, then the rest
        watcher.sync()
        junk.send(hello[1:])
        assert junk.read_until_closed() == b""  # no reply at all, and well before 60 s
        watcher.say("WHO")
        watcher.expect("USER watcher")
        watcher.sync()
        watcher.close()


def test_binary_without_a_line_end_gets_one_line_too_long_then_an_idle_timeout():
    junk_bytes = binary_without_line_end(random.Random(7), 50_000)
    with threaded_server(idle_timeout=IDLE) as server:
        watcher = login(server.port, "watcher")
        junk = Client(server.port)
        for start in range(0, len(junk_bytes), 5000):
            junk.send(junk_bytes[start : start + 5000])
            watcher.sync()  # the server has most likely read this piece: one ERR for all of them
        received = _read_until_closed_keeping_watcher_busy(junk, watcher, timeout=IDLE + 4)
        assert received == b"ERR line-too-long\nERR idle-timeout\n"
        watcher.say("WHO")
        watcher.expect("USER watcher")
        watcher.sync()
        watcher.close()
        junk.close()


# -- 4. half-close with real clients -----------------------------------------------------------


def _half_closing_client(tool: str, port: int) -> list[str]:
    path = require(tool)
    if tool == "nc":
        return [path, "-N", "127.0.0.1", str(port)]  # -N: shutdown(SHUT_WR) at end of input
    if tool == "socat":
        return [path, "-t", "5", "-", f"TCP:127.0.0.1:{port}"]  # half-closes, then waits <= 5 s
    return [path, "127.0.0.1", str(port)]  # ncat half-closes at end of input unless --no-shutdown


def _long_script(length: int) -> tuple:
    """``length`` lines: every one is answered, in order, before the server closes."""
    script = ["LOGIN a"]
    expected = ["OK"]
    for number in range(length - 2):
        if number % 3 == 0:
            script.append(f"DM a note {number}")  # a DM to oneself is delivered
            expected.append(f"DM a note {number}")
        elif number % 3 == 1:
            script.append("PING")
            expected.append("PONG")
        else:
            script.append(f"NOPE {number}")
            expected.append("ERR unknown-command")
    script.append("WHO")
    expected.append("USER a")
    assert len(script) == length
    return "".join(line + "\n" for line in script).encode(), "".join(line + "\n" for line in expected).encode()


SCRIPTS = {
    "three-lines": (b"LOGIN a\nWHO\nPING\n", b"OK\nUSER a\nPONG\n"),
    "fifty-lines": _long_script(50),
    # Past the flood-control burst (100): the last 50 lines wait a second for
    # tokens, and the end of stream behind them must wait too.
    "150-lines-past-the-burst": _long_script(150),
    "crlf-and-unfinished-last-line": (b"LOGIN a\r\nWHO\r\nPING\r\nPING", b"OK\nUSER a\nPONG\n"),
}


@pytest.mark.parametrize("script", sorted(SCRIPTS))
@pytest.mark.parametrize("tool", ["nc", "socat", "ncat"])
def test_every_line_before_end_of_stream_is_answered_before_the_server_closes(server, tool, script):
    argv = _half_closing_client(tool, server.port)
    sent, expected = SCRIPTS[script]
    started = time.monotonic()
    done = subprocess.run(argv, input=sent, capture_output=True, timeout=10)
    elapsed = time.monotonic() - started
    assert done.stdout == expected, done.stderr.decode(errors="replace")
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    # The server closed its side: the client did not have to give up (socat -t 5).
    assert elapsed < 4, f"{tool} took {elapsed:.1f} s: the server did not close after answering"
    watcher = login(server.port, "watcher")
    watcher.say("WHO")
    watcher.expect("USER watcher")  # "a" is gone
    watcher.sync()
