"""The entry points on a Python older than 3.10: one line saying what is needed, exit status 2.

The check is in ``reactor/__init__.py``, which runs before any entry point
(``python -m reactor``; the ``chat-server`` command, whose generated script
does ``from reactor.daemon import main``).  Two layers:

- the current interpreter told it is 3.9 (``sys.version_info`` replaced
  before the import), which runs everywhere and also shows that nothing
  but ``reactor/__init__.py`` was imported when the check fired;
- every real older interpreter this machine has (``python3.9`` ... on the
  PATH, pyenv's versions), which shows the check itself parses and runs
  there.  A machine with none runs the first layer only.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest
from netutil import ROOT

MESSAGE = re.compile(r"chat-reactor needs Python 3\.10 or newer; this is Python (\S+) \(.+\)")

CONSOLE_SCRIPT = "import sys\nfrom reactor.daemon import main\nsys.exit(main())\n"
"""What pip's generated ``chat-server`` script does."""

ENTRY_POINTS = {  # how a real interpreter runs each
    "python -m reactor": ["-m", "reactor", "--version"],
    "chat-server": ["-c", CONSOLE_SCRIPT, "--version"],
}
PRETENDING = {  # the same, from inside an interpreter told it is 3.9
    "python -m reactor": "import runpy\nrunpy.run_module('reactor', run_name='__main__', alter_sys=True)\n",
    "chat-server": CONSOLE_SCRIPT,
}


def older_pythons() -> list[str]:
    """Interpreters older than 3.10 found on this machine, one per version."""
    found: dict[str, str] = {}
    candidates = [shutil.which(f"python3.{minor}") for minor in range(9, 4, -1)] + [shutil.which("python2.7")]
    pyenv = os.path.expanduser(os.environ.get("PYENV_ROOT", "~/.pyenv"))
    candidates += sorted(glob.glob(os.path.join(pyenv, "versions", "*", "bin", "python")), reverse=True)
    for path in filter(None, candidates):
        try:
            version = subprocess.run(
                [path, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                capture_output=True, text=True, timeout=30,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            continue
        major_minor = tuple(int(part) for part in version.split(".")) if version else (99,)
        if major_minor < (3, 10) and version not in found:
            found[version] = path
    return [found[version] for version in sorted(found)]


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = str(ROOT)  # the clone, as "from the repository root" means
    return env


def assert_refused(result: subprocess.CompletedProcess, version: str) -> None:
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    match = MESSAGE.fullmatch(lines[0])
    assert match, lines[0]
    assert match.group(1) == version


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_a_python_reporting_3_9_is_refused_before_anything_else_is_imported(entry):
    program = (
        "import sys\n"
        "sys.version_info = (3, 9, 18, 'final', 0)\n"
        "sys.version = '3.9.18 (pretend)'\n"
        "try:\n"
        + textwrap.indent(PRETENDING[entry], "    ")
        + "finally:\n"
        "    print(sorted(m for m in sys.modules if m == 'protocol' or m.startswith(('reactor.', 'protocol.'))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program, "--version"],
        cwd=ROOT, env=_environment(), capture_output=True, text=True, timeout=60,
    )
    assert result.stdout == "[]\n"  # nothing past reactor/__init__.py was imported
    result.stdout = ""
    assert_refused(result, "3.9.18")


@pytest.mark.parametrize("python", older_pythons() or [pytest.param(None, marks=pytest.mark.skip(
    reason="no Python older than 3.10 on this machine (the pretend-3.9 test covers the check)"))])
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_a_real_older_python_is_refused_in_one_line(python, entry):
    version = subprocess.run(
        [python, "-c", "import sys; print(sys.version.split()[0])"], capture_output=True, text=True, timeout=30
    ).stdout.strip()
    result = subprocess.run(
        [python, *ENTRY_POINTS[entry]],
        cwd=ROOT, env=_environment(), capture_output=True, text=True, timeout=60,
    )
    assert_refused(result, version)


def test_the_current_python_passes_the_check():
    result = subprocess.run(
        [sys.executable, "-m", "reactor", "--version"],
        cwd=ROOT, env=_environment(), capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    import protocol

    assert result.stdout == f"chat-server {protocol.__version__}\n"
