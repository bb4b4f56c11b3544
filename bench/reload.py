#!/usr/bin/env python3
"""Rule-set swaps under load: dnsperf at a fixed 20,000 QPS for 30 s against ``blockgate run``
while its 1,000,000-rule source changes three times upstream (over HTTP, from a local server).

Uses the bench kit (``../shared/bench``, override with BENCH_KIT; its ``setup.sh`` is run when
the data is missing): the seeded 1M list ``blocklist.txt``, the ``queries-mix.txt`` query file
(10 % exact, 10 % wildcard, 80 % allowed) with its ``.expect`` answers, and the Knot stand-in
on 127.0.0.1:5399 as the upstream (pinned to CPU 0 with dnsperf; blockgate on CPU 1).

The list versions: v0 is ``blocklist.txt``; v1, v2, v3 are v0 plus 2,000 names that the
query file asks for and v0 allows (a disjoint set each), so each swap flips real answers.
They are published at 6, 14 and 22 s into the run on a ThreadingHTTPServer (ETag, 304); the
source has ``refresh: 1s``. Measured:

* dnsperf's "Queries lost" (no answer within 2 s), and its achieved rate;
* correctness of every answer: dnsperf ``-v`` prints each one, ``-S 1`` prints an epoch time
  stamp every second among them, so each answer gets a time (interpolated). An answer must
  be right for a list version in force around that time (the old one until the last old
  worker has handed over, the new one from its publication; 0.5 s of slack for the time
  estimate);
* p99 latency of the answers inside the swap windows (publication to 1 s after the new
  answers everywhere) and outside them, same run;
* PSS of the daemon's process tree (smaps_rollup, every 50 ms): steady (before the first
  change, and after the last) against the peak during the swaps;
* time from the publication to the first new answer, and to 20 new answers in a row (a
  probe asks the newly blocked names every 5 ms); the daemon's log gives the parts (fetch,
  parse and judge; then the patch of the rules in force, or a compile from scratch).

    make bench-reload       # = .venv/bin/python bench/reload.py
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
KIT = Path(os.environ.get("BENCH_KIT", HERE.parent.parent / "shared" / "bench"))
ROOT = Path(os.environ.get("BENCH_ROOT", "/tmp/blockgate-bench"))
DATA = ROOT / "data"
PORT, UPSTREAM_PORT = 5300, 5399
SERVER_CPU, CLIENT_CPU = os.environ.get("SERVER_CPU", "1"), os.environ.get("CLIENT_CPU", "0")
RCODES = {"NOERROR": 0, "NXDOMAIN": 3}
SAMPLE_EVERY = 0.1  # PSS of the daemon's processes (smaps_rollup costs the reader ~1 ms each)
SLACK = 0.5  # seconds of uncertainty on an answer's time (dnsperf stamps once a second)

CONFIG = """\
# written by bench/reload.py
state_dir: {state}
sources:
  - name: bench
    format: domains
    url: {url}
    refresh: 1s
    timeout: 30s
    action: nxdomain
dns:
  listen: ["127.0.0.1:{port}"]
  upstreams: ["127.0.0.1:{upstream}"]
  workers: {workers}
metrics:
  listen: ""
log:
  level: info
"""


# -- the list server ---------------------------------------------------------------------------


class ListServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.body = b""
        self.etag = ""
        self.lock = threading.Lock()
        self.gets = 0
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()

    def publish(self, body: bytes) -> None:
        with self.lock:
            self.body, self.etag = body, f'"{hashlib.sha256(body).hexdigest()[:20]}"'


class _Handler(BaseHTTPRequestHandler):
    server: ListServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        with self.server.lock:
            body, etag = self.server.body, self.server.etag
            self.server.gets += 1
        if self.headers.get("If-None-Match") == etag:
            self.send_response(304)
            self.send_header("ETag", etag)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", etag)
        self.end_headers()
        self.wfile.write(body)


# -- measuring ----------------------------------------------------------------------------------


def tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def pss_kib(pid: int) -> dict[int, int]:
    """PSS (KiB) of ``pid`` and each of its descendants."""
    out = {}
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        out[p] = int(line.split()[1])
        except OSError:
            pass
    return out


class Sampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: list[tuple[float, int]] = []
        self.trace: list[tuple[float, dict[int, int]]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            per = pss_kib(self.pid)
            now = time.time()
            self.samples.append((now, sum(per.values())))
            self.trace.append((now, per))
            self.stop.wait(SAMPLE_EVERY)


def rcvbuf_errors() -> int:
    """UDP datagrams the kernel dropped because a socket's receive buffer was full."""
    with open("/proc/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Udp:")]
    return int(rows[1][rows[0].index("RcvbufErrors")])


def socket_drops(ports: tuple[int, ...]) -> dict[str, int]:
    """Drops per UDP socket bound to, or connected to, one of ``ports`` (/proc/net/udp)."""
    out: dict[str, int] = {}
    with open("/proc/net/udp") as f:
        for row in f.read().splitlines()[1:]:
            cols = row.split()
            local, remote = int(cols[1].rsplit(":", 1)[1], 16), int(cols[2].rsplit(":", 1)[1], 16)
            for port in ports:
                if port in (local, remote):
                    key = f"{'listen' if local == port else 'to'}:{port}"
                    out[key] = out.get(key, 0) + int(cols[-1])
    return out


def query(sock: socket.socket, qid: int, name: str) -> int | None:
    wire = b"".join(bytes((len(p),)) + p.encode() for p in name.split(".")) + b"\x00"
    sock.send(struct.pack("!6H", qid, 0x0100, 1, 0, 0, 0) + wire + b"\x00\x01\x00\x01")
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        try:
            data = sock.recv(4096)
        except TimeoutError:
            return None
        if struct.unpack("!H", data[:2])[0] == qid:
            return data[3] & 0x0F
    return None


def until_blocked(names: list[str], since: float, timeout: float = 60.0) -> tuple[float | None, float | None]:
    """Seconds from ``since`` to the first NXDOMAIN for one of ``names``, and to 20 in a row
    (each from a new socket, so from whichever worker the kernel picks)."""
    first = every = None
    streak, qid, end = 0, 1, time.monotonic() + timeout
    while time.monotonic() < end:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.5)
            s.connect(("127.0.0.1", PORT))
            r = query(s, qid, names[qid % len(names)])
        qid = (qid + 1) & 0xFFFF
        if r == 3:
            first = first if first is not None else time.time() - since
            streak += 1
            if streak >= 20:
                every = time.time() - since
                return first, every
        else:
            streak = 0
        time.sleep(0.005)
    return first, every


# -- the run ------------------------------------------------------------------------------------


def ensure_kit() -> None:
    tools = [t for t in ("dnsperf", "knotd", "taskset") if shutil.which(t) is None]
    if tools or not (DATA / "queries-mix.txt.expect").exists() or not (DATA / "blocklist.txt").exists():
        print(f"setting up the bench kit (missing: {tools or 'data'})", flush=True)
        subprocess.run(["bash", str(KIT / "setup.sh")], check=True)


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def read_expect(limit: int) -> tuple[dict[str, int], list[str]]:
    """Expected rcode per name for the first ``limit`` queries, and the allowed names in order."""
    expect: dict[str, int] = {}
    allowed: list[str] = []
    with open(DATA / "queries-mix.txt.expect") as f:
        for i, line in enumerate(f):
            if i >= limit:
                break
            name, _qtype, verdict = line.split()
            expect[name] = 3 if verdict == "B" else 0
            if verdict == "A":
                allowed.append(name)
    return expect, allowed


def wait_ready(proc: subprocess.Popen[bytes], blocked: str, timeout: float = 120.0) -> float:
    t0 = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        s.connect(("127.0.0.1", PORT))
        while time.monotonic() - t0 < timeout:
            if proc.poll() is not None:
                raise SystemExit(f"blockgate exited with {proc.returncode}")
            with contextlib.suppress(OSError):
                if query(s, 7, blocked) == 3:
                    return time.monotonic() - t0
            time.sleep(0.1)
    raise SystemExit("blockgate did not answer in time")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=int, default=20000)
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--added", type=int, default=2000, help="names each new version adds")
    ap.add_argument("--python", default=sys.executable, help="interpreter with blockgate installed")
    a = ap.parse_args()
    if not 10 <= a.seconds <= 300:
        raise SystemExit("--seconds: 10..300")
    ensure_kit()
    for port in (PORT, UPSTREAM_PORT):
        if not port_free(port):
            print(f"port {port} is in use (a stand-in or target left running?): stop it first")
            return 2
    run_dir = ROOT / "run" / "reload"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    sent = a.rate * a.seconds
    expect, allowed = read_expect(int(sent * 1.05))
    rng = random.Random(2026)
    picked = rng.sample(allowed, 3 * a.added)
    added = [picked[i * a.added:(i + 1) * a.added] for i in range(3)]
    base = (DATA / "blocklist.txt").read_bytes()
    bodies = [base] + [base + "".join(f"{n}\n" for n in names).encode() for names in added]
    server = ListServer()
    server.publish(bodies[0])
    cfg = run_dir / "bench.yaml"
    cfg.write_text(CONFIG.format(state=run_dir / "state", url=f"http://127.0.0.1:{server.server_address[1]}"
                                 "/blocklist.txt", port=PORT, upstream=UPSTREAM_PORT, workers=a.workers))
    subprocess.run(["bash", str(KIT / "standin.sh"), "start", "knot"], check=True)
    daemon_log = run_dir / "blockgate.log"
    with open(daemon_log, "wb") as logfile:
        proc = subprocess.Popen(["taskset", "-c", SERVER_CPU, a.python, "-m", "blockgate", "run", "--config",
                                 str(cfg)], stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        blocked = next(n for n, r in expect.items() if r == 3)
        ready = wait_ready(proc, blocked)
        print(f"blockgate ready in {ready:.1f} s (pid {proc.pid}); settling 3 s", flush=True)
        time.sleep(3)
        return measure(a, proc, server, bodies, added, expect, run_dir, daemon_log, ready)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        subprocess.run(["bash", str(KIT / "standin.sh"), "stop"], check=False)
        server.shutdown()


def measure(a: argparse.Namespace, proc: subprocess.Popen[bytes], server: ListServer, bodies: list[bytes],
            added: list[list[str]], expect: dict[str, int], run_dir: Path, daemon_log: Path,
            ready: float) -> int:
    sampler = Sampler(proc.pid)
    sampler.start()
    out_path = run_dir / "dnsperf.txt"
    cmd = ["taskset", "-c", CLIENT_CPU, "dnsperf", "-s", "127.0.0.1", "-p", str(PORT), "-d",
           str(DATA / "queries-mix.txt"), "-l", str(a.seconds), "-Q", str(a.rate), "-c", "4", "-T", "1",
           "-q", "2000", "-t", "2", "-v", "-S", "1"]
    print("$", " ".join(cmd), flush=True)
    drops0 = rcvbuf_errors()
    t0 = time.time()
    with open(out_path, "w") as out:
        perf = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        published, first, every = [], [], []
        for k, at in enumerate(change_times(a.seconds), start=1):
            time.sleep(max(0.0, t0 + at - time.time()))
            server.publish(bodies[k])
            published.append(time.time())
            f, e = until_blocked(added[k - 1], published[-1])
            first.append(f)
            every.append(e)
            print(f"  v{k} published at {published[-1] - t0:.1f} s: first new answer after "
                  f"{fmt(f)} s, everywhere after {fmt(e)} s", flush=True)
        perf.wait(a.seconds + 60)
    a.rcvbuf_errors = rcvbuf_errors() - drops0
    a.socket_drops = socket_drops((PORT, UPSTREAM_PORT))
    sampler.stop.set()
    sampler.join()
    with open(run_dir / "pss.jsonl", "w") as trace:
        for t, per in sampler.trace:
            trace.write(json.dumps({"t": round(t - t0, 3), "pss_kib": per}) + "\n")
    return report(a, out_path, t0, published, first, every, added, expect, sampler.samples, daemon_log,
                  ready)


def change_times(seconds: int) -> list[float]:
    """Three changes, the first after 1/5 of the run, then every 4/15 (6, 14, 22 s of 30)."""
    return [seconds * (0.2 + i * 0.8 / 3) for i in range(3)]


def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def answers(path: Path, t0: float, rate: int) -> tuple[list[tuple[float, str, int, float]], str]:
    """(time, name, rcode, latency) of every answer, times interpolated between dnsperf's
    once-a-second stamps; and dnsperf's summary text."""
    rows: list[tuple[str, int, float]] = []
    anchors: list[tuple[int, float]] = [(0, t0)]
    summary = []
    stamp = re.compile(r"^(\d{9,}\.\d+): [\d.]+$")
    with open(path) as f:
        for line in f:
            if line.startswith("> T "):
                continue  # a timeout: counted by dnsperf as lost
            if line.startswith("> "):
                parts = line.split()
                rows.append((parts[2], RCODES.get(parts[1], -1), float(parts[-1])))
            elif m := stamp.match(line.strip()):
                anchors.append((len(rows), float(m.group(1))))
            else:
                summary.append(line)
    anchors.append((len(rows), anchors[-1][1] + (len(rows) - anchors[-1][0]) / rate))
    idx = [i for i, _t in anchors]
    out = []
    for i, (name, rc, lat) in enumerate(rows):
        j = max(0, bisect.bisect_right(idx, i) - 1)
        (i0, ta), (i1, tb) = anchors[j], anchors[min(j + 1, len(anchors) - 1)]
        t = ta + (tb - ta) * ((i - i0) / (i1 - i0) if i1 > i0 else 0.0)
        out.append((t, name, rc, lat))
    return out, "".join(summary)


def report(a: argparse.Namespace, out_path: Path, t0: float, published: list[float],
           first: list[float | None], every: list[float | None], added: list[list[str]],
           expect: dict[str, int], samples: list[tuple[float, int]], daemon_log: Path, ready: float) -> int:
    rows, summary = answers(out_path, t0, a.rate)
    lost = int(m.group(1)) if (m := re.search(r"Queries lost:\s+(\d+)", summary)) else -1
    sent = int(m.group(1)) if (m := re.search(r"Queries sent:\s+(\d+)", summary)) else -1
    qps = float(m.group(1)) if (m := re.search(r"Queries per second:\s+([\d.]+)", summary)) else 0.0
    # version k in force from its publication until every worker answers with k+1
    done = [p + (e if e is not None else 60.0) for p, e in zip(published, every, strict=True)]
    spans = [(float("-inf"), done[0])] + [(published[k], done[k + 1] if k + 1 < 3 else float("inf"))
                                          for k in range(3)]
    flipped = {n: k + 1 for k, names in enumerate(added) for n in names}

    def right(name: str, version: int) -> int:
        if name in flipped:
            return 3 if flipped[name] == version else 0
        return expect.get(name, -1)

    wrong: list[tuple[float, str, int, list[int]]] = []
    windows_lat: list[float] = []
    other_lat: list[float] = []
    windows = [(p, d + 1.0) for p, d in zip(published, done, strict=True)]
    for t, name, rc, lat in rows:
        ok = {right(name, v) for v, (s, e) in enumerate(spans) if s - SLACK <= t <= e + SLACK}
        if rc not in ok:
            wrong.append((round(t - t0, 2), name, rc, sorted(ok)))
        (windows_lat if any(s <= t <= e for s, e in windows) else other_lat).append(lat)
    steady = [p for t, p in samples if t0 + 1.0 <= t < published[0]]
    after = [p for t, p in samples if t > done[-1] + 2.0]
    peak = max(p for _t, p in samples)
    log = daemon_log.read_text(errors="replace")
    # each swap after the first load: "compiled in X s" (from scratch) or "patched in X s"
    builds = re.findall(r"from \d+ sources?, (compiled|patched) in ([\d.]+) s", log)[1:]
    compile_s = [float(x) for _, x in builds]
    build_how = [how for how, _ in builds]
    accept_s = [float(x) for x in re.findall(r"source bench: accepted .* in ([\d.]+) s", log)]
    rec = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "rate": a.rate, "seconds": a.seconds,
        "workers": a.workers,
        "sent": sent, "answers": len(rows), "lost": lost, "qps": round(qps, 1), "wrong": len(wrong),
        "wrong_sample": wrong[:10], "flipped_answers": sum(1 for _t, n, _r, _l in rows if n in flipped),
        "p99_swaps_ms": pct(windows_lat, 99), "p99_steady_ms": pct(other_lat, 99),
        "p50_swaps_ms": pct(windows_lat, 50), "p50_steady_ms": pct(other_lat, 50),
        "answers_in_swaps": len(windows_lat), "max_swaps_ms": round(max(windows_lat, default=0) * 1e3, 2),
        "pss_steady_mib": round(statistics.median(steady) / 1024, 1) if steady else None,
        "pss_after_mib": round(statistics.median(after) / 1024, 1) if after else None,
        "pss_peak_mib": round(peak / 1024, 1),
        "first_new_answer_s": [None if x is None else round(x, 2) for x in first],
        "all_new_answers_s": [None if x is None else round(x, 2) for x in every],
        "fetch_judge_store_s": accept_s, "compile_s": compile_s, "build_how": build_how,
        "ready_s": round(ready, 2),
        "kernel_rcvbuf_errors": a.rcvbuf_errors, "socket_drops": a.socket_drops,
    }
    if rec["pss_steady_mib"]:
        rec["pss_peak_ratio"] = round(rec["pss_peak_mib"] / rec["pss_steady_mib"], 2)
    results = ROOT / "results"
    results.mkdir(parents=True, exist_ok=True)
    with open(results / "reload.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")
    print(json.dumps(rec, indent=1))
    print(f"\nlost {lost} of {sent}; wrong answers {len(wrong)} of {len(rows)} "
          f"({rec['flipped_answers']} on names the swaps flip); achieved {qps:.0f} QPS")
    print(f"p99 during swaps {rec['p99_swaps_ms']} ms ({len(windows_lat)} answers), "
          f"outside {rec['p99_steady_ms']} ms")
    print(f"PSS steady {rec['pss_steady_mib']} MiB, peak {rec['pss_peak_mib']} MiB "
          f"(x{rec.get('pss_peak_ratio')}, target <= 1.5), after the swaps {rec['pss_after_mib']} MiB")
    print(f"change -> first new answer {rec['first_new_answer_s']} s, -> everywhere "
          f"{rec['all_new_answers_s']} s; fetch+judge+store {accept_s} s, "
          f"then {', '.join(build_how) or 'built'} in {compile_s} s")
    return 0 if lost == 0 and not wrong else 1


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(len(values) * p / 100))] * 1e3, 3)


if __name__ == "__main__":
    sys.exit(main())
