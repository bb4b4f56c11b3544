"""QUIC client Initial packets out of a UDP datagram: long headers, Initial decryption, frames.

A QUIC client sends its TLS ClientHello in CRYPTO frames inside Initial packets, protected
with keys anyone can derive from the Destination Connection ID (RFC 9001 §5.2,
https://www.rfc-editor.org/rfc/rfc9001#section-5.2). This module turns one datagram into the
Initial packets it carries, decrypted, with the (offset, data) of their CRYPTO frames.
Reassembling the CRYPTO stream across packets and reading the ClientHello belong to the
caller (they need per-flow state); nothing here keeps state except a bounded key cache.

Versions: QUIC v1 (RFC 9000/9001), v2 (RFC 9369, its own salt, ``quicv2`` labels and
packet type bits) and the drafts 23-32 that browsers shipped (draft-29 salt for 29-32, the
draft-23 salt for 23-28). Version Negotiation, Retry and unknown versions are recognised
and reported, never errors.

Coalesced packets (RFC 9000 §12.2, https://www.rfc-editor.org/rfc/rfc9000#section-12.2):
every long-header packet is walked; Initials are decrypted, 0-RTT and Handshake packets are
skipped by their Length, packets with another DCID than the first are ignored (§12.2: "SHOULD
ignore"), and a short-header packet, a Retry, a Version Negotiation or an unknown version
ends the walk (none of them says where it ends). A packet that fails (authentication, bad
frames) is skipped and the others are still processed, as §12.2 requires: if at least one
Initial decrypts, the datagram is returned with ``error`` set to the first failure's reason;
if none does, that failure is raised.

Only client keys are derived: a server's Initial fails authentication (reason ``decrypt``).

Every ``parse_*`` raises only QuicFormatError; anything else is a bug.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Final, NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from blockgate.errors import FormatError


class QuicFormatError(FormatError):
    """A datagram that yields no usable Initial. ``reason``: ``truncated`` (a field runs past
    the datagram), ``cid`` (connection ID longer than 20 bytes), ``short`` (too small to
    sample for header protection), ``decrypt`` (authentication failed), ``frame`` (a frame
    that is malformed or not allowed in an Initial), ``coalesced`` (too many packets),
    ``version`` (keys asked for a version without Initial keys)."""

    reason = "quic"


class Version(IntEnum):
    NEGOTIATION = 0x00000000
    V1 = 0x00000001
    V2 = 0x6B3343CF
    DRAFT_23 = 0xFF000017
    DRAFT_28 = 0xFF00001C
    DRAFT_29 = 0xFF00001D
    DRAFT_32 = 0xFF000020


class PacketType(IntEnum):
    """Long-header packet types, by meaning; the wire bits depend on the version."""

    INITIAL = 0
    ZERO_RTT = 1
    HANDSHAKE = 2
    RETRY = 3


class FrameType(IntEnum):
    """The frames RFC 9000 §12.4 (Table 3) allows in an Initial packet."""

    PADDING = 0x00
    PING = 0x01
    ACK = 0x02
    ACK_ECN = 0x03
    CRYPTO = 0x06
    CONNECTION_CLOSE = 0x1C


# RFC 9000 §17.2: in version 1 a connection ID is at most 20 bytes; v2 and the drafts since
# draft-22 keep that limit.
MAX_CID_LEN: Final = 20
# RFC 9000 §19.6: offset + length of a CRYPTO frame cannot exceed 2^62-1.
MAX_CRYPTO_END: Final = (1 << 62) - 1
# Real clients coalesce at most Initial + 0-RTT + Handshake; bound the decryptions one
# datagram can demand (each failed decryption is a full AES-GCM pass).
MAX_COALESCED: Final = 8
# Keys per (version, DCID) kept so that a flow's later Initials cost no HKDF. A client sends
# its Initials within a round trip; 4096 covers that window at thousands of new QUIC
# connections per second. About 3.1-3.5 KB of RSS each, 13-14 MB when full (bench/quic.py).
KEY_CACHE_SIZE: Final = 4096
# RFC 9001 §5.4.2: the sample starts 4 bytes after the packet number's start, 16 bytes long.
SAMPLE_OFFSET: Final = 4
SAMPLE_LEN: Final = 16
_LONG_HEADER: Final = 0x80
_MIN_LONG_HEADER: Final = 7  # first byte, version, two connection ID lengths
# A run of PADDING: matching a repeated literal is sre's tight loop, about twice as fast as
# searching for the first non-zero byte.
_ZERO_RUN: Final = re.compile(rb"\x00*")
# Padding usually runs to the end of the packet: where the payload's zeros start is found
# once, in C (``rstrip``), and a PADDING frame past that point ends the walk.

_I, _Z, _H, _R = PacketType.INITIAL, PacketType.ZERO_RTT, PacketType.HANDSHAKE, PacketType.RETRY


@dataclass(frozen=True, slots=True)
class _Profile:
    """What a version changes in Initial protection."""

    salt: bytes
    labels: tuple[bytes, bytes, bytes]  # key, iv, hp
    types: tuple[PacketType, PacketType, PacketType, PacketType]  # by the type bits 0b00..0b11


_V1_LABELS: Final = (b"quic key", b"quic iv", b"quic hp")
# RFC 9000 §17.2 Table 5.
_V1_TYPES: Final = (_I, _Z, _H, _R)
# RFC 9001 §5.2.
_V1: Final = _Profile(bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a"), _V1_LABELS, _V1_TYPES)
# RFC 9369 §3.3.1 (salt), §3.3.2 (labels), §3.2 (Initial 0b01, 0-RTT 0b10, Handshake 0b11,
# Retry 0b00): https://www.rfc-editor.org/rfc/rfc9369#section-3
_V2: Final = _Profile(bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9"),
                      (b"quicv2 key", b"quicv2 iv", b"quicv2 hp"), (_R, _I, _Z, _H))
# draft-ietf-quic-tls-29 §5.2 (used unchanged by drafts 30-32).
_DRAFT_29: Final = _Profile(bytes.fromhex("afbfec289993d24c9e9786f19c6111e04390a899"), _V1_LABELS, _V1_TYPES)
# draft-ietf-quic-tls-23 §5.2 (used unchanged by drafts 24-28).
_DRAFT_23: Final = _Profile(bytes.fromhex("c3eef712c72ebb5a11a7d2432bb46365bef9f502"), _V1_LABELS, _V1_TYPES)

_PROFILES: Final[dict[int, _Profile]] = {
    Version.V1: _V1,
    Version.V2: _V2,
    **{v: _DRAFT_29 for v in range(Version.DRAFT_29, Version.DRAFT_32 + 1)},
    **{v: _DRAFT_23 for v in range(Version.DRAFT_23, Version.DRAFT_28 + 1)},
}


# NamedTuples, not frozen dataclasses: several are made per ClientHello, and a frozen
# dataclass's __init__ (one object.__setattr__ per field) cost several times as much.
class Initial(NamedTuple):
    """One decrypted client Initial packet."""

    version: int
    dcid: bytes
    scid: bytes
    token: bytes
    packet_number: int
    crypto: tuple[tuple[int, bytes], ...]  # (offset, data) of each CRYPTO frame, in packet order
    # The keys came from this packet's own DCID although another ``first_dcid`` was given:
    # the client started over after a Retry (RFC 9001 §5.2), so its CRYPTO stream restarts
    # at offset 0 and later Initials use this DCID's keys.
    rekeyed: bool = False


class Datagram(NamedTuple):
    """What one UDP datagram carried.

    ``error`` is the reason of the first packet that could not be used when some Initial
    still decrypted (empty when every packet was fine); a datagram where nothing decrypts
    raises instead. ``negotiation``: a Version Negotiation packet was seen.
    """

    initials: tuple[Initial, ...]
    retry: bool  # a Retry packet was seen
    other: int  # long-header packets skipped (0-RTT, Handshake, unknown version, other DCID)
    negotiation: bool = False
    error: str = ""


@dataclass(frozen=True, slots=True)
class InitialKeys:
    """Client Initial secrets and keys for one (version, DCID), RFC 9001 §5.2 and §5.1."""

    initial_secret: bytes
    client_secret: bytes
    key: bytes
    iv: bytes
    hp: bytes


# -- keys -------------------------------------------------------------------------------


def _hmac_sha256(key: bytes, message: bytes) -> bytes:
    h = hmac.HMAC(key, hashes.SHA256())
    h.update(message)
    return h.finalize()


def _expand_label(secret: bytes, label: bytes, length: int) -> bytes:
    """HKDF-Expand-Label of TLS 1.3 (RFC 8446 §7.1) with an empty context.

    Every output here is at most one SHA-256 block, so HKDF-Expand (RFC 5869 §2.3) is a
    single HMAC over ``info || 0x01``.
    """
    full = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes((len(full),)) + full + b"\x00"
    return _hmac_sha256(secret, info + b"\x01")[:length]


def derive_keys(version: int, dcid: bytes) -> InitialKeys:
    """The client's Initial keys for ``dcid`` (RFC 9001 §5.2; RFC 9369 §3.3 for v2).

    Raises only QuicFormatError (reason ``version``) for a version without Initial keys.
    """
    profile = _PROFILES.get(version)
    if profile is None:
        raise QuicFormatError(f"no Initial keys for version {version:#010x}", "version")
    initial = _hmac_sha256(profile.salt, dcid)  # HKDF-Extract(salt, dcid), RFC 5869 §2.2
    client = _expand_label(initial, b"client in", 32)
    key_label, iv_label, hp_label = profile.labels
    return InitialKeys(initial, client, _expand_label(client, key_label, 16),
                       _expand_label(client, iv_label, 12), _expand_label(client, hp_label, 16))


def header_mask(hp: bytes, sample: bytes) -> bytes:
    """The 5-byte header protection mask, AES-128-ECB of the sample (RFC 9001 §5.4.3)."""
    encryptor = Cipher(algorithms.AES(hp), modes.ECB()).encryptor()
    return encryptor.update(sample)[:5]


class _Opener:
    """Ready-made ciphers of one (version, DCID): what the cache holds."""

    __slots__ = ("aead", "hp", "iv")

    def __init__(self, keys: InitialKeys) -> None:
        self.aead = AESGCM(keys.key)
        # ECB has no chaining: one encryptor serves every sample, never finalised.
        self.hp: CipherContext = Cipher(algorithms.AES(keys.hp), modes.ECB()).encryptor()
        self.iv = int.from_bytes(keys.iv, "big")


_openers: dict[tuple[int, bytes], _Opener] = {}


def _opener(version: int, dcid: bytes) -> _Opener:
    found = _openers.get((version, dcid))
    if found is None:
        if len(_openers) >= KEY_CACHE_SIZE:
            del _openers[next(iter(_openers))]  # the oldest: a flow's Initials come close together
        found = _openers[(version, dcid)] = _Opener(derive_keys(version, dcid))
    return found


def clear_key_cache() -> None:
    """Forget every cached key (for measurements of the cold path)."""
    _openers.clear()


def key_cache_len() -> int:
    return len(_openers)


# -- packets ----------------------------------------------------------------------------


def looks_like_initial(data: bytes) -> bool:
    """Cheap test on the first bytes: a long header of a version with Initial keys whose
    first packet is an Initial, or a 0-RTT that an Initial may follow in the same datagram.

    Senders coalesce in order of encryption level (RFC 9000 §12.2), but receivers process
    each packet, so a datagram opening with 0-RTT is still worth a walk. The fixed bit is not
    required: RFC 9287 lets peers grease it.
    """
    if len(data) < _MIN_LONG_HEADER or not data[0] & _LONG_HEADER:
        return False
    profile = _PROFILES.get(int.from_bytes(data[1:5], "big"))
    return profile is not None and profile.types[(data[0] >> 4) & 3] in (_I, _Z)


# A NamedTuple's ``__new__`` is Python code; per-packet results are built with every field
# given, straight through ``tuple.__new__``.
_new: Final = tuple.__new__


class _Header(NamedTuple):
    """A long header up to the (protected) packet number; ``end`` is where the packet ends."""

    start: int
    version: int
    kind: PacketType
    dcid: bytes
    scid: bytes
    token: bytes
    pn_offset: int
    end: int


class _Walk:
    """What the walk over one datagram found so far."""

    __slots__ = ("error", "first", "initials", "negotiation", "other", "retry")

    def __init__(self) -> None:
        self.initials: list[Initial] = []
        self.retry = False
        self.negotiation = False
        self.other = 0
        self.error: QuicFormatError | None = None
        self.first: tuple[int, bytes] | None = None  # (version, DCID) of the first packet

    def fail(self, exc: QuicFormatError) -> None:
        if self.error is None:
            self.error = exc


def _truncated(pos: int) -> QuicFormatError:
    return QuicFormatError(f"long header cut short at offset {pos}", "truncated")


def _cut(pos: int) -> QuicFormatError:
    return QuicFormatError(f"frame cut short at offset {pos}", "frame")


def _varint(buf: bytes, pos: int, end: int,
            short: Callable[[int], QuicFormatError] = _cut) -> tuple[int, int]:
    """RFC 9000 §16 variable-length integer at ``pos``: (value, position after it); a read
    past ``end`` raises ``short(pos)`` (a frame's or a header's error)."""
    if pos >= end:
        raise short(pos)
    first = buf[pos]
    if first < 0x40:
        return first, pos + 1
    size = 1 << (first >> 6)
    if pos + size > end:
        raise short(pos)
    return int.from_bytes(buf[pos : pos + size], "big") & ((1 << (8 * size - 2)) - 1), pos + size


def _header(data: bytes, pos: int, walk: _Walk) -> _Header | None:
    """The long header at ``pos``; None when the packet ends the walk (it has no Length).

    RFC 9000 §17.2 (https://www.rfc-editor.org/rfc/rfc9000#section-17.2) for the layout.
    Index arithmetic, every read checked against the length (a Cursor's method call per
    field was a fifth of an Initial's cost).
    """
    n = len(data)
    if pos + 5 > n:
        raise _truncated(pos)
    first = data[pos]
    version = int.from_bytes(data[pos + 1 : pos + 5], "big")
    if version == Version.NEGOTIATION:  # RFC 9000 §17.2.1: the rest is a list of versions
        walk.negotiation = True
        return None
    profile = _PROFILES.get(version)
    if profile is None:  # RFC 8999: only the invariants are known, and no Length to skip by
        walk.other += 1
        return None
    p = pos + 5
    cids = []
    for _ in range(2):  # destination, then source connection ID
        if p >= n:
            raise _truncated(p)
        ln = data[p]
        if ln > MAX_CID_LEN:
            raise QuicFormatError(f"connection ID of {ln} bytes", "cid")
        p += 1
        if p + ln > n:
            raise _truncated(p)
        cids.append(data[p : p + ln])
        p += ln
    kind = profile.types[(first >> 4) & 3]
    if kind is _R:  # RFC 9000 §17.2.5: token and integrity tag fill the datagram
        walk.retry = True
        return None
    token = b""
    if kind is _I:
        ln, p = _varint(data, p, n, _truncated)
        if p + ln > n:
            raise _truncated(p)
        token = data[p : p + ln]
        p += ln
    length, p = _varint(data, p, n, _truncated)
    if p + length > n:
        raise _truncated(p)
    return _new(_Header, (pos, version, kind, cids[0], cids[1], token, p, p + length))


def _open(data: bytes, h: _Header, first_dcid: bytes | None) -> tuple[int, bytes, bool]:
    """Remove header protection and decrypt: (packet number, plaintext payload, rekeyed).

    Keys come from ``first_dcid`` when given (RFC 9001 §5.2: from the DCID of the client's
    first Initial, even when later Initials carry the server's choice), else, or when those
    fail, from this packet's own DCID (after a Retry the client derives new keys from the
    DCID the Retry gave it, RFC 9001 §5.2).
    """
    sample_at = h.pn_offset + SAMPLE_OFFSET
    if sample_at + SAMPLE_LEN > h.end:
        raise QuicFormatError(f"{h.end - h.pn_offset} bytes after the header, too few to sample", "short")
    sample = data[sample_at : sample_at + SAMPLE_LEN]
    dcids = (h.dcid,) if first_dcid is None or first_dcid == h.dcid else (first_dcid, h.dcid)
    for dcid in dcids:
        opened = _try_open(data, h, sample, _opener(h.version, dcid))
        if opened is not None:
            return opened[0], opened[1], dcid is not dcids[0]
    raise QuicFormatError("Initial packet failed authentication", "decrypt")


def _try_open(data: bytes, h: _Header, sample: bytes, opener: _Opener) -> tuple[int, bytes] | None:
    """RFC 9001 §5.4.1 (header protection) then §5.3 (AEAD); None if the tag does not match."""
    mask = opener.hp.update(sample)
    first = data[h.start] ^ (mask[0] & 0x0F)  # long header: the low 4 bits are protected
    pn_len = (first & 0x03) + 1
    pn_end = h.pn_offset + pn_len
    pn = int.from_bytes(data[h.pn_offset : pn_end], "big") ^ int.from_bytes(mask[1 : 1 + pn_len], "big")
    pn_bytes = pn.to_bytes(pn_len, "big")
    # RFC 9000 §17.1 and §A.3: with no packet received yet the expected number is 0, so the
    # truncated number is the full one; a client's Initials are its first packets.
    aad = bytes((first,)) + data[h.start + 1 : h.pn_offset] + pn_bytes
    nonce = (opener.iv ^ pn).to_bytes(12, "big")  # RFC 9001 §5.3
    try:
        return pn, opener.aead.decrypt(nonce, data[pn_end : h.end], aad)
    except InvalidTag:
        return None


# -- frames -----------------------------------------------------------------------------


# Frames are read with index arithmetic, not Cursor: a Chrome Initial holds a dozen frames
# and some 30 variable-length integers, and a method call per field was most of the cost of
# a whole Initial (bench/quic.py). Every read is still bounds-checked.


def _skip_ack(buf: bytes, pos: int, end: int, ecn: bool) -> int:
    """RFC 9000 §19.3: largest, delay, range count, first range, ranges, [ECN counts]."""
    _, pos = _varint(buf, pos, end)
    _, pos = _varint(buf, pos, end)
    ranges, pos = _varint(buf, pos, end)
    _, pos = _varint(buf, pos, end)
    for _ in range(ranges):  # each range takes at least 2 bytes: a bogus count runs out
        _, pos = _varint(buf, pos, end)
        _, pos = _varint(buf, pos, end)
    for _ in range(3 if ecn else 0):  # RFC 9000 §19.3.2: ECT0, ECT1, ECN-CE
        _, pos = _varint(buf, pos, end)
    return pos


def _skip_close(buf: bytes, pos: int, end: int) -> int:
    """RFC 9000 §19.19: error code, frame type, reason phrase length and bytes."""
    _, pos = _varint(buf, pos, end)
    _, pos = _varint(buf, pos, end)
    n, pos = _varint(buf, pos, end)
    if pos + n > end:
        raise _cut(pos)
    return pos + n


# The frame loop compares plain ints: an IntEnum member lookup per comparison was a visible
# share of a frame's cost.
_PADDING: Final = int(FrameType.PADDING)
_PING: Final = int(FrameType.PING)
_ACK: Final = int(FrameType.ACK)
_ACK_ECN: Final = int(FrameType.ACK_ECN)
_CRYPTO: Final = int(FrameType.CRYPTO)
_CLOSE: Final = int(FrameType.CONNECTION_CLOSE)


def parse_frames(payload: bytes) -> tuple[tuple[int, bytes], ...]:
    """The (offset, data) of each CRYPTO frame of a decrypted Initial payload, in order.

    Frame types are read as variable-length integers (RFC 9000 §12.4): a longer encoding
    than needed is only a MAY-reject, so a server may accept it and so must we. Raises only
    QuicFormatError (reason ``frame``); anything else is a bug.
    """
    crypto: list[tuple[int, bytes]] = []
    pos, end = 0, len(payload)
    zero_run = _ZERO_RUN.match
    zeros_from = -1  # where the payload's trailing zeros start, once a PADDING frame asks
    try:
        while pos < end:
            kind = payload[pos]
            if kind < 0x40:  # the one-byte encoding every real frame type uses
                pos += 1
            else:
                kind, pos = _varint(payload, pos, end)
            if kind == _CRYPTO:  # RFC 9000 §19.6; offset and length mostly take 1-2 bytes
                b = payload[pos]
                if b < 0x40:
                    offset, pos = b, pos + 1
                elif b < 0x80:
                    offset, pos = ((b & 0x3F) << 8) | payload[pos + 1], pos + 2
                else:
                    offset, pos = _varint(payload, pos, end)
                b = payload[pos]
                if b < 0x40:
                    n, pos = b, pos + 1
                elif b < 0x80:
                    n, pos = ((b & 0x3F) << 8) | payload[pos + 1], pos + 2
                else:
                    n, pos = _varint(payload, pos, end)
                if pos + n > end:
                    raise _cut(pos)
                if offset + n > MAX_CRYPTO_END:
                    raise QuicFormatError(f"CRYPTO frame ends past 2^62-1 at offset {offset}", "frame")
                crypto.append((offset, payload[pos : pos + n]))
                pos += n
            elif kind == _PADDING:  # runs of zeros, often most of the packet
                if zeros_from < 0:
                    zeros_from = len(payload.rstrip(b"\x00"))
                # zeros to the end (each one a PADDING frame), or the run's end (\x00* always matches)
                pos = end if pos >= zeros_from else zero_run(payload, pos).end()  # type: ignore[union-attr]
            elif kind in (_ACK, _ACK_ECN):
                pos = _skip_ack(payload, pos, end, kind == _ACK_ECN)
            elif kind == _CLOSE:
                pos = _skip_close(payload, pos, end)
            elif kind != _PING:
                raise QuicFormatError(f"frame type {kind:#x} is not allowed in an Initial", "frame")
    except IndexError:  # a 2-byte integer read past the end (every other read is checked)
        raise _cut(pos) from None
    return tuple(crypto)


# -- datagrams --------------------------------------------------------------------------


def _packet(data: bytes, h: _Header, walk: _Walk, first_dcid: bytes | None) -> None:
    """Handle one long-header packet whose extent is known; may raise QuicFormatError."""
    if walk.first is None:
        walk.first = (h.version, h.dcid)
    elif walk.first != (h.version, h.dcid):  # RFC 9000 §12.2: ignore another DCID
        walk.other += 1
        return
    if h.kind is not _I:
        walk.other += 1
        return
    pn, payload, rekeyed = _open(data, h, first_dcid)
    walk.initials.append(_new(Initial, (h.version, h.dcid, h.scid, h.token, pn, parse_frames(payload),
                                        rekeyed)))


def parse_datagram(data: bytes, first_dcid: bytes | None = None) -> Datagram:
    """Every long-header packet of one UDP datagram; client Initials decrypted.

    ``first_dcid``: the DCID of the client's first Initial on this flow, when the caller
    knows it (see ``_open``); without it each Initial's own DCID gives the keys.
    Raises only QuicFormatError; anything else is a bug.
    """
    walk = _Walk()
    pos, end = 0, len(data)
    packets = 0
    while pos < end and data[pos] & _LONG_HEADER:  # a short header (or padding) ends the walk
        if packets == MAX_COALESCED:
            walk.fail(QuicFormatError(f"more than {MAX_COALESCED} coalesced packets", "coalesced"))
            break
        packets += 1
        try:
            h = _header(data, pos, walk)
        except QuicFormatError as exc:  # no trustworthy Length: nothing after it can be found
            walk.fail(exc)
            break
        if h is None:
            break
        pos = h.end
        try:
            _packet(data, h, walk, first_dcid)
        except QuicFormatError as exc:  # RFC 9000 §12.2: still process the others
            walk.fail(exc)
    if walk.error is not None and not walk.initials:
        raise walk.error
    return _new(Datagram, (tuple(walk.initials), walk.retry, walk.other, walk.negotiation,
                           walk.error.reason if walk.error is not None else ""))
