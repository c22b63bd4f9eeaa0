"""Text rules: what counts as whitespace, how a line splits into words, and
what may reach another user's screen.

All functions work on bytes that are already known to be valid UTF-8.  They
never decode: the server forwards the sender's own bytes, so a message is
encoded exactly once (by its sender) however many users receive it.

Working on UTF-8 bytes is safe because UTF-8 is self-synchronising: an ASCII
byte (space, TAB, a C0 control) never occurs inside a multi-byte character,
and a lead byte never occurs as a continuation byte.  So ``\\xc2`` followed by
``\\x80``-``\\x9f`` is always a C1 control character, and ``\\xe2\\x80\\xa8`` is
always U+2028.
"""

from __future__ import annotations

import re

WHITESPACE = b" \t"
"""Whitespace for trimming lines and separating words: ASCII space and TAB only.

Other Unicode spaces (U+00A0, U+3000) are part of the text.
"""

_UNSAFE = re.compile(
    rb"[\x00-\x08\x0a-\x1f\x7f]"  # C0 controls except TAB, and DEL
    rb"|\xc2[\x80-\x9f]"  # C1 controls, U+0080-U+009F
    rb"|\xe2\x80[\xa8\xa9]"  # LINE SEPARATOR, PARAGRAPH SEPARATOR
)


# Every byte that can start an unsafe character.  Deleting them with
# ``bytes.translate`` is one C pass, several times faster than any regex
# search, so clean text (nearly all of it) never reaches the regex.
_UNSAFE_LEAD_BYTES = bytes([*range(0x00, 0x09), *range(0x0A, 0x20), 0x7F, 0xC2, 0xE2])


def clean_text(text: bytes) -> bytes:
    """``text`` without the characters that could forge lines or escape sequences.

    Removed: C0 controls except TAB, DEL, C1 controls, U+2028 and U+2029.
    Without this a user could send ANSI escapes to other users' terminals,
    or fake extra lines (U+2028 splits a line for ``str.splitlines``).
    """
    if len(text.translate(None, _UNSAFE_LEAD_BYTES)) == len(text):
        return text
    return _UNSAFE.sub(b"", text)


def split_word(text: bytes) -> tuple[bytes, bytes]:
    """Split off the first word: ``(word, rest)``.

    The word ends at the first space or TAB; the run of whitespace after it
    is dropped, and the rest keeps its inner whitespace exactly as sent.
    ``text`` is expected to be trimmed already.
    """
    word, _, rest = text.partition(b" ")
    if b"\t" not in word:
        return word, rest.lstrip(WHITESPACE)
    space = text.find(b" ")
    tab = text.find(b"\t")
    cut = tab if space < 0 or 0 <= tab < space else space
    return text[:cut], text[cut + 1 :].lstrip(WHITESPACE)


def is_utf8(data: bytes) -> bool:
    """Whether ``data`` is valid UTF-8 (strict: no surrogates, no overlongs)."""
    if data.isascii():
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
