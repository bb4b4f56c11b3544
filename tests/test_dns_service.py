"""The DNS service end to end: blockgate as a real process, Knot DNS as its real upstream,
dig and kdig as real clients (and raw sockets where the exact bytes matter).

Names used (tests/fixtures/dns/): the example.test zone is Knot's; the block-*.txt lists
give one name per action; the registry samples in tests/fixtures/lists/ block
standaards.com (rkn-xml record 1676124) and 0-hydra.net / linkedin.com (zi-csv).
"""

from __future__ import annotations

import random
import struct
from collections.abc import Iterator

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from conftest import (
    Blockgate,
    DigResult,
    Knot,
    check_stopped,
    dig,
    start_blockgate,
)

# What the shared daemon is configured with, checked in its answers.
BLOCK_TTL = 123
SOA_MNAME = "ns1.blockgate.test."
SOA_RNAME = "hostmaster.isp.test."
SINK_A = ["192.0.2.99", "192.0.2.98"]
SINK_AAAA = ["2001:db8::99"]
ALLOWED_CLIENTS = ["127.0.0.1/32", "::1/128"]
REFUSED_SOURCE = "127.0.0.2"  # outside allow_clients
BYPASS_SOURCE = "127.0.0.3"  # in bypass_clients

SOA_RDATA = f"{SOA_MNAME} {SOA_RNAME} 1 3600 600 86400 {BLOCK_TTL}"

# RFC 8914 §4 info-codes as dig names them
CENSORED, BLOCKED, FILTERED, PROHIBITED = 16, 15, 17, 18
NO_REACHABLE_AUTHORITY, NETWORK_ERROR = 22, 23


@pytest.fixture(scope="module")
def bg(tmp_path_factory: pytest.TempPathFactory, knot: Knot) -> Iterator[Blockgate]:
    """The shared daemon: every action, both registry formats, IPv4 and IPv6, one worker."""
    daemon = start_blockgate(
        tmp_path_factory.mktemp("bg"), [knot.upstream], workers=1, ipv6=True,
        block_ttl=BLOCK_TTL, soa_mname=SOA_MNAME, soa_rname=SOA_RNAME,
        sinkhole_a=SINK_A, sinkhole_aaaa=SINK_AAAA,
        allow_clients=ALLOWED_CLIENTS, bypass_clients=[f"{BYPASS_SOURCE}/32"])
    yield daemon
    check_stopped(daemon)


@pytest.fixture(scope="module")
def bg2(tmp_path_factory: pytest.TempPathFactory, knot: Knot) -> Iterator[Blockgate]:
    """Two workers sharing the port (SO_REUSEPORT): the malformed-packet and sharing tests."""
    daemon = start_blockgate(tmp_path_factory.mktemp("bg2"), [knot.upstream], workers=2)
    yield daemon
    check_stopped(daemon)


# -- wire helpers ---------------------------------------------------------------------------


def wire_name(name: str) -> bytes:
    return b"".join(bytes((len(p),)) + p.encode() for p in name.rstrip(".").split(".") if p) + b"\x00"


def header(qid: int, flags: int = 0x0100, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return struct.pack("!6H", qid, flags, qd, an, ns, ar)


def question(name: str, qtype: int = 1) -> bytes:
    return wire_name(name) + struct.pack("!HH", qtype, 1)


def make_query(name: str, rdtype: str = "A", *, qid: int | None = None, edns: bool = True,
               rd: bool = True, cd: bool = False, do: bool = False,
               options: list[dns.edns.Option] | None = None) -> bytes:
    q = dns.message.make_query(name, rdtype, use_edns=0 if edns else False, want_dnssec=do,
                               options=options)
    q.id = random.randrange(1 << 16) if qid is None else qid
    if not rd:
        q.flags &= ~dns.flags.RD
    if cd:
        q.flags |= dns.flags.CD
    return q.to_wire()


def question_end(data: bytes) -> int:
    """Offset past the (uncompressed) question of a query we built."""
    i = 12
    while data[i]:
        i += data[i] + 1
    return i + 5


def rcode(data: bytes) -> int:
    return data[3] & 0x0F


def parse(data: bytes) -> dns.message.Message:
    return dns.message.from_wire(data)


def ede_of(msg: dns.message.Message) -> list[tuple[int, str | None]]:
    return [(o.code, o.text) for o in msg.options if isinstance(o, dns.edns.EDEOption)]


def sections_equal(a: DigResult, b: DigResult) -> None:
    assert (a.status, a.flags, a.answer, a.authority) == (b.status, b.flags, b.answer, b.authority)


# -- block actions ---------------------------------------------------------------------------


@pytest.mark.parametrize("edns", [True, False], ids=["edns", "noedns"])
def test_nxdomain_has_configured_soa(bg: Blockgate, edns: bool) -> None:
    r = dig(bg.addr, "nx.blocked.test", *([] if edns else ["+noedns"]))
    assert r.status == "NXDOMAIN"
    assert {"qr", "rd", "ra"} <= r.flags and "aa" not in r.flags
    assert r.answer == []
    soa = r.authority
    assert [(x.name, x.ttl, x.rtype) for x in soa] == [("nx.blocked.test.", BLOCK_TTL, "SOA")]
    assert soa[0].rdata == SOA_RDATA  # MNAME, RNAME as configured, MINIMUM = block_ttl


def test_nodata_is_noerror_with_soa(bg: Blockgate) -> None:
    r = dig(bg.addr, "nodata.blocked.test", "AAAA")
    assert r.status == "NOERROR"
    assert r.answer == [] and r.counts["ANSWER"] == 0
    assert [(x.name, x.ttl, x.rtype, x.rdata) for x in r.authority] == [
        ("nodata.blocked.test.", BLOCK_TTL, "SOA", SOA_RDATA)]


def test_refused_action_has_no_records(bg: Blockgate) -> None:
    r = dig(bg.addr, "refused.blocked.test")
    assert r.status == "REFUSED"
    assert r.counts == {"QUERY": 1, "ANSWER": 0, "AUTHORITY": 0, "ADDITIONAL": 1}
    assert [e.code for e in r.ede] == [BLOCKED]


@pytest.mark.parametrize(("qtype", "want"), [
    ("A", {(a, BLOCK_TTL) for a in SINK_A}),
    ("AAAA", {(a, BLOCK_TTL) for a in SINK_AAAA}),
], ids=["A", "AAAA"])
def test_sinkhole_answers_configured_addresses(bg: Blockgate, qtype: str, want: set[tuple[str, int]]) -> None:
    r = dig(bg.addr, "sinkhole.blocked.test", qtype)
    assert r.status == "NOERROR" and "aa" not in r.flags
    assert all(x.name == "sinkhole.blocked.test." and x.rtype == qtype for x in r.answer)
    assert {(x.rdata, x.ttl) for x in r.answer} == want
    assert len(r.answer) == len(want)


def test_sinkhole_other_type_is_nodata(bg: Blockgate) -> None:
    r = dig(bg.addr, "sinkhole.blocked.test", "MX")
    assert r.status == "NOERROR" and r.answer == []
    assert [(x.rtype, x.rdata) for x in r.authority] == [("SOA", SOA_RDATA)]


def test_drop_gets_no_answer(bg: Blockgate) -> None:
    r = dig(bg.addr, "drop.blocked.test", "+tries=1", "+time=1")
    assert not r.answered
    assert r.returncode == 9 and "timed out" in r.stdout


def test_tcp_only_over_udp_is_empty_with_tc(bg: Blockgate) -> None:
    r = dig(bg.addr, "tcponly.example.test", "+notcp", "+ignore")
    assert r.status == "NOERROR"
    assert "tc" in r.flags
    assert r.counts["ANSWER"] == 0 and r.counts["AUTHORITY"] == 0 and r.answer == []


def test_tcp_only_over_tcp_is_forwarded(bg: Blockgate, knot: Knot) -> None:
    r = dig(bg.addr, "tcponly.example.test", "+tcp")
    direct = dig(knot.addr, "tcponly.example.test", "+tcp")
    assert r.status == "NOERROR" and "aa" in r.flags  # Knot's answer, not one we made
    assert r.records() == {("tcponly.example.test.", 3600, "A", "192.0.2.30")}
    sections_equal(r, direct)


def test_tcp_only_udp_then_dig_retries_over_tcp(bg: Blockgate) -> None:
    """Without +ignore dig follows TC=1 over TCP, as a stub resolver would."""
    r = dig(bg.addr, "tcponly.example.test", "+notcp")
    assert r.status == "NOERROR" and "tc" not in r.flags
    assert r.records() == {("tcponly.example.test.", 3600, "A", "192.0.2.30")}
