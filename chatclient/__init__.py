"""The terminal client for the chat server: ``chat-client``, or ``python -m chatclient``.

It sends every line the user types as typed, so the protocol is the user
interface, and it adds a terminal that does not tear and a scripted mode
for pipes.  ``chatclient.cli`` is the command line and the two kinds of
session, ``chatclient.terminal`` the screen of an interactive one.

The client shares nothing with the server's event loop: it is a program of
its own that speaks the protocol over a socket, so it is a package of its
own (docs/architecture.md says why).  It imports the standard library and
``protocol`` (for the version) only.

Both entry points, ``chat-client`` (setup.cfg) and ``python -m chatclient``,
call ``main`` here, which checks the Python version before it imports
anything else of the project: on an older Python the rest would fail with
a traceback (``dataclass(slots=True)`` is 3.10's), so instead it says in
one line which Python it needs and exits with status 2.  For that, this
file and ``__main__.py`` must stay readable by any Python: no annotations,
no f-strings, ASCII only (Python 2.7 and 3.6 run them too).
"""

import sys

__all__ = ["REQUIRED_PYTHON", "main", "python_too_old"]

REQUIRED_PYTHON = (3, 10)


def python_too_old(version_info=None):  # type: (tuple[int, ...] | None) -> str | None
    """The line to print if this Python cannot run the client, else None."""
    version = tuple(sys.version_info if version_info is None else version_info)
    if version[:2] >= REQUIRED_PYTHON:
        return None
    needed = ".".join(map(str, REQUIRED_PYTHON))
    running = ".".join(map(str, version[:3]))
    interpreter = sys.executable or "this interpreter"
    # Concatenation, not f-strings or format(): any Python must read this file.
    return "chat-client: needs Python " + needed + " or newer, but " + interpreter + " is Python " + running


def main(argv=None):  # type: (list[str] | None) -> int
    """Run the client; the return value is its exit status (2 on a Python too old)."""
    complaint = python_too_old()
    if complaint is not None:
        sys.stderr.write(complaint + "\n")
        return 2
    from chatclient.cli import main as run

    return run(argv)
