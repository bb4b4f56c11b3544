"""DNS on raw bytes: the query fast path, block answers by patching bytes, answer scanning.

Nothing here builds a message object per packet. A query is read with index arithmetic:
header checks, the one question's labels (lowercased into the matcher's dotted key), the
OPT record if any. Block answers are the query's own header and question bytes (the name
exactly as sent, 0x20 case included) followed by records prepared once per configuration.

RFC 1035 §4.1 (https://www.rfc-editor.org/rfc/rfc1035#section-4.1) for the layout, RFC 6891
for OPT, RFC 8914 for Extended DNS Errors, RFC 2308 §3 for the SOA in negative answers.

Every ``parse_*``/``read_*`` raises only DnsFormatError; anything else is a bug.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence
from enum import IntEnum
from typing import Final

from blockgate.errors import FormatError


class DnsFormatError(FormatError):
    """Bytes that are not a usable DNS message; ``reason`` is a short stable code."""


class Rcode(IntEnum):
    NOERROR = 0
    FORMERR = 1
    SERVFAIL = 2
    NXDOMAIN = 3
    NOTIMP = 4
    REFUSED = 5


class QType(IntEnum):
    A = 1
    NS = 2
    CNAME = 5
    SOA = 6
    PTR = 12
    MX = 15
    TXT = 16
    AAAA = 28
    DNAME = 39
    OPT = 41
    HTTPS = 65
    ANY = 255


class Ede(IntEnum):
    """RFC 8914 §4 info-codes used here."""

    OTHER = 0
    BLOCKED = 15
    CENSORED = 16
    FILTERED = 17
    PROHIBITED = 18
    NO_REACHABLE_AUTHORITY = 22
    NETWORK_ERROR = 23


HEADER: Final = 12
# RFC 1035 §2.3.4: 255 octets on the wire; 63 per label.
MAX_WIRE_NAME: Final = 255
MAX_LABEL: Final = 63
# A compressed name may not take more pointer hops than it could have labels.
MAX_POINTERS: Final = 127
# RFC 6891 §6.2.5 and DNS Flag Day 2020: the payload size we advertise in our own OPT.
OUR_UDP_SIZE: Final = 1232
# EDE extra text is for people; long text would only risk truncation.
MAX_EDE_TEXT: Final = 200
_DO: Final = 0x8000
_EDE_OPTION: Final = 15
_CNAME_TYPES: Final = frozenset({QType.CNAME, QType.DNAME})

# -- header ------------------------------------------------------------------------------


def query_id(data: bytes) -> int:
    return (data[0] << 8) | data[1]


def reply_flags(data: bytes, rcode: int, tc: bool = False, ra: int = 0x80) -> bytes:
    """Flags of an answer we make: QR, the query's opcode and RD, ``ra``, the query's CD."""
    return bytes(((data[2] & 0x79) | 0x80 | (0x02 if tc else 0), ra | (data[3] & 0x10) | rcode))


def error_response(data: bytes, rcode: int) -> bytes | None:
    """FORMERR/NOTIMP/REFUSED for a query whose question cannot be trusted: header only.

    None when there is no header to answer (the packet is then dropped).
    """
    if len(data) < HEADER:
        return None
    return data[:2] + reply_flags(data, rcode) + b"\x00\x00\x00\x00\x00\x00\x00\x00"


# -- the query fast path -----------------------------------------------------------------


# For the fast path: length octets become dots, and A-Z become a-z, by one ``translate``.
# That is exact for label lengths that are not also name characters ("-", ".", digits:
# those names go the slow way) as long as no label byte is itself one of the translated
# length values, which the dot count then shows (each such byte adds a dot). No length
# value is a letter (lengths stop at 63), so the two mappings never meet.
_SAFE_LENGTH: Final = bytes(
    1 if (1 <= b <= MAX_LABEL and b not in (45, 46) and not 48 <= b <= 57) else 0 for b in range(256))
_WIRE_TO_KEY: Final = bytes(46 if _SAFE_LENGTH[b] else b | 0x20 if 65 <= b <= 90 else b for b in range(256))


def parse_query(data: bytes) -> tuple[bytes, int, int]:
    """``(key, qtype, qend)`` of a query with exactly one question.

    ``key``: the question name lowercased, dotted, without the trailing dot (``b""`` for
    the root). ``qend``: offset just past QCLASS. A label holding a ``.`` byte cannot be
    told apart from two labels in dotted form, so such names are refused (``dot-in-label``).

    The usual query takes one walk over the label lengths and one ``translate`` of the name
    (dots and lowercase at once);
    anything unusual goes through ``_parse_query``, which says exactly what is wrong.
    raises only DnsFormatError; anything else is a bug.
    """
    if len(data) > 16 and not (data[2] & 0xF8 or data[4]) and data[5] == 1:
        i = HEADER
        k = 0
        safe = _SAFE_LENGTH
        try:
            ln = data[i]
            while safe[ln]:
                i += ln + 1
                k += 1
                ln = data[i]
        except IndexError:
            return _parse_query(data)
        if not ln and i + 5 <= len(data) and i - HEADER < MAX_WIRE_NAME:
            # The root name (k == 0) is b"": the slice would start past its end, which the
            # compiled build (see setup.py) rejects where the interpreter returns b"".
            key = data[HEADER + 1 : i].translate(_WIRE_TO_KEY) if k else b""
            if key.count(46) == k - 1 or not k:
                return key, (data[i + 1] << 8) | data[i + 2], i + 5
    return _parse_query(data)


def _parse_query(data: bytes) -> tuple[bytes, int, int]:
    """``parse_query``, one label at a time, with the reason when the query is refused."""
    n = len(data)
    if n < HEADER:
        raise DnsFormatError(f"{n} bytes, shorter than a header", "short")
    flags = data[2]
    if flags & 0x80:
        raise DnsFormatError("QR=1: a response, not a query", "qr")
    if flags & 0x78:
        raise DnsFormatError(f"opcode {(flags >> 3) & 0xF} is not QUERY", "opcode")
    if data[4] or data[5] != 1:
        raise DnsFormatError(f"QDCOUNT {(data[4] << 8) | data[5]}, not 1", "qdcount")
    i = HEADER
    parts = []
    ln = data[i] if i < n else -1
    while ln:
        if ln < 0:
            raise DnsFormatError("question cut short", "truncated")
        if ln > MAX_LABEL:
            if ln & 0xC0 == 0xC0:
                raise DnsFormatError("compression pointer in a query's name", "pointer")
            raise DnsFormatError(f"label type {ln >> 6:#x} is not a plain label", "label-type")
        j = i + 1 + ln
        if j >= n:
            raise DnsFormatError("question cut short", "truncated")
        parts.append(data[i + 1 : j])
        i = j
        ln = data[i]
    if i - HEADER + 1 > MAX_WIRE_NAME:
        raise DnsFormatError(f"name of {i - HEADER + 1} octets", "name-too-long")
    qend = i + 5
    if qend > n:
        raise DnsFormatError("question cut short", "truncated")
    key = b".".join(parts).lower()
    if len(parts) != key.count(46) + 1 and parts:
        raise DnsFormatError("a label holds a '.' byte", "dot-in-label")
    return key, (data[i + 1] << 8) | data[i + 2], qend


def query_edns(data: bytes, qend: int) -> tuple[bool, bool]:
    """``(has_opt, do)`` of a query: its OPT record (RFC 6891 §6.1.1), if it has one.

    Queries put OPT right after the question; other records in a query are skipped.
    raises only DnsFormatError.
    """
    if len(data) == qend or not (data[10] or data[11]):
        return False, False
    if qend + 11 <= len(data) and data[qend] == 0 and data[qend + 1] == 0 and data[qend + 2] == 41:
        return True, bool(data[qend + 7] & 0x80)
    counts = struct.unpack_from("!HHH", data, 6) if len(data) >= HEADER else (0, 0, 0)
    off = qend
    for k in range(sum(counts)):
        owner = off
        off = skip_name(data, off)
        if off + 10 > len(data):
            raise DnsFormatError("record cut short", "truncated")
        rtype = (data[off] << 8) | data[off + 1]
        if rtype == QType.OPT and k >= counts[0] + counts[1] and data[owner] == 0:
            return True, bool(data[off + 6] & 0x80)
        off += 10 + ((data[off + 8] << 8) | data[off + 9])
    if off > len(data):
        raise DnsFormatError("record cut short", "truncated")
    return False, False


# -- names in answers --------------------------------------------------------------------


def skip_name(data: bytes, off: int) -> int:
    """Offset just past a (possibly compressed) name starting at ``off``."""
    n = len(data)
    while True:
        if off >= n:
            raise DnsFormatError("name cut short", "truncated")
        ln = data[off]
        if ln == 0:
            return off + 1
        if ln & 0xC0 == 0xC0:
            if off + 1 >= n:
                raise DnsFormatError("pointer cut short", "truncated")
            return off + 2
        if ln > MAX_LABEL:
            raise DnsFormatError(f"label type {ln >> 6:#x}", "label-type")
        off += ln + 1


def read_name(data: bytes, off: int) -> bytes:
    """The key (lowercased, dotted) of a possibly compressed name at ``off``."""
    n = len(data)
    parts: list[bytes] = []
    total = 1
    hops = 0
    while True:
        if off >= n:
            raise DnsFormatError("name cut short", "truncated")
        ln = data[off]
        if ln == 0:
            break
        if ln & 0xC0 == 0xC0:
            if off + 1 >= n:
                raise DnsFormatError("pointer cut short", "truncated")
            hops += 1
            if hops > MAX_POINTERS:
                raise DnsFormatError("compression pointers loop", "pointer-loop")
            off = ((ln & 0x3F) << 8) | data[off + 1]
            continue
        if ln > MAX_LABEL:
            raise DnsFormatError(f"label type {ln >> 6:#x}", "label-type")
        total += ln + 1
        if total > MAX_WIRE_NAME:
            raise DnsFormatError("name longer than 255 octets", "name-too-long")
        parts.append(data[off + 1 : off + 1 + ln])
        off += ln + 1
    if off >= n and not parts:
        raise DnsFormatError("name cut short", "truncated")
    return b".".join(parts).lower()


def question_end(data: bytes) -> int:
    """Offset past the first question of a message (responses: to check the question)."""
    if len(data) < HEADER or not (data[4] or data[5]):
        raise DnsFormatError("no question", "qdcount")
    end = skip_name(data, HEADER) + 4
    if end > len(data):
        raise DnsFormatError("question cut short", "truncated")
    return end


def rcode_of(data: bytes) -> int:
    return data[3] & 0x0F


def is_truncated(data: bytes) -> bool:
    return bool(data[2] & 0x02)


def answer_targets(data: bytes, qend: int) -> list[bytes]:
    """Keys of every CNAME and DNAME target in the answer section (for CNAME cloaking).

    Most answers have no CNAME: the record headers are walked without reading names.
    """
    count = (data[6] << 8) | data[7]
    out: list[bytes] = []
    off = qend
    n = len(data)
    for _ in range(count):
        off = skip_name(data, off)
        if off + 10 > n:
            raise DnsFormatError("record cut short", "truncated")
        rtype = (data[off] << 8) | data[off + 1]
        rdlen = (data[off + 8] << 8) | data[off + 9]
        start = off + 10
        off = start + rdlen
        if off > n:
            raise DnsFormatError("record data cut short", "truncated")
        if rtype in _CNAME_TYPES:
            out.append(read_name(data, start))
    return out


# -- answers we make ---------------------------------------------------------------------


def _rr(rtype: int, ttl: int, rdata: bytes, owner: bytes = b"\xc0\x0c") -> bytes:
    """One resource record; the owner defaults to a pointer to the question name."""
    return owner + struct.pack("!HHIH", rtype, 1, ttl, len(rdata)) + rdata


def wire_name(name: str) -> bytes:
    """Presentation name -> uncompressed wire form (config values: SOA names, CNAME targets)."""
    labels = [lab.encode("idna") if not lab.isascii() else lab.encode() for lab in
              name.rstrip(".").split(".") if lab]
    return b"".join(bytes((len(lab),)) + lab for lab in labels) + b"\x00"


def opt_record(do: bool, ede: int | None = None, text: bytes = b"") -> bytes:
    """Our OPT record (RFC 6891 §6.1.2): payload size, DO echoed, an EDE option if given."""
    rdata = b""
    if ede is not None:
        body = struct.pack("!H", ede) + text[:MAX_EDE_TEXT]
        rdata = struct.pack("!HH", _EDE_OPTION, len(body)) + body
    return b"\x00" + struct.pack("!HHHHH", QType.OPT, OUR_UDP_SIZE, 0, _DO if do else 0,
                                 len(rdata)) + rdata


def ede_text(text: str) -> bytes:
    """EXTRA-TEXT, UTF-8, cut at a character boundary within the limit."""
    raw = text.encode("utf-8")
    if len(raw) <= MAX_EDE_TEXT:
        return raw
    return raw[:MAX_EDE_TEXT].decode("utf-8", "ignore").encode("utf-8")


class Synth:
    """Records for the answers blockgate makes itself, prepared once per configuration."""

    def __init__(self, ttl: int, soa_mname: str, soa_rname: str,
                 sinkhole_a: Sequence[str], sinkhole_aaaa: Sequence[str]) -> None:
        self.ttl = ttl
        # RFC 2308 §3: the SOA in the authority section lets resolvers cache the answer;
        # its MINIMUM and TTL bound that (here both the configured block TTL).
        soa = wire_name(soa_mname) + wire_name(soa_rname) + struct.pack("!IIIII", 1, 3600, 600,
                                                                           86400, ttl)
        self.soa = _rr(QType.SOA, ttl, soa)
        self.a = b"".join(_rr(QType.A, ttl, ipaddress.IPv4Address(ip).packed) for ip in sinkhole_a)
        self.aaaa = b"".join(_rr(QType.AAAA, ttl, ipaddress.IPv6Address(ip).packed)
                             for ip in sinkhole_aaaa)
        self.n_a = len(sinkhole_a)
        self.n_aaaa = len(sinkhole_aaaa)
        # RA as the upstream sets it (0x80 or 0): a recursive upstream until one answers
        self.ra = 0x80

    def negative(self, data: bytes, qend: int, rcode: int, opt: bytes) -> bytes:
        """NXDOMAIN or NODATA with our SOA in AUTHORITY, the question as sent."""
        return (data[:2] + reply_flags(data, rcode, ra=self.ra) + b"\x00\x01\x00\x00\x00\x01\x00"
                + (b"\x01" if opt else b"\x00") + data[HEADER:qend] + self.soa + opt)

    def records(self, data: bytes, qend: int, rrs: bytes, count: int, opt: bytes) -> bytes:
        """NOERROR with ``count`` answer records ``rrs`` (NODATA when there are none)."""
        if not count:
            return self.negative(data, qend, Rcode.NOERROR, opt)
        return (data[:2] + reply_flags(data, Rcode.NOERROR, ra=self.ra) + b"\x00\x01"
                + struct.pack("!HHH", count, 0, 1 if opt else 0) + data[HEADER:qend] + rrs + opt)

    def sinkhole(self, data: bytes, qend: int, qtype: int, opt: bytes) -> bytes:
        if qtype == QType.A:
            return self.records(data, qend, self.a, self.n_a, opt)
        if qtype == QType.AAAA:
            return self.records(data, qend, self.aaaa, self.n_aaaa, opt)
        return self.negative(data, qend, Rcode.NOERROR, opt)

    def bare(self, data: bytes, qend: int, rcode: int, opt: bytes, tc: bool = False) -> bytes:
        """REFUSED, SERVFAIL, or an empty TC=1 answer: the question and nothing else."""
        return (data[:2] + reply_flags(data, rcode, tc, self.ra) + b"\x00\x01\x00\x00\x00\x00\x00"
                + (b"\x01" if opt else b"\x00") + data[HEADER:qend] + opt)


def local_records(payload: Sequence[tuple[str, str]], qtype: int, ttl: int) -> tuple[bytes, int]:
    """Answer records from a rule's local data (RPZ, dnsmasq) for ``qtype``.

    A and AAAA answer their own type; a CNAME answers every type (RFC 1034 §3.6.2); TXT, MX
    and other types are answered when asked for (built with dnslib: this is a rare path).
    """
    out, count = [], 0
    cname = [v for t, v in payload if t.upper() == "CNAME"]
    if cname:
        return _rr(QType.CNAME, ttl, wire_name(cname[0])), 1
    for rtype, value in payload:
        t = rtype.upper()
        if t == "A" and qtype in (QType.A, QType.ANY):
            out.append(_rr(QType.A, ttl, ipaddress.IPv4Address(value).packed))
        elif t == "AAAA" and qtype in (QType.AAAA, QType.ANY):
            out.append(_rr(QType.AAAA, ttl, ipaddress.IPv6Address(value).packed))
        elif t not in ("A", "AAAA") and (QType.__members__.get(t) == qtype or qtype == QType.ANY):
            rr = _dnslib_record(t, value, ttl)
            if rr is not None:
                out.append(rr)
        else:
            continue
        count += 1
    return b"".join(out), count


def _dnslib_record(rtype: str, value: str, ttl: int) -> bytes | None:
    try:
        from dnslib import QTYPE, RR, DNSBuffer

        rr = RR.fromZone(f". {ttl} IN {rtype} {value}")[0]
        buf = DNSBuffer()
        rr.rdata.pack(buf)
        return _rr(getattr(QTYPE, rtype), ttl, bytes(buf.data))
    except Exception:  # local data we cannot encode is skipped, not fatal
        return None
