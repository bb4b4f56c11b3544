"""SNI benchmark: ``blockgate replay`` beside nDPI's ``ndpiReader`` and ``tshark``, same file.

The capture is made here: every packet of every fixture capture (tests/fixtures/pcaps),
as Ethernet frames, repeated ROUNDS times with the IP addresses of each copy XORed with the
copy number (distinct flows, same bytes above IP; IPv4 header checksums redone, TCP/UDP
checksums left as they are: none of the three tools checks them). Then:

* blockgate replays it against the bench kit's 1,000,000-name list (``../shared/bench``;
  its setup script runs first when the list is missing): packets/s of its packet loop
  (CPU time, as printed in its summary) and ClientHellos/s;
* ndpiReader reads the same file: its own loop figure ("nDPI throughput") and its flows'
  ``Hostname/SNI``;
* blockgate again from its interpreted sources alone (a copy without the compiled modules
  of setup.py; ``--no-pure`` skips it): what the compiled build gains, in the same run, and
  a check that both find the same names and verdicts;
* tshark (the ground-truth tool, TLS and TCP reassembly on, QUIC decrypted) finds every
  ClientHello; its CPU time is reported too.

Names are compared: every (frame, name) tshark finds must be found by blockgate; flows
whose SNI ndpiReader reports must be found, and the flows blockgate finds beyond nDPI are
counted (split ClientHellos nDPI cannot reassemble).

``--nfqueue`` (root) also measures NFQUEUE verdicts/s in a network namespace, as the kernel
test sets it up: distinct UDP flows to port 443 through the queue, small datagrams (the
engine's quickest answer) and real QUIC Initials (decrypted and matched).

    make bench-sni      # = .venv/bin/python bench/sni.py --rounds 160 --nfqueue
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests"))

from interpreted import pure_sources  # noqa: E402

from blockgate.packet import PacketFormatError, checksum, ip_offset  # noqa: E402
from blockgate.pcap import parse_capture  # noqa: E402

KIT = Path(os.environ.get("BENCH_KIT", REPO.parent / "shared" / "bench"))
ROOT = Path(os.environ.get("BENCH_ROOT", "/tmp/blockgate-bench"))
BLOCKLIST = ROOT / "data" / "blocklist.txt"
PCAPS = REPO / "tests" / "fixtures" / "pcaps"
PORTS = [443, 4443, 8013, 8443]
TSHARK_PREFS = ["-o", "tcp.desegment_tcp_streams:TRUE", "-o", "tcp.reassemble_out_of_order:TRUE",
                "-o", "tls.desegment_ssl_records:TRUE", "-o", "tls.desegment_ssl_application_data:TRUE"]


def ensure_list() -> None:
    if not BLOCKLIST.exists() or BLOCKLIST.stat().st_size == 0:
        print("making the 1M-name list with the bench kit", flush=True)
        subprocess.run(["bash", str(KIT / "setup.sh")], check=True)


def fixture_packets() -> list[bytes]:
    out = []
    for f in sorted(PCAPS.iterdir()):
        if f.suffix not in (".pcap", ".pcapng"):
            continue
        for rec in parse_capture(f.read_bytes()):
            try:
                at = ip_offset(rec.linktype, rec.data)
            except PacketFormatError:
                continue
            out.append(rec.data[at:])
    return out


def relabel(ip: bytes, k: int) -> bytes:
    """Copy ``k`` of an IP packet: both addresses XORed with k (a bijection per copy)."""
    b = bytearray(ip)
    hi, lo = k >> 8, k & 0xFF
    if b[0] >> 4 == 4 and len(b) >= 20:
        for at in (12, 16):
            b[at] ^= hi
            b[at + 1] ^= lo
        ihl = (b[0] & 0x0F) * 4
        b[10:12] = b"\x00\x00"
        b[10:12] = checksum(bytes(b[:ihl])).to_bytes(2, "big")
    elif b[0] >> 4 == 6 and len(b) >= 40:
        for at in (8 + 2, 24 + 2):
            b[at] ^= hi
            b[at + 1] ^= lo
    return bytes(b)


def make_capture(path: Path, rounds: int) -> int:
    packets = fixture_packets()
    eth = {4: b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02\x08\x00",
           6: b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02\x86\xdd"}
    n = 0
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        for k in range(rounds):
            for ip in packets:
                if not ip or ip[0] >> 4 not in eth:  # the fuzzed captures' non-IP records
                    continue
                frame = eth[ip[0] >> 4] + relabel(ip, k)
                usec = n * 10  # 10 us apart: the copies follow each other, no flow idles out
                f.write(struct.pack("<IIII", 1_700_000_000 + usec // 1_000_000, usec % 1_000_000,
                                    len(frame), len(frame)) + frame)
                n += 1
    return n


def child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


@dataclass
class Result:
    pps: float = 0.0  # the tool's own packet-loop figure
    process_cpu: float = 0.0
    loop_cpu: float = 0.0
    hellos: int = 0
    blocked: int = 0
    names: set[tuple[int, str, str]] = field(default_factory=set)  # (frame, proto, name)
    flows: set[tuple[str, int, str, int, str]] = field(default_factory=set)  # client, server, name


def run_blockgate(cap: Path, work: Path, pythonpath: Path | None = None) -> Result:
    cfg = work / "bench-sni.yaml"
    cfg.write_text(f"state_dir: {work / 'state'}\nsources:\n  - name: bench\n    format: domains\n"
                   f"    path: {BLOCKLIST}\nsni:\n  ports: {PORTS}\n  max_flows: 65536\n")
    cpu0 = child_cpu()
    cmd = [sys.executable, "-m", "blockgate", "replay", "--config", str(cfg), "--json", str(cap)]
    env = {**os.environ, "PYTHONPATH": str(pythonpath)} if pythonpath else None
    res = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=REPO, env=env)
    lines = [json.loads(x) for x in res.stdout.splitlines()]
    summary = lines.pop()
    hellos = [r for r in lines if r["event"] == "client_hello"]
    return Result(pps=summary["packets_per_second"], process_cpu=child_cpu() - cpu0,
                  loop_cpu=summary["cpu_seconds"], hellos=summary["client_hellos"],
                  blocked=sum(1 for r in lines if r["verdict"] == "block"),
                  names={(r["frame"], r["proto"], n) for r in hellos for n in r["names"] if n},
                  flows={(r["src"], r["sport"], r["dst"], r["dport"], n)
                         for r in hellos for n in r["names"] if n})


def run_ndpi(cap: Path) -> Result:
    cpu0 = child_cpu()
    res = subprocess.run(["ndpiReader", "-i", str(cap), "-v", "2"], capture_output=True, text=True,
                         check=True)
    out = Result(process_cpu=child_cpu() - cpu0)
    m = re.search(r"nDPI throughput:\s+([\d.]+) (K|M)? ?pps", res.stdout)
    out.pps = float(m.group(1)) * {"K": 1e3, "M": 1e6, None: 1}[m.group(2)] if m else 0.0
    pat = re.compile(r"(TCP|UDP) \[?([0-9a-f.:]+?)\]?:(\d+) <-> \[?([0-9a-f.:]+?)\]?:(\d+) .*?"
                     r"\[Hostname/SNI: ([^\]]+)\]")
    for line in res.stdout.splitlines():
        fm = pat.search(line)
        if fm:  # TLS and QUIC flows only (nDPI shows DNS query names in the same field)
            a, ap, b, bp, sni = fm.group(2), int(fm.group(3)), fm.group(4), int(fm.group(5)), fm.group(6)
            if bp in PORTS:
                out.flows.add((a, ap, b, bp, sni.lower()))
            elif ap in PORTS:
                out.flows.add((b, bp, a, ap, sni.lower()))
    return out


def run_tshark(cap: Path) -> Result:
    cpu0 = child_cpu()
    res = subprocess.run(["tshark", "-n", "-r", str(cap), *TSHARK_PREFS, "-Y", "tls.handshake.type == 1",
                          "-T", "fields", "-e", "frame.number", "-e", "quic.version",
                          "-e", "tls.handshake.extensions_server_name"],
                         capture_output=True, text=True, check=True)
    out = Result(process_cpu=child_cpu() - cpu0)
    for line in res.stdout.splitlines():
        frame, quic, sni = line.split("\t")
        for n in sni.split(","):
            if n:
                out.names.add((int(frame), "quic" if quic else "tls", n.lower()))
    return out


NFQ_SENDER = r"""
import socket, struct, sys, time
sys.path.insert(0, sys.argv[1])
n, kind = int(sys.argv[2]), sys.argv[3]
if kind == "quic":
    from test_quic import crypto_frame, initial, pad
    from test_tls import body, handshake, sni
    payload = initial(pad(crypto_frame(0, handshake(body(sni(b"allowed.example"))))))
else:
    payload = b"x" * 64
rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); rx.bind(("127.0.0.1", 443)); rx.settimeout(2)
rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 25)
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
head = lambda sport: (struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + len(payload), 0, 0, 64, 17, 0,
                      bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1]))
                      + struct.pack("!HHHH", sport, 443, 8 + len(payload), 0))
got, t0, last = 0, time.monotonic(), 0.0
for i in range(n):
    raw.sendto(head(1024 + i % 60000) + payload, ("127.0.0.1", 0))
    if i % 256 == 255:  # keep the kernel queue (4096) from overflowing
        while got < i - 1024:
            rx.recv(2048); got += 1
try:
    while got < n:
        rx.recv(2048); got += 1
except socket.timeout:
    pass
print(got, time.monotonic() - t0)
"""


def bench_nfqueue(work: Path, count: int) -> list[tuple[str, int, float]]:
    from netns import blockgate, netns, wait_for_line, write_config

    out = []
    with netns("bgbench") as ns:
        cfg = write_config(work, ["blocked.example"], {"mode": "nfqueue", "queues": [0]})
        rules = subprocess.run(blockgate("rules", "--config", str(cfg), "--iptables"), check=True,
                               capture_output=True, text=True).stdout
        ns.sh("\n".join(line for line in rules.splitlines() if not line.startswith("#")))
        log = work / "nfq.log"
        proc = ns.start(blockgate("run", "--config", str(cfg)), log)
        wait_for_line(log, "ready: NFQUEUE 0 bound", proc=proc)
        for kind in ("small", "quic"):
            res = ns.run(sys.executable, "-c", NFQ_SENDER, str(REPO / "tests"), str(count), kind, timeout=300)
            got, secs = res.stdout.split()
            out.append((kind, int(got), float(secs)))
        ns.stop(proc)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=160, help="copies of the fixture packets (1318 each)")
    ap.add_argument("--nfqueue", action="store_true", help="also measure NFQUEUE verdicts/s (root)")
    ap.add_argument("--nfqueue-packets", type=int, default=50000)
    ap.add_argument("--no-pure", action="store_true",
                    help="skip the baseline run of the interpreted sources")
    args = ap.parse_args()
    ensure_list()
    for tool in ("ndpiReader", "tshark"):
        if shutil.which(tool) is None:
            print(f"{tool} missing: make debs", file=sys.stderr)
            return 1
    with tempfile.TemporaryDirectory(prefix="bench-sni-") as tmp:
        work = Path(tmp)
        cap = work / "sni-bench.pcap"
        packets = make_capture(cap, args.rounds)
        size = cap.stat().st_size >> 20
        print(f"capture: {packets} packets ({args.rounds} copies of the fixtures), {size} MiB")
        bg, nd, ts = run_blockgate(cap, work), run_ndpi(cap), run_tshark(cap)
        report(packets, bg, nd, ts)
        if not args.no_pure:
            pure = run_blockgate(cap, work, pure_sources(work / "pure"))
            same = "same" if pure.names == bg.names and pure.blocked == bg.blocked else "DIFFERENT"
            print(f"blockgate replay, interpreted sources (no compiled modules): {pure.pps:,.0f} "
                  f"packets/s; compiled/interpreted {bg.pps / pure.pps:.2f}x, ratio to ndpiReader "
                  f"{pure.pps / nd.pps:.2f}; names and verdicts {same}")
        if args.nfqueue:
            if os.geteuid() != 0:
                print("nfqueue: skipped (needs root)")
            else:
                for kind, got, secs in bench_nfqueue(work, args.nfqueue_packets):
                    print(f"nfqueue verdicts/s ({kind} UDP flows to 443): {got / secs:,.0f} "
                          f"({got} of {args.nfqueue_packets} in {secs:.2f} s)")
    return 0


def report(packets: int, bg: Result, nd: Result, ts: Result) -> None:
    print(f"blockgate replay: {bg.pps:,.0f} packets/s, {bg.hellos / bg.loop_cpu:,.0f} ClientHellos/s "
          f"({bg.hellos} ClientHellos, {len(bg.names)} names, {bg.blocked} blocked; loop {bg.loop_cpu:.2f} s "
          f"CPU, process {bg.process_cpu:.1f} s CPU with the 1M-name compile)")
    print(f"ndpiReader:       {nd.pps:,.0f} packets/s (its nDPI throughput figure; process "
          f"{nd.process_cpu:.1f} s CPU, {packets / nd.process_cpu:,.0f} packets/CPU-s), "
          f"{len(nd.flows)} TLS/QUIC flows with an SNI")
    print(f"tshark:           {packets / ts.process_cpu:,.0f} packets/CPU-s ({ts.process_cpu:.1f} s CPU), "
          f"{len(ts.names)} ClientHello names")
    print(f"ratio blockgate/ndpiReader packets/s: {bg.pps / nd.pps:.2f}" if nd.pps else "ratio: n/a")
    missed = ts.names - bg.names
    print(f"names tshark finds that blockgate misses: {len(missed)} {sorted(missed)[:5]}")
    for proto in ("tls", "quic"):
        t = {x for x in ts.names if x[1] == proto}
        b = {x for x in bg.names if x[1] == proto}
        print(f"  {proto}: tshark {len(t)}, blockgate {len(b)}, blockgate beyond tshark {len(b - t)}")
    print("  (tshark follows QUIC connections by connection ID: the copies share their DCIDs, so it"
          " reports each QUIC ClientHello once; plus the README's Retry resends)")
    lost = nd.flows - bg.flows
    print(f"SNI flows ndpiReader finds that blockgate misses: {len(lost)} {sorted(lost)[:3]}; "
          f"blockgate beyond ndpiReader: {len(bg.flows - nd.flows)}")


if __name__ == "__main__":
    raise SystemExit(main())
