"""[domains]: the block pass and the line-by-line path must agree on every line."""

from __future__ import annotations

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockgate.domain import list_key
from blockgate.errors import DomainError
from blockgate.lists import domains, text
from blockgate.lists.base import Input, ParsedList
from blockgate.trie import Kind


def parse(data: bytes, name: str = "l.txt", **options: str) -> ParsedList:
    return domains.parse([Input(name, io.BytesIO(data))], options)


def rules(p: ParsedList) -> list[tuple[bytes, Kind, str]]:
    return sorted((k, Kind(f & 3), p.origin(r).where) for k, f, r in p.iter_rules())


def test_kinds_comments_and_locations() -> None:
    p = parse(b"# header\nExample.com\n*.foo.org.\n  .bar.ru # subtree\n\nbad..name\n1.2.3.4\n")
    assert rules(p) == [
        (b"bar.ru", Kind.SUBTREE, "l.txt:4"),
        (b"example.com", Kind.EXACT, "l.txt:2"),
        (b"foo.org", Kind.WILDCARD, "l.txt:3"),
    ]
    assert [(i.where, i.reason) for i in p.issues] == [("l.txt:6", "empty-label"),
                                                       ("l.txt:7", "ip-literal")]
    assert p.units == 5


def test_scope_subtree_option() -> None:
    p = parse(b"a.com\n*.b.com\n", scope="subtree")
    assert [(k, Kind(f & 3)) for k, f, _ in p.iter_rules()] == [(b"a.com", Kind.SUBTREE),
                                                                (b"b.com", Kind.WILDCARD)]


def test_unicode_lines_in_utf8_and_cp1251() -> None:
    p = parse("пример.рф\n".encode() + "пример.рус\n".encode("cp1251"))
    assert sorted(p.keys) == [b"xn--e1afmkfd.xn--p1acf", b"xn--e1afmkfd.xn--p1ai"]
    assert p.counts["idn"] == 2


def test_crlf_and_missing_final_newline() -> None:
    assert rules(parse(b"a.com\r\n*.b.com\r\nc.com")) == rules(parse(b"a.com\n*.b.com\nc.com\n"))


def test_split_files_number_their_own_lines() -> None:
    p = domains.parse([Input("dump-00.txt", io.BytesIO(b"a.com\nb.com\n")),
                       Input("dump-01.txt", io.BytesIO(b"# c\nc.com\n"))], {})
    assert rules(p) == [(b"a.com", Kind.EXACT, "dump-00.txt:1"),
                        (b"b.com", Kind.EXACT, "dump-00.txt:2"),
                        (b"c.com", Kind.EXACT, "dump-01.txt:2")]


def test_block_boundaries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lines cut by the block size are joined again, whatever the block size."""
    data = b"".join(b"n%d.example.com\n*.w%d.example.org\n" % (i, i) for i in range(300))
    whole = rules(parse(data))
    for size in (7, 64, 1000):
        monkeypatch.setattr(text, "BLOCK", size)
        assert rules(parse(data)) == whole


def reference(data: bytes) -> tuple[list[tuple[bytes, Kind, int]], list[tuple[int, str]]]:
    """Line by line with list_key only: what the block pass must reproduce."""
    out, issues = [], []
    for n, raw in enumerate(data.replace(b"\r\n", b"\n").split(b"\n"), 1):
        line = raw.strip().lower().split(b"#")[0].strip()
        if not line:
            continue
        dot = line[:1] == b"." and line[1:2] not in (b".", b"")
        try:
            key, star, _idn = list_key(text.decode_line(line[1:] if dot else line))
        except DomainError as exc:
            issues.append((n, exc.reason))
            continue
        if dot and star:
            issues.append((n, "bad-wildcard"))
            continue
        out.append((key, Kind.SUBTREE if dot else Kind.WILDCARD if star else Kind.EXACT, n))
    return sorted(out), sorted(issues)


LINE_PARTS = st.lists(st.sampled_from(
    ["a", "b", "xn--p1ai", "1", "2", "_", "-", ".", "..", "*", "*.", "A", " ", "#", "\t", "é",
     "x" * 63, "y" * 64, "\r"]), max_size=8).map("".join)


@settings(max_examples=300, deadline=None)
@given(st.lists(LINE_PARTS, max_size=30))
def test_block_pass_equals_line_by_line(lines: list[str]) -> None:
    data = "\n".join(lines).encode()
    p = parse(data)
    got = sorted((k, Kind(f & 3), r) for k, f, r in p.iter_rules())
    want_rules, want_issues = reference(data)
    assert got == want_rules
    assert sorted((int(i.where.split(":")[1]), i.reason) for i in p.issues) == want_issues


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_raise(data: bytes) -> None:
    parse(data)
