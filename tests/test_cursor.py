"""The bounds-checked reader every binary parser is built on."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blockgate.cursor import Cursor
from blockgate.errors import CursorError, FormatError


class ProbeError(FormatError):
    pass


def test_integers_and_vectors() -> None:
    c = Cursor(b"\x01\x02\x03\x04\x05\x06\x07\x08\x09\x02ab\x00\x01z")
    assert c.u8() == 1
    assert c.u16() == 0x0203
    assert c.u24() == 0x040506
    assert c.u8() == 7
    assert c.take(2) == b"\x08\x09"
    assert c.vec8() == b"ab"
    assert c.vec16() == b"z"
    assert c.at_end()


@pytest.mark.parametrize(("data", "value"), [
    # RFC 9000 Appendix A.1 sample variable-length integers
    (bytes.fromhex("c2197c5eff14e88c"), 151288809941952652),
    (bytes.fromhex("9d7f3e7d"), 494878333),
    (bytes.fromhex("7bbd"), 15293),
    (bytes.fromhex("25"), 37),
    (bytes.fromhex("4025"), 37),
], ids=["8-byte", "4-byte", "2-byte", "1-byte", "2-byte-non-minimal"])
def test_quic_varint(data: bytes, value: int) -> None:
    c = Cursor(data)
    assert c.varint() == value
    assert c.at_end()


def test_truncation_raises_the_parsers_error() -> None:
    c = Cursor(b"\x00\x05abc", error=ProbeError)
    with pytest.raises(ProbeError) as info:
        c.vec16()
    assert info.value.reason == "truncated"


def test_sub_cursor_is_bounded() -> None:
    c = Cursor(b"abcdef")
    inner = c.sub(3)
    assert inner.take(3) == b"abc"
    with pytest.raises(CursorError):
        inner.u8()
    assert c.take(3) == b"def"


@given(st.binary(max_size=40), st.lists(st.sampled_from(
    ["u8", "u16", "u24", "u32", "vec8", "vec16", "varint", "take3"]), max_size=12))
def test_random_reads_raise_only_cursor_error(data: bytes, ops: list[str]) -> None:
    c = Cursor(data)
    try:
        for op in ops:
            c.take(3) if op == "take3" else getattr(c, op)()
    except CursorError:
        pass
    assert 0 <= c.pos <= len(data)
