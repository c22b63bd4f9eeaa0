"""The documentation's examples run, and its claims about commands stay true."""

from __future__ import annotations

import re

import pytest
from netutil import ROOT

PYTHON_BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def python_blocks(document: str):
    text = (ROOT / document).read_text(encoding="utf-8")
    blocks = PYTHON_BLOCK.findall(text)
    assert blocks, f"{document} has no python example"
    return blocks


@pytest.mark.parametrize("block", python_blocks("docs/protocol.md"))
def test_protocol_md_examples_run(block):
    exec(compile(block, "docs/protocol.md", "exec"), {})


def test_the_package_docstring_example_runs():
    import protocol

    (example,) = re.findall(r"::\n\n((?:    .*\n|\n)+)", protocol.__doc__)
    exec(compile(re.sub(r"(?m)^    ", "", example), "protocol/__init__.py", "exec"), {})
