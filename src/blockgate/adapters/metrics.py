"""The Prometheus endpoint: plain counters in, text exposition out, over HTTP from a thread.

Nothing is counted here. The core bumps plain ints in ``stats.Stats``; at scrape time the
collector asks its two providers for the current totals and the per-source state, and
builds the metric families from them (client_python's custom ``Collector``, not a locked
``Counter.inc()`` per packet). The registry is this adapter's own, never the global one,
so two endpoints (or two tests) never see each other's metrics.

``make_registry`` builds the registry (the blockgate collector plus the process collector
of the process that serves the endpoint: the supervisor); ``start_metrics`` serves it on
``metrics.listen`` from a daemon thread and returns a handle whose ``close()`` stops it.
Every family is documented in docs/metrics.md. Names, units and labels follow
https://prometheus.io/docs/practices/naming/ (base units, ``_total`` counters, ``_info``
as a gauge of 1).
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any, Final
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, ProcessCollector, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from blockgate import __version__
from blockgate.stats import ACTIONS, LATENCY_BUCKETS, SourceMetrics, Stats

log = logging.getLogger("blockgate.metrics")

Totals = Callable[[], Stats]
Sources = Callable[[], Sequence[SourceMetrics]]
Seconds = Callable[[], float]
Counts = Callable[[], Mapping[str, int]]
# How a rule set was put in force: compiled from scratch, or a changed source patched into it.
SWAP_KINDS = ("compiled", "patched")

# A failing provider is logged at most once per this many seconds (with how many more
# failed meanwhile): Prometheus scrapes every 15-60 s, so a broken provider writes a line
# per minute, not one per scrape of every Prometheus server.
LOG_EVERY: Final = 60.0
TRANSPORTS: Final = ("udp", "tcp")
# How often the serving thread checks for close(): the stdlib's 0.5 s default makes every
# stop (and every test) wait half a second; ten idle wake-ups a second cost nothing.
POLL_INTERVAL: Final = 0.1


class BlockgateCollector:
    """Builds every ``blockgate_*`` family from the providers' values at scrape time.

    ``totals`` should return a snapshot (the supervisor's merge of its workers' Stats): the
    collector only reads it. A provider that raises fails the scrape (HTTP 500, which
    Prometheus records as ``up == 0``); the failure is logged, rate-limited, and counted in
    ``blockgate_internal_errors_total`` of the next good scrape.
    """

    def __init__(self, totals: Totals, sources: Sources, version: str = __version__,
                 compile_seconds: Seconds | None = None, swaps: Counts | None = None) -> None:
        self.totals = totals
        self.sources = sources
        self.compile_seconds = compile_seconds
        self.swaps = swaps
        self.version = version
        self.failures = 0
        self._lock = threading.Lock()  # scrapes may run in parallel request threads
        self._next_log = 0.0
        self._unlogged = 0

    def collect(self) -> Iterator[Metric]:
        try:
            stats = self.totals()
            sources = list(self.sources())
            compiled = self.compile_seconds() if self.compile_seconds is not None else 0.0
            swaps = dict(self.swaps()) if self.swaps is not None else {}
        except Exception:
            self._failed()
            raise
        yield from traffic_families(stats)
        yield from upstream_families(stats)
        yield from error_families(stats, self.failures)
        yield from source_families(sources)
        yield GaugeMetricFamily("blockgate_ruleset_compile_seconds", "Seconds the rule set in force "
                                "took to compile from every source's list.", value=compiled)
        built = CounterMetricFamily("blockgate_ruleset_swaps", "Rule sets put in force, by how: "
                                    "compiled from scratch, or a changed source patched in.", labels=["how"])
        for how in SWAP_KINDS:
            built.add_metric([how], swaps.get(how, 0))
        yield built
        info = GaugeMetricFamily("blockgate_build_info", "The running blockgate version (always 1).",
                                 labels=["version"])
        info.add_metric([self.version], 1.0)
        yield info

    def _failed(self) -> None:
        with self._lock:
            self.failures += 1
            now = time.monotonic()
            if now < self._next_log:
                self._unlogged += 1
                return
            more, self._unlogged, self._next_log = self._unlogged, 0, now + LOG_EVERY
        log.exception("metrics provider failed (%d more failures not logged)", more)


def traffic_families(stats: Stats) -> Iterator[Metric]:
    """DNS answers, blocks by channel and source, SNI flows."""
    queries = CounterMetricFamily("blockgate_dns_queries", "DNS queries by client transport and "
                                  "the answer they got.", labels=["transport", "action"])
    for transport, slots in zip(TRANSPORTS, (stats.dns_udp, stats.dns_tcp), strict=True):
        for action, n in zip(ACTIONS, slots, strict=True):
            queries.add_metric([transport, action], n)
    yield queries
    blocked = CounterMetricFamily("blockgate_blocked", "Blocked DNS queries, TLS and QUIC flows by "
                                  "the source and category of the deciding rule.",
                                  labels=["channel", "source", "category"])
    counts = stats.blocks()
    for source, category in stats.classes:  # every DNS class at zero: rate() starts at once
        counts.setdefault(("dns", source, category), 0)
    _add(blocked, counts)
    yield blocked
    flows = CounterMetricFamily("blockgate_sni_flows", "TLS and QUIC flows inspected, by verdict.",
                                labels=["proto", "verdict"])
    _add(flows, stats.sni_flows)
    yield flows


def upstream_families(stats: Stats) -> Iterator[Metric]:
    """Upstream answers by rcode, their latency histogram, and upstream errors."""
    responses = CounterMetricFamily("blockgate_upstream_responses", "Upstream answers by rcode.",
                                    labels=["upstream", "rcode"])
    _add(responses, stats.upstream_responses())
    yield responses
    latency = HistogramMetricFamily("blockgate_upstream_latency_seconds", "Time from forwarding a "
                                    "query to its upstream's answer.", labels=["upstream"])
    bounds = [repr(float(b)) for b in LATENCY_BUCKETS] + ["+Inf"]
    for label, slots, total in zip(stats.upstreams, stats.upstream_latency,
                                   stats.upstream_latency_sum, strict=True):
        cumulative, buckets = 0, []
        for bound, n in zip(bounds, slots, strict=True):
            cumulative += n
            buckets.append((bound, float(cumulative)))
        latency.add_metric([label], buckets, total)
    yield latency
    errors = CounterMetricFamily("blockgate_upstream_errors", "Upstream failures (retransmit, "
                                 "timeout, refused, unexpected-id, wrong-question, malformed, "
                                 "inflight-full) by upstream.", labels=["upstream", "reason"])
    _add(errors, stats.upstream_errors)
    yield errors


def error_families(stats: Stats, own_failures: int = 0) -> Iterator[Metric]:
    malformed = CounterMetricFamily("blockgate_malformed", "Malformed packets by channel and the "
                                    "parser's reason code.", labels=["channel", "reason"])
    _add(malformed, stats.malformed)
    yield malformed
    yield CounterMetricFamily("blockgate_internal_errors", "Unexpected exceptions caught at an adapter "
                              "edge (each packet still got a verdict); should stay 0.",
                              value=stats.internal_errors + own_failures)


def source_families(sources: Iterable[SourceMetrics]) -> Iterator[Metric]:
    """Rules, freshness, fetch results and compile time of every configured source."""
    rules = GaugeMetricFamily("blockgate_rules", "Rules of the source's current list by kind.",
                              labels=["source", "kind"])
    last = GaugeMetricFamily("blockgate_source_last_success_timestamp_seconds", "When the source's "
                             "current list was accepted (Unix time); absent while it has none.",
                             labels=["source"])
    fetches = CounterMetricFamily("blockgate_source_fetch", "Fetches of the source by result.",
                                  labels=["source", "result"])
    load_s = GaugeMetricFamily("blockgate_source_load_seconds", "Seconds the source's current list "
                               "took to read and parse.", labels=["source"])
    for src in sources:
        for kind, n in sorted(src.rules.items()):
            rules.add_metric([src.name, kind], n)
        if src.last_success is not None:
            last.add_metric([src.name], src.last_success)
        for result, n in sorted(src.fetches.items()):
            fetches.add_metric([src.name, result], n)
        load_s.add_metric([src.name], src.load_seconds)
    yield from (rules, last, fetches, load_s)


def _add(family: CounterMetricFamily, counts: Any) -> None:
    for labels, n in sorted(counts.items()):
        family.add_metric(list(labels), n)


def make_registry(totals: Totals, sources: Sources, version: str = __version__,
                  proc: str = "/proc", compile_seconds: Seconds | None = None,
                  swaps: Counts | None = None) -> CollectorRegistry:
    """A fresh registry: the blockgate collector and the ``process_*`` collector of the
    process that serves it (the supervisor; workers' CPU and memory are not included)."""
    registry = CollectorRegistry()
    registry.register(BlockgateCollector(totals, sources, version, compile_seconds, swaps))
    ProcessCollector(registry=registry, proc=proc)
    return registry


# -- HTTP ---------------------------------------------------------------------------------------


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a hung scraper never keeps the process from exiting
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per scrape is noise in the journal


@dataclass(slots=True)
class MetricsServer:
    """A running endpoint: ``address`` is where it listens (the real port when 0 was asked)."""

    address: tuple[str, int]
    _server: _Server
    _thread: threading.Thread

    def detach(self) -> None:
        """In a forked child: close this process's copy of the listening socket (the thread
        serving it exists only in the parent)."""
        self._server.socket.close()

    def close(self) -> None:
        """Stop serving and release the port; returns when the thread has ended."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def _guarded(app: Any) -> Any:
    """The exposition app, answering 500 by itself when a collector raised (already logged
    and counted by the collector), instead of wsgiref's traceback on stderr."""

    def wsgi(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        try:
            return app(environ, start_response)  # type: ignore[no-any-return]
        except Exception:
            start_response("500 Internal Server Error", [("Content-Type", "text/plain")], sys.exc_info())
            return [b"metrics collection failed\n"]

    return wsgi


def start_metrics(listen: tuple[str, int], registry: CollectorRegistry) -> MetricsServer:
    """Serve ``registry`` on ``http://listen/metrics`` from a daemon thread. raises OSError."""
    host, port = listen
    server_class = _Server6 if ":" in host else _Server
    server = make_server(host, port, _guarded(make_wsgi_app(registry)), server_class, _QuietHandler)
    thread = threading.Thread(target=server.serve_forever, args=(POLL_INTERVAL,), name="metrics",
                              daemon=True)
    thread.start()
    bound = server.socket.getsockname()
    return MetricsServer((str(bound[0]), int(bound[1])), server, thread)
