"""[domains]: one name per line, ``#`` comments.

``x`` blocks exactly ``x``; ``*.x`` blocks the names strictly below ``x`` (WILDCARD), the
convention of RPZ and of the bench kit's lists; ``.x`` blocks ``x`` and every name below it
(SUBTREE, the leading-dot convention of Debian's blockdomains and Surge domain sets).
Option ``scope: subtree`` makes a plain ``x`` a subtree too, as many hand-written lists mean.

This is the format of the largest lists, so clean lines are taken a block at a time with
C-level passes (``lists.text.unusual_lines`` says which lines need a closer look).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from itertools import compress, repeat
from operator import and_
from typing import Final

from blockgate.lists.base import Input, ParsedList, make_flags
from blockgate.lists.text import joined_blocks, unusual_lines
from blockgate.trie import FLIP, Kind

OPTIONS: Final[Mapping[str, tuple[str, ...]]] = {"scope": ("exact", "subtree")}

_SUBTREE: Final = make_flags(Kind.SUBTREE)


def parse(inputs: Sequence[Input], options: Mapping[str, str] | None = None) -> ParsedList:
    """Parse plain domain lists. raises only ListFormatError; anything else is a bug."""
    opts = options or {}
    plain = make_flags(Kind.SUBTREE if opts.get("scope") == "subtree" else Kind.EXACT)
    star = make_flags(Kind.WILDCARD)
    out = ParsedList("domains")
    for inp in inputs:
        base = out.begin_file(inp.name)
        first = base + 1  # global number of the block's first line
        for lines, joined in joined_blocks(inp.stream):
            odd = unusual_lines(lines, joined)
            clean = bytearray(b"\x01") * len(lines)
            for i in sorted(odd):
                clean[i] = 0
                _one(out, inp.name, lines[i], first + i - base, first + i, plain, star)
            numbers = range(first, first + len(lines))
            starred = bytes(map(bytes.startswith, lines, repeat(b"*")))  # 1 per "*" line
            if odd or starred.count(1):
                _take(out, lines, numbers, bytes(map(and_, clean, starred.translate(FLIP))), plain)
                mask = bytes(map(and_, clean, starred))
                _take(out, [line[2:] for line in compress(lines, mask)],
                      compress(numbers, mask), None, star)
            else:
                _take(out, lines, numbers, None, plain)
            first += len(lines)
            out.spill()
        out.end_file(first - 1 - base)
    return out


def _take(out: ParsedList, keys: list[bytes], numbers: Iterable[int], mask: bytes | None,
          flags: int) -> None:
    before = len(out.keys)
    if mask is None:
        out.keys.extend(keys)
        out.refs.extend(numbers)
    else:
        out.keys.extend(compress(keys, mask))
        out.refs.extend(compress(numbers, mask))
    added = len(out.keys) - before
    out.flags.extend(bytes((flags,)) * added)
    out.units += added


def _one(out: ParsedList, name: str, line: bytes, lineno: int, ref: int, plain: int, star: int) -> None:
    """One line the block pass could not take as it stands."""
    line = line.strip()
    cut = line.find(b"#")
    if cut >= 0:
        line = line[:cut].rstrip()
    if not line:
        return
    out.units += 1
    dot = line[:1] == b"." and line[1:2] not in (b".", b"")
    got = out.name_key(line[1:] if dot else line, f"{name}:{lineno}")
    if got is None:
        return
    key, is_star = got
    if dot and is_star:
        out.issue(f"{name}:{lineno}", "bad-wildcard", "'.' and '*.' together")
        return
    out.add(key, _SUBTREE if dot else (star if is_star else plain), ref)
