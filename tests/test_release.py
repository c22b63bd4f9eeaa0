"""Release hygiene: one version, the README's test command is CI's, and the package builds and runs.

The slow test does what a user does with a release: ``python -m build``
makes a wheel and an sdist from a copy of the sources, and the wheel is
installed into a fresh virtual environment, where ``chat-server`` and
``chat-client`` run from a directory that is not the clone.  Building
needs the network (build isolation fetches setuptools); installing the
wheel does not (it has no dependencies).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import venv
from pathlib import Path

import pytest
from netutil import ROOT, ServerProcess, login
from test_entry_points import MESSAGE, older_pythons

import protocol

README = (ROOT / "README.md").read_text(encoding="utf-8")
CI_RUN = (ROOT / ".ci" / "run").read_text(encoding="utf-8")


# -- one version, said once --------------------------------------------------------------


def test_the_newest_changelog_section_is_the_version_the_code_reports():
    headings = re.findall(r"^## (\d+\.\d+\.\d+)\b", (ROOT / "CHANGELOG.md").read_text(), flags=re.M)
    assert headings, "CHANGELOG.md has no version section"
    assert headings[0] == protocol.__version__


def test_the_metadata_reads_the_version_from_the_code():
    assert "version = attr: protocol.__version__" in (ROOT / "setup.cfg").read_text()


# -- the README's lines ------------------------------------------------------------------------


def readme_test_command() -> str:
    """The one-line block under "Run the tests"."""
    match = re.search(r"Run the tests.*?\n```sh\n(.+?)\n```", README, flags=re.S)
    assert match, "README.md has no test command block"
    (line,) = match.group(1).splitlines()
    return line


def test_the_readme_test_command_is_one_line_with_its_virtual_environment():
    line = readme_test_command()
    assert line.startswith("python3 -m venv .venv && . .venv/bin/activate && ")
    assert 'python -m pip install -e ".[test]"' in line
    assert line.endswith("python -m pytest")


def test_ci_runs_the_readme_test_command_verbatim():
    assert readme_test_command() in CI_RUN.splitlines()


def test_the_readme_says_how_long_the_tests_take_and_how_to_run_fewer():
    assert re.search(r"tests take about \d+ minutes?", README)
    assert 'python -m pytest -m "not slow"' in README


# -- build, install, run --------------------------------------------------------------------


def _copy_sources(destination: Path) -> Path:
    """The project as a clone has it: no virtual environments, caches or earlier builds."""
    ignored = shutil.ignore_patterns(
        ".git", ".venv", "venv", "build", "dist", "*.egg-info", "__pycache__", ".hypothesis", ".pytest_cache",
        ".ruff_cache", ".mypy_cache",
    )
    return Path(shutil.copytree(ROOT, destination / "src", ignore=ignored))


def _quiet_environment() -> dict[str, str]:
    """The environment without this run's Python settings (a virtual environment's, say)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}


def _warnings(output: str) -> list[str]:
    """Lines that warn, but for pip's notes about this machine's own package mirrors."""
    return [
        line for line in output.splitlines()
        if re.search(r"warn|deprecat", line, re.I) and "is ignored: it is neither a file nor a directory" not in line
        and "no previously-included" not in line  # MANIFEST.in's excludes, with nothing to exclude in a clean copy
    ]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """A wheel and an sdist of the current sources, built as a release would be."""
    pytest.importorskip("build", reason="the test extra installs build: pip install -e '.[test]'")
    work = tmp_path_factory.mktemp("release")
    sources = _copy_sources(work)
    dist = work / "dist"
    result = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(dist), str(sources)],
        capture_output=True, text=True, timeout=600, env=_quiet_environment(),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert _warnings(result.stdout + result.stderr) == []
    (wheel,) = dist.glob("*.whl")
    (sdist,) = dist.glob("*.tar.gz")
    return {"wheel": wheel, "sdist": sdist, "work": work}


def _new_virtual_environment(path: Path, python: str = sys.executable) -> Path:
    if python == sys.executable:
        venv.EnvBuilder(with_pip=True, clear=True).create(path)
    else:
        subprocess.run([python, "-m", "venv", str(path)], check=True, capture_output=True, timeout=300)
    return path / ("Scripts" if os.name == "nt" else "bin")


@pytest.mark.slow
def test_python_m_build_makes_a_wheel_and_an_sdist_named_for_the_version(built):
    version = protocol.__version__
    assert built["wheel"].name == f"chat_reactor-{version}-py3-none-any.whl"
    assert built["sdist"].name == f"chat_reactor-{version}.tar.gz"


@pytest.mark.slow
def test_the_sdist_holds_what_its_tests_need(built):
    with tarfile.open(built["sdist"]) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for needed in ("CHANGELOG.md", "LICENSE", "README.md", "docs/protocol.md", "docs/chat-server.service",
                   "tests/conftest.py", "tests/benchmarks/loadgen.py", ".ci/run", "reactor/loop.py"):
        assert needed in names, needed
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc")]


@pytest.mark.slow
def test_the_wheel_installs_in_a_clean_environment_and_both_programs_run_from_anywhere(built, tmp_path):
    bin_dir = _new_virtual_environment(tmp_path / "venv")
    install = subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "install", "--no-index", str(built["wheel"])],
        capture_output=True, text=True, timeout=300, env=_quiet_environment(),
    )
    assert install.returncode == 0, install.stdout + install.stderr
    assert _warnings(install.stdout + install.stderr) == []
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for program in ("chat-server", "chat-client"):
        version = subprocess.run(
            [str(bin_dir / program), "--version"], cwd=elsewhere, capture_output=True, text=True, timeout=60,
            env=_quiet_environment(),
        )
        assert (version.returncode, version.stdout) == (0, f"{program} {protocol.__version__}\n"), version.stderr
    server = ServerProcess(
        "--host", "127.0.0.1", "--port", "0", command=[str(bin_dir / "chat-server")], cwd=elsewhere,
    )
    try:
        client = login(server.port, "packaged")
        client.say("QUIT")
        client.expect("Goodbye!")
        status, _, err = server.stop()
    finally:
        server.kill()
    assert status == 0, err


@pytest.mark.slow
@pytest.mark.parametrize("python", older_pythons()[-1:] or [pytest.param(None, marks=pytest.mark.skip(
    reason="no Python older than 3.10 on this machine (tests/test_entry_points.py pretends to be one)"))])
def test_on_an_older_python_pip_refuses_and_a_forced_install_says_what_it_needs(built, tmp_path, python):
    bin_dir = _new_virtual_environment(tmp_path / "venv", python)
    pip = [str(bin_dir / "python"), "-m", "pip", "install", "--no-index", str(built["wheel"])]
    refused = subprocess.run(pip, capture_output=True, text=True, timeout=300, env=_quiet_environment())
    assert refused.returncode != 0
    assert "Requires-Python" in refused.stderr or "requires a different Python" in refused.stderr
    forced = subprocess.run(
        [*pip, "--ignore-requires-python"], capture_output=True, text=True, timeout=300, env=_quiet_environment()
    )
    assert forced.returncode == 0, forced.stderr
    result = subprocess.run(
        [str(bin_dir / "chat-server"), "--version"], cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env=_quiet_environment(),
    )
    assert result.returncode == 2
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert MESSAGE.fullmatch(line), line
