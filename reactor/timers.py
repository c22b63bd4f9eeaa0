"""The reactor's kinds of deadline: what a timer means is its class.

The timer wheel (``reactor.timerwheel``) only knows that a ``Timer`` is due;
it carries one payload and never calls anything.  The reactor gives each
kind of deadline its own subclass, so a fired timer says by its type what
is due and by its payload for whom, with nothing else allocated per timer::

    kind           payload        when it fires
    -------------  -------------  ---------------------------------------------
    IdleTimer      a Connection   no complete line for --idle-timeout (checked lazily)
    FloodTimer     a Connection   flood control: the next token is due, read again
    CloseTimer     a Connection   a closing connection's flush deadline: close it now
    CallbackTimer  a callable     anything else (resume accepting, periodic chores)

A connection keeps its idle timer for its whole life and re-arms it in
place; the other two are made the first time they are needed.
"""

from __future__ import annotations

from .timerwheel import Timer


class IdleTimer(Timer):
    """The idle deadline of the connection in ``payload``."""

    __slots__ = ()


class FloodTimer(Timer):
    """When the connection in ``payload``, paced by flood control, may be read again."""

    __slots__ = ()


class CloseTimer(Timer):
    """When the connection in ``payload`` is closed, flushed or not."""

    __slots__ = ()


class CallbackTimer(Timer):
    """Calls ``payload()`` when due."""

    __slots__ = ()
