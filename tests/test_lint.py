"""The linters' verdicts, as tests: ruff on everything, mypy (strict for protocol/).

Their settings are in pyproject.toml (ruff) and setup.cfg (mypy), so an
editor's run and this one agree.  Both come with the ``test`` extra; without
them this is a skip locally and a failure in CI (CHAT_REQUIRE_TOOLS=1).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
from netutil import ROOT


def run_tool(module: str, *args: str) -> subprocess.CompletedProcess:
    if importlib.util.find_spec(module) is None:
        message = f"{module} is not installed (pip install -e '.[test]')"
        if os.environ.get("CHAT_REQUIRE_TOOLS"):
            pytest.fail(message)
        pytest.skip(message)
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_ruff_finds_nothing():
    completed = run_tool("ruff", "check", "--no-cache", ".")
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_mypy_finds_nothing():
    completed = run_tool("mypy")
    assert completed.returncode == 0, completed.stdout + completed.stderr
