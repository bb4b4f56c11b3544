"""A bounds-checked reader over bytes, shared by every binary parser.

Each read checks the remaining length first and raises the parser's own format error with
reason ``truncated`` instead of an ``IndexError`` or a short slice: a parser built on it
raises only its format error, whatever the input.
"""

from __future__ import annotations

from blockgate.errors import CursorError, FormatError


class Cursor:
    """Reads big-endian integers and byte strings from ``data[pos:end]``."""

    __slots__ = ("_error", "data", "end", "pos")

    def __init__(
        self,
        data: bytes,
        pos: int = 0,
        end: int | None = None,
        error: type[FormatError] = CursorError,
    ) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else min(end, len(data))
        self._error = error

    def remaining(self) -> int:
        return self.end - self.pos

    def at_end(self) -> bool:
        return self.pos >= self.end

    def _need(self, n: int) -> int:
        pos = self.pos
        if n < 0 or pos + n > self.end:
            raise self._error(f"need {n} bytes at offset {pos}, have {self.end - pos}", "truncated")
        self.pos = pos + n
        return pos

    def u8(self) -> int:
        pos = self._need(1)
        return self.data[pos]

    def u16(self) -> int:
        pos = self._need(2)
        d = self.data
        return (d[pos] << 8) | d[pos + 1]

    def u24(self) -> int:
        pos = self._need(3)
        d = self.data
        return (d[pos] << 16) | (d[pos + 1] << 8) | d[pos + 2]

    def u32(self) -> int:
        pos = self._need(4)
        return int.from_bytes(self.data[pos : pos + 4], "big")

    def take(self, n: int) -> bytes:
        pos = self._need(n)
        return self.data[pos : pos + n]

    def skip(self, n: int) -> None:
        self._need(n)

    def sub(self, n: int) -> Cursor:
        """A cursor over the next ``n`` bytes; this cursor moves past them."""
        pos = self._need(n)
        return Cursor(self.data, pos, pos + n, self._error)

    def vec8(self) -> bytes:
        """A byte string prefixed by a one-byte length (TLS ``opaque x<0..255>``)."""
        return self.take(self.u8())

    def vec16(self) -> bytes:
        """A byte string prefixed by a two-byte length (TLS ``opaque x<0..2^16-1>``)."""
        return self.take(self.u16())

    def varint(self) -> int:
        """A QUIC variable-length integer (RFC 9000 §16)."""
        first = self.u8()
        size = 1 << (first >> 6)
        value = first & 0x3F
        if size > 1:
            pos = self._need(size - 1)
            for b in self.data[pos : pos + size - 1]:
                value = (value << 8) | b
        return value
