"""``blockgate replay`` as a process: every capture against tshark's truth, JSON and text
output, the summary, unreadable files, and Suricata's IPS expectation for a split hello."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

PCAPS = Path(__file__).parent / "fixtures" / "pcaps"
FILES = sorted(p.name for p in PCAPS.iterdir() if p.suffix in (".pcap", ".pcapng"))
# tests/fixtures/pcaps/README.md: tshark does not report the ClientHello resent after a Retry
EXTRA = {("quic-v1-retry.pcap", 6, "quic", "www.gravatar.com")}


def config(tmp: Path, names: list[str], ports: list[int] | None = None) -> Path:
    (tmp / "block.txt").write_text("".join(f"{n}\n" for n in names))
    cfg: dict[str, Any] = {"sources": [{"name": "registry", "format": "domains", "path": "block.txt",
                                        "category": "court", "options": {"scope": "subtree"}}]}
    if ports:
        cfg["sni"] = {"ports": ports}
    path = tmp / "blockgate.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def replay(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "blockgate", "replay", "--config", str(cfg), *args],
                          capture_output=True, text=True, timeout=120)


def truth() -> set[tuple[str, int, str, str]]:
    rows = set()
    for name in FILES:
        with open(PCAPS / f"{name}.truth.tsv") as f:
            for row in csv.DictReader(f, delimiter="\t"):
                if row["kind"].startswith("dns_response"):
                    continue
                shown = "" if row["name"].startswith("<") else row["name"].lower()
                rows.add((name, int(row["frame_number"]), row["proto"], shown))
    return rows


def test_every_capture_matches_tshark(tmp_path: Path) -> None:
    cfg = config(tmp_path, ["google.com", "cloudflare-ech.com"], [443, 4443, 8013, 8443])
    res = replay(cfg, "--json", *(str(PCAPS / f) for f in FILES))
    assert res.returncode == 0, res.stderr
    lines = [json.loads(x) for x in res.stdout.splitlines()]
    summary = lines.pop()
    assert summary["summary"] and summary["files"] == len(FILES) and summary["unreadable"] == 0
    got = set()
    for rec in lines:
        assert {"frame", "proto", "src", "dst", "sport", "dport", "name", "verdict", "source"} <= rec.keys()
        decided = rec["event"] in ("client_hello", "dns_query")
        if decided or (rec["proto"], rec["event"]) == ("dns", "malformed"):
            for n in rec["names"] or [""]:
                got.add((Path(rec["file"]).name, rec["frame"], rec["proto"], n))
    assert got == truth() | EXTRA
    by_frame = {(Path(r["file"]).name, r["frame"]): r for r in lines if r["event"] == "client_hello"}
    blocked = by_frame["tls-ch-split-3seg-mtu300.pcap", 6]
    assert (blocked["verdict"], blocked["source"], blocked["category"]) == ("block", "registry", "court")
    assert (blocked["src"], blocked["sport"], blocked["dst"], blocked["dport"]) == \
        ("10.20.0.14", 38576, "142.251.111.105", 443)
    assert by_frame["tls13-ech-cloudflare.pcap", 7]["ech"] is True
    assert by_frame["tls13-ech-cloudflare.pcap", 7]["verdict"] == "block"
    assert by_frame["tls-no-sni.pcap", 4]["verdict"] == "unknown"
    assert by_frame["tls12-sni-raw-githubusercontent.pcap", 4]["verdict"] == "pass"
    assert summary["client_hellos"] == len([r for r in lines if r["event"] == "client_hello"])


def test_default_ports_miss_tls_elsewhere_and_text_output(tmp_path: Path) -> None:
    """Only 443 by default: the 8013 capture (found by tshark's heuristics) is not inspected."""
    cfg = config(tmp_path, ["www.google.com"])
    files = [str(PCAPS / "tls-ch-split-2seg-port8013.pcap"), str(PCAPS / "tls-ch-split-3seg-mtu300.pcap")]
    res = replay(cfg, *files)
    assert res.returncode == 0, res.stderr
    out = res.stdout.splitlines()
    assert out[0] == (f"{files[1]}:6 tls 10.20.0.14:38576 -> 142.251.111.105:443 www.google.com block "
                      "source=registry rule=www.google.com and below")
    assert out[-1].startswith("summary: 2 files (0 unreadable), ")
    assert len(out) == 2
    res = replay(cfg, "--ports", "8013", files[0])
    assert "west-tdm.codmwest.com pass" in res.stdout


def test_unreadable_file_exits_1_and_the_others_still_play(tmp_path: Path) -> None:
    cfg = config(tmp_path, [])
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"not a capture at all")
    res = replay(cfg, str(junk), str(tmp_path / "missing.pcap"), str(PCAPS / "tls-no-sni.pcap"))
    assert res.returncode == 1
    assert "junk.pcap: cannot read" in res.stderr and "missing.pcap: cannot read" in res.stderr
    assert "tls-no-sni.pcap:4 tls" in res.stdout
    assert "(2 unreadable)" in res.stdout.splitlines()[-1]


def test_truncated_capture_is_replayed_up_to_the_break(tmp_path: Path) -> None:
    cut = tmp_path / "cut.pcap"
    data = (PCAPS / "tls13-ipv6-sni.pcap").read_bytes()
    cut.write_bytes(data[: len(data) - 7])
    res = replay(config(tmp_path, []), str(cut))
    assert res.returncode == 0
    assert "stops at record" in res.stderr
    assert "dns.google" in res.stdout


def test_many_files_lose_and_reorder_no_line(tmp_path: Path) -> None:
    """Lines are written in batches: every file's lines, whole and in order, however the
    batches fall (the captures given again and again, well past a batch, both outputs)."""
    cfg = config(tmp_path, ["google.com"], [443, 4443, 8013, 8443])
    files = [str(PCAPS / f) for f in ("quic-draft29-chrome-reordered-crypto.pcapng",
                                      "dns-tcp-pipelined-20q.pcap", "tls-ch-split-3seg-mtu300.pcap")]
    for args in (["--json"], []):
        each = [replay(cfg, *args, f).stdout.splitlines()[:-1] for f in files]
        assert sum(map(len, each)) > 130
        res = replay(cfg, *args, *(files * 7))
        assert res.returncode == 0, res.stderr
        assert res.stdout.splitlines()[:-1] == [x for _ in range(7) for lines in each for x in lines]


@pytest.mark.parametrize(("names", "verdicts"), [
    (["www.google.com"], {6: "block"}),
    (["example.org"], {6: "pass"}),
], ids=["sni-blocked", "sni-allowed"])
def test_split_hello_decided_on_the_completing_frame(tmp_path: Path, names: list[str],
                                                     verdicts: dict[int, str]) -> None:
    """suricata-verify rule-hooks/tls-handshake-0{1,2}: the 3-segment ClientHello is decided
    at frame 6 (drops would start there), never on frames 4-5."""
    res = replay(config(tmp_path, names), "--json", str(PCAPS / "tls-ch-split-3seg-mtu300.pcap"))
    recs = [json.loads(x) for x in res.stdout.splitlines()[:-1]]
    assert {r["frame"]: r["verdict"] for r in recs} == verdicts


def test_json_lines_are_exactly_what_the_json_module_writes(tmp_path: Path) -> None:
    """``json_line`` writes the record directly; it must be ``json.dumps`` of ``record``,
    byte for byte, for every event of every capture and for awkward names."""
    from test_sniengine import matcher

    from blockgate.adapters.replay import json_line, record
    from blockgate.engine import Event, SniEngine
    from blockgate.packet import FlowId, ip_offset
    from blockgate.pcap import parse_capture
    from blockgate.sniengine import Settings
    from blockgate.stats import Stats
    from blockgate.tls import ClientHello
    from blockgate.verdict import Verdict

    match = matcher(["google.com", "cloudflare-ech.com"], ["dns.google"]).match
    events: list[Event] = []
    for name in FILES:
        engine = SniEngine(match, Settings(frozenset({443, 4443, 8013, 8443})), Stats())
        for rec in parse_capture((PCAPS / name).read_bytes()):
            try:
                at = ip_offset(rec.linktype, rec.data)
            except Exception:
                continue
            events.extend(engine.on_packet(rec.data[at:], rec.ts).events)
        events.extend(engine.finish(1e12))
    assert len(events) > 100 and any(e.rule is not None for e in events)
    flow = FlowId(6, bytes(16), bytes(range(16)), 1, 443)
    odd = ClientHello((b'a"b\\c', "ü".encode(), b"\x00\x7f"), alpn=(b"h2", b'"'), ech=True,
                      anomalies=("dup-ext",))
    events.append(Event("client_hello", "tls", flow, Verdict.UNKNOWN, odd.names[0], odd.names, None, odd,
                        "x\ny"))
    for i, e in enumerate(events):
        path = ["plain.pcap", 'dir "quoted"/\u00e9.pcap'][i % 2]
        want = json.dumps(record(path, i + 1, e), ensure_ascii=False) + "\n"
        assert json_line(json.dumps(path, ensure_ascii=False), i + 1, e) == want


# Addresses the C formatter and ``ipaddress`` are most likely to write differently: runs of
# zero groups of every length and place, IPv4-mapped, IPv4-compatible and NAT64 forms.
_GROUP = st.sampled_from([0, 0, 0, 1, 0xFFFF, 0x64, 0xFF9B]) | st.integers(0, 0xFFFF)


@settings(max_examples=3000, deadline=None)
@given(st.lists(_GROUP, min_size=8, max_size=8) | st.binary(min_size=4, max_size=4).map(
    lambda v4: [0, 0, 0, 0, 0, 0xFFFF, v4[0] << 8 | v4[1], v4[2] << 8 | v4[3]]))
def test_addresses_are_written_as_ipaddress_writes_them(groups: list[int]) -> None:
    """``address`` formats IPv6 with ``inet_ntop``: the text must be ``ipaddress``'s."""
    import ipaddress

    from blockgate.adapters.replay import address

    raw = b"".join(g.to_bytes(2, "big") for g in groups)
    assert address.__wrapped__(raw) == str(ipaddress.ip_address(raw))
    assert address.__wrapped__(raw[-4:]) == str(ipaddress.ip_address(raw[-4:]))
