"""Helpers shared by the line-oriented formats (hosts, domains, adblock, dnsmasq)."""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Iterator
from itertools import accumulate, compress, count, repeat
from operator import add, gt, itemgetter, not_
from typing import TYPE_CHECKING, BinaryIO, Final

if TYPE_CHECKING:
    from blockgate.lists.base import Input, ParsedList

# Lines are read in blocks of this many bytes (cut at a newline), so a list of any size is
# processed in bounded memory, a block at a time. 256 KiB parses the 1M-name bench list as
# fast as 4 MiB did (0.43 against 0.47 s) and holds a sixteenth of the lines at once, which
# is what a streaming parse (a swap) keeps beside the rules in force.
BLOCK: Final = 256 << 10

_NAME_BYTES: Final = b"abcdefghijklmnopqrstuvwxyz0123456789-_.*\n"
_BAD_BYTE: Final = re.compile(rb"[^a-z0-9_.*\n-]")
_ODD_FIRST: Final = re.compile(rb"[.]")
_ODD_LAST: Final = re.compile(rb"[.0-9]")
# Lines longer than this may hold a label over 63 octets: their labels are measured.
_SHORT: Final = 63
_MAX_LABEL: Final = 63
_MAX_NAME: Final = 253
_BOM: Final = b"\xef\xbb\xbf"
_first = itemgetter(0)
_last = itemgetter(-1)


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
    for lines, _joined in joined_blocks(stream):
        yield lines


def joined_blocks(stream: BinaryIO) -> Iterator[tuple[list[bytes], bytes]]:
    """Like ``blocks``, with each block's text too (lines joined by newlines, final one kept)."""
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


def numbered_lines(out: ParsedList, inp: Input) -> Iterator[tuple[int, int, bytes]]:
    """``(line number, ref, line)`` for every line of one input (BOM dropped).

    Registers the file with ``out`` (``begin_file``/``end_file``), so ``ref`` is the
    global line number the rule columns keep.
    """
    base = out.begin_file(inp.name)
    number = 0
    for lines in blocks(inp.stream):
        if not number and lines and lines[0].startswith(_BOM):
            lines[0] = lines[0][len(_BOM) :]
        for line in lines:
            number += 1
            yield number, base + number, line
        out.spill()  # the consumer is done with the block's lines
    out.end_file(number)


def _lines(data: bytes) -> tuple[list[bytes], bytes]:
    low = data.lower()
    if b"\r" in low:
        low = low.replace(b"\r\n", b"\n")
    lines = low.split(b"\n")
    lines.pop()  # data ends with a newline: the last element is empty
    return lines, low


def unusual_lines(lines: list[bytes], joined: bytes | None = None) -> set[int]:
    """Indices of the lines that a plain ``name`` / ``*.name`` reading may get wrong.

    ``joined`` may give the lines already joined by newlines (with a final one).
    The other lines hold only ``[a-z0-9_.*-]``, have no empty label, no leading or trailing
    dot, a ``*`` only as a leading ``*.``, no label or name over the limits, and do not end
    in a digit (IP literals): they are keys as they stand. The checks are whole-block passes
    in C (``translate``, ``find``, ``map``); only the unusual lines, usually none, go through
    ``list_key`` one by one.
    """
    out: set[int] = set()
    if not all(lines):  # empty lines are skipped by the caller's slow path
        out.update(compress(count(), map(not_, lines)))
        lines = [line or b"#" for line in lines]
        joined = None
    block = joined if joined is not None else b"\n".join(lines) + b"\n"
    marks: list[int] = []
    if block.translate(None, _NAME_BYTES):
        marks.extend(m.start() for m in _BAD_BYTE.finditer(block))
    pos = block.find(b"..")
    while pos >= 0:
        marks.append(pos)
        pos = block.find(b"..", pos + 1)
    stars = block.count(b"*")
    if stars and stars != block.count(b"\n*.") + block.startswith(b"*."):
        pos = block.find(b"*")
        while pos >= 0:  # a "*" that is not a leading "*."
            if (pos and block[pos - 1] != 10) or block[pos + 1] != 46:
                marks.append(pos)
            pos = block.find(b"*", pos + 1)
    if marks:
        ends = list(accumulate(map(add, map(len, lines), repeat(1))))
        out.update(bisect_right(ends, pos) for pos in marks)
    # One byte per line: its first and its last. A leading ".", a trailing "." or digit.
    out.update(m.start() for m in _ODD_FIRST.finditer(bytes(map(_first, lines))))
    out.update(m.start() for m in _ODD_LAST.finditer(bytes(map(_last, lines))))
    for i in compress(count(), map(gt, map(len, lines), repeat(_SHORT))):
        line = lines[i]
        name = line[2:] if line[:2] == b"*." else line
        if len(name) > _MAX_NAME or max(map(len, name.split(b"."))) > _MAX_LABEL:
            out.add(i)
    return out
