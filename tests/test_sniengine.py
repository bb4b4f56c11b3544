"""Packet decisions: every capture against tshark, ClientHellos cut everywhere and shuffled,
verdict mechanics (block, retransmission, HRR, allow, no SNI), bounds, DNS, QUIC, fuzzing.

The oracle for the captures is tshark's ``*.truth.tsv`` (tests/fixtures/pcaps/README.md);
for the cut and shuffled variants it is the decision on the whole, unchanged ClientHello.
"""

from __future__ import annotations

import csv
import io
import itertools
import random
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockgate.lists import parse as parse_list
from blockgate.lists.base import Input
from blockgate.packet import PacketFormatError, ip_offset, parse_ip, resets
from blockgate.pcap import parse_capture
from blockgate.quic import QuicFormatError, parse_datagram
from blockgate.sniengine import Decision, Event, Kind, Settings, SniEngine
from blockgate.stats import Stats
from blockgate.trie import Matcher, SourceInfo, compile_rules
from blockgate.verdict import Verdict

sys.path.insert(0, str(Path(__file__).parent))
from test_quic import RFC_DCID, crypto_frame, initial, pad  # the QUIC packet builder

PCAPS = Path(__file__).parent / "fixtures" / "pcaps"
FILES = sorted(p.name for p in PCAPS.iterdir() if p.suffix in (".pcap", ".pcapng"))
PORTS = frozenset({443, 4443, 8013, 8443})  # the fixtures' TLS/QUIC ports (tshark found all)
# The README's exceptions: tshark does not report a ClientHello resent after a Retry.
EXTRA = {"quic-v1-retry.pcap": {(6, "quic", "www.gravatar.com")}}


def matcher(block: list[str], allow: list[str] = ()) -> Matcher:  # type: ignore[assignment]
    text = "".join(f"||{n}^\n" for n in block) + "".join(f"@@||{n}^\n" for n in allow)
    parsed = parse_list("adblock", [Input("test", io.BytesIO(text.encode()))])
    return compile_rules([SourceInfo("test", "adblock", "registry", None, None, parsed)])


def engine(block: list[str] = (), allow: list[str] = (), **kw: object) -> SniEngine:  # type: ignore[assignment]
    return SniEngine(matcher(list(block), list(allow)).match, Settings(PORTS, **kw), Stats())  # type: ignore[arg-type]


def packets(name: str) -> Iterator[tuple[float, bytes]]:
    for rec in parse_capture((PCAPS / name).read_bytes()):
        try:
            at = ip_offset(rec.linktype, rec.data)
        except PacketFormatError:
            continue
        yield rec.ts, rec.data[at:]


def escape(name: bytes) -> str:
    return "".join(chr(b) if 32 < b < 127 and b != 92 else f"\\{b:03o}" for b in name)


def decided(eng: SniEngine, name: str) -> set[tuple[int, str, str]]:
    got: set[tuple[int, str, str]] = set()
    for frame, (ts, data) in enumerate(packets(name), 1):
        for e in eng.on_packet(data, ts).events:
            if e.complete or (e.kind == Kind.MALFORMED and e.proto == "dns"):
                got |= {(frame, e.proto, escape(n)) for n in (e.names or (b"",))}
    return got


def truth(name: str) -> set[tuple[int, str, str]]:
    rows = set()
    with open(PCAPS / f"{name}.truth.tsv") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            if row["kind"].startswith("dns_response"):
                continue  # responses are not decisions
            shown = row["name"]
            shown = "" if shown.startswith("<") else shown  # tshark's markers for broken names
            rows.add((int(row["frame_number"]), row["proto"], shown.lower()))
    return rows


@pytest.mark.parametrize("name", FILES)
def test_capture_matches_tshark(name: str) -> None:
    eng = engine(["google.com"])
    assert decided(eng, name) == truth(name) | EXTRA.get(name, set())
    eng.finish(1e12)
    assert len(eng.tcp) == len(eng.udp) == 0


# -- TCP packets for the cut and shuffled variants ---------------------------------------------

CLIENT, SERVER = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
ISN = 0xFFFFFF00  # sequence numbers wrap inside the ClientHello


def tcp(payload: bytes = b"", seq: int = ISN + 1, flags: int = 0x18, sport: int = 40000, dport: int = 443,
        src: bytes = CLIENT, dst: bytes = SERVER, ack: int = 1000) -> bytes:
    seg = struct.pack("!HHIIBBHHH", sport, dport, seq % (1 << 32), ack, 0x50, flags, 65535, 0, 0) + payload
    head = struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(seg), 0, 0x4000, 64, 6, 0) + src + dst
    return head + seg


SYN = tcp(seq=ISN, flags=0x02)


def hello_streams() -> dict[str, tuple[bytes, str]]:
    """The first ClientHello stream of each TLS capture with a name, and the name."""
    from scapy.all import TCP, rdpcap

    out = {}
    for name in FILES:
        rows = [r for r in truth(name) if r[1] == "tls"]
        if not rows or "malformed" in name or "anomaly" in name:
            continue
        segs: dict[int, bytes] = {}
        pkts = rdpcap(str(PCAPS / name))
        first = pkts[rows and min(r[0] for r in rows) - 1]
        sport = first[TCP].sport
        for p in pkts:
            if TCP in p and p[TCP].sport == sport and bytes(p[TCP].payload):
                segs.setdefault(p[TCP].seq + (1 if p[TCP].flags.S else 0), bytes(p[TCP].payload))
        base = min(segs)
        stream = b"".join(segs[k] for k in sorted(segs))
        length = 5 + int.from_bytes(stream[3:5], "big")
        if len(stream) >= length and sum(map(len, segs.values())) >= length:
            sni = min(rows)[2]
            out[name] = (stream[:length], sni)
        assert base
    return out


HELLOS = hello_streams()


def run(eng: SniEngine, pkts: list[bytes], now: float = 1.0) -> list[Decision]:
    return [eng.on_packet(p, now) for p in pkts]


@pytest.mark.parametrize("name", sorted(HELLOS))
def test_cut_at_every_byte_boundary(name: str) -> None:
    stream, sni = HELLOS[name]
    whole = run(engine([sni] if sni else []), [SYN, tcp(stream)])[-1]
    want = (Verdict.BLOCK if sni else Verdict.UNKNOWN)
    assert whole.event is not None and whole.event.verdict is want
    step = 1 if len(stream) < 4000 else 7  # the 11 KB one: every 7th cut keeps the suite fast
    eng = engine([sni] if sni else [], max_flows=4)
    for i in range(1, len(stream), step):
        sport = 1024 + i % 60000
        ds = run(eng, [tcp(seq=ISN, flags=0x02, sport=sport), tcp(stream[:i], sport=sport),
                       tcp(stream[i:], seq=ISN + 1 + i, sport=sport)])
        assert not ds[1].events, i
        assert ds[2].event is not None and ds[2].event.names == whole.event.names, i
        assert ds[2].verdict is (Verdict.BLOCK if sni else Verdict.PASS)


@pytest.mark.parametrize("name", sorted(HELLOS))
@given(data=st.data())
@settings(max_examples=30, deadline=None)
def test_shuffled_and_overlapping_segments(name: str, data: st.DataObject) -> None:
    stream, sni = HELLOS[name]
    n = len(stream)
    cuts = sorted(set(data.draw(st.lists(st.integers(1, n - 1), min_size=1, max_size=8))))
    bounds = [0, *cuts, n]
    segs = [(a, stream[a:b]) for a, b in itertools.pairwise(bounds)]
    a = data.draw(st.integers(0, n - 1))
    segs.append((a, stream[a : a + data.draw(st.integers(1, 300))]))  # a same-bytes overlap
    random.Random(data.draw(st.integers())).shuffle(segs)
    eng = engine([sni] if sni else [])
    ds = run(eng, [SYN] + [tcp(chunk, seq=ISN + 1 + off) for off, chunk in segs])
    hits = [(i, d) for i, d in enumerate(ds) if d.complete]
    assert len(hits) == 1
    i, d = hits[0]
    assert d.event is not None and d.event.names == ((sni.encode(),) if sni else ())
    # it is decided on the segment that completes the stream, not before
    covered = set()
    for off, chunk in segs[: i - 1]:
        covered |= set(range(off, off + len(chunk)))
    assert len(covered) < n


# -- verdict mechanics -------------------------------------------------------------------------

OPENSSL = HELLOS["tls12-sni-raw-githubusercontent.pcap"][0]


def test_block_drops_the_completing_packet_and_the_rest() -> None:
    eng = engine(["githubusercontent.com"])
    cut = 100
    d = run(eng, [SYN, tcp(OPENSSL[:cut]), tcp(OPENSSL[cut:], seq=ISN + 1 + cut),
                  tcp(OPENSSL[cut:], seq=ISN + 1 + cut), tcp(b"x", seq=ISN + 1 + len(OPENSSL)),
                  tcp(b"reply", sport=443, dport=40000, src=SERVER, dst=CLIENT)])
    assert [x.verdict for x in d] == [Verdict.PASS, Verdict.PASS, Verdict.BLOCK, Verdict.BLOCK,
                                      Verdict.BLOCK, Verdict.PASS]
    block = d[2]
    assert block.event is not None and block.event.rule is not None and block.event.rule.source == "test"
    assert block.name == b"raw.githubusercontent.com" and block.proto == "tls"
    assert block.packet is not None
    assert block.client_next_dropped == (ISN + 1 + cut) % (1 << 32)
    assert block.client_next == (ISN + 1 + len(OPENSSL)) % (1 << 32)
    assert eng.stats.sni_flows["tls", "block"] == 1
    assert eng.stats.blocked["tls", "test", "registry"] == 1
    # RSTs: to the server at what it has, to the client at its own ACK, plus a burst
    rsts = [parse_ip(r) for r in resets(block.packet, block.client_next_dropped, burst=2)]
    assert [(r.src, r.seq) for r in rsts] == [(CLIENT, block.client_next_dropped), (SERVER, 1000),
                                              (SERVER, 1000 + 1460), (SERVER, 1000 + 2920)]
    assert all(r.flags & 0x04 for r in rsts)
    # a new connection on the same ports is inspected afresh
    again = run(eng, [SYN, tcp(OPENSSL)])
    assert again[0].verdict is Verdict.PASS and again[1].verdict is Verdict.BLOCK


def test_allowed_and_unknown_names() -> None:
    eng = engine(["githubusercontent.com"], ["raw.githubusercontent.com"])
    d = run(eng, [SYN, tcp(OPENSSL)])[-1]
    assert d.verdict is Verdict.PASS and d.event is not None and d.event.verdict is Verdict.ALLOW
    no_sni = HELLOS["tls-no-sni.pcap"][0]
    d = run(engine(), [SYN, tcp(no_sni)])[-1]
    assert d.event is not None and d.event.verdict is Verdict.UNKNOWN and d.verdict is Verdict.PASS


def test_second_client_hello_after_hello_retry_request_is_inspected() -> None:
    eng = engine(["githubusercontent.com"])
    first = HELLOS["tls-no-sni.pcap"][0]
    ccs = b"\x14\x03\x03\x00\x01\x01"
    d = run(eng, [SYN, tcp(first), tcp(ccs + OPENSSL, seq=ISN + 1 + len(first))])
    assert d[1].event is not None and d[1].event.verdict is Verdict.UNKNOWN
    assert d[2].verdict is Verdict.BLOCK
    # application data after a ClientHello ends inspection: the flow leaves the table
    eng2 = engine()
    run(eng2, [SYN, tcp(OPENSSL), tcp(b"\x17\x03\x03\x00\x01x", seq=ISN + 1 + len(OPENSSL))])
    assert len(eng2.tcp) == 0 and len(eng2.done) == 1


def test_tfo_hello_in_the_syn() -> None:
    d = run(engine(["githubusercontent.com"]), [tcp(OPENSSL, seq=ISN, flags=0x02)])[0]
    assert d.verdict is Verdict.BLOCK and d.packet is not None
    rsts = [parse_ip(r) for r in resets(d.packet, d.client_next_dropped)]
    assert rsts[1].seq == 0 and rsts[1].ack == (ISN + 1 + len(OPENSSL)) % (1 << 32)


def test_not_tls_and_midstream() -> None:
    eng = engine()
    d = run(eng, [tcp(b"GET / HTTP/1.1\r\n\r\n")])[0]
    assert d.event is not None and (d.event.kind, d.event.reason) == (Kind.MALFORMED, "not-tls")
    assert eng.stats.malformed["tls", "not-tls"] == 1
    mid = run(engine(["githubusercontent.com"]), [tcp(OPENSSL, seq=12345)])[0]  # no SYN seen
    assert mid.verdict is Verdict.BLOCK


# -- bounds ------------------------------------------------------------------------------------

HUGE = HELLOS["tls-huge-ch-12seg-no-sni.pcapng"][0]


def test_bytes_bound_gives_a_final_unknown_and_frees_the_flow() -> None:
    eng = engine(max_flow_bytes=4096)
    ds = run(eng, [SYN] + [tcp(HUGE[i : i + 1000], seq=ISN + 1 + i) for i in range(0, len(HUGE), 1000)])
    events = [e for d in ds for e in d.events]
    assert [(e.kind, e.verdict) for e in events] == [(Kind.OVERFLOW, Verdict.UNKNOWN)]
    assert len(eng.tcp) == 0 and eng.stats.malformed["tls", "overflow"] == 1


def test_flow_bound_evicts_the_oldest() -> None:
    eng = engine(max_flows=1)
    d = run(eng, [tcp(OPENSSL[:50], sport=1), tcp(OPENSSL[:50], sport=2)])
    assert d[1].event is not None and (d[1].event.kind, d[1].event.flow.sport) == (Kind.EVICTED, 1)
    assert len(eng.tcp) == 1


def test_idle_flows_time_out() -> None:
    eng = engine(flow_timeout=10.0)
    eng.on_packet(tcp(OPENSSL[:50]), 0.0)
    d = eng.on_packet(tcp(b"", sport=5, flags=0x02), 30.0)
    assert d.event is not None and d.event.kind == Kind.TIMEOUT and len(eng.tcp) == 1


def flow_packets() -> st.SearchStrategy[list[tuple[int, int, int, bytes]]]:
    real = st.sampled_from([OPENSSL[:200], OPENSSL[200:], b"\x16\x03\x01"])
    chunk = st.one_of(st.binary(max_size=80), real)
    flags = st.sampled_from([0x02, 0x10, 0x18, 0x04])
    return st.lists(st.tuples(st.integers(0, 20), st.integers(0, 4000), flags, chunk), max_size=120)


@given(flow_packets(), st.integers(1, 8), st.integers(64, 2048))
@settings(max_examples=200, deadline=None)
def test_flow_table_never_exceeds_its_bounds(ops: list[tuple[int, int, int, bytes]], max_flows: int,
                                             max_bytes: int) -> None:
    eng = engine(["githubusercontent.com"], max_flows=max_flows, max_flow_bytes=max_bytes, flow_timeout=5.0)
    for t, (port, seq, flags, payload) in enumerate(ops):
        eng.on_packet(tcp(payload, seq=ISN + seq, flags=flags, sport=1000 + port), t * 0.1)
        assert len(eng.tcp) <= max_flows and len(eng.blocked) <= max_flows and len(eng.done) <= max_flows
        for f in eng.tcp.flows.values():
            assert f.stream is None or len(f.stream) <= max_bytes


@given(st.binary(max_size=200))
@settings(max_examples=500)
def test_random_packets_never_raise(data: bytes) -> None:
    eng = engine()
    for head in (b"", b"\x45\x00", bytes.fromhex("4500003c00004000400600000a0000010a000002")):
        eng.on_packet(head + data, 0.0)


# -- QUIC --------------------------------------------------------------------------------------


def udp(payload: bytes, sport: int = 50000, dport: int = 443) -> bytes:
    dgram = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    return struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(dgram), 0, 0, 64, 17, 0) + CLIENT + SERVER + dgram


def quic_crypto(name: str) -> bytes:
    """The decrypted CRYPTO stream (the ClientHello) of a capture's first QUIC flow."""
    pieces: dict[int, bytes] = {}
    for _ts, data in packets(name):
        p = parse_ip(data)
        if p.proto == 17 and p.dport in PORTS:
            try:
                dg = parse_datagram(p.payload)
            except QuicFormatError:  # the server's Initials and the fuzz: not the client's
                continue
            for ini in dg.initials:
                for off, chunk in ini.crypto:
                    pieces.setdefault(off, chunk)
    out = b""
    while len(out) in pieces:
        out += pieces[len(out)]
    return out[: 4 + int.from_bytes(out[1:4], "big")]


QUIC_HELLOS = {n: quic_crypto(n) for n in ("quic-v1-curl-http3.pcap", "quic-v1-ch-multi-initial-ipv6.pcap")}


@pytest.mark.parametrize("name", sorted(QUIC_HELLOS))
def test_quic_hello_cut_everywhere_and_reordered(name: str) -> None:
    ch = QUIC_HELLOS[name]
    eng = engine(["doubleclick.net", "google.de"])
    for i in range(1, len(ch), 3):
        sport = 1024 + i
        first = udp(initial(pad(crypto_frame(0, ch[:i]), 40), dcid=RFC_DCID, pn=0), sport=sport)
        second = udp(initial(pad(crypto_frame(i, ch[i:]), 40), dcid=RFC_DCID, pn=1), sport=sport)
        order = (first, second) if i % 2 else (second, first)
        ds = run(eng, list(order))
        assert not ds[0].events and ds[1].verdict is Verdict.BLOCK, i
        assert ds[1].proto == "quic"
        assert run(eng, [first])[0].verdict is Verdict.BLOCK  # later Initials of the flow are dropped


def test_decided_quic_flow_opens_later_initials_only_for_a_new_dcid() -> None:
    """After its ClientHello a flow's later Initials pass unopened while their DCID is one
    already seen on it; an Initial with a new DCID (a restart after a Retry has one) is
    still opened. Shown with bytes that would not authenticate: only the second counts."""
    ch = QUIC_HELLOS["quic-v1-curl-http3.pcap"]
    eng = engine()
    hello = udp(initial(pad(crypto_frame(0, ch)), dcid=RFC_DCID, pn=0))
    assert run(eng, [hello])[0].events[0].kind == Kind.HELLO
    forged = bytearray(hello)
    forged[-20] ^= 0xFF
    d = eng.on_packet(bytes(forged), 2.0)
    assert d.verdict is Verdict.PASS and not d.events and sum(eng.stats.malformed.values()) == 0
    other = bytearray(udp(initial(pad(crypto_frame(0, ch)), dcid=b"\x01" * 8, pn=1)))
    other[-20] ^= 0xFF
    d = eng.on_packet(bytes(other), 3.0)
    assert d.verdict is Verdict.PASS and not d.events
    assert eng.stats.malformed["quic", "decrypt"] == 1


def test_quic_garbage_is_counted_not_decided() -> None:
    eng = engine()
    d = eng.on_packet(udp(b"\xc0\x00\x00\x00\x01\x08" + bytes(1200)), 0.0)
    assert d.verdict is Verdict.PASS and not d.events
    assert sum(eng.stats.malformed.values()) == 1


# -- DNS and tunnels ---------------------------------------------------------------------------


def dns_query(name: str, qid: int = 1) -> bytes:
    q = b"".join(bytes((len(x),)) + x.encode() for x in name.split(".")) + b"\x00\x00\x01\x00\x01"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + q


def test_dns_over_udp_and_pipelined_tcp() -> None:
    eng = engine(["blocked.example"])
    d = eng.on_packet(udp(dns_query("www.Blocked.example"), dport=53), 0.0)
    assert (d.verdict, d.proto, d.name) == (Verdict.BLOCK, "dns", b"www.blocked.example")
    queries = (dns_query("a.example"), dns_query("blocked.example"))
    msgs = b"".join(struct.pack("!H", len(m)) + m for m in queries)
    ds = run(eng, [tcp(seq=ISN, flags=0x02, dport=53), tcp(msgs[:7], dport=53),
                   tcp(msgs[7:], seq=ISN + 8, dport=53)])
    assert [e.name for e in ds[2].events] == [b"a.example", b"blocked.example"]
    assert ds[2].verdict is Verdict.BLOCK


def test_gtp_u_tunnelled_hello_is_decided_without_rst_data() -> None:
    inside = tcp(OPENSSL, seq=ISN, flags=0x02)
    gtp = b"\x30\xff" + struct.pack("!H", len(inside)) + b"\x00\x00\x00\x07" + inside
    d = engine(["githubusercontent.com"]).on_packet(udp(gtp, sport=2152, dport=2152), 0.0)
    assert d.verdict is Verdict.BLOCK and d.packet is None


def test_event_fields() -> None:
    e = Event(Kind.TIMEOUT, "tls", parse_flow(), Verdict.UNKNOWN)
    assert not e.complete and Decision(Verdict.PASS, (e,)).flow == e.flow


def parse_flow() -> object:
    from blockgate.packet import FlowId

    return FlowId(6, CLIENT, SERVER, 1, 443)
