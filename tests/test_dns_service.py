"""The DNS service end to end: blockgate as a real process, Knot DNS as its real upstream,
dig and kdig as real clients (and raw sockets where the exact bytes matter).

Names used (tests/fixtures/dns/): the example.test zone is Knot's; the block-*.txt lists
give one name per action; the registry samples in tests/fixtures/lists/ block
standaards.com (rkn-xml record 1676124) and 0-hydra.net / linkedin.com (zi-csv).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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
    KNOT_NSID,
    STOP_TIMEOUT,
    Blockgate,
    DigResult,
    Knot,
    alive,
    check_stopped,
    dig,
    frame,
    free_port,
    kdig,
    kdig_text,
    read_frame,
    recv_until,
    socket_inodes,
    start_blockgate,
    tcp_connect,
    tcp_exchange,
    udp_exchange,
    udp_socket,
    wait_for,
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
    assert {"qr", "rd"} <= r.flags and "aa" not in r.flags
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


# -- EDE, flags, the question as sent --------------------------------------------------------


@pytest.mark.parametrize(("name", "code", "purpose", "text"), [
    ("standaards.com", CENSORED, "Censored", "blockgate: registry; record 1676124; decision "),
    ("nx.blocked.test", BLOCKED, "Blocked", "blockgate: local-nxdomain"),
    ("filtered.blocked.test", FILTERED, "Filtered", "blockgate: local-filtered"),
], ids=["registry-censored", "local-blocked", "filtered"])
def test_block_answers_carry_ede(bg: Blockgate, name: str, code: int, purpose: str, text: str) -> None:
    r = dig(bg.addr, name)
    assert r.status == "NXDOMAIN" and r.opt
    assert [(e.code, e.purpose) for e in r.ede] == [(code, purpose)]
    assert r.ede[0].text.startswith(text)


def test_registry_ede_names_record_and_decision(bg: Blockgate) -> None:
    """The registry record's decision (number, date, authority) is in the EDE text, as kdig shows it."""
    text = kdig_text(bg.addr, "standaards.com", "+edns")
    line = next(ln for ln in text.splitlines() if "EDE" in ln)
    assert "16 (Censored)" in line
    assert "record 1676124" in line and "2а-4235/2019" in line and "2019-06-25" in line


def test_zi_csv_row_has_its_decision(bg: Blockgate) -> None:
    r = dig(bg.addr, "0-hydra.net")
    assert r.status == "NXDOMAIN" and [e.code for e in r.ede] == [CENSORED]
    assert "blockgate: zi" in r.ede[0].text and "8922" in r.ede[0].text


def test_no_opt_in_block_answer_without_edns(bg: Blockgate) -> None:
    r = dig(bg.addr, "standaards.com", "+noedns")
    assert r.status == "NXDOMAIN" and not r.opt and r.ede == [] and r.counts["ADDITIONAL"] == 0


def test_do_bit_is_echoed_in_our_opt(bg: Blockgate) -> None:
    r = dig(bg.addr, "nx.blocked.test", "+dnssec")
    assert r.opt and "do" in r.edns_flags
    r = dig(bg.addr, "nx.blocked.test", "+nodnssec")
    assert r.opt and "do" not in r.edns_flags


@pytest.mark.parametrize("name", ["nx.blocked.test", "www.example.test"], ids=["blocked", "forwarded"])
@pytest.mark.parametrize(("rd", "cd"), [(True, False), (False, False), (True, True), (False, True)],
                         ids=["rd", "nord", "rd-cd", "cd"])
def test_answer_keeps_id_question_and_flags(bg: Blockgate, knot: Knot, name: str, rd: bool,
                                            cd: bool) -> None:
    """The id, the question byte for byte (0x20 mixed case), RD and CD as asked; RA as the
    upstream sets it (Knot is authoritative: no RA), in forwarded and in our own answers."""
    dig(bg.addr, "www.example.test")  # at least one upstream answer seen
    mixed = "".join(c.upper() if i % 2 else c for i, c in enumerate(name))
    query = make_query(mixed, "A", rd=rd, cd=cd, edns=False)
    resp = udp_exchange(bg.addr, query)
    assert resp is not None
    assert resp[:2] == query[:2]
    qend = question_end(query)
    assert resp[12:qend] == query[12:qend]  # the name exactly as sent, case included
    msg = parse(resp)
    knots = udp_exchange(knot.addr, query)
    assert knots is not None
    assert bool(msg.flags & dns.flags.QR)
    if "blocked" in name:  # our answer: RD and CD as asked, RA as Knot's answers have it
        assert bool(msg.flags & dns.flags.RD) == rd and bool(msg.flags & dns.flags.CD) == cd
        assert msg.flags & dns.flags.RA == parse(knots).flags & dns.flags.RA
        assert msg.rcode() == dns.rcode.NXDOMAIN
    else:  # Knot's answer, unchanged but the id (Knot clears CD: it is authoritative)
        assert resp[2:] == knots[2:]


def test_ra_before_any_upstream_answer(running_blockgate: Callable[..., Blockgate]) -> None:
    """Until an upstream has answered, our answers say recursion is available (RA=1)."""
    daemon = running_blockgate()
    r = dig(daemon.addr, "nx.blocked.test", "+noedns")
    assert r.status == "NXDOMAIN" and "ra" in r.flags
    assert "ra" not in dig(daemon.addr, "www.example.test").flags  # Knot's answer: no RA
    assert "ra" not in dig(daemon.addr, "nx.blocked.test", "+noedns").flags
    assert "ra" not in dig(daemon.addr, "refused.blocked.test").flags


def test_block_is_case_insensitive(bg: Blockgate) -> None:
    assert dig(bg.addr, "NX.BLOCKED.TEST").status == "NXDOMAIN"
    assert dig(bg.addr, "StAnDaArDs.CoM.").status == "NXDOMAIN"


def test_subtree_rule_blocks_below(bg: Blockgate) -> None:
    """zi-csv's `*.linkedin.com` mask is a subtree: the name and everything below it."""
    for name in ("linkedin.com", "www.linkedin.com", "a.b.linkedin.com"):
        assert dig(bg.addr, name).status == "NXDOMAIN", name


# -- forwarding ------------------------------------------------------------------------------


def test_allowed_name_is_knots_answer(bg: Blockgate, knot: Knot) -> None:
    for qtype in ("A", "AAAA", "MX"):
        r = dig(bg.addr, "www.example.test", qtype)
        direct = dig(knot.addr, "www.example.test", qtype)
        assert r.status == "NOERROR" and r.answer
        sections_equal(r, direct)


def test_forwarded_answer_is_upstreams_bytes_but_the_id(bg: Blockgate, knot: Knot) -> None:
    query = make_query("www.example.test", "A", qid=0x1234)
    via = udp_exchange(bg.addr, query)
    direct = udp_exchange(knot.addr, query)
    assert via is not None and direct is not None
    assert via[:2] == b"\x12\x34"
    assert via[2:] == direct[2:]



def test_a_burst_and_a_trickle_are_all_answered(bg: Blockgate) -> None:
    """A socket is read once per wake-up when it is quiet and drained when it is busy: 400
    queries sent back to back (blocked and forwarded, so the upstream socket bursts too) and
    then 20 sent 5 ms apart all get their answer."""
    names = ("nx.blocked.test", "www.example.test")
    with udp_socket(bg.addr) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.settimeout(3.0)
        for i in range(400):
            s.send(make_query(names[i % 2], "A", qid=i, edns=False))
        ids = set()
        with contextlib.suppress(TimeoutError):
            while len(ids) < 400:
                got = s.recv(4096)
                qid = int.from_bytes(got[:2], "big")
                ids.add(qid)
                assert rcode(got) == (3 if qid % 2 == 0 else 0), qid  # NXDOMAIN, NOERROR
        assert ids == set(range(400))
        for i in range(20):
            s.send(make_query(names[i % 2], "A", qid=1000 + i, edns=False))
            got = s.recv(4096)
            assert int.from_bytes(got[:2], "big") == 1000 + i
            time.sleep(0.005)

def test_edns_passes_through(bg: Blockgate) -> None:
    """The client's OPT reaches the upstream: NSID asked, Knot's NSID comes back; DO kept."""
    r = dig(bg.addr, "www.example.test", "+nsid", "+dnssec", "+bufsize=1400")
    assert r.status == "NOERROR" and r.opt
    assert r.nsid == KNOT_NSID
    assert "do" in r.edns_flags


def test_cookie_passes_through(bg: Blockgate, knot: Knot) -> None:
    """A client cookie goes to the upstream; its answer (with or without a server cookie) comes back."""
    opt = dns.edns.GenericOption(dns.edns.COOKIE, bytes(range(8)))
    query = make_query("www.example.test", "A", options=[opt])
    via = udp_exchange(bg.addr, query)
    direct = udp_exchange(knot.addr, query)
    assert via is not None and direct is not None
    assert parse(via).options == parse(direct).options


def test_udp_size_reaches_upstream(bg: Blockgate) -> None:
    """big.example.test (~2 KB of TXT) fits the client's 4096 buffer: one UDP answer, no TC."""
    r = dig(bg.addr, "big.example.test", "TXT", "+bufsize=4096", "+ignore")
    assert r.status == "NOERROR" and "tc" not in r.flags and len(r.answer) == 8


def test_truncated_upstream_answer_is_retried_over_tcp(bg: Blockgate) -> None:
    """Without EDNS Knot truncates; blockgate asks it again over TCP; the full answer does not
    fit the client's 512 octets either, so the client gets TC=1 and dig goes to TCP itself."""
    r = dig(bg.addr, "big.example.test", "TXT", "+noedns", "+ignore")
    assert "tc" in r.flags and r.answer == []
    r = dig(bg.addr, "big.example.test", "TXT", "+noedns")
    assert r.status == "NOERROR" and len(r.answer) == 8


def test_nonexistent_name_is_upstreams_nxdomain(bg: Blockgate, knot: Knot) -> None:
    r = dig(bg.addr, "nope.example.test")
    assert r.status == "NXDOMAIN"
    sections_equal(r, dig(knot.addr, "nope.example.test"))


# -- CNAME / DNAME inspection ------------------------------------------------------------------


@pytest.mark.parametrize(("name", "via"), [
    ("alias.example.test", "CNAME chain alias -> hop -> cdn.blocked.test"),
    ("cdn.legacy.example.test", "DNAME legacy.example.test -> blocked.test"),
], ids=["cname", "dname"])
def test_chain_to_blocked_name_is_blocked(bg: Blockgate, knot: Knot, name: str, via: str) -> None:
    direct = dig(knot.addr, name)
    assert any(r.rtype in ("CNAME", "DNAME") for r in direct.answer), via  # Knot does chain
    r = dig(bg.addr, name)
    assert r.status == "NXDOMAIN", via
    assert r.answer == [] and [x.rtype for x in r.authority] == ["SOA"]
    assert [e.code for e in r.ede] == [BLOCKED]


def test_chain_to_allowed_name_is_unchanged(bg: Blockgate, knot: Knot) -> None:
    for name in ("chain.example.test", "www.old.example.test"):
        r = dig(bg.addr, name)
        assert r.status == "NOERROR" and r.answer, name
        sections_equal(r, dig(knot.addr, name))


def test_chain_to_drop_name_gets_no_answer(bg: Blockgate) -> None:
    assert not dig(bg.addr, "dropalias.example.test", "+time=1").answered


def test_cname_inspection_can_be_turned_off(running_blockgate: Callable[..., Blockgate], knot: Knot) -> None:
    daemon = running_blockgate(inspect_cnames=False)
    r = dig(daemon.addr, "alias.example.test")
    assert r.status == "NOERROR" and r.answer
    sections_equal(r, dig(knot.addr, "alias.example.test"))


# -- clients ---------------------------------------------------------------------------------


def test_bypass_client_is_never_filtered(bg: Blockgate, knot: Knot) -> None:
    blocked = dig(bg.addr, "bypassed.example.test")
    assert blocked.status == "NXDOMAIN"
    r = dig(bg.addr, "bypassed.example.test", "-b", BYPASS_SOURCE)
    assert r.status == "NOERROR" and r.records() == {("bypassed.example.test.", 3600, "A", "192.0.2.20")}
    sections_equal(r, dig(knot.addr, "bypassed.example.test"))


def test_client_outside_allow_list_is_refused(bg: Blockgate) -> None:
    for name in ("www.example.test", "nx.blocked.test"):
        r = dig(bg.addr, name, "-b", REFUSED_SOURCE)
        assert r.status == "REFUSED" and r.answer == [], name
        assert [e.code for e in r.ede] == [PROHIBITED]
    r = dig(bg.addr, "www.example.test", "-b", REFUSED_SOURCE, "+tcp")
    assert r.status == "REFUSED"


# -- IPv6 ------------------------------------------------------------------------------------


def test_ipv6_listener(bg: Blockgate, knot: Knot) -> None:
    assert dig(bg.addr6, "nx.blocked.test").status == "NXDOMAIN"
    assert dig(bg.addr6, "nx.blocked.test", "+tcp").status == "NXDOMAIN"
    r = dig(bg.addr6, "www.example.test", "AAAA")
    assert r.records() == {("www.example.test.", 3600, "AAAA", "2001:db8::10")}
    sections_equal(r, dig(knot.addr, "www.example.test", "AAAA"))


# -- TCP (RFC 7766) ----------------------------------------------------------------------------


def test_tcp_answers_block_and_forward(bg: Blockgate, knot: Knot) -> None:
    assert dig(bg.addr, "nx.blocked.test", "+tcp").status == "NXDOMAIN"
    r = dig(bg.addr, "www.example.test", "+tcp")
    sections_equal(r, dig(knot.addr, "www.example.test", "+tcp"))


def test_tcp_pipelined_queries_all_answered(bg: Blockgate) -> None:
    """20 queries in one write on one connection, blocked and forwarded mixed: 20 answers,
    each with its own id and question (in any order, RFC 7766 §6.2.1.1)."""
    names = [("nx.blocked.test" if i % 3 == 0 else "www.example.test" if i % 3 == 1 else "standaards.com")
             for i in range(20)]
    queries = {0x4000 + i: make_query(n, "A", qid=0x4000 + i) for i, n in enumerate(names)}
    with tcp_connect(bg.addr) as s:
        s.sendall(b"".join(frame(q) for q in queries.values()))
        got = {}
        for _ in range(len(queries)):
            resp = read_frame(s)
            assert resp is not None, f"connection closed after {len(got)} answers"
            got[struct.unpack("!H", resp[:2])[0]] = resp
    assert set(got) == set(queries)
    for qid, resp in got.items():
        q = queries[qid]
        assert resp[12:question_end(q)] == q[12:question_end(q)]
        want = dns.rcode.NOERROR if names[qid - 0x4000] == "www.example.test" else dns.rcode.NXDOMAIN
        assert parse(resp).rcode() == want


def test_kdig_keepopen_pipelines(bg: Blockgate) -> None:
    """kdig sends several queries on one kept-open TCP connection."""
    out = kdig(bg.addr, "+tcp", "+keepopen", "nx.blocked.test", "www.example.test", "standaards.com")
    rcodes = {o["QNAME"].lower(): o["RCODE"] for o in out}
    assert rcodes == {"nx.blocked.test.": 3, "www.example.test.": 0, "standaards.com.": 3}


def test_tcp_length_prefix_split_across_writes(bg: Blockgate) -> None:
    q = make_query("nx.blocked.test", "A", qid=0x7777)
    data = frame(q)
    with tcp_connect(bg.addr) as s:
        for i in range(len(data)):
            s.sendall(data[i:i + 1])
            time.sleep(0.001)
        resp = read_frame(s)
    assert resp is not None and resp[:2] == b"\x77\x77" and rcode(resp) == 3


def test_tcp_idle_connection_is_closed(running_blockgate: Callable[..., Blockgate]) -> None:
    daemon = running_blockgate(tcp_idle_timeout="0.5s")
    with tcp_connect(daemon.addr, timeout=5.0) as s:
        s.sendall(frame(make_query("nx.blocked.test", "A", qid=1)))
        assert read_frame(s) is not None
        started = time.monotonic()
        assert s.recv(1) == b""  # the server closed the idle connection
        assert 0.3 < time.monotonic() - started < 3.0


def test_tcp_connection_limit(running_blockgate: Callable[..., Blockgate]) -> None:
    daemon = running_blockgate(tcp_max_connections=2)
    with contextlib.ExitStack() as stack:
        held = [stack.enter_context(tcp_connect(daemon.addr)) for _ in range(2)]
        for s in held:
            s.sendall(frame(make_query("nx.blocked.test", "A", qid=2)))
            assert read_frame(s) is not None
        extra = stack.enter_context(tcp_connect(daemon.addr))
        with contextlib.suppress(OSError):
            extra.sendall(frame(make_query("nx.blocked.test", "A", qid=3)))
        assert read_frame(extra) is None  # closed without an answer
        # the held connections still work
        held[0].sendall(frame(make_query("nx.blocked.test", "A", qid=4)))
        assert read_frame(held[0]) is not None
    # and once they are gone, new ones are accepted again
    probe = make_query("nx.blocked.test", "A", qid=5)
    assert wait_for(lambda: tcp_exchange(daemon.addr, probe) is not None, 3.0)


# -- upstream failure ------------------------------------------------------------------------


class Responder:
    """A test upstream on a free UDP port that runs a script per query: ``script(query) ->
    list of datagrams to send back`` (none: it swallows the query). It counts what it got."""

    def __init__(self, script: Callable[[bytes], list[bytes]]) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.script = script
        self.received: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def upstream(self) -> str:
        return f"127.0.0.1:{self.sock.getsockname()[1]}"

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            self.received.append(data)
            for out in self.script(data):
                self.sock.sendto(out, addr)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def responder() -> Iterator[Callable[[Callable[[bytes], list[bytes]]], Responder]]:
    made: list[Responder] = []

    def make(script: Callable[[bytes], list[bytes]]) -> Responder:
        r = Responder(script)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def dead_upstream() -> str:
    """A loopback UDP port nobody listens on: the kernel answers ICMP port unreachable."""
    return f"127.0.0.1:{free_port()}"


def answer_from_knot(knot: Knot) -> Callable[[bytes], list[bytes]]:
    def script(query: bytes) -> list[bytes]:
        got = udp_exchange(knot.addr, query)
        return [got] if got is not None else []
    return script


def test_failover_from_refusing_upstream(running_blockgate: Callable[..., Blockgate], knot: Knot) -> None:
    daemon = running_blockgate(upstreams=[dead_upstream(), knot.upstream], timeout="1s")
    started = time.monotonic()
    r = dig(daemon.addr, "www.example.test")
    assert r.status == "NOERROR" and r.records() == {("www.example.test.", 3600, "A", "192.0.2.10")}
    assert time.monotonic() - started < 0.9  # ICMP refusal fails over at once, not after the timeout


def test_failover_from_silent_upstream(running_blockgate: Callable[..., Blockgate], knot: Knot,
                                       responder: Callable[..., Responder]) -> None:
    silent = responder(lambda q: [])
    daemon = running_blockgate(upstreams=[silent.upstream, knot.upstream], timeout="0.4s")
    started = time.monotonic()
    r = dig(daemon.addr, "www.example.test", "+time=3")
    took = time.monotonic() - started
    assert r.status == "NOERROR" and r.answer
    assert silent.received, "the first upstream was not tried"
    assert 0.3 < took < 2.5
    # the upstream that answered is tried first from now on: no wait
    started = time.monotonic()
    assert dig(daemon.addr, "mail.example.test").status == "NOERROR"
    assert time.monotonic() - started < 0.35


@pytest.mark.parametrize("retransmit", ["0.3s", "0s"])
def test_a_query_the_upstream_lost_is_sent_again(running_blockgate: Callable[..., Blockgate], knot: Knot,
                                                 responder: Callable[..., Responder],
                                                 retransmit: str) -> None:
    """An upstream path that loses the first datagram of every query: with ``retransmit``
    the same query goes to it again and the client has its answer long before ``timeout``;
    with 0 the only way out is the timeout's SERVFAIL."""
    seen: set[bytes] = set()
    ask_knot = answer_from_knot(knot)

    def lossy(query: bytes) -> list[bytes]:
        if query not in seen:
            seen.add(query)
            return []
        return ask_knot(query)

    upstream = responder(lossy)
    daemon = running_blockgate(upstreams=[upstream.upstream], timeout="2s", retransmit=retransmit)
    started = time.monotonic()
    got = udp_exchange(daemon.addr, make_query("www.example.test", qid=0x4242), timeout=1.5)
    took = time.monotonic() - started
    if retransmit == "0s":
        assert got is None and len(upstream.received) == 1
        return
    assert got is not None and rcode(got) == dns.rcode.NOERROR, took
    assert 0.25 < took < 1.0
    first, again = upstream.received[:2]
    assert first == again  # the same datagram: same id, same question


def test_all_upstreams_silent_is_servfail_ede22(running_blockgate: Callable[..., Blockgate],
                                                responder: Callable[..., Responder]) -> None:
    a, b = responder(lambda q: []), responder(lambda q: [])
    daemon = running_blockgate(upstreams=[a.upstream, b.upstream], timeout="0.3s")
    r = dig(daemon.addr, "www.example.test", "+time=4")
    assert r.status == "SERVFAIL"
    assert [e.code for e in r.ede] == [NO_REACHABLE_AUTHORITY]
    assert a.received and b.received
    assert dig(daemon.addr, "nx.blocked.test").status == "NXDOMAIN"  # blocks need no upstream


def test_all_upstreams_refusing_is_servfail_ede23(running_blockgate: Callable[..., Blockgate]) -> None:
    daemon = running_blockgate(upstreams=[dead_upstream(), dead_upstream()], timeout="1s")
    started = time.monotonic()
    r = dig(daemon.addr, "www.example.test", "+time=4")
    assert r.status == "SERVFAIL" and [e.code for e in r.ede] == [NETWORK_ERROR]
    assert time.monotonic() - started < 1.5
    r = dig(daemon.addr, "www.example.test", "+noedns", "+time=4")
    assert r.status == "SERVFAIL" and not r.opt


def test_upstream_answer_with_wrong_id_or_question_is_dropped(
        running_blockgate: Callable[..., Blockgate], knot: Knot,
        responder: Callable[..., Responder]) -> None:
    """Off-path spoofs (wrong id, wrong question) arrive first; only the real answer counts."""
    real = answer_from_knot(knot)

    def script(query: bytes) -> list[bytes]:
        (good,) = real(query)
        wrong_id = struct.pack("!H", (struct.unpack("!H", good[:2])[0] + 1) & 0xFFFF) + good[2:]
        spoof = dns.message.from_wire(good)
        spoof.question = [dns.rrset.RRset(dns.name.from_text("evil.example.test"), 1, 1)]
        spoof.answer = []
        wrong_q = spoof.to_wire()
        return [wrong_id, wrong_q, b"\x00", good]

    liar = responder(script)
    daemon = running_blockgate(upstreams=[liar.upstream])
    r = dig(daemon.addr, "www.example.test")
    assert r.records() == {("www.example.test.", 3600, "A", "192.0.2.10")}


def test_fresh_random_id_per_upstream_query(running_blockgate: Callable[..., Blockgate], knot: Knot,
                                            responder: Callable[..., Responder]) -> None:
    seen = responder(answer_from_knot(knot))
    # a generous upstream timeout: on a loaded machine the test's responder thread may lag,
    # and a SERVFAIL would say nothing about the ids
    daemon = running_blockgate(upstreams=[seen.upstream], timeout="5s")
    for _ in range(40):
        got = udp_exchange(daemon.addr, make_query("www.example.test", "A", qid=0x1111), timeout=8.0)
        assert got is not None and rcode(got) == dns.rcode.NOERROR
    ids = [struct.unpack("!H", q[:2])[0] for q in seen.received]
    assert len(ids) == 40 and 0x1111 not in ids
    assert len(set(ids)) >= 38  # random 16-bit ids: a repeat or two is possible, a pattern is not


# -- malformed queries -----------------------------------------------------------------------


def _long_name() -> bytes:
    return (b"\x3f" + b"a" * 63) * 4 + b"\x00"  # 257 octets


MALFORMED: list[tuple[str, bytes, int | None]] = [
    # (case, datagram, the rcode answered or None for no answer)
    ("short", b"\x12\x34\x01", None),
    ("header-only", header(0x1001), dns.rcode.FORMERR),
    ("truncated-question", header(0x1002) + b"\x03www\x07exam", dns.rcode.FORMERR),
    ("no-qtype", header(0x1003) + wire_name("www.example.test"), dns.rcode.FORMERR),
    ("qdcount-0", header(0x1004, qd=0), dns.rcode.FORMERR),
    ("qdcount-2", header(0x1005, qd=2) + question("a.example.test") + question("b.example.test"),
     dns.rcode.FORMERR),
    ("pointer-loop", header(0x1006) + b"\xc0\x0c\x00\x01\x00\x01", dns.rcode.FORMERR),
    ("label-over-63", header(0x1007) + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01", dns.rcode.FORMERR),
    ("name-over-255", header(0x1008) + _long_name() + b"\x00\x01\x00\x01", dns.rcode.FORMERR),
    ("opcode-status", header(0x1009, flags=0x1000) + question("www.example.test"), dns.rcode.NOTIMP),
    ("opcode-update", header(0x100A, flags=0x2800) + question("www.example.test"), dns.rcode.NOTIMP),
    ("qr-set", header(0x100B, flags=0x8180) + question("www.example.test"), None),
]


@pytest.mark.parametrize(("case", "payload", "want"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_query_then_valid_query(bg2: Blockgate, case: str, payload: bytes,
                                          want: int | None) -> None:
    """Each malformed datagram gets FORMERR/NOTIMP (header only) or nothing; then a valid query
    from the same socket is answered, by whichever of the two workers the kernel picks."""
    for _ in range(6):  # new source ports: the kernel spreads them across both workers
        with udp_socket(bg2.addr) as s:
            s.send(payload)
            qid = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else -1
            got, others = recv_until(s, qid, 0.3 if want is None else 3.0)
            if want is None:
                assert got is None and not others, case
            else:
                assert got is not None, case
                assert got[2] & 0x80 and (got[3] & 0x0F) == want, case
                assert got[4:12] == b"\x00" * 8  # header only: the question was not trusted
            valid = make_query("nx.blocked.test", "A", qid=0x2222)
            s.send(valid)
            ok, _ = recv_until(s, 0x2222, 3.0)
            assert ok is not None and rcode(ok) == dns.rcode.NXDOMAIN, f"no answer after {case}"
    assert all(alive(p) for p in bg2.pids_at_start), "a worker died"


def test_malformed_over_tcp_then_valid(bg2: Blockgate) -> None:
    with tcp_connect(bg2.addr) as s:
        for _case, payload, want in MALFORMED:
            s.sendall(frame(payload))
            if want is not None:
                got = read_frame(s)
                assert got is not None and (got[3] & 0x0F) == want
        s.sendall(frame(make_query("nx.blocked.test", "A", qid=0x3333)))
        got = read_frame(s)
        assert got is not None and got[:2] == b"\x33\x33" and rcode(got) == dns.rcode.NXDOMAIN


def test_random_garbage_never_stops_a_worker(bg2: Blockgate) -> None:
    rng = random.Random(1234)
    with udp_socket(bg2.addr) as s:
        for _ in range(500):
            s.send(rng.randbytes(rng.randrange(0, 600)))
    for i in range(10):
        assert udp_exchange(bg2.addr, make_query("nx.blocked.test", "A", qid=0x5000 + i)) is not None
    assert all(alive(p) for p in bg2.pids_at_start)


# -- workers ---------------------------------------------------------------------------------


def test_two_workers_share_the_port(bg2: Blockgate) -> None:
    pids = bg2.worker_pids()
    assert len(pids) == 2 and bg2.proc.pid not in pids
    inodes = [socket_inodes(p) for p in pids]
    assert inodes[0].isdisjoint(inodes[1])  # each its own SO_REUSEPORT sockets
    for i in range(50):
        got = udp_exchange(bg2.addr, make_query("www.example.test", "A", qid=0x6000 + i))
        assert got is not None and rcode(got) == dns.rcode.NOERROR


def test_sigterm_stops_supervisor_and_workers(running_blockgate: Callable[..., Blockgate]) -> None:
    daemon = running_blockgate(workers=2)
    workers = daemon.worker_pids()
    result = daemon.stop()
    assert result.returncode == 0 and not result.hung
    assert result.seconds < STOP_TIMEOUT
    assert not any(alive(p) for p in workers)


def test_a_stop_for_every_process_is_no_worker_failure(running_blockgate: Callable[..., Blockgate]) -> None:
    """A service manager signals every process of the service (systemd's control-group
    mode): when a worker's exit is read before the supervisor's own SIGTERM, it is a stop,
    not a failure to log and replace."""
    daemon = running_blockgate(workers=2)
    workers = daemon.worker_pids()
    os.kill(daemon.proc.pid, signal.SIGSTOP)  # both signals wait for the supervisor, in order
    try:
        for w in workers:
            os.kill(w, signal.SIGTERM)
        assert wait_for(lambda: not any(alive(p) and not zombie(p) for p in workers), 5.0)
        os.kill(daemon.proc.pid, signal.SIGTERM)
    finally:
        os.kill(daemon.proc.pid, signal.SIGCONT)
    assert daemon.proc.wait(STOP_TIMEOUT) == 0
    log = daemon.log_text()
    assert "signal 15: stopping" in log
    assert "starting another" not in log, log


def zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


def test_dead_worker_is_replaced(running_blockgate: Callable[..., Blockgate]) -> None:
    daemon = running_blockgate(workers=2)
    victim = daemon.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    assert wait_for(lambda: len(daemon.worker_pids()) == 2 and victim not in daemon.worker_pids(), 5.0)
    for i in range(20):
        assert udp_exchange(daemon.addr, make_query("nx.blocked.test", "A", qid=0x7000 + i)) is not None


# -- real captures replayed at the service ---------------------------------------------------

PCAPS = Path(__file__).resolve().parent / "fixtures" / "pcaps"


def capture_queries(path: Path) -> list[tuple[str, bytes]]:
    """DNS queries in a capture as ``(transport, message)``: UDP datagrams to port 53, and the
    length-prefixed messages of TCP streams to port 53 (segments joined in sequence order).
    Read with scapy, independent of blockgate's own packet code."""
    from scapy.all import IP, TCP, UDP, IPv6, rdpcap
    from scapy.layers.inet6 import IPv6ExtHdrFragment, defragment6

    packets = []
    fragments: dict[int, list[Any]] = {}
    for pkt in rdpcap(str(path)):
        if pkt.haslayer(IPv6ExtHdrFragment):
            fragments.setdefault(pkt[IPv6ExtHdrFragment].id, []).append(pkt)
        else:
            packets.append(pkt)
    for group in fragments.values():
        with contextlib.suppress(Exception):  # an incomplete datagram is not a query
            whole = defragment6(group)
            if whole is not None and not whole.haslayer(IPv6ExtHdrFragment):
                packets.append(IPv6(bytes(whole)))
    out: list[tuple[str, bytes]] = []
    streams: dict[tuple[str, str, int], dict[int, bytes]] = {}
    for frame_ in packets:
        pkt = frame_
        if pkt.getlayer(IP) is None and pkt.getlayer(IPv6) is None:  # raw IP link type
            raw = bytes(pkt)
            pkt = IP(raw) if raw[:1] and raw[0] >> 4 == 4 else IPv6(raw)
        ip = pkt.getlayer(IP) or pkt.getlayer(IPv6)
        if ip is None:
            continue
        if pkt.haslayer(UDP) and pkt[UDP].dport == 53:
            out.append(("udp", bytes(pkt[UDP].payload)))
        elif pkt.haslayer(TCP) and pkt[TCP].dport == 53 and bytes(pkt[TCP].payload):
            key = (ip.src, ip.dst, pkt[TCP].sport)
            streams.setdefault(key, {})[pkt[TCP].seq] = bytes(pkt[TCP].payload)
    for segments in streams.values():
        data = b"".join(segments[s] for s in sorted(segments))
        while len(data) >= 2:
            n = struct.unpack("!H", data[:2])[0]
            if len(data) < 2 + n:
                break
            out.append(("tcp", data[2:2 + n]))
            data = data[2 + n:]
    return out


def single_question(msg: bytes) -> bool:
    """dnspython's view (the oracle): a query with exactly one question it can read."""
    try:
        m = dns.message.from_wire(msg, ignore_trailing=True)
    except Exception:
        return False
    return not (m.flags & dns.flags.QR) and m.opcode() == dns.opcode.QUERY and len(m.question) == 1


DNS_CAPTURES = sorted(p.name for p in PCAPS.glob("dns-*.pcap*") if not p.name.endswith(".tsv"))


@pytest.mark.parametrize("capture", DNS_CAPTURES)
def test_capture_queries_are_answered(bg: Blockgate, capture: str) -> None:
    """Every valid query in the capture gets an answer with its id and its question as sent;
    the others get FORMERR/NOTIMP or nothing; the service answers after each of them."""
    queries = capture_queries(PCAPS / capture)
    truth = [ln.split("\t") for ln in (PCAPS / f"{capture}.truth.tsv").read_text().splitlines()[1:]]
    # tshark's rows: one per question of each query message
    assert len(queries) == sum(1 for row in truth if row[7].startswith("dns_query"))
    valid = 0
    for transport, msg in queries:
        if transport == "udp":
            got = udp_exchange(bg.addr, msg, timeout=3.0) if len(msg) >= 2 else None
        else:
            got = tcp_exchange(bg.addr, msg)
        if single_question(msg):
            valid += 1
            assert got is not None, f"{capture}: no answer to a valid query"
            qend = question_end_of(msg)
            assert got[:2] == msg[:2] and got[12:qend] == msg[12:qend]
            assert got[2] & 0x80 and got[4:6] == b"\x00\x01"
        elif got is not None:
            assert got[:2] == msg[:2] and (got[3] & 0x0F) in (dns.rcode.FORMERR, dns.rcode.NOTIMP)
        assert udp_exchange(bg.addr, make_query("nx.blocked.test", "A", qid=0x0BAD)) is not None
    assert valid or capture == "dns-malformed-pointer-loop.pcap", f"{capture}: no valid query found"


def question_end_of(msg: bytes) -> int:
    i = 12
    while msg[i]:
        i += msg[i] + 1
    return i + 5


# -- the decision log ------------------------------------------------------------------------


def decision_lines(daemon: Blockgate) -> list[dict[str, Any]]:
    import json
    out = []
    for line in daemon.log_text().splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def test_decision_log_has_one_json_line_per_block(running_blockgate: Callable[..., Blockgate]) -> None:
    daemon = running_blockgate(top={"log": {"level": "warning", "decisions": "all"}})
    assert dig(daemon.addr, "standaards.com", "+noedns").status == "NXDOMAIN"
    assert dig(daemon.addr, "alias.example.test").status == "NXDOMAIN"  # through a CNAME
    assert dig(daemon.addr, "www.example.test").status == "NOERROR"  # not a block: no line
    assert wait_for(lambda: len(decision_lines(daemon)) >= 2, 3.0), daemon.log_text()
    first, second = decision_lines(daemon)
    assert first["name"] == "standaards.com" and first["channel"] == "dns"
    assert first["client"] == "127.0.0.1" and first["action"] == "nxdomain"
    assert first["source"] == "registry" and first["record_id"] == 1676124
    assert first["decision"]["number"] == "2а-4235/2019"
    assert first["origin"].startswith("rkn-dump-fragment-2019-a.xml:")
    assert first["time"].endswith("Z")
    assert (second["name"], second["rule"], second["source"]) == (
        "alias.example.test", "cdn.blocked.test", "local-nxdomain")


def test_decision_log_is_rate_limited(running_blockgate: Callable[..., Blockgate]) -> None:
    daemon = running_blockgate(top={"log": {"level": "warning", "decisions": "sample",
                                             "decisions_per_second": 4}})
    got = 0
    with udp_socket(daemon.addr) as s:
        s.settimeout(2.0)
        for burst in range(6):  # bursts a client socket's buffer holds the answers of
            for i in range(50):
                s.send(make_query("nx.blocked.test", "A", qid=burst * 50 + i, edns=False))
            with contextlib.suppress(TimeoutError):
                for _ in range(50):
                    s.recv(4096)
                    got += 1
    assert got == 300  # every query answered, logged or not
    time.sleep(1.0)
    assert dig(daemon.addr, "nx.blocked.test").status == "NXDOMAIN"
    assert wait_for(lambda: any("suppressed" in d for d in decision_lines(daemon)), 3.0), daemon.log_text()
    lines = decision_lines(daemon)
    assert 1 <= len(lines) <= 12  # 4 a second and a burst of one second's worth
    assert sum(d.get("suppressed", 0) for d in lines) + len(lines) <= 301


def test_decision_log_off(running_blockgate: Callable[..., Blockgate]) -> None:
    daemon = running_blockgate(top={"log": {"level": "info", "decisions": "off"}})
    assert dig(daemon.addr, "nx.blocked.test").status == "NXDOMAIN"
    time.sleep(0.5)
    assert decision_lines(daemon) == []
