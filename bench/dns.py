#!/usr/bin/env python3
"""DNS service benchmark: ``blockgate run`` beside dnsdist, same list, same queries, same run.

Uses the bench kit (``../shared/bench``, override with BENCH_KIT): its ``anchors.py`` starts
the upstream stand-in (Knot, pinned to CPU 0 next to dnsperf), then for each target and
round: starts it pinned to CPU 1, measures the time to the first correct NXDOMAIN and the
memory of its process tree, verifies 600 sampled answers, and runs dnsperf at full speed on
the all-blocked and on the mix (80 % forwarded) query files, then at a fixed 5,000 QPS for
latency percentiles. The targets:

* ``dnsdist-1M``: dnsdist (Debian package) with the 1,000,000 names in a SuffixMatchNode
  answering NXDOMAIN, forwarding the rest to the stand-in (the kit's conf/dnsdist-block.conf);
* ``blockgate``: ``blockgate run`` on the same list (``blocklist.txt``, format domains),
  one worker, with everything on: CNAME inspection, client ACLs, EDE, TCP listener.

Prints each run and the blockgate/dnsdist ratios against the targets, twice: for the best
round of each and for the median of the rounds; then the p99 at 5,000 QPS round by round.
The p99 of either target moves by up to 2x from round to round on this machine, so the best
of a few rounds compares the two luckiest; the median of five or more is the steadier figure.

    make bench-dns          # = .venv/bin/python bench/dns.py --rounds 5 --seconds 15

``--report DIR...`` runs nothing: it prints the same tables for the rounds of earlier runs
together (their ``results-dns-*`` directories), so several runs' medians are one figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from interpreted import pure_sources

HERE = Path(__file__).resolve().parent
KIT = Path(os.environ.get("BENCH_KIT", HERE.parent.parent / "shared" / "bench"))
ROOT = Path(os.environ.get("BENCH_ROOT", "/tmp/blockgate-bench"))
DATA = ROOT / "data"
PORT, UPSTREAM_PORT = 5300, 5399

CONFIG = """\
# written by bench/dns.py: the benchmark's blockgate, every feature on
state_dir: {state}
sources:
  - name: bench
    format: domains
    path: {blocklist}
    action: nxdomain
dns:
  listen: ["127.0.0.1:{port}"]
  upstreams: ["127.0.0.1:{upstream}"]
  workers: {workers}
  inspect_cnames: true
  allow_clients: ["127.0.0.0/8", "::1/128"]
sni:
  mode: off
log:
  level: warning
"""


def ensure_kit() -> None:
    tools = [t for t in ("dnsperf", "dnsdist", "knotd", "taskset") if shutil.which(t) is None]
    if tools or not (DATA / "queries-mix.txt").exists():
        print(f"setting up the bench kit (missing: {tools or 'data'})", flush=True)
        subprocess.run(["bash", str(KIT / "setup.sh")], check=True)


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def best(values: list[float], high: bool = True) -> float | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return max(vals) if high else min(vals)


def middle(values: list[float], high: bool = True) -> float | None:
    """The median of the rounds: what a typical round gives, where ``best`` is the luckiest."""
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--python", default=sys.executable, help="interpreter with blockgate installed")
    ap.add_argument("--pure", action="store_true",
                    help="also run blockgate from its interpreted sources (no compiled modules)")
    ap.add_argument("--report", nargs="+", type=Path, metavar="DIR",
                    help="run nothing; report the rounds of these results directories together")
    a = ap.parse_args()
    if a.report:
        missing = [d for d in a.report if not (d / "runs.jsonl").exists()]
        if missing:
            print("no runs.jsonl in: " + ", ".join(map(str, missing)))
            return 2
        return report(a.report)
    ensure_kit()
    for port in (PORT, UPSTREAM_PORT):
        if not port_free(port):
            print(f"port {port} is in use (a stand-in or target left running?): stop it first")
            return 2
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results = ROOT / f"results-dns-{stamp}"
    run = ROOT / "run" / "blockgate"
    run.mkdir(parents=True, exist_ok=True)
    cfg = run / "bench.yaml"
    cfg.write_text(CONFIG.format(state=run / "state", blocklist=DATA / "blocklist.txt", port=PORT,
                                 upstream=UPSTREAM_PORT, workers=a.workers))
    custom = f"blockgate={a.python} -m blockgate run --config {cfg}"  # anchors.py adds "exec"
    env = dict(os.environ, RESULTS=str(results))
    only, extra = "dnsdist-1M,blockgate", []
    if a.pure:  # the sources alone, without the compiled extensions beside them (setup.py)
        pure = pure_sources(ROOT / "run" / "pure")
        only += ",blockgate-interpreted"
        extra = ["--custom", f"blockgate-interpreted=env PYTHONPATH={pure} {a.python} -m blockgate "
                 f"run --config {cfg}"]
    cmd = [sys.executable, str(KIT / "anchors.py"), "--rounds", str(a.rounds), "--seconds",
           str(a.seconds), "--only", only, "--custom", custom, *extra]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, env=env, check=True, cwd=KIT)
    return report([results])


def report(dirs: list[Path]) -> int:
    """The tables for the rounds of one or more runs; a round is named by its run and number."""
    starts = [s for d in dirs for s in read_jsonl(d / "startup.jsonl")]
    runs = [(i, r) for i, d in enumerate(dirs) for r in read_jsonl(d / "runs.jsonl")]
    table: dict[str, dict[str, list[Any]]] = {}
    p99s: dict[str, dict[Any, float | None]] = {}  # target -> round -> p99 at the fixed rate
    for s in starts:
        t = table.setdefault(s["target"], {})
        for k in ("ready_s", "rss_mib", "pss_mib"):
            t.setdefault(k, []).append(s.get(k))
    for i, r in runs:
        t = table.setdefault(r["target"], {})
        key = f"{r['qfile']}" + (f"@{r['rate']}" if r.get("rate") else "")
        t.setdefault(key + "_qps", []).append(r.get("qps"))
        t.setdefault(key + "_us", []).append(r.get("server_cpu_us_per_q"))
        if r.get("rate"):
            t.setdefault("p99_ms", []).append(r.get("p99_ms"))
            p99s.setdefault(r["target"], {})[i, r.get("round")] = r.get("p99_ms")
    print("\nresults: " + ", ".join(map(str, dirs)))
    cols = ["ready_s", "rss_mib", "pss_mib", "blocked_qps", "blocked_us", "mix_qps", "mix_us", "p99_ms"]
    print(f"{'target':21} " + " ".join(f"{c:>18}" for c in cols))
    for target, t in table.items():
        print(f"{target:21} " + " ".join(
            f"{' / '.join('-' if v is None else f'{v:.4g}' for v in t.get(c, [])):>18}" for c in cols))
    bg, dd = table.get("blockgate", {}), table.get("dnsdist-1M", {})
    checks = [
        ("blocked QPS", "blocked_qps", True, ">=", 1.0),
        ("mix QPS", "mix_qps", True, ">=", 1.0),
        ("p99 at 5k QPS", "p99_ms", False, "<=", 1.0),
        # the process tree's proportional set size: blockgate is a supervisor and its workers
        # sharing the rule set's pages, which a sum of RSS would count once per process
        ("memory (PSS)", "pss_mib", False, "<=", 1 / 3),
        ("time to ready", "ready_s", False, "<=", 1 / 2),
    ]
    for title, pick in (("best round of each", best), ("median of the rounds", middle)):
        print(f"\nblockgate / dnsdist ({title}):")
        for name, key, high, op, target in checks:
            x, y = pick(bg.get(key, []), high), pick(dd.get(key, []), high)
            if x is None or not y:
                print(f"  {name:16} n/a")
                continue
            ratio = x / y
            ok = ratio >= target if op == ">=" else ratio <= target
            print(f"  {name:16} {ratio:6.2f}  (target {op} {target:.2f})  {'met' if ok else 'NOT met'}")
    # The rounds run the targets one after the other (anchors.py), so round k of each met
    # the machine in much the same state: the latency compared round by round.
    bgr, ddr = p99s.get("blockgate", {}), p99s.get("dnsdist-1M", {})
    pairs = [(x, ddr[k]) for k, x in bgr.items()  # in the records' order: run, then round
             if x is not None and ddr.get(k) is not None]
    if pairs:
        lower = sum(1 for x, y in pairs if x <= y)
        print("\np99 at 5k QPS, round by round (blockgate / dnsdist ms): "
              + ", ".join(f"{x:.3f}/{y:.3f}" for x, y in pairs)
              + f"; blockgate's the lower or equal in {lower} of {len(pairs)}")
    pure = table.get("blockgate-interpreted")
    if pure:
        print("\nblockgate compiled / interpreted sources (best round of each):")
        for name, key, high, _, _ in checks:
            x, y = best(bg.get(key, []), high), best(pure.get(key, []), high)
            print(f"  {name:16} " + (f"{x / y:6.2f}" if x is not None and y else "n/a"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
