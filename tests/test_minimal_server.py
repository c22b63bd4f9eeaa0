"""docs/examples/minimal_server.py, the teaching example, still serves the seed session.

The example is run as a reader would run it (from the repository root, as a
program) and driven over TCP, byte for byte, so the chapter that quotes it
(docs/event-loop.md) can never describe code that stopped working.
"""

from __future__ import annotations

import re
import subprocess
import sys

import seed
from netutil import ROOT, Client

EXAMPLE = ROOT / "docs" / "examples" / "minimal_server.py"


def start_example() -> tuple[subprocess.Popen, int]:
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLE.relative_to(ROOT)), "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    line = process.stdout.readline().decode()  # the startup line, flushed at once
    match = re.fullmatch(r"Chat server started on port (\d+)\n", line)
    assert match, (line, process.stderr.read() if process.poll() is not None else "")
    return process, int(match.group(1))


def test_the_minimal_server_serves_the_seed_sessions_byte_for_byte():
    process, port = start_example()
    try:
        for session in seed.SESSIONS:
            seed.play(session, lambda: Client(port))
    finally:
        process.kill()
        process.wait(5)
        process.stdout.close()
        process.stderr.close()


def test_the_minimal_server_is_about_seventy_lines_of_code():
    """The chapter promises a page; docstrings, comments and blank lines aside."""
    code = [
        line
        for line in EXAMPLE.read_text().split('"""', 2)[2].splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    assert len(code) <= 75, len(code)
