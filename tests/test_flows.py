"""The bounded reassembler and flow tables, against naive references."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockgate.flows import MAX_PIECES, FlowTable, Reassembler, Recent

STREAM = bytes(range(256)) * 4

CASES = [
    # (id, segments (offset, data), contiguous end, data up to the first hole)
    ("in-order", [(0, b"abc"), (3, b"def")], 6, b"abcdef"),
    ("reversed", [(3, b"def"), (0, b"abc")], 6, b"abcdef"),
    ("hole", [(0, b"ab"), (4, b"ef")], 2, b"ab"),
    ("first-missing", [(2, b"cd")], 0, b""),
    ("overlap-first-wins", [(0, b"abcd"), (2, b"XXYY")], 6, b"abcdYY"),
    ("covered-by-later-wins-nothing", [(2, b"cd"), (0, b"XXXXXX")], 6, b"XXcdXX"),
    ("duplicate", [(0, b"abc"), (0, b"abc")], 3, b"abc"),
    ("bridge", [(0, b"a"), (2, b"c"), (4, b"e"), (1, b"BCD")], 5, b"aBcDe"),
    ("empty", [(5, b"")], 0, b""),
]


@pytest.mark.parametrize(("segments", "end", "data"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_segments(segments: list[tuple[int, bytes]], end: int, data: bytes) -> None:
    r = Reassembler(100)
    for off, chunk in segments:
        assert r.add(off, chunk)
    assert r.contiguous() == end
    assert r.data() == data


def test_limit_and_pieces() -> None:
    r = Reassembler(10)
    assert r.add(0, b"0123456789")
    assert not r.add(10, b"x")  # one byte beyond the bound
    r = Reassembler(1000)
    for i in range(MAX_PIECES):
        assert r.add(1 + 2 * i, b"x")
    assert not r.add(1 + 2 * MAX_PIECES, b"x")  # one piece too many


def test_discard_keeps_offsets() -> None:
    r = Reassembler(8)
    assert r.add(0, b"abcdefgh")
    r.discard(6)
    assert (r.start, r.data(), len(r)) == (6, b"gh", 2)
    assert r.add(4, b"XXXXij")  # old bytes ignored, new ones kept; the bound counts from start
    assert r.data() == b"ghij"
    assert r.add(2, b"zz")  # entirely before start: nothing to do
    assert r.contiguous() == 10


@given(st.data())
@settings(max_examples=300)
def test_any_segmentation_and_order_gives_the_stream(data: st.DataObject) -> None:
    """Split anywhere, shuffle, overlap with the same bytes: the stream comes back whole."""
    n = data.draw(st.integers(1, len(STREAM)))
    cuts = sorted(set(data.draw(st.lists(st.integers(1, n - 1), max_size=20)) if n > 1 else []))
    bounds = [0, *cuts, n]
    segs = [(a, STREAM[a:b]) for a, b in itertools.pairwise(bounds)]
    extra = data.draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(1, 50)), max_size=5))
    segs += [(a, STREAM[a : min(n, a + ln)]) for a, ln in extra]
    random.Random(data.draw(st.integers())).shuffle(segs)
    r = Reassembler(len(STREAM))
    for off, chunk in segs:
        assert r.add(off, chunk)
    assert r.data() == STREAM[:n]


@given(st.lists(st.tuples(st.integers(0, 60), st.binary(min_size=1, max_size=20)), max_size=30))
@settings(max_examples=300)
def test_first_data_wins_against_a_naive_reference(segs: list[tuple[int, bytes]]) -> None:
    r = Reassembler(1000)
    ref: dict[int, int] = {}
    for off, chunk in segs:
        r.add(off, chunk)
        for i, b in enumerate(chunk):
            ref.setdefault(off + i, b)
    end = 0
    while end in ref:
        end += 1
    assert r.contiguous() == end
    assert r.data() == bytes(ref[i] for i in range(end))
    assert all(b - a > 0 for a, b in r.pieces) and r.pieces == sorted(r.pieces)


class F:
    def __init__(self, last: float) -> None:
        self.last = last


@given(st.lists(st.tuples(st.integers(0, 40), st.floats(0, 100)), max_size=200), st.integers(1, 16))
def test_flow_table_never_exceeds_its_bound(ops: list[tuple[int, float]], bound: int) -> None:
    t: FlowTable[F] = FlowTable(bound, 5.0)
    now = 0.0
    for k, dt in ops:
        now += dt / 10
        list(t.expire(now))
        t.add(bytes([k]), F(now))
        assert len(t) <= bound
        assert all(now - f.last < 5.0 + 5.0 for f in t.flows.values())


def test_flow_table_evicts_the_oldest_and_expires_idle() -> None:
    t: FlowTable[F] = FlowTable(2, 10.0)
    assert t.add(b"a", F(0)) is None
    assert t.add(b"b", F(1)) is None
    evicted = t.add(b"c", F(2))
    assert evicted is not None and evicted[0] == b"a"
    assert [k for k, _ in t.expire(11.5)] == [b"b"]
    assert [k for k, _ in t.expire(11.6)] == []  # not yet time for the next sweep
    assert [k for k, _ in t.expire(0, force=True)] == [b"c"]


def test_recent_is_bounded_oldest_first() -> None:
    r: Recent[int] = Recent(3)
    for i in range(5):
        r.add(bytes([i]), i)
    assert len(r) == 3 and r.get(b"\x00") is None and r.get(b"\x04") == 4
    assert r.pop(b"\x03") == 3 and len(r) == 2
