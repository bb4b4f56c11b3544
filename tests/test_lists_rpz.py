"""[rpz]: Knot Resolver's RPZ fixtures and their documented answers, dnspython as the oracle
for owners and data, the reader's corner cases, and the bulk path against the full reader.

Fixtures: ``fixtures/lists/knot-resolver-policy.test.rpz`` and ``.rpz.soa``, verbatim from
CZ-NIC/knot-resolver ``modules/policy``; the expected answers are those of its
``policy.rpz.test.lua`` (see ``fixtures/lists/README.md``).
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import dns.rdatatype
import dns.zone
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockgate.errors import ListFormatError
from blockgate.lists import rpz
from blockgate.lists.base import Input, ParsedList
from blockgate.policy import Action
from blockgate.trie import ACTION_SHIFT, ALLOW, KIND_MASK, Kind, Matcher, SourceInfo, compile_rules

LISTS = Path(__file__).parent / "fixtures" / "lists"
KNOT = "knot-resolver-policy.test.rpz"
KNOT_SOA = "knot-resolver-policy.test.rpz.soa"

Payload = tuple[tuple[str, str], ...]
Rule = tuple[bytes, Kind, bool, Action | None, Payload]


def parse(data: bytes, name: str = "z.rpz", **options: str) -> ParsedList:
    return rpz.parse([Input(name, io.BytesIO(data))], options)


def parse_files(files: list[tuple[str, bytes]], **options: str) -> ParsedList:
    return rpz.parse([Input(name, io.BytesIO(data)) for name, data in files], options)


def decoded(flags: int) -> tuple[Kind, bool, Action | None]:
    act = flags >> ACTION_SHIFT
    return Kind(flags & KIND_MASK), bool(flags & ALLOW), Action(act) if act else None


def rules(p: ParsedList) -> list[tuple[Rule, str]]:
    """Every rule with its location, in a stable order."""
    out = []
    for key, flags, ref in p.iter_rules():
        kind, allow, action = decoded(flags)
        out.append(((key, kind, allow, action, p.payloads.get(ref, ())), p.origin(ref).where))
    return sorted(out, key=repr)


def issues(p: ParsedList) -> list[tuple[str, str]]:
    return [(i.where, i.reason) for i in p.issues]


def matcher(p: ParsedList) -> Matcher:
    return compile_rules([SourceInfo("rpz", "rpz", rules=p)])


# -- the Knot Resolver fixtures ---------------------------------------------------------------

A, AAAA = "A", "AAAA"
KNOT_ANSWERS = [
    # (file, qname, action, allow, kind, payload)
    (KNOT, b"nxdomain", Action.NXDOMAIN, False, Kind.EXACT, ()),
    (KNOT, b"nodata", Action.NODATA, False, Kind.EXACT, ()),
    (KNOT, b"nodata.nxdomain", Action.NODATA, False, Kind.WILDCARD, ()),
    (KNOT, b"rpzdrop", Action.DROP, False, Kind.EXACT, ()),
    (KNOT, b"rpzpassthru", None, True, Kind.EXACT, ()),
    (KNOT, b"rra", Action.SINKHOLE, False, Kind.EXACT, ((A, "192.168.5.5"),)),
    (KNOT, b"rra-zonename-suffix", Action.SINKHOLE, False, Kind.EXACT, ((A, "192.168.6.6"),)),
    (KNOT, b"testdomain.rra", Action.SINKHOLE, False, Kind.EXACT, ((A, "192.168.7.7"),)),
    (KNOT, b"case.sensitive", Action.SINKHOLE, False, Kind.EXACT, ((A, "192.168.8.8"),)),
    (KNOT, b"CASe.SENSItivE".lower(), Action.SINKHOLE, False, Kind.EXACT, ((A, "192.168.8.8"),)),
    (KNOT, b"two.records", Action.SINKHOLE, False, Kind.EXACT,
     ((AAAA, "2001:db8::2"), (AAAA, "2001:db8::1"))),
    (KNOT_SOA, b"nxdomain-fqdn", Action.NXDOMAIN, False, Kind.EXACT, ()),
    (KNOT_SOA, b"nodata-fqdn", Action.NODATA, False, Kind.EXACT, ()),
]


@pytest.mark.parametrize(("file", "qname", "action", "allow", "kind", "payload"), KNOT_ANSWERS,
                         ids=[f"{c[0][-3:]}-{c[1].decode()}" for c in KNOT_ANSWERS])
def test_knot_fixture_answers(file: str, qname: bytes, action: Action | None, allow: bool,
                              kind: Kind, payload: Payload) -> None:
    p = parse((LISTS / file).read_bytes(), file)
    rule = matcher(p).match(qname)
    assert rule is not None
    assert (rule.action, rule.allow, rule.kind, rule.payload) == (action, allow, kind, payload)
    assert p.issues == []


def test_knot_fixture_rra_has_no_aaaa_data() -> None:
    """``rra`` AAAA: still the SINKHOLE rule; with no AAAA record the DNS layer says NODATA."""
    rule = matcher(parse((LISTS / KNOT).read_bytes())).match(b"rra")
    assert rule is not None and rule.action is Action.SINKHOLE
    assert [t for t, _ in rule.payload] == ["A"]


def test_knot_fixture_names_not_in_the_zone() -> None:
    m = matcher(parse((LISTS / KNOT).read_bytes()))
    assert m.match(b"nxdomain.example") is None
    assert m.match(b"testdomain") is None  # the apex is no trigger
    assert m.match(b"x.rra") is None  # exact triggers only


def test_knot_fixture_locations_units_and_meta() -> None:
    p = parse((LISTS / KNOT).read_bytes(), KNOT)
    where = {r[:2]: w for r, w in rules(p)}
    assert where[(b"nxdomain", Kind.EXACT)] == f"{KNOT}:6"
    assert where[(b"nxdomain", Kind.WILDCARD)] == f"{KNOT}:8"
    assert where[(b"two.records", Kind.EXACT)] == f"{KNOT}:16"  # the first of its two records
    assert p.units == 15  # 2 directives, SOA, NS, 11 records
    assert p.meta == {"origin": "testdomain.", "serial": "1"}
    assert len(p) == 10


def test_both_knot_files_as_one_source() -> None:
    """The second file's SOA starts a new apex; lines are numbered per file."""
    p = parse_files([(KNOT, (LISTS / KNOT).read_bytes()), (KNOT_SOA, (LISTS / KNOT_SOA).read_bytes())])
    assert p.issues == []
    m = matcher(p)
    for file, qname, action, allow, kind, payload in KNOT_ANSWERS:
        rule = m.match(qname)
        assert rule is not None
        assert (rule.action, rule.allow, rule.kind, rule.payload) == (action, allow, kind, payload)
        assert rule.origin.startswith(file + ":")
    assert m.match(b"nxdomain-fqdn").origin == f"{KNOT_SOA}:4"  # type: ignore[union-attr]


# -- dnspython as the oracle ------------------------------------------------------------------

# draft-vixie-dnsop-dns-rpz-00 "Policy Actions", written out again for the oracle.
ORACLE_POLICY = {
    ".": (Action.NXDOMAIN, False),
    "*.": (Action.NODATA, False),
    "rpz-passthru.": (None, True),
    "rpz-drop.": (Action.DROP, False),
    "rpz-tcp-only.": (Action.TCP_ONLY, False),
}
NON_QNAME = {"rpz-ip", "rpz-nsdname", "rpz-nsip", "rpz-client-ip"}
COMPARED_DATA = {"A", "AAAA", "TXT", "CNAME"}  # other types: only the type is compared


def comparable(record: tuple[str, str]) -> tuple[str, str]:
    rtype, data = record
    if rtype == "CNAME":
        return rtype, data.lower()
    return (rtype, data) if rtype in COMPARED_DATA else (rtype, "")


def oracle(text: str, origin: str | None) -> dict[tuple[bytes, Kind], tuple[object, ...]]:
    """Triggers as dnspython reads the zone, mapped with the draft's table."""
    zone = dns.zone.from_text(text, origin=origin, relativize=True, check_origin=False)
    out: dict[tuple[bytes, Kind], tuple[object, ...]] = {}
    for name, node in zone.nodes.items():
        owner = name.to_text().lower()
        if owner == "@" or owner.rsplit(".", 1)[-1] in NON_QNAME:
            continue
        star = owner.startswith("*.")
        key = (owner[2:] if star else owner).encode()
        records = [(dns.rdatatype.to_text(rds.rdtype),
                    rd.to_text(origin=zone.origin, relativize=False))
                   for rds in node for rd in rds]
        kind = Kind.WILDCARD if star else Kind.EXACT
        if len(records) == 1 and records[0][0] == "CNAME" and records[0][1] in ORACLE_POLICY:
            action, allow = ORACLE_POLICY[records[0][1]]
            out[(key, kind)] = (allow, action, frozenset())
        else:
            out[(key, kind)] = (False, Action.SINKHOLE, frozenset(map(comparable, records)))
    return out


def mine(p: ParsedList) -> dict[tuple[bytes, Kind], tuple[object, ...]]:
    out: dict[tuple[bytes, Kind], tuple[object, ...]] = {}
    for (key, kind, allow, action, payload), _where in rules(p):
        assert (key, kind) not in out, "one rule per trigger"
        out[(key, kind)] = (allow, action, frozenset(map(comparable, payload)))
    return out


SYNTHETIC = {
    "ttl-comment-parens-blank-owner": """$TTL 2h;
$ORIGIN domain.example.com.
@   SOA powerdns.example.net. hostmaster.example.com ( 1 12h
        15m 3w 2h)   ; the SOA over two lines
    NS  powerdns.example.net.
nxdomain.org        CNAME .
*.nxdomain.org      CNAME .
mail.nxdomain.org   CNAME rpz-passthru.
example.net         CNAME rpz-drop.
truncate.org        CNAME rpz-tcp-only.
local.org           CNAME explanation.example.com.
local-a.org         A 192.168.2.5
                    AAAA 2001:DB8:0:0::5
                    TXT "blocked by policy" "see; there"
32.2.0.0.10.rpz-ip  CNAME .
dns-eu1.powerdns.net.rpz-nsdname CNAME .
""",
    "ttl-and-class-in-either-order": """$ORIGIN rpz.test.
@ 3600 IN SOA ns.rpz.test. h.rpz.test. 1 2 3 4 5
a 300 IN CNAME .
b IN 300 CNAME *.
c 1h30m CNAME rpz-drop.
d IN A 10.0.0.1
e	 300	 in	 cname	 rpz-tcp-only.
""",
    "absolute-relative-and-at": """$ORIGIN rpz.test.
rpz.test. SOA ns hostmaster 1 2 3 4 5
@ NS ns
abs.example.rpz.test. CNAME .
rel.example CNAME *.
walled CNAME garden
walled2 CNAME garden.example.
*.w A 192.0.2.1
""",
    "nested-origin": """$ORIGIN rpz.test.
@ SOA ns hostmaster 1 2 3 4 5
$ORIGIN sub.rpz.test.
x CNAME .
$ORIGIN rpz.test.
y CNAME .
""",
    "other-types-and-nsip": """$ORIGIN rpz.test.
@ SOA ns hostmaster (
      1 ; serial
      2 3 4 5 )
mx.example MX 10 mail.example.com.
srv.example SRV 0 5 5060 sip.example.com.
24.0.2.0.192.rpz-nsip CNAME .
32.1.0.0.127.rpz-client-ip CNAME rpz-passthru.
""",
    "many-records-one-owner": """$ORIGIN rpz.test.
@ SOA ns hostmaster 1 2 3 4 5
multi A 192.0.2.1
multi A 192.0.2.2
other CNAME .
multi A 192.0.2.3
multi TXT "x"
""",
}


@pytest.mark.parametrize("name", sorted(SYNTHETIC))
def test_synthetic_zones_against_dnspython(name: str) -> None:
    text = SYNTHETIC[name]
    p = parse(text.encode())
    assert p.issues == []
    assert mine(p) == oracle(text, None)


@pytest.mark.parametrize(("file", "origin"), [(KNOT, None), (KNOT_SOA, "test2domain.")])
def test_knot_fixtures_against_dnspython(file: str, origin: str | None) -> None:
    text = (LISTS / file).read_text()
    assert mine(parse(text.encode())) == oracle(text, origin)


def test_include_is_reported_and_the_rest_matches_dnspython() -> None:
    text = "$ORIGIN rpz.test.\n@ SOA ns h 1 2 3 4 5\na CNAME .\n$INCLUDE more.zone\nb CNAME *.\n"
    p = parse(text.encode())
    assert issues(p) == [("z.rpz:4", "include-ignored")]
    assert mine(p) == oracle(text.replace("$INCLUDE more.zone\n", ""), None)


def generated_zone(n: int, seed: int) -> str:
    """A feed-shaped zone: mostly ``name CNAME .`` with wildcards, passthru and local data."""
    rnd = random.Random(seed)
    lines = ["$TTL 300", "$ORIGIN rpz.example.", "@ IN SOA localhost. hostmaster.localhost. 1 2 3 4 5",
             "@ IN NS localhost."]
    for i in range(n):
        name = ".".join(rnd.choice(["ads", "cdn", "x1", "trk", "mail"]) + str(rnd.randrange(9))
                        for _ in range(rnd.randrange(1, 4))) + f".d{i}.com"
        roll = rnd.random()
        if roll < 0.6:
            lines.append(f"{name} CNAME .")
        elif roll < 0.75:
            lines.append(f"*.{name} CNAME .")
        elif roll < 0.8:
            lines.append(f"{name} CNAME rpz-passthru.")
        elif roll < 0.85:
            lines.append(f"{name} 60 IN A 192.0.2.{rnd.randrange(256)}")
        elif roll < 0.9:
            lines.append(f"{name}\tCNAME\t*.")
        else:
            lines.append(f"{name}. CNAME rpz-drop.")  # absolute, outside the zone: an issue
    return "\n".join(lines) + "\n"


def test_generated_zone_against_dnspython() -> None:
    text = generated_zone(2000, 7)
    p = parse(text.encode())
    assert {r for _, r in issues(p)} == {"outside-zone"}
    assert p.units == 2004
    inside = "".join(line for line in text.splitlines(True) if ". CNAME rpz-drop." not in line)
    assert mine(p) == oracle(inside, None)


# -- the reader's corner cases ----------------------------------------------------------------

APEX = "$ORIGIN rpz.test.\n@ SOA ns h 1 2 3 4 5\n"
CASES: dict[str, tuple[str, dict[str, str], list[tuple[bytes, Kind, bool, Action | None, Payload]],
                       list[tuple[str, str]]]] = {
    # id: (zone text, options, rules (key, kind, allow, action, payload), issues (where, reason))
    "unknown-directive": (APEX + "$GENERATE 1-3 host$ A 10.0.0.$\na CNAME .\n", {},
                          [(b"a", Kind.EXACT, False, Action.NXDOMAIN, ())],
                          [("z.rpz:3", "unknown-directive")]),
    "bad-records": (APEX + "a CNAME\nb A 999.1.1.1\nc AAAA 1.2.3.4\nd CH TXT x\ne A 1.2.3.4 5\n"
                    "f 300 300 A 1.2.3.4\ng CNAME . extra\n", {}, [],
                    [(f"z.rpz:{n}", "bad-record") for n in range(3, 10)]),
    "unbalanced-quote": (APEX + 't TXT "never closed\nu CNAME .\n', {},
                         [(b"u", Kind.EXACT, False, Action.NXDOMAIN, ())],
                         [("z.rpz:3", "bad-record")]),
    "unclosed-parenthesis-lines-reread": (
        "$ORIGIN rpz.test.\n@ SOA ns h ( 1 2 3 4 5\na CNAME .\nb CNAME *.\n", {},
        [(b"a", Kind.EXACT, False, Action.NXDOMAIN, ()),
         (b"b", Kind.EXACT, False, Action.NODATA, ())],
        [("z.rpz:2", "bad-record")]),
    "stray-close-parenthesis": (APEX + "a CNAME . )\nb CNAME .\n", {},
                                [(b"b", Kind.EXACT, False, Action.NXDOMAIN, ())],
                                [("z.rpz:3", "bad-record")]),
    "blank-owner-first": ("  CNAME .\n", {}, [], [("z.rpz:1", "bad-record")]),
    "blank-owner-follows-previous": (APEX + "a A 192.0.2.1\n\t; comment\n  A 192.0.2.2\n", {},
                                     [(b"a", Kind.EXACT, False, Action.SINKHOLE,
                                       (("A", "192.0.2.1"), ("A", "192.0.2.2")))], []),
    "outside-zone": (APEX + "x.other.test. CNAME .\n", {}, [], [("z.rpz:3", "outside-zone")]),
    "no-origin-relative-owners-are-triggers": (
        "$TTL 30\n@ SOA rpz.urlhaus.abuse.ch. h. 1 2 3 4 5\n NS localhost.\n"
        "testentry.rpz.urlhaus.abuse.ch CNAME . ; test entry\nabs.example. CNAME .\n", {},
        [(b"testentry.rpz.urlhaus.abuse.ch", Kind.EXACT, False, Action.NXDOMAIN, ())],
        [("z.rpz:5", "outside-zone")]),
    "origin-option": ("@ SOA ns h 1 2 3 4 5\nfoo CNAME .\nbar.rpz.local. CNAME *.\n@ TXT x\n",
                      {"origin": "RPZ.local"},
                      [(b"bar", Kind.EXACT, False, Action.NODATA, ()),
                       (b"foo", Kind.EXACT, False, Action.NXDOMAIN, ())], []),
    "origin-option-root": ("com. CNAME .\n*.example.org. CNAME .\n", {"origin": "."},
                           [(b"com", Kind.EXACT, False, Action.NXDOMAIN, ()),
                            (b"example.org", Kind.WILDCARD, False, Action.NXDOMAIN, ())], []),
    "relative-origin-without-origin": ("$ORIGIN sub\na CNAME .\n", {},
                                       [(b"a", Kind.EXACT, False, Action.NXDOMAIN, ())],
                                       [("z.rpz:1", "bad-record")]),
    "escapes": (APEX + "a\\.b CNAME .\n\\065bc CNAME .\n", {},
                [(b"abc", Kind.EXACT, False, Action.NXDOMAIN, ())], [("z.rpz:3", "escaped-dot")]),
    "conflicting-duplicate-keeps-first": (
        APEX + "a CNAME .\na CNAME *.\na CNAME .\n", {},
        [(b"a", Kind.EXACT, False, Action.NXDOMAIN, ())], [("z.rpz:4", "duplicate-trigger")]),
    "policy-and-data-conflict": (
        APEX + "a A 192.0.2.1\na CNAME .\nb CNAME .\nb A 192.0.2.1\n", {},
        [(b"a", Kind.EXACT, False, Action.SINKHOLE, (("A", "192.0.2.1"),)),
         (b"b", Kind.EXACT, False, Action.NXDOMAIN, ())],
        [("z.rpz:4", "duplicate-trigger"), ("z.rpz:6", "duplicate-trigger")]),
    "cname-stands-alone": (
        APEX + "a CNAME garden.example.\na A 192.0.2.1\n", {},
        [(b"a", Kind.EXACT, False, Action.SINKHOLE, (("CNAME", "garden.example."),))],
        [("z.rpz:4", "duplicate-trigger")]),
    "exact-and-wildcard-are-two-triggers": (
        APEX + "a CNAME .\n*.a CNAME rpz-passthru.\n", {},
        [(b"a", Kind.EXACT, False, Action.NXDOMAIN, ()), (b"a", Kind.WILDCARD, True, None, ())],
        []),
    "legacy-passthru-cname-to-itself": (
        APEX + "ok.example CNAME ok.example.\n", {},
        [(b"ok.example", Kind.EXACT, True, None, ())], []),
    "wildcard-cname-local-data": (
        APEX + "*.w CNAME *.garden.example.\nl CNAME garden\n", {},
        [(b"l", Kind.EXACT, False, Action.SINKHOLE, (("CNAME", "garden.rpz.test."),)),
         (b"w", Kind.WILDCARD, False, Action.SINKHOLE, (("CNAME", "*.garden.example."),))],
        []),
    "case-insensitive": (
        "$ORIGIN RPZ.Test.\n@ SOA ns h 1 2 3 4 5\nMiXeD.Example In Cname RPZ-DROP.\n"
        "mixed.example.rpz.test. CNAME rpz-drop.\n", {},
        [(b"mixed.example", Kind.EXACT, False, Action.DROP, ())], []),
    "txt-keeps-case": (APEX + 't TXT "Blocked By Policy" Two\n', {},
                       [(b"t", Kind.EXACT, False, Action.SINKHOLE,
                         (("TXT", '"Blocked By Policy" "Two"'),))], []),
    "names-checked-by-list-key": (
        APEX + "bad..name CNAME .\n1.2.3.4 CNAME .\nhost1 CNAME .\nx*y CNAME .\n", {},
        [(b"host1", Kind.EXACT, False, Action.NXDOMAIN, ())],
        [("z.rpz:3", "empty-label"), ("z.rpz:4", "ip-literal"), ("z.rpz:6", "bad-wildcard")]),
    "bom-tabs-trailing-space": ("\ufeff$ORIGIN rpz.test.\n@\tSOA ns h 1 2 3 4 5  \na\tCNAME\t.  \t\n",
                                {}, [(b"a", Kind.EXACT, False, Action.NXDOMAIN, ())], []),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_reader_cases(case: str) -> None:
    text, options, want_rules, want_issues = CASES[case]
    p = parse(text.encode(), **options)
    assert sorted(r for r, _ in rules(p)) == sorted(want_rules)
    assert issues(p) == want_issues


def test_counts() -> None:
    p = parse((APEX + "32.2.0.0.10.rpz-ip CNAME .\nns.example.rpz-nsdname CNAME .\n"
               "24.0.2.0.192.rpz-nsip CNAME .\n32.1.0.0.127.rpz-client-ip CNAME rpz-passthru.\n"
               "128.zz.1.db8.2001.rpz-ip CNAME .\n@ TXT apex\nпример CNAME .\n").encode())
    assert p.counts["unsupported-trigger"] == 5
    assert (p.counts["unsupported-rpz-ip"], p.counts["unsupported-rpz-nsdname"],
            p.counts["unsupported-rpz-nsip"], p.counts["unsupported-rpz-client-ip"]) == (2, 1, 1, 1)
    assert p.counts["apex-record"] == 1
    assert p.counts["idn"] == 1 and p.keys == [b"xn--e1afmkfd"]
    assert p.units == 9


def test_too_many_local_records() -> None:
    n = rpz.MAX_LOCAL_RECORDS + 1
    p = parse((APEX + "".join(f"m A 10.0.0.{i}\n" for i in range(n))).encode())
    assert len(p.payloads[p.refs[0]]) == rpz.MAX_LOCAL_RECORDS
    assert issues(p) == [(f"z.rpz:{2 + n}", "too-many-records")]


def test_long_parenthesis_group_is_cut() -> None:
    body = "x TXT ( " + "\n".join('"t"' for _ in range(rpz.MAX_GROUP_LINES + 5)) + " )\n"
    p = parse((APEX + body + "a CNAME .\n").encode())
    assert (b"a", Kind.EXACT, False, Action.NXDOMAIN, ()) in [r for r, _ in rules(p)]
    assert issues(p)[0] == ("z.rpz:3", "bad-record")
    assert issues(p)[-1][1] == "bad-record"  # the stray ")" line, read on its own


def test_bad_origin_option_is_a_format_error() -> None:
    with pytest.raises(ListFormatError):
        parse(b"a CNAME .\n", origin="bad..origin")


def test_registry_options() -> None:
    assert rpz.OPTIONS == {"origin": ()}


def test_files_carry_origin_but_not_owner() -> None:
    p = parse_files([("a.rpz", APEX.encode() + b"a CNAME .\n"), ("b.rpz", b"  CNAME .\nb CNAME *.\n")])
    assert rules(p) == [((b"a", Kind.EXACT, False, Action.NXDOMAIN, ()), "a.rpz:3"),
                        ((b"b", Kind.EXACT, False, Action.NODATA, ()), "b.rpz:2")]
    assert issues(p) == [("b.rpz:1", "bad-record")]


# -- whole, split, CRLF, trickled ---------------------------------------------------------------


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


def test_crlf_trickle_and_block_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    data = (generated_zone(300, 3) + SYNTHETIC["ttl-comment-parens-blank-owner"]).encode()
    whole = parse(data)
    assert rules(parse(data.replace(b"\n", b"\r\n"))) == rules(whole)
    assert rules(rpz.parse([Input("z.rpz", Trickle(data))])) == rules(whole)  # type: ignore[arg-type]
    for size in (1, 50, 1000):
        monkeypatch.setattr(rpz, "BLOCK", size)
        p = parse(data)
        assert rules(p) == rules(whole)
        assert issues(p) == issues(whole)


def test_prefixes_of_the_fixture() -> None:
    data = (LISTS / KNOT).read_bytes()
    for cut in range(len(data) + 1):
        parse(data[:cut])


# -- properties ---------------------------------------------------------------------------------

OWNERS = ["a", "b.c", "*.w", "*", "@", "x.rpz.test.", "other.", "32.1.0.0.10.rpz-ip", "CaSe",
          "host1", "1.2.3.4", "bad..n", "пример", "a\\.b", "\\097", "x" * 64, ""]
PREFIXES = ["", "300", "IN", "300 IN", "IN 300", "CH", "1h"]
DATA = ["CNAME .", "CNAME *.", "CNAME rpz-passthru.", "cname RPZ-DROP.", "CNAME rpz-tcp-only.",
        "A 192.0.2.1", "AAAA ::1", "TXT hello", "MX 10 mail", "CNAME garden", "A bad", "CNAME",
        "SOA ns h 1 2 3 4 5", "NS ns", "CNAME a.", "CNAME b.c.", "( A", "192.0.2.9 )"]
DIRECTIVES = ["$ORIGIN rpz.test.", "$ORIGIN .", "$ORIGIN sub", "$TTL 2h", "$INCLUDE f", "$GENERATE 1-2 x",
              "$ORIGIN other.", ")", "(", "; c", ""]
PART_LISTS = st.one_of(
    st.tuples(st.sampled_from(OWNERS), st.sampled_from(PREFIXES), st.sampled_from(DATA))
    .map(lambda t: [p for p in t if p]),
    st.sampled_from(DIRECTIVES).map(lambda d: d.split()),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(PART_LISTS, max_size=25), st.booleans())
def test_bulk_path_equals_full_reader(lines: list[list[str]], with_origin: bool) -> None:
    """Single spaces take the bulk path where they can; tabs send every line to the reader."""
    spaced = "".join(" ".join(parts) + "\n" for parts in lines).encode()
    tabbed = "".join("\t".join(parts) + "\n" for parts in lines).encode()
    options = {"origin": "rpz.test"} if with_origin else {}
    a, b = parse(spaced, **options), parse(tabbed, **options)
    assert rules(a) == rules(b)
    assert issues(a) == issues(b)
    assert a.units == b.units


@settings(max_examples=200, deadline=None)
@given(st.lists(PART_LISTS, max_size=25), st.integers(0, 400))
def test_vocabulary_lines_and_prefixes_never_raise(lines: list[list[str]], cut: int) -> None:
    data = "".join(" ".join(parts) + "\n" for parts in lines).encode()
    parse(data)
    parse(data[:cut])


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_never_raise(data: bytes) -> None:
    parse(data)
    parse(data, origin="rpz.test")
