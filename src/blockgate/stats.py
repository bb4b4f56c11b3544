"""Plain integer counters, bumped on the hot path and labelled only when read.

The hot path increments list slots (``dns_udp[action] += 1``): no tuple, no lock, no
formatting per packet. ``labelled()`` turns the lists into ``{label tuple: count}`` for the
metrics adapter and the tests. Each worker keeps its own Stats; the metrics adapter sums.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

# Answers a DNS query can get, as list slots (the order is the metric label order).
ACTIONS: Final = ("forward", "bypass", "nxdomain", "nodata", "refused", "sinkhole", "drop",
                  "tcp-only", "not-allowed", "formerr", "notimp", "servfail")
A: Final = {name: i for i, name in enumerate(ACTIONS)}
# Upper bounds (seconds) of the upstream latency histogram buckets; +Inf is the last slot.
LATENCY_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                          1.0, 2.5)
RCODE_NAMES: Final = ("noerror", "formerr", "servfail", "nxdomain", "notimp", "refused",
                      *(str(i) for i in range(6, 16)))


def _slots(n: int) -> list[int]:
    return [0] * n


@dataclass(slots=True)
class Stats:
    dns_udp: list[int] = field(default_factory=lambda: _slots(len(ACTIONS)))
    dns_tcp: list[int] = field(default_factory=lambda: _slots(len(ACTIONS)))
    # blocks per rule class (``RuleClass.index``) and channel; labelled via ``classes``
    blocked_dns: list[int] = field(default_factory=list)
    classes: list[tuple[str, str]] = field(default_factory=list)  # index -> (source, category)
    blocked: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # folded, + TLS/QUIC
    malformed: Counter[tuple[str, str]] = field(default_factory=Counter)
    upstreams: list[str] = field(default_factory=list)
    upstream_rcodes: list[list[int]] = field(default_factory=list)  # [upstream][rcode]
    upstream_latency: list[list[int]] = field(default_factory=list)  # [upstream][bucket]
    upstream_latency_sum: list[float] = field(default_factory=list)
    upstream_errors: Counter[tuple[str, str]] = field(default_factory=Counter)
    sni_flows: Counter[tuple[str, str]] = field(default_factory=Counter)
    internal_errors: int = 0

    def set_upstreams(self, labels: list[str]) -> None:
        self.upstreams = labels
        self.upstream_rcodes = [_slots(16) for _ in labels]
        self.upstream_latency = [_slots(len(LATENCY_BUCKETS) + 1) for _ in labels]
        self.upstream_latency_sum = [0.0 for _ in labels]

    def set_classes(self, classes: list[tuple[str, str]]) -> None:
        """A new rule set: fold the per-class counts into labelled ones, then start over."""
        for (source, category), n in zip(self.classes, self.blocked_dns, strict=False):
            if n:
                self.blocked["dns", source, category] += n
        self.classes = classes
        self.blocked_dns = _slots(len(classes))

    def observe(self, upstream: int, seconds: float) -> None:
        self.upstream_latency[upstream][bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.upstream_latency_sum[upstream] += seconds

    def merge(self, other: Stats) -> Stats:
        """Add every counter of ``other`` (another worker's, or a retired one's) to this one.

        Per-class DNS blocks arrive folded into ``blocked`` (classes differ between rule
        sets); upstreams are matched by label (a reload may change them). Returns self.
        """
        for mine, theirs in ((self.dns_udp, other.dns_udp), (self.dns_tcp, other.dns_tcp)):
            for i, n in enumerate(theirs):
                mine[i] += n
        self.blocked.update(other.blocks())
        self.malformed.update(other.malformed)
        for j, label in enumerate(other.upstreams):
            if label in self.upstreams:
                i = self.upstreams.index(label)
            else:
                i = len(self.upstreams)
                self.upstreams.append(label)
                self.upstream_rcodes.append(_slots(16))
                self.upstream_latency.append(_slots(len(LATENCY_BUCKETS) + 1))
                self.upstream_latency_sum.append(0.0)
            for k, n in enumerate(other.upstream_rcodes[j]):
                self.upstream_rcodes[i][k] += n
            for k, n in enumerate(other.upstream_latency[j]):
                self.upstream_latency[i][k] += n
            self.upstream_latency_sum[i] += other.upstream_latency_sum[j]
        self.upstream_errors.update(other.upstream_errors)
        self.sni_flows.update(other.sni_flows)
        self.internal_errors += other.internal_errors
        return self

    # -- reading ----------------------------------------------------------------------------
    def dns_queries(self) -> Counter[tuple[str, str]]:
        out: Counter[tuple[str, str]] = Counter()
        for transport, slots in (("udp", self.dns_udp), ("tcp", self.dns_tcp)):
            for name, n in zip(ACTIONS, slots, strict=True):
                if n:
                    out[transport, name] = n
        return out

    def blocks(self) -> Counter[tuple[str, str, str]]:
        out = Counter(self.blocked)
        for (source, category), n in zip(self.classes, self.blocked_dns, strict=False):
            if n:
                out["dns", source, category] += n
        return out

    def upstream_responses(self) -> Counter[tuple[str, str]]:
        out: Counter[tuple[str, str]] = Counter()
        for label, slots in zip(self.upstreams, self.upstream_rcodes, strict=True):
            for rcode, n in enumerate(slots):
                if n:
                    out[label, RCODE_NAMES[rcode]] = n
        return out


@dataclass(frozen=True, slots=True)
class SourceMetrics:
    """What the metrics endpoint shows about one configured source, read at scrape time.

    ``rules``: rule kind (``block-exact``, ``allow-subtree``, ...) -> rules of its current
    list. ``last_success``: wall-clock seconds (Unix time) at which its current list was
    accepted, or None while it has none. ``fetches``: result (``ok``, ``not-modified``,
    ``refused``, ``error``, ...) -> count since start. ``load_seconds``: what reading and
    parsing its current list took.
    """

    name: str
    rules: Mapping[str, int] = field(default_factory=dict)
    last_success: float | None = None
    fetches: Mapping[str, int] = field(default_factory=dict)
    load_seconds: float = 0.0
