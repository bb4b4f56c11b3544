"""rkn-xml: the registry's dump.xml, bare and zipped.

The real records are the three of ``fixtures/lists/rkn-dump-fragment-2019-a.xml`` (Aug 2019,
see its README); the blockTypes that fixture lacks (``domain``, ``domain-mask``, ``ip``) are
exercised with small synthetic documents written in windows-1251 like the real dump.
"""

from __future__ import annotations

import io
import zipfile
from collections import Counter
from pathlib import Path

import idna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockgate.errors import ListFormatError
from blockgate.lists import rknxml
from blockgate.lists.base import Decision, Input, ParsedList
from blockgate.trie import KIND_MASK, Kind

FIXTURE = Path(__file__).parent / "fixtures" / "lists" / "rkn-dump-fragment-2019-a.xml"
DUMP = FIXTURE.read_bytes()

HEAD = (
    '<?xml version="1.0" encoding="windows-1251"?>\r\n'
    '<reg:register updateTime="2024-01-02T03:04:05+03:00" formatVersion="2.4" '
    'xmlns:reg="http://rsoc.ru" xmlns:tns="http://rsoc.ru">\r\n'
)
TAIL = "</reg:register>\r\n"
DECISION = '<decision date="2016-11-07" number="2-6-27/2016-11-01-7-АИ" org="ФНС"/>'


def parse(data: bytes, name: str = "dump.xml", **options: str) -> ParsedList:
    return rknxml.parse([Input(name, io.BytesIO(data))], options)


def document(*records: str) -> bytes:
    """A dump.xml with one record per line, from line 3 on."""
    return (HEAD + "".join(r + "\r\n" for r in records) + TAIL).encode("cp1251")


def record(block_type: str | None, *children: str, record_id: int = 1000) -> str:
    bt = f' blockType="{block_type}"' if block_type else ""
    body = DECISION + "".join(children)
    return (
        f'<content id="{record_id}" includeTime="2016-11-07T10:00:00" entryType="1"{bt} '
        f'hash="00000000000000000000000000000000">{body}</content>'
    )


def rules(parsed: ParsedList) -> set[tuple[str, Kind]]:
    return {(k.decode(), Kind(f & KIND_MASK)) for k, f in zip(parsed.keys, parsed.flags, strict=True)}


class Unseekable(io.BytesIO):
    """A pipe-like stream: zipfile cannot seek it, so the parser must read it whole."""

    def seekable(self) -> bool:
        return False

    def seek(self, *args: object) -> int:
        raise io.UnsupportedOperation("seek")

    def tell(self) -> int:
        raise io.UnsupportedOperation("tell")


def zipped(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buf.getvalue()


# -- the real records -------------------------------------------------------------------


def test_fixture_https_record_blocks_its_domain_with_record_origin() -> None:
    parsed = parse(DUMP)
    assert rules(parsed) == {("standaards.com", Kind.EXACT)}
    origin = parsed.origin(parsed.refs[0])
    assert origin.where == "dump.xml:5"  # the <content id="1676124"> line
    assert origin.record_id == 1676124
    assert origin.decision == Decision("2а-4235/2019", "2019-06-25", "суд")


def test_fixture_http_records_are_counted_not_blocked() -> None:
    parsed = parse(DUMP)
    assert parsed.units == 3
    assert parsed.counts["https-url"] == 1
    # 1676118 http://pontorez.com/..., 1676122 http:/premium-diploms.com/... (one slash)
    assert parsed.counts["http-url"] == 2
    assert parsed.issues == []
    assert parsed.issue_counts == Counter()


def test_fixture_addresses_and_meta() -> None:
    parsed = parse(DUMP)
    assert parsed.counts["ip"] == 4
    assert parsed.counts["ipv6"] == 3  # expanded spelling, as in the 2019 dump
    assert len(parsed.ipv4) == 4 * 5
    assert len(parsed.ipv6) == 3 * 17
    assert parsed.meta == {
        "updateTime": "2019-08-30T12:00:00+03:00",
        "updateTimeUrgently": "2019-08-30T12:00:00+03:00",
        "formatVersion": "2.4",
    }


def test_fixture_http_block_host_blocks_domain_or_url_host() -> None:
    parsed = parse(DUMP, http_urls="block-host")
    assert rules(parsed) == {
        ("pontorez.com", Kind.EXACT),  # 1676118: its <domain>
        ("premium-diploms.com", Kind.EXACT),  # 1676122: no <domain>, host of http:/host/...
        ("standaards.com", Kind.EXACT),
    }
    ids = {parsed.keys[i]: parsed.origin(ref).record_id for i, ref in enumerate(parsed.refs)}
    assert ids == {b"pontorez.com": 1676118, b"premium-diploms.com": 1676122,
                   b"standaards.com": 1676124}  # fmt: skip


def test_fixture_https_ignore_blocks_nothing() -> None:
    parsed = parse(DUMP, https_urls="ignore")
    assert len(parsed) == 0
    assert parsed.counts["https-url"] == 1


def test_decisions_are_interned() -> None:
    data = document(
        record("domain", "<domain>a.example</domain>", record_id=1),
        record("domain", "<domain>b.example</domain>", record_id=2),
    )
    parsed = parse(data)
    assert len(parsed.decisions) == 1
    assert [parsed.origin(r).record_id for r in parsed.refs] == [1, 2]
    assert [parsed.origin(r).where for r in parsed.refs] == ["dump.xml:3", "dump.xml:4"]


# -- ZIP ------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream_kind", ["seekable", "unseekable"])
def test_zip_with_signature_gives_the_same_rules(stream_kind: str) -> None:
    data = zipped({"dump.xml": DUMP, "dump.xml.sig": b"\x30\x82signature"})
    stream = io.BytesIO(data) if stream_kind == "seekable" else Unseekable(data)
    parsed = rknxml.parse([Input("dump.zip", stream)], {})
    plain = parse(DUMP)
    assert rules(parsed) == rules(plain)
    assert parsed.counts == plain.counts + Counter(signature=1)
    origin = parsed.origin(parsed.refs[0])
    assert origin.where == "dump.zip/dump.xml:5"
    assert origin.record_id == 1676124


def test_zip_without_dump_xml_is_a_format_error() -> None:
    with pytest.raises(ListFormatError) as err:
        parse(zipped({"dump.xml.sig": b"sig", "readme.txt": b"x"}), "dump.zip")
    assert err.value.reason == "no-dump-xml"
    assert err.value.where == "dump.zip"


@pytest.mark.parametrize("keep", [0.25, 0.5, 0.9, 0.99])
def test_truncated_zip_is_a_format_error(keep: float) -> None:
    data = zipped({"dump.xml": DUMP * 5, "dump.xml.sig": b"sig"})
    with pytest.raises(ListFormatError) as err:
        parse(data[: int(len(data) * keep)], "dump.zip")
    assert err.value.reason == "bad-zip"
    assert err.value.where == "dump.zip"


def test_zip_magic_then_garbage_is_a_format_error() -> None:
    with pytest.raises(ListFormatError, match=r"^dump\.zip"):
        parse(b"PK\x03\x04" + b"\x00" * 200, "dump.zip")


# -- broken XML -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "line"),
    [
        pytest.param(DUMP.replace(b"</content>", b"</contnt>", 1), 3, id="mismatched-tag-line-3"),
        pytest.param(DUMP.replace(b"<ip>104.18.53.33", b"<ip 104.18.53.33", 1), 5, id="bad-tag"),
        pytest.param(DUMP[: DUMP.index(b"</content>", DUMP.index(b"1676122"))], 4, id="truncated"),
        pytest.param(DUMP.replace(b"windows-1251", b"utf-8"), 3, id="cp1251-read-as-utf8"),
    ],
)
def test_malformed_xml_names_file_and_line(data: bytes, line: int) -> None:
    with pytest.raises(ListFormatError) as err:
        parse(data)
    assert err.value.where == f"dump.xml:{line}"
    assert err.value.reason == "bad-xml"
    assert "column" in err.value.detail


@pytest.mark.parametrize("data", [b"", b"   \r\n", b"not xml at all"], ids=["empty", "blank", "text"])
def test_not_xml_is_a_format_error(data: bytes) -> None:
    with pytest.raises(ListFormatError, match=r"^dump\.xml"):
        parse(data)


def test_well_formed_xml_that_is_not_a_registry_is_refused() -> None:
    with pytest.raises(ListFormatError) as err:
        parse(b'<?xml version="1.0"?>\n<html><body/></html>')
    assert err.value.reason == "not-registry"
    assert err.value.where == "dump.xml:2"


# -- blockTypes and options -----------------------------------------------------------------

D = "<domain><![CDATA[{}]]></domain>"
U = "<url><![CDATA[{}]]></url>"
IP = "<ip>198.51.100.7</ip>"

RECORD_CASES = [
    # (id, block type, children, options, expected rules, expected counts)
    ("domain-exact", "domain", [D.format("Casino.Example.")], {},
     {("casino.example", Kind.EXACT)}, {}),
    ("domain-subtree", "domain", [D.format("casino.example")], {"domain_scope": "subtree"},
     {("casino.example", Kind.SUBTREE)}, {}),
    ("domain-idn", "domain", [D.format("вебкритик.рф")], {},
     {(idna.encode("вебкритик.рф").decode(), Kind.EXACT)}, {"idn": 1}),
    ("domain-punycode-same-key", "domain", [D.format("xn--90aiifajq6a.xn--p1ai")], {},
     {("xn--90aiifajq6a.xn--p1ai", Kind.EXACT)}, {}),
    ("mask-subtree", "domain-mask", [D.format("*.example-casino.com")], {},
     {("example-casino.com", Kind.SUBTREE)}, {"mask": 1}),
    ("mask-wildcard", "domain-mask", [D.format("*.example-casino.com")],
     {"mask_scope": "wildcard"}, {("example-casino.com", Kind.WILDCARD)}, {"mask": 1}),
    ("mask-without-star", "domain-mask", [D.format("example-casino.com")], {},
     {("example-casino.com", Kind.SUBTREE)}, {"mask-without-star": 1}),
    ("mask-without-star-wildcard-option", "domain-mask", [D.format("example-casino.com")],
     {"mask_scope": "wildcard"}, {("example-casino.com", Kind.SUBTREE)},
     {"mask-without-star": 1}),
    ("mask-idn", "domain-mask", [D.format("*.1хбет-рабочее-зеркало.рус")], {},
     {(idna.encode("1хбет-рабочее-зеркало.рус").decode(), Kind.SUBTREE)},
     {"mask": 1, "idn": 1}),
    ("https-domain-trusted-over-host", None,
     [U.format("https://www.site.example/a"), D.format("site.example")], {},
     {("site.example", Kind.EXACT)}, {"https-url": 1}),
    ("https-one-rule-per-record", "default",
     [U.format("https://site.example/a"), U.format("https://site.example/b"),
      D.format("site.example")], {},
     {("site.example", Kind.EXACT)}, {"https-url": 2}),
    ("https-no-domain-uses-hosts", None,
     [U.format("https://a.example/x"), U.format("https://B.example:8443/y"),
      U.format("https://a.example/z")], {},
     {("a.example", Kind.EXACT), ("b.example", Kind.EXACT)}, {"https-url": 3}),
    ("https-ip-host", None, [U.format("https://192.0.2.1/x"), IP], {},
     set(), {"https-url": 1, "ip-host-url": 1, "ip": 1}),
    ("https-ipv6-host", None, [U.format("https://[2001:db8::1]/x")], {},
     set(), {"https-url": 1, "ip-host-url": 1}),
    ("http-ignored", None, [U.format("http://site.example/x"), D.format("site.example")], {},
     set(), {"http-url": 1}),
    ("http-block-host", None, [U.format("http://site.example/x"), D.format("site.example")],
     {"http_urls": "block-host"}, {("site.example", Kind.EXACT)}, {"http-url": 1}),
    ("http-and-https-mixed", None,
     [U.format("http://site.example/x"), U.format("https://site.example/y"),
      D.format("site.example")], {},
     {("site.example", Kind.EXACT)}, {"http-url": 1, "https-url": 1}),
    ("other-scheme", None, [U.format("newcamd525://iserver4.tv:4001"), D.format("iserver4.tv")],
     {"http_urls": "block-host"}, set(), {"other-url": 1}),
    ("default-domain-without-url", None, [D.format("site.example")], {},
     {("site.example", Kind.EXACT)}, {"domain-without-url": 1}),
    ("ip-block-type", "ip", [IP, "<ipSubnet>203.0.113.0/24</ipSubnet>", D.format("x.example")],
     {}, set(), {"ip": 1, "ip-subnet": 1}),
    ("ip-only", None, [IP, "<ipv6Subnet>2001:db8::/32</ipv6Subnet>"], {},
     set(), {"ip-only": 1, "ip": 1, "ipv6-subnet": 1}),
    ("empty", None, [], {}, set(), {"empty": 1}),
    # the registry lists some addresses in <domain>: counted, not an issue
    ("ip-literal-domain", "domain", [D.format("128.199.35.197")], {}, set(), {"ip-domain": 1}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("block_type", "children", "options", "expected", "counts"),
    [pytest.param(*case[1:], id=case[0]) for case in RECORD_CASES],
)
def test_record(
    block_type: str | None,
    children: list[str],
    options: dict[str, str],
    expected: set[tuple[str, Kind]],
    counts: dict[str, int],
) -> None:
    parsed = parse(document(record(block_type, *children, record_id=77)), **options)
    assert rules(parsed) == expected
    assert +parsed.counts == Counter(counts)
    assert parsed.issues == []
    assert parsed.units == 1
    for ref in parsed.refs:
        origin = parsed.origin(ref)
        assert origin.where == "dump.xml:3"
        assert origin.record_id == 77
        assert origin.decision == Decision("2-6-27/2016-11-01-7-АИ", "2016-11-07", "ФНС")


ISSUE_CASES = [
    ("bad-wildcard", "domain-mask", [D.format("a.*.example")], "bad-wildcard"),
    ("empty-domain", "domain", [D.format("  ")], "empty-name"),
    ("bad-character", "domain", [D.format("exa mple.com")], "bad-character"),
    ("bad-address", "ip", ["<ip>300.1.2.3</ip>"], "bad-address"),
    ("bad-url", None, [U.format("https://")], "bad-url"),
    ("domain-record-without-domain", "domain", [U.format("https://a.example/"), IP], "no-domain"),
    ("mask-record-without-domain", "domain-mask", [IP], "no-domain"),
    ("unknown-block-type", "url-mask", [U.format("https://a.example/")], "unknown-block-type"),
]


@pytest.mark.parametrize(
    ("block_type", "children", "reason"),
    [pytest.param(*case[1:], id=case[0]) for case in ISSUE_CASES],
)
def test_record_problem_is_a_located_issue(block_type: str, children: list[str], reason: str) -> None:
    good = record("domain", D.format("good.example"), record_id=1)
    parsed = parse(document(good, record(block_type, *children, record_id=2), good))
    assert parsed.issue_counts[reason] == 1
    assert [(i.where, i.reason) for i in parsed.issues] == [("dump.xml:4", reason)]
    assert b"good.example" in parsed.keys  # the rest still loads
    assert parsed.units == 3


def test_unknown_block_type_is_read_by_its_urls() -> None:
    parsed = parse(document(record("url-mask", U.format("https://a.example/"))))
    assert rules(parsed) == {("a.example", Kind.EXACT)}


@pytest.mark.parametrize("raw_id", ["", "abc", "-5", "0", "99999999999"])
def test_bad_record_id_is_an_issue_and_record_id_none(raw_id: str) -> None:
    text = record("domain", D.format("a.example")).replace('id="1000"', f'id="{raw_id}"')
    parsed = parse(document(text))
    assert parsed.issue_counts == Counter({"bad-id": 1})
    assert parsed.origin(parsed.refs[0]).record_id is None
    assert parsed.keys == [b"a.example"]


def test_several_files_number_lines_per_file() -> None:
    first = document(record("domain", D.format("a.example"), record_id=1))
    second = document(record("domain", D.format("x.example"), D.format("y.example"), record_id=2))
    parsed = rknxml.parse([Input("one.xml", io.BytesIO(first)), Input("two.xml", io.BytesIO(second))])
    wheres = [parsed.origin(r).where for r in parsed.refs]
    assert wheres == ["one.xml:3", "two.xml:3", "two.xml:3"]
    assert parsed.units == 2


@pytest.mark.parametrize("chunk", [1, 7, 1 << 20])
def test_chunk_size_does_not_change_the_result(chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    whole = parse(DUMP, http_urls="block-host")
    monkeypatch.setattr(rknxml, "CHUNK", chunk)
    parsed = parse(DUMP, http_urls="block-host")
    assert parsed.keys == whole.keys
    assert parsed.counts == whole.counts
    wheres = [parsed.origin(r).where for r in parsed.refs]
    assert wheres == ["dump.xml:3", "dump.xml:4", "dump.xml:5"]


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
    outcome(b"PK\x03\x04" + data)
    outcome(HEAD.encode("cp1251") + data)


ZIPPED = zipped({"dump.xml": DUMP, "dump.xml.sig": b"sig"})


@settings(max_examples=200, deadline=None)
@given(st.integers(0, len(DUMP)), st.integers(0, len(ZIPPED)))
def test_truncated_fixture_parses_or_raises_list_format_error(cut: int, zcut: int) -> None:
    outcome(DUMP[:cut])
    outcome(ZIPPED[:zcut])


@settings(max_examples=200, deadline=None)
@given(st.integers(0, len(ZIPPED) - 1), st.integers(0, 255))
def test_damaged_zip_parses_or_raises_list_format_error(pos: int, byte: int) -> None:
    data = bytearray(ZIPPED)
    data[pos] = byte
    outcome(bytes(data))
