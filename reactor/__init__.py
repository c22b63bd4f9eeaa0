"""The server side of chat-reactor: the event loop, the timer wheel and the daemon.

Every entry point passes through this file first (``python -m reactor``,
``python -m reactor.<module>``, and the ``chat-server`` command, which
imports ``reactor.daemon``), so the Python version is checked here, before
anything that needs 3.10 is imported.  An older Python gets one line saying
what is needed and exit status 2, not a traceback from deep inside a
module.  This file must therefore stay parseable by any Python: no
f-strings, no ``from __future__ import annotations``, no type hints.
"""

import sys

REQUIRED_PYTHON = (3, 10)

if sys.version_info < REQUIRED_PYTHON:  # noqa: UP036 - the check is for the versions ruff assumes away
    sys.stderr.write(
        "chat-reactor needs Python {}.{} or newer; this is Python {} ({})\n".format(
            REQUIRED_PYTHON[0], REQUIRED_PYTHON[1], sys.version.split()[0], sys.executable or "python"
        )
    )
    raise SystemExit(2)
