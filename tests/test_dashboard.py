"""The Grafana dashboard asks only for metrics blockgate serves.

Every PromQL expression of dashboards/blockgate.json (panel targets and template variable
queries) is reduced to its metric names by a small tokenizer (strings, label matchers,
ranges, grouping clauses and Grafana variables removed; functions and keywords known),
and each name is looked up in real scrapes of the metrics endpoint: one right after start
(no traffic) and one with traffic.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from scrape import Scrape, busy_stats, idle_stats, scraped, some_sources

from blockgate.stats import SourceMetrics

DASHBOARD = Path(__file__).resolve().parent.parent / "dashboards" / "blockgate.json"

# PromQL functions, aggregations and keywords the dashboard may use (not metric names).
FUNCTIONS = {"sum", "max", "min", "avg", "count", "rate", "increase", "irate", "histogram_quantile",
             "time", "label_values", "topk", "bottomk", "clamp_min", "absent", "changes", "delta"}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
            "bool", "offset"}
# Families that have samples right after start, before any traffic (docs/metrics.md).
PRESENT_AT_START = {"blockgate_dns_queries_total", "blockgate_blocked_total",
                    "blockgate_upstream_latency_seconds_bucket", "blockgate_upstream_latency_seconds_sum",
                    "blockgate_upstream_latency_seconds_count", "blockgate_internal_errors_total",
                    "blockgate_rules", "blockgate_source_last_success_timestamp_seconds",
                    "blockgate_ruleset_compile_seconds", "blockgate_ruleset_swaps_total",
                    "blockgate_source_load_seconds",
                    "blockgate_build_info",
                    "process_cpu_seconds_total", "process_resident_memory_bytes"}


def expressions(dash: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target (rows' nested panels too) and variable query."""
    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for p in items:
            yield p
            yield from panels(p.get("panels", []))

    for p in panels(dash["panels"]):
        for t in p.get("targets", []):
            yield f"panel {p['id']} {p['title']!r} {t['refId']}", t["expr"]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            q = var["query"]
            yield f"variable {var['name']}", q["query"] if isinstance(q, dict) else q


def metric_names(expr: str) -> set[str]:
    """The metric names in a PromQL expression; anything unrecognised fails the test."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^{}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\[\]]*\]", " ", text)  # range selectors
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # Grafana variables
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = m.group()
        following = text[m.end():].lstrip()[:1]
        if word in KEYWORDS or (word in FUNCTIONS and following == "("):
            continue
        if re.fullmatch(r"\d+[smhdwy]", word):
            continue
        names.add(word)
    return names


PARSE_CASES = [
    ("rate-by", 'sum by (action) (rate(blockgate_dns_queries_total{job=~"$job"}[$__rate_interval]))',
     {"blockgate_dns_queries_total"}),
    ("ratio", 'sum(rate(a_total{x="y"}[5m])) / sum(rate(b_total[5m]))', {"a_total", "b_total"}),
    ("quantile", "histogram_quantile(0.99, sum by (le) (rate(h_bucket[1m])))", {"h_bucket"}),
    ("time-minus", "time() - t_seconds", {"t_seconds"}),
    ("variable", 'label_values(blockgate_build_info{job=~"$job"}, instance)',
     {"blockgate_build_info", "instance"}),
]


@pytest.mark.parametrize(("expr", "want"), [c[1:] for c in PARSE_CASES], ids=[c[0] for c in PARSE_CASES])
def test_metric_names_tokenizer(expr: str, want: set[str]) -> None:
    assert metric_names(expr) == want


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def used() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for where, expr in expressions(dashboard()):
        names = metric_names(expr)
        if where.startswith("variable"):
            names -= {"job", "instance"}  # label_values(metric, LABEL): the label argument
        assert names, f"{where}: no metric in {expr!r}"
        for n in names:
            out.setdefault(n, set()).add(where)
    return out


def family_of(sample: str, scrape: Scrape) -> str | None:
    for name in (sample, re.sub(r"_(bucket|sum|count)$", "", sample)):
        if name in scrape.families:
            return name
    return None


@pytest.fixture(scope="module")
def at_start() -> Scrape:
    sources = [SourceMetrics("registry", {"block-exact": 100}, 1_764_633_600.0, {}, 1.5),
               SourceMetrics("local", {"block-exact": 15}, 1_764_633_600.0, {}, 0.01)]
    return scraped(idle_stats(), sources)


@pytest.fixture(scope="module")
def with_traffic() -> Scrape:
    return scraped(busy_stats(), some_sources())


def test_every_dashboard_metric_is_served(at_start: Scrape, with_traffic: Scrape) -> None:
    missing = {}
    for name, where in sorted(used().items()):
        if family_of(name, at_start) is None or name not in with_traffic.sample_names():
            missing[name] = sorted(where)
    assert not missing, f"the dashboard asks for metrics the endpoint does not serve: {missing}"


def test_metrics_with_zero_defaults_have_samples_at_start(at_start: Scrape) -> None:
    for name in sorted(set(used()) & PRESENT_AT_START):
        assert name in at_start.sample_names(), name


def test_dashboard_covers_the_brief() -> None:
    """Queries by action, blocks by source and channel, list age and fetch failures, upstream
    latency quantiles and errors, malformed packets, internal errors."""
    exprs = [e for _w, e in expressions(dashboard())]

    def has(pattern: str) -> bool:
        return any(re.search(pattern, e) for e in exprs)

    assert has(r"by \(action\).*blockgate_dns_queries_total")
    assert has(r"by \(source\).*blockgate_blocked_total")
    assert has(r"by \(channel\).*blockgate_blocked_total")
    assert has(r"time\(\) - blockgate_source_last_success_timestamp_seconds")
    assert has(r'blockgate_source_fetch_total\{result!~"ok\|not-modified"')
    assert has(r"histogram_quantile\(0\.99, .*blockgate_upstream_latency_seconds_bucket")
    assert has(r"blockgate_upstream_errors_total")
    assert has(r"blockgate_malformed_total")
    assert has(r"blockgate_internal_errors_total")


def test_dashboard_shape() -> None:
    dash = dashboard()
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "job", "instance"} <= variables
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}", p["title"]
            for t in p["targets"]:
                assert "$job" in t["expr"] and "$instance" in t["expr"], (p["title"], t["expr"])
