"""DNS wire code against dnspython (the oracle), and fed random and mutated bytes.

``parse_query`` must agree with dnspython on every query dnspython reads as one question,
and raise only ``DnsFormatError`` on everything else; the answers ``Synth`` builds must be
messages dnspython reads back with the query's id, question (case kept) and flags.
"""

from __future__ import annotations

import contextlib
import struct

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from blockgate.dnswire import (
    DnsFormatError,
    Ede,
    QType,
    Rcode,
    Synth,
    _parse_query,
    answer_targets,
    error_response,
    local_records,
    opt_record,
    parse_query,
    query_edns,
    question_end,
    read_name,
    skip_name,
)

# -- generators ------------------------------------------------------------------------------

# Label bytes: mostly name characters, sometimes anything (0x20 case, digits, '-', '_',
# bytes that equal label lengths, high bytes), so the fast path's translate trick is tested.
_NAME_BYTES = st.sampled_from(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")
label = st.one_of(
    st.lists(_NAME_BYTES, min_size=1, max_size=63).map(bytes),
    st.binary(min_size=1, max_size=63),
)
labels = st.lists(label, min_size=0, max_size=8).filter(lambda ls: sum(len(x) + 1 for x in ls) < 255)


def wire(labs: list[bytes]) -> bytes:
    return b"".join(bytes((len(x),)) + x for x in labs) + b"\x00"


def query_bytes(labs: list[bytes], qtype: int = 1, qid: int = 0x4242, flags: int = 0x0100,
                extra: bytes = b"", ar: int = 0) -> bytes:
    return struct.pack("!6H", qid, flags, 1, 0, 0, ar) + wire(labs) + struct.pack("!HH", qtype, 1) + extra


def oracle(data: bytes) -> tuple[bytes, int] | None:
    """dnspython's reading of a query: (lowercased dotted key, qtype), or None."""
    try:
        m = dns.message.from_wire(data, ignore_trailing=True)
    except (dns.exception.DNSException, ValueError, UnicodeError):
        return None
    if m.flags & dns.flags.QR or m.opcode() != dns.opcode.QUERY or len(m.question) != 1:
        return None
    name = m.question[0].name
    return b".".join(name.labels[:-1]).lower(), m.question[0].rdtype


# -- parse_query ---------------------------------------------------------------------------------


@given(labels, st.integers(0, 65535))
@example([b"www", b"Example", b"COM"], 1)
@example([], 2)  # the root
@example([b"a" * 63] * 3 + [b"b" * 61], 28)  # 255 octets exactly
@example([b"x\x03y", b"com"], 1)  # a byte equal to a label length inside a label
@example([b"4", b"3", b"2", b"1", b"in-addr", b"arpa"], 12)  # digit-long labels
def test_parse_query_matches_dnspython(labs: list[bytes], qtype: int) -> None:
    data = query_bytes(labs, qtype)
    if any(46 in x for x in labs):  # a '.' byte inside a label cannot be a dotted key
        with pytest.raises(DnsFormatError) as err:
            parse_query(data)
        assert err.value.reason == "dot-in-label"
        return
    key, qt, qend = parse_query(data)
    assert (key, qt) == oracle(data)
    assert qend == len(data)
    assert key == b".".join(labs).lower()


@given(labels, st.integers(0, 65535), st.binary(max_size=40))
def test_fast_path_equals_slow_path(labs: list[bytes], qtype: int, tail: bytes) -> None:
    data = query_bytes(labs, qtype, extra=tail)
    try:
        slow = _parse_query(data)
    except DnsFormatError as exc:
        with pytest.raises(DnsFormatError) as err:
            parse_query(data)
        assert err.value.reason == exc.reason
        return
    assert parse_query(data) == slow


@pytest.mark.parametrize(("case", "data", "reason"), [
    ("short", b"\x00\x01\x01\x00\x00", "short"),
    ("response", struct.pack("!6H", 1, 0x8180, 1, 0, 0, 0) + wire([b"a"]) + b"\x00\x01\x00\x01", "qr"),
    ("opcode-notify", struct.pack("!6H", 1, 0x2000, 1, 0, 0, 0) + b"\x00\x00\x06\x00\x01", "opcode"),
    ("opcode-update", struct.pack("!6H", 1, 0x2800, 1, 0, 0, 0) + b"\x00\x00\x06\x00\x01", "opcode"),
    ("qdcount-0", struct.pack("!6H", 1, 0x0100, 0, 0, 0, 0), "qdcount"),
    ("qdcount-2", struct.pack("!6H", 1, 0x0100, 2, 0, 0, 0) + (wire([b"a"]) + b"\x00\x01\x00\x01") * 2,
     "qdcount"),
    ("qdcount-256", struct.pack("!6H", 1, 0x0100, 256, 0, 0, 0) + wire([b"a"]) + b"\x00\x01\x00\x01",
     "qdcount"),
    ("pointer", struct.pack("!6H", 1, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01", "pointer"),
    ("label-type-01",
     struct.pack("!6H", 1, 0x0100, 1, 0, 0, 0) + b"\x41" + b"a" * 65 + b"\x00\x00\x01\x00\x01", "label-type"),
    ("name-256", query_bytes([b"a" * 63] * 4), "name-too-long"),
    ("no-root", struct.pack("!6H", 1, 0x0100, 1, 0, 0, 0) + b"\x03www", "truncated"),
    ("no-qclass", struct.pack("!6H", 1, 0x0100, 1, 0, 0, 0) + wire([b"www"]) + b"\x00\x01", "truncated"),
    ("label-past-end", struct.pack("!6H", 1, 0x0100, 1, 0, 0, 0) + b"\x3fabc", "truncated"),
    ("dot-in-label", query_bytes([b"a.b", b"c"]), "dot-in-label"),
], ids=lambda v: v if isinstance(v, str) and len(v) < 20 else None)
def test_parse_query_refuses(case: str, data: bytes, reason: str) -> None:
    with pytest.raises(DnsFormatError) as err:
        parse_query(data)
    assert err.value.reason == reason, case


def test_parse_query_keeps_what_dnspython_makes() -> None:
    """Queries as real stub resolvers build them: EDNS, cookies, DO, mixed case."""
    opts = [dns.edns.GenericOption(dns.edns.COOKIE, b"\x01" * 8), dns.edns.NSIDOption(b"")]
    for name, rdtype in [("WwW.ExAmPlE.cOm.", "A"), ("_dmarc.example.org.", "TXT"),
                         ("xn--e1afmkfd.xn--p1ai.", "HTTPS"), ("1.0.0.127.in-addr.arpa.", "PTR")]:
        q = dns.message.make_query(name, rdtype, use_edns=0, want_dnssec=True, options=opts)
        data = q.to_wire()
        key, qtype, qend = parse_query(data)
        assert key == name.rstrip(".").lower().encode()
        assert qtype == dns.rdatatype.from_text(rdtype)
        assert query_edns(data, qend) == (True, True)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_format_error(data: bytes) -> None:
    try:
        key, _qtype, qend = parse_query(data)
    except DnsFormatError:
        return
    assert qend <= len(data)
    want = oracle(data)
    if want is not None:  # whatever we accept and dnspython reads, we read the same way
        assert key == want[0]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    labs = draw(labels)
    data = bytearray(query_bytes(labs, draw(st.integers(0, 65535)), ar=draw(st.integers(0, 2)),
                                 extra=draw(st.sampled_from([b"", bytes(opt_record(True))]))))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "set"]))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            del data[i:]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=4))
        else:
            data[i] = draw(st.sampled_from([0, 0x3F, 0x40, 0xC0, 0xFF, 1]))
    return bytes(data)


@settings(max_examples=600)
@given(mutated())
def test_mutated_queries_raise_only_format_error(data: bytes) -> None:
    try:
        key, _qtype, qend = parse_query(data)
    except DnsFormatError:
        return
    with contextlib.suppress(DnsFormatError):
        query_edns(data, qend)
    want = oracle(data)
    if want is not None:
        assert key == want[0]


# -- EDNS --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("edns", "do", "want"), [
    (False, False, (False, False)), (True, False, (True, False)), (True, True, (True, True))])
def test_query_edns(edns: bool, do: bool, want: tuple[bool, bool]) -> None:
    q = dns.message.make_query("a.example", "A", use_edns=0 if edns else False, want_dnssec=do)
    data = q.to_wire()
    assert query_edns(data, parse_query(data)[2]) == want


def test_query_edns_after_other_records() -> None:
    """An OPT after an unexpected additional record (TSIG-like junk) is still found."""
    q = dns.message.make_query("a.example", "A", use_edns=0, want_dnssec=True)
    q.additional.append(dns.rrset.from_text("x.example.", 0, "IN", "A", "192.0.2.1"))
    data = q.to_wire()
    assert query_edns(data, parse_query(data)[2]) == (True, True)


@pytest.mark.parametrize(("ede", "text"), [(Ede.CENSORED, b"blockgate: registry; record 7"),
                                           (Ede.BLOCKED, b""), (None, b"")])
def test_opt_record_is_read_by_dnspython(ede: int | None, text: bytes) -> None:
    q = dns.message.make_query("a.example", "A", use_edns=0)
    data = q.to_wire()
    synth = Synth(60, "ns.invalid", "host.invalid", ["192.0.2.1"], ["2001:db8::1"])
    resp = synth.negative(data, parse_query(data)[2], Rcode.NXDOMAIN, opt_record(True, ede, text))
    m = dns.message.from_wire(resp)
    assert m.edns == 0 and m.ednsflags & dns.flags.DO and m.payload == 1232
    edes = [(o.code, o.text) for o in m.options if isinstance(o, dns.edns.EDEOption)]
    assert edes == ([] if ede is None else [(ede, text.decode() or None)])


# -- answers we make ---------------------------------------------------------------------------

SYNTH = Synth(123, "ns1.blockgate.test.", "hostmaster.isp.test.", ["192.0.2.99", "192.0.2.98"],
              ["2001:db8::99"])


def _query(name: str = "NX.Blocked.Test", rdtype: str = "A", flags: int = 0x0110) -> bytes:
    q = dns.message.make_query(name, rdtype, use_edns=False)
    q.id = 0xBEEF
    q.flags = dns.flags.Flag(flags)
    return q.to_wire()


def _check_common(query: bytes, resp: bytes, rcode: int) -> dns.message.Message:
    m = dns.message.from_wire(resp)
    qend = question_end(query)
    assert resp[:2] == query[:2] and resp[12:qend] == query[12:qend]
    assert m.flags & dns.flags.QR and m.flags & dns.flags.RD and m.flags & dns.flags.CD
    assert not m.flags & dns.flags.AA
    assert m.rcode() == rcode
    return m


@pytest.mark.parametrize("rcode", [Rcode.NXDOMAIN, Rcode.NOERROR], ids=["nxdomain", "nodata"])
def test_negative_answer_has_soa(rcode: int) -> None:
    q = _query()
    m = _check_common(q, SYNTH.negative(q, parse_query(q)[2], rcode, b""), rcode)
    assert m.answer == []
    (soa,) = m.authority
    assert soa.rdtype == dns.rdatatype.SOA and soa.ttl == 123
    assert soa.name == dns.name.from_text("nx.blocked.test")
    assert soa[0].mname == dns.name.from_text("ns1.blockgate.test") and soa[0].minimum == 123


@pytest.mark.parametrize(("rdtype", "want"), [
    ("A", {"192.0.2.99", "192.0.2.98"}), ("AAAA", {"2001:db8::99"}), ("MX", set()), ("HTTPS", set())])
def test_sinkhole_answer(rdtype: str, want: set[str]) -> None:
    q = _query("sink.test", rdtype)
    qtype = dns.rdatatype.from_text(rdtype)
    m = _check_common(q, SYNTH.sinkhole(q, parse_query(q)[2], qtype, b""), Rcode.NOERROR)
    got = {r.to_text() for rr in m.answer for r in rr}
    assert got == want
    assert all(rr.ttl == 123 for rr in m.answer)
    assert len(m.authority) == (0 if want else 1)


def test_bare_answers() -> None:
    q = _query()
    qend = parse_query(q)[2]
    m = _check_common(q, SYNTH.bare(q, qend, Rcode.REFUSED, b""), Rcode.REFUSED)
    assert m.answer == m.authority == []
    tc = SYNTH.bare(q, qend, Rcode.NOERROR, b"", tc=True)
    assert dns.message.from_wire(tc).flags & dns.flags.TC


def test_error_response_is_header_only() -> None:
    q = _query()
    resp = error_response(q, Rcode.FORMERR)
    assert resp is not None and len(resp) == 12
    m = dns.message.from_wire(resp)
    assert m.id == 0xBEEF and m.rcode() == dns.rcode.FORMERR and m.question == []
    assert error_response(b"\x00\x01", Rcode.FORMERR) is None


@pytest.mark.parametrize(("payload", "rdtype", "want"), [
    ((("A", "10.0.0.1"), ("AAAA", "fd00::1")), "A", ["10.0.0.1"]),
    ((("A", "10.0.0.1"), ("AAAA", "fd00::1")), "AAAA", ["fd00::1"]),
    ((("CNAME", "walled.garden.test."),), "AAAA", ["walled.garden.test."]),
    ((("TXT", '"blocked by order"'),), "TXT", ['"blocked by order"']),
    ((("MX", "10 mail.test."),), "MX", ["10 mail.test."]),
    ((("A", "10.0.0.1"),), "MX", []),
])
def test_local_records(payload: tuple[tuple[str, str], ...], rdtype: str, want: list[str]) -> None:
    q = _query("local.test", rdtype)
    qtype = dns.rdatatype.from_text(rdtype)
    rrs, n = local_records(payload, qtype, 60)
    m = _check_common(q, SYNTH.records(q, parse_query(q)[2], rrs, n, b""), Rcode.NOERROR)
    assert [r.to_text() for rr in m.answer for r in rr] == want


# -- names in answers -------------------------------------------------------------------------


def _response(chain: list[tuple[str, str, str]], qname: str = "alias.example.test") -> bytes:
    q = dns.message.make_query(qname, "A")
    r = dns.message.make_response(q)
    for owner, rdtype, target in chain:
        r.answer.append(dns.rrset.from_text(owner, 300, "IN", rdtype, target))
    return r.to_wire()  # dnspython compresses names: pointers are exercised


@pytest.mark.parametrize(("chain", "want"), [
    ([("alias.example.test.", "CNAME", "hop.example.test."),
      ("hop.example.test.", "CNAME", "CDN.Blocked.Test."),
      ("cdn.blocked.test.", "A", "192.0.2.1")], [b"hop.example.test", b"cdn.blocked.test"]),
    ([("example.test.", "DNAME", "blocked.test."),
      ("alias.example.test.", "CNAME", "alias.blocked.test.")], [b"blocked.test", b"alias.blocked.test"]),
    ([("alias.example.test.", "A", "192.0.2.1")], []),
    ([], []),
], ids=["cname-chain", "dname", "plain", "empty"])
def test_answer_targets(chain: list[tuple[str, str, str]], want: list[bytes]) -> None:
    data = _response(chain)
    assert answer_targets(data, question_end(data)) == want


@given(st.lists(labels, min_size=1, max_size=4))
def test_read_name_matches_dnspython(names: list[list[bytes]]) -> None:
    """Names written by dnspython with compression, read back at each owner offset."""
    names = [n for n in names if all(46 not in x for x in n)]
    assume(names)
    r = dns.message.make_response(dns.message.make_query(dns.name.Name([*names[0], b""]), "A"))
    for i, labs in enumerate(names):
        r.answer.append(dns.rrset.from_rdata(dns.name.Name([*labs, b""]), 60,
                                             dns.rdata.from_text("IN", "A", f"192.0.2.{i}")))
    data = r.to_wire()
    off = question_end(data)
    got = []
    for _ in names:
        got.append(read_name(data, off))
        off = skip_name(data, off) + 10 + 4
    assert got == [b".".join(n).lower() for n in names]


@pytest.mark.parametrize(("case", "tail", "reason"), [
    ("loop", b"\xc0\x0c", "pointer-loop"),
    ("self-loop", None, "pointer-loop"),
    ("cut-pointer", b"\xc0", "truncated"),
    ("past-end", b"\xc0\xff", "truncated"),
    ("label-type", b"\x80", "label-type"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_read_name_refuses(case: str, tail: bytes | None, reason: str) -> None:
    base = bytearray(struct.pack("!6H", 1, 0x8180, 0, 0, 0, 0))
    if tail is None:  # a pointer to itself
        base += b"\xc0\x0c"
    else:
        base += tail
    with pytest.raises(DnsFormatError) as err:
        read_name(bytes(base), 12)
    assert err.value.reason == reason, case


def test_read_name_too_long_through_pointers() -> None:
    """Pointers may build a name longer than 255 octets: refused."""
    part = b"\x3f" + b"a" * 63
    data = struct.pack("!6H", 1, 0x8180, 0, 0, 0, 0) + part + b"\x00" + part * 3 + b"\xc0\x0c"
    with pytest.raises(DnsFormatError) as err:
        read_name(data, 12 + 65)
    assert err.value.reason == "name-too-long"


@settings(max_examples=400)
@given(st.binary(max_size=200))
def test_answer_scanning_raises_only_format_error(tail: bytes) -> None:
    data = _response([("alias.example.test.", "CNAME", "x.test.")])
    qend = question_end(data)
    for blob in (data[:qend] + tail, data[: max(qend, len(data) - len(tail) % 20)]):
        with contextlib.suppress(DnsFormatError):
            answer_targets(blob, qend)


def test_qtype_names_are_the_wire_values() -> None:
    for t in QType:
        assert dns.rdatatype.from_text(t.name) == t.value
