"""Scraping a real metrics endpoint over HTTP, and the Stats the scrape tests serve.

``scraped(stats, sources)`` starts ``adapters.metrics`` on a free loopback port (port 0,
read back from the socket), GETs ``/metrics`` with urllib and parses the text with
``prometheus_client.parser``: the same path a Prometheus server takes.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from blockgate.adapters.metrics import MetricsServer, make_registry, start_metrics
from blockgate.stats import A, SourceMetrics, Stats

HTTP_TIMEOUT = 5.0
UP4 = "127.0.0.1:53"
UP6 = "[::1]:53"
LAST_SUCCESS = 1_764_633_600.0  # 2025-12-02T00:00:00Z
COMPILE_SECONDS = 2.5
SWAPS = {"compiled": 3, "patched": 7}


@dataclass(frozen=True)
class Scrape:
    text: str
    families: dict[str, str]  # exposition name (counters with _total) -> type
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float]

    def value(self, name: str, **labels: str) -> float:
        return self.samples[name, frozenset(labels.items())]

    def label_sets(self, name: str) -> set[frozenset[tuple[str, str]]]:
        return {labels for (n, labels) in self.samples if n == name}

    def sample_names(self) -> set[str]:
        return {n for (n, _labels) in self.samples}


def parse(text: str) -> Scrape:
    families: dict[str, str] = {}
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for fam in text_string_to_metric_families(text):
        families[fam.name + "_total" if fam.type == "counter" else fam.name] = fam.type
        for s in fam.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in samples, f"duplicate sample {key}"
            samples[key] = s.value
    return Scrape(text, families, samples)


def get(server: MetricsServer, path: str = "/metrics") -> tuple[int, str]:
    host, port = server.address
    url = f"http://[{host}]:{port}{path}" if ":" in host else f"http://{host}:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as resp:
            return resp.status, resp.read().decode("utf-8")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


@contextmanager
def serving(stats: Stats, sources: Sequence[SourceMetrics],
            host: str = "127.0.0.1") -> Iterator[MetricsServer]:
    server = start_metrics((host, 0), make_registry(lambda: stats, lambda: sources,
                                                    compile_seconds=lambda: COMPILE_SECONDS,
                                                    swaps=lambda: SWAPS))
    try:
        yield server
    finally:
        server.close()


def scraped(stats: Stats, sources: Sequence[SourceMetrics]) -> Scrape:
    with serving(stats, sources) as server:
        status, text = get(server)
    assert status == 200, text
    return parse(text)


def idle_stats() -> Stats:
    """A worker's Stats right after start: upstreams and rule classes known, no traffic."""
    stats = Stats()
    stats.set_upstreams([UP4, UP6])
    stats.set_classes([("registry", "registry"), ("local", "")])
    return stats


def busy_stats() -> Stats:
    """Stats with a known count in every family (the expected values are in the tests)."""
    stats = idle_stats()
    stats.dns_udp[A["forward"]] = 7
    stats.dns_udp[A["nxdomain"]] = 3
    stats.dns_tcp[A["refused"]] = 2
    stats.blocked_dns[0] = 3
    stats.blocked_dns[1] = 2
    stats.blocked["tls", "registry", "registry"] = 4
    stats.blocked["quic", "local", ""] = 1
    stats.upstream_rcodes[0][0] = 5
    stats.upstream_rcodes[0][3] = 2
    stats.upstream_rcodes[1][2] = 1
    for up, seconds in ((0, 0.0004), (0, 0.001), (0, 0.02), (1, 3.0)):
        stats.observe(up, seconds)
    stats.upstream_errors[UP4, "timeout"] = 2
    stats.upstream_errors["*", "inflight-full"] = 1
    stats.sni_flows["tls", "block"] = 4
    stats.sni_flows["quic", "pass"] = 9
    stats.malformed["dns", "short"] = 6
    stats.malformed["tls", "truncated"] = 1
    stats.internal_errors = 0
    return stats


def some_sources() -> list[SourceMetrics]:
    return [
        SourceMetrics("registry", {"block-exact": 100, "block-subtree": 5}, LAST_SUCCESS,
                      {"ok": 2, "not-modified": 10, "refused": 1}, 1.25),
        SourceMetrics("local", {"block-exact": 15}, None, {"error": 3}, 0.01),
    ]
