"""``chat-client``: the terminal client for the chat server (its command line and sessions).

Every line the user types is sent as typed, so the protocol is the user
interface (``LOGIN alice``, ``MSG hi``, ``WHO``, ``QUIT``); the client adds
a terminal that does not tear, and a scripted mode for pipes.

Theory of operation
-------------------
The connection is a ``chatclient.link.Link``: plain TCP, or TLS with
``--tls``, the same to everything below.  With ``--login`` the client first
sends LOGIN and waits for the answer (``log_in``), so that it never says
"connected as NAME" before the server agreed, and a refusal ends it with
status 1 before any session starts.

The client has two jobs that block: reading the user's input and reading
the server's lines.  ``select()`` cannot wait on standard input on Windows,
and ``input()`` with readline blocks in C, so each job gets its own thread:

*Interactive* (standard input is a terminal).  The main thread sits in
``input()`` (``chatclient.terminal.Screen.read_line``) and sends each line.
A reader thread receives from the server and hands each line to the
``Screen``, which has the main thread draw it above the line being typed
(how, and why there, is explained in ``chatclient.terminal``).  Ctrl+D
(``EOFError``) and Ctrl+C (``KeyboardInterrupt``) make the main thread send
QUIT, wait briefly for ``Goodbye!``, and close.

When the server closes first, the reader thread prints why and must pull
the main thread out of ``input()``, which blocks in C.  It sends a signal
to the main thread (``signal.pthread_kill``): readline's ``select()``, or
the plain ``read()``, fails with EINTR and runs a handler, which raises
``KeyboardInterrupt``.  The handler raises at most once per session (it is
"armed" only while the main thread is in its editing loop), so a late
signal can never surface as a traceback while the client is leaving.  A
signal that arrives just before readline enters ``select()`` is not seen
until the next key, so the reader sends it again until the main thread
has left its loop (bounded).  The same applies to the user's own Ctrl+C:
the reader thread blocks SIGINT, so the kernel delivers it to the main
thread, and ``signal.set_wakeup_fd`` tells the reader thread it happened,
which then makes sure it was seen.

One trap shapes the handlers.  After readline gives up on an interrupt,
``input()`` checks for signals once more with the ``KeyboardInterrupt``
already set; any Python handler that runs then fails with SystemError and
prints a traceback.  So exactly one handler raises, the one for
``DRAW_SIGNAL`` (SIGUSR1, the highest-numbered signal we handle: CPython
runs the handlers of one check in increasing order, so none of ours is left
pending behind it), and before raising it blocks both signals, so none can
arrive until ``input()`` has returned.  A Ctrl+C (SIGINT) only records the
request and sends ``DRAW_SIGNAL``, which the same check then runs.  In
plain mode there is no draw signal; there SIGINT raises itself, after
blocking itself.  Where ``pthread_kill`` does not exist
(Windows), the reader thread flushes and ends the process with
``os._exit``: no readline is in use there, so the console has no state to
restore.

*Scripted* (standard input is a pipe or a file).  A daemon thread copies
standard input to the server (as UTF-8: invalid bytes become U+FFFD, so
the client never sends a byte 0xFF, which the server would take for a
Telnet command) and, at end of input, half-closes the connection.  The
main thread copies the server's bytes to standard output unchanged.  The protocol
promises that after a half-close the server answers every complete line
and then closes ("End of stream"), so "the server has answered" is exactly
"the server closed": the main thread reads until then, but at most
``--timeout`` seconds after the end of input, waking from ``select`` on
the socket and on a socket pair the input thread signals.  Notices go to
stderr, so stdout holds only what the server sent.

Exit status (``--help`` lists them): 0 when the session ended in order
(the user left; the input ended and the server answered and closed; the
server closed after ``Goodbye!``, ``ERR idle-timeout`` or ``ERR
server-shutting-down``); 1 when the client could not connect, the server
refused ``--login``, or the server vanished: a reset, or a close without
one of those last lines while the input was still open, which a script
must be able to tell from an orderly end (``describe_ending``); 2 for a
bad command line; 130 for Ctrl+C while connecting, logging in, or in
scripted mode.  No network error prints a traceback.

Imports: the standard library, ``protocol`` (for ``__version__``),
``chatclient.link`` and ``chatclient.terminal``.
"""

from __future__ import annotations

import argparse
import codecs
import os
import re
import select
import signal
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import BinaryIO

import protocol

from .link import CONNECT_TIMEOUT, ConnectError, Link, connect, start_tls, tls_context
from .terminal import DRAW_SIGNAL, Screen, colour_wanted, maybe_readline, printable

__all__ = ["PROG", "Ending", "LoginFailed", "Options", "describe_ending", "log_in", "main", "parse_options"]

PROG = "chat-client"
DEFAULT_HOST = "localhost"
DEFAULT_PORT = 4000
DEFAULT_TLS_PORT = 4443  # the server's --tls-port default
DEFAULT_TIMEOUT = 5.0
LOGIN_TIMEOUT = 10.0  # seconds to wait for the answer to --login
QUIT_WAIT = 2.0  # seconds to wait for Goodbye! after Ctrl+D or Ctrl+C
WAKE_INTERVAL = 0.02  # seconds between signals to a main thread that did not notice one
WAKE_TRIES = 250
MAX_UNDRAWN = 10000  # received lines waiting to be drawn before the socket waits too
RECV_SIZE = 65536
MAX_PARTIAL = 1 << 20  # a server line longer than this is shown in pieces

# -- the command line ------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """What the client was asked to do, validated."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    login: str | None = None
    timeout: float = DEFAULT_TIMEOUT  # 0 = wait for the server forever
    tls: ssl.SSLContext | None = None  # None: plaintext


def _port(text: str) -> int:
    if not re.fullmatch(r"[0-9]{1,5}", text) or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to 65535, got {text!r}")
    return int(text)


def _seconds(text: str) -> float:
    if not re.fullmatch(r"[0-9]+(\.[0-9]*)?|\.[0-9]+", text):
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {text!r}")
    return float(text)


def _word(what: str) -> Callable[[str], str]:
    """A converter refusing what would split the line or the command sent with it."""

    def word(text: str) -> str:
        if not text or not text.isprintable() or any(c.isspace() for c in text):
            raise argparse.ArgumentTypeError(f"must be {what} without spaces, got {text!r}")
        return text

    return word


class _Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one line on stderr (and exit status 2), not usage text."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


_DESCRIPTION = """\
A terminal client for the chat server. Each line you type is sent as typed:
LOGIN <name>, MSG <text>, DM <name> <text>, WHO, PING, QUIT. In a terminal,
lines that arrive while you type appear above your input, which stays
intact; Ctrl+D or Ctrl+C sends QUIT and leaves. With standard input from a
pipe or a file, it sends each line, prints the server's lines unchanged on
standard output, and exits once the input has ended and the server has
answered and closed the connection."""

_EPILOG = f"""\
examples:
  chat-client --login alice
  chat-client --host chat.example.org --port 5000
  chat-client --tls --host chat.example.org --login alice
  printf 'LOGIN bot\\nWHO\\nQUIT\\n' | chat-client

exit status:
  0    the session ended in order: you left, the input ended and the server
       answered and closed, or the server closed the connection after
       Goodbye!, ERR idle-timeout or ERR server-shutting-down
  1    the client could not connect (refused, unknown host, no answer within
       {CONNECT_TIMEOUT:g} s, a certificate that failed verification,
       ERR server-full or ERR server-unavailable), the server refused
       --login, or the connection was lost: reset, or closed by the
       server without Goodbye! or an ERR reason
  2    a bad command line, PORT, CHAT_TLS_PORT or --cafile (or a Python older than 3.10)
  130  Ctrl+C while connecting or logging in, or with piped input (in a
       terminal, Ctrl+C is one way to leave: status 0)"""


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {protocol.__version__}")
    parser.add_argument(
        "--host", type=_word("a host name or IP address"), default=DEFAULT_HOST,
        help=f"server to connect to (default {DEFAULT_HOST}); with --tls, the name its "
        "certificate must carry",
    )
    parser.add_argument(
        "--port", type=_port, default=None,
        help=f"server's TCP port (env PORT, default {DEFAULT_PORT}; "
        f"with --tls env CHAT_TLS_PORT, default {DEFAULT_TLS_PORT})",
    )
    parser.add_argument(
        "--login", type=_word("a user name"), metavar="NAME",
        help="log in as NAME before anything else; if the server refuses, say why and exit 1",
    )
    parser.add_argument(
        "--timeout", type=_seconds, default=DEFAULT_TIMEOUT, metavar="SECONDS",
        help="piped input only: once the input has ended, wait at most this long for the "
        f"server to answer and close (default {DEFAULT_TIMEOUT:g}; 0 waits forever)",
    )
    parser.add_argument(
        "--tls", action="store_true",
        help="connect over TLS, verifying the server's certificate and host name; "
        "never falls back to plaintext",
    )
    parser.add_argument(
        "--cafile", metavar="FILE",
        help="with --tls (which it implies): trust the CA certificates in this PEM file "
        "instead of the system's, for a server with a private CA",
    )
    return parser


def parse_options(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> Options:
    """The ``Options`` for this run, or ``SystemExit(2)`` after one line on stderr.

    The port variable is read only when ``--port`` is absent, so a stale
    variable never blocks the flag; blank counts as unset, as for the
    server.  With TLS it is ``CHAT_TLS_PORT``, not ``PORT``: ``PORT`` names the
    server's plaintext port, and TLS to it could only fail.
    """
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    tls = None
    if args.tls or args.cafile is not None:
        try:
            tls = tls_context(args.cafile)
        except ValueError as error:
            parser.error(f"--cafile {args.cafile}: {error}")
    port = args.port
    if port is None:
        variable, default = ("CHAT_TLS_PORT", DEFAULT_TLS_PORT) if tls else ("PORT", DEFAULT_PORT)
        text = (os.environ if environ is None else environ).get(variable, "").strip()
        try:
            port = _port(text) if text else default
        except argparse.ArgumentTypeError as error:
            parser.error(f"environment variable {variable}: {error}")
    return Options(host=args.host, port=port, login=args.login, timeout=args.timeout, tls=tls)


# -- the end of a connection ----------------------------------------------------


@dataclass(frozen=True)
class Ending:
    """Why the connection ended, as the user is told it, and the exit status."""

    message: str
    status: int


GOODBYE = Ending("disconnected (Goodbye!)", 0)
# The server closed without a last word: killed, crashed, or not a chat server.
VANISHED = Ending("connection lost: the server closed the connection without Goodbye! or a reason", 1)
_FINAL_LINES = {  # the last line before the server's close -> how it ended
    b"Goodbye!": GOODBYE,
    b"ERR idle-timeout": Ending(
        "the server closed the connection: idle timeout (no line was sent for too long)", 0
    ),
    b"ERR server-shutting-down": Ending("the server closed the connection: it is shutting down", 0),
    b"ERR server-full": Ending("the server is full and closed the connection; try again later", 1),
    b"ERR server-unavailable": Ending(
        "the server closed the connection: it lost its cluster; try again later", 1
    ),
}


def describe_ending(last_line: bytes | None, error: OSError | None) -> Ending:
    """The ending of a connection whose last complete line was ``last_line``.

    ``last_line`` is None when nothing, or an unfinished line, came last.
    The protocol closes in order only after ``Goodbye!`` or one of three
    ``ERR`` reasons; any other end is a server that vanished.
    """
    if error is not None:
        return Ending(f"connection lost: {_reason(error)}", 1)
    if last_line is not None:
        return _FINAL_LINES.get(last_line.rstrip(b"\r"), VANISHED)
    return VANISHED


def _reason(error: OSError) -> str:
    if isinstance(error, ssl.SSLError):
        return f"TLS error: {str(error.reason or error).lower().replace('_', ' ')}"
    return str(error.strerror or error)


class _Lines:
    """Cuts received bytes into lines; remembers the last one, which says why a close came."""

    def __init__(self) -> None:
        self._partial = b""
        self.last: bytes | None = None

    def feed(self, chunk: bytes) -> list[bytes]:
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        if len(self._partial) > MAX_PARTIAL:
            lines.append(self._partial)
            self._partial = b""
        if lines:
            self.last = lines[-1]
        return lines

    def rest(self) -> bytes:
        """An unfinished last line, at end of stream."""
        rest, self._partial = self._partial, b""
        return rest


def _to_utf8(text: str) -> bytes:
    """``text`` as UTF-8, bytes the terminal could not decode replaced by U+FFFD."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "replace")
    return raw.decode("utf-8", "replace").encode("utf-8")


# -- interactive mode ------------------------------------------------------------


class _Interactive:
    """A session at a terminal; see the module docstring for its two threads."""

    def __init__(self, link: Link, screen: Screen, received: bytes = b"") -> None:
        self._link = link
        self._screen = screen
        self._received = received  # bytes that came before the session began (the LOGIN reply)
        self._armed = False  # the main thread is in its editing loop: an interrupt may raise
        self._interrupt = False  # an interrupt was asked for: Ctrl+C, or the connection ended
        self._left_input = threading.Event()  # the main thread is out of the editing loop
        self._ended = threading.Event()  # the reader thread has seen the connection end
        self._ending = Ending("", 0)
        self._leaving = False  # the user leaves: the main thread waits for the end
        self._closing = False  # the main thread closes the socket: its end is no news
        self._signals, self._signals_in = socket.socketpair()
        self._signals_in.setblocking(False)

    def run(self, banner: str) -> int:
        """The session; SIGINT keeps our handler after it, for a wake-up still in flight."""
        signal.signal(signal.SIGINT, self._on_sigint)
        if self._screen.draws_on_signal and DRAW_SIGNAL is not None:
            signal.signal(DRAW_SIGNAL, self._on_wake)
        signal.set_wakeup_fd(self._signals_in.fileno(), warn_on_full_buffer=False)
        reader = threading.Thread(target=self._receive, name="chat-client reader", daemon=True)
        self._screen.notice(banner)
        interrupted = False
        reader.start()
        try:
            self._armed = True  # a Ctrl+C before this is delivered again by the reader
            self._edit()
            self._armed = False  # inside the try: a wake-up may land just before it
        except KeyboardInterrupt:  # Ctrl+C, or the reader thread waking us
            interrupted = True
        if hasattr(signal, "pthread_sigmask"):
            # Blocked by the handler that raised; a late Ctrl+C is harmless now.
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        self._left_input.set()
        by_server = self._ended.is_set()
        self._screen.close_input(interrupted and not by_server)
        if by_server:
            _discard_typed_input()
        else:
            self._leave()
        if self._ended.is_set():
            self._screen.notice(f"{PROG}: {self._ending.message}")
        self._closing = True
        self._link.shut()
        reader.join(QUIT_WAIT)
        signal.set_wakeup_fd(-1)
        self._signals.close()
        self._signals_in.close()
        return self._ending.status if by_server else 0

    def _on_sigint(self, signum: int, frame: object) -> None:
        """Ctrl+C, or the reader's wake-up in plain mode: leave the editing loop."""
        if not self._armed:
            return
        self._interrupt = True
        if self._screen.draws_on_signal:
            _wake_main()  # its handler raises, in this same check of signals
        else:
            self._raise_once({signal.SIGINT})

    def _on_wake(self, signum: int, frame: object) -> None:
        """``DRAW_SIGNAL``: raise if an interrupt is due, else draw the lines received."""
        if self._interrupt and self._armed:
            self._raise_once({signal.SIGINT, signum})  # signum is DRAW_SIGNAL
        self._screen.on_draw_signal(signum, frame)

    def _raise_once(self, signals: set[int]) -> None:
        """Raise KeyboardInterrupt with ``signals`` blocked, so no handler runs until input() returns."""
        self._armed = False
        if hasattr(signal, "pthread_sigmask"):
            signal.pthread_sigmask(signal.SIG_BLOCK, signals)
        raise KeyboardInterrupt

    def _edit(self) -> None:
        while not self._ended.is_set():
            try:
                line = self._screen.read_line()
            except EOFError:  # Ctrl+D on an empty line (Ctrl+Z Enter on Windows)
                return
            self._send(line)

    def _send(self, line: str) -> None:
        try:
            self._link.send_all(_to_utf8(line) + b"\n")
        except OSError:
            pass  # the reader thread sees the end of the connection and says why

    def _leave(self) -> None:
        """The user leaves: QUIT, and a moment for the server's Goodbye! to show."""
        self._leaving = True
        self._link.settimeout(QUIT_WAIT)  # a server that stopped reading us must not hold us
        self._send("QUIT")
        self._ended.wait(QUIT_WAIT)

    def _receive(self) -> None:
        """The reader thread: hand every line to the screen until the connection ends.

        It also keeps two promises the main thread cannot keep itself, both
        about signals that reach the main thread while readline handles a
        key and so go unseen until the next one: it pokes the screen again
        while received lines wait to be drawn, and it delivers a Ctrl+C
        again (the wake-up socket says one came) until the main thread has
        left its loop.
        """
        if hasattr(signal, "pthread_sigmask"):
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT} | _draw_signals())
        lines = _Lines()
        for line in lines.feed(self._received):
            self._screen.show(line)
        error: OSError | None = None
        try:
            while not self._receive_once(lines):
                pass
        except (OSError, ValueError) as exc:  # ValueError: select on a socket closed under us
            error = exc if isinstance(exc, OSError) else None
        rest = lines.rest()
        if rest:
            self._screen.show(rest)
        if self._closing:
            return
        self._ending = describe_ending(None if rest else lines.last, error)
        self._ended.set()
        if not self._leaving:
            self._interrupt_main()

    def _receive_once(self, lines: _Lines) -> bool:
        """One wait: show what arrived, pass on a Ctrl+C; True once the connection has ended.

        The screen is poked when bytes arrived, and again each time a wait
        of ``WAKE_INTERVAL`` ends with lines still undrawn; not when only
        the wake-up socket stirred.  Every poke is a signal, and every
        signal writes its number to that socket: poking for it would bounce
        signals between the two threads as fast as they run, for as long as
        the main thread cannot draw (a long paste, output paused with Ctrl+S).
        """
        waiting = self._screen.undrawn()
        watched: list[Link | socket.socket] = [self._signals]
        if waiting <= MAX_UNDRAWN:
            watched.append(self._link)
        readable, _, _ = select.select(watched, [], [], WAKE_INTERVAL if waiting else None)
        if self._signals in readable and signal.SIGINT in self._signals.recv(64):
            self._interrupt_main()  # the bytes are the numbers of the signals caught
        if self._link in readable:
            chunk, ended = self._link.receive()
            for line in lines.feed(chunk):
                self._screen.show(line)
            if ended:
                return True
        if self._link in readable or not readable:
            self._screen.poke()
        return False

    def _interrupt_main(self) -> None:
        """Pull the main thread out of ``input()``, which no Python code can interrupt.

        A signal to the main thread (``DRAW_SIGNAL`` with readline, SIGINT
        in plain mode) makes readline's ``select()`` (or the plain
        ``read()``) fail with EINTR and run our handler; a signal that
        lands just before the ``select()`` goes unseen, so it is sent again
        until the main thread has left its loop (bounded).  Without
        ``pthread_kill`` (Windows) the process ends here, after the last
        word: no readline is in use there, so the console has no state to
        restore.
        """
        if not hasattr(signal, "pthread_kill"):
            if self._ended.is_set() and not self._leaving:
                self._screen.notice(f"{PROG}: {self._ending.message}")
                _flush_std_streams()
                os._exit(self._ending.status)
            return
        self._interrupt = True
        wake = _wake_main if self._screen.draws_on_signal else _interrupt_main_thread
        for _ in range(WAKE_TRIES):
            if self._left_input.is_set():
                return
            wake()
            if self._left_input.wait(WAKE_INTERVAL):
                return


def _wake_main() -> None:
    if DRAW_SIGNAL is not None:
        signal.pthread_kill(threading.main_thread().ident or 0, DRAW_SIGNAL)


def _interrupt_main_thread() -> None:
    signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)


def _draw_signals() -> set[int]:
    return {DRAW_SIGNAL} if DRAW_SIGNAL is not None else set()


def _discard_typed_input() -> None:
    """Drop a half-typed line from a plain terminal, so the shell does not run it after us.

    Readline reads every key as it is pressed, so it leaves nothing behind;
    a terminal in line mode still holds what was typed since the last Enter.
    """
    try:
        import termios

        termios.tcflush(sys.stdin.fileno(), termios.TCIFLUSH)
    except (ImportError, OSError, ValueError, AttributeError):
        pass


def _flush_std_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass


def run_interactive(
    link: Link, options: Options, environ: Mapping[str, str], received: bytes = b""
) -> int:
    """The session at a terminal; ``received`` came before it (the reply to ``--login``)."""
    for stream in (sys.stdout, sys.stderr):
        if stream is not None and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")
    stdout_is_tty = sys.stdout is not None and sys.stdout.isatty()
    readline = maybe_readline(environ) if stdout_is_tty else None
    screen = Screen(sys.stdout, sys.stderr, readline, colour_wanted(sys.stdout, environ))
    where = _where(link, options)
    leave = "Ctrl+D leaves" if os.name != "nt" else "Ctrl+Z Enter leaves"
    if options.login:
        banner = f"Connected to {where} as {options.login}. {leave}."
    else:
        banner = f"Connected to {where}. Log in with LOGIN <name>; {leave}."
    return _Interactive(link, screen, received).run(banner)


def _where(link: Link, options: Options) -> str:
    security = f" over {link.security}" if link.security else ""
    return f"{options.host} port {options.port}{security}"


# -- scripted mode ---------------------------------------------------------------


class _InputPump:
    """The input thread of scripted mode: standard input to the server, then a half-close.

    It reads with ``os.read``, not ``sys.stdin``: a daemon thread still
    blocked at exit must not hold the lock of a buffered stream, or the
    interpreter would hang on it while shutting down.
    """

    def __init__(self, link: Link, fd: int | None, wake: socket.socket) -> None:
        self._link = link
        self._fd = fd
        self._wake = wake
        self.ended_at: float | None = None  # monotonic time the input ended
        self.sent_all = False  # the whole input reached the socket: the server's close is expected
        self._last = b"\n"  # the last byte sent; nothing sent counts as a finished line

    def start(self) -> None:
        threading.Thread(target=self._run, name="chat-client input", daemon=True).start()

    def _run(self) -> None:
        try:
            self._copy_input()
            self.sent_all = True
        except OSError:
            pass  # the connection is gone: the main thread reports it
        finally:
            self.ended_at = time.monotonic()  # before the half-close, which makes the server close
            self._link.end_output()
            try:
                self._wake.send(b"\0")
            except OSError:
                pass

    def _copy_input(self) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        first = True
        for data in self._chunks():
            text = decoder.decode(data)
            if first and text:
                first = False
                if text.startswith("\ufeff"):  # the BOM some Windows editors write
                    text = text[1:]
            self._send(text.encode("utf-8"))
        self._send(decoder.decode(b"", final=True).encode("utf-8"))
        if self._last != b"\n":
            self._send(b"\n")  # a last line without LF is still a line to its author

    def _chunks(self) -> Iterator[bytes]:
        """Standard input in pieces, until it ends (or cannot be read, which ends it too)."""
        while self._fd is not None:
            try:
                data = os.read(self._fd, RECV_SIZE)
            except OSError:
                return
            if not data:
                return
            yield data

    def _send(self, data: bytes) -> None:
        if data:
            self._link.send_all(data)
            self._last = data[-1:]


def _stdin_fd() -> int | None:
    try:
        return sys.stdin.fileno() if sys.stdin is not None else None
    except (OSError, ValueError):
        return None


def run_scripted(link: Link, options: Options, out: BinaryIO | None, received: bytes = b"") -> int:
    """Copy the server's bytes to ``out`` until it closes; see the module docstring.

    ``received`` came before the session (the reply to ``--login``): it is
    copied first.
    """
    wake_read, wake_write = socket.socketpair()
    try:
        lines = _Lines()
        lines.feed(received)
        if not _write(out, received):
            return 1
        pump = _InputPump(link, _stdin_fd(), wake_write)
        pump.start()
        return _copy_to_output(link, wake_read, pump, options.timeout, out, lines)
    except KeyboardInterrupt:
        return 130
    finally:
        wake_read.close()
        wake_write.close()


def _copy_to_output(
    link: Link,
    wake: socket.socket,
    pump: _InputPump,
    timeout: float,
    out: BinaryIO | None,
    lines: _Lines,
) -> int:
    error: OSError | None = None
    while True:
        deadline = None if pump.ended_at is None or not timeout else pump.ended_at + timeout
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        watched: list[Link | socket.socket] = [link, wake]
        readable, _, _ = select.select(watched, [], [], wait)
        if not readable:
            _notice(f"the server did not close the connection {timeout:g} s after the end of input")
            return 1
        if wake in readable:
            wake.recv(64)
        if link not in readable:
            continue
        try:
            chunk, ended = link.receive()
        except OSError as exc:
            error = exc
            break
        lines.feed(chunk)
        if not _write(out, chunk):
            return 1
        if ended:
            break
    ending = describe_ending(None if lines.rest() else lines.last, error)
    if ending is VANISHED and pump.sent_all:
        return 0  # the protocol's end of stream: every line answered, then the close
    if ending is not GOODBYE:  # a script that sent QUIT expects the close: no news then
        _notice(ending.message)
    return ending.status


def _write(out: BinaryIO | None, data: bytes) -> bool:
    """Copy ``data`` to stdout; False once its reader has gone (``chat-client | head -1``)."""
    if out is None or not data:
        return True
    try:
        out.write(data)
        out.flush()
    except BrokenPipeError:
        _silence_stdout()
        return False
    return True


def _notice(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def _silence_stdout() -> None:
    """The reader of our stdout left; point stdout at devnull so exit does not complain."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


# -- logging in with --login ---------------------------------------------------------


class LoginFailed(Exception):
    """``--login`` did not succeed: the message is the line to print, ``reply`` the server's line."""

    def __init__(self, message: str, reply: bytes = b"") -> None:
        super().__init__(message)
        self.reply = reply


_REFUSALS = {  # the server's answer to LOGIN -> what it means, said plainly
    b"ERR username-taken": "the name is taken, someone else is logged in under it",
    b"ERR invalid-username": "not a name the server accepts (1 to 32 letters, digits, _ - or .)",
}


def log_in(link: Link, name: str) -> bytes:
    """Send ``LOGIN name`` and wait for its answer, so that nothing says "logged in" too soon.

    Returns every byte received, ``OK`` first; anything else is
    ``LoginFailed``.  Before LOGIN succeeds the server sends nothing else
    (no one's messages reach a connection that is not logged in), so the
    first line is the answer, or the reason for a close (``ERR server-full``).
    """
    link.send_all(_to_utf8(f"LOGIN {name}") + b"\n")
    received = b""
    deadline = time.monotonic() + LOGIN_TIMEOUT
    while b"\n" not in received:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([link], [], [], remaining)[0]:
            raise LoginFailed(f"cannot log in as {name}: no answer within {LOGIN_TIMEOUT:g} s")
        chunk, ended = link.receive()
        received += chunk
        if ended and b"\n" not in received:
            raise LoginFailed(f"cannot log in as {name}: {VANISHED.message}", received)
    line = received.split(b"\n", 1)[0] + b"\n"
    answer = line.rstrip(b"\r\n")
    if answer == b"OK":
        return received
    if answer in _REFUSALS:
        reason = f"{_REFUSALS[answer]} ({answer.decode()})"
    elif answer in _FINAL_LINES:
        reason = _FINAL_LINES[answer].message
    else:
        reason = f"the server answered {printable(answer.decode('utf-8', 'replace'))!r}"
    raise LoginFailed(f"cannot log in as {name}: {reason}", line)


# -- the entry point -------------------------------------------------------------


def _stdin_is_tty() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (OSError, ValueError):
        return False


def open_link(options: Options) -> Link:
    """The connection, with TLS over it if asked for; ``ConnectError`` otherwise, never plaintext."""
    link = connect(options.host, options.port)
    if options.tls is not None:
        link = start_tls(link, options.tls, options.host, options.port)
    return link


def main(argv: Sequence[str] | None = None) -> int:
    """Run the client; the return value is the exit status (see ``--help``)."""
    options = parse_options(argv)  # exits 2 on a bad value
    interactive = _stdin_is_tty()
    out = None if interactive else getattr(sys.stdout, "buffer", None)
    try:
        link = open_link(options)
    except ConnectError as error:
        _notice(str(error))
        return 1
    except KeyboardInterrupt:  # Ctrl+C while a slow server is being reached
        return 130
    try:
        received = log_in(link, options.login) if options.login else b""
        if interactive:
            return run_interactive(link, options, os.environ, received)
        return run_scripted(link, options, out, received)
    except LoginFailed as failure:
        _write(out, failure.reply)  # in a script, stdout still holds all the server said
        _notice(str(failure))
        return 1
    except KeyboardInterrupt:  # Ctrl+C while waiting for the answer to LOGIN
        return 130
    except OSError as error:  # a network error the session did not expect: still no traceback
        _notice(f"connection lost: {_reason(error)}")
        return 1
    finally:
        link.close()
