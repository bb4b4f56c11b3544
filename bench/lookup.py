#!/usr/bin/env python3
"""Matcher benchmark: blockgate's compiled matcher beside a nested-dict label trie.

Both are built from the same 1,000,000-name list (``gen_blocklist.py`` of the bench kit) and
asked the same ``mix`` queries (10 % exact, 10 % below a wildcard, 80 % allowed; the kit's
``gen_queries.py``). Each structure is built in a fresh process pinned to one CPU, measured
there, and the rounds are interleaved so that both see the same machine. Times are the
process's CPU time (``time.process_time``): on a shared VM, time stolen by the hypervisor
for other tenants is not counted against either structure.

Printed per structure: build seconds (blockgate: reading + normalising + compiling the list
file; trie: building from the same file), RSS growth per rule (after ``gc`` and
``malloc_trim``), lookups/s on the mix and on the all-blocked file (best of 3 passes), and
whether every answer matched the kit's ``.expect`` file. Then the ratios. ``--pure`` also
measures the interpreted matcher (the sources without their compiled extensions, setup.py)
in the same rounds: what the compiled build gains.

    make bench-lookup            # or: .venv/bin/python bench/lookup.py --rounds 2
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from interpreted import pure_sources

HERE = Path(__file__).resolve().parent
KIT = Path(os.environ.get("BENCH_KIT", HERE.parent.parent / "shared" / "bench"))
DATA = Path(os.environ.get("BENCH_DATA", "/tmp/blockgate-bench/data"))
CPU = os.environ.get("SERVER_CPU", "1")


def rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def trim() -> None:
    gc.collect()
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def load_queries(path: Path) -> tuple[list[bytes], list[bool]]:
    keys, blocked = [], []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3:
                keys.append(parts[0].lower().encode("ascii"))
                blocked.append(parts[2] == "B")
    return keys, blocked


# -- the two structures --------------------------------------------------------------------


def build_blockgate(listfile: Path):  # type: ignore[no-untyped-def]
    from blockgate.lists.base import Input
    from blockgate.lists.domains import parse
    from blockgate.trie import SourceInfo, compile_rules

    t0 = time.process_time()
    with open(listfile, "rb") as f:
        parsed = parse([Input(listfile.name, f)])
    t1 = time.process_time()
    matcher = compile_rules([SourceInfo("bench", "domains", rules=parsed)])
    PHASES["parse_s"] = round(t1 - t0, 3)
    PHASES["compile_s"] = round(time.process_time() - t1, 3)
    rules = len(parsed)
    parsed.release()  # as the daemon does: the matcher holds the rules now
    return matcher, rules, matcher.match


def build_nested(listfile: Path):  # type: ignore[no-untyped-def]
    """A label-per-node trie of dicts: node[label] -> child; node[b""] -> flags (1 exact, 2 below)."""
    root: dict[bytes, object] = {}
    count = 0
    with open(listfile, "rb") as f:
        for raw in f:
            line = raw.strip().lower()
            if not line or line[:1] == b"#":
                continue
            below = line[:2] == b"*."
            name = line[2:] if below else line
            node = root
            for label in reversed(name.split(b".")):
                nxt = node.get(label)
                if nxt is None:
                    nxt = node[label] = {}
                node = nxt  # type: ignore[assignment]
            node[b""] = node.get(b"", 0) | (2 if below else 1)  # type: ignore[operator]
            count += 1

    def lookup(key: bytes) -> int | None:
        labels = key.split(b".")
        node = root
        for i in range(len(labels) - 1, -1, -1):
            node = node.get(labels[i])  # type: ignore[assignment]
            if node is None:
                return None
            if i:
                f = node.get(b"")
                if f is not None and f & 2:  # type: ignore[operator]
                    return f  # type: ignore[return-value]
        f = node.get(b"")
        return f if f is not None and f & 1 else None  # type: ignore[return-value,operator]

    return root, count, lookup


PHASES: dict[str, float] = {}
BUILDERS = {"blockgate": build_blockgate, "nested-trie": build_nested}


def measure(kind: str, data: Path, passes: int) -> dict[str, object]:
    listfile = data / "blocklist.txt"
    queries = {name: load_queries(data / f"queries-{name}.txt.expect") for name in ("mix", "blocked")}
    if kind == "blockgate":  # code is not data: import before the baseline is taken
        import blockgate.lists.domains
        import blockgate.trie  # noqa: F401
    trim()
    r0 = rss()
    t0 = time.process_time()
    keep, rules, lookup = BUILDERS[kind](listfile)
    build_s = time.process_time() - t0
    trim()
    r1 = rss()
    out: dict[str, object] = {"struct": kind, "rules": rules, "build_s": round(build_s, 3),
                              "rss_mib": round((r1 - r0) / 2**20, 1),
                              "bytes_per_rule": round((r1 - r0) / rules, 1), **PHASES}
    gc.freeze()
    for name, (keys, expect) in queries.items():
        got = [lookup(k) for k in keys]
        wrong = sum(1 for g, e in zip(got, expect, strict=True)
                    if (g is not None and not (kind == "blockgate" and g.allow)) != e)
        del got
        best = float("inf")
        for _ in range(passes):
            gc.disable()
            t = time.process_time()
            for k in keys:
                lookup(k)
            best = min(best, time.process_time() - t)
            gc.enable()
        out[f"{name}_lookups_per_s"] = round(len(keys) / best)
        out[f"{name}_wrong"] = wrong
    del keep
    return out


def ensure_data(data: Path) -> None:
    if (data / "queries-mix.txt.expect").exists() and (data / "queries-blocked.txt.expect").exists():
        return
    data.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, str(KIT / "gen_blocklist.py"), "-n", "1000000", "-o", str(data)],
                   check=True)
    for preset in ("mix", "blocked"):
        subprocess.run([sys.executable, str(KIT / "gen_queries.py"), "--blocklist",
                        str(data / "blocklist.txt"), "--preset", preset, "-n", "1000000",
                        "-o", str(data / f"queries-{preset}.txt")], check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--one", choices=sorted(BUILDERS), help=argparse.SUPPRESS)
    ap.add_argument("--json", action="store_true", help="print one JSON object per measurement")
    ap.add_argument("--pure", action="store_true",
                    help="also measure the interpreted sources (no compiled modules) in each round")
    a = ap.parse_args()
    if a.one:
        print(json.dumps(measure(a.one, a.data, a.passes)))
        return 0
    ensure_data(a.data)
    kinds = [*BUILDERS, *(["interpreted"] if a.pure else [])]
    results: dict[str, list[dict[str, object]]] = {k: [] for k in kinds}
    tmp = pure_sources(Path(tempfile.mkdtemp(prefix="bench-lookup-"))) if a.pure else None
    for rnd in range(1, a.rounds + 1):
        for kind in kinds:
            cmd = ["taskset", "-c", CPU, sys.executable, __file__, "--one",
                   "blockgate" if kind == "interpreted" else kind,
                   "--data", str(a.data), "--passes", str(a.passes)]
            env = {**os.environ, "PYTHONPATH": str(tmp)} if kind == "interpreted" else None
            proc = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
            rec = json.loads(proc.stdout)
            rec["round"] = rnd
            results[kind].append(rec)
            if a.json:
                print(json.dumps(rec), flush=True)
    print(f"python {sys.version.split()[0]}, {a.rounds} interleaved rounds, CPU {CPU}, data {a.data}")
    print(f"{'structure':12} {'round':>5} {'build s':>8} {'RSS MiB':>8} {'B/rule':>7} "
          f"{'mix/s':>11} {'blocked/s':>11} {'wrong':>6}")
    for kind, recs in results.items():
        for r in recs:
            print(f"{kind:12} {r['round']:>5} {r['build_s']:>8} {r['rss_mib']:>8} "
                  f"{r['bytes_per_rule']:>7} {r['mix_lookups_per_s']:>11,} "
                  f"{r['blocked_lookups_per_s']:>11,} {int(r['mix_wrong']) + int(r['blocked_wrong']):>6}")  # type: ignore[call-overload]

    def best(kind: str, field: str) -> float:
        return max(float(r[field]) for r in results[kind])  # type: ignore[arg-type]

    print("ratios blockgate / nested-dict trie: best round of each; median of the rounds' ratios")
    for field in ("mix_lookups_per_s", "blocked_lookups_per_s"):
        per_round = sorted(float(a[field]) / float(b[field])  # type: ignore[arg-type]
                           for a, b in zip(results["blockgate"], results["nested-trie"], strict=True))
        print(f"  {field:24} {best('blockgate', field) / best('nested-trie', field):.2f}x; "
              f"{per_round[len(per_round) // 2]:.2f}x  (target >= 2.0 on the mix)")
    bg = results["blockgate"]
    print(f"  blockgate bytes/rule      {min(float(r['bytes_per_rule']) for r in bg):.1f} "  # type: ignore[arg-type]
          f"(target <= 110)")
    print(f"  blockgate build seconds   {min(float(r['build_s']) for r in bg):.2f} "  # type: ignore[arg-type]
          f"(read+parse {min(float(r['parse_s']) for r in bg):.2f}, "  # type: ignore[arg-type]
          f"compile {min(float(r['compile_s']) for r in bg):.2f}; target <= 3.0); "  # type: ignore[arg-type]
          f"nested trie build {min(float(r['build_s']) for r in results['nested-trie']):.2f}")  # type: ignore[arg-type]
    if a.pure:
        for field in ("mix_lookups_per_s", "blocked_lookups_per_s"):
            bg, interp, nested = (best(k, field) for k in ("blockgate", "interpreted", "nested-trie"))
            print(f"  compiled / interpreted {field:16} {bg / interp:.2f}x; "
                  f"interpreted / nested-dict trie {interp / nested:.2f}x")
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)
    bad = sum(int(r["mix_wrong"]) + int(r["blocked_wrong"]) for rs in results.values() for r in rs)  # type: ignore[call-overload]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
