"""Bounded reassembly state: one offset-addressed byte buffer per stream, a table of flows.

``Reassembler`` serves both streams a ClientHello can arrive on: TCP payload (offsets are
sequence numbers relative to the first byte after the SYN, or to the first segment seen
when the SYN was not) and QUIC CRYPTO frames (offsets as sent, RFC 9000 §19.6). Segments
may come in any order and overlap; on overlap the first data wins, as Suricata's inline
mode does (the bytes a blocker judged are the bytes it keeps, whatever a later, different
copy says: that is the defence against desynchronisation by overlapping segments).

Bounds, each a hard limit that frees the memory when hit: bytes buffered per stream,
disjoint pieces per stream (``MAX_PIECES``: a stream of 1-byte segments with holes between
them costs CPU per segment), flows per table, idle seconds per flow. What a flow that hits a
bound gets (a final ``unknown`` verdict) is the engine's decision; this module only says so.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final, Generic, Protocol, TypeVar

# Disjoint pieces one stream may hold while waiting for the holes between them. A
# ClientHello split over 12 segments (nDPI's largest test) arriving in the worst order
# leaves at most 6; evasion tools cut it into a few pieces more.
MAX_PIECES: Final = 64


class Reassembler:
    """The bytes of one stream from offset ``start`` on, with holes, at most ``limit`` long.

    ``pieces`` holds the received ranges ``[begin, end)`` (absolute offsets), sorted,
    disjoint and merged; the buffer has zeros in the holes until they are filled.
    """

    __slots__ = ("buf", "limit", "pieces", "start")

    def __init__(self, limit: int, start: int = 0) -> None:
        self.buf = bytearray()
        self.start = start
        self.limit = limit
        self.pieces: list[list[int]] = []

    def add(self, offset: int, data: bytes) -> bool:
        """Keep ``data`` at ``offset``; bytes already held keep their first value.

        False (and nothing kept) when the buffer would exceed ``limit`` bytes or
        ``MAX_PIECES`` pieces: the caller should give up on the stream.
        """
        end = offset + len(data)
        start = self.start
        if end <= start:
            return True  # old bytes, all already handled
        if offset < start:
            data = data[start - offset :]
            offset = start
        if end - start > self.limit:
            return False
        p = self.pieces
        if len(p) == 1 and p[0][1] == offset and p[0][0] == start:  # in order: append
            self.buf += data
            p[0][1] = end
            return True
        if not p and offset == start:
            self.buf += data
            p.append([offset, end])
            return True
        return self._insert(offset, end, data)

    def _insert(self, offset: int, end: int, data: bytes) -> bool:
        start, buf = self.start, self.buf
        if len(buf) < end - start:
            buf.extend(bytes(end - start - len(buf)))
        merged: list[list[int]] = []
        lo, hi = offset, end
        pos = offset  # the next byte of data not yet compared with the pieces
        for piece in self.pieces:
            b, e = piece
            if e < offset or b > end:
                merged.append(piece)
                continue
            if b > pos:  # a hole before this piece: fill it with new bytes
                buf[pos - start : b - start] = data[pos - offset : b - offset]
            pos = max(pos, e)
            lo, hi = min(lo, b), max(hi, e)
        if pos < end:
            buf[pos - start : end - start] = data[pos - offset :]
        merged.append([lo, hi])
        merged.sort()
        if len(merged) > MAX_PIECES:
            return False
        self.pieces = merged
        return True

    def contiguous(self) -> int:
        """The offset of the first byte not yet received (``start`` if that is missing)."""
        p = self.pieces
        return p[0][1] if p and p[0][0] == self.start else self.start

    def data(self) -> bytes:
        """The bytes from ``start`` up to the first hole."""
        return bytes(self.buf[: self.contiguous() - self.start])

    def discard(self, upto: int) -> None:
        """Forget everything before offset ``upto`` (bytes already judged)."""
        if upto <= self.start:
            return
        del self.buf[: upto - self.start]
        self.start = upto
        kept = []
        for b, e in self.pieces:
            if e > upto:
                kept.append([max(b, upto), e])
        self.pieces = kept

    def __len__(self) -> int:
        return len(self.buf)


class Timed(Protocol):
    last: float


F = TypeVar("F", bound=Timed)


class FlowTable(Generic[F]):
    """Flows by key, at most ``max_flows``; a flow idle ``timeout`` seconds expires.

    Insertion order is age order, so the oldest flow is the first key: making room costs no
    search. Expiry scans the table, at most once per ``timeout / SWEEPS`` of time.
    """

    SWEEPS: Final = 4

    __slots__ = ("flows", "max_flows", "next_sweep", "timeout")

    def __init__(self, max_flows: int, timeout: float) -> None:
        self.flows: dict[bytes, F] = {}
        self.max_flows = max(1, max_flows)
        self.timeout = timeout
        self.next_sweep = 0.0

    def __len__(self) -> int:
        return len(self.flows)

    def __contains__(self, key: bytes) -> bool:
        return key in self.flows

    def get(self, key: bytes) -> F | None:
        return self.flows.get(key)

    def pop(self, key: bytes) -> F | None:
        return self.flows.pop(key, None)

    def add(self, key: bytes, flow: F) -> tuple[bytes, F] | None:
        """Insert ``flow``; when the table is full the oldest flow makes room and is returned."""
        evicted = None
        flows = self.flows
        if len(flows) >= self.max_flows and key not in flows:
            old = next(iter(flows))
            evicted = (old, flows.pop(old))
        flows[key] = flow
        return evicted

    def expire(self, now: float, force: bool = False) -> Iterator[tuple[bytes, F]]:
        """Remove and yield the flows idle for ``timeout`` (every flow with ``force``)."""
        if not force and now < self.next_sweep:
            return
        self.next_sweep = now + self.timeout / self.SWEEPS
        cutoff = now - self.timeout
        dead = [k for k, f in self.flows.items() if force or f.last <= cutoff]
        for k in dead:
            yield k, self.flows.pop(k)


V = TypeVar("V")


class Recent(Generic[V]):
    """Keys of flows already decided, with what was decided, at most ``size`` (oldest
    forgotten first): later packets of those flows are answered without state."""

    __slots__ = ("keys", "size")

    def __init__(self, size: int) -> None:
        self.keys: dict[bytes, V] = {}
        self.size = max(1, size)

    def add(self, key: bytes, value: V) -> None:
        keys = self.keys
        if len(keys) >= self.size and key not in keys:
            del keys[next(iter(keys))]
        keys[key] = value

    def get(self, key: bytes) -> V | None:
        return self.keys.get(key)

    def pop(self, key: bytes) -> V | None:
        return self.keys.pop(key, None)

    def __len__(self) -> int:
        return len(self.keys)
