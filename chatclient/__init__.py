"""The terminal client for the chat server: ``chat-client``, or ``python -m chatclient``.

It sends every line the user types as typed, so the protocol is the user
interface, and it adds a terminal that does not tear and a scripted mode
for pipes.  ``chatclient.cli`` is the command line and the two kinds of
session, ``chatclient.terminal`` the screen of an interactive one.

The client shares nothing with the server's event loop: it is a program of
its own that speaks the protocol over a socket, so it is a package of its
own (docs/architecture.md says why).  It imports the standard library and
``protocol`` (for the version) only.

``main`` imports ``chatclient.cli`` only when it runs, so that importing
this package stays cheap.
"""

__all__ = ["main"]


def main(argv=None):  # type: (list[str] | None) -> int
    """Run the client; the return value is its exit status."""
    from chatclient.cli import main as run

    return run(argv)
