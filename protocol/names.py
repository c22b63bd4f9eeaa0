"""Usernames: which names are allowed, how they are shown, when two are the same.

The rule (protocol.md) is checked on the NFKC form of what the user typed:
1 to 32 code points, each a Unicode letter (categories L*), a combining mark
(M*, not first), a decimal digit (Nd) or one of ``_ - .``.  So ``सुरेश`` and
``José`` are names, while spaces, controls, zero-width and bidirectional
formatting characters (all category C* or Z*) never are.

A name is shown in its NFKC form with the case its owner typed.  Two names are
the same when their keys are: ``NFKC(casefold(NFKC(name)))``.  That key is
stable (applying it twice changes nothing), and it makes ``Naman``, ``naman``
and ``ｎａｍａｎ`` one name, and a composed and a decomposed ``José`` too.

Almost every name is ASCII, where NFKC is the identity and casefold is
``lower()``; that case takes a fast path with the same result.

Bounded work
------------
NFKC can expand a code point 18-fold (U+FDFA is 18 code points), so
normalising a 4 KB argument costs milliseconds.  Nothing that long can be a
name, and Unicode's own limits say exactly how long is too long:

* normalisation never removes a code point: every code point decomposes to
  one or more, so ``len(text) <= len(NFKD(text))``;
* ``NFKD(text) == NFD(NFKC(text))``, and NFD turns each code point of the
  NFKC form into at most ``MAX_DECOMPOSITION`` code points (4 in Unicode 14
  to 16, e.g. U+1F82, and a test checks the running version);
* so a text whose NFKC form is a name (at most 32 code points) has at most
  ``32 * 4 = 128`` code points, and at most ``128 * 4 = 512`` bytes of
  UTF-8.

An argument over either bound is refused before it is normalised (or even
decoded, for the byte bound): LOGIN gets ``invalid-username`` and DM
``user-not-found``, exactly what normalising it would have given.  So the
work per line stays linear in the line, with a small constant.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

MAX_NAME_LENGTH = 32
MAX_DECOMPOSITION = 4
"""The longest canonical decomposition of one code point (see Bounded work)."""
MAX_NAME_CODE_POINTS = MAX_NAME_LENGTH * MAX_DECOMPOSITION
"""No text longer than this, in code points, normalises to a valid name."""
MAX_NAME_BYTES = MAX_NAME_CODE_POINTS * 4
"""No text longer than this, in bytes of UTF-8, normalises to a valid name."""

_ASCII_NAME = re.compile(rb"[A-Za-z0-9_.\-]{1,%d}" % MAX_NAME_LENGTH)
_PUNCTUATION = frozenset("_-.")


@dataclass(frozen=True, slots=True)
class Username:
    """A valid name: how it is shown, how it compares, and its wire bytes."""

    display: str
    key: str
    wire: bytes


def parse_username(raw: bytes) -> Username | None:
    """The username ``raw`` (valid UTF-8) stands for, or ``None`` if it breaks the rule."""
    if raw.isascii():
        if _ASCII_NAME.fullmatch(raw) is None:
            return None
        display = raw.decode("ascii")
        key = display.lower()
        return Username(display, display if key == display else key, raw)  # one string if they agree
    text = _maybe_short_enough(raw)
    if text is None:
        return None
    display = unicodedata.normalize("NFKC", text)
    if not is_valid_display_name(display):
        return None
    return Username(display, _key_of_nfkc(display), display.encode("utf-8"))


def is_valid_display_name(name: str) -> bool:
    """Whether ``name``, already in NFKC form, satisfies the username rule."""
    if not 1 <= len(name) <= MAX_NAME_LENGTH:
        return False
    if unicodedata.category(name[0])[0] == "M":
        return False
    return all(_allowed(char) for char in name)


def _allowed(char: str) -> bool:
    category = unicodedata.category(char)
    return category[0] in "LM" or category == "Nd" or char in _PUNCTUATION


def name_key(raw: bytes) -> str:
    """The comparison key of any text (valid UTF-8), a valid name or not.

    Its cost grows with the text (see Bounded work): for a text that may be
    anything, use ``maybe_name_key``.
    """
    if raw.isascii():
        return raw.decode("ascii").lower()
    return _key_of_nfkc(unicodedata.normalize("NFKC", raw.decode("utf-8")))


def maybe_name_key(raw: bytes) -> str | None:
    """The key of ``raw`` (valid UTF-8), or ``None`` if no name can have it.

    DM looks its target up by this key, so ``DM NAMAN hi`` reaches ``Naman``;
    a target too long to be anybody's name is not normalised at all.
    """
    if raw.isascii():
        return raw.decode("ascii").lower() if len(raw) <= MAX_NAME_LENGTH else None
    text = _maybe_short_enough(raw)
    if text is None:
        return None
    return _key_of_nfkc(unicodedata.normalize("NFKC", text))


def _maybe_short_enough(raw: bytes) -> str | None:
    """``raw`` decoded, or ``None`` if it is too long to normalise to a name."""
    if len(raw) > MAX_NAME_BYTES:
        return None
    text = raw.decode("utf-8")
    return text if len(text) <= MAX_NAME_CODE_POINTS else None


def _key_of_nfkc(name: str) -> str:
    return unicodedata.normalize("NFKC", name.casefold())
