"""Third-party programs the interoperability tests drive (nc, socat, ncat, telnet, tmux).

.ci/run installs them and sets CHAT_REQUIRE_TOOLS=1, so in CI a missing tool
fails the test; on a developer machine without it the test is skipped with
the package to install.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import time

import pytest
from netutil import LineSource

PACKAGES = {
    "nc": "netcat-openbsd",
    "socat": "socat",
    "ncat": "ncat",
    "telnet": "telnet",
    "tmux": "tmux",
    "openssl": "openssl",
    "redis-server": "redis-server",
}


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path:
        return path
    message = f"{tool} is not installed (Debian package {PACKAGES.get(tool, tool)})"
    if os.environ.get("CHAT_REQUIRE_TOOLS"):
        pytest.fail(message)
    pytest.skip(message)


class ProcessClient(LineSource):
    """A line client that is another program (nc, socat): we type into its stdin."""

    def __init__(self, argv: list[str]) -> None:
        self.process = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )

    def say(self, *lines: str) -> None:
        self.process.stdin.write("".join(line + "\n" for line in lines).encode())
        self.process.stdin.flush()

    def _read_chunk(self, timeout: float) -> bytes | None:
        out = self.process.stdout.fileno()
        ready, _, _ = select.select([out], [], [], timeout)
        return os.read(out, 65536) if ready else None

    def read_until_closed(self, timeout: float = 5.0) -> bytes:
        """End its input, then everything it prints until its output ends.

        netcat keeps its output open as long as its input, even after the
        server has closed the connection; ``nc -N`` then exits.
        """
        if not self.process.stdin.closed:
            self.process.stdin.close()
        deadline = time.monotonic() + timeout
        data, self._buffer = self._buffer, b""
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{self.process.args[0]} still running after {timeout} s (got {data!r})"
            chunk = self._read_chunk(remaining)
            if chunk == b"":
                return data
            data += chunk or b""

    def close(self, timeout: float = 5.0) -> int:
        """End its input and wait for it to exit (killing it after ``timeout``)."""
        if self.process.stdin and not self.process.stdin.closed:
            self.process.stdin.close()
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
            raise AssertionError(f"{self.process.args[0]} did not exit within {timeout} s") from None
