"""[hosts]: address and names per line, exact rules, the machine's own names skipped.

Vectors follow the shapes of real hosts lists: the StevenBlack/hosts header (localhost lines,
``fe80::1%lo0``, ``ff02::1 ip6-allnodes``, ``0.0.0.0 0.0.0.0``), ``0.0.0.0``/``127.0.0.1``
sinkhole lines, several names per line, trailing comments and tabs.
"""

from __future__ import annotations

import io
import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockgate.domain import list_key
from blockgate.errors import DomainError
from blockgate.lists import hosts, text
from blockgate.lists.base import Input, ParsedList
from blockgate.trie import KIND_MASK, Kind


def parse(data: bytes, name: str = "hosts") -> ParsedList:
    return hosts.parse([Input(name, io.BytesIO(data))], {})


def rules(p: ParsedList) -> list[tuple[bytes, Kind, str]]:
    return [(k, Kind(f & KIND_MASK), p.origin(r).where) for k, f, r in p.iter_rules()]


def issues(p: ParsedList) -> list[tuple[str, str]]:
    return [(i.where, i.reason) for i in p.issues]


E, W = Kind.EXACT, Kind.WILDCARD
CASES: dict[str, tuple[bytes, list[tuple[bytes, Kind, str]], list[tuple[str, str]]]] = {
    # id: (data, rules, issues)
    "zero-sinkhole": (b"0.0.0.0 ads.example.com\n", [(b"ads.example.com", E, "hosts:1")], []),
    "several-names": (b"127.0.0.1 a.com b.com c.com\n",
                      [(b"a.com", E, "hosts:1"), (b"b.com", E, "hosts:1"), (b"c.com", E, "hosts:1")],
                      []),
    "ipv6-sinkholes": (b"::1 a.com\n:: b.com\n", [(b"a.com", E, "hosts:1"), (b"b.com", E, "hosts:2")],
                       []),
    "comments-and-tabs": (b"# header\n\t0.0.0.0\tA.com\t# trailing\n  # indented comment\n\n",
                          [(b"a.com", E, "hosts:2")], []),
    "trailing-dot-and-idn": ("0.0.0.0 b.com. пример.рф\n".encode(),
                             [(b"b.com", E, "hosts:1"), (b"xn--e1afmkfd.xn--p1ai", E, "hosts:1")], []),
    "star-is-wildcard": (b"0.0.0.0 *.w.com\n", [(b"w.com", W, "hosts:1")], []),
    "bad-address": (b"ads.example.com\n999.1.1.1 x.com\nfoo bar\n", [],
                    [("hosts:1", "bad-address"), ("hosts:2", "bad-address"), ("hosts:3", "bad-address")]),
    "no-name": (b"0.0.0.0\n0.0.0.0 # only a comment\n", [], [("hosts:1", "no-name"),
                                                            ("hosts:2", "no-name")]),
    "bad-names-do-not-stop-the-line": (b"0.0.0.0 bad..name ok.com 1.2.3.4 x*y.com\n",
                                       [(b"ok.com", E, "hosts:1")],
                                       [("hosts:1", "empty-label"), ("hosts:1", "ip-literal"),
                                        ("hosts:1", "bad-wildcard")]),
    "short-zero-address": (b"0 z.com\n", [(b"z.com", E, "hosts:1")], []),
    "bom": (b"\xef\xbb\xbf0.0.0.0 a.com\n", [(b"a.com", E, "hosts:1")], []),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_cases(case: str) -> None:
    data, want_rules, want_issues = CASES[case]
    p = parse(data)
    assert rules(p) == want_rules
    assert issues(p) == want_issues


STEVENBLACK_HEADER = b"""# Title: StevenBlack/hosts
127.0.0.1 localhost
127.0.0.1 localhost.localdomain
127.0.0.1 local
255.255.255.255 broadcasthost
::1 localhost
::1 ip6-localhost
::1 ip6-loopback
fe80::1%lo0 localhost
ff00::0 ip6-localnet
ff00::0 ip6-mcastprefix
ff02::1 ip6-allnodes
ff02::2 ip6-allrouters
ff02::3 ip6-allhosts
0.0.0.0 0.0.0.0
# Custom host records are listed here.
# End of custom host records.
0.0.0.0 1493361689.rsc.cdn77.org
0.0.0.0 30-day-change.com
"""


def test_self_names_are_skipped_and_counted() -> None:
    p = parse(STEVENBLACK_HEADER)
    assert p.keys == [b"1493361689.rsc.cdn77.org", b"30-day-change.com"]
    assert p.counts["skipped-local"] == 14
    assert p.counts["redirect-ip"] == 0  # no rule came from a non-sinkhole line
    assert p.issues == []
    assert p.units == 16


def test_redirect_address_still_blocks() -> None:
    p = parse(b"10.0.0.1 portal.example.com other.example.com\n192.0.2.1 localhost\n")
    assert p.keys == [b"portal.example.com", b"other.example.com"]
    assert p.counts["redirect-ip"] == 1


def test_lines_are_numbered_across_files() -> None:
    p = hosts.parse([Input("a", io.BytesIO(b"0.0.0.0 a.com\n")),
                     Input("b", io.BytesIO(b"# x\n0.0.0.0 b.com\n"))])
    assert rules(p) == [(b"a.com", E, "a:1"), (b"b.com", E, "b:2")]
    assert list(p.refs) == [1, 3]


class Trickle(io.RawIOBase):
    """A stream that gives one byte per read."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf: bytearray) -> int:  # type: ignore[override]
        if self.pos >= len(self.data) or not len(buf):
            return 0
        buf[0] = self.data[self.pos]
        self.pos += 1
        return 1


def test_whole_crlf_trickle_and_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    data = STEVENBLACK_HEADER + b"".join(b"0.0.0.0 n%d.example.com x%d.example.org\n" % (i, i)
                                         for i in range(200))
    whole = rules(parse(data))
    assert rules(parse(data.replace(b"\n", b"\r\n"))) == whole
    assert rules(hosts.parse([Input("hosts", Trickle(data))])) == whole  # type: ignore[arg-type]
    for size in (7, 100):
        monkeypatch.setattr(text, "BLOCK", size)
        assert rules(parse(data)) == whole


ADDRESSES = ["0.0.0.0", "127.0.0.1", "::1", "::", "10.0.0.1", "fe80::1%lo0", "999.1.1.1", "0",
             "example.com", "#"]
NAMES = ["a.com", "B.com", "localhost", "0.0.0.0", "*.w.com", "bad..n", "пример.рф", "1.2.3.4",
         "x" * 64 + ".com", "#c", "a.com.", "é"]
LINES = st.tuples(st.sampled_from(["", " ", "\t"]), st.sampled_from(ADDRESSES),
                  st.lists(st.sampled_from(NAMES), max_size=4),
                  st.sampled_from(["", " # c", "\r"])).map(
    lambda t: t[0] + " ".join([t[1], *t[2]]) + t[3])


def reference(data: bytes) -> tuple[list[tuple[bytes, Kind, int]], list[tuple[int, str]]]:
    """Line by line with ``ipaddress`` and ``list_key`` only."""
    got, problems = [], []
    for n, raw in enumerate(data.replace(b"\r\n", b"\n").split(b"\n"), 1):
        fields = raw.lower().split(b"#")[0].split()
        if not fields:
            continue
        try:
            ipaddress.ip_address(fields[0].decode())
        except (UnicodeDecodeError, ValueError):
            if fields[0] != b"0":
                problems.append((n, "bad-address"))
                continue
        if len(fields) == 1:
            problems.append((n, "no-name"))
        for field in fields[1:]:
            if field in hosts.SELF_NAMES:
                continue
            try:
                key, star, _ = list_key(text.decode_line(field))
            except DomainError as exc:
                problems.append((n, exc.reason))
                continue
            got.append((key, Kind.WILDCARD if star else Kind.EXACT, n))
    return got, problems


@settings(max_examples=200, deadline=None)
@given(st.lists(LINES, max_size=20), st.integers(0, 300))
def test_vocabulary_lines_against_reference(lines: list[str], cut: int) -> None:
    data = "\n".join(lines).encode()
    p = parse(data)
    want_rules, want_issues = reference(data)
    assert [(k, Kind(f & KIND_MASK), r) for k, f, r in p.iter_rules()] == want_rules
    assert [(int(i.where.split(":")[1]), i.reason) for i in p.issues] == want_issues
    parse(data[:cut])


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_raise(data: bytes) -> None:
    parse(data)
