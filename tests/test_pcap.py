"""Capture reading: every fixture against scapy's readers, hand-built variants, broken files."""

from __future__ import annotations

import contextlib
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockgate.pcap import PcapFormatError, Record, parse_capture

PCAPS = Path(__file__).parent / "fixtures" / "pcaps"
FILES = sorted(p.name for p in PCAPS.iterdir() if p.suffix in (".pcap", ".pcapng"))


@pytest.mark.parametrize("name", FILES)
def test_fixture_records_match_scapy(name: str) -> None:
    from scapy.utils import PcapNgReader, PcapReader, RawPcapNgReader, RawPcapReader

    raw = (PCAPS / name).read_bytes()
    ours = list(parse_capture(raw))
    is_ng = raw[:4] == b"\x0a\x0d\x0d\x0a"
    with (RawPcapNgReader if is_ng else RawPcapReader)(str(PCAPS / name)) as rd:
        theirs = [(bytes(data), meta) for data, meta in rd]
    assert [r.data for r in ours] == [d for d, _ in theirs]
    with (PcapNgReader if is_ng else PcapReader)(str(PCAPS / name)) as rd:
        times = [float(p.time) for p in rd]
    assert [r.ts for r in ours] == pytest.approx(times, abs=1e-6)


def pcap(order: str, magic: int, linktype: int, recs: list[tuple[int, int, bytes]]) -> bytes:
    out = struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype)
    for sec, frac, data in recs:
        out += struct.pack(order + "IIII", sec, frac, len(data), len(data)) + data
    return out


@pytest.mark.parametrize(("order", "magic", "ts"), [
    ("<", 0xA1B2C3D4, 10.5), (">", 0xA1B2C3D4, 10.5), ("<", 0xA1B23C4D, 10.0000005),
    (">", 0xA1B23C4D, 10.0000005),
], ids=["le-us", "be-us", "le-ns", "be-ns"])
def test_pcap_variants(order: str, magic: int, ts: float) -> None:
    frac = 500000 if magic == 0xA1B2C3D4 else 500
    data = pcap(order, magic, 101, [(10, frac, b"\x45abc"), (11, 0, b"")])
    assert list(parse_capture(data)) == [Record(101, pytest.approx(ts), b"\x45abc", 4),  # type: ignore[arg-type]
                                         Record(101, 11.0, b"", 0)]


def block(order: str, btype: int, body: bytes) -> bytes:
    body += b"\x00" * (-len(body) % 4)
    n = len(body) + 12
    return struct.pack(order + "II", btype, n) + body + struct.pack(order + "I", n)


def shb(order: str) -> bytes:
    return block(order, 0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1))


def idb(order: str, linktype: int, tsresol: int | None = None) -> bytes:
    opts = b""
    if tsresol is not None:
        opts = struct.pack(order + "HH", 9, 1) + bytes((tsresol,)) + b"\x00\x00\x00" + b"\x00" * 4
    return block(order, 1, struct.pack(order + "HHI", linktype, 0, 0) + opts)


def epb(order: str, iface: int, ts: int, data: bytes) -> bytes:
    head = struct.pack(order + "IIIII", iface, ts >> 32, ts & 0xFFFFFFFF, len(data), len(data))
    return block(order, 6, head + data)


def test_pcapng_sections_interfaces_and_block_types() -> None:
    le = shb("<") + idb("<", 1) + idb("<", 101, tsresol=9) + epb("<", 0, 2_000_000, b"eth") \
        + epb("<", 1, 3_000_000_000, b"raw") + block("<", 3, struct.pack("<I", 3) + b"spb") \
        + block("<", 5, b"statistics, skipped")
    be = shb(">") + idb(">", 113, tsresol=0x80 | 10) \
        + block(">", 2, struct.pack(">HHIIII", 0, 0, 0, 2048, 4, 4) + b"sll!")
    recs = list(parse_capture(le + be))
    assert [(r.linktype, r.data) for r in recs] == [(1, b"eth"), (101, b"raw"), (1, b"spb"), (113, b"sll!")]
    assert [r.ts for r in recs] == [2.0, 3.0, 3.0, 2.0]


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "truncated"),
    (b"GIF89a....", "magic"),
    (pcap("<", 0xA1B2C3D4, 1, [(0, 0, b"abcd")])[:-1], "truncated"),
    (pcap("<", 0xA1B2C3D4, 1, [])[:20], "truncated"),
    (shb("<")[:-4] + b"\x00\x00", "block-length"),
    (shb("<") + epb("<", 0, 0, b"x"), "interface"),
    (block("<", 0x0A0D0D0A, b"\x01\x02\x03\x04" + bytes(12)), "magic"),
    (shb("<") + idb("<", 1) + block("<", 6, bytes(8)), "truncated"),
], ids=["empty", "not-a-capture", "cut-record", "cut-header", "cut-block", "no-interface", "bad-bom",
        "short-epb"])
def test_broken_files(data: bytes, reason: str) -> None:
    with pytest.raises(PcapFormatError) as exc:
        list(parse_capture(data))
    assert exc.value.reason == reason


def test_records_before_the_break_are_kept() -> None:
    data = pcap("<", 0xA1B2C3D4, 1, [(0, 0, b"one"), (0, 0, b"two")])[:-1]
    got = []
    with pytest.raises(PcapFormatError):
        for rec in parse_capture(data):
            got.append(rec.data)
    assert got == [b"one"]


HEADS = [b"", b"\xd4\xc3\xb2\xa1" + bytes(20), shb("<") + idb("<", 1)]


@given(st.binary(max_size=200), st.sampled_from(HEADS))
@settings(max_examples=400)
def test_random_bytes_raise_only_the_format_error(data: bytes, head: bytes) -> None:
    with contextlib.suppress(PcapFormatError):
        list(parse_capture(head + data))


@given(st.sampled_from(FILES), st.integers(0, 100000))
@settings(max_examples=200)
def test_truncated_fixtures(name: str, cut: int) -> None:
    raw = (PCAPS / name).read_bytes()
    with contextlib.suppress(PcapFormatError):
        list(parse_capture(raw[: cut % (len(raw) + 1)]))
