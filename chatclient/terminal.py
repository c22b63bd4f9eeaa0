"""The chat client's terminal: received lines shown above the line being typed.

This module owns everything ``chat-client`` writes to a terminal in
interactive mode: the prompt, the received lines and their colours, the
notices, and the redraw that keeps a half-typed line intact.  It knows
nothing of sockets; ``chatclient.cli`` hands it lines.

Theory of operation
-------------------
Two threads share one terminal.  The main thread sits in ``input()``, which
GNU readline runs: readline echoes keys, edits the line and keeps the
history, in C, with the GIL released.  The client's reader thread receives
lines from the server at any moment.

*Only the main thread draws while the user edits.*  Drawing from the reader
thread tears the line under load: readline echoes without any lock of
ours, and with type-ahead (a paste, fast typing) its buffer runs ahead of
what it has drawn, so a redraw of the buffer shows characters that readline
then echoes a second time.  So the reader thread queues each line and
sends ``DRAW_SIGNAL`` (SIGUSR1) to the main thread with
``signal.pthread_kill``.  Readline waits for keys in ``select()``; the
signal interrupts it, readline lets Python run the handler
(``Screen.on_draw_signal``), then goes back to waiting.  At that moment
readline is idle and the screen shows exactly its prompt and buffer, so the
handler, in one write: (1) moves the cursor up to the input's first row (a
long input wraps) and erases to the end of the screen; (2) prints the
queued lines; (3) prints the prompt and ``readline.get_line_buffer()``
again; (4) puts the cursor back at the editing point.  What readline
believes is on screen is true again, one block lower, and since readline
moves the cursor relatively, its next update lands in the right place.
Python's readline module exposes neither ``rl_forced_update_display`` nor
``rl_point``; the cursor position is read through ``ctypes`` where the
library is GNU readline, otherwise the cursor is taken to be at the end of
the line, where it is while someone types.

*The signal must not cost readline a byte.*  Readline writes through C
stdio, and when a ``write()`` fails with EINTR, glibc drops what it had
buffered: an echoed key, or the newline after Enter, never reaches the
terminal though readline believes it did, and the next received line is
glued to the input (``> MSG hiMSG bob yo``).  A terminal write fails so
when the signal arrives while it is in the kernel and before it took a
byte: a rare instant on an idle machine, a likely one when the terminal is
slow to take output (a loaded machine) or has paused it (Ctrl+S).  Python
installs its handlers without SA_RESTART, so ``read_line`` sets it for
``DRAW_SIGNAL`` while ``input()`` runs: the kernel then resumes an
interrupted write (or read) by itself, while ``select()``, which Linux, the
BSDs and macOS never restart after a handler, still fails with EINTR and
lets the handler run.  Outside ``input()`` the flag is cleared again, so
the signal still interrupts anything else the main thread may block in (a
``send``).

A signal that reaches the main thread while readline handles a key, not
while it waits in ``select()`` (a restarted write absorbs it, too), is only
noticed at the next interruption, so the reader thread sends it again every
20 ms while lines wait.  When the handler runs elsewhere in the main
thread (between two lines, during a ``send``), the cursor is at the start
of a fresh row and the lines are printed plainly.  ``_editing`` (inside
``input()``), ``_prompt_shown`` (readline's pre-input hook ran) and
readline's ``rl_done`` (Enter taken) tell the two cases apart.  The hook
is a ``functools.partial`` of ``setattr``: it runs no Python bytecode, so no
signal handler can run inside it, where readline would swallow the
``KeyboardInterrupt`` it raised.

Once the main thread has left ``input()`` for good (``close_input``), it
blocks the signal and the reader thread prints directly; ``Screen._lock``
orders those lines after the main thread's last words.  The main thread
never takes the lock while a ``KeyboardInterrupt`` may be raised in it.

*Plain mode.*  Without readline (Windows, or Python built without it) or on
a terminal that cannot move the cursor (``TERM=dumb``), there is no prompt
and no redraw: each received line is printed on its own line, and the
terminal's own line editing keeps what the user types.

Colours (SGR escape sequences) are used only on a terminal that is not
dumb, when ``NO_COLOR`` is unset or empty (https://no-color.org), and on
Windows only once virtual-terminal processing could be switched on.

Imports: the standard library only; ``ctypes`` lazily and optionally.
"""

from __future__ import annotations

import collections
import functools
import locale
import os
import shutil
import signal
import sys
import threading
import unicodedata
from collections.abc import Mapping
from types import ModuleType
from typing import Any, TextIO

__all__ = [
    "DRAW_SIGNAL",
    "PROMPT",
    "Screen",
    "colour_wanted",
    "maybe_readline",
    "printable",
    "style",
]

PROMPT = "> "
# The signal that asks the main thread to draw received lines (POSIX only:
# the redraw needs readline and pthread_kill, which Windows lacks).
DRAW_SIGNAL: int | None = getattr(signal, "SIGUSR1", None)

_RESET = "\x1b[0m"
_COLOURS = {  # first word of a received line -> SGR parameters
    "MSG": "36",  # cyan: said to everyone
    "DM": "35",  # magenta: said to you alone
    "INFO": "33",  # yellow: news from the server
    "ERR": "1;31",  # bold red: your command failed, or the server is closing
}
_NAMED = {"MSG", "DM"}  # lines whose second word is the sender, shown in bold

_UNSAFE = {c for c in range(0x20) if c != 0x09} | {0x7F} | set(range(0x80, 0xA0))
_UNSAFE |= {0x2028, 0x2029}
_TO_REPLACEMENT = {c: "\ufffd" for c in _UNSAFE}


def printable(text: str) -> str:
    """``text`` with every character that could move the cursor replaced.

    The server already strips them from other users' text; this guards the
    terminal against any other server, and makes ESC inert.
    """
    return text.translate(_TO_REPLACEMENT)


def style(text: str, colour: bool) -> str:
    """A received line coloured by its kind, so MSG, DM, INFO and ERR stand apart."""
    kind = text.split(" ", 1)[0]
    if not colour or kind not in _COLOURS:
        return text
    start = f"\x1b[{_COLOURS[kind]}m"
    if kind in _NAMED:
        words = text.split(" ", 2)
        if len(words) == 3:
            return f"{start}{words[0]} \x1b[1m{words[1]}\x1b[22m {words[2]}{_RESET}"
    return f"{start}{text}{_RESET}"


def colour_wanted(stream: TextIO | None, environ: Mapping[str, str]) -> bool:
    """Whether SGR colours would show as colours on ``stream``, and are welcome."""
    if environ.get("NO_COLOR") or environ.get("TERM") == "dumb":
        return False
    if stream is None or not stream.isatty():
        return False
    if os.name == "nt":
        return _enable_windows_vt(stream)
    return bool(environ.get("TERM"))


def _enable_windows_vt(stream: TextIO) -> bool:
    """Windows 10+ consoles obey escape sequences only once asked to."""
    try:
        import ctypes
        from ctypes import wintypes

        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
        handle = kernel32.GetStdHandle(-12 if stream is sys.stderr else -11)
        mode = wintypes.DWORD()
        if not kernel32.GetConsoleMode(handle, ctypes.byref(mode)):
            return False
        vt_processing = 0x0004  # ENABLE_VIRTUAL_TERMINAL_PROCESSING
        return bool(mode.value & vt_processing) or bool(
            kernel32.SetConsoleMode(handle, mode.value | vt_processing)
        )
    except (ImportError, AttributeError, OSError):
        return False


def maybe_readline(environ: Mapping[str, str]) -> ModuleType | None:
    """The readline module if the redraw can work here, else ``None``.

    Importing readline is what makes ``input()`` use it, so this is the one
    place that decides.  The redraw needs cursor movement (a TERM that is
    set and not dumb) and signals aimed at the main thread
    (``signal.pthread_kill`` and SIGUSR1: POSIX only).
    """
    term = environ.get("TERM", "")
    if not term or term == "dumb" or DRAW_SIGNAL is None or not hasattr(signal, "pthread_kill"):
        return None
    try:
        import readline
    except ImportError:
        return None
    return readline


def _char_columns(char: str) -> int:
    if unicodedata.combining(char) or unicodedata.category(char) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def _rendered(text: str) -> str:
    """``text`` as readline draws it: tabs expanded, control characters as ``^X``."""
    out = []
    column = 0
    for char in text:
        code = ord(char)
        if char == "\t":
            shown = " " * (8 - column % 8)
        elif code < 0x20 or code == 0x7F:
            shown = "^" + chr(code ^ 0x40)
        else:
            shown = char
        out.append(shown)
        column += sum(_char_columns(c) for c in shown)
    return "".join(out)


def _columns(text: str) -> int:
    return sum(_char_columns(c) for c in text)


def _libedit(module: ModuleType) -> bool:
    return getattr(module, "backend", "") == "editline" or "libedit" in (module.__doc__ or "")


def _maybe_readline_int(module: ModuleType | None, name: str) -> Any:
    """One of GNU readline's int variables (a ctypes int), or ``None`` where it cannot be read.

    Two are used: ``rl_point``, the cursor's byte offset in the buffer, and
    ``rl_done``, set when Enter is taken and cleared when the next line
    starts.  libedit is left out: it does not keep them current while a
    line is edited, and a stale value would put the cursor in the wrong place.
    """
    if module is None or _libedit(module):
        return None
    try:
        import ctypes

        library = ctypes.CDLL(getattr(module, "__file__", None))
        return ctypes.c_int.in_dll(library, name)
    except (ImportError, OSError, ValueError, AttributeError, TypeError):
        return None


def _emit(stream: TextIO | None, text: str) -> None:
    if stream is None or not text:
        return
    try:
        stream.write(text)
        stream.flush()
    except (OSError, ValueError):  # a closed terminal must not kill the reader thread
        pass


class Screen:
    """The terminal of an interactive session; see the module docstring."""

    def __init__(
        self,
        out: TextIO | None,
        err: TextIO | None,
        readline: ModuleType | None = None,
        colour: bool = False,
    ) -> None:
        self._out = out
        self._err = err
        self._readline = readline
        self._colour = colour
        self._prompt = PROMPT if readline is not None else ""
        self._lock = threading.Lock()  # between the reader thread and the main thread's last words
        self._queue: collections.deque[str] = collections.deque()  # lines for the main thread to draw
        self._drawing_in_main = readline is not None  # until close_input()
        self._in_handler = False
        self._input_closed = False
        self._editing = False
        self._prompt_shown = False
        self._hooked = False
        self._point = _maybe_readline_int(readline, "rl_point")
        self._done = _maybe_readline_int(readline, "rl_done")
        if readline is not None:
            assert DRAW_SIGNAL is not None  # maybe_readline() gives no readline without it
            signal.signal(DRAW_SIGNAL, self.on_draw_signal)
            if hasattr(readline, "set_pre_input_hook"):
                # No bytecode, so no signal handler runs inside (see the module docstring).
                readline.set_pre_input_hook(functools.partial(setattr, self, "_prompt_shown", True))
                self._hooked = True

    # -- the main thread ---------------------------------------------------------

    def read_line(self) -> str:
        """One line from the user; ``EOFError`` on Ctrl+D, ``KeyboardInterrupt`` on Ctrl+C.

        Only plain assignments and calls that take no lock here: a
        ``KeyboardInterrupt`` can land between any two of them.  While
        readline runs, ``DRAW_SIGNAL`` restarts the system call it
        interrupts (see the module docstring); one left restarting after a
        ``KeyboardInterrupt`` is harmless, as the signal is then blocked
        for good.
        """
        self._prompt_shown = not self._hooked
        self._editing = True
        try:
            self._restart_on_draw_signal(True)
            return input(self._prompt)
        finally:
            self._restart_on_draw_signal(False)
            self._editing = False
            self._prompt_shown = False

    def _restart_on_draw_signal(self, restart: bool) -> None:
        """Set or clear SA_RESTART for ``DRAW_SIGNAL`` (readline mode only)."""
        if self._readline is not None and DRAW_SIGNAL is not None:
            signal.siginterrupt(DRAW_SIGNAL, not restart)

    def close_input(self, interrupted: bool) -> None:
        """The main thread has left ``input()`` for good: end its line, show what is queued.

        Ctrl+D at the prompt, Ctrl+C and a wake-up all leave the cursor on
        the input line (a plain terminal only echoes ``^C``).  From now on
        the reader thread prints directly, under the lock.
        """
        self._input_closed = True  # first: a handler still due must not draw on the input line
        if self._drawing_in_main and DRAW_SIGNAL is not None:
            signal.pthread_sigmask(signal.SIG_BLOCK, {DRAW_SIGNAL})
        with self._lock:
            self._drawing_in_main = False
            if self._readline is not None or interrupted:
                _emit(self._out, "\n")
            while self._queue:
                _emit(self._out, self._queue.popleft() + "\n")

    def notice(self, text: str) -> None:
        """A message from the client itself, on stderr: the banner, the last word."""
        with self._lock:
            _emit(self._err, text + "\n")

    @property
    def draws_on_signal(self) -> bool:
        """Whether ``DRAW_SIGNAL`` reaches the main thread's ``on_draw_signal`` (readline mode)."""
        return self._readline is not None

    def on_draw_signal(self, signum: int, frame: object) -> None:
        """Draw the queued lines; the main thread runs this between two keys.

        Python runs a handler inside readline's ``select()`` (interrupted by
        the signal), where readline is idle and the screen shows exactly its
        buffer, or between two bytecodes of the main thread, outside
        ``input()``.  A nested call (another signal while drawing) returns
        at once: the loop below takes its lines too.
        """
        if self._in_handler or self._input_closed:
            return
        self._in_handler = True
        try:
            while self._queue:
                lines = list(self._queue)
                self._draw(lines)
                for _ in lines:
                    self._queue.popleft()
        finally:
            self._in_handler = False

    def _draw(self, lines: list[str]) -> None:
        text = "\n".join(lines) + "\n"
        if not self._redrawing():
            _emit(self._out, text)
            return
        shown, point, width = self._input_state()
        _emit(self._out, _erase_input(point, width) + text + _draw_input(shown, point, width))

    def _redrawing(self) -> bool:
        """Whether a prompt and a line being edited are on screen now.

        After Enter, readline has moved to a fresh row, but ``input()`` has
        not returned yet: the buffer still holds the sent line, which must
        not be drawn again.
        """
        if not (self._editing and self._prompt_shown):
            return False
        return self._done is None or not self._done.value

    def _input_state(self) -> tuple[str, int, int]:
        """(prompt and buffer as drawn, columns before the cursor, terminal width)."""
        assert self._readline is not None
        buffer = self._readline.get_line_buffer()
        shown = _rendered(self._prompt + buffer)
        before = _rendered(self._prompt + self._buffer_before_point(buffer))
        width = max(1, shutil.get_terminal_size().columns)
        return shown, _columns(before), width

    def _buffer_before_point(self, buffer: str) -> str:
        """The part of ``buffer`` left of the cursor; all of it if ``rl_point`` is unknown.

        ``rl_point`` counts bytes of the locale's encoding, Python's buffer
        counts characters.
        """
        if self._point is None:
            return buffer
        encoding = locale.getpreferredencoding(False)
        try:
            raw = buffer.encode(encoding, "surrogateescape")
        except (UnicodeError, LookupError):
            return buffer
        point = self._point.value
        if not 0 <= point <= len(raw):
            return buffer
        return raw[:point].decode(encoding, "replace")

    # -- the reader thread ---------------------------------------------------------

    def show(self, line: bytes) -> None:
        """A line received from the server (without its LF)."""
        text = style(printable(line.decode("utf-8", "replace")), self._colour)
        with self._lock:
            if self._drawing_in_main:
                self._queue.append(text)
                return
            _emit(self._out, text + "\n")

    def undrawn(self) -> int:
        """How many lines wait for the main thread to draw them."""
        return len(self._queue) if self._drawing_in_main else 0

    def poke(self) -> None:
        """Ask the main thread to draw the queued lines.

        A signal that reaches the main thread while readline handles a key,
        rather than waiting in ``select()``, is only noticed later: the
        reader thread pokes again while ``undrawn()`` says lines wait.
        """
        if self.undrawn() and DRAW_SIGNAL is not None:
            signal.pthread_kill(threading.main_thread().ident or 0, DRAW_SIGNAL)


def _erase_input(point_columns: int, width: int) -> str:
    """From the cursor, anywhere in a wrapped input, up to its first row, erasing all below."""
    up = point_columns // width
    return (f"\x1b[{up}A" if up else "") + "\r\x1b[J"


def _draw_input(shown: str, point_columns: int, width: int) -> str:
    """The prompt and buffer again, the cursor left where readline believes it is.

    After exactly filling a row the terminal holds the cursor on that row
    until the next character; readline assumes the next row, and so do we,
    by writing a space there and returning over it.
    """
    end = _columns(shown)
    text = shown + (" \r" if end and end % width == 0 else "")
    rows_back = end // width - point_columns // width
    if rows_back:
        text += f"\x1b[{rows_back}A"
    if point_columns != end:
        column = point_columns % width
        text += "\r" + (f"\x1b[{column}C" if column else "")
    return text
