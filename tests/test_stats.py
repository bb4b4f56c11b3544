"""stats: counters of several workers sum up, whatever rule set or upstreams each had."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from blockgate.stats import ACTIONS, LATENCY_BUCKETS, A, Stats


def worker_stats(upstreams: list[str], classes: list[tuple[str, str]], seed: int) -> Stats:
    s = Stats()
    s.set_upstreams(upstreams)
    s.set_classes(classes)
    for i in range(len(ACTIONS)):
        s.dns_udp[i] = seed * (i + 1)
        s.dns_tcp[i] = seed + i
    for i in range(len(classes)):
        s.blocked_dns[i] = seed * 10 + i
    s.blocked["tls", "registry", "reg"] += seed
    s.malformed["dns", "truncated"] += seed
    for u in range(len(upstreams)):
        s.upstream_rcodes[u][0] += seed
        s.upstream_rcodes[u][3] += 1
        s.observe(u, 0.003)
    s.upstream_errors["*", "inflight-full"] += seed
    s.sni_flows["tls", "pass"] += seed
    s.internal_errors = seed
    return s


def readings(s: Stats) -> tuple[Counter[tuple[str, str]], Counter[tuple[str, str, str]],
                                Counter[tuple[str, str]], int, Counter[tuple[str, str]]]:
    return (s.dns_queries(), s.blocks(), s.upstream_responses(), s.internal_errors,
            s.upstream_errors + s.malformed + s.sni_flows)


def test_merge_sums_every_counter_across_rule_sets_and_upstreams() -> None:
    a = worker_stats(["127.0.0.1:53"], [("registry", "reg"), ("ads", "")], 3)
    b = worker_stats(["127.0.0.1:53", "10.0.0.1:53"], [("ads", ""), ("zi", "reg")], 5)
    want = [x + y for x, y in zip(readings(a), readings(b), strict=True)]
    got = readings(Stats().merge(a).merge(b))
    assert list(got) == want
    total = Stats().merge(a).merge(b)
    assert total.upstreams == ["127.0.0.1:53", "10.0.0.1:53"]
    assert total.upstream_latency[0][LATENCY_BUCKETS.index(0.005)] == 2
    assert total.upstream_latency_sum[0] == a.upstream_latency_sum[0] + b.upstream_latency_sum[0]
    assert total.dns_udp[A["nxdomain"]] == a.dns_udp[A["nxdomain"]] + b.dns_udp[A["nxdomain"]]


def test_merge_leaves_the_other_untouched_and_returns_self() -> None:
    a = worker_stats(["u:1"], [("s", "c")], 2)
    before = readings(a)
    total = Stats()
    assert total.merge(a) is total
    assert readings(a) == before


@given(st.lists(st.integers(0, 1000), min_size=1, max_size=6))
def test_merge_is_a_sum(seeds: list[int]) -> None:
    parts = [worker_stats(["u:1", f"u:{n % 3}"][: 1 + n % 2], [("s", str(n % 2))], n) for n in seeds]
    total = Stats()
    for p in parts:
        total.merge(p)
    assert sum(total.dns_udp) == sum(sum(p.dns_udp) for p in parts)
    assert total.blocks().total() == sum(p.blocks().total() for p in parts)
    assert total.internal_errors == sum(seeds)
