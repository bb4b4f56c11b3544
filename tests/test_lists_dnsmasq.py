"""[dnsmasq]: ``address``, ``server`` and ``local`` lines as dnsmasq(8) reads them.

Vectors follow the dnsmasq man page (``--address``, ``--server``, ``--local``) and the shapes
of published dnsmasq blocklists, including the spaced ``address /x/#`` variant.
"""

from __future__ import annotations

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockgate.lists import dnsmasq, text
from blockgate.lists.base import Input, ParsedList
from blockgate.policy import Action
from blockgate.trie import ACTION_SHIFT, KIND_MASK, Kind, SourceInfo, compile_rules

Payload = tuple[tuple[str, str], ...]


def parse(data: bytes, name: str = "block.conf") -> ParsedList:
    return dnsmasq.parse([Input(name, io.BytesIO(data))], {})


def rules(p: ParsedList) -> list[tuple[bytes, Kind, Action, str, Payload]]:
    return [(k, Kind(f & KIND_MASK), Action(f >> ACTION_SHIFT), p.origin(r).where,
             p.payloads.get(r, ())) for k, f, r in p.iter_rules()]


S, W = Kind.SUBTREE, Kind.WILDCARD
NX, SINK = Action.NXDOMAIN, Action.SINKHOLE
NULL = (("A", "0.0.0.0"), ("AAAA", "::"))
LOADED: dict[str, tuple[str, list[tuple[bytes, Kind, Action, Payload]]]] = {
    # id: (line, [(key, kind, action, payload)])
    "address-zero": ("address=/example.com/0.0.0.0", [(b"example.com", S, SINK, (("A", "0.0.0.0"),))]),
    "address-nxdomain": ("address=/example.com/", [(b"example.com", S, NX, ())]),
    "address-null": ("address=/example.com/#", [(b"example.com", S, SINK, NULL)]),
    "address-ipv4": ("address=/example.com/1.2.3.4", [(b"example.com", S, SINK, (("A", "1.2.3.4"),))]),
    "address-ipv6": ("address=/example.com/::", [(b"example.com", S, SINK, (("AAAA", "::"),))]),
    "address-ipv6-normalised": ("address=/example.com/2001:DB8:0::1",
                                [(b"example.com", S, SINK, (("AAAA", "2001:db8::1"),))]),
    "several-domains": ("address=/a.com/b.com/1.2.3.4",
                        [(b"a.com", S, SINK, (("A", "1.2.3.4"),)),
                         (b"b.com", S, SINK, (("A", "1.2.3.4"),))]),
    "server-local-only": ("server=/example.com/", [(b"example.com", S, NX, ())]),
    "local": ("local=/example.com/", [(b"example.com", S, NX, ())]),
    "spaced-variant": ("address /example.com/#", [(b"example.com", S, SINK, NULL)]),
    "spaces-around-equals": ("address = /example.com/#", [(b"example.com", S, SINK, NULL)]),
    "leading-dot": ("address=/.example.com/", [(b"example.com", S, NX, ())]),
    "star-dot-is-wildcard": ("address=/*.example.com/", [(b"example.com", W, NX, ())]),
    "trailing-comment": ("address=/example.com/# # null", [(b"example.com", S, SINK, NULL)]),
    "uppercase-and-idn": ("ADDRESS=/Пример.РФ/", [(b"xn--e1afmkfd.xn--p1ai", S, NX, ())]),
}


@pytest.mark.parametrize("case", sorted(LOADED))
def test_loaded_rules(case: str) -> None:
    line, want = LOADED[case]
    p = parse(line.encode() + b"\n")
    assert rules(p) == [(k, kind, a, "block.conf:1", pay) for k, kind, a, pay in want]
    assert p.issues == []
    assert p.units == 1


def test_several_domains_share_ref_and_payload() -> None:
    p = parse(b"# x\naddress=/a.com/b.com/c.com/#\n")
    assert list(p.refs) == [2, 2, 2]
    assert p.payloads == {2: NULL}


COUNTED: dict[str, tuple[str, str]] = {
    # id: (line, counter)
    "forward": ("server=/example.com/1.2.3.4", "forward"),
    "forward-port": ("server=/example.com/1.2.3.4#5353", "forward"),
    "forward-standard-servers": ("server=/example.com/#", "forward"),
    "upstream": ("server=8.8.8.8", "other-option"),
    "flag": ("domain-needed", "other-option"),
    "other-option": ("cache-size=1000", "other-option"),
    "ipset": ("ipset=/example.com/blocked", "other-option"),
    "unqualified-names": ("address=//", "unsupported"),
    "star-inside": ("address=/*google.com/", "unsupported"),
}


@pytest.mark.parametrize("case", sorted(COUNTED))
def test_counted_not_loaded(case: str) -> None:
    line, counter = COUNTED[case]
    p = parse(line.encode() + b"\n")
    assert len(p) == 0 and p.issues == []
    assert p.counts[counter] == 1


ISSUES: dict[str, tuple[str, str]] = {
    # id: (line, reason)
    "match-all": ("address=/#/1.2.3.4", "match-all"),
    "no-closing-slash": ("address=/example.com", "bad-option"),
    "bad-address": ("address=/example.com/1.2.3.999", "bad-address"),
    "scoped-address": ("address=/example.com/fe80::1%eth0", "bad-address"),
    "bad-name": ("address=/bad..name/", "empty-label"),
    "ip-literal": ("server=/1.2.3.4/", "ip-literal"),
}


@pytest.mark.parametrize("case", sorted(ISSUES))
def test_issues(case: str) -> None:
    line, reason = ISSUES[case]
    p = parse(b"# header\n" + line.encode() + b"\n")
    assert [(i.where, i.reason) for i in p.issues] == [("block.conf:2", reason)]
    assert len(p) == 0


def test_bad_domain_does_not_drop_the_others() -> None:
    p = parse(b"address=/bad..name/ok.com/#\n")
    assert rules(p) == [(b"ok.com", S, SINK, "block.conf:1", NULL)]
    assert [i.reason for i in p.issues] == ["empty-label"]


def test_repeated_address_lines_merge() -> None:
    """``/x/0.0.0.0`` then ``/x/::`` is one rule answering both, as dnsmasq does."""
    p = parse(b"address=/x.com/0.0.0.0\naddress=/x.com/::\naddress=/x.com/0.0.0.0\n"
              b"address=/y.com/z.com/1.2.3.4\naddress=/y.com/::1\n")
    assert rules(p) == [
        (b"x.com", S, SINK, "block.conf:1", (("A", "0.0.0.0"), ("AAAA", "::"))),
        (b"y.com", S, SINK, "block.conf:4", (("A", "1.2.3.4"),)),
        (b"z.com", S, SINK, "block.conf:4", (("A", "1.2.3.4"),)),
        (b"y.com", S, SINK, "block.conf:5", (("AAAA", "::1"),)),  # shadowed: first one wins
    ]
    assert p.counts["merged-address"] == 2


def test_comments() -> None:
    p = parse(b"# comment\n  # indented\naddress=/a.com/#\t# after a tab\n\n")
    assert rules(p) == [(b"a.com", S, SINK, "block.conf:3", NULL)]
    assert p.units == 1


def test_compiled_answers() -> None:
    p = parse(b"address=/ads.com/#\nserver=/track.org/\naddress=/*.w.net/1.2.3.4\n")
    m = compile_rules([SourceInfo("d", "dnsmasq", rules=p)])
    rule = m.match(b"x.ads.com")
    assert rule is not None and rule.action is SINK and rule.payload == NULL
    assert m.match(b"track.org").action is NX  # type: ignore[union-attr]
    assert m.match(b"w.net") is None
    assert m.match(b"a.w.net").payload == (("A", "1.2.3.4"),)  # type: ignore[union-attr]


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
        b"address=/n%d.example.com/#\nserver=/x%d.example.org/\n" % (i, i) for i in range(200))
    whole = rules(parse(data))
    assert len(whole) > 400 and parse(data).counts["merged-address"] > 0  # the cases repeat names
    assert rules(parse(data.replace(b"\n", b"\r\n"))) == whole
    assert rules(dnsmasq.parse([Input("block.conf", Trickle(data))])) == whole  # type: ignore[arg-type]
    for size in (7, 100):
        monkeypatch.setattr(text, "BLOCK", size)
        assert rules(parse(data)) == whole


OPTIONS = ["address=", "address ", "server=", "local=", "ipset=", "domain-needed", "#", ""]
DOMAINS = ["a.com", "*.w.com", ".d.com", "#", "", "bad..n", "пример.рф", "*x.com", "1.2.3.4"]
TARGETS = ["", "#", "0.0.0.0", "::", "1.2.3.4", "1.2.3.4#53", "bad", "fe80::1%eth0", " # c"]
LINES = st.tuples(st.sampled_from(OPTIONS), st.lists(st.sampled_from(DOMAINS), max_size=3),
                  st.sampled_from(TARGETS), st.booleans()).map(
    lambda t: t[0] + "".join("/" + d for d in t[1]) + ("/" if t[3] else "") + t[2])


@settings(max_examples=200, deadline=None)
@given(st.lists(LINES, max_size=25), st.integers(0, 300))
def test_vocabulary_lines_and_prefixes_never_raise(lines: list[str], cut: int) -> None:
    data = "\n".join(lines).encode()
    p = parse(data)
    # Every option line leaves a trace: a rule, an issue or a counter.
    traces = len(p) + len(p.issues) + sum(p.counts[c] for c in ("forward", "other-option",
                                                              "unsupported", "merged-address"))
    assert traces >= p.units
    parse(data[:cut])


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_raise(data: bytes) -> None:
    parse(data)
