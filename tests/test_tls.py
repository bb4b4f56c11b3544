"""ClientHello reading: records, fragments, names, ALPN, ECH, GREASE, HRR, malformed input.

Vectors: ClientHellos written by OpenSSL through Python's ``ssl`` module (an independent
producer: the names and ALPN it was given are the oracle), hand-built ClientHellos for
the corner cases OpenSSL will not produce, and the ClientHello of a real capture
(tests/fixtures/pcaps, tshark's name as the oracle).
"""

from __future__ import annotations

import contextlib
import ssl
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockgate.tls import (
    MAX_HELLO,
    ClientHello,
    Finished,
    NeedMore,
    TlsFormatError,
    parse_client_hello,
    read_handshake,
    read_hello,
)


def openssl_hello(name: str | None, alpn: list[str] | None = None, tls13_only: bool = False) -> bytes:
    """The first flight of a real OpenSSL client (one record with its ClientHello)."""
    ctx = ssl.create_default_context()
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if tls13_only:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    if name is None:
        ctx.check_hostname = False
    sock = ctx.wrap_bio(incoming, outgoing, server_hostname=name)
    with pytest.raises(ssl.SSLWantReadError):
        sock.do_handshake()
    return outgoing.read()


# -- a ClientHello builder for what OpenSSL does not send ------------------------------------


def ext(etype: int, body: bytes) -> bytes:
    return struct.pack("!HH", etype, len(body)) + body


def sni(*names: bytes, name_type: int = 0) -> bytes:
    entries = b"".join(bytes((name_type,)) + struct.pack("!H", len(n)) + n for n in names)
    return ext(0, struct.pack("!H", len(entries)) + entries)


def alpn(*protos: bytes) -> bytes:
    lst = b"".join(bytes((len(p),)) + p for p in protos)
    return ext(16, struct.pack("!H", len(lst)) + lst)


def body(*extensions: bytes, suites: bytes = b"\x13\x01\x0a\x0a", session: bytes = b"\x11" * 32) -> bytes:
    exts = b"".join(extensions)
    return (b"\x03\x03" + b"\x42" * 32 + bytes((len(session),)) + session + struct.pack("!H", len(suites))
            + suites + b"\x01\x00" + struct.pack("!H", len(exts)) + exts)


def handshake(b: bytes, htype: int = 1) -> bytes:
    return bytes((htype,)) + len(b).to_bytes(3, "big") + b


def records(msg: bytes, sizes: list[int] | None = None, ctype: int = 22) -> bytes:
    """``msg`` cut into records of ``sizes`` bytes (the rest in the last one)."""
    out, pos = b"", 0
    for size in [*(sizes or []), len(msg)]:
        part = msg[pos : pos + size]
        if not part:
            break
        out += bytes((ctype, 3, 1)) + struct.pack("!H", len(part)) + part
        pos += len(part)
    return out


GREASE_HELLO = body(ext(0x0A0A, b""), sni(b"Grease.Example"), ext(0x2B, b"\x04\xaa\xaa\x03\x04"),
                    alpn(b"\x7a\x7a", b"h2"), ext(0xFAFA, b"\x00"))


# -- vectors ---------------------------------------------------------------------------------

VECTORS = [
    # (id, stream, names, alpn, anomalies, ech)
    ("openssl-sni-alpn", openssl_hello("WWW.Example.COM", ["h2", "http/1.1"]),
     (b"www.example.com",), (b"h2", b"http/1.1"), (), False),
    ("openssl-tls13", openssl_hello("tls13.example", tls13_only=True), (b"tls13.example",), (), (), False),
    ("openssl-no-sni", openssl_hello(None), (), (), (), False),
    ("grease", records(handshake(GREASE_HELLO)), (b"grease.example",), (b"\x7a\x7a", b"h2"), (), False),
    ("trailing-dot", records(handshake(body(sni(b"example.org.")))), (b"example.org",), (),
     ("trailing-dot",), False),
    ("two-names", records(handshake(body(sni(b"a.example", b"B.example")))), (b"a.example", b"b.example"),
     (), ("multiple-names",), False),
    ("two-sni-extensions", records(handshake(body(sni(b"a.example"), sni(b"b.example")))),
     (b"a.example", b"b.example"), (), ("duplicate-extension", "multiple-sni-extensions", "multiple-names"),
     False),
    ("non-ascii", records(handshake(body(sni("bücher.example".encode())))), ("bücher.example".encode(),), (),
     ("non-ascii",), False),
    ("control-byte", records(handshake(body(sni(b"a\x04b.example")))), (b"a\x04b.example",), (),
     ("bad-char",), False),
    ("name-type-1", records(handshake(body(sni(b"x", name_type=1)))), (), (), ("name-type",), False),
    ("empty-sni-extension", records(handshake(body(ext(0, b"")))), (), (), ("empty-sni",), False),
    ("ech-outer", records(handshake(body(sni(b"cloudflare-ech.com"), ext(0xFE0D, b"\x00\x00\x01")))),
     (b"cloudflare-ech.com",), (), (), True),
    ("no-extensions", records(handshake(body()[:-2])), (), (), (), False),
]


@pytest.mark.parametrize(("stream", "names", "protos", "anomalies", "ech"),
                         [v[1:] for v in VECTORS], ids=[v[0] for v in VECTORS])
def test_vectors_whole_byte_by_byte_and_with_junk(stream: bytes, names: tuple[bytes, ...],
                                                   protos: tuple[bytes, ...], anomalies: tuple[str, ...],
                                                   ech: bool) -> None:
    hello = read_hello(stream)
    assert isinstance(hello, ClientHello)
    assert (hello.names, hello.alpn, hello.anomalies, hello.ech, hello.error) == (names, protos, anomalies,
                                                                                   ech, "")
    assert hello.end == len(stream)
    # byte by byte: every prefix asks for more, and never for fewer bytes than it has
    for i in range(len(stream)):
        res = read_hello(stream[:i])
        assert isinstance(res, NeedMore) and i < res.need <= len(stream)
    # trailing junk after the record changes nothing
    assert read_hello(stream + b"\x17\x03\x03\x00\x02zz") == hello


def test_real_capture_hello() -> None:
    """tls13-pq-kyber-chrome125: Chrome's 1756-byte ClientHello (tshark: lh3.google.com)."""
    from scapy.all import TCP, rdpcap

    pkts = [p for p in rdpcap("tests/fixtures/pcaps/tls13-pq-kyber-chrome125.pcap")
            if TCP in p and p[TCP].dport == 443 and bytes(p[TCP].payload)]
    hello = read_hello(bytes(pkts[0][TCP].payload))
    assert isinstance(hello, ClientHello)
    assert hello.names == (b"lh3.google.com",)
    assert b"h2" in hello.alpn


@given(st.lists(st.integers(1, 300), max_size=12))
@settings(max_examples=200)
def test_record_layer_fragmentation_equals_whole(sizes: list[int]) -> None:
    msg = handshake(GREASE_HELLO)
    whole = read_hello(records(msg))
    split = read_hello(records(msg, sizes))
    assert isinstance(whole, ClientHello) and isinstance(split, ClientHello)
    assert (split.names, split.alpn) == (whole.names, whole.alpn)


@given(st.data())
@settings(max_examples=200)
def test_split_anywhere_equals_whole(data: st.DataObject) -> None:
    """Any cut of the stream: prefixes ask for more, the whole gives the same hello."""
    stream = records(handshake(GREASE_HELLO), data.draw(st.lists(st.integers(1, 200), max_size=4)))
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(stream)), max_size=10))))
    for cut in cuts:
        res = read_hello(stream[:cut])
        if cut < len(stream):
            assert isinstance(res, NeedMore) and res.need > cut
    res = read_hello(stream)
    assert isinstance(res, ClientHello) and res.names == (b"grease.example",)


def test_hello_retry_request_second_hello() -> None:
    """RFC 8446 §4.1.4: CH1, then (after the server's HRR) CCS and CH2 on the same stream."""
    ch1 = records(handshake(body(sni(b"first.example"))))
    ch2 = records(handshake(body(sni(b"second.example"))))
    stream = ch1 + b"\x14\x03\x03\x00\x01\x01" + ch2 + b"\x17\x03\x03\x00\x01x"
    first = read_hello(stream)
    assert isinstance(first, ClientHello) and first.names == (b"first.example",)
    second = read_hello(stream, first.end)
    assert isinstance(second, ClientHello) and second.names == (b"second.example",)
    assert read_hello(stream, second.end) == Finished("application_data")


@pytest.mark.parametrize(("stream", "result"), [
    (b"\x17\x03\x03\x00\x02ab", Finished("application_data")),
    (b"\x15\x03\x03\x00\x02\x02\x28", Finished("alert")),
    (records(handshake(b"\x00" * 70, htype=16)), Finished("handshake-16")),
    (records(handshake(b"\x00" * 70, htype=16), [2]), Finished("handshake-16")),
    (b"\x16\x03\x01\x00", NeedMore(5)),
    (b"\x16\x03\x01\x00\x30\x01", NeedMore(9)),
    (b"\x80\x2e\x01\x03\x01", NeedMore(48)),
], ids=["application-data", "alert", "other-handshake", "other-handshake-fragmented", "short-header",
        "short-handshake-header", "sslv2-partial"])
def test_stream_states(stream: bytes, result: object) -> None:
    assert read_hello(stream) == result


def test_sslv2_compatible_hello_has_no_name() -> None:
    v2 = b"\x80\x2e\x01\x03\x01" + bytes(43)
    hello = read_hello(v2)
    assert isinstance(hello, ClientHello) and hello.names == () and hello.anomalies == ("sslv2",)


@pytest.mark.parametrize(("stream", "reason"), [
    (b"GET / HTTP/1.1\r\n", "not-tls"),
    (b"\x16\x02\x00\x00\x05hello", "not-tls"),
    (b"\x16\x03\x01\x48\x01" + bytes(10), "record-length"),
    (b"\x16\x03\x01\x00\x00", "empty-record"),
    (records(handshake(body(sni(b"x.example"))), [10])[:15] + b"\x17\x03\x03\x00\x01x", "interleaved"),
    (b"\x16\x03\x01\x00\x02\x01\x01" + b"\x16\x03\x01\x00\x02\x00\x00", "hello-length"),
], ids=["http", "version-2", "record-too-long", "empty-handshake-record", "interleaved", "hello-too-long"])
def test_stream_errors(stream: bytes, reason: str) -> None:
    with pytest.raises(TlsFormatError) as exc:
        read_hello(stream)
    assert exc.value.reason == reason


@pytest.mark.parametrize(("raw", "names", "error"), [
    (body(sni(b"kept.example"), b"\x00\x10\xff\xff"), (b"kept.example",), "truncated"),
    (body(sni(b"x.example"), suites=b"\x13"), (), "cipher-suites"),
    (body(session=b"\x00" * 33), (), "session-id"),
    (body()[:40], (), "truncated"),
    (b"\x03\x03" + bytes(32) + b"\x00\x00\x02\x13\x01\x00", (), "compression"),
], ids=["broken-after-sni", "odd-cipher-suites", "long-session-id", "cut-short", "no-compression"])
def test_malformed_bodies_keep_what_was_read(raw: bytes, names: tuple[bytes, ...], error: str) -> None:
    hello = parse_client_hello(raw)
    assert (hello.names, hello.error) == (names, error)


def test_quic_crypto_stream() -> None:
    msg = handshake(body(sni(b"quic.example"), alpn(b"h3")))
    for i in range(len(msg)):
        res = read_handshake(msg[:i])
        assert isinstance(res, NeedMore) and res.need > i
    hello = read_handshake(msg + b"junk")
    assert isinstance(hello, ClientHello) and hello.names == (b"quic.example",) and hello.alpn == (b"h3",)
    with pytest.raises(TlsFormatError) as exc:
        read_handshake(b"\x02\x00\x00\x01x")
    assert exc.value.reason == "handshake-type"
    with pytest.raises(TlsFormatError):
        read_handshake(b"\x01" + (MAX_HELLO + 1).to_bytes(3, "big"))


# -- random and truncated bytes raise only the format error -----------------------------------


def _only_format_errors(fn: object, data: bytes) -> None:
    with contextlib.suppress(TlsFormatError):
        fn(data)  # type: ignore[operator]


@given(st.binary(max_size=600))
@settings(max_examples=500)
def test_random_bytes(data: bytes) -> None:
    for fn in (read_hello, read_handshake, parse_client_hello):
        _only_format_errors(fn, data)
    _only_format_errors(read_hello, b"\x16\x03\x01" + data[:2] + b"\x01" + data[2:])


REAL = openssl_hello("mutate.example", ["h2"])


@given(st.integers(0, len(REAL) - 1), st.integers(0, 255), st.integers(0, len(REAL)))
@settings(max_examples=500)
def test_mutated_and_truncated_real_hello(at: int, value: int, cut: int) -> None:
    mutated = bytearray(REAL)
    mutated[at] = value
    for data in (bytes(mutated), REAL[:cut], bytes(mutated[:cut])):
        _only_format_errors(read_hello, data)
        _only_format_errors(parse_client_hello, data[9:])


@given(st.sampled_from([REAL[9:], GREASE_HELLO, body(sni(b"a.example"), alpn(b"h2")), body()[:-2]]),
       st.integers(0, 600), st.integers(0, 255), st.integers(0, 600))
@settings(max_examples=1000)
def test_fast_path_equals_the_careful_walk(raw: bytes, at: int, value: int, cut: int) -> None:
    """The index-arithmetic path and the cursor walk agree on every input (mutated, cut)."""
    from blockgate import tls

    mutated = bytearray(raw)
    if mutated:
        mutated[at % len(mutated)] = value
    for data in (raw, bytes(mutated), bytes(mutated[:cut])):
        assert parse_client_hello(data) == tls._careful(data, 0)
