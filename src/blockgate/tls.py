"""The TLS ClientHello out of a client's byte stream: server names and ALPN.

Two layers sit between the TCP stream and the ClientHello (RFC 8446 §5.1,
https://www.rfc-editor.org/rfc/rfc8446#section-5.1): records, and handshake messages that
may span several records (and record fragments of any size). ``read_hello`` walks records
from a record boundary and returns a ``ClientHello`` once the whole message is there, or
``NeedMore`` with the stream length it must reach first (so a caller re-parses only when
that many bytes have arrived), or ``Finished`` when the stream shows no further
ClientHello can come (application data, an alert, another handshake message). QUIC carries
handshake messages without records: ``read_handshake`` reads its CRYPTO stream.

A connection can carry a second ClientHello after a HelloRetryRequest (RFC 8446 §4.1.4):
call ``read_hello`` again from ``ClientHello.end``.

Names become wire-style keys: lowercase ASCII bytes, one trailing dot removed, without
decoding. Bytes that RFC 6066 §3 does not allow (non-ASCII, controls) are kept as they are
and flagged in ``anomalies``. A ClientHello that breaks its own structure after some
fields could be read is still returned, with ``error`` naming the first problem: the names
read before it are real names the client sent (tshark reports them too).

Every ``parse_*``/``read_*`` raises only TlsFormatError; anything else is a bug.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Final, NamedTuple

from blockgate.cursor import Cursor
from blockgate.errors import FormatError


class TlsFormatError(FormatError):
    """Bytes that cannot be a client's TLS stream. ``reason``: ``not-tls`` (no TLS record
    header), ``record-length`` (longer than RFC 8446 §5.1 allows), ``empty-record``,
    ``interleaved`` (another record type inside a handshake message), ``hello-length``
    (a ClientHello longer than MAX_HELLO), ``handshake-type`` (a QUIC CRYPTO stream that
    does not open with a ClientHello)."""

    reason = "tls"


class ContentType(IntEnum):
    CHANGE_CIPHER_SPEC = 20
    ALERT = 21
    HANDSHAKE = 22
    APPLICATION_DATA = 23
    HEARTBEAT = 24


class HandshakeType(IntEnum):
    CLIENT_HELLO = 1


class ExtensionType(IntEnum):
    SERVER_NAME = 0x0000  # RFC 6066 §3
    ALPN = 0x0010  # RFC 7301 §3.1
    ENCRYPTED_CLIENT_HELLO = 0xFE0D  # draft-ietf-tls-esni §5
    ENCRYPTED_SERVER_NAME = 0xFFCE  # the obsolete ESNI drafts


# RFC 8446 §5.1: TLSPlaintext.length MUST NOT exceed 2^14; §5.2 lets ciphertext be 2^14 + 256
# (TLS 1.2 allowed + 2048). A client's first records are plaintext; the ciphertext bound is
# kept for records after a ClientHello, which may be encrypted.
MAX_RECORD: Final = (1 << 14) + 2048
# The largest ClientHello read. Post-quantum key shares bring browsers to ~1.8 KB and nDPI's
# test suite has an 11.4 KB one; the flow table caps buffered bytes lower than this anyway.
MAX_HELLO: Final = 1 << 16
# RFC 6066 §3: HostName is opaque<1..2^16-1>; DNS names are at most 253 characters.
NAME_TYPE_HOST: Final = 0
_HANDSHAKE: Final = 22
_CCS: Final = 20
_RECORD_TYPES: Final = frozenset(ContentType)
# RFC 8446 §4.1.2: legacy_session_id is at most 32 bytes.
MAX_SESSION_ID: Final = 32
# Bytes a host name may hold (RFC 952/1123 letters, digits, hyphen, dot; underscore is common
# in the wild). Anything else is looked up as it is and flagged.
_HOST_BYTES: Final = b"abcdefghijklmnopqrstuvwxyz0123456789-._"


# NamedTuples, not frozen dataclasses: several are made per ClientHello, and a frozen
# dataclass's __init__ (one object.__setattr__ per field) cost several times as much.
class ClientHello(NamedTuple):
    """One ClientHello. ``names``: every host_name of the server_name extension(s), as keys,
    in order; empty when there is none. ``ech``: an encrypted_client_hello extension was
    present (then the name is the provider's public name, or the real one for ECH GREASE).
    ``end``: stream offset just past the record that completed the message."""

    names: tuple[bytes, ...]
    alpn: tuple[bytes, ...] = ()
    legacy_version: int = 0
    ech: bool = False
    esni: bool = False
    anomalies: tuple[str, ...] = ()
    error: str = ""
    end: int = 0


# ``ClientHello(...)`` runs the NamedTuple's Python-level ``__new__``; the readers build the
# tuple directly with every field given.
_new: Final = tuple.__new__


@dataclass(frozen=True, slots=True)
class NeedMore:
    """Not enough bytes yet: try again once the stream holds ``need`` bytes."""

    need: int


@dataclass(frozen=True, slots=True)
class Finished:
    """No (further) ClientHello can follow on this stream; ``why`` says what came instead."""

    why: str


Result = ClientHello | NeedMore | Finished


def read_hello(stream: bytes, pos: int = 0) -> Result:
    """The ClientHello that starts at record boundary ``pos`` of a client's TCP stream.

    ChangeCipherSpec records before it are skipped (TLS 1.3 middlebox compatibility sends
    one before the second ClientHello, RFC 8446 §D.4).
    raises only TlsFormatError; anything else is a bug.
    """
    n = len(stream)
    if pos < n and stream[pos] & 0x80:
        return _sslv2(stream, pos)
    while True:
        if pos + 5 > n:
            return NeedMore(pos + 5)
        ctype, length = _record_header(stream, pos)
        if ctype == _CCS:
            pos += 5 + length
            continue
        if ctype != _HANDSHAKE:
            return Finished(ContentType(ctype).name.lower())
        if pos + 9 > n and length >= 4:
            return NeedMore(pos + 9)
        if length >= 4 and stream[pos + 5] != HandshakeType.CLIENT_HELLO:
            return Finished(f"handshake-{stream[pos + 5]}")
        if length >= 4 and 4 + _u24(stream, pos + 6) <= length:  # the usual case: one record
            end = pos + 5 + length
            if end > n:
                return NeedMore(end)
            return parse_client_hello(stream[pos + 9 : pos + 9 + _u24(stream, pos + 6)], end)
        return _fragmented(stream, pos)


def _record_header(stream: bytes, pos: int) -> tuple[int, int]:
    ctype = stream[pos]
    length = (stream[pos + 3] << 8) | stream[pos + 4]
    if ctype not in _RECORD_TYPES or stream[pos + 1] != 3 or stream[pos + 2] > 4:
        raise TlsFormatError(f"bytes {stream[pos:pos + 3].hex()} are not a TLS record header", "not-tls")
    if length > MAX_RECORD:
        raise TlsFormatError(f"record of {length} bytes", "record-length")
    if length == 0 and ctype == _HANDSHAKE:  # RFC 8446 §5.1: MUST NOT send
        raise TlsFormatError("zero-length handshake record", "empty-record")
    return ctype, length


def _u24(b: bytes, at: int) -> int:
    return (b[at] << 16) | (b[at + 1] << 8) | b[at + 2]


def _fragmented(stream: bytes, pos: int) -> Result:
    """A handshake message spread over several records: gather the fragments in order."""
    n = len(stream)
    parts: list[bytes] = []
    have = 0
    want = -1
    while want < 0 or have < want:
        if pos + 5 > n:
            return NeedMore(pos + 5)
        ctype, length = _record_header(stream, pos)
        if ctype != _HANDSHAKE:  # RFC 8446 §5.1: no other record type inside a message
            raise TlsFormatError(f"{ContentType(ctype).name} record in a handshake message", "interleaved")
        if pos + 5 + length > n:
            return NeedMore(pos + 5 + length)
        parts.append(stream[pos + 5 : pos + 5 + length])
        have += length
        pos += 5 + length
        if want < 0 and have >= 4:
            head = b"".join(parts)
            if head[0] != HandshakeType.CLIENT_HELLO:
                return Finished(f"handshake-{head[0]}")
            want = 4 + _u24(head, 1)
            if want > MAX_HELLO:
                raise TlsFormatError(f"ClientHello of {want - 4} bytes", "hello-length")
    body = b"".join(parts)
    return parse_client_hello(body[4:want], pos)


def _sslv2(stream: bytes, pos: int) -> Result:
    """An SSL 2.0-compatible CLIENT-HELLO (RFC 6101 Appendix E.2): it has no extensions, so
    no name; reported so that the caller can count it."""
    if pos + 3 > len(stream):
        return NeedMore(pos + 3)
    if stream[pos + 2] != 1:
        raise TlsFormatError("SSLv2 record that is not a CLIENT-HELLO", "not-tls")
    end = pos + 2 + (((stream[pos] & 0x7F) << 8) | stream[pos + 1])
    if end > len(stream):
        return NeedMore(end)
    return ClientHello((), legacy_version=0x0002, anomalies=("sslv2",), end=end)


def read_handshake(stream: bytes) -> ClientHello | NeedMore:
    """The ClientHello at the start of a QUIC CRYPTO stream (RFC 9001 §4.1.3: handshake
    messages without records).
    raises only TlsFormatError; anything else is a bug.
    """
    if len(stream) < 4:
        return NeedMore(4)
    if stream[0] != HandshakeType.CLIENT_HELLO:
        raise TlsFormatError(f"CRYPTO stream opens with handshake type {stream[0]}", "handshake-type")
    end = 4 + _u24(stream, 1)
    if end - 4 > MAX_HELLO:
        raise TlsFormatError(f"ClientHello of {end - 4} bytes", "hello-length")
    if len(stream) < end:
        return NeedMore(end)
    return parse_client_hello(stream[4:end], end)


# -- the ClientHello body ------------------------------------------------------------------


class _Hello:
    """What the walk over one body collected so far."""

    __slots__ = ("alpn", "anomalies", "ech", "esni", "names", "seen_sni")

    def __init__(self) -> None:
        self.names: list[bytes] = []
        self.alpn: list[bytes] = []
        self.anomalies: list[str] = []
        self.ech = self.esni = self.seen_sni = False

    def flag(self, anomaly: str) -> None:
        if anomaly not in self.anomalies:
            self.anomalies.append(anomaly)


def parse_client_hello(body: bytes, end: int = 0) -> ClientHello:
    """A ClientHello message body (after the 4-byte handshake header), RFC 8446 §4.1.2.

    A structural error ends the walk and is reported in ``error``; what was read before it
    is kept. raises only TlsFormatError; anything else is a bug.

    The usual ClientHello (well formed, one plain host name) takes ``_plain``: index
    arithmetic, no cursor objects, about four times faster. Anything it does not expect
    sends the body through the careful walk, which reports exactly what is wrong.
    """
    try:
        return _plain(body, end)
    except _Unusual:
        return _careful(body, end)


class _Unusual(Exception):
    """Not for the fast path (never escapes this module)."""


def _u16(b: bytes, at: int) -> int:
    return (b[at] << 8) | b[at + 1]


_SNI: Final = int(ExtensionType.SERVER_NAME)
_ALPN: Final = int(ExtensionType.ALPN)
_ECH: Final = int(ExtensionType.ENCRYPTED_CLIENT_HELLO)
_WATCHED: Final = frozenset({_SNI, _ALPN, _ECH, int(ExtensionType.ENCRYPTED_SERVER_NAME)})


def _plain(b: bytes, end: int) -> ClientHello:
    n = len(b)
    if n < 38 or b[34] > MAX_SESSION_ID:
        raise _Unusual
    p = 35 + b[34]
    if p + 3 > n:
        raise _Unusual
    suites = _u16(b, p)
    p += 2 + suites
    if suites < 2 or suites & 1 or p >= n or not b[p]:
        raise _Unusual
    p += 1 + b[p]
    if p + 2 > n or p + 2 + _u16(b, p) != n:
        raise _Unusual  # no extensions, or trailing bytes: rare, the careful walk says which
    p += 2
    names: tuple[bytes, ...] = ()
    alpn: tuple[bytes, ...] = ()
    ech = esni = False
    seen = set()
    while p < n:
        if p + 4 > n:
            raise _Unusual
        etype, q = (b[p] << 8) | b[p + 1], p + 4 + ((b[p + 2] << 8) | b[p + 3])
        if q > n or etype in seen:
            raise _Unusual
        seen.add(etype)
        if etype in _WATCHED:  # plain ints: an IntEnum comparison per extension adds up
            if etype == _SNI:
                names = (_plain_name(b, p + 4, q),)
            elif etype == _ALPN:
                alpn = _plain_alpn(b, p + 4, q)
            elif etype == _ECH:
                ech = True
            else:
                esni = True
        p = q
    return _new(ClientHello, (names, alpn, _u16(b, 0), ech, esni, (), "", end))


def _plain_name(b: bytes, p: int, q: int) -> bytes:
    """A ServerNameList of exactly one plain host_name (RFC 6066 §3)."""
    if p + 5 > q or _u16(b, p) != q - p - 2 or b[p + 2] != NAME_TYPE_HOST or _u16(b, p + 3) != q - p - 5:
        raise _Unusual
    key = b[p + 5 : q].lower()
    if not key or key.endswith(b".") or key.translate(None, _HOST_BYTES):
        raise _Unusual
    return key


def _plain_alpn(b: bytes, p: int, q: int) -> tuple[bytes, ...]:
    if p + 2 > q or _u16(b, p) != q - p - 2:
        raise _Unusual
    out = []
    p += 2
    while p < q:
        ln = b[p]
        if not ln or p + 1 + ln > q:
            raise _Unusual
        out.append(b[p + 1 : p + 1 + ln])
        p += 1 + ln
    return tuple(out)


def _careful(body: bytes, end: int) -> ClientHello:
    """``parse_client_hello`` with a cursor: every anomaly flagged, the first error named."""
    h = _Hello()
    c = Cursor(body, error=TlsFormatError)
    version = 0
    error = ""
    try:
        version = c.u16()
        c.skip(32)  # random
        if len(c.vec8()) > MAX_SESSION_ID:
            raise TlsFormatError("legacy_session_id longer than 32 bytes", "session-id")
        suites = c.u16()
        if suites < 2 or suites & 1:
            raise TlsFormatError(f"cipher_suites of {suites} bytes", "cipher-suites")
        c.skip(suites)
        methods = c.u8()
        if methods < 1:
            raise TlsFormatError("no compression methods", "compression")
        c.skip(methods)
        if not c.at_end():  # RFC 8446 §4.1.2: extensions may be absent (before TLS 1.2)
            _extensions(c.sub(c.u16()), h)
            if not c.at_end():
                h.flag("trailing-bytes")
    except TlsFormatError as exc:
        error = exc.reason
    return _new(ClientHello, (tuple(h.names), tuple(h.alpn), version, h.ech, h.esni, tuple(h.anomalies),
                              error, end))


def _extensions(c: Cursor, h: _Hello) -> None:
    seen: set[int] = set()
    while not c.at_end():
        etype = c.u16()
        data = c.sub(c.u16())
        if etype in seen:  # RFC 8446 §4.2: at most one of each type
            h.flag("duplicate-extension")
        seen.add(etype)
        if etype == ExtensionType.SERVER_NAME:
            _server_name(data, h)
        elif etype == ExtensionType.ALPN:
            _alpn(data, h)
        elif etype == ExtensionType.ENCRYPTED_CLIENT_HELLO:
            h.ech = True
        elif etype == ExtensionType.ENCRYPTED_SERVER_NAME:
            h.esni = True


def _server_name(c: Cursor, h: _Hello) -> None:
    """RFC 6066 §3: ServerNameList; every host_name entry is kept (a blocker matches any)."""
    if h.seen_sni:
        h.flag("multiple-sni-extensions")
    h.seen_sni = True
    if c.at_end():  # a server's empty extension; a client's is an anomaly, not an error
        h.flag("empty-sni")
        return
    entries = c.sub(c.u16())
    while not entries.at_end():
        name_type = entries.u8()
        raw = entries.vec16()
        if name_type != NAME_TYPE_HOST:
            h.flag("name-type")
            continue
        if h.names:
            h.flag("multiple-names")
        key = name_key(raw, h)
        if key:
            h.names.append(key)


def name_key(raw: bytes, h: _Hello | None = None) -> bytes:
    """``raw`` as a lookup key: ASCII lowercase, one trailing dot removed; other bytes are
    kept (and flagged on ``h``)."""
    key = raw.lower()
    if key.endswith(b"."):
        key = key[:-1]
        if h is not None:
            h.flag("trailing-dot")
    if h is not None:
        if not key:
            h.flag("empty-name")
        elif key.translate(None, _HOST_BYTES):
            h.flag("non-ascii" if not key.isascii() else "bad-char")
    return key


def _alpn(c: Cursor, h: _Hello) -> None:
    """RFC 7301 §3.1: ProtocolNameList, protocol names of 1..255 bytes."""
    names = c.sub(c.u16())
    while not names.at_end():
        proto = names.vec8()
        if proto:
            h.alpn.append(proto)
