"""protocol.commands: the HTTP guard's quick refusal never changes its answer."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from protocol.commands import _HTTP, looks_like_http

pieces = st.sampled_from(
    [b"GET", b"POST", b"HEAD", b"PROPFIND", b"Host", b"host", b"HOST", b":", b" ", b"\t", b"/", b"*",
     b"HTTP/", b"1.1", b"0", b"http://x", b"LOGIN", b"a", b"\xef\xb7\xba", b"-"]
)
lines = st.lists(st.one_of(pieces, st.binary(max_size=3)), max_size=12).map(b"".join)


@given(lines)
def test_the_quick_refusal_agrees_with_the_full_pattern(line):
    assert looks_like_http(line) == (_HTTP.match(line) is not None)
