#!/usr/bin/env python3
"""QUIC Initial benchmark: ``quic.parse_datagram`` beside a bare ``AESGCM.decrypt``.

Data: every client datagram that carries an Initial in the QUIC captures of
tests/fixtures/pcaps (read once with scapy; the malformed capture left out), each parsed
with its flow's first DCID as the SNI engine would.

Measured in the same process, interleaved per round, best of ``--passes`` passes, CPU time
(``time.process_time``, so time stolen by other tenants of a shared VM is not counted):

* ``warm``: parse_datagram with every key already cached (a flow's later Initials);
* ``cold``: the key cache cleared before each datagram (a flow's first Initial: HKDF-Extract,
  four HKDF-Expand-Label, an AESGCM and an AES-ECB context per DCID);
* ``bare``: only ``AESGCM.decrypt`` of the same nonces, payloads and AADs that parse_datagram
  authenticated (recorded from the module itself during a setup pass): the floor;
* ``frames``: only ``quic.parse_frames`` of the same decrypted payloads (part of ``warm``).

Also printed: the RSS growth per key cache entry, from filling the cache to KEY_CACHE_SIZE.

    .venv/bin/python bench/quic.py            # --rounds 5 --passes 5 --repeat 20
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

from blockgate import quic  # noqa: E402

PCAPS = ROOT / "tests" / "fixtures" / "pcaps"
Call = tuple[AESGCM, bytes, bytes, bytes]


def client_datagrams() -> list[tuple[bytes, bytes | None]]:
    """(datagram, first DCID of its flow) for every client datagram holding an Initial."""
    from scapy.all import IP, UDP, IPv6, rdpcap

    out: list[tuple[bytes, bytes | None]] = []
    for path in sorted(PCAPS.glob("quic-*.pcap*")):
        if path.name.endswith(".tsv") or "malformed" in path.name:
            continue
        flows: dict[tuple[Any, ...], bytes | None] = {}
        for pkt in rdpcap(str(path)):
            if UDP not in pkt or (IP not in pkt and IPv6 not in pkt):
                continue
            ip = pkt[IP] if IP in pkt else pkt[IPv6]
            key = (ip.src, ip.dst, pkt[UDP].sport, pkt[UDP].dport)
            if (key[1], key[0], key[3], key[2]) in flows:
                continue  # server direction
            first = flows.setdefault(key, None)
            data = bytes(pkt[UDP].payload)
            try:
                dg = quic.parse_datagram(data, first)
            except quic.QuicFormatError:
                continue
            if dg.initials:
                out.append((data, first))
                if first is None or dg.initials[0].rekeyed:
                    flows[key] = dg.initials[0].dcid
    return out


def record_decrypts(datagrams: list[tuple[bytes, bytes | None]]) -> list[Call]:
    """The successful AESGCM.decrypt calls parse_datagram makes on ``datagrams``."""
    calls: list[Call] = []

    class Recording:
        def __init__(self, key: bytes) -> None:
            self.inner = AESGCM(key)

        def decrypt(self, nonce: bytes, data: bytes, aad: bytes) -> bytes:
            plain = self.inner.decrypt(nonce, data, aad)
            calls.append((self.inner, nonce, data, aad))
            return plain

    real = quic.AESGCM
    quic.AESGCM = Recording  # type: ignore[assignment,misc]
    try:
        quic.clear_key_cache()
        for data, first in datagrams:
            quic.parse_datagram(data, first)
    finally:
        quic.AESGCM = real  # type: ignore[misc]
        quic.clear_key_cache()
    return calls


def best_of(passes: int, run: Callable[[], None]) -> float:
    best = float("inf")
    for _ in range(passes):
        gc.collect()
        t = time.process_time()
        run()
        best = min(best, time.process_time() - t)
    return best


def rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def cache_entry_bytes() -> float:
    """RSS growth per key cache entry, filling the cache with distinct DCIDs."""
    quic.clear_key_cache()
    gc.collect()
    probe = bytes.fromhex("c000000001") + b"\x08"
    before = rss()
    for n in range(quic.KEY_CACHE_SIZE):
        # A 40-byte Initial: keys are derived and cached, then authentication fails.
        with contextlib.suppress(quic.QuicFormatError):
            quic.parse_datagram(probe + n.to_bytes(8, "big") + b"\x00\x00\x28" + bytes(40))
    grown = rss() - before
    assert quic.key_cache_len() == quic.KEY_CACHE_SIZE
    quic.clear_key_cache()
    return grown / quic.KEY_CACHE_SIZE


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--passes", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=20, help="times the datagram set is run per pass")
    args = ap.parse_args()

    datagrams = client_datagrams()
    calls = record_decrypts(datagrams)
    initials = sum(len(quic.parse_datagram(d, f).initials) for d, f in datagrams)
    assert initials == len(calls), (initials, len(calls))
    payload = sum(len(c[2]) for c in calls)
    print(f"{len(datagrams)} client datagrams, {initials} Initials, "
          f"{payload / len(calls):.0f} bytes of ciphertext each on average")
    print(f"key cache: {cache_entry_bytes():.0f} bytes RSS per entry ({quic.KEY_CACHE_SIZE} entries)")

    parse, clear = quic.parse_datagram, quic.clear_key_cache
    reps = range(args.repeat)

    def warm() -> None:
        for _ in reps:
            for data, first in datagrams:
                parse(data, first)

    def cold() -> None:
        for _ in reps:
            for data, first in datagrams:
                clear()
                parse(data, first)

    def bare() -> None:
        for _ in reps:
            for aead, nonce, data, aad in calls:
                aead.decrypt(nonce, data, aad)

    plaintexts = [aead.decrypt(nonce, data, aad) for aead, nonce, data, aad in calls]
    parse_frames = quic.parse_frames

    def frames() -> None:
        for _ in reps:
            for plain in plaintexts:
                parse_frames(plain)

    n = initials * args.repeat
    print(f"{'round':>5} {'warm Initials/s':>16} {'cold Initials/s':>16} {'bare GCM/s':>12} "
          f"{'warm us':>8} {'cold us':>8} {'bare us':>8} {'frames us':>9} {'warm/bare':>9} {'cold/bare':>9}")
    for r in range(1, args.rounds + 1):
        warm()  # fills the cache for the warm passes
        tw = best_of(args.passes, warm)
        tc = best_of(args.passes, cold)
        tb = best_of(args.passes, bare)
        tf = best_of(args.passes, frames)
        print(f"{r:>5} {n / tw:>16,.0f} {n / tc:>16,.0f} {n / tb:>12,.0f} "
              f"{tw / n * 1e6:>8.2f} {tc / n * 1e6:>8.2f} {tb / n * 1e6:>8.2f} {tf / n * 1e6:>9.2f} "
              f"{tw / tb:>8.1f}x {tc / tb:>8.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
