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


def test_the_shell_scripts_parse():
    for script in (ROOT / ".ci" / "run",):
        completed = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
        assert completed.returncode == 0, f"{script}: {completed.stderr}"


def test_no_merge_conflict_is_left_in_a_tracked_file():
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, timeout=30)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")  # an sdist: the build test checks what goes in one
    markers = ("<<<<<<< ", ">>>>>>> ")
    left = []
    for name in filter(None, listed.stdout.decode().split("\0")):
        path = ROOT / name
        if not path.is_file():
            continue
        for number, line in enumerate(path.read_bytes().decode("utf-8", "replace").splitlines(), 1):
            if line.startswith(markers):
                left.append(f"{name}:{number}: {line[:40]}")
    assert not left, "\n".join(left)
