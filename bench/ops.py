#!/usr/bin/env python3
"""Operations benchmark: what the decision log and the metrics endpoint cost.

* **decision log under a flood**: ``DecisionLog.record`` once the bucket is empty (the path
  every block takes when lines are rate-limited), beside two baselines measured in the same
  run: a call to a function that does nothing with the same arguments, and
  ``prometheus_client.Counter.inc()`` (a locked, direct-instrumentation counter: what a
  per-block metric would cost without plain counters).
* **decision log writing**: ``record`` when every call writes a line (JSON encoding).
* **scrape**: ``generate_latest`` of the blockgate registry for a large deployment's label
  sets (20 sources, 3 channels, 4 upstreams, 20 malformed reasons), beside a registry holding
  the same samples in client_python's own labelled Counters/Gauges/Histogram.

CPU time (``time.process_time``), best of ``--passes`` per round, rounds interleaved.

    .venv/bin/python bench/ops.py --rounds 3
"""

from __future__ import annotations

import argparse
import io
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from blockgate.adapters.metrics import make_registry
from blockgate.decisions import DecisionLog
from blockgate.lists import parse
from blockgate.lists.base import Input
from blockgate.stats import ACTIONS, LATENCY_BUCKETS, SourceMetrics, Stats
from blockgate.trie import Rule, SourceInfo, compile_rules

T0 = 1_764_633_600.0


def cpu(fn: Callable[[], None], passes: int) -> float:
    best = float("inf")
    for _ in range(passes):
        t = time.process_time()
        fn()
        best = min(best, time.process_time() - t)
    return best


def a_rule() -> Rule:
    parsed = parse("domains", [Input("local.txt", io.BytesIO(b"bad.test\n"))])
    rule = compile_rules([SourceInfo("local", "domains", "malware", None, 15, parsed)]).match(b"bad.test")
    assert rule is not None
    return rule


def flood(n: int, rule: Rule) -> dict[str, Callable[[], None]]:
    def limited() -> None:
        log = DecisionLog("sample", 100)
        rec = log.record
        for i in range(n):
            rec(T0 + i * 1e-6, "192.0.2.7", "dns", b"bad.test", "nxdomain", rule)

    def nothing(now: float, client: str, channel: str, name: bytes, action: str, r: Rule) -> None:
        return None

    def baseline_call() -> None:
        for i in range(n):
            nothing(T0 + i * 1e-6, "192.0.2.7", "dns", b"bad.test", "nxdomain", rule)

    counter = Counter("bench_blocks", "blocks", registry=CollectorRegistry())

    def baseline_counter() -> None:
        inc = counter.inc
        for i in range(n):
            _now = T0 + i * 1e-6  # the same arithmetic as the others
            inc()

    def writing() -> None:
        log = DecisionLog("all", 0)
        rec = log.record
        for i in range(n // 20):
            rec(T0 + i * 1e-2, "192.0.2.7", "dns", b"bad.test", "nxdomain", rule)

    return {"record (limited)": limited, "no-op call": baseline_call, "Counter.inc()": baseline_counter,
            "record (writing)": writing}


def big_stats() -> tuple[Stats, list[SourceMetrics]]:
    stats = Stats()
    ups = [f"192.0.2.{i}:53" for i in range(1, 5)]
    stats.set_upstreams(ups)
    names = [(f"source{i}", "registry" if i % 2 else "malware") for i in range(20)]
    stats.set_classes(names)
    for i in range(len(names)):
        stats.blocked_dns[i] = 1000 + i
    for ch in ("tls", "quic"):
        for s, c in names:
            stats.blocked[ch, s, c] = 77
    for i in range(len(ACTIONS)):
        stats.dns_udp[i] = stats.dns_tcp[i] = 10 + i
    for u in range(len(ups)):
        for r in range(6):
            stats.upstream_rcodes[u][r] = 5
        for b in range(len(LATENCY_BUCKETS) + 1):
            stats.upstream_latency[u][b] = 3
        stats.upstream_errors[ups[u], "timeout"] = 2
    for r in range(20):
        stats.malformed["dns", f"reason{r}"] = r
    sources = [SourceMetrics(s, {"block-exact": 1000, "block-subtree": 10}, T0, {"ok": 3, "error": 1}, 0.5)
               for s, _c in names]
    return stats, sources


def direct_registry(stats: Stats, sources: list[SourceMetrics]) -> CollectorRegistry:
    """The same samples held by client_python's own metric objects."""
    reg = CollectorRegistry()
    q = Counter("blockgate_dns_queries", "", ["transport", "action"], registry=reg)
    for t, slots in (("udp", stats.dns_udp), ("tcp", stats.dns_tcp)):
        for a, n in zip(ACTIONS, slots, strict=True):
            q.labels(t, a).inc(n)
    b = Counter("blockgate_blocked", "", ["channel", "source", "category"], registry=reg)
    for k, n in stats.blocks().items():
        b.labels(*k).inc(n)
    r = Counter("blockgate_upstream_responses", "", ["upstream", "rcode"], registry=reg)
    for k, n in stats.upstream_responses().items():
        r.labels(*k).inc(n)
    h = Histogram("blockgate_upstream_latency_seconds", "", ["upstream"], buckets=LATENCY_BUCKETS,
                  registry=reg)
    for u in stats.upstreams:
        h.labels(u).observe(0.001)
    e = Counter("blockgate_upstream_errors", "", ["upstream", "reason"], registry=reg)
    for k, n in stats.upstream_errors.items():
        e.labels(*k).inc(n)
    m = Counter("blockgate_malformed", "", ["channel", "reason"], registry=reg)
    for k, n in stats.malformed.items():
        m.labels(*k).inc(n)
    rules = Gauge("blockgate_rules", "", ["source", "kind"], registry=reg)
    last = Gauge("blockgate_source_last_success_timestamp_seconds", "", ["source"], registry=reg)
    fetch = Counter("blockgate_source_fetch", "", ["source", "result"], registry=reg)
    comp = Gauge("blockgate_ruleset_compile_seconds", "", ["source"], registry=reg)
    for s in sources:
        for kind, n in s.rules.items():
            rules.labels(s.name, kind).set(n)
        last.labels(s.name).set(s.last_success or 0)
        for res, n in s.fetches.items():
            fetch.labels(s.name, res).inc(n)
        comp.labels(s.name).set(s.compile_seconds)
    return reg


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--calls", type=int, default=200_000)
    ap.add_argument("--scrapes", type=int, default=200)
    args = ap.parse_args()
    rule = a_rule()
    stats, sources = big_stats()
    ours = make_registry(lambda: stats, lambda: sources)
    theirs = direct_registry(stats, sources)
    samples = generate_latest(ours).count(b"\n") - 2 * generate_latest(ours).count(b"# TYPE")
    print(f"decision log: {args.calls} calls per pass; scrape: {samples} samples "
          f"({len(generate_latest(ours)) // 1024} KiB), {args.scrapes} scrapes per pass")
    for rnd in range(1, args.rounds + 1):
        figures = {name: cpu(fn, args.passes) for name, fn in flood(args.calls, rule).items()}
        per = {k: v / args.calls * 1e9 for k, v in figures.items()}
        per["record (writing)"] = figures["record (writing)"] / (args.calls // 20) * 1e9
        base = per["no-op call"]
        print(f"round {rnd}: " + ", ".join(f"{k} {v:.0f} ns" for k, v in per.items()))
        print(f"  record (limited) / no-op call {per['record (limited)'] / base:.2f}, "
              f"/ Counter.inc() {per['record (limited)'] / per['Counter.inc()']:.2f}; "
              f"a written line costs {per['record (writing)'] / 1000:.1f} µs")
        mine = cpu(lambda: [generate_latest(ours) for _ in range(args.scrapes)], args.passes)
        direct = cpu(lambda: [generate_latest(theirs) for _ in range(args.scrapes)], args.passes)
        print(f"  scrape: blockgate collector {mine / args.scrapes * 1e3:.2f} ms, client_python "
              f"metric objects {direct / args.scrapes * 1e3:.2f} ms, ratio {mine / direct:.2f}")


if __name__ == "__main__":
    main()
