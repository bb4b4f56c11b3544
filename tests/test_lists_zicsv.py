"""zi-csv: the z-i mirror's dump.csv and its split chunks.

Counts are checked against an oracle computed here with the ``csv`` module and string
operations over the same real files (``fixtures/lists``, provenance in its README), and
against figures the README documents.
"""

from __future__ import annotations

import csv
import io
import ipaddress
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import idna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockgate.errors import ListFormatError
from blockgate.lists import zicsv
from blockgate.lists.base import Decision, Input, ParsedList
from blockgate.trie import KIND_MASK, Kind

LISTS = Path(__file__).parent / "fixtures" / "lists"
SAMPLES = sorted(p.name for p in LISTS.glob("zi-*.csv"))
MID = "zi-dump-2018-mid-sample.csv"
HEAD_2018 = "zi-dump-sample.csv"
TAIL_2020 = "zi-dump-08-2020-tail-sample.csv"


def read(name: str) -> bytes:
    return (LISTS / name).read_bytes()


def parse_files(files: list[tuple[str, bytes]], **options: str) -> ParsedList:
    return zicsv.parse([Input(name, io.BytesIO(data)) for name, data in files], options)


def parse(data: bytes, name: str = "dump.csv", **options: str) -> ParsedList:
    return parse_files([(name, data)], **options)


def rules(parsed: ParsedList) -> list[tuple[bytes, int]]:
    return list(zip(parsed.keys, parsed.flags, strict=True))


# -- the oracle -----------------------------------------------------------------------------


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def split_urls(field_: str) -> list[str]:
    return [u for u in field_.split(" | " if " | " in field_ else "|") if u]


@dataclass
class Expected:
    """What a file should give, counted without the parser."""

    rows: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    counts: Counter[str] = field(default_factory=Counter)
    issues: Counter[str] = field(default_factory=Counter)
    updated: str | None = None


def oracle(data: bytes) -> Expected:
    """Counts by the README's definitions, for the fixtures' shapes (6 fields, one domain,
    scheme://host URLs): default options."""
    csv.field_size_limit(1 << 24)
    text = data.decode("cp1251")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=";", quotechar='"')
    exp = Expected()
    for row in reader:
        if reader.line_num == 1 and row[0].startswith("Updated:"):
            exp.updated = row[0].removeprefix("Updated:").strip()
            continue
        exp.rows += 1
        ips, domain, urls = row[0], row[1], row[2]
        for ip in (p.strip() for p in ips.split("|") if p.strip()):
            net = ipaddress.ip_network(ip, strict=False)
            exp.counts[("ip" if net.version == 4 else "ipv6") + ("-subnet" if "/" in ip else "")] += 1
        if domain and not domain.isascii():
            exp.counts["idn"] += 1
        if domain and is_ip(domain):
            exp.counts["ip-domain"] += 1
        blocking = False
        for url in split_urls(urls):
            scheme, rest = url.split("://", 1)
            exp.counts[f"{scheme}-url"] += 1
            if is_ip(rest.split("/")[0]):
                exp.counts["ip-host-url"] += 1
            elif scheme == "https":
                blocking = True
        if urls:
            if blocking:
                exp.kinds["block-exact"] += 1  # one domain per row in the fixtures
        elif domain.startswith("*."):
            exp.counts["mask"] += 1
            exp.kinds["block-subtree"] += 1
        elif domain and not is_ip(domain):
            exp.kinds["block-exact"] += 1
        elif not domain:
            exp.counts["ip-only" if ips else "empty"] += 1
    return exp


@pytest.mark.parametrize("name", SAMPLES)
def test_sample_counts_match_an_independent_count(name: str) -> None:
    data = read(name)
    parsed = parse(data, name)
    exp = oracle(data)
    assert parsed.units == exp.rows
    assert parsed.kind_counts() == exp.kinds
    assert +parsed.counts == +exp.counts
    assert parsed.issue_counts == exp.issues
    assert parsed.meta.get("updated") == exp.updated
    assert len(parsed.ipv4) == 5 * (exp.counts["ip"] + exp.counts["ip-subnet"])
    assert len(parsed.ipv6) == 17 * (exp.counts["ipv6"] + exp.counts["ipv6-subnet"])


# -- documented figures (fixtures/lists/README.md) ----------------------------------------


def test_2018_head_documented_figures() -> None:
    parsed = parse(read(HEAD_2018), HEAD_2018)
    assert parsed.meta["updated"] == "2018-05-05 13:25:00 +0000"
    assert parsed.units == 1999
    assert parsed.counts["ip-only"] == 778
    assert parsed.counts["mask"] == 1221
    assert parsed.kind_counts() == Counter({"block-subtree": 1221})
    assert len(set(parsed.keys)) == 1200
    assert parsed.issues == []


def test_2018_head_unicode_mask_on_line_906_becomes_a_key() -> None:
    parsed = parse(read(HEAD_2018), HEAD_2018)
    found = [(k, f, parsed.origin(r)) for k, f, r in parsed.iter_rules()
             if parsed.origin(r).where == f"{HEAD_2018}:906"]  # fmt: skip
    assert len(found) == 1
    key, flags, origin = found[0]
    assert key == idna.encode("1хбет-рабочее-зеркало.рус")
    assert key.startswith(b"xn--")
    assert Kind(flags & KIND_MASK) is Kind.SUBTREE
    assert origin.record_id is None  # z-i rows carry no registry id
    # Runs of spaces in the decision number are kept as published.
    assert origin.decision == Decision("2-6-27/     2016-06-22-18-АИ", "2016-06-24", "ФНС")


def test_2018_mid_documented_figures() -> None:
    parsed = parse(read(MID), MID)
    assert parsed.units == 2000
    assert parsed.counts["mask"] == 1385
    assert parsed.counts["idn"] == 2  # 095у.рф, 100медсправок.рф
    assert parsed.counts["http-url"] == 143  # 140 rows, two with several URLs
    # 47 rows (lines 1769-1828) list an address in the domain field: counted, not issues
    assert parsed.counts["ip-domain"] == 47
    assert parsed.issue_counts == Counter()
    assert b"linkedin.com" in parsed.keys  # line 16, *.linkedin.com


def test_2020_head_rows_without_names() -> None:
    parsed = parse(read("zi-dump-2020-head-sample.csv"))
    assert parsed.meta["updated"] == "2020-01-26 01:24:00 +0000"
    assert (parsed.counts["empty"], parsed.counts["ip-only"]) == (16, 5)
    assert len(parsed) == 0


def test_2020_chunk_head_documented_figures() -> None:
    parsed = parse(read("zi-dump-08-2020-head-sample.csv"))
    assert parsed.units == 2000
    assert parsed.kind_counts() == Counter({"block-exact": 2000})
    assert len(set(parsed.keys)) == 440  # telegra.ph and others: many URL records each
    assert parsed.counts["https-url"] > 2000  # 47 rows hold several URLs


def test_2020_tail_quoted_url_on_line_925_parses() -> None:
    parsed = parse(read(TAIL_2020), TAIL_2020)
    refs = [r for r in parsed.refs if parsed.origin(r).where == f"{TAIL_2020}:925"]
    assert [parsed.keys[parsed.refs.index(r)] for r in refs] == [b"zvooq.icu"]
    assert parsed.issues == []


def test_2020_tail_unicode_and_punycode_spellings_meet() -> None:
    parsed = parse(read(TAIL_2020), TAIL_2020)
    assert parsed.counts["idn"] == 26
    assert idna.encode("вебкритик.рф") in parsed.keys
    assert all(k.isascii() for k in parsed.keys)


# -- options --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "options", "expected"),
    [
        (MID, {}, {"block-subtree": 1385, "block-exact": 475}),
        (MID, {"domain_scope": "subtree"}, {"block-subtree": 1860}),
        (MID, {"mask_scope": "wildcard"}, {"block-wildcard": 1385, "block-exact": 475}),
        # 140 URL rows: 47 with an IP-literal host block nothing, 93 block their domain.
        (MID, {"http_urls": "block-host"}, {"block-subtree": 1385, "block-exact": 568}),
        (TAIL_2020, {}, {"block-exact": 1000}),
        (TAIL_2020, {"https_urls": "ignore"}, {}),
        (TAIL_2020, {"https_urls": "ignore", "http_urls": "block-host"}, {}),
    ],
)
def test_options(name: str, options: dict[str, str], expected: dict[str, int]) -> None:
    parsed = parse(read(name), name, **options)
    assert parsed.kind_counts() == Counter(expected)


# -- split files ----------------------------------------------------------------------------


def chunks(data: bytes, parts: int) -> list[tuple[str, bytes, int]]:
    """(name, bytes, lines before it) of ``parts`` chunk files cut at line boundaries."""
    lines = data.splitlines(keepends=True)
    size = -(-len(lines) // parts)
    return [(f"dump-{i:02d}.csv", b"".join(lines[i * size : (i + 1) * size]), i * size) for i in range(parts)]


@pytest.mark.parametrize("name", [HEAD_2018, MID, TAIL_2020])
def test_split_files_equal_the_whole_file(name: str) -> None:
    data = read(name)
    whole = parse(data, name)
    pieces = chunks(data, 3)
    split = parse_files([(n, d) for n, d, _ in pieces])
    assert rules(split) == rules(whole)
    assert split.counts == whole.counts
    assert split.units == whole.units
    assert split.meta == whole.meta  # the header is read from the first chunk only
    offsets = {n: before for n, _, before in pieces}
    for ref_whole, ref_split in zip(whole.refs, split.refs, strict=True):
        chunk, line = split.origin(ref_split).where.rsplit(":", 1)
        assert whole.origin(ref_whole).where == f"{name}:{offsets[chunk] + int(line)}"
        assert split.origin(ref_split).decision == whole.origin(ref_whole).decision


# -- damage ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "line", "cut"),
    [
        (MID, 1500, 10),  # inside the domain
        (MID, 1500, -3),  # inside the date
        (TAIL_2020, 925, 300),  # inside the quoted URL
        (HEAD_2018, 20, 5),  # inside the IP list
    ],
)
def test_truncated_last_line_is_one_issue_and_complete_rows_load(name: str, line: int, cut: int) -> None:
    lines = read(name).splitlines(keepends=True)
    complete = b"".join(lines[: line - 1])
    last = lines[line - 1].rstrip(b"\n")
    data = complete + last[:cut]
    parsed = parse(data, name)
    assert parsed.issue_counts["truncated-line"] == 1
    assert [i.where for i in parsed.issues if i.reason == "truncated-line"] == [f"{name}:{line}"]
    reference = parse(complete, name)
    assert rules(parsed) == rules(reference)
    assert parsed.units == reference.units + 1


def test_last_line_without_newline_but_complete_loads() -> None:
    data = read(MID).rstrip(b"\n")
    parsed = parse(data)
    assert rules(parsed) == rules(parse(read(MID)))
    assert "truncated-line" not in parsed.issue_counts


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (b"this is a note someone typed into a fork", "bad-row"),
        (b"1.2.3.4;a.example;;org;1;2020-01-01;extra", "bad-row"),
        (b"1.2.3.4;a.example;;org", "bad-row"),
        (b'1.2.3.4;"unterminated;;org;1;2020-01-01', "bad-row"),
        (b"1.2.3.4 | 999.1.1.1;;;org;1;2020-01-01", "bad-address"),
        (b";exa mple.com;;org;1;2020-01-01", "bad-character"),
        (b";\xef\xbf\xbd.example;;org;1;2020-01-01", "replacement"),  # U+FFFD: a bad re-save
    ],
)
def test_bad_line_in_the_middle_is_a_located_issue(bad: bytes, reason: str) -> None:
    text = read(MID)
    if b"\xef" in bad:  # a UTF-8 copy, damaged where a byte could not be converted
        text = text.decode("cp1251").encode("utf-8")
    lines = text.splitlines(keepends=True)
    data = b"".join(lines[:99]) + bad + b"\n" + b"".join(lines[99:])
    parsed = parse(data, "x.csv")
    assert [(i.where, i.reason) for i in parsed.issues if i.reason == reason] == [("x.csv:100", reason)]
    whole = parse(read(MID))
    assert set(parsed.keys) == set(whole.keys)


def test_blank_lines_are_skipped() -> None:
    parsed = parse(b"\n" + read(MID).replace(b"\n", b"\n\n", 5))
    assert rules(parsed) == rules(parse(read(MID)))
    assert parsed.issue_counts == parse(read(MID)).issue_counts  # no blank-line issues
    assert parsed.units == 2000


@pytest.mark.parametrize("name", SAMPLES)
def test_utf8_and_crlf_copies_give_the_same_keys(name: str) -> None:
    data = read(name)
    original = parse(data)
    utf8 = data.decode("cp1251").encode("utf-8")
    for copy in (utf8, b"\xef\xbb\xbf" + utf8, data.replace(b"\n", b"\r\n")):
        parsed = parse(copy)
        assert rules(parsed) == rules(original)
        assert parsed.counts == original.counts


def test_encoding_is_decided_per_file() -> None:
    data = read(MID)
    first, second, _ = (d for _, d, _ in chunks(data, 3))
    split = parse_files([("a.csv", first.decode("cp1251").encode("utf-8")), ("b.csv", second)])
    assert rules(split) == rules(parse(first + second))


def test_several_domains_and_url_separators() -> None:
    data = (
        "Updated: 2024-01-01 00:00:00 +0000\n"
        "104.21.22.231|2a06:98c1:3121::1;www.hiqqu.com;https://www.hiqqu.com/view=c89a;"
        "Роскомнадзор;1495993-URL-on;2021-11-10\n"
        "1.1.1.1;;https://a.example/x?y=1|2 | https://b.example/;;;2021-06-18\n"
        "1.1.1.2;c.example|*.d.example;;org;1;2021-06-18\n"
        "1.1.1.3;Е.example.;;org;1;2021-06-18\n"
    ).encode("cp1251")
    parsed = parse(data)
    assert [(k.decode(), Kind(f & KIND_MASK)) for k, f in rules(parsed)] == [
        ("www.hiqqu.com", Kind.EXACT),
        ("a.example", Kind.EXACT),
        ("b.example", Kind.EXACT),
        ("c.example", Kind.EXACT),
        ("d.example", Kind.SUBTREE),
        (idna.encode("е.example").decode(), Kind.EXACT),
    ]
    assert parsed.counts["https-url"] == 3
    assert parsed.counts["ipv6"] == 1
    # Empty org and number (since late 2022) stay empty.
    assert parsed.origin(parsed.refs[1]).decision == Decision("", "2021-06-18", "")


# -- property: nothing but ListFormatError escapes -----------------------------------------


def outcome(data: bytes) -> None:
    try:
        result = parse(data)
    except ListFormatError:
        return
    assert isinstance(result, ParsedList)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes_parse_or_raise_list_format_error(data: bytes) -> None:
    outcome(data)
    outcome(b"1.2.3.4;" + data)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(SAMPLES), st.floats(0, 1))
def test_truncated_samples_parse_or_raise_list_format_error(name: str, keep: float) -> None:
    data = read(name)
    outcome(data[: int(len(data) * keep)])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(list(';|" \n\r*.:/\\аx1')), max_size=200))
def test_separator_soup_parses_or_raises_list_format_error(chars: list[str]) -> None:
    outcome("".join(chars).encode("cp1251"))
