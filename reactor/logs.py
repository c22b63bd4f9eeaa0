"""How the daemon logs: the seed's line format, connection lines written once per turn.

INFO lines are bare (``New connection from ('127.0.0.1', 52341)``, as the
seed printed them); other levels carry their name (``WARNING: ...``).

Two lines per connection sit on the accept path, and a log record per line
(a ``LogRecord``, a format, a write system call) would make logging the most
expensive part of accepting a client.  So the loop does not log them one by
one: it *notes* them in a ``TurnLog``, a plain list, and at the end of each
turn writes them all as one record, before it sleeps again.  A turn lasts
milliseconds, so nothing is seen late.  Every other record goes through
``TurnLog.log``, which writes the turn's notes first so the order on stderr
is the order of events.  That is the one mechanism; the handler itself
writes each record as it comes.
"""

from __future__ import annotations

import logging
from typing import TextIO

LOGGER_NAME = "chat"
"""The logger every part of the server logs to."""


class LineFormatter(logging.Formatter):
    """Plain INFO lines (the seed's format, byte for byte); other levels say their level."""

    def __init__(self) -> None:
        super().__init__("%(message)s")

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        if record.levelno == logging.INFO:
            return message
        return f"{record.levelname}: {message}"


class LineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes each record at once; a closed or broken stream never stops the server."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass  # stderr gone (a closed pipe, a full disk): drop the line, keep serving


class TurnLog:
    """Connection lines held for one loop turn, then logged as one record."""

    __slots__ = ("_logger", "notes")

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self.notes: list[str] = []  # the turn's lines so far; the loop checks it before a flush

    def note(self, line: str) -> None:
        """An INFO line about a connection, written at the end of the turn."""
        self.notes.append(line)

    def log(self, level: int, message: str, *args: object, exc_info: bool = False) -> None:
        """Any other record, after the notes it may refer to."""
        if not self._logger.isEnabledFor(level):
            return
        self.flush()
        self._logger.log(level, message, *args, exc_info=exc_info)

    def flush(self) -> None:
        """Write the turn's notes, if any, as one record."""
        if self.notes:
            notes, self.notes = self.notes, []
            self._logger.info("%s", "\n".join(notes))


def configure_logging(level: str, stream: TextIO) -> LineHandler:
    """Send the ``chat`` logger's records to ``stream``; the handler is returned."""
    # The logging HOWTO's optimisations: no caller lookup, no thread or
    # process names per record.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = LineHandler(stream)
    handler.setFormatter(LineFormatter())
    logger = logging.getLogger(LOGGER_NAME)
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False
    return handler
