"""The decision log: lines built from real rules (the registry fixture's records, a domains
list), checked against the fixture read independently with ElementTree; the limiter's
guarantees as hypothesis properties over arbitrary arrival times."""

from __future__ import annotations

import io
import json
import time
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockgate.decisions import ALL_PER_SECOND, BURST_SECONDS, DecisionLog
from blockgate.lists import parse
from blockgate.lists.base import Input
from blockgate.trie import Rule, SourceInfo, compile_rules

FIXTURES = Path(__file__).parent / "fixtures" / "lists"
RKN = FIXTURES / "rkn-dump-fragment-2019-a.xml"
T0 = 1_764_633_600.0  # 2025-12-02T00:00:00Z
CLIENT = "192.0.2.7"


def registry_rule(name: bytes) -> Rule:
    parsed = parse("rkn-xml", [Input(RKN.name, io.BytesIO(RKN.read_bytes()))])
    rule = compile_rules([SourceInfo("registry", "rkn-xml", "registry", None, 16, parsed)]).match(name)
    assert rule is not None
    return rule


def domains_rule(name: bytes) -> Rule:
    text = b"# local\nexample.test\n.bad.test\n"
    parsed = parse("domains", [Input("local.txt", io.BytesIO(text))])
    rule = compile_rules([SourceInfo("local", "domains", None, None, 15, parsed)]).match(name)
    assert rule is not None
    return rule


def registry_record(domain: str) -> tuple[int, dict[str, str], int]:
    """The fixture's record for an https URL on ``domain``, read with ElementTree, and its line."""
    lines = RKN.read_bytes().split(b"\n")
    for content in ET.fromstring(RKN.read_bytes()).iter("content"):
        urls = [u.text or "" for u in content.iter("url")]
        if any(u.startswith(f"https://{domain}/") for u in urls):
            d = content.find("decision")
            assert d is not None
            line = next(i for i, raw in enumerate(lines, 1) if f'id="{content.get("id")}"'.encode() in raw)
            return int(content.get("id", "0")), {"number": d.get("number", ""), "date": d.get("date", ""),
                                                 "authority": d.get("org", "")}, line
    raise AssertionError(domain)


def test_registry_line_names_record_and_decision() -> None:
    record_id, decision, line = registry_record("standaards.com")
    log = DecisionLog("all", 0)
    rule = registry_rule(b"standaards.com")
    text = log.record(T0 + 0.25, CLIENT, "dns", b"standaards.com", "nxdomain", rule)
    assert text is not None and "\n" not in text
    assert json.loads(text) == {
        "time": "2025-12-02T00:00:00.250Z", "client": CLIENT, "channel": "dns", "name": "standaards.com",
        "action": "nxdomain", "source": "registry", "category": "registry", "rule": "standaards.com",
        "origin": f"{RKN.name}:{line}", "record_id": record_id, "decision": decision,
    }
    assert "суд" in text  # UTF-8 as is, not \u escapes: the journal shows it readable


CHANNELS = [
    ("dns-subtree", "dns", b"www.bad.test", "sinkhole", "bad.test and below", "local.txt:3"),
    ("tls-exact", "tls", b"example.test", "reset", "example.test", "local.txt:2"),
    ("quic-subtree", "quic", b"bad.test", "drop", "bad.test and below", "local.txt:3"),
]


@pytest.mark.parametrize(("channel", "name", "action", "pattern", "origin"), [c[1:] for c in CHANNELS],
                         ids=[c[0] for c in CHANNELS])
def test_list_line_without_registry_fields(channel: str, name: bytes, action: str, pattern: str,
                                           origin: str) -> None:
    text = DecisionLog("sample", 10).record(T0, "2001:db8::7", channel, name, action, domains_rule(name))
    assert text is not None
    assert json.loads(text) == {
        "time": "2025-12-02T00:00:00.000Z", "client": "2001:db8::7", "channel": channel,
        "name": name.decode(), "action": action, "source": "local", "category": None, "rule": pattern,
        "origin": origin}


def test_odd_name_bytes_are_shown_escaped() -> None:
    rule = domains_rule(b"bad.test")
    text = DecisionLog("all", 0).record(T0, CLIENT, "tls", b"bad.test\xff\n", "reset", rule)
    assert text is not None and "\n" not in text
    assert json.loads(text)["name"] == "bad.test\\xff\n"


RFC3339 = [
    ("epoch", 0.0, "1970-01-01T00:00:00.000Z"),
    ("leap-day", 951_782_400.0, "2000-02-29T00:00:00.000Z"),
    ("fraction", T0 + 0.5, "2025-12-02T00:00:00.500Z"),
    ("truncated-ms", 1_000_000_000.9994, "2001-09-09T01:46:40.999Z"),
    ("2038", 2_147_483_648.0, "2038-01-19T03:14:08.000Z"),
]


def rfc3339(now: float) -> str:
    """The time of a line written at ``now``."""
    line = DecisionLog("all", 0).record(now, CLIENT, "dns", b"example.test", "nxdomain",
                                        domains_rule(b"example.test"))
    assert line is not None
    return str(json.loads(line)["time"])


@pytest.mark.parametrize(("now", "want"), [r[1:] for r in RFC3339], ids=[r[0] for r in RFC3339])
def test_rfc3339(now: float, want: str) -> None:
    assert rfc3339(now) == want


@given(st.floats(min_value=0, max_value=4e9, allow_nan=False))
def test_rfc3339_agrees_with_gmtime(now: float) -> None:
    text = rfc3339(now)
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    assert now - 0.001 - 1e-6 <= parsed <= now + 1e-6
    assert text[:19] == time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(parsed))


MODES = [
    ("off", "off", 100, 0),
    ("sample-0", "sample", 0, 0),
    ("sample-5", "sample", 5, 5),
    ("sample-over-cap", "sample", 10 * ALL_PER_SECOND, ALL_PER_SECOND),
    ("all-ignores-per-second", "all", 0, ALL_PER_SECOND),
    ("all", "all", 100, ALL_PER_SECOND),
]


@pytest.mark.parametrize(("mode", "per_second", "burst"), [m[1:] for m in MODES], ids=[m[0] for m in MODES])
def test_burst_at_one_instant(mode: str, per_second: int, burst: int) -> None:
    """3x the cap of blocks at one instant: exactly one second's worth is written."""
    log = DecisionLog(mode, per_second)
    rule = domains_rule(b"bad.test")
    lines = [log.record(T0, CLIENT, "dns", b"bad.test", "nxdomain", rule) for _ in range(3 * ALL_PER_SECOND)]
    assert sum(line is not None for line in lines) == burst
    if mode != "off":
        assert log.suppressed == 3 * ALL_PER_SECOND - burst
    later = log.record(T0 + 10, CLIENT, "dns", b"bad.test", "nxdomain", rule)
    if burst and mode != "off":
        assert later is not None and json.loads(later)["suppressed"] == 3 * ALL_PER_SECOND - burst
        assert log.suppressed == 0
    else:
        assert later is None


@pytest.mark.parametrize(("mode", "per_second"), [("loud", 1), ("sample", -1)])
def test_bad_settings(mode: str, per_second: int) -> None:
    with pytest.raises(ValueError):
        DecisionLog(mode, per_second)


# -- the limiter's guarantees -----------------------------------------------------------------

steps = st.lists(st.floats(min_value=0, max_value=0.5, allow_nan=False), min_size=1, max_size=300)
rates = st.integers(min_value=1, max_value=40)


def times(gaps: list[float]) -> list[float]:
    out, t = [], T0
    for g in gaps:
        t += g
        out.append(t)
    return out


@settings(max_examples=200, deadline=None)
@given(gaps=steps, rate=rates)
def test_no_window_exceeds_rate_plus_burst(gaps: list[float], rate: int) -> None:
    """Token bucket bound: lines in any interval [a, b] <= burst + rate * (b - a)."""
    log = DecisionLog("sample", rate)
    sent = [t for t in times(gaps) if log.allow(t)]
    burst = rate * BURST_SECONDS
    for i in range(len(sent)):
        for j in range(i, len(sent)):
            assert j - i + 1 <= burst + rate * (sent[j] - sent[i]) + 1e-6


@settings(max_examples=200, deadline=None)
@given(gaps=steps, rate=rates)
def test_every_block_is_written_or_counted(gaps: list[float], rate: int) -> None:
    log = DecisionLog("sample", rate)
    rule = domains_rule(b"bad.test")
    written = reported = 0
    for t in times(gaps):
        line = log.record(t, CLIENT, "dns", b"bad.test", "nxdomain", rule)
        if line is not None:
            written += 1
            reported += json.loads(line).get("suppressed", 0)
    assert written + reported + log.suppressed == len(gaps)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(min_value=1, max_value=500), rate=rates, slack=st.floats(min_value=0, max_value=1))
def test_traffic_under_the_rate_is_never_suppressed(n: int, rate: int, slack: float) -> None:
    log = DecisionLog("sample", rate)
    gap = (1 + slack) / rate
    assert all(log.allow(T0 + i * gap) for i in range(n))
    assert log.suppressed == 0


@settings(max_examples=200, deadline=None)
@given(moves=st.lists(st.floats(min_value=-100, max_value=0.5, allow_nan=False), min_size=1, max_size=300),
       rate=rates)
def test_clock_stepping_back_grants_nothing(moves: list[float], rate: int) -> None:
    """A wall clock that jumps back (NTP) never yields more lines than time that passed allows."""
    log = DecisionLog("sample", rate)
    t, forward, sent = T0, 0.0, 0
    for m in moves:
        t += m
        forward += max(m, 0.0)
        sent += log.allow(t)
    assert sent <= rate * BURST_SECONDS + rate * forward + 1e-6


def line_fields(now: float, client: str, channel: str, name: bytes, action: str,
                rule: Rule) -> dict[str, Any]:
    """The fields of a line, as the module docstring shows them: the time as datetime writes
    it, the origin, record and decision only when the list has them."""
    fields: dict[str, Any] = {
        "time": datetime.fromtimestamp(now, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "client": client, "channel": channel,
        "name": name.decode("ascii", "backslashreplace"), "action": action,
        "source": rule.source, "category": rule.category, "rule": rule.pattern,
    }
    origin = rule.located()
    fields["origin"] = origin.where if origin is not None else None
    if origin is not None and origin.record_id is not None:
        fields["record_id"] = origin.record_id
    decision = origin.decision if origin is not None else None
    if decision is not None:
        fields["decision"] = {"number": decision.number, "date": decision.date,
                              "authority": decision.authority}
    return fields


def reference_line(now: float, client: str, channel: str, name: bytes, action: str, rule: Rule,
                   suppressed: int) -> str:
    """The line as the fields say it, with ``json.dumps``: what the built line must equal."""
    fields = line_fields(now, client, channel, name, action, rule)
    if suppressed:
        fields["suppressed"] = suppressed
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":"))


RULES = {n: (registry_rule if n == b"standaards.com" else domains_rule)(n)
         for n in (b"standaards.com", b"example.test", b"www.bad.test")}


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(
    st.one_of(st.floats(min_value=0, max_value=4e9, allow_nan=False),
              # next to a second's or a millisecond's edge, where rounding carries
              st.integers(0, 4_000_000).map(lambda s: s * 1000 + 999.9995).map(lambda ms: ms / 1000),
              st.integers(0, 4_000_000_000).map(lambda s: s - 5e-7)),
    st.sampled_from(["192.0.2.7", "2001:db8::7", 'we"ird\\\n']),
    st.sampled_from(["dns", "tls", "quic"]),
    st.binary(max_size=20) | st.sampled_from([b"standaards.com", b"x\xff\"\\.test"]),
    st.sampled_from(["nxdomain", "reset", "sinkhole"]),
    st.sampled_from(sorted(RULES)),
    st.integers(0, 3)), min_size=1, max_size=12))
def test_line_equals_json_of_its_fields(blocks: list[tuple[float, str, str, bytes, str, bytes, int]]) -> None:
    log = DecisionLog("all", 0)
    for now, client, channel, name, action, rule_name, suppressed in blocks:
        rule = RULES[rule_name]
        log.tokens = log.capacity  # every block gets its line; suppressed set by hand
        log.suppressed = suppressed
        got = log.record(now, client, channel, name, action, rule)
        assert got == reference_line(now, client, channel, name, action, rule, suppressed)
