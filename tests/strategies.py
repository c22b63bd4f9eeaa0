"""Hypothesis strategies shared by the protocol tests.

Lines are built as ``str`` from small alphabets chosen to hit the spec's
edges (names that collide under NFKC and casefolding, control characters,
U+2028, TAB runs, Unicode spaces, command words that only look ASCII), then
encoded and sometimes damaged into invalid UTF-8.  Small pools make
collisions and repeated names likely within a 50-step run.

Nothing here ever produces an LF inside a line: a ``LineReceived`` never
carries one.
"""

from __future__ import annotations

import unicodedata

from hypothesis import strategies as st

COMMAND_WORDS = ("LOGIN", "MSG", "WHO", "DM", "PING", "QUIT", "EXIT")

# Words that look like commands but are not, in ASCII: dotless i, long s,
# fullwidth letters, a dotted capital I.  Python's str.upper() maps some of
# them onto a command ("pıng".upper() == "PING").
LOOKALIKE_WORDS = (
    "pıng",
    "PİNG",
    "ＰＩＮＧ",
    "ＷＨＯ",
    "MſG",
    "LOGıN",
    "quıt",
    "EXİT",
    "D\u200bM",
    "PING\r",
    "GET",
    "HELP",
    "",
)

# Names: collisions ('Naman' / 'naman' / fullwidth, composed and decomposed
# 'José', 'ß' / 'ss' / 'ẞ', 'ﬀ' / 'ff', 'Ⅸ' / 'IX', Kelvin sign / 'k',
# Hangul syllable / jamo), boundaries (32 / 33 code points, a mark first)
# and invalid names (space, control, U+2028, bidi, emoji, symbols).
NAME_POOL = (
    "Naman",
    "naman",
    "ｎａｍａｎ",
    "NAMAN",
    "Yudi",
    "yudi",
    "Jos\u00e9",
    "Jose\u0301",
    "JOS\u00c9",
    "\u00df",
    "ss",
    "SS",
    "\u1e9e",
    "\ufb00",
    "ff",
    "\u2168",
    "IX",
    "\u212a",
    "k",
    "\ud55c",
    "\u1112\u1161\u11ab",
    "\u01c5",
    "\u0663\u0664",
    "\u00b2",
    "\u00bd",
    "_.-",
    "a" * 32,
    "a" * 33,
    "x" * 31 + "\u0301",
    "\u0301a",
    "a b",
    "a\tb",
    "a\u00a0b",
    "a\x00",
    "a\x1b[2J",
    "a\u2028",
    "a\u202e",
    "\U0001f600",
    "İ",
    "i\u0307",
    "\ufb00" * 16,  # 16 code points typed, 32 after NFKC: valid
    "\ufb00" * 17,  # 34 after NFKC: invalid
    "\u337f" * 9,  # each becomes four CJK letters: 36, invalid
    "a\u2024b",  # one dot leader: 'a.b' after NFKC
    "a\x85",
)

NAME_ALPHABET = "aAnN\u00e9\u0301\u0345\u00df_.-9\u0663 \t\x01\u2028ｎ"

TEXT_ALPHABET = (
    "abcXYZ09!? \t \t"
    "\x00\x01\x07\x1b\r\x7f\x85\x9b\u2028\u2029"
    "\u00a0\u3000\u202e\u2066\ufeff\u00e9\u0301\U0001f600ı"
)

INVALID_UTF8 = (b"\xff", b"\xfe", b"\x80", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf5\x80\x80\x80")

HTTP_LINES = (
    "GET / HTTP/1.1",
    "POST /x HTTP/1.0",
    "GET /favicon.ico HTTP/1.1",
    "HEAD / HTTP/1.0",
    "OPTIONS * HTTP/1.1",
    "PUT /a?b=c HTTP/1.1",
    "Host: localhost:4000",
    "Host: example.com",
    "host: example.com",
    "HOST:example.com",
)

# Characters that some whitespace notion (str.split(), str.strip(), Unicode
# White_Space, str.splitlines()) treats as a space or a line break, but
# protocol.md does not: only space and TAB separate words.
FAKE_SPACES = ("\x0b", "\x0c", "\x1c", "\x1f", "\r", "\x85", "\u00a0", "\u2028", "\u3000", "\u200b")

whitespace = st.one_of(
    st.text(alphabet=" \t", min_size=1, max_size=3),
    st.text(alphabet=" \t", min_size=1, max_size=3),
    st.text(alphabet=" \t", min_size=1, max_size=3),
    st.sampled_from(FAKE_SPACES),
)
real_padding = st.text(alphabet=" \t", max_size=2)
padding = st.one_of(
    st.text(alphabet=" \t", max_size=2),
    st.text(alphabet=" \t", max_size=2),
    st.text(alphabet=" \t", max_size=2),
    st.sampled_from(FAKE_SPACES),
)


@st.composite
def case_variant(draw, word: str) -> str:
    flags = draw(st.lists(st.booleans(), min_size=len(word), max_size=len(word)))
    return "".join(ch.lower() if low else ch for ch, low in zip(word, flags, strict=True))


command_words = st.one_of(
    st.sampled_from(COMMAND_WORDS),
    st.sampled_from(COMMAND_WORDS).flatmap(case_variant),
    st.sampled_from(LOOKALIKE_WORDS),
)

@st.composite
def name_variant(draw, name: str) -> str:
    """``name`` as another user might type it: other case, fullwidth, decomposed."""
    how = draw(st.sampled_from(("same", "upper", "lower", "casefold", "fullwidth", "NFD")))
    if how == "fullwidth":
        return "".join(chr(ord(ch) + 0xFEE0) if "!" <= ch <= "~" else ch for ch in name)
    if how == "NFD":
        return unicodedata.normalize("NFD", name)
    return name if how == "same" else getattr(name, how)()


names = st.one_of(
    st.sampled_from(NAME_POOL),
    st.sampled_from(NAME_POOL),
    st.text(alphabet=NAME_ALPHABET, min_size=1, max_size=5),
)

plain_names = st.text(alphabet="abcdefgh", min_size=1, max_size=3)
"""Valid, mostly distinct names."""

texts = st.text(alphabet=TEXT_ALPHABET, max_size=10)


@st.composite
def command_lines(draw) -> str:
    """A line built like a command: padding, word, separator, arguments, padding."""
    word = draw(command_words)
    kind = word.upper() if word.isascii() else ""
    if kind == "LOGIN":
        args = draw(st.one_of(names, st.just("")))
    elif kind == "MSG":
        args = draw(texts)
    elif kind == "DM":
        parts = draw(st.lists(st.one_of(names, texts), max_size=2))
        args = draw(whitespace).join(parts)
    elif kind in ("WHO", "PING", "QUIT", "EXIT"):
        args = draw(st.one_of(st.just(""), st.just(""), texts))
    else:
        args = draw(st.one_of(st.just(""), texts))
    line = word + (draw(whitespace) + args if args else "")
    return draw(padding) + line + draw(padding)


@st.composite
def damaged(draw, text: str) -> bytes:
    """``text`` encoded, sometimes with invalid UTF-8 spliced in."""
    data = text.encode("utf-8")
    if draw(st.integers(0, 5)) == 0:
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.sampled_from(INVALID_UTF8)) + data[at:]
    return data


lines = st.one_of(
    command_lines().flatmap(damaged),
    command_lines().flatmap(damaged),
    command_lines().flatmap(damaged),
    command_lines().flatmap(damaged),
    # Only real whitespace around them: whether "GET / HTTP/1.1<VT>" or a
    # request line with a broken UTF-8 byte still "looks like" HTTP is left
    # open by protocol.md (see model.py, AMBIGUOUS 1 and 2).
    st.tuples(real_padding, st.sampled_from(HTTP_LINES), real_padding).map(lambda p: "".join(p).encode("ascii")),
    st.text(alphabet=TEXT_ALPHABET, max_size=8).map(lambda s: s.encode("utf-8")),
    st.binary(max_size=12).map(lambda b: b.replace(b"\n", b"")),
)
"""Raw ``LineReceived`` bytes: never an LF."""

telnet_requests = st.tuples(st.sampled_from((251, 253)), st.integers(0, 255))


# -- byte streams for the framer ---------------------------------------------------

TELNET_CHUNKS = (
    b"\xff\xfd\x06",  # IAC DO TIMING-MARK
    b"\xff\xfb\x01",  # IAC WILL ECHO
    b"\xff\xfc\x01",  # IAC WONT ECHO
    b"\xff\xfe\x03",  # IAC DONT SGA
    b"\xff\xf4\xff\xfd\x06",  # Ctrl+C: IAC IP IAC DO TIMING-MARK
    b"\xff\xfa\x18\x00xterm\xff\xf0",  # a subnegotiation
    b"\xff\xfa\x18",  # an unfinished one (abandoned at the next LF)
    b"\xff\xff",  # a literal 0xFF
    b"\xff",  # a lone IAC
    b"\xff\x41",  # IAC before a non-command: data
)

stream_pieces = st.one_of(
    command_lines().flatmap(damaged).map(lambda b: b + b"\n"),
    command_lines().flatmap(damaged).map(lambda b: b + b"\r\n"),
    st.sampled_from(HTTP_LINES).map(lambda s: s.encode("ascii") + b"\r\n"),
    st.sampled_from(TELNET_CHUNKS),
    st.sampled_from((b"\n", b"\r\n", b"\r", b"LOGIN ", b"MSG ", b"x" * 40)),
    st.binary(max_size=24),
)

stream_bytes = st.lists(stream_pieces, max_size=8).map(b"".join)
"""A plausible-to-hostile byte stream for one connection."""

chat_pieces = st.one_of(
    texts.map(lambda text: f"MSG {text}\n"),
    texts.map(lambda text: f"MSG {text}\n"),
    st.tuples(plain_names, texts).map(lambda nt: f"DM {nt[0]} {nt[1]}\n"),
    st.sampled_from(("WHO\n", "PING\r\n", "QUIT\n", f"LOGIN {NAME_POOL[0]}\n")),
)

chat_bytes = st.tuples(
    plain_names.map(lambda name: f"LOGIN {name}\n"),
    st.lists(chat_pieces, max_size=6),
).map(lambda parts: (parts[0] + "".join(parts[1])).encode("utf-8"))
"""Mostly well-formed chat traffic for one connection: a LOGIN, then talk."""
