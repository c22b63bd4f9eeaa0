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
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

MAX_NAME_LENGTH = 32

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
        return Username(display, display.lower(), raw)
    display = unicodedata.normalize("NFKC", raw.decode("utf-8"))
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

    DM looks its target up by this key, so ``DM NAMAN hi`` reaches ``Naman``.
    """
    if raw.isascii():
        return raw.decode("ascii").lower()
    return _key_of_nfkc(unicodedata.normalize("NFKC", raw.decode("utf-8")))


def _key_of_nfkc(name: str) -> str:
    return unicodedata.normalize("NFKC", name.casefold())
