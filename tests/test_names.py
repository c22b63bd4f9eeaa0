"""Unit tests of protocol.names and protocol.text against protocol.md.

The spec states both rules precisely enough to write them down as tiny
models (``spec_key``, ``spec_display``, ``spec_clean``, ``spec_split``
below, built straight from the sentences of protocol.md with ``unicodedata``
and ``re``).  Examples pin the cases the spec names; hypothesis then compares
the library with the models on arbitrary text, and one exhaustive test walks
every code point, because a hand-made character table or an ASCII fast path
is exactly where a category slips.
"""

from __future__ import annotations

import re
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.names import (
    MAX_DECOMPOSITION,
    MAX_NAME_BYTES,
    MAX_NAME_CODE_POINTS,
    MAX_NAME_LENGTH,
    is_valid_display_name,
    maybe_name_key,
    name_key,
    parse_username,
)
from protocol.text import clean_text, split_word

# ---------------------------------------------------------------------------
# The spec, as models
# ---------------------------------------------------------------------------


def nfkc(s: str) -> str:
    return unicodedata.normalize("NFKC", s)


def spec_key(s: str) -> str:
    """protocol.md: names compare by the key NFKC(casefold(NFKC(name)))."""
    return nfkc(nfkc(s).casefold())


def spec_allowed(char: str) -> bool:
    """Letters L*, combining marks M*, decimal digits Nd, or one of ``_ - .``."""
    category = unicodedata.category(char)
    return category[0] in "LM" or category == "Nd" or char in "_-."


def spec_valid_nfkc(name: str) -> bool:
    """The username rule, on a name already in NFKC form."""
    return (
        1 <= len(name) <= 32
        and not unicodedata.category(name[0]).startswith("M")
        and all(spec_allowed(c) for c in name)
    )


def spec_display(raw: bytes) -> str | None:
    """The name shown for ``raw``, or None if LOGIN must answer invalid-username."""
    name = nfkc(raw.decode("utf-8"))
    return name if spec_valid_nfkc(name) else None


def spec_unsafe(char: str) -> bool:
    """C0 except TAB, DEL, C1, U+2028 and U+2029 never reach another user."""
    cp = ord(char)
    return (cp < 0x20 and char != "\t") or 0x7F <= cp <= 0x9F or char in "\u2028\u2029"


def spec_clean(s: str) -> str:
    return "".join(c for c in s if not spec_unsafe(c))


def spec_split(text: bytes):
    """The word ends at the first space or TAB; the separator run is dropped."""
    word, _, rest = re.fullmatch(rb"([^ \t]*)([ \t]*)(.*)", text, re.DOTALL).groups()
    return word, rest


# Characters that make names interesting: letters, marks, digits, the three
# allowed punctuation marks, and the look-alikes the spec rules out.
TRICKY = (
    "_-. \t\x00\x1b\x7f\u0085\u00a0\u00b2\u00bc\u0130\u0131\u017f\u00df\u0301\u0345"
    "\u01f0\u0390\u1e9e\u200b\u200d\u2028\u202e\u2066\u2182\u216b\u3000\ufb01\ufdfa\ufeff\uff21\uff4e"
)
# Planes 0-3 and 14 hold every assigned non-private character; planes 4-13
# are unassigned and 15-16 private use, so two code points stand for them.
CODE_POINTS = [
    cp
    for cp in [*range(0x40000), *range(0xE0000, 0xF0000), 0x50000, 0xF0000, 0x10FFFD]
    if not 0xD800 <= cp <= 0xDFFF
]
# Every letter, mark and decimal digit, listed once (portable to any
# hypothesis version, unlike characters(categories=...)).
NAME_CATEGORY_CHARS = tuple(
    chr(cp)
    for cp in CODE_POINTS
    if unicodedata.category(chr(cp))[0] in "LM" or unicodedata.category(chr(cp)) == "Nd"
)
name_chars = st.one_of(
    st.sampled_from(NAME_CATEGORY_CHARS),
    st.sampled_from(TRICKY),
    st.characters(max_codepoint=0x7F),
)
name_like = st.text(alphabet=name_chars, max_size=40)
valid_names = name_like.filter(lambda s: spec_display(s.encode()) is not None)

JOSE_COMPOSED = "Jos\u00e9"
JOSE_DECOMPOSED = "Jose\u0301"
SURESH = "\u0938\u0941\u0930\u0947\u0936"

# ---------------------------------------------------------------------------
# parse_username
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "typed, shown",
    [
        ("Naman", "Naman"),
        ("NaMaN", "NaMaN"),
        ("\uff21\uff22\uff23", "ABC"),
        (JOSE_DECOMPOSED, JOSE_COMPOSED),
        (JOSE_COMPOSED, JOSE_COMPOSED),
        (SURESH, SURESH),
        ("x\u0301", "x\u0301"),
        ("a_b-c.d", "a_b-c.d"),
        (".", "."),
        ("\u0663\u0664", "\u0663\u0664"),
        ("x\u00b2", "x2"),
        ("\u216b", "XII"),
        ("\ufb01" * 16, "fi" * 16),
        ("e\u0301" * 32, "\u00e9" * 32),
        ("a" * 32, "a" * 32),
        ("\u0130stanbul", "\u0130stanbul"),
        ("\U00020000" * 32, "\U00020000" * 32),
    ],
    ids=[
        "ascii",
        "typed-case-kept",
        "full-width",
        "decomposed",
        "composed",
        "devanagari",
        "mark-not-first",
        "punctuation",
        "only-dot",
        "arabic-indic-digits",
        "superscript",
        "roman-numeral",
        "16-ligatures-are-32",
        "64-code-points-are-32",
        "32-ascii",
        "dotted-capital-i",
        "32-astral-code-points",
    ],
)
def test_parse_username_valid(typed, shown):
    name = parse_username(typed.encode())
    assert name is not None
    assert name.display == shown
    assert name.wire == shown.encode()
    assert name.key == spec_key(typed)


@pytest.mark.parametrize(
    "typed",
    [
        "",
        "a" * 33,
        "\U00020000" * 33,
        "\ufb01" * 17,
        "\u0301abc",
        "Na man",
        "Na\tman",
        "Na\u00a0man",
        "Na\u3000man",
        "Na\x00man",
        "Na\x1bman",
        "Na\x7fman",
        "Na\u0085man",
        "Na\u2028man",
        "Na\u2029man",
        "Na\u200bman",
        "Na\u200dman",
        "\ufeffNaman",
        "\u202eNaman",
        "Na\u2066man\u2069",
        "\ufdfa",
        "\u00bc",
        "\u2182",
        "Naman!",
        "a@b",
        "a\u2212b",
        "Naman\U0001f600",
    ],
    ids=[
        "empty",
        "33-chars",
        "33-astral-code-points",
        "17-ligatures-are-34",
        "leading-mark",
        "space",
        "tab",
        "no-break-space",
        "ideographic-space",
        "nul",
        "esc",
        "del",
        "c1",
        "line-separator",
        "paragraph-separator",
        "zero-width-space",
        "zero-width-joiner",
        "bom",
        "bidi-override",
        "bidi-isolate",
        "fdfa-expands-with-spaces",
        "vulgar-fraction",
        "letter-number",
        "exclamation",
        "at",
        "minus-sign",
        "emoji",
    ],
)
def test_parse_username_invalid(typed):
    assert parse_username(typed.encode()) is None


def test_max_name_length_is_the_spec_limit():
    assert MAX_NAME_LENGTH == 32


@given(st.text())
def test_parse_username_never_raises_on_valid_utf8(text):
    parse_username(text.encode())


@given(st.one_of(name_like, st.text(), st.text(alphabet=st.characters(max_codepoint=0x7F))))
def test_parse_username_follows_the_rule(text):
    raw = text.encode()
    name = parse_username(raw)
    shown = spec_display(raw)
    if shown is None:
        assert name is None
    else:
        assert name is not None
        assert (name.display, name.key, name.wire) == (shown, spec_key(shown), shown.encode())


# -- the bound on work: arguments too long to be a name are never normalised --


def test_no_code_point_decomposes_into_more_than_the_bound():
    """The constant the bound rests on, checked on this Python's Unicode version."""
    longest = max(len(unicodedata.normalize("NFD", chr(cp))) for cp in CODE_POINTS)
    assert longest == MAX_DECOMPOSITION
    assert MAX_NAME_CODE_POINTS == MAX_NAME_LENGTH * MAX_DECOMPOSITION
    assert MAX_NAME_BYTES == 4 * MAX_NAME_CODE_POINTS


# Characters that NFKC merges or grows: bases that compose with marks, the
# marks themselves, Hangul jamo (three of them make one syllable), ligatures
# and the 18-fold U+FDFA, and the longest canonical decompositions.
_COMPOSING = st.sampled_from(
    "aeoA\u03b1\u1100\u1161\u11a8\u0301\u0313\u0300\u0345\u0323\u0307"
    "\ufb03\ufdfa\u1f82\u2460\uff41\u3392_-."
)


@given(st.text(alphabet=_COMPOSING, min_size=MAX_NAME_CODE_POINTS + 1, max_size=MAX_NAME_CODE_POINTS + 40))
def test_no_argument_over_the_bound_normalises_to_a_valid_name(text):
    """The theorem itself, on the unguarded path: longer than the bound is never a name."""
    assert not is_valid_display_name(unicodedata.normalize("NFKC", text))
    assert parse_username(text.encode()) is None
    assert maybe_name_key(text.encode()) is None


@given(st.text(alphabet=_COMPOSING, max_size=MAX_NAME_CODE_POINTS))
def test_within_the_bound_the_guard_changes_nothing(text):
    raw = text.encode()
    assert len(raw) <= MAX_NAME_BYTES
    assert maybe_name_key(raw) == name_key(raw)
    shown = spec_display(raw)
    name = parse_username(raw)
    assert (None if name is None else name.display) == shown


def test_the_longest_name_in_the_most_decomposed_form_is_still_a_name():
    """The bound is tight enough: 32 letters, each written as 4 code points."""
    letter = unicodedata.normalize("NFD", "\u1f82")
    assert len(letter) == MAX_DECOMPOSITION
    raw = (letter * MAX_NAME_LENGTH).encode()
    assert len(raw.decode()) == MAX_NAME_CODE_POINTS
    name = parse_username(raw)
    assert name is not None and name.display == "\u1f82" * MAX_NAME_LENGTH
    assert maybe_name_key(raw) == name.key


@pytest.mark.parametrize(
    "argument",
    ["\ufdfa" * 1363, "\u00e9" * 2000, "a" * 4000, "\u0301" * 129],
    ids=["U+FDFA x1363", "e-acute x2000", "a x4000", "combining acute x129"],
)
def test_an_overlong_argument_is_refused_without_normalising(argument, monkeypatch):
    calls = []
    real = unicodedata.normalize
    monkeypatch.setattr(unicodedata, "normalize", lambda form, text: calls.append(len(text)) or real(form, text))
    raw = argument.encode()
    assert parse_username(raw) is None
    assert maybe_name_key(raw) is None
    assert calls == []


def test_every_single_code_point():
    """One pass over Unicode: the rule's categories and the key, with no fast path slipping."""
    wrong = []
    for cp in CODE_POINTS:
        char = chr(cp)
        raw = char.encode()
        name = parse_username(raw)
        shown = spec_display(raw)
        if (None if name is None else name.display) != shown or name_key(raw) != spec_key(char):
            wrong.append(hex(cp))
    assert wrong == []


# ---------------------------------------------------------------------------
# name_key
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "a, b",
    [
        ("Naman", "naman"),
        ("Naman", "\uff4e\uff41\uff4d\uff41\uff4e"),
        (JOSE_COMPOSED, JOSE_DECOMPOSED),
        ("Stra\u00dfe", "STRASSE"),
        ("\u216b", "xii"),
        ("\u01c5", "\u01c4"),
    ],
    ids=["case", "full-width", "composition", "sharp-s", "roman-numeral", "dz-digraph"],
)
def test_name_key_collides(a, b):
    assert name_key(a.encode()) == name_key(b.encode())


@pytest.mark.parametrize(
    "a, b",
    [("Naman", "Namann"), ("Naman", "Na\u200bman"), ("Jose", JOSE_COMPOSED), ("i", "\u0131")],
    ids=["longer", "zero-width", "accent-matters", "dotless-i"],
)
def test_name_key_separates(a, b):
    assert name_key(a.encode()) != name_key(b.encode())


@pytest.mark.parametrize(
    "name, key",
    [
        ("Naman", "naman"),
        ("\uff2e\uff41\uff4d\uff41\uff4e", "naman"),
        (JOSE_DECOMPOSED, "jos\u00e9"),
        ("Stra\u00dfe", "strasse"),
        ("\u01f0", "\u01f0"),  # casefold decomposes it; the outer NFKC composes it again
        ("\u0390", "\u0390"),  # likewise: casefold gives three code points
        ("\u0130", "i\u0307"),
    ],
    ids=["ascii", "full-width", "decomposed", "sharp-s", "j-caron-outer-nfkc", "iota-outer-nfkc", "dotted-capital-i"],
)
def test_name_key_examples(name, key):
    assert name_key(name.encode()) == key


@given(st.one_of(st.text(), name_like))
def test_name_key_is_the_spec_formula_for_any_text(text):
    assert name_key(text.encode()) == spec_key(text)


@given(valid_names)
def test_name_key_is_stable_when_applied_twice(text):
    key = name_key(text.encode())
    assert name_key(key.encode()) == key


@given(valid_names)
def test_the_shown_name_has_the_owners_key(text):
    """DM to the name WHO shows must reach the user who typed it."""
    name = parse_username(text.encode())
    assert name_key(name.wire) == name_key(text.encode()) == name.key


# ---------------------------------------------------------------------------
# is_valid_display_name
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, valid",
    [
        ("Naman", True),
        (SURESH, True),
        ("x\u0301", True),
        ("a" * 32, True),
        ("_.-", True),
        ("\u0663", True),
        ("", False),
        ("a" * 33, False),
        ("\u0301a", False),
        ("a b", False),
        ("a\u200bb", False),
        ("\u202ea", False),
        ("a\x00", False),
        ("1\u20444", False),
        ("\u2182", False),
    ],
)
def test_is_valid_display_name(name, valid):
    assert is_valid_display_name(name) is valid


@given(name_like.map(nfkc))
def test_is_valid_display_name_follows_the_rule(name):
    assert is_valid_display_name(name) == spec_valid_nfkc(name)


# ---------------------------------------------------------------------------
# clean_text
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("cp", [c for c in range(0x20) if c != 0x09] + list(range(0x7F, 0xA0)) + [0x2028, 0x2029])
def test_clean_text_removes_each_unsafe_character(cp):
    assert clean_text(("a" + chr(cp) + "b").encode()) == b"ab"


@pytest.mark.parametrize(
    "text",
    [
        "a\tb",
        "\u202a\u202b\u202c\u202d\u202e",
        "\u2066\u2067\u2068\u2069",
        "\u00a0\u3000\u200b\ufeff",
        "\u2026\u2027\u202f",  # share the lead bytes of U+2028/2029
        "\u0100\u0180\u00a0\u00bf",  # continuation bytes 0x80-0x9F inside other characters
        "\U0001f600 \u0938\u0941",
        "",
    ],
    ids=["tab", "bidi-embeddings", "bidi-isolates", "unicode-spaces", "near-separators", "c1-like-bytes", "emoji-devanagari", "empty"],
)
def test_clean_text_keeps_everything_else(text):
    assert clean_text(text.encode()) == text.encode()


def test_clean_text_strips_an_ansi_escape_to_harmless_text():
    assert clean_text(b"\x1b[2J\x1b[31mred\x1b[0m") == b"[2J[31mred[0m"


@given(st.text(alphabet=st.one_of(st.characters(codec="utf-8"), st.sampled_from("\t\x1b\x7f\u0085\u009f\u00a0\u2028\u2029\u202e"))))
def test_clean_text_follows_the_rule(text):
    cleaned = clean_text(text.encode())
    assert cleaned == spec_clean(text).encode()
    assert clean_text(cleaned) == cleaned


# ---------------------------------------------------------------------------
# split_word
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, word, rest",
    [
        (b"MSG hello", b"MSG", b"hello"),
        (b"MSG \t  a  b\tc", b"MSG", b"a  b\tc"),
        (b"DM\tYudi\thi", b"DM", b"Yudi\thi"),
        (b"WHO", b"WHO", b""),
        (b"", b"", b""),
        ("a\u00a0b c".encode(), "a\u00a0b".encode(), b"c"),
        ("\u3000x y".encode(), "\u3000x".encode(), b"y"),
        (b"a\x0bb c", b"a\x0bb", b"c"),
    ],
    ids=["simple", "separator-run", "tabs", "one-word", "empty", "nbsp-not-space", "ideographic-not-space", "vt-not-space"],
)
def test_split_word(text, word, rest):
    assert split_word(text) == (word, rest)


@given(st.text(alphabet=st.one_of(st.characters(codec="utf-8"), st.sampled_from(" \t\u00a0"))))
def test_split_word_follows_the_rule(text):
    trimmed = text.encode().strip(b" \t")
    assert split_word(trimmed) == spec_split(trimmed)
