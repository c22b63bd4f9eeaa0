"""The architecture's import rules, checked on the source.

protocol/ is pure: it may import only side-effect-free standard modules and
its own modules, so it can be fuzzed, replayed and embedded anywhere.
reactor/ may use the whole standard library and protocol/, nothing else.
chatclient/ (the terminal client) may use the standard library and
protocol/, but nothing of the reactor: it is a separate program.
"""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

PROTOCOL_MAY_IMPORT = {
    "__future__", "collections", "dataclasses", "enum", "re", "typing", "unicodedata",
}
NEVER_IN_PROTOCOL = {
    "asyncio", "logging", "os", "select", "selectors", "signal", "socket", "ssl",
    "threading", "time",
}


def imported_modules(path: pathlib.Path):
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0]


def sources(package: str):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"{package}/ has no sources"
    return files


@pytest.mark.parametrize("path", sources("protocol"), ids=lambda p: p.name)
def test_protocol_imports_only_pure_standard_modules(path):
    imported = set(imported_modules(path))
    assert not imported & NEVER_IN_PROTOCOL
    assert imported <= PROTOCOL_MAY_IMPORT


OPTIONAL_EXTRAS = {"hiredis": ROOT / "reactor" / "engine" / "resp.py"}
"""The one optional dependency (the ``cluster`` extra), and the one module that may import it."""


@pytest.mark.parametrize("path", sources("reactor"), ids=lambda p: str(p.relative_to(ROOT)))
def test_reactor_imports_only_the_standard_library_and_protocol(path):
    allowed = set(sys.stdlib_module_names) | {"protocol", "reactor"}
    allowed |= {extra for extra, home in OPTIONAL_EXTRAS.items() if home == path}
    assert set(imported_modules(path)) <= allowed


def test_the_standalone_server_imports_no_optional_extra():
    extras = sorted(OPTIONAL_EXTRAS)
    code = f"import reactor.daemon, sys; print(sorted(set(sys.modules) & set({extras!r})))"
    completed = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[]"


@pytest.mark.parametrize("path", sources("chatclient"), ids=lambda p: p.name)
def test_the_client_imports_only_the_standard_library_and_protocol(path):
    allowed = set(sys.stdlib_module_names) | {"protocol", "chatclient"}
    assert set(imported_modules(path)) <= allowed


def test_nothing_but_the_client_imports_the_client():
    """The server and the protocol library stand without the client."""
    for path in sources("protocol") + sources("reactor"):
        assert "chatclient" not in set(imported_modules(path)), path


def test_the_forbidden_list_is_not_vacuous():
    """A guard on the guard: the AST walk does see imports."""
    sample = ROOT / "reactor" / "config.py"
    assert "argparse" in set(imported_modules(sample))
