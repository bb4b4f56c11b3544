"""Capture files as bytes in, packet records out: pcap and pcapng.

pcap (https://www.ietf.org/archive/id/draft-ietf-opsawg-pcap-04.html): both byte orders,
microsecond and nanosecond variants. pcapng
(https://www.ietf.org/archive/id/draft-ietf-opsawg-pcapng-02.html): Section Header,
Interface Description (per-interface link type and timestamp resolution), Enhanced,
Simple and obsolete Packet blocks, several sections in one file (each with its own byte
order and interfaces); other block types are skipped by their length.

``Record`` is a NamedTuple (one per packet on the replay path, see packet.py for why).
Every ``parse_*`` raises only PcapFormatError; anything else is a bug. Records before the
point where a file breaks are still yielded: the error comes when the walk reaches it.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Final, NamedTuple

from blockgate.errors import FormatError


class PcapFormatError(FormatError):
    """Not a capture file, or one that breaks. ``reason``: ``magic``, ``truncated``,
    ``block-length``, ``interface`` (a packet names an interface never described)."""

    reason = "pcap"


class Record(NamedTuple):
    linktype: int
    ts: float
    data: bytes
    orig_len: int


_PCAP_US: Final = 0xA1B2C3D4
_PCAP_NS: Final = 0xA1B23C4D
_SHB: Final = 0x0A0D0D0A
_IDB: Final = 0x00000001
_OPB: Final = 0x00000002
_SPB: Final = 0x00000003
_EPB: Final = 0x00000006
_BYTE_ORDER_MAGIC: Final = 0x1A2B3C4D
_IF_TSRESOL: Final = 9  # pcapng option: timestamp resolution of an interface
_OPT_END: Final = 0
# A block larger than this is corruption, not a packet (the draft recommends readers
# refuse blocks over 16 MiB; jumbo frames and TSO captures stay far below).
MAX_BLOCK: Final = 16 << 20


def parse_capture(data: bytes) -> Iterator[Record]:
    """Every packet record of a pcap or pcapng file held in ``data``.

    raises only PcapFormatError; anything else is a bug.
    """
    if len(data) < 4:
        raise PcapFormatError(f"{len(data)} bytes, not a capture file", "truncated")
    if int.from_bytes(data[:4], "little") == _SHB:
        return _pcapng(data)
    for order in ("<", ">"):
        magic = struct.unpack_from(order + "I", data)[0]
        if magic in (_PCAP_US, _PCAP_NS):
            return _pcap(data, order, 1e9 if magic == _PCAP_NS else 1e6)
    raise PcapFormatError(f"magic {data[:4].hex()} is neither pcap nor pcapng", "magic")


# ``Record(...)`` runs a Python-level ``__new__``; a classic pcap file makes one per packet.
_new: Final = tuple.__new__


def _pcap(data: bytes, order: str, units: float) -> Iterator[Record]:
    if len(data) < 24:
        raise PcapFormatError("pcap header cut short", "truncated")
    # The link type is the low 16 bits; the upper bits of the field carry FCS information.
    linktype = struct.unpack_from(order + "I", data, 20)[0] & 0xFFFF
    head = struct.Struct(order + "IIII").unpack_from  # bound once: no method lookup per record
    pos, n = 24, len(data)
    # Typed, so that the compiled build slices and divides natively (``unpack_from`` gives Any).
    sec: int
    frac: int
    incl: int
    orig: int
    while pos < n:
        if pos + 16 > n:
            raise PcapFormatError(f"record header cut short at offset {pos}", "truncated")
        sec, frac, incl, orig = head(data, pos)
        pos += 16
        if incl > MAX_BLOCK or pos + incl > n:
            raise PcapFormatError(f"record of {incl} bytes at offset {pos - 16}", "truncated")
        yield _new(Record, (linktype, sec + frac / units, data[pos : pos + incl], orig))
        pos += incl


class _Section:
    """Byte order and interfaces of one pcapng section."""

    __slots__ = ("interfaces", "order")

    def __init__(self, order: str) -> None:
        self.order = order
        self.interfaces: list[tuple[int, float]] = []  # (link type, units per second)


def _pcapng(data: bytes) -> Iterator[Record]:
    pos, n = 0, len(data)
    section = _Section("<")
    last_ts = 0.0
    while pos < n:
        if pos + 12 > n:
            raise PcapFormatError(f"block header cut short at offset {pos}", "truncated")
        btype = int.from_bytes(data[pos : pos + 4], "little")
        if btype == _SHB:  # the byte-order magic says how to read this section
            bom = data[pos + 8 : pos + 12]
            if int.from_bytes(bom, "little") == _BYTE_ORDER_MAGIC:
                section = _Section("<")
            elif int.from_bytes(bom, "big") == _BYTE_ORDER_MAGIC:
                section = _Section(">")
            else:
                raise PcapFormatError(f"byte-order magic {bom.hex()}", "magic")
        order = section.order
        btype, blen = struct.unpack_from(order + "II", data, pos)
        if blen < 12 or blen % 4 or blen > MAX_BLOCK or pos + blen > n:
            raise PcapFormatError(f"block of {blen} bytes at offset {pos}", "block-length")
        body = data[pos + 8 : pos + blen - 4]
        pos += blen
        if btype == _IDB:
            section.interfaces.append(_interface(body, order))
        elif btype in (_EPB, _OPB):
            rec = _enhanced(body, order, section, btype == _OPB)
            last_ts = rec.ts
            yield rec
        elif btype == _SPB:
            if not section.interfaces or len(body) < 4:
                raise PcapFormatError("simple packet block without an interface", "interface")
            orig = struct.unpack_from(order + "I", body)[0]
            yield Record(section.interfaces[0][0], last_ts, body[4 : 4 + orig], orig)


def _interface(body: bytes, order: str) -> tuple[int, float]:
    if len(body) < 8:
        raise PcapFormatError("interface description cut short", "truncated")
    linktype = struct.unpack_from(order + "H", body)[0]
    units = 1e6  # the default resolution: microseconds
    pos = 8
    while pos + 4 <= len(body):
        code, length = struct.unpack_from(order + "HH", body, pos)
        if code == _OPT_END:
            break
        if code == _IF_TSRESOL and length >= 1 and pos + 5 <= len(body):
            v = body[pos + 4]
            units = float(2 ** (v & 0x7F)) if v & 0x80 else float(10 ** min(v, 18))
        pos += 4 + ((length + 3) & ~3)
    return linktype, units


def _enhanced(body: bytes, order: str, section: _Section, obsolete: bool) -> Record:
    if len(body) < 20:
        raise PcapFormatError("packet block cut short", "truncated")
    # the obsolete Packet Block has a 16-bit interface id (and a drop count)
    iface = struct.unpack_from(order + ("H" if obsolete else "I"), body)[0]
    high, low, caplen, orig = struct.unpack_from(order + "IIII", body, 4)
    if iface >= len(section.interfaces):
        raise PcapFormatError(f"packet on interface {iface}, never described", "interface")
    if 20 + caplen > len(body):
        raise PcapFormatError(f"captured length {caplen} beyond its block", "truncated")
    linktype, units = section.interfaces[iface]
    return Record(linktype, ((high << 32) | low) / units, body[20 : 20 + caplen], orig)
