"""IP packets in, headers out; TCP RST segments built; link layers of captures stripped.

``parse_ip`` reads one IPv4 (RFC 791) or IPv6 (RFC 8200) packet with its extension headers,
and the TCP (RFC 9293) or UDP (RFC 768) header behind it. The result is a ``Packet``
NamedTuple rather than a frozen dataclass: it is built for every packet on the hot path,
and a tuple is built in a third of the time (bench/sni.py). Checksums are not verified:
captures taken on a sending host and packets handed over by NFQUEUE carry checksums that the
NIC fills in later (checksum offload), so a wrong checksum proves nothing here.

``build_rst`` makes the RST segments the enforcement adapters send (sequence numbers chosen
by the caller, RFC 9293 §3.10.7.1), with correct IP and TCP checksums (RFC 1071).

``ip_offset`` finds the IP header behind the link-layer header of a capture record
(Ethernet with VLAN tags, raw IP, Linux cooked SLL and SLL2, BSD loopback/NULL).

Every ``parse_*`` raises only PacketFormatError; anything else is a bug.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final, NamedTuple

from blockgate.errors import FormatError


class PacketFormatError(FormatError):
    """Bytes that are not a usable IP packet. ``reason``: ``truncated``, ``version``,
    ``header`` (a header length that cannot be), ``ext-chain`` (too many IPv6 extension
    headers), ``link`` (a link-layer header that does not hold IP)."""

    reason = "packet"


class Proto(IntEnum):
    TCP = 6
    UDP = 17


class Tcp(IntEnum):
    """TCP header flags (RFC 9293 §3.1)."""

    FIN = 0x01
    SYN = 0x02
    RST = 0x04
    PSH = 0x08
    ACK = 0x10


class LinkType(IntEnum):
    """pcap LINKTYPE_ values (https://www.tcpdump.org/linktypes.html)."""

    NULL = 0
    ETHERNET = 1
    RAW = 101
    LOOP = 108
    LINUX_SLL = 113
    IPV4 = 228
    IPV6 = 229
    LINUX_SLL2 = 276


class Packet(NamedTuple):
    """The headers of one packet. ``src``/``dst`` are the 4- or 16-byte addresses; for UDP
    ``seq``, ``ack`` and ``flags`` are 0. ``fragment``: a non-first IP fragment (no ports,
    no payload) or a first fragment (its payload is only the start of the datagram)."""

    version: int
    proto: int
    src: bytes
    dst: bytes
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    payload: bytes
    ttl: int
    fragment: bool


# ``Packet(...)`` runs the NamedTuple's Python-level ``__new__`` (a frame per packet, also
# in the compiled build); the decoders build the tuple directly with every field given.
_new: Final = tuple.__new__

# RFC 8200 §4: headers that follow the common "next header, length in 8-octet units" shape.
_EXT_GENERIC: Final = frozenset({0, 43, 60, 135, 139, 140})
_EXT_FRAGMENT: Final = 44
_EXT_AH: Final = 51  # RFC 4302 §2.2: length in 4-octet units minus 2
# A real packet carries a handful of extension headers; a long chain is an attack on
# parsers (RFC 7112 §5), so the walk is bounded.
MAX_EXTENSIONS: Final = 8
_ETH_IPV4: Final = 0x0800
_ETH_IPV6: Final = 0x86DD
_ETH_VLAN: Final = frozenset({0x8100, 0x88A8, 0x9100})
# The usual frame, answered before the general walk: Ethernet, untagged, IPv4 or IPv6.
_ETHERNET: Final = int(LinkType.ETHERNET)
_UNTAGGED_IP: Final = frozenset({b"\x08\x00", b"\x86\xdd"})
# BSD loopback address families (IPv6 differs by OS: 24 NetBSD/OpenBSD, 28 FreeBSD, 30 macOS).
_AF_INET: Final = 2
_AF_INET6: Final = frozenset({24, 28, 30, 10})
MAX_VLAN_TAGS: Final = 4


def parse_ip(data: bytes) -> Packet:
    """The IP and transport headers of ``data`` (an IP packet without link header).

    Protocols other than TCP and UDP come back with ports 0 and an empty payload.
    raises only PacketFormatError; anything else is a bug.
    """
    if not data:
        raise PacketFormatError("empty packet", "truncated")
    v = data[0] >> 4
    if v == 4:
        return _ipv4(data)
    if v == 6:
        return _ipv6(data)
    raise PacketFormatError(f"IP version {v}", "version")


def _ipv4(data: bytes) -> Packet:
    """RFC 791 §3.1."""
    n = len(data)
    ihl = (data[0] & 0x0F) * 4
    if n < 20 or ihl < 20 or ihl > n:
        raise PacketFormatError(f"IPv4 header of {ihl} bytes in {n}", "truncated" if n < 20 else "header")
    total = (data[2] << 8) | data[3]
    if total == 0:  # segmentation offload on the capturing host leaves the length 0
        total = n
    elif total < ihl or total > n:
        raise PacketFormatError(f"IPv4 total length {total} with {n} bytes", "truncated")
    frag = ((data[6] << 8) | data[7]) & 0x3FFF
    if frag & 0x1FFF:  # not the first fragment: no transport header here
        return _new(Packet, (4, data[9], data[12:16], data[16:20], 0, 0, 0, 0, 0, b"", data[8], True))
    return _transport(data, ihl, total, 4, data[9], data[12:16], data[16:20], data[8], bool(frag))


def _ipv6(data: bytes) -> Packet:
    """RFC 8200 §3 and §4 (extension headers walked, at most MAX_EXTENSIONS)."""
    n = len(data)
    if n < 40:
        raise PacketFormatError(f"IPv6 packet of {n} bytes", "truncated")
    plen = (data[4] << 8) | data[5]
    end = n if plen == 0 else 40 + plen  # 0: a jumbogram (RFC 2675) or offload
    if end > n:
        raise PacketFormatError(f"IPv6 payload length {plen} with {n - 40} bytes", "truncated")
    nxt, pos, fragment = data[6], 40, False
    src, dst, hops = data[8:24], data[24:40], data[7]
    for _ in range(MAX_EXTENSIONS):
        if nxt in _EXT_GENERIC:
            size = (data[pos + 1] + 1) * 8 if pos + 2 <= end else 0
        elif nxt == _EXT_FRAGMENT:
            if pos + 8 > end:
                raise PacketFormatError("fragment header cut short", "truncated")
            if ((data[pos + 2] << 8) | data[pos + 3]) & 0xFFF8:  # offset > 0
                return _new(Packet, (6, data[pos], src, dst, 0, 0, 0, 0, 0, b"", hops, True))
            fragment, size = True, 8
        elif nxt == _EXT_AH:
            size = (data[pos + 1] + 2) * 4 if pos + 2 <= end else 0
        else:
            return _transport(data, pos, end, 6, nxt, src, dst, hops, fragment)
        if not size or pos + size > end:
            raise PacketFormatError(f"extension header {nxt} cut short", "truncated")
        nxt = data[pos]
        pos += size
    raise PacketFormatError(f"more than {MAX_EXTENSIONS} extension headers", "ext-chain")


def _transport(data: bytes, pos: int, end: int, v: int, proto: int, src: bytes, dst: bytes,
               ttl: int, fragment: bool) -> Packet:
    if proto == 6:  # RFC 9293 §3.1
        if pos + 20 > end:
            raise PacketFormatError("TCP header cut short", "truncated")
        off = (data[pos + 12] >> 4) * 4
        if off < 20 or pos + off > end:
            raise PacketFormatError(f"TCP data offset {off}", "header")
        return _new(Packet, (v, 6, src, dst, (data[pos] << 8) | data[pos + 1],
                             (data[pos + 2] << 8) | data[pos + 3],
                             int.from_bytes(data[pos + 4 : pos + 8], "big"),
                             int.from_bytes(data[pos + 8 : pos + 12], "big"),
                             data[pos + 13], data[pos + off : end], ttl, fragment))
    if proto == 17:  # RFC 768
        if pos + 8 > end:
            raise PacketFormatError("UDP header cut short", "truncated")
        ulen = (data[pos + 4] << 8) | data[pos + 5]
        stop = pos + ulen if 8 <= ulen <= end - pos else end  # 0 or wrong: trust the IP length
        return _new(Packet, (v, 17, src, dst, (data[pos] << 8) | data[pos + 1],
                             (data[pos + 2] << 8) | data[pos + 3], 0, 0, 0, data[pos + 8 : stop], ttl,
                             fragment))
    if proto in _IP_IN_IP:  # the inner packet is the payload (see ``inner``)
        return _new(Packet, (v, proto, src, dst, 0, 0, 0, 0, 0, data[pos:end], ttl, fragment))
    return _new(Packet, (v, proto, src, dst, 0, 0, 0, 0, 0, b"", ttl, fragment))


# -- tunnels ----------------------------------------------------------------------------

# IPv4 in IP (RFC 2003) and IPv6 in IP (RFC 2473 / RFC 4213).
_IP_IN_IP: Final = frozenset({4, 41})
# GTP-U, the user plane of mobile networks (3GPP TS 29.281 §4.4.2: UDP port 2152).
GTP_U_PORT: Final = 2152
_GTP_GPDU: Final = 0xFF
# 3GPP TS 29.281 §5.2: extension headers chain; a real G-PDU carries one or two.
MAX_GTP_EXTENSIONS: Final = 8


def inner(p: Packet) -> bytes | None:
    """The IP packet a tunnel packet carries (IP in IP, GTP-U G-PDU), else None.

    raises only PacketFormatError; anything else is a bug.
    """
    if p.proto in _IP_IN_IP:
        return p.payload
    if p.proto == 17 and GTP_U_PORT in (p.sport, p.dport) and not p.fragment:
        return _gtp_u(p.payload)
    return None


def _gtp_u(b: bytes) -> bytes | None:
    """3GPP TS 29.281 §5.1: version 1, protocol type GTP, message type G-PDU."""
    if len(b) < 8 or b[0] >> 5 != 1 or not b[0] & 0x10 or b[1] != _GTP_GPDU:
        return None
    pos = 8
    if b[0] & 0x07:  # E, S or PN: sequence number, N-PDU number, next extension type
        if len(b) < 12:
            raise PacketFormatError("GTP-U optional fields cut short", "truncated")
        nxt, pos = b[11], 12
        for _ in range(MAX_GTP_EXTENSIONS):
            if not nxt:
                break
            if pos >= len(b) or not b[pos]:
                raise PacketFormatError("GTP-U extension header cut short", "truncated")
            pos += b[pos] * 4
            if pos > len(b):
                raise PacketFormatError("GTP-U extension header cut short", "truncated")
            nxt = b[pos - 1]
        else:
            raise PacketFormatError("too many GTP-U extension headers", "ext-chain")
    return b[pos:]


# -- link layers ------------------------------------------------------------------------


def ip_offset(linktype: int, data: bytes) -> int:
    """Where the IP header starts in a capture record of ``linktype``.

    raises only PacketFormatError (reason ``link``: not IP, or an unknown link type).
    """
    if linktype == _ETHERNET:
        return 14 if data[12:14] in _UNTAGGED_IP else _ethernet(data)
    if linktype in (LinkType.RAW, LinkType.IPV4, LinkType.IPV6):
        return 0
    if linktype == LinkType.LINUX_SLL:  # 16-byte header, protocol at 14
        return _ethertype(data, 14, 16)
    if linktype == LinkType.LINUX_SLL2:  # 20-byte header, protocol at 0
        return _ethertype(data, 0, 20)
    if linktype in (LinkType.NULL, LinkType.LOOP):
        if len(data) < 4:
            raise PacketFormatError("loopback header cut short", "truncated")
        # NULL is in the capturing host's byte order, LOOP in network order: try both.
        af = int.from_bytes(data[:4], "big" if linktype == LinkType.LOOP else "little")
        if af > 0xFFFF:
            af = int.from_bytes(data[:4], "big")
        if af == _AF_INET or af in _AF_INET6:
            return 4
        raise PacketFormatError(f"loopback address family {af}", "link")
    raise PacketFormatError(f"link type {linktype}", "link")


def _ethernet(data: bytes) -> int:
    pos = 12
    for _ in range(MAX_VLAN_TAGS + 1):
        if pos + 2 > len(data):
            raise PacketFormatError("Ethernet header cut short", "truncated")
        etype = (data[pos] << 8) | data[pos + 1]
        if etype not in _ETH_VLAN:
            return _ethertype(data, pos, pos + 2)
        pos += 4
    raise PacketFormatError("too many VLAN tags", "link")


def _ethertype(data: bytes, at: int, ip: int) -> int:
    if len(data) < ip:
        raise PacketFormatError("link header cut short", "truncated")
    etype = (data[at] << 8) | data[at + 1]
    if etype in (_ETH_IPV4, _ETH_IPV6):
        return ip
    raise PacketFormatError(f"ethertype {etype:#06x} is not IP", "link")


# -- building RSTs ------------------------------------------------------------------------

_TTL: Final = 64


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071): one's complement of the one's complement sum."""
    if len(data) & 1:
        data += b"\x00"
    s = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def build_rst(src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int | None) -> bytes:
    """An IPv4 or IPv6 packet (by the address length) holding a TCP RST from ``src:sport``.

    With ``ack`` the segment is RST+ACK acknowledging ``ack``; without, a bare RST (RFC 9293
    §3.10.7.1: a reset answering a segment that had an ACK carries seq = that ACK and no ACK).
    """
    flags = Tcp.RST | (Tcp.ACK if ack is not None else 0)
    tcp = (sport.to_bytes(2, "big") + dport.to_bytes(2, "big") + (seq & 0xFFFFFFFF).to_bytes(4, "big")
           + ((ack or 0) & 0xFFFFFFFF).to_bytes(4, "big") + bytes((0x50, flags)) + b"\x00\x00")
    if len(src) == 4:
        pseudo = src + dst + b"\x00\x06\x00\x14"
        tcp += checksum(pseudo + tcp + b"\x00\x00").to_bytes(2, "big") + b"\x00\x00"
        head = b"\x45\x00\x00\x28\x00\x00\x40\x00" + bytes((_TTL, 6)) + b"\x00\x00" + src + dst
        return head[:10] + checksum(head).to_bytes(2, "big") + head[12:] + tcp
    pseudo = src + dst + b"\x00\x00\x00\x14\x00\x00\x00\x06"
    tcp += checksum(pseudo + tcp + b"\x00\x00").to_bytes(2, "big") + b"\x00\x00"
    return b"\x60\x00\x00\x00\x00\x14\x06" + bytes((_TTL,)) + src + dst + tcp


# The extra RSTs of a burst sit one full-size segment apart (RFC 9293 §3.7.1 default MSS for
# Ethernet paths, 1460), as the GFW's bursts at A, A+1460, A+4380 did (net4people/bbs#285):
# they still hit the client's RCV.NXT after that many bytes of server data got there first.
RST_STEP: Final = 1460
_SEQ_MOD: Final = 1 << 32


def resets(p: Packet, server_next: int, burst: int = 0) -> list[bytes]:
    """RST segments (IP packets) that end the TCP flow of client packet ``p`` at both ends.

    To the server, from the client: ``server_next``, the exact RCV.NXT the server has
    (RFC 5961 §3.2 makes anything else a challenge ACK). To the client, from the server:
    seq = the ACK the client sent, the server's SND.NXT as the client knows it, plus
    ``burst`` more at RST_STEP offsets for server data that may overtake it. A segment
    without an ACK (TFO data in the SYN) is answered by RST+ACK with seq 0 (RFC 9293
    §3.10.7.1).
    """
    if p.proto != 6:
        return []
    end = (p.seq + len(p.payload) + (1 if p.flags & Tcp.SYN else 0)) % _SEQ_MOD
    out = [build_rst(p.src, p.dst, p.sport, p.dport, server_next, None)]
    if p.flags & Tcp.ACK:
        out += [build_rst(p.dst, p.src, p.dport, p.sport, (p.ack + i * RST_STEP) % _SEQ_MOD, end)
                for i in range(burst + 1)]
    else:
        out.append(build_rst(p.dst, p.src, p.dport, p.sport, 0, end))
    return out


class FlowId(NamedTuple):
    """One direction of a transport flow, as the client sent it (client first)."""

    proto: int
    src: bytes
    dst: bytes
    sport: int
    dport: int


def flow_key(p: Packet) -> bytes:
    """A dict key for ``p``'s direction of its flow: addresses and ports in one bytes object
    (hashing one bytes is cheaper than hashing a tuple of four fields)."""
    return p.src + p.dst + bytes((p.proto, p.sport >> 8, p.sport & 0xFF, p.dport >> 8, p.dport & 0xFF))


def header_flow_key(data: bytes, transport: int, proto: int) -> bytes:
    """``flow_key(parse_ip(data))`` read straight from the bytes, for a packet whose
    transport header starts at ``transport``: 20 (IPv4 without options) or 40 (IPv6
    without extension headers). The caller has checked that layout."""
    addresses = data[12:20] if transport == 20 else data[8:40]
    return addresses + bytes((proto,)) + data[transport : transport + 4]
