"""Streaming parses: rules handed to a sink in chunks as they are read, none kept.

A streamed parse must give the sink exactly the rules (in order) the plain parse keeps, and
keep the same counts, issues and origins; a Differ fed that way must patch a matcher into
one that answers as a compile from scratch of the new version.
"""

from __future__ import annotations

import io
from array import array
from pathlib import Path

import pytest
from conftest import LIST_FIXTURES
from test_patch import answer

from blockgate import lists
from blockgate.lists import base, text
from blockgate.lists.base import Input, ParsedList, streaming
from blockgate.policy import Action
from blockgate.trie import Differ, Matcher, Patch, SourceInfo, compile_rules

SPILL = 7  # a chunk every 7 rules: many chunks even for small fixtures
BLOCK = 97  # bytes per read of the line formats (4 MiB in use): a chunk is one block or more


class Collector:
    def __init__(self) -> None:
        self.chunks: list[tuple[list[bytes], bytes, list[int]]] = []

    def feed(self, keys: list[bytes], flags: bytearray, refs: array[int]) -> None:
        self.chunks.append((list(keys), bytes(flags), list(refs)))


def domains_text(n: int, offset: int = 0) -> bytes:
    out = []
    for i in range(offset, offset + n):
        out.append(f"n{i}.example.ru")
        if i % 5 == 0:
            out.append(f"*.w{i}.example.ru")
        if i % 7 == 0:
            out.append(f".s{i}.example.ru  # a subtree")
        if i % 11 == 0:
            out.append("# a comment")
    return ("\n".join(out) + "\n").encode()


def dump_xml(names: list[str]) -> bytes:
    """Records in the shape of the registry's dump (tests/fixtures/lists/rkn-dump-fragment-2019-a.xml);
    every third one has a second domain."""
    rows = [f'<content id="{1000 + i}" entryType="1" blockType="domain"><decision date="2019-06-25" '
            f'number="{i}" org="court"/><domain><![CDATA[{n}]]></domain>'
            + (f"<domain><![CDATA[www.{n}]]></domain>" if i % 3 == 0 else "") + "</content>\n"
            for i, n in enumerate(names)]
    head = ('<?xml version="1.0" encoding="windows-1251"?>\n'
            '<reg:register updateTime="2019-08-30T12:00:00+03:00" formatVersion="2.4" xmlns:reg="http://rsoc.ru">\n')
    return (head + "".join(rows) + "</reg:register>\n").encode()


SAMPLES: list[tuple[str, str, bytes]] = [
    ("domains", "list.txt", domains_text(60)),
    ("hosts", "hosts", b"".join(b"0.0.0.0 h%d.example.ru h%d.example.org\n" % (i, i) for i in range(40))
     + b"127.0.0.1 localhost\n0.0.0.0 bad..name\n"),
    ("adblock", "list.txt", b"! title\n" + b"".join(b"||a%d.example.ru^\n" % i for i in range(40))
     + b"@@||ok.a1.example.ru^\n"),
    ("dnsmasq", "d.conf", b"".join(b"address=/m%d.example.ru/\n" % i for i in range(30))),
    ("rkn-xml", "dump.xml", dump_xml([f"r{i}.example.ru" for i in range(30)])),
    ("rkn-xml", "fragment.xml", (LIST_FIXTURES / "rkn-dump-fragment-2019-a.xml").read_bytes()),
    ("zi-csv", "dump.csv", (LIST_FIXTURES / "zi-dump-2018-mid-sample.csv").read_bytes()),
    ("rpz", "z.rpz", (LIST_FIXTURES / "knot-resolver-policy.test.rpz").read_bytes()),
]


def parse(fmt: str, name: str, data: bytes) -> ParsedList:
    return lists.parse(fmt, [Input(name, io.BytesIO(data))])


def parse_streamed(fmt: str, name: str, data: bytes, sink: object) -> ParsedList:
    with streaming(sink):  # type: ignore[arg-type]
        parsed = parse(fmt, name, data)
        parsed.finish()
    return parsed


@pytest.mark.parametrize(("fmt", "name", "data"), SAMPLES, ids=[f"{s[0]}-{s[1]}" for s in SAMPLES])
def test_a_streamed_parse_hands_over_every_rule_in_order(monkeypatch: pytest.MonkeyPatch, fmt: str,
                                                         name: str, data: bytes) -> None:
    monkeypatch.setattr(base, "SPILL_AT", SPILL)
    monkeypatch.setattr(text, "BLOCK", BLOCK)
    full = parse(fmt, name, data)
    sink = Collector()
    streamed = parse_streamed(fmt, name, data, sink)
    assert len(full) > SPILL or name == "fragment.xml", "the sample must span several chunks"
    keys = [k for c in sink.chunks for k in c[0]]
    flags = b"".join(c[1] for c in sink.chunks)
    refs = [r for c in sink.chunks for r in c[2]]
    assert (keys, flags, refs) == (full.keys, bytes(full.flags), list(full.refs))
    assert streamed.streamed and not streamed.keys and not full.streamed
    assert len(streamed) == len(full)
    assert streamed.kind_counts() == full.kind_counts()
    assert streamed.units == full.units
    assert (streamed.issue_counts, streamed.counts) == (full.issue_counts, full.counts)
    assert [streamed.origin(r) for r in refs] == [full.origin(r) for r in refs]
    assert streamed.payloads == full.payloads
    if fmt not in ("rpz", "dnsmasq") and len(full) > SPILL:  # rpz, dnsmasq look back at the end
        assert len(sink.chunks) > 2 and max(len(c[0]) for c in sink.chunks) < 4 * SPILL


def test_no_sink_no_streaming() -> None:
    assert not parse("domains", "l", b"a.ru\n").streamed
    with streaming(Collector()):
        pass
    assert not parse("domains", "l", b"a.ru\n").streamed


def info(parsed: ParsedList) -> SourceInfo:
    return SourceInfo("s0", "domains", None, Action.NXDOMAIN, None, parsed)


@pytest.mark.parametrize("spill", [SPILL, 1_000_000])
def test_a_differ_fed_while_parsing_patches_as_a_compile(monkeypatch: pytest.MonkeyPatch, spill: int) -> None:
    monkeypatch.setattr(base, "SPILL_AT", spill)
    monkeypatch.setattr(text, "BLOCK", BLOCK)
    v0, v1 = domains_text(200), domains_text(200, offset=30)  # 30 names gone, 30 new, lines moved
    m: Matcher = compile_rules(patchable=True, sources=[info(parse("domains", "list.txt", v0))])
    differ = Differ(m, 0, SourceInfo("s0", "domains", None, Action.NXDOMAIN, None))
    streamed = parse_streamed("domains", "list.txt", v1, differ)
    patch = differ.finish(info(streamed))
    assert isinstance(patch, Patch), patch
    assert patch.removed > 30 and patch.added > 30
    patched = patch.apply()
    fresh = compile_rules(patchable=True, sources=[info(parse("domains", "list.txt", v1))])
    probes = {b"x.w35.example.ru", b"w35.example.ru", b"a.s210.example.ru"}
    for body in (v0, v1):
        for line in body.split(b"\n"):
            name = line.split(b"#")[0].strip().lstrip(b"*.")
            probes.update((name, b"x." + name))
    for key in sorted(probes):
        assert answer(patched, key) == answer(fresh, key), key


def test_a_streamed_parse_cannot_be_compiled(tmp_path: Path) -> None:
    from blockgate.config import load
    from blockgate.engine import LoadedSource, RuleSet

    text_ = f"state_dir: {tmp_path}\nsources:\n  - name: s0\n    format: domains\n    path: {tmp_path}/l\n"
    cfg = load(text_, file="t.yaml", base=str(tmp_path))
    ls = LoadedSource(cfg.sources[0], parse_streamed("domains", "l", b"a.ru\n", Collector()))
    with pytest.raises(ValueError, match="streamed"):
        RuleSet([ls])


def test_a_list_compared_with_rules_no_longer_in_force_is_not_patched(tmp_path: Path) -> None:
    """Two fetches compared with the same rules: once the first is patched in, the second
    was compared with rules no longer in force, and takes a compile from scratch."""
    from blockgate.config import load
    from blockgate.engine import LoadedSource, RuleSet

    text_ = f"state_dir: {tmp_path}\nsources:\n  - name: s0\n    format: domains\n    path: {tmp_path}/l\n"
    src = load(text_, file="t.yaml", base=str(tmp_path)).sources[0]
    rs = RuleSet([LoadedSource(src, parse("domains", "l", domains_text(50)))])
    first, second = rs.differ(src), rs.differ(src)
    assert first is not None and second is not None
    new1 = LoadedSource(src, parse_streamed("domains", "l", domains_text(50, offset=5), first))
    new2 = LoadedSource(src, parse_streamed("domains", "l", domains_text(50, offset=9), second))
    patch = rs.patch(new1)
    assert isinstance(patch, Patch), patch
    rs1 = rs.patched(new1, patch)
    assert rs1.match(b"n54.example.ru") is not None and rs1.match(b"n0.example.ru") is None
    assert "no longer in force" in str(rs1.patch(new2))
