"""The configuration: YAML text in, typed frozen objects out, or every located error.

The schema below is the single description of every key: the validator walks it, and
``blockgate docs`` renders it as the configuration reference. Nothing here reads files: the
caller hands in the text, the file name (for messages) and the directory that relative
paths are relative to.

Errors name the file, the line and the key (``blockgate.yaml:12: sources[1].format: ...``)
and all of them are reported at once; a config with any error is refused as a whole.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any, Final

import yaml

from blockgate.errors import ConfigError
from blockgate.lists import FORMATS, format_options
from blockgate.policy import ACTION_NAMES, EDE_NAMES, Action, EdeCode, default_ede

# -- typed result ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SourceConfig:
    name: str
    format: str
    path: str | None
    url: str | None
    refresh: float
    action: Action
    category: str | None
    ede: EdeCode
    options: Mapping[str, str]
    sha256: str | None
    sha256_url: str | None
    max_issue_ratio: float
    min_rules: int
    max_shrink: float
    timeout: float
    max_bytes: int
    ca_file: str | None
    line: int


@dataclass(frozen=True, slots=True)
class Section:
    """A validated mapping section (``dns``, ``sni``, ``metrics``, ``log``): key -> value."""

    values: Mapping[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.values[key]


@dataclass(frozen=True, slots=True)
class Config:
    file: str
    state_dir: str
    on_missing_list: str
    run_as: str | None
    sources: tuple[SourceConfig, ...]
    dns: Section
    sni: Section
    metrics: Section
    log: Section


# -- schema ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Key:
    """One configuration key: how to read it, its default, and what it means."""

    kind: str  # str | int | float | bool | duration | size | ratio | addr | addrs | cidrs | ...
    default: Any = None
    doc: str = ""
    choices: tuple[str, ...] = ()
    required: bool = False


_SOURCE: Final[dict[str, Key]] = {
    "name": Key("name", required=True, doc="Unique name; appears in logs, metrics and EDE text."),
    "format": Key("str", required=True, choices=FORMATS, doc="List format."),
    "path": Key("path", doc="File, directory or glob (split files form one source); relative "
                            "paths are relative to the config file. Exactly one of path/url."),
    "url": Key("url", doc="http(s) URL of the list (fetched by the daemon)."),
    "refresh": Key("duration", 1800.0, doc="How often a url source is fetched (e.g. 30m)."),
    "action": Key("str", "nxdomain", choices=tuple(ACTION_NAMES), doc="What a DNS query for a "
                  "blocked name gets; rules with their own action (RPZ, dnsmasq) keep it."),
    "category": Key("str", doc="Free label for metrics and logs (e.g. registry, malware)."),
    "ede": Key("str", choices=tuple(EDE_NAMES), doc="Extended DNS Error code of block answers: "
               "censored (16, default for registry formats), blocked (15), filtered (17)."),
    "options": Key("options", {}, doc="Format options (see the list formats section)."),
    "sha256": Key("sha256", doc="Pinned SHA-256 of the list body; any other body is refused."),
    "sha256_url": Key("url", doc="URL of a sidecar file holding the body's SHA-256."),
    "max_issue_ratio": Key("ratio", 0.01, doc="Refuse a new list whose located issues exceed "
                           "this share of its lines/records."),
    "min_rules": Key("int", 1, doc="Refuse a new list with fewer rules."),
    "max_shrink": Key("ratio", 0.5, doc="Refuse a new list that lost more than this share of "
                      "the last good list's rules."),
    "timeout": Key("duration", 60.0, doc="Total time allowed for one download."),
    "max_bytes": Key("size", 512 << 20, doc="Largest accepted download (e.g. 512M)."),
    "ca_file": Key("path", doc="CA bundle for https verification (default: system store)."),
}

_DNS: Final[dict[str, Key]] = {
    "listen": Key("addrs", ("127.0.0.1:5353",), doc="UDP and TCP listen addresses."),
    "upstreams": Key("addrs", ("127.0.0.1:53",), doc="Resolvers that allowed names go to."),
    "workers": Key("int", 0, doc="Worker processes sharing the port (0: one per CPU)."),
    "timeout": Key("duration", 2.0, doc="Upstream timeout before failing over."),
    "retransmit": Key("duration", 0.5, doc="A UDP query its upstream has not answered after this "
                      "long is sent to it once more (same id); 0: never."),
    "max_inflight": Key("int", 65536, doc="Upstream queries in flight per worker."),
    "tcp_idle_timeout": Key("duration", 10.0, doc="Idle TCP client connections are closed."),
    "tcp_max_connections": Key("int", 1024, doc="TCP client connections per worker."),
    "inspect_cnames": Key("bool", True, doc="Apply the rules to CNAME/DNAME targets in answers."),
    "bypass_clients": Key("cidrs", (), doc="Clients never filtered."),
    "allow_clients": Key("cidrs", ("127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12",
                                    "192.168.0.0/16", "fc00::/7"),
                         doc="Clients allowed to query at all; others get REFUSED."),
    "sinkhole_a": Key("ips4", ("0.0.0.0",), doc="A records of the sinkhole action."),
    "sinkhole_aaaa": Key("ips6", ("::",), doc="AAAA records of the sinkhole action."),
    "block_ttl": Key("int", 300, doc="TTL of synthesized answers and of the SOA."),
    "soa_mname": Key("str", "blockgate.invalid", doc="SOA MNAME in negative block answers."),
    "soa_rname": Key("str", "hostmaster.blockgate.invalid", doc="SOA RNAME."),
}

_SNI: Final[dict[str, Key]] = {
    "mode": Key("str", "off", choices=("off", "nfqueue", "mirror"), doc="SNI enforcement mode."),
    "queues": Key("ints", (0,), doc="NFQUEUE numbers (one worker each)."),
    "interface": Key("str", doc="Mirror-port interface for mode mirror."),
    "rst_burst": Key("int", 3, doc="Extra RSTs at offset sequence numbers (mirror mode)."),
    "ports": Key("ints", (443,), doc="TCP and UDP ports inspected."),
    "mark": Key("int", 0x1B, doc="conntrack mark set on blocked flows."),
    "max_flows": Key("int", 65536, doc="Flows in reassembly at once, per worker."),
    "max_flow_bytes": Key("size", 16384, doc="Bytes buffered per flow for a ClientHello."),
    "flow_timeout": Key("duration", 10.0, doc="Idle flows are forgotten."),
}

_METRICS: Final[dict[str, Key]] = {
    "listen": Key("addr", "127.0.0.1:9253", doc="Prometheus /metrics endpoint ('' disables)."),
}

_LOG: Final[dict[str, Key]] = {
    "level": Key("str", "info", choices=("debug", "info", "warning", "error"),
                 doc="Least severe messages written to stderr (the journal under systemd)."),
    "decisions": Key("str", "sample", choices=("all", "sample", "off"),
                     doc="Log blocks as JSON lines: all, a rate-limited sample, or none."),
    "decisions_per_second": Key("int", 100, doc="Rate limit of the decision log."),
}

_TOP: Final[dict[str, Key]] = {
    "state_dir": Key("path", "state", doc="Where last good lists and their validators are kept."),
    "on_missing_list": Key("str", "serve", choices=("serve", "refuse"),
                           doc="A source with no list at start: serve without it, or exit."),
    "run_as": Key("str", doc="User to switch to after binding ports when started as root."),
    "sources": Key("sources", required=True, doc="Blocklists, in precedence order."),
    "dns": Key("section"), "sni": Key("section"), "metrics": Key("section"), "log": Key("section"),
}
SECTIONS: Final[dict[str, dict[str, Key]]] = {
    "": _TOP, "sources[]": _SOURCE, "dns": _DNS, "sni": _SNI, "metrics": _METRICS, "log": _LOG}

# -- reading --------------------------------------------------------------------------------

_DURATION: Final = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?$")
_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE: Final = re.compile(r"^(\d+)\s*([KMG]i?B?|B)?$", re.I)
_SHA256: Final = re.compile(r"^[0-9a-fA-F]{64}$")


class _Reader:
    """Walks YAML nodes against the schema, collecting ``file:line: key: reason`` errors."""

    def __init__(self, file: str, base: PurePath) -> None:
        self.file = file
        self.base = base
        self.errors: list[str] = []

    def error(self, node: yaml.Node | None, key: str, reason: str) -> None:
        line = node.start_mark.line + 1 if node is not None else 1
        self.errors.append(f"{self.file}:{line}: {key}: {reason}" if key else
                           f"{self.file}:{line}: {reason}")

    def mapping(self, node: yaml.Node, where: str,
                schema: Mapping[str, Key]) -> dict[str, tuple[Any, yaml.Node | None]]:
        """Read a mapping node: known keys converted, unknown keys and missing ones reported."""
        out: dict[str, tuple[Any, yaml.Node | None]] = {}
        if not isinstance(node, yaml.MappingNode):
            self.error(node, where, "expected a mapping")
            return out
        for knode, vnode in node.value:
            key = str(knode.value)
            path = f"{where}.{key}" if where else key
            spec = schema.get(key)
            if spec is None:
                self.error(knode, path, f"unknown key (known: {', '.join(sorted(schema))})")
            elif key in out:
                self.error(knode, path, "given twice")
            else:
                out[key] = (self.value(vnode, path, spec), vnode)
        for key, spec in schema.items():
            if spec.required and key not in out:
                self.error(node, f"{where}.{key}" if where else key, "required key is missing")
        return out

    def value(self, node: yaml.Node, path: str, spec: Key) -> Any:
        reader = _READERS.get(spec.kind)
        if reader is None:  # "sources", "section", "options": handled by the caller
            return node
        try:
            result = reader(self, node)
        except (ValueError, TypeError) as exc:
            self.error(node, path, str(exc))
            return spec.default
        if spec.choices and result not in spec.choices:
            self.error(node, path, f"{result!r} is not one of: {', '.join(spec.choices)}")
            return spec.default
        return result


def _scalar(node: yaml.Node) -> str:
    if not isinstance(node, yaml.ScalarNode):
        raise TypeError("expected a single value")
    return str(node.value)


def _items(node: yaml.Node) -> list[str]:
    if isinstance(node, yaml.ScalarNode):
        return [str(node.value)] if node.value != "" else []
    if not isinstance(node, yaml.SequenceNode):
        raise TypeError("expected a list")
    return [_scalar(n) for n in node.value]


def _read_bool(_r: _Reader, node: yaml.Node) -> bool:
    text = _scalar(node).lower()
    if text in ("true", "yes", "on", "1"):
        return True
    if text in ("false", "no", "off", "0"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _read_int(_r: _Reader, node: yaml.Node) -> int:
    text = _scalar(node)
    try:
        value = int(text, 0)
    except ValueError:
        raise ValueError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise ValueError("must not be negative")
    return value


def parse_duration(text: str) -> float:
    m = _DURATION.match(text.strip())
    if not m:
        raise ValueError(f"expected a duration like 30s, 5m, 2h, got {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_size(text: str) -> int:
    m = _SIZE.match(text.strip())
    if not m:
        raise ValueError(f"expected a size like 64M, got {text!r}")
    unit = (m.group(2) or "B").upper()[:1]
    return int(m.group(1)) * {"B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[unit]


def parse_addr(text: str) -> tuple[str, int]:
    """``host:port`` / ``[v6]:port`` -> (host, port); hosts must be IP addresses."""
    m = re.match(r"^\[([^\]]+)\]:(\d+)$", text) or re.match(r"^([^:\[\]]+):(\d+)$", text)
    if not m:
        raise ValueError(f"expected ADDRESS:PORT or [IPV6]:PORT, got {text!r}")
    host, port = m.group(1), int(m.group(2))
    ipaddress.ip_address(host)
    if not 0 < port < 65536:
        raise ValueError(f"port out of range in {text!r}")
    return host, port


def _checked_addr(text: str, allow_empty: bool = False) -> str:
    """The address as written, once ``parse_addr`` accepts it."""
    if not (allow_empty and text == ""):
        parse_addr(text)
    return text


def _read_ratio(_r: _Reader, node: yaml.Node) -> float:
    value = float(_scalar(node))
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"expected a ratio between 0 and 1, got {value}")
    return value


def _read_ips(version: int) -> Callable[[_Reader, yaml.Node], tuple[str, ...]]:
    def read(_r: _Reader, node: yaml.Node) -> tuple[str, ...]:
        out = []
        for item in _items(node):
            ip = ipaddress.ip_address(item)
            if ip.version != version:
                raise ValueError(f"{item} is not an IPv{version} address")
            out.append(str(ip))
        return tuple(out)
    return read


def _read_path(r: _Reader, node: yaml.Node) -> str:
    text = _scalar(node)
    if not text:
        raise ValueError("empty path")
    path = PurePath(text)
    return str(path if path.is_absolute() else r.base / path)


def _read_url(_r: _Reader, node: yaml.Node) -> str:
    text = _scalar(node)
    if not re.match(r"^https?://[^/\s]+", text):
        raise ValueError(f"expected an http:// or https:// URL, got {text!r}")
    return text


def _read_name(_r: _Reader, node: yaml.Node) -> str:
    text = _scalar(node)
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$", text):
        raise ValueError(f"source names are 1-63 of [A-Za-z0-9_.-], got {text!r}")
    return text


def _read_sha256(_r: _Reader, node: yaml.Node) -> str:
    text = _scalar(node)
    if not _SHA256.match(text):
        raise ValueError("expected 64 hex digits")
    return text.lower()


_READERS: Final[dict[str, Callable[[_Reader, yaml.Node], Any]]] = {
    "str": lambda _r, n: _scalar(n),
    "name": _read_name,
    "int": _read_int,
    "bool": _read_bool,
    "duration": lambda _r, n: parse_duration(_scalar(n)),
    "size": lambda _r, n: parse_size(_scalar(n)),
    "ratio": _read_ratio,
    "path": _read_path,
    "url": _read_url,
    "sha256": _read_sha256,
    "addr": lambda _r, n: _checked_addr(_scalar(n), allow_empty=True),
    "addrs": lambda _r, n: tuple(_checked_addr(i) for i in _items(n)),
    "cidrs": lambda _r, n: tuple(str(ipaddress.ip_network(i, strict=False)) for i in _items(n)),
    "ints": lambda _r, n: tuple(int(i, 0) for i in _items(n)),
    "ips4": _read_ips(4),
    "ips6": _read_ips(6),
}


def _options(r: _Reader, node: yaml.Node, path: str, fmt: str) -> dict[str, str]:
    allowed = format_options(fmt)
    out: dict[str, str] = {}
    if not isinstance(node, yaml.MappingNode):
        r.error(node, path, "expected a mapping of format options")
        return out
    for knode, vnode in node.value:
        key = str(knode.value)
        choices = allowed.get(key)
        if choices is None:
            known = ", ".join(sorted(allowed)) or "none"
            r.error(knode, f"{path}.{key}", f"not an option of format {fmt} (options: {known})")
            continue
        try:
            value = _scalar(vnode)
        except TypeError as exc:
            r.error(vnode, f"{path}.{key}", str(exc))
            continue
        if choices and value not in choices:
            r.error(vnode, f"{path}.{key}", f"{value!r} is not one of: {', '.join(choices)}")
            continue
        out[key] = value
    return out


def _source(r: _Reader, node: yaml.Node, i: int) -> SourceConfig | None:
    where = f"sources[{i}]"
    before = len(r.errors)
    got = r.mapping(node, where, _SOURCE)
    val = {k: v for k, (v, _n) in got.items()}

    def get(key: str) -> Any:
        return val[key] if key in val else _SOURCE[key].default

    fmt = get("format")
    options: dict[str, str] = {}
    if "options" in got and fmt in FORMATS:
        options = _options(r, got["options"][1] or node, f"{where}.options", fmt)
    if ("path" in val) == ("url" in val):
        r.error(node, where, "give exactly one of path or url")
    if len(r.errors) > before:
        return None
    ede = EDE_NAMES[val["ede"]] if "ede" in val else default_ede(fmt)
    return SourceConfig(
        name=val["name"], format=fmt, path=val.get("path"), url=val.get("url"),
        refresh=get("refresh"), action=ACTION_NAMES[get("action")], category=val.get("category"),
        ede=ede, options=options, sha256=val.get("sha256"), sha256_url=val.get("sha256_url"),
        max_issue_ratio=get("max_issue_ratio"), min_rules=get("min_rules"),
        max_shrink=get("max_shrink"), timeout=get("timeout"), max_bytes=get("max_bytes"),
        ca_file=val.get("ca_file"), line=node.start_mark.line + 1)


def _sources(r: _Reader, node: yaml.Node) -> tuple[SourceConfig, ...]:
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        r.error(node, "sources", "expected a non-empty list of sources")
        return ()
    out: list[SourceConfig] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(node.value):
        src = _source(r, item, i)
        if src is None:
            continue
        if src.name in seen:
            r.error(item, f"sources[{i}].name", f"{src.name!r} already used on line {seen[src.name]}")
            continue
        seen[src.name] = src.line
        out.append(src)
    return tuple(out)


def _section(r: _Reader, got: Mapping[str, tuple[Any, yaml.Node | None]], name: str) -> Section:
    schema = SECTIONS[name]
    values = {k: spec.default for k, spec in schema.items()}
    node = got[name][1] if name in got else None
    if node is not None and not (isinstance(node, yaml.ScalarNode) and node.value in ("", "null", "~")):
        values.update({k: v for k, (v, _n) in r.mapping(node, name, schema).items()})
    return Section(values)


def load(text: str, file: str = "blockgate.yaml", base: str | PurePath = ".") -> Config:
    """Validate a configuration. raises only ConfigError (with every located error)."""
    r = _Reader(file, PurePath(base))
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        raise ConfigError([f"{file}:{line}: not valid YAML: {getattr(exc, 'problem', exc)}"]) from None
    if root is None:
        raise ConfigError([f"{file}:1: the file is empty"])
    got = r.mapping(root, "", _TOP)
    sources = _sources(r, got["sources"][1]) if "sources" in got and got["sources"][1] else ()
    sections = {name: _section(r, got, name) for name in ("dns", "sni", "metrics", "log")}
    if r.errors:
        raise ConfigError(r.errors)

    def top(key: str) -> Any:
        return got[key][0] if key in got else _TOP[key].default

    state = top("state_dir")
    return Config(file=file, state_dir=str(state if PurePath(state).is_absolute()
                                           else PurePath(base) / state),
                  on_missing_list=top("on_missing_list"), run_as=top("run_as"),
                  sources=sources, **sections)


def schema_reference() -> list[tuple[str, str, str, str]]:
    """Rows ``(key, type, default, doc)`` of every key, for the generated reference."""
    rows: list[tuple[str, str, str, str]] = []
    for section, keys in SECTIONS.items():
        for key, spec in keys.items():
            if spec.kind == "section":
                continue
            name = f"{section}.{key}" if section else key
            default = "(required)" if spec.required else ("" if spec.default is None
                                                          else _show(spec.default))
            doc = spec.doc + (f" One of: {', '.join(spec.choices)}." if spec.choices else "")
            rows.append((name, spec.kind, default, doc))
    return rows


def _show(value: Any) -> str:
    if isinstance(value, tuple | list):
        return ", ".join(str(v) for v in value) or "(none)"
    if isinstance(value, dict):
        return "{}"
    return str(value)


def source_names(config: Config) -> Sequence[str]:
    return [s.name for s in config.sources]
