"""The command line, run as a real process on real files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ROOT / "config" / "blockgate.yaml"
SERVICES = ROOT / "config" / "lists" / "services.txt"


def blockgate(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "blockgate", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def services_entries() -> dict[str, int]:
    """name (as written, without the leading '.') -> line, read independently of the parser."""
    out = {}
    for n, line in enumerate(SERVICES.read_text().splitlines(), 1):
        line = line.split("#")[0].strip()
        if line:
            out[line.lstrip(".")] = n
    return out


def test_compile_default_config() -> None:
    r = blockgate("compile", "--config", str(DEFAULT), "--json")
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in r.stdout.splitlines()]
    src, total = records
    entries = services_entries()
    assert src["source"] == "services" and src["loaded"]
    assert src["rules"] == len(entries) == src["units"] == total["rules"]
    subtrees = sum(1 for line in SERVICES.read_text().splitlines() if line.startswith("."))
    assert src["kinds"] == {"block-exact": len(entries) - subtrees, "block-subtree": subtrees}


def test_compile_text_report() -> None:
    r = blockgate("compile", "-c", str(DEFAULT))
    assert r.returncode == 0
    assert "services (domains):" in r.stdout and "total:" in r.stdout


def test_lookup_json() -> None:
    entries = services_entries()
    names = ["www.linkedin.com", "LinkedIn.com.", "wx.qq.com", "qq.com", "example.org",
             "пример.рф", "a..b"]
    r = blockgate("lookup", "-c", str(DEFAULT), "--json", *names)
    assert r.returncode == 0, r.stderr
    got = {rec["name"]: rec for rec in map(json.loads, r.stdout.splitlines())}
    assert set(got) == set(names)
    for rec in got.values():
        assert {"name", "verdict", "source", "kind", "origin"} <= set(rec)
    assert got["www.linkedin.com"]["verdict"] == "block"
    assert got["www.linkedin.com"]["kind"] == "subtree"
    assert got["www.linkedin.com"]["origin"] == f"services.txt:{entries['linkedin.com']}"
    assert got["LinkedIn.com."]["verdict"] == "block"
    assert got["wx.qq.com"]["kind"] == "exact"
    assert got["wx.qq.com"]["origin"] == f"services.txt:{entries['wx.qq.com']}"
    assert got["qq.com"]["verdict"] == "pass" and got["qq.com"]["source"] is None
    assert got["пример.рф"]["key"] == "xn--e1afmkfd.xn--p1ai"
    assert got["a..b"]["verdict"] == "unknown" and "empty-label" in got["a..b"]["error"]


def test_lookup_text() -> None:
    r = blockgate("lookup", "-c", str(DEFAULT), "media.licdn.com", "example.org")
    lines = r.stdout.splitlines()
    assert lines[0].startswith("media.licdn.com  block  subtree licdn.com and below")
    assert lines[1] == "example.org  pass"


def test_check_config_ok_and_bad(tmp_path: Path) -> None:
    assert blockgate("check-config", "-c", str(DEFAULT)).returncode == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources:\n  - name: a\n    format: domains\n    path: x\n    action: bloc\n")
    r = blockgate("check-config", "-c", str(bad))
    assert r.returncode == 2
    assert f"{bad}:5: sources[0].action: 'bloc' is not one of" in r.stderr


def test_bad_config_changes_nothing_and_names_the_file(tmp_path: Path) -> None:
    r = blockgate("compile", "-c", str(tmp_path / "missing.yaml"))
    assert r.returncode == 2 and "missing.yaml: cannot read" in r.stderr


@pytest.mark.parametrize("layout", ["dir", "glob"])
def test_split_sources_and_missing_files(tmp_path: Path, layout: str) -> None:
    parts = tmp_path / "parts"
    parts.mkdir()
    (parts / "dump-00.txt").write_text("a.example\nb.example\n")
    (parts / "dump-01.txt").write_text("# second\nc.example\n")
    path = "parts" if layout == "dir" else "parts/dump-*.txt"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"sources:\n  - {{name: split, format: domains, path: '{path}'}}\n"
                   "  - {name: gone, format: domains, path: nowhere.txt}\n")
    r = blockgate("lookup", "-c", str(cfg), "--json", "c.example")
    assert json.loads(r.stdout)["origin"] == "dump-01.txt:2"
    assert "source gone not loaded" in r.stderr
    r = blockgate("compile", "-c", str(cfg))
    assert r.returncode == 1 and "gone (domains): NOT LOADED" in r.stdout


def test_lookup_reports_registry_record_and_decision(tmp_path: Path) -> None:
    fixtures = ROOT / "tests" / "fixtures" / "lists"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "sources:\n"
        f"  - {{name: registry, format: rkn-xml, path: '{fixtures / 'rkn-dump-fragment-2019-a.xml'}'}}\n"
        f"  - {{name: mirror, format: zi-csv, path: '{fixtures / 'zi-dump-2018-mid-sample.csv'}'}}\n")
    r = blockgate("lookup", "-c", str(cfg), "--json", "standaards.com", "www.linkedin.com",
                  "pontorez.com")
    got = {rec["name"]: rec for rec in map(json.loads, r.stdout.splitlines())}
    std = got["standaards.com"]
    assert (std["verdict"], std["source"], std["kind"], std["record_id"]) == (
        "block", "registry", "exact", 1676124)
    assert std["decision"] == {"number": "2а-4235/2019", "date": "2019-06-25", "authority": "суд"}
    li = got["www.linkedin.com"]  # line 16 of the 2018 sample: *.linkedin.com, 2-3491/2016
    assert (li["verdict"], li["kind"], li["origin"]) == (
        "block", "subtree", "zi-dump-2018-mid-sample.csv:16")
    assert li["decision"]["number"] == "2-3491/2016"
    assert got["pontorez.com"]["verdict"] == "pass"  # an http:// URL record blocks no name
    r = blockgate("compile", "-c", str(cfg), "--issues")
    # 47 rows list an address in the domain field: counted, not issues
    assert "ip-domain 47" in r.stdout and "issues:" not in r.stdout
    (tmp_path / "bad.txt").write_text("good.example\nexa mple.com\n")
    with cfg.open("a") as f:
        f.write(f"  - {{name: local, format: domains, path: '{tmp_path / 'bad.txt'}'}}\n")
    r = blockgate("compile", "-c", str(cfg), "--issues")
    assert "bad.txt:2: bad-character" in r.stdout
