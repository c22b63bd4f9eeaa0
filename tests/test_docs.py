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


# -- links into the code stay true ----------------------------------------------------

CODE_LINK = re.compile(r"\[`([\w.]+)`\]\(\.\./([\w/]+\.py)#L(\d+)\)")
DOCS_WITH_CODE_LINKS = ["docs/event-loop.md"]


def code_links():
    for document in DOCS_WITH_CODE_LINKS:
        for name, path, line in CODE_LINK.findall((ROOT / document).read_text(encoding="utf-8")):
            yield pytest.param(name, path, int(line), id=f"{document}:{name}@{path}:{line}")


@pytest.mark.parametrize("name, path, line", list(code_links()))
def test_a_link_to_a_line_of_code_lands_on_what_it_names(name, path, line):
    """``[`_flush`](../reactor/loop.py#L757)`` must point at ``def _flush``; the failure says where it went."""
    lines = (ROOT / path).read_text(encoding="utf-8").splitlines()
    short = name.rsplit(".", 1)[-1]
    definition = re.compile(rf"^\s*(?:async\s+)?(?:def|class)\s+{re.escape(short)}\b")
    found = [number for number, text in enumerate(lines, 1) if definition.match(text)]
    assert found, f"{path} defines no {short}"
    assert line in found, f"{name} is defined at {path}:{found}, not at line {line}"


def test_the_chapter_has_code_links_to_check():
    assert len(list(code_links())) >= 20


PLACEHOLDER = re.compile(r"\{\{\s*[A-Za-z_]\w*\s*\}\}")


def unfilled_placeholders(text: str) -> list[str]:
    """The ``{{name}}`` marks a template left for a measured figure."""
    return PLACEHOLDER.findall(text)


def test_the_placeholder_pattern_finds_a_mark_and_nothing_else():
    assert unfilled_placeholders("about {{threads_kib}} KiB, {{ ours_ping }} µs") == [
        "{{threads_kib}}", "{{ ours_ping }}"]
    assert unfilled_placeholders("a dict {'a': {1}}, a set {{1}} and {{}}") == []


def test_no_document_under_docs_has_an_unfilled_placeholder():
    """A figure still to be measured must not ship as ``{{name}}``."""
    files = sorted(path for path in (ROOT / "docs").rglob("*") if path.is_file())
    assert files
    unfilled = {
        str(path.relative_to(ROOT)): marks
        for path in files
        if (marks := unfilled_placeholders(path.read_text(encoding="utf-8")))
    }
    assert unfilled == {}


MARKDOWN_FILES = ["README.md", "CHANGELOG.md", "tests/benchmarks/README.md",
                  *sorted(str(path.relative_to(ROOT)) for path in (ROOT / "docs").glob("*.md"))]
ANCHOR_LINK = re.compile(r"\]\(([^)\s#]*)#([^)\s]+)\)")


def heading_anchors(text: str) -> set[str]:
    """The anchors GitHub gives a document's headings (code blocks skipped)."""
    anchors: set[str] = set()
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (heading := re.match(r"#{1,6} (.+)", line)):
            slug = re.sub(r"[^\w\- ]", "", heading[1].strip().lower()).replace(" ", "-")
            number = 1
            anchor = slug
            while anchor in anchors:
                anchor = f"{slug}-{number}"
                number += 1
            anchors.add(anchor)
    return anchors


def anchor_links():
    """Every link to a heading of a Markdown file (links to a line of code are checked above)."""
    for document in MARKDOWN_FILES:
        source = ROOT / document
        for target, anchor in ANCHOR_LINK.findall(source.read_text(encoding="utf-8")):
            if "://" not in target and (not target or target.endswith(".md")):
                path = (source.parent / target).resolve() if target else source
                yield pytest.param(path, anchor, id=f"{document} -> {target}#{anchor}")


def test_the_anchor_slugs_are_githubs():
    assert heading_anchors("# A b\n```sh\n# not a heading\n```\n## Cost: `x` (issue 16)\n# A b\n") == {
        "a-b", "cost-x-issue-16", "a-b-1"}


@pytest.mark.parametrize("target, anchor", list(anchor_links()))
def test_a_link_to_a_heading_lands_on_one(target, anchor):
    assert anchor in heading_anchors(target.read_text(encoding="utf-8"))


def test_there_are_links_to_headings_to_check():
    assert len(list(anchor_links())) >= 8
