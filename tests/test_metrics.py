"""The metrics endpoint, scraped over real HTTP from a real listening socket.

Stats are filled with known counts (``scrape.busy_stats``) or driven through a real
``DnsEngine`` with real packets; the text is parsed with ``prometheus_client.parser``, and
values and label sets are checked exactly against the tables below.
"""

from __future__ import annotations

import io
import itertools
import re
import socket
import struct
import threading
from pathlib import Path

import dns.message
import pytest
from prometheus_client import REGISTRY
from scrape import (
    LAST_SUCCESS,
    UP4,
    UP6,
    Scrape,
    busy_stats,
    get,
    idle_stats,
    parse,
    scraped,
    serving,
    some_sources,
)

from blockgate import __version__
from blockgate.adapters.metrics import make_registry, start_metrics
from blockgate.config import load, parse_addr
from blockgate.dnsengine import DnsEngine, make_settings, make_synth
from blockgate.engine import LoadedSource, RuleSet
from blockgate.lists import parse as parse_list
from blockgate.lists.base import Input
from blockgate.stats import ACTIONS, LATENCY_BUCKETS, SourceMetrics, Stats

DOCS = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"
INF = float("inf")

# (sample name, labels, value) for busy_stats() and some_sources(): every non-zero sample.
EXPECTED = [
    ("blockgate_dns_queries_total", {"transport": "udp", "action": "forward"}, 7),
    ("blockgate_dns_queries_total", {"transport": "udp", "action": "nxdomain"}, 3),
    ("blockgate_dns_queries_total", {"transport": "tcp", "action": "refused"}, 2),
    ("blockgate_blocked_total", {"channel": "dns", "source": "registry", "category": "registry"}, 3),
    ("blockgate_blocked_total", {"channel": "dns", "source": "local", "category": ""}, 2),
    ("blockgate_blocked_total", {"channel": "tls", "source": "registry", "category": "registry"}, 4),
    ("blockgate_blocked_total", {"channel": "quic", "source": "local", "category": ""}, 1),
    ("blockgate_upstream_responses_total", {"upstream": UP4, "rcode": "noerror"}, 5),
    ("blockgate_upstream_responses_total", {"upstream": UP4, "rcode": "nxdomain"}, 2),
    ("blockgate_upstream_responses_total", {"upstream": UP6, "rcode": "servfail"}, 1),
    ("blockgate_upstream_latency_seconds_count", {"upstream": UP4}, 3),
    ("blockgate_upstream_latency_seconds_count", {"upstream": UP6}, 1),
    ("blockgate_upstream_errors_total", {"upstream": UP4, "reason": "timeout"}, 2),
    ("blockgate_upstream_errors_total", {"upstream": "*", "reason": "inflight-full"}, 1),
    ("blockgate_sni_flows_total", {"proto": "tls", "verdict": "block"}, 4),
    ("blockgate_sni_flows_total", {"proto": "quic", "verdict": "pass"}, 9),
    ("blockgate_malformed_total", {"channel": "dns", "reason": "short"}, 6),
    ("blockgate_malformed_total", {"channel": "tls", "reason": "truncated"}, 1),
    ("blockgate_rules", {"source": "registry", "kind": "block-exact"}, 100),
    ("blockgate_rules", {"source": "registry", "kind": "block-subtree"}, 5),
    ("blockgate_rules", {"source": "local", "kind": "block-exact"}, 15),
    ("blockgate_source_last_success_timestamp_seconds", {"source": "registry"}, LAST_SUCCESS),
    ("blockgate_source_fetch_total", {"source": "registry", "result": "ok"}, 2),
    ("blockgate_source_fetch_total", {"source": "registry", "result": "not-modified"}, 10),
    ("blockgate_source_fetch_total", {"source": "registry", "result": "refused"}, 1),
    ("blockgate_source_fetch_total", {"source": "local", "result": "error"}, 3),
    ("blockgate_source_load_seconds", {"source": "registry"}, 1.25),
    ("blockgate_source_load_seconds", {"source": "local"}, 0.01),
    ("blockgate_ruleset_compile_seconds", {}, 2.5),
    ("blockgate_ruleset_swaps_total", {"how": "compiled"}, 3),  # scrape.SWAPS
    ("blockgate_ruleset_swaps_total", {"how": "patched"}, 7),
    ("blockgate_build_info", {"version": __version__}, 1),
]


@pytest.fixture(scope="module")
def busy() -> Scrape:
    return scraped(busy_stats(), some_sources())


@pytest.mark.parametrize(("name", "labels", "value"), EXPECTED,
                         ids=[f"{n}{sorted(lb.values())}" for n, lb, _v in EXPECTED])
def test_sample_values(busy: Scrape, name: str, labels: dict[str, str], value: float) -> None:
    assert busy.value(name, **labels) == pytest.approx(value)


# Label sets of the families whose samples are only what happened (no zero defaults).
EXACT_LABEL_SETS = ["blockgate_upstream_responses_total", "blockgate_upstream_errors_total",
                    "blockgate_sni_flows_total", "blockgate_malformed_total", "blockgate_rules",
                    "blockgate_source_last_success_timestamp_seconds", "blockgate_source_fetch_total",
                    "blockgate_source_load_seconds", "blockgate_ruleset_compile_seconds",
                    "blockgate_ruleset_swaps_total", "blockgate_build_info"]


@pytest.mark.parametrize("name", EXACT_LABEL_SETS)
def test_label_sets_are_exactly_what_happened(busy: Scrape, name: str) -> None:
    want = {frozenset(lb.items()) for n, lb, _v in EXPECTED if n == name}
    assert busy.label_sets(name) == want


def test_dns_queries_every_transport_and_action(busy: Scrape) -> None:
    sets = busy.label_sets("blockgate_dns_queries_total")
    assert sets == {frozenset({"transport": t, "action": a}.items()) for t in ("udp", "tcp")
                    for a in ACTIONS}
    nonzero = {(n, frozenset(lb.items())) for n, lb, _v in EXPECTED}
    for labels in sets:
        if ("blockgate_dns_queries_total", labels) not in nonzero:
            assert busy.samples["blockgate_dns_queries_total", labels] == 0


def test_blocked_label_sets(busy: Scrape) -> None:
    assert busy.label_sets("blockgate_blocked_total") == {
        frozenset(lb.items()) for n, lb, _v in EXPECTED if n == "blockgate_blocked_total"}


def test_latency_histogram_is_cumulative_with_le_inclusive(busy: Scrape) -> None:
    # UP4 saw 0.0004 s, 0.001 s (exactly a bound: counted in le="0.001") and 0.02 s; UP6 saw 3 s.
    def bucket(up: str, le: float) -> float:
        return busy.value("blockgate_upstream_latency_seconds_bucket",
                          upstream=up, le="+Inf" if le == INF else repr(le))

    want4 = {0.0005: 1, 0.001: 2, 0.0025: 2, 0.01: 2, 0.025: 3, 2.5: 3, INF: 3}
    for le, n in want4.items():
        assert bucket(UP4, le) == n, le
    for le in LATENCY_BUCKETS:
        assert bucket(UP6, le) == 0
    assert bucket(UP6, INF) == 1
    assert busy.value("blockgate_upstream_latency_seconds_sum",
                      upstream=UP4) == pytest.approx(0.0214)
    assert busy.value("blockgate_upstream_latency_seconds_sum",
                      upstream=UP6) == pytest.approx(3.0)
    les = {dict(lb)["le"] for lb in busy.label_sets(
        "blockgate_upstream_latency_seconds_bucket")}
    assert len(les) == len(LATENCY_BUCKETS) + 1


def test_idle_endpoint_has_every_family_and_zeros() -> None:
    """Right after start: every family there; known label sets at zero; no invented ones."""
    s = scraped(idle_stats(), [SourceMetrics("registry"), SourceMetrics("local")])
    assert set(s.families) == documented()
    assert all(s.samples[k] == 0 for k in s.samples if k[0] == "blockgate_dns_queries_total")
    assert len(s.label_sets("blockgate_dns_queries_total")) == 2 * len(ACTIONS)
    assert s.label_sets("blockgate_blocked_total") == {
        frozenset({"channel": "dns", "source": src, "category": cat}.items())
        for src, cat in (("registry", "registry"), ("local", ""))}
    assert s.value("blockgate_upstream_latency_seconds_count", upstream=UP6) == 0
    assert s.value("blockgate_internal_errors_total") == 0
    assert not s.label_sets("blockgate_source_last_success_timestamp_seconds")  # never loaded
    assert not s.label_sets("blockgate_upstream_errors_total")


def documented() -> set[str]:
    """Metric names in the first column of the tables of docs/metrics.md."""
    return set(re.findall(r"^\| `([a-z_]+)` \|", DOCS.read_text(), re.M))


def test_every_emitted_family_is_documented_and_every_documented_one_emitted(busy: Scrape) -> None:
    emitted = set(busy.families)
    assert emitted - documented() == set(), "emitted but not in docs/metrics.md"
    assert documented() - emitted == set(), "in docs/metrics.md but not emitted"


def test_process_collector_describes_the_serving_process(busy: Scrape) -> None:
    with open("/proc/self/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    page = 4096
    rss_now = int(fields[21]) * page
    rss = busy.value("process_resident_memory_bytes")
    assert 0.5 * rss_now < rss < 2 * rss_now  # the same process (this test's), give or take
    assert busy.value("process_cpu_seconds_total") > 0
    assert busy.value("process_open_fds") >= 3


def test_own_registry_never_the_global_one() -> None:
    make_registry(busy_stats, some_sources)
    assert not [n for n in REGISTRY._names_to_collectors if n.startswith("blockgate")]
    one, two = busy_stats(), idle_stats()
    with serving(one, some_sources()) as a, serving(two, []) as b:
        ta, tb = parse(get(a)[1]), parse(get(b)[1])
    assert ta.value("blockgate_sni_flows_total", proto="quic", verdict="pass") == 9
    assert not tb.label_sets("blockgate_sni_flows_total")
    assert not tb.label_sets("blockgate_rules")


def test_values_are_read_at_scrape_time() -> None:
    stats = idle_stats()
    with serving(stats, []) as server:
        assert parse(get(server)[1]).value("blockgate_internal_errors_total") == 0
        stats.internal_errors = 4
        stats.dns_tcp[ACTIONS.index("servfail")] += 1
        after = parse(get(server)[1])
    assert after.value("blockgate_internal_errors_total") == 4
    assert after.value("blockgate_dns_queries_total", transport="tcp", action="servfail") == 1


def test_failing_provider_answers_500_logs_and_counts(caplog: pytest.LogCaptureFixture) -> None:
    stats = idle_stats()
    calls = itertools.count()

    def sources() -> list[SourceMetrics]:
        if next(calls) < 2:
            raise RuntimeError("control channel closed")
        return []

    server = start_metrics(("127.0.0.1", 0), make_registry(lambda: stats, sources))
    try:
        with caplog.at_level("ERROR", logger="blockgate.metrics"):
            assert get(server)[0] == 500
            assert get(server)[0] == 500
        status, text = get(server)
    finally:
        server.close()
    assert status == 200
    assert parse(text).value("blockgate_internal_errors_total") == 2
    logged = [r for r in caplog.records if r.name == "blockgate.metrics"]
    assert len(logged) == 1  # the second failure within LOG_EVERY is only counted
    assert "control channel closed" in (logged[0].exc_text or "")


def test_openmetrics_when_asked() -> None:
    with serving(busy_stats(), some_sources()) as server:
        host, port = server.address
        sock = socket.create_connection((host, port), timeout=5)
        sock.sendall(b"GET /metrics HTTP/1.0\r\nAccept: application/openmetrics-text; version=1.0.0\r\n\r\n")
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
        sock.close()
    head, body = raw.split(b"\r\n\r\n", 1)
    assert b"application/openmetrics-text" in head
    assert body.rstrip().endswith(b"# EOF")


def test_ipv6_listen() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this kernel")
    try:
        socket.socket(socket.AF_INET6).bind(("::1", 0))
    except OSError:
        pytest.skip("no ::1 on this machine")
    with serving(busy_stats(), some_sources(), host="::1") as server:
        assert server.address[0] == "::1" and server.address[1] > 0
        status, text = get(server)
    assert status == 200 and parse(text).value("blockgate_rules", source="local", kind="block-exact") == 15


def test_close_stops_serving_and_frees_the_port() -> None:
    server = start_metrics(("127.0.0.1", 0), make_registry(idle_stats, list))
    addr = server.address
    assert get(server)[0] == 200
    server.close()
    with pytest.raises(OSError):
        socket.create_connection(addr, timeout=1).close()
    again = socket.socket()
    again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    again.bind(addr)
    again.close()
    assert not [t for t in threading.enumerate() if t.name == "metrics"]


def test_busy_port_raises_oserror() -> None:
    with serving(idle_stats(), []) as server, pytest.raises(OSError):
        start_metrics(server.address, make_registry(idle_stats, list))


# -- driven by the real DNS engine ------------------------------------------------------------


def test_engine_counters_reach_the_scrape() -> None:
    """Real queries through the sans-I/O DnsEngine: a block, a forward and its answer, a
    malformed packet, a refused client; the scrape shows exactly those."""
    config = load("""sources:
  - {name: reg, format: domains, path: /reg.txt, category: registry}
dns:
  upstreams: ["127.0.0.1:53"]
  allow_clients: ["127.0.0.0/8"]
""")
    ls = LoadedSource(config.sources[0])
    ls.parsed = parse_list("domains", [Input("reg.txt", io.BytesIO(b"blocked.test\n"))])
    rs = RuleSet([ls])
    ids = itertools.count(100)
    stats = Stats()
    engine = DnsEngine(rs.matcher.classes, rs.match, make_synth(config.dns),
                       make_settings(config.dns, parse_addr), stats,
                       lambda n: b"".join(struct.pack("!H", next(ids)) for _ in range(n // 2)))
    client, chan = ("127.0.0.1", 5000), object()
    assert engine.query(dns.message.make_query("blocked.test", "A").to_wire(), client, chan, False, 0.0)
    assert engine.query(dns.message.make_query("ok.test", "A").to_wire(), client, chan, False, 1.0) is None
    _up, _tcp, sent = engine.outbox.pop()
    answer = dns.message.make_response(dns.message.from_wire(sent))
    assert engine.answer(answer.to_wire(), 0, 1.003) is not None
    assert engine.query(b"\x00\x01", client, chan, False, 2.0) is None  # too short to answer
    engine.query(dns.message.make_query("ok.test", "A").to_wire(), ("192.0.2.1", 9), chan, True, 3.0)

    s = scraped(stats, [SourceMetrics("reg", dict(ls.kinds), None, {}, 0.0)])
    nonzero = {(n, frozenset(lb)): v for (n, lb), v in s.samples.items()
               if n.startswith("blockgate_") and v and not n.endswith(("_bucket", "_sum"))}
    assert nonzero == {
        ("blockgate_dns_queries_total", frozenset({("transport", "udp"), ("action", "nxdomain")})): 1,
        ("blockgate_dns_queries_total", frozenset({("transport", "udp"), ("action", "forward")})): 1,
        ("blockgate_dns_queries_total", frozenset({("transport", "tcp"), ("action", "not-allowed")})): 1,
        ("blockgate_blocked_total", frozenset({("channel", "dns"), ("source", "reg"),
                                               ("category", "registry")})): 1,
        ("blockgate_upstream_responses_total", frozenset({("upstream", "127.0.0.1:53"),
                                                          ("rcode", "noerror")})): 1,
        ("blockgate_upstream_latency_seconds_count", frozenset({("upstream", "127.0.0.1:53")})): 1,
        ("blockgate_malformed_total", frozenset({("channel", "dns"), ("reason", "short")})): 1,
        ("blockgate_rules", frozenset({("source", "reg"), ("kind", "block-exact")})): 1,
        ("blockgate_ruleset_compile_seconds", frozenset()): 2.5,  # scrape.COMPILE_SECONDS
        ("blockgate_ruleset_swaps_total", frozenset({("how", "compiled")})): 3,  # scrape.SWAPS
        ("blockgate_ruleset_swaps_total", frozenset({("how", "patched")})): 7,
        ("blockgate_build_info", frozenset({("version", __version__)})): 1,
    }
    assert s.value("blockgate_upstream_latency_seconds_bucket", upstream="127.0.0.1:53", le="0.0025") == 0
    assert s.value("blockgate_upstream_latency_seconds_bucket", upstream="127.0.0.1:53", le="0.005") == 1
