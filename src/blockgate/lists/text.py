"""Helpers shared by the line-oriented formats (hosts, domains, adblock, dnsmasq)."""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Iterator
from itertools import accumulate, repeat
from operator import add
from typing import BinaryIO, Final

# Lines are read in blocks of this many bytes (cut at a newline), so a list of any size is
# processed in bounded memory, a block at a time.
BLOCK: Final = 4 << 20

_NAME_BYTES: Final = b"abcdefghijklmnopqrstuvwxyz0123456789-_.*\n"
_BAD_BYTE: Final = re.compile(rb"[^a-z0-9_.*\n-]")
_DIGIT_END: Final = re.compile(rb"[0-9]$", re.M)
# A clean line is at most this long before its labels or length need checking one by one.
_SHORT: Final = 63


def decode_line(line: bytes) -> str:
    """Strict UTF-8 first, then cp1251 (the registry's encoding), per line.

    Text re-saved through the wrong codec carries U+FFFD, which ``list_key`` refuses.
    """
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        return line.decode("cp1251", "replace")


def blocks(stream: BinaryIO) -> Iterator[list[bytes]]:
    """The stream's lines (without newline, CR dropped, lowercased ASCII), a block at a time.

    Lowercasing bytes touches only ``A-Z``, so non-ASCII text is left for the slow path.
    """
    rest = b""
    while True:
        data = stream.read(BLOCK)
        if not data:
            break
        data = rest + data
        cut = data.rfind(b"\n")
        if cut < 0:
            rest = data
            continue
        rest = data[cut + 1 :]
        yield _lines(data[: cut + 1])
    if rest:
        yield _lines(rest + b"\n")


def _lines(data: bytes) -> list[bytes]:
    low = data.lower()
    if b"\r" in low:
        low = low.replace(b"\r\n", b"\n")
    lines = low.split(b"\n")
    lines.pop()  # data ends with a newline: the last element is empty
    return lines


def unusual_lines(lines: list[bytes]) -> set[int]:
    """Indices of the lines that a plain ``name`` / ``*.name`` reading may get wrong.

    The other lines hold only ``[a-z0-9_.*-]``, have no empty label, no leading or trailing
    dot, a ``*`` only as a leading ``*.``, no label or name over the limits (no line over 63
    bytes at all) and do not end in a digit (IP literals): they are keys as they stand. The
    checks are whole-block scans in C; the unusual lines go through ``list_key`` one by one.
    """
    block = b"\n".join(lines) + b"\n"
    marks: list[int] = []
    if block.translate(None, _NAME_BYTES):
        marks.extend(m.start() for m in _BAD_BYTE.finditer(block))
    for needle, shift in ((b"..", 0), (b"\n.", 1), (b".\n", 0), (b"\n\n", 1)):
        pos = block.find(needle)
        while pos >= 0:
            marks.append(pos + shift)
            pos = block.find(needle, pos + 1)
    stars = block.count(b"*")
    if stars and stars != block.count(b"\n*.") + block.startswith(b"*."):
        pos = block.find(b"*")
        while pos >= 0:  # a "*" that is not a leading "*."
            if (pos and block[pos - 1] != 10) or block[pos + 1] != 46:
                marks.append(pos)
            pos = block.find(b"*", pos + 1)
    marks.extend(m.start() for m in _DIGIT_END.finditer(block))
    out: set[int] = set()
    if marks:
        ends = list(accumulate(map(add, map(len, lines), repeat(1))))
        out.update(bisect_right(ends, pos) for pos in marks)
    if lines and (not lines[0] or lines[0][0] == 46):  # first line empty or starting with "."
        out.add(0)
    if max(map(len, lines), default=0) > _SHORT:
        out.update(i for i, line in enumerate(lines) if len(line) > _SHORT)
    return out
