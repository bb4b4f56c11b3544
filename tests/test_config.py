"""Configuration: the documented shape loads, and every mistake is located."""

from __future__ import annotations

import pytest

from blockgate.config import load, parse_addr, parse_duration, parse_size, schema_reference
from blockgate.errors import ConfigError
from blockgate.policy import Action, EdeCode

DOCUMENTED = """\
state_dir: /var/lib/blockgate
sources:
  - name: registry
    format: zi-csv              # rkn-xml | zi-csv | rpz | hosts | domains | adblock | dnsmasq
    path: /srv/registry/dump.csv     # or url: https://..., refresh: 30m (feeds issue)
    action: nxdomain            # nxdomain | nodata | refused | sinkhole | drop | tcp-only
    category: registry
    options: {domain_scope: exact, mask_scope: subtree, https_urls: block-host, http_urls: ignore}
  - name: local
    format: domains
    path: lists/services.txt    # relative paths are relative to the config file
dns:
  listen: ["127.0.0.1:5353", "[::1]:5353"]
  upstreams: ["127.0.0.1:53"]
  workers: 2
sni:
  mode: off                     # off | nfqueue | mirror
metrics:
  listen: "127.0.0.1:9253"
"""


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(text, "t.yaml", "/etc/blockgate")
    return info.value.errors


def test_documented_shape() -> None:
    c = load(DOCUMENTED, "blockgate.yaml", "/etc/blockgate")
    reg, local = c.sources
    assert (reg.name, reg.format, reg.path, reg.action, reg.category, reg.ede) == (
        "registry", "zi-csv", "/srv/registry/dump.csv", Action.NXDOMAIN, "registry",
        EdeCode.CENSORED)
    assert reg.options == {"domain_scope": "exact", "mask_scope": "subtree",
                           "https_urls": "block-host", "http_urls": "ignore"}
    assert (local.path, local.ede, local.line) == ("/etc/blockgate/lists/services.txt",
                                                   EdeCode.BLOCKED, 9)
    assert c.dns["listen"] == ("127.0.0.1:5353", "[::1]:5353")
    assert c.dns["workers"] == 2 and c.dns["timeout"] == 2.0
    assert c.sni["mode"] == "off"  # YAML 1.1 would read `off` as false: kept as written
    assert c.metrics["listen"] == "127.0.0.1:9253"
    assert c.state_dir == "/var/lib/blockgate"


def test_embedded_default_config_is_valid() -> None:
    with open("config/blockgate.yaml", encoding="utf-8") as f:
        c = load(f.read(), "config/blockgate.yaml", "config")
    assert [s.name for s in c.sources] == ["services"]


BAD = [
    ("unknown-top-key", "sources: [{name: a, format: domains, path: x}]\nsoures: 1\n",
     "t.yaml:2: soures: unknown key"),
    ("unknown-source-key", "sources:\n  - name: a\n    format: domains\n    path: x\n    pth: y\n",
     "t.yaml:5: sources[0].pth: unknown key"),
    ("bad-format", "sources:\n  - name: a\n    format: csv\n    path: x\n",
     "t.yaml:3: sources[0].format: 'csv' is not one of"),
    ("bad-action", "sources:\n  - name: a\n    format: domains\n    path: x\n    action: block\n",
     "t.yaml:5: sources[0].action: 'block' is not one of"),
    ("bad-option", "sources:\n  - name: a\n    format: domains\n    path: x\n"
     "    options: {domain_scope: exact}\n", "sources[0].options.domain_scope: not an option of format"),
    ("bad-option-value", "sources:\n  - name: a\n    format: zi-csv\n    path: x\n"
     "    options:\n      mask_scope: everything\n",
     "t.yaml:6: sources[0].options.mask_scope: 'everything' is not one of"),
    ("path-and-url", "sources:\n  - name: a\n    format: domains\n    path: x\n    url: http://h/x\n",
     "t.yaml:2: sources[0]: give exactly one of path or url"),
    ("neither-path-nor-url", "sources:\n  - name: a\n    format: domains\n",
     "sources[0]: give exactly one of path or url"),
    ("duplicate-name", "sources:\n  - {name: a, format: domains, path: x}\n"
     "  - {name: a, format: hosts, path: y}\n", "t.yaml:3: sources[1].name: 'a' already used"),
    ("missing-sources", "dns: {}\n", "t.yaml:1: sources: required key is missing"),
    ("wrong-type-int", "sources: [{name: a, format: domains, path: x}]\ndns:\n  workers: many\n",
     "t.yaml:3: dns.workers: expected an integer"),
    ("bad-address", "sources: [{name: a, format: domains, path: x}]\ndns:\n  listen: [localhost]\n",
     "t.yaml:3: dns.listen: expected ADDRESS:PORT"),
    ("bad-mode", "sources: [{name: a, format: domains, path: x}]\nsni: {mode: inline}\n",
     "t.yaml:2: sni.mode: 'inline' is not one of"),
    ("bad-duration", "sources: [{name: a, url: 'http://h/x', format: rpz, refresh: soon}]\n",
     "sources[0].refresh: expected a duration"),
    ("not-yaml", "sources: [\n", "t.yaml:2: not valid YAML"),
    ("empty", "", "t.yaml:1: the file is empty"),
]


@pytest.mark.parametrize(("text", "expected"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_located_errors(text: str, expected: str) -> None:
    errors = errors_of(text)
    assert any(expected in e for e in errors), errors


def test_all_errors_reported_at_once() -> None:
    errors = errors_of("sources:\n  - name: a\n    format: nope\n    path: x\n"
                       "dns:\n  workers: x\n  bogus: 1\n")
    assert len(errors) == 3


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("30m", 1800), ("2h", 7200),
                                               ("1d", 86400), ("250ms", 0.25), ("90", 90)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_sizes_and_addresses() -> None:
    assert parse_size("64M") == 64 << 20 and parse_size("512KiB") == 512 << 10
    assert parse_addr("[::1]:5353") == ("::1", 5353)
    with pytest.raises(ValueError):
        parse_addr("127.0.0.1:70000")


def test_reference_covers_every_key() -> None:
    names = {row[0] for row in schema_reference()}
    assert {"sources[].format", "dns.listen", "sni.mode", "metrics.listen", "state_dir"} <= names
    assert all(row[3] for row in schema_reference() if not row[0].startswith("log.level"))
