"""The DNS engine without sockets: packets, the time and entropy in; answers and upstream
queries out. Forwarding state (ids, failover, timeouts, TCP retry), CNAME inspection, the
client lists and the counters, checked one step at a time with dnspython building and
reading the messages.
"""

from __future__ import annotations

import io
import itertools
import struct
from collections.abc import Callable

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest

from blockgate.config import load, parse_addr
from blockgate.dnsengine import DnsEngine, make_settings, make_synth
from blockgate.engine import LoadedSource, RuleSet
from blockgate.lists import parse as parse_list
from blockgate.lists.base import Input
from blockgate.stats import A, Stats

LISTS = {
    "nx": "nx.test\ncdn.bad.test\n",
    "drop": "drop.test\n",
    "tcp": "tcponly.test\n",
    "sink": "sink.test\n",
}
ACTIONS = {"nx": "nxdomain", "drop": "drop", "tcp": "tcp-only", "sink": "sinkhole"}
CLIENT = ("127.0.0.1", 40000)
REFUSED_CLIENT = ("192.0.2.7", 40000)
BYPASS_CLIENT = ("127.0.0.3", 40000)


class Channel:
    """Stands for a UDP socket or TCP connection: the engine only passes it back."""

    def __init__(self, name: str) -> None:
        self.name = name


UDP = Channel("udp")


def make_engine(upstreams: int = 2, timeout: float = 1.0, max_inflight: int = 100,
                inspect: bool = True, retransmit: float = 0.0) -> DnsEngine:
    sources = "\n".join(
        f"  - {{name: {n}, format: domains, path: /{n}.txt, action: {ACTIONS[n]}}}" for n in LISTS)
    ups = ", ".join(f'"127.0.0.{i + 1}:53"' for i in range(upstreams))
    config = load(f"""sources:
{sources}
dns:
  upstreams: [{ups}]
  timeout: {timeout}s
  retransmit: {retransmit}s
  max_inflight: {max_inflight}
  inspect_cnames: {str(inspect).lower()}
  allow_clients: ["127.0.0.0/8"]
  bypass_clients: ["127.0.0.3/32"]
  sinkhole_a: ["192.0.2.99"]
""")
    loaded = []
    for src in config.sources:
        ls = LoadedSource(src)
        ls.parsed = parse_list("domains", [Input(f"{src.name}.txt", io.BytesIO(LISTS[src.name].encode()))])
        loaded.append(ls)
    rs = RuleSet(loaded)
    counter = itertools.count(1)

    def entropy(n: int) -> bytes:  # deterministic, distinct ids
        return b"".join(struct.pack("!H", next(counter) & 0xFFFF) for _ in range(n // 2))

    return DnsEngine(rs.matcher.classes, rs.match, make_synth(config.dns),
                     make_settings(config.dns, parse_addr), Stats(), entropy)


def q(name: str, rdtype: str = "A", qid: int = 0x1234, edns: bool = False) -> bytes:
    m = dns.message.make_query(name, rdtype, use_edns=0 if edns else False)
    m.id = qid
    return m.to_wire()


def upstream_answer(sent: bytes, build: Callable[[dns.message.Message], None] | None = None,
                    tc: bool = False) -> bytes:
    """What an upstream answers to the query it was sent (its id, its question)."""
    query = dns.message.from_wire(sent)
    r = dns.message.make_response(query)
    r.flags |= dns.flags.RA
    if tc:
        r.flags |= dns.flags.TC
    elif build is not None:
        build(r)
    else:
        r.answer.append(dns.rrset.from_text(query.question[0].name, 60, "IN", "A", "192.0.2.10"))
    return r.to_wire()


def take_outbox(engine: DnsEngine) -> list[tuple[int, bool, bytes]]:
    out = list(engine.outbox)
    engine.outbox.clear()
    return out


def rc(data: bytes) -> int:
    return data[3] & 0x0F


# -- blocks --------------------------------------------------------------------------------------


def test_block_answer_is_immediate_and_counted() -> None:
    e = make_engine()
    resp = e.query(q("NX.test"), CLIENT, UDP, False, 0.0)
    assert resp is not None and rc(resp) == dns.rcode.NXDOMAIN and resp[:2] == b"\x12\x34"
    assert not e.outbox and not e.inflight
    assert e.stats.dns_udp[A["nxdomain"]] == 1
    assert e.stats.blocks() == {("dns", "nx", ""): 1}


def test_drop_and_tcp_only() -> None:
    e = make_engine()
    assert e.query(q("drop.test"), CLIENT, UDP, False, 0.0) is None and not e.outbox
    resp = e.query(q("tcponly.test"), CLIENT, UDP, False, 0.0)
    assert resp is not None and resp[2] & 0x02  # TC=1 over UDP
    assert e.query(q("tcponly.test"), CLIENT, Channel("tcp"), True, 0.0) is None
    ((_up, via_tcp, _payload),) = take_outbox(e)  # over TCP it is forwarded, over TCP
    assert via_tcp
    assert e.stats.dns_udp[A["drop"]] == 1 and e.stats.dns_udp[A["tcp-only"]] == 1
    assert e.stats.dns_tcp[A["forward"]] == 1


def test_refused_and_bypass_clients() -> None:
    e = make_engine()
    resp = e.query(q("www.ok.test"), REFUSED_CLIENT, UDP, False, 0.0)
    assert resp is not None and rc(resp) == dns.rcode.REFUSED
    assert e.query(q("nx.test"), BYPASS_CLIENT, UDP, False, 0.0) is None  # forwarded unfiltered
    assert len(take_outbox(e)) == 1
    assert e.stats.dns_udp[A["not-allowed"]] == 1 and e.stats.dns_udp[A["bypass"]] == 1


def test_malformed_is_counted_by_reason() -> None:
    e = make_engine()
    bad = q("x.test")[:15]
    resp = e.query(bad, CLIENT, UDP, False, 0.0)
    assert resp is not None and rc(resp) == dns.rcode.FORMERR and len(resp) == 12
    assert e.query(b"\x01", CLIENT, UDP, False, 0.0) is None
    assert e.stats.malformed == {("dns", "truncated"): 1, ("dns", "short"): 1}


# -- forwarding ------------------------------------------------------------------------------


def test_forward_uses_fresh_id_and_restores_clients() -> None:
    e = make_engine()
    query = q("www.ok.test", qid=0xAAAA, edns=True)
    assert e.query(query, CLIENT, UDP, False, 0.0) is None
    ((up, via_tcp, sent),) = take_outbox(e)
    assert (up, via_tcp) == (0, False)
    assert sent[:2] != query[:2] and sent[2:] == query[2:]  # only the id differs
    answer = upstream_answer(sent)
    got = e.answer(answer, 0, 0.01)
    assert got is not None
    channel, addr, payload = got
    assert channel is UDP and addr == CLIENT
    assert payload == query[:2] + answer[2:]
    assert not e.inflight
    assert e.stats.upstream_responses() == {("127.0.0.1:53", "noerror"): 1}
    assert sum(e.stats.upstream_latency[0]) == 1


@pytest.mark.parametrize("case", ["wrong-id", "wrong-upstream", "wrong-question", "wrong-transport",
                                  "short"])
def test_unexpected_answers_are_dropped(case: str) -> None:
    e = make_engine()
    e.query(q("www.ok.test"), CLIENT, UDP, False, 0.0)
    ((_up, _tcp, sent),) = take_outbox(e)
    answer = upstream_answer(sent)
    if case == "wrong-id":
        got = e.answer(bytes((answer[0] ^ 1,)) + answer[1:], 0, 0.0)
    elif case == "wrong-upstream":
        got = e.answer(answer, 1, 0.0)
    elif case == "wrong-question":
        other = dns.message.from_wire(upstream_answer(q("evil.test")))
        other.id = struct.unpack("!H", sent[:2])[0]
        got = e.answer(other.to_wire(), 0, 0.0)
    elif case == "wrong-transport":
        got = e.answer(answer, 0, 0.0, via_tcp=True)
    else:
        got = e.answer(answer[:5], 0, 0.0)
    assert got is None
    assert len(e.inflight) == 1  # still waiting for the real answer
    assert sum(e.stats.upstream_errors.values()) == 1
    assert e.answer(answer, 0, 0.0) is not None


def test_answer_with_other_case_in_question_is_accepted() -> None:
    """Upstreams may answer in the case they hold the name in (0x20 is the client's business)."""
    e = make_engine()
    query = q("WwW.Ok.TeSt")
    e.query(query, CLIENT, UDP, False, 0.0)
    ((_u, _t, sent),) = take_outbox(e)
    lowered = bytearray(upstream_answer(sent))
    lowered[12:len(query) - 4] = bytes(lowered[12:len(query) - 4]).lower()
    got = e.answer(bytes(lowered), 0, 0.0)
    assert got is not None and got[2][:2] == query[:2]


def test_timeout_fails_over_then_servfail_ede22() -> None:
    e = make_engine(upstreams=2, timeout=1.0)
    query = q("www.ok.test", edns=True)
    e.query(query, CLIENT, UDP, False, 0.0)
    assert [u for u, _, _ in take_outbox(e)] == [0]
    assert e.expire(0.5) == []
    assert e.expire(1.01) == []  # retried on the other upstream, nothing to say yet
    assert [u for u, _, _ in take_outbox(e)] == [1]
    assert e.current == 1  # the next query starts there
    (got,) = e.expire(2.02)
    resp = dns.message.from_wire(got[2])
    assert resp.rcode() == dns.rcode.SERVFAIL and got[2][:2] == query[:2]
    assert [(o.code) for o in resp.options if isinstance(o, dns.edns.EDEOption)] == [22]
    assert not e.inflight
    assert e.stats.upstream_errors == {("127.0.0.1:53", "timeout"): 1, ("127.0.0.2:53", "timeout"): 1}
    assert e.stats.dns_udp[A["servfail"]] == 1


def test_unanswered_udp_query_is_sent_once_more_then_fails_over_at_the_timeout() -> None:
    e = make_engine(upstreams=2, timeout=1.0, retransmit=0.25)
    query = q("www.ok.test", edns=True)
    e.query(query, CLIENT, UDP, False, 0.0)
    ((up, tcp, first),) = take_outbox(e)
    assert (up, tcp) == (0, False)
    assert e.expire(0.2) == [] and take_outbox(e) == []
    assert e.expire(0.26) == []
    assert take_outbox(e) == [(0, False, first)]  # the same datagram, same id, same upstream
    for t in (0.52, 0.78):  # once only: a silent upstream gets at most twice its queries
        assert e.expire(t) == [] and take_outbox(e) == []
    assert e.expire(1.04) == []  # the timeout: the other upstream, a fresh id
    ((up, _tcp, moved),) = take_outbox(e)
    assert up == 1 and moved[:2] != first[:2] and moved[2:] == first[2:]
    assert e.expire(1.30) == []
    assert take_outbox(e) == [(1, False, moved)]  # that upstream gets its one retransmission too
    assert e.stats.upstream_errors == {("127.0.0.1:53", "retransmit"): 1, ("127.0.0.1:53", "timeout"): 1,
                                       ("127.0.0.2:53", "retransmit"): 1}


def test_the_second_answer_to_a_query_sent_again_is_dropped_quietly() -> None:
    e = make_engine(upstreams=1, timeout=1.0, retransmit=0.25)
    query = q("www.ok.test")
    e.query(query, CLIENT, UDP, False, 0.0)
    ((_u, _t, sent),) = take_outbox(e)
    e.expire(0.3)
    assert take_outbox(e) == [(0, False, sent)]
    got = e.answer(upstream_answer(sent), 0, 0.31)
    assert got is not None and got[2][:2] == query[:2]
    assert e.answer(upstream_answer(sent), 0, 0.32) is None  # the other copy's answer
    assert e.stats.upstream_errors == {("127.0.0.1:53", "retransmit"): 1}
    assert e.answer(upstream_answer(sent), 0, 0.33) is None  # a third one is unexpected again
    assert e.stats.upstream_errors[("127.0.0.1:53", "unexpected-id")] == 1
    assert not e.inflight and e.expire(2.0) == []


def test_queries_over_tcp_are_not_sent_again() -> None:
    e = make_engine(upstreams=1, timeout=1.0, retransmit=0.25)
    e.query(q("www.ok.test"), CLIENT, Channel("tcp"), True, 0.0)
    ((_u, via_tcp, _sent),) = take_outbox(e)
    assert via_tcp
    for t in (0.26, 0.52, 0.78):
        assert e.expire(t) == [] and take_outbox(e) == []
    (got,) = e.expire(1.04)  # one upstream, tried: SERVFAIL at the timeout as before
    assert rc(got[2]) == dns.rcode.SERVFAIL


def test_refusing_upstream_fails_over_at_once_then_ede23() -> None:
    e = make_engine(upstreams=2)
    e.query(q("www.ok.test", edns=True), CLIENT, UDP, False, 0.0)
    take_outbox(e)
    assert e.upstream_failed(0, 0.01, "refused") == []
    assert [u for u, _, _ in take_outbox(e)] == [1]
    (got,) = e.upstream_failed(1, 0.02, "refused")
    resp = dns.message.from_wire(got[2])
    assert resp.rcode() == dns.rcode.SERVFAIL
    assert [o.code for o in resp.options if isinstance(o, dns.edns.EDEOption)] == [23]


def test_inflight_table_is_bounded() -> None:
    e = make_engine(max_inflight=5)
    for i in range(5):
        assert e.query(q(f"n{i}.ok.test", qid=i), CLIENT, UDP, False, 0.0) is None
    resp = e.query(q("one.more.test", qid=99), CLIENT, UDP, False, 0.0)
    assert resp is not None and rc(resp) == dns.rcode.SERVFAIL
    assert len(e.inflight) == 5
    assert e.stats.upstream_errors[("*", "inflight-full")] == 1


def test_ids_in_flight_are_never_reused() -> None:
    e = make_engine(max_inflight=1000)
    e._ids = [7, 7, 7, 8]  # the entropy gives a duplicate: it is skipped
    e.query(q("a.ok.test"), CLIENT, UDP, False, 0.0)
    e.query(q("b.ok.test"), CLIENT, UDP, False, 0.0)
    ids = sorted(e.inflight)
    assert len(ids) == 2 and len(set(ids)) == 2


def test_truncated_answer_is_asked_again_over_tcp() -> None:
    e = make_engine()
    query = q("big.ok.test", "TXT")
    e.query(query, CLIENT, UDP, False, 0.0)
    ((_u, _t, sent),) = take_outbox(e)
    assert e.answer(upstream_answer(sent, tc=True), 0, 0.0) is None
    ((up, via_tcp, sent2),) = take_outbox(e)
    assert (up, via_tcp) == (0, True) and sent2[2:] == query[2:]

    def big(r: dns.message.Message) -> None:
        for i in range(8):
            r.answer.append(dns.rrset.from_text(r.question[0].name, 60, "IN", "TXT", f'"{"x" * 200}{i}"'))

    full = upstream_answer(sent2, big)
    got = e.answer(full, 0, 0.0, via_tcp=True)
    assert got is not None and got[2][2] & 0x02  # too big for a 512-octet UDP client: TC=1
    assert len(got[2]) <= 512
    # a TCP client gets the whole answer
    e.query(query, CLIENT, Channel("tcp"), True, 0.0)
    ((_u, via, sent3),) = take_outbox(e)
    assert via
    got = e.answer(upstream_answer(sent3, big), 0, 0.0, via_tcp=True)
    assert got is not None and not got[2][2] & 0x02 and len(got[2]) > 1600


# -- CNAME inspection --------------------------------------------------------------------------


def _chain(target: str) -> Callable[[dns.message.Message], None]:
    def build(r: dns.message.Message) -> None:
        r.answer.append(dns.rrset.from_text(r.question[0].name, 60, "IN", "CNAME", "hop.ok.test."))
        r.answer.append(dns.rrset.from_text("hop.ok.test.", 60, "IN", "CNAME", target))
        r.answer.append(dns.rrset.from_text(target, 60, "IN", "A", "192.0.2.1"))
    return build


@pytest.mark.parametrize(("target", "inspect", "want"), [
    ("cdn.bad.test.", True, "nxdomain"),
    ("CDN.BAD.TEST.", True, "nxdomain"),
    ("drop.test.", True, "drop"),
    ("sink.test.", True, "sinkhole"),
    ("fine.ok.test.", True, "forward"),
    ("cdn.bad.test.", False, "forward"),
])
def test_cname_chain_to_blocked_name(target: str, inspect: bool, want: str) -> None:
    e = make_engine(inspect=inspect)
    query = q("alias.ok.test")
    e.query(query, CLIENT, UDP, False, 0.0)
    ((_u, _t, sent),) = take_outbox(e)
    answer = upstream_answer(sent, _chain(target))
    got = e.answer(answer, 0, 0.0)
    counts = e.stats.dns_udp
    assert counts[A[want]] == 1 and sum(counts) == 1  # counted once, as what it became
    if want == "forward":
        assert got is not None and got[2] == query[:2] + answer[2:]
    elif want == "drop":
        assert got is None
    else:
        assert got is not None
        m = dns.message.from_wire(got[2])
        assert got[2][:2] == query[:2]
        if want == "nxdomain":
            assert m.rcode() == dns.rcode.NXDOMAIN and m.answer == []
        else:
            assert [r.to_text() for rr in m.answer for r in rr] == ["192.0.2.99"]


def test_malformed_upstream_answer_is_servfail() -> None:
    e = make_engine()
    query = q("alias.ok.test")
    e.query(query, CLIENT, UDP, False, 0.0)
    ((_u, _t, sent),) = take_outbox(e)
    answer = bytearray(upstream_answer(sent, _chain("fine.ok.test.")))
    del answer[len(answer) - 6:]  # the last record cut short
    got = e.answer(bytes(answer), 0, 0.0)
    assert got is not None and rc(got[2]) == dns.rcode.SERVFAIL
    assert e.stats.malformed[("dns-answer", "truncated")] == 1


def test_ra_follows_the_upstream() -> None:
    e = make_engine()
    before = e.query(q("nx.test"), CLIENT, UDP, False, 0.0)
    assert before is not None and before[3] & 0x80
    e.query(q("www.ok.test"), CLIENT, UDP, False, 0.0)
    ((_u, _t, sent),) = take_outbox(e)
    no_ra = bytearray(upstream_answer(sent))
    no_ra[3] &= 0x7F
    e.answer(bytes(no_ra), 0, 0.0)
    for query in (q("nx.test"), q("nx.test", edns=True), q("sink.test")):
        after = e.query(query, CLIENT, UDP, False, 0.0)
        assert after is not None and not after[3] & 0x80




# -- the decision log's queue ------------------------------------------------------------------


def test_blocks_are_queued_for_the_decision_log_within_the_budget() -> None:
    e = make_engine()
    e.query(q("nx.test"), CLIENT, UDP, False, 0.0)
    assert e.block_log == []  # no budget: nothing queued (the NXDOMAIN fast path)
    e.log_budget[0] = 3
    for name in ("nx.test", "drop.test", "sink.test", "nx.test"):
        e.query(q(name, edns=True), CLIENT, UDP, False, 0.0)
    assert [(c, n, a, r.source) for c, n, a, r in e.block_log] == [
        ("127.0.0.1", b"nx.test", "nxdomain", "nx"), ("127.0.0.1", b"drop.test", "drop", "drop"),
        ("127.0.0.1", b"sink.test", "sinkhole", "sink")]
    assert e.log_budget == [0]
    assert e.stats.blocks()[("dns", "nx", "")] == 3  # counted whether logged or not


def test_cname_block_is_queued_under_the_query_name() -> None:
    e = make_engine()
    e.log_budget[0] = 5
    e.query(q("Alias.OK.test"), CLIENT, UDP, False, 0.0)
    ((_u, _t, sent),) = take_outbox(e)
    e.answer(upstream_answer(sent, _chain("cdn.bad.test.")), 0, 0.0)
    ((client, name, action, rule),) = e.block_log
    assert (client, name, action, rule.pattern) == ("127.0.0.1", b"alias.ok.test", "nxdomain", "cdn.bad.test")


def test_the_server_writes_queued_lines_a_few_per_wake_and_accounts_the_rest(
        caplog: pytest.LogCaptureFixture) -> None:
    """The worker writes at most LINES_PER_WAKE lines after each batch of answers (a quarter
    second's worth at once stalled the loop), the rest later; every block is either a line or
    counted as suppressed."""
    import json
    import logging

    from blockgate.adapters.dns_server import LINES_PER_WAKE, DnsServer
    from blockgate.decisions import DecisionLog

    e = make_engine()
    dl = DecisionLog("all", 1000)
    server = DnsServer(e, [], 1.0, 1, dl)
    e.log_budget[0] = 10
    clients = [f"127.0.0.{10 + i}" for i in range(10)]
    for c in clients:
        e.query(q("nx.test", edns=True), (c, 40000), UDP, False, 0.0)
    with caplog.at_level(logging.INFO, logger="blockgate.decisions"):
        server._write_some()
        first = [ln for r in caplog.records for ln in r.getMessage().splitlines()]
        assert len(first) == LINES_PER_WAKE < 10
        assert len(e.block_log) == 10 - LINES_PER_WAKE
        for _ in range(5):  # blocks beyond the budget: counted only
            e.query(q("nx.test"), CLIENT, UDP, False, 0.0)
        server._write_decisions()  # what the periodic task does: the rest, then accounting
        server._account_decisions(dl)
    lines = [json.loads(ln) for r in caplog.records for ln in r.getMessage().splitlines()]
    assert [d["client"] for d in lines] == clients  # oldest first, each once
    assert e.block_log == [] and dl.suppressed == 5
    assert e.log_budget[0] == int(1000 * 0.25)
