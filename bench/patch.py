#!/usr/bin/env python3
"""A swap's two ways on the bench kit's 1,000,000-name list, in one process, same run:
patching the rules in force while the new version is parsed (``trie.Differ``), against
parsing it and compiling it from scratch.

Each step makes a new version of the list (``--remove`` random lines gone, as many new
names at random places, ``--wildcards`` wildcard rules for listed names: every later line
moves), then

* patch: parse the new version into a Differ against the rules in force, finish, apply;
* compile: parse the same version and compile it from scratch (what a swap did before);

and prints, per step: CPU seconds of each, the high-water mark of RSS each adds above the
rules in force (``/proc/self/status`` VmHWM, reset through ``/proc/self/clear_refs``), and
checks that both answer the same (rule, kind, allow, origin) for every 7th list name, a name
below it, and the first ``--queries`` names of ``queries-mix.txt``.

    .venv/bin/python bench/patch.py            # --steps 3 --remove 3000 --wildcards 500
"""

from __future__ import annotations

import argparse
import gc
import io
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

from blockgate.lists import domains
from blockgate.lists.base import Input, ParsedList, RuleSink, streaming
from blockgate.sources import malloc_trim
from blockgate.trie import Differ, Matcher, Patch, SourceInfo, compile_rules

KIT = Path(os.environ.get("BENCH_KIT", Path(__file__).resolve().parents[2] / "shared" / "bench"))
DATA = Path(os.environ.get("BENCH_DATA", "/tmp/blockgate-bench/data"))


def parse(body: bytes, sink: RuleSink | None = None) -> ParsedList:
    with streaming(sink):
        parsed = domains.parse([Input("blocklist.txt", io.BytesIO(body))])
        parsed.finish()
    return parsed


def trim() -> None:
    """Collect, and give freed heap back to the kernel, so RSS is what is held."""
    gc.collect()
    malloc_trim()


def status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def reset_hwm() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def answer(m: Matcher, key: bytes) -> tuple[Any, ...] | None:
    r = m.match(key)
    return None if r is None else (r.key, r.kind, r.allow, r.origin)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--remove", type=int, default=3000, help="lines removed (and names added) per step")
    ap.add_argument("--wildcards", type=int, default=500, help="wildcard rules added per step")
    ap.add_argument("--queries", type=int, default=200_000)
    a = ap.parse_args()
    if not (DATA / "blocklist.txt").exists():
        os.system(f"bash {KIT / 'setup.sh'}")
    base = (DATA / "blocklist.txt").read_bytes()
    queries = [q.split()[0].rstrip(b".").lower() for q in
               (DATA / "queries-mix.txt").read_bytes().split(b"\n")[: a.queries] if q]
    rnd = random.Random(5)
    matcher = compile_rules([SourceInfo("bench", rules=parse(base))], patchable=True)
    lines = base.split(b"\n")[:-1]
    gc.collect()
    print(f"python {sys.version.split()[0]}, {len(lines):,} lines; rules in force: "
          f"RSS {status_kib('VmRSS') // 1024} MiB")
    print(f"{'step':>4} {'added':>6} {'removed':>7} {'changed':>7} {'patch s':>8} {'compile s':>9} "
          f"{'ratio':>6} {'patch +MiB':>10} {'compile +MiB':>12} {'checked':>8} {'differ':>6}")
    bad_total = 0
    for step in range(a.steps):
        for _ in range(a.remove):
            lines.pop(rnd.randrange(len(lines)))
        for i in range(a.remove):
            lines.insert(rnd.randrange(len(lines)), b"new%d-%d.example.org" % (step, i))
        for _ in range(a.wildcards):
            lines.append(b"*." + rnd.choice(lines).lstrip(b"*."))
        body = b"\n".join(lines) + b"\n"
        trim()
        rss0 = status_kib("VmRSS")
        reset_hwm()
        t0 = time.process_time()
        differ = Differ(matcher, 0, SourceInfo("bench"))
        streamed = parse(body, differ)
        patch = differ.finish(SourceInfo("bench", rules=streamed))
        assert isinstance(patch, Patch), patch
        patched = patch.apply()
        patch_s = time.process_time() - t0
        patch_mib = (status_kib("VmHWM") - rss0) / 1024
        trim()
        rss1 = status_kib("VmRSS")
        reset_hwm()
        t0 = time.process_time()
        fresh = compile_rules([SourceInfo("bench", rules=parse(body))], patchable=True)
        compile_s = time.process_time() - t0
        compile_mib = (status_kib("VmHWM") - rss1) / 1024
        keys = set(queries)
        for line in lines[::7]:
            k = line.lstrip(b"*.")
            keys.update((k, b"x." + k))
        bad = sum(1 for k in keys if answer(patched, k) != answer(fresh, k))
        bad += int(patched.names != fresh.names or len(patched) != len(fresh))
        bad_total += bad
        print(f"{step:>4} {patch.added:>6} {patch.removed:>7} {patch.changed:>7} {patch_s:>8.2f} "
              f"{compile_s:>9.2f} {patch_s / compile_s:>6.2f} {patch_mib:>10.1f} {compile_mib:>12.1f} "
              f"{len(keys):>8,} {bad:>6}")
        matcher = patched
        del fresh, streamed, patch
        trim()
    return 1 if bad_total else 0


if __name__ == "__main__":
    raise SystemExit(main())
