"""IP/TCP/UDP headers, tunnels, link layers and RST building, checked against scapy."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.all import (
    GRE,
    IP,
    TCP,
    UDP,
    CookedLinux,
    Dot1Q,
    Ether,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    Raw,
    fragment,
)

from blockgate.packet import (
    FlowId,
    LinkType,
    PacketFormatError,
    build_rst,
    checksum,
    flow_key,
    header_flow_key,
    inner,
    ip_offset,
    parse_ip,
)

V4 = IP(src="192.0.2.1", dst="198.51.100.7", ttl=51)
V6 = IPv6(src="2001:db8::1", dst="2001:db8::2", hlim=33)
SEG = TCP(sport=40000, dport=443, seq=0xFFFFFF00, ack=77, flags="PA") / Raw(b"\x16\x03\x01hello")
DGRAM = UDP(sport=5353, dport=443) / Raw(b"q" * 30)

PACKETS = [
    ("ipv4-tcp", V4 / SEG),
    ("ipv4-udp", V4 / DGRAM),
    ("ipv4-options", IP(src="192.0.2.1", dst="192.0.2.2", options=b"\x01\x01\x01\x00") / SEG),
    ("ipv6-tcp", V6 / SEG),
    ("ipv6-udp", V6 / DGRAM),
    ("ipv6-hop-dest-routing", V6 / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / IPv6ExtHdrRouting() / SEG),
    ("ipv6-first-fragment", V6 / IPv6ExtHdrFragment(offset=0, m=1, id=7) / SEG),
    ("ipv4-syn", V4 / TCP(sport=1, dport=443, flags="S", seq=5)),
]


@pytest.mark.parametrize("pkt", [p for _, p in PACKETS], ids=[i for i, _ in PACKETS])
def test_headers_match_scapy(pkt: object) -> None:
    raw = bytes(pkt)  # type: ignore[call-overload]
    p = parse_ip(raw)
    sp = IP(raw) if raw[0] >> 4 == 4 else IPv6(raw)
    l4 = sp[TCP] if TCP in sp else sp[UDP]
    assert p.version == sp.version
    assert (p.sport, p.dport) == (l4.sport, l4.dport)
    assert p.payload == bytes(l4.payload)
    assert p.src == (bytes(sp)[12:16] if p.version == 4 else bytes(sp)[8:24])
    if TCP in sp:
        assert (p.proto, p.seq, p.ack, p.flags) == (6, l4.seq, l4.ack, int(l4.flags))
    else:
        assert p.proto == 17
    assert p.ttl == (sp.ttl if p.version == 4 else sp.hlim)
    assert p.fragment == (IPv6ExtHdrFragment in sp)


def test_fragments() -> None:
    frags = fragment(V4 / UDP(sport=1, dport=53) / Raw(b"x" * 3000), fragsize=1000)
    first, later = parse_ip(bytes(frags[0])), parse_ip(bytes(frags[1]))
    assert first.fragment and first.dport == 53
    assert later.fragment and later.dport == 0 and later.payload == b""
    v6 = parse_ip(bytes(V6 / IPv6ExtHdrFragment(offset=100, nh=17) / Raw(b"rest")))
    assert v6.fragment and v6.payload == b""


def test_tso_frame_with_zero_total_length() -> None:
    raw = bytearray(bytes(V4 / SEG))
    raw[2:4] = b"\x00\x00"
    assert parse_ip(bytes(raw)).payload == bytes(SEG.payload)


def test_ip_in_ip_and_gtp_u() -> None:
    inside = bytes(V4 / SEG)
    outer = parse_ip(bytes(IP(src="10.0.0.1", dst="10.0.0.2", proto=4) / Raw(inside)))
    assert inner(outer) == inside
    # 3GPP TS 29.281 G-PDU with the sequence flag and one PDU session container extension
    gtp = b"\x32\xff" + struct.pack("!H", len(inside) + 8) + b"\x00\x00\x00\x01" + b"\x00\x01\x00\x85" \
        + b"\x01\x00\x01\x00" + inside
    tunnel = parse_ip(bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=2152, dport=2152) / Raw(gtp)))
    assert inner(tunnel) == inside
    assert inner(parse_ip(bytes(IP() / GRE() / Raw(inside)))) is None
    assert inner(parse_ip(bytes(V4 / DGRAM))) is None


LONG_CHAIN = IPv6ExtHdrDestOpt()
for _ in range(8):
    LONG_CHAIN = LONG_CHAIN / IPv6ExtHdrDestOpt()


@pytest.mark.parametrize(("raw", "reason"), [
    (b"", "truncated"),
    (b"\x45\x00", "truncated"),
    (b"\x55" + bytes(30), "version"),
    (b"\x4f" + bytes(25), "header"),
    (bytes(V4 / SEG)[:-3], "truncated"),
    (bytes(V4 / TCP())[:30], "truncated"),
    (bytes(IPv6(plen=8, nh=0) / Raw(b"\x06\x05" + bytes(6)))[:46], "truncated"),
    (bytes(V6 / LONG_CHAIN / SEG), "ext-chain"),
], ids=["empty", "short-v4", "version-5", "ihl-too-long", "cut-payload", "cut-tcp", "cut-ext", "long-chain"])
def test_errors(raw: bytes, reason: str) -> None:
    with pytest.raises(PacketFormatError) as exc:
        parse_ip(raw)
    assert exc.value.reason == reason


LINKS = [
    ("ethernet", LinkType.ETHERNET, bytes(Ether() / V4 / SEG), 14),
    ("vlan-qinq", LinkType.ETHERNET, bytes(Ether() / Dot1Q(vlan=7) / Dot1Q(vlan=8) / V6 / SEG), 22),
    ("raw", LinkType.RAW, bytes(V4 / SEG), 0),
    ("sll", LinkType.LINUX_SLL, bytes(CookedLinux(proto=0x86DD) / V6 / SEG), 16),
    ("sll2", LinkType.LINUX_SLL2, b"\x86\xdd\x00\x00" + bytes(16) + bytes(V6 / SEG), 20),
    ("null-little-endian", LinkType.NULL, b"\x02\x00\x00\x00" + bytes(V4 / SEG), 4),
    ("null-big-endian", LinkType.NULL, b"\x00\x00\x00\x1e" + bytes(V6 / SEG), 4),
    ("loop", LinkType.LOOP, b"\x00\x00\x00\x02" + bytes(V4 / SEG), 4),
]


@pytest.mark.parametrize(("linktype", "raw", "offset"), [v[1:] for v in LINKS], ids=[v[0] for v in LINKS])
def test_link_layers(linktype: int, raw: bytes, offset: int) -> None:
    at = ip_offset(linktype, raw)
    assert at == offset
    assert parse_ip(raw[at:]).dport == 443


@pytest.mark.parametrize(("linktype", "raw"), [
    (LinkType.ETHERNET, bytes(Ether(type=0x0806) / Raw(bytes(28)))),
    (LinkType.NULL, b"\x07\x00\x00\x00" + bytes(20)),
    (147, bytes(40)),
    (LinkType.ETHERNET, b"\x00" * 10),
], ids=["arp", "null-af-7", "unknown-linktype", "short-ethernet"])
def test_link_errors(linktype: int, raw: bytes) -> None:
    with pytest.raises(PacketFormatError):
        ip_offset(linktype, raw)


@pytest.mark.parametrize(("src", "dst"), [
    (bytes([192, 0, 2, 1]), bytes([198, 51, 100, 7])),
    (bytes.fromhex("20010db8" + "00" * 11 + "01"), bytes.fromhex("20010db8" + "00" * 11 + "02")),
], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("ack", [None, 0xFFFFFFFF, 12345], ids=["bare", "ack-max", "ack"])
def test_rst_checksums_verified_by_scapy(src: bytes, dst: bytes, ack: int | None) -> None:
    raw = build_rst(src, dst, 443, 40000, 0x1_0000_0005, ack)
    sp = IP(raw) if len(src) == 4 else IPv6(raw)
    tcp = sp[TCP]
    assert tcp.flags == ("RA" if ack is not None else "R")
    assert (tcp.sport, tcp.dport, tcp.seq, tcp.ack) == (443, 40000, 5, ack or 0)
    sent_tcp = tcp.chksum
    del tcp.chksum
    if len(src) == 4:
        sent_ip = sp.chksum
        del sp.chksum
        rebuilt = IP(bytes(sp))
        assert rebuilt.chksum == sent_ip
    else:
        rebuilt = IPv6(bytes(sp))
    assert rebuilt[TCP].chksum == sent_tcp
    assert parse_ip(raw).flags & 0x04


def test_checksum_rfc1071_example() -> None:
    # RFC 1071 §3: the sum of 0001 f203 f4f5 f6f7 is ddf2, so the checksum is 220d
    assert checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D
    assert checksum(b"\x01") == ~0x0100 & 0xFFFF


def test_flow_keys_tell_directions_and_protocols_apart() -> None:
    a = parse_ip(bytes(V4 / SEG))
    b = parse_ip(bytes(IP(src=V4.dst, dst=V4.src) / TCP(sport=443, dport=40000)))
    c = parse_ip(bytes(V4 / UDP(sport=40000, dport=443)))
    assert len({flow_key(a), flow_key(b), flow_key(c)}) == 3
    assert FlowId(6, a.src, a.dst, a.sport, a.dport).dport == 443


@pytest.mark.parametrize("packet", [V4 / SEG, V4 / DGRAM, V6 / SEG, V6 / DGRAM], ids=repr)
def test_header_flow_key_is_the_parsed_packets_key(packet: IP) -> None:
    data = bytes(packet)
    p = parse_ip(data)
    assert header_flow_key(data, 20 if p.version == 4 else 40, p.proto) == flow_key(p)


@given(st.binary(max_size=120))
@settings(max_examples=500)
def test_random_bytes_raise_only_the_format_error(data: bytes) -> None:
    for head in (b"", b"\x45", b"\x60"):
        try:
            p = parse_ip(head + data)
            inner(p)
        except PacketFormatError:
            pass
    for linktype in LinkType:
        with contextlib.suppress(PacketFormatError):
            ip_offset(linktype, data)


@given(st.integers(0, 200), st.sampled_from([p for _, p in PACKETS]))
def test_truncated_real_packets(cut: int, pkt: object) -> None:
    raw = bytes(pkt)[:cut]  # type: ignore[call-overload]
    with contextlib.suppress(PacketFormatError):
        parse_ip(raw)
