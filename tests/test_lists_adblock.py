"""[adblock]: the AdGuard DNS subset: domain anchors load, everything else is counted.

Vectors use the rule shapes of the AdGuard DNS filtering syntax ("Hosts Blocklists" in the
AdGuard Home wiki): ``||x^``, ``@@||x^``, ``|x^``, modifiers, regexes, cosmetic rules.
"""

from __future__ import annotations

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockgate.lists import adblock, text
from blockgate.lists.base import Input, ParsedList
from blockgate.trie import ALLOW, KIND_MASK, Kind


def parse(data: bytes, name: str = "filter.txt") -> ParsedList:
    return adblock.parse([Input(name, io.BytesIO(data))], {})


def rules(p: ParsedList) -> list[tuple[bytes, Kind, bool, str]]:
    return [(k, Kind(f & KIND_MASK), bool(f & ALLOW), p.origin(r).where) for k, f, r in p.iter_rules()]


E, S, W = Kind.EXACT, Kind.SUBTREE, Kind.WILDCARD
LOADED: dict[str, tuple[str, bytes, Kind, bool]] = {
    # id: (line, key, kind, allow)
    "subtree-block": ("||example.org^", b"example.org", S, False),
    "subtree-allow": ("@@||example.org^", b"example.org", S, True),
    "star-dot-is-dropped": ("||*.example.org^", b"example.org", S, False),
    "exact-start-anchor": ("|example.org^", b"example.org", E, False),
    "exact-allow": ("@@|example.org^", b"example.org", E, True),
    "bare-name-is-exact": ("example.org", b"example.org", E, False),
    "bare-star-is-wildcard": ("*.example.org", b"example.org", W, False),
    "anchored-star-is-wildcard": ("|*.example.org^", b"example.org", W, False),
    "end-of-address-bar": ("||example.org^|", b"example.org", S, False),
    "important-alone": ("||example.org^$important", b"example.org", S, False),
    "uppercase-and-space": ("  ||EXAMPLE.org^  ", b"example.org", S, False),
    "idn": ("||пример.рф^", b"xn--e1afmkfd.xn--p1ai", S, False),
    "no-separator": ("||example.org", b"example.org", S, False),
    "hosts-line": ("0.0.0.0 example.org", b"example.org", E, False),
}


@pytest.mark.parametrize("case", sorted(LOADED))
def test_loaded_rules(case: str) -> None:
    line, key, kind, allow = LOADED[case]
    p = parse(line.encode() + b"\n")
    assert rules(p) == [(key, kind, allow, "filter.txt:1")]
    assert p.issues == []
    assert p.units == 1


COUNTED: dict[str, tuple[str, str]] = {
    # id: (line, counter)
    "dnsrewrite": ("||example.org^$dnsrewrite=10.0.0.1", "unsupported-modifier"),
    "client": ("||example.org^$client=192.168.0.1", "unsupported-modifier"),
    "badfilter": ("||example.org^$badfilter", "unsupported-modifier"),
    "denyallow": ("||example.org^$denyallow=a.org", "unsupported-modifier"),
    "important-and-more": ("||example.org^$important,client=1.2.3.4", "unsupported-modifier"),
    "allow-with-modifier": ("@@||example.org^$dnstype=AAAA", "unsupported-modifier"),
    "regex": ("/^ad[0-9]+\\.example\\.org$/", "unsupported"),
    "regex-allow": ("@@/banner/", "unsupported"),
    "path": ("/banner/*", "unsupported"),
    "file": ("ads.js", "unsupported"),
    "bare-word": ("banner", "unsupported"),
    "url-pattern": ("||example.org/ads^", "unsupported"),
    "star-inside": ("||ads*.example.org^", "unsupported"),
    "trailing-star": ("||example.org^*", "unsupported"),
    "element-hiding": ("example.org##.banner", "unsupported"),
    "generic-hiding": ("##.banner", "unsupported"),
    "hiding-exception": ("example.org#@#.banner", "unsupported"),
    "css-injection": ("example.org#$#body { color: red }", "unsupported"),
    "extended-css": ("example.org#?#div:has(> a)", "unsupported"),
    "html-filter": ("example.org$$script[tag-content=\"ad\"]", "unsupported"),
    "ip-rule": ("||192.0.2.1^", "unsupported"),
}


@pytest.mark.parametrize("case", sorted(COUNTED))
def test_counted_not_loaded(case: str) -> None:
    line, counter = COUNTED[case]
    p = parse(line.encode() + b"\n")
    assert len(p) == 0 and p.issues == []
    assert p.counts[counter] == 1
    assert p.units == 1


@pytest.mark.parametrize("line", ["! comment", "# comment", "[Adblock Plus 2.0]", "", "   ",
                                  "! Title: AdGuard DNS filter"])
def test_comments_and_headers(line: str) -> None:
    p = parse(line.encode() + b"\n")
    assert len(p) == 0 and p.issues == [] and p.units == 0 and not p.counts


@pytest.mark.parametrize(("line", "reason"), [("||bad..name^", "empty-label"),
                                              ("||^", "empty-name"),
                                              ("||a b.com^", "bad-character"),
                                              ("0.0.0.0 bad..name", "empty-label")])
def test_names_that_fail_are_issues(line: str, reason: str) -> None:
    p = parse(b"! x\n" + line.encode() + b"\n")
    assert [(i.where, i.reason) for i in p.issues] == [("filter.txt:2", reason)]


def test_counts_of_a_mixed_list() -> None:
    p = parse(b"[Adblock Plus 2.0]\n! c\n||a.com^\n@@||b.a.com^\n||c.com^$important\n"
              b"||d.com\n||e.com^$client=1.2.3.4\n/ads/\nf.com##.x\n")
    assert p.counts == {"important": 1, "no-separator": 1, "unsupported-modifier": 1,
                        "unsupported": 2}
    assert p.units == 7


def test_allow_and_block_compile_together() -> None:
    from blockgate.trie import SourceInfo, compile_rules
    m = compile_rules([SourceInfo("ads", "adblock", rules=parse(b"||ads.com^\n@@||ok.ads.com^\n"))])
    assert m.match(b"x.ads.com").allow is False  # type: ignore[union-attr]
    assert m.match(b"x.ok.ads.com").allow is True  # type: ignore[union-attr]
    assert m.match(b"ads.com").kind is Kind.SUBTREE  # type: ignore[union-attr]


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
    data = "\n".join(case[0] for case in LOADED.values()).encode() + b"\n" + b"".join(
        b"||n%d.example.com^\n@@|x%d.example.org^\n" % (i, i) for i in range(200))
    whole = rules(parse(data))
    assert len(whole) == len(LOADED) + 400
    assert rules(parse(data.replace(b"\n", b"\r\n"))) == whole
    assert rules(adblock.parse([Input("filter.txt", Trickle(data))])) == whole  # type: ignore[arg-type]
    for size in (7, 100):
        monkeypatch.setattr(text, "BLOCK", size)
        assert rules(parse(data)) == whole


PIECES = ["@@", "||", "|", "*.", "example.org", "a.b", "пример.рф", "^", "|", "$important",
          "$client=1", "$", ",", "/", "ads.js", "##", "#@#", "#", "!", "[", "]", " ", "0.0.0.0 ",
          "1.2.3.4", "..", "*", "\t"]
LINES = st.lists(st.sampled_from(PIECES), max_size=6).map("".join)


@settings(max_examples=200, deadline=None)
@given(st.lists(LINES, max_size=25), st.integers(0, 300))
def test_vocabulary_lines_and_prefixes_never_raise(lines: list[str], cut: int) -> None:
    data = "\n".join(lines).encode()
    p = parse(data)
    # Every rule line leaves a trace: a rule, an issue or a counter.
    traces = len(p) + len(p.issues) + sum(p.counts[c] for c in
                                          ("unsupported", "unsupported-modifier", "skipped-local"))
    assert traces >= p.units
    parse(data[:cut])


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_raise(data: bytes) -> None:
    parse(data)
