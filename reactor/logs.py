"""How the daemon logs: the seed's line format, written once per loop turn.

INFO lines are bare (``New connection from ('127.0.0.1', 52341)``, as the
seed printed them); other levels carry their name (``WARNING: ...``).

Two records per connection sit on the accept path, and a write system call
per record would make logging the most expensive part of accepting a
client.  So records are formatted at once but held in memory, and the loop
writes them out in one call at the end of each turn (``TurnBufferedHandler
.flush``), before it sleeps again.  A turn lasts milliseconds, so nothing is
seen late; WARNING and above, and anything logged outside the loop, are
written at once anyway.
"""

from __future__ import annotations

import logging
from typing import TextIO

LOGGER_NAME = "chat"


class LineFormatter(logging.Formatter):
    """Plain INFO lines (the seed's format, byte for byte); other levels say their level."""

    def __init__(self) -> None:
        super().__init__("%(message)s")

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        if record.levelno == logging.INFO:
            return message
        return f"{record.levelname}: {message}"


class TurnBufferedHandler(logging.Handler):
    """Holds formatted INFO and DEBUG lines until ``flush``; writes the rest at once."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self._stream = stream
        self._pending: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._pending.append(self.format(record) + "\n")
        except Exception:  # logging must never take the server down
            self.handleError(record)
            return
        if record.levelno >= logging.WARNING:
            self.flush()

    def flush(self) -> None:
        """Write what is held in one call; cheap when nothing is."""
        if not self._pending:
            return
        text, self._pending = "".join(self._pending), []
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):  # stderr closed or gone: drop the lines, keep serving
            pass


def configure_logging(level: str, stream: TextIO) -> TurnBufferedHandler:
    """Send the ``chat`` logger's records to ``stream``; the handler is returned for flushing."""
    # The logging HOWTO's optimisations: no caller lookup, no thread or
    # process names per record.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = TurnBufferedHandler(stream)
    handler.setFormatter(LineFormatter())
    logger = logging.getLogger(LOGGER_NAME)
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False
    return handler
