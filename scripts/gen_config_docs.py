#!/usr/bin/env python3
"""Write docs/configuration.md from the config schema (``blockgate.config.SECTIONS``).

    scripts/gen_config_docs.py           # (re)write docs/configuration.md (make docs)
    scripts/gen_config_docs.py --check   # exit 1 if the committed file is not current

Every key of every section gets its type, default, choices and doc string; the format
options table comes from each list format's ``OPTIONS``. A key kind without a description
below stops the script, so a new kind cannot land undocumented.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from blockgate.config import SECTIONS, Key
from blockgate.lists import FORMATS, format_options

OUT = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"

KINDS = {
    "str": "string",
    "name": "name: 1-63 of `A-Z a-z 0-9 _ . -`",
    "int": "integer ≥ 0 (`0x` hex accepted)",
    "bool": "`true` or `false`",
    "duration": "duration: `500ms`, `30s`, `5m`, `2h`, `1d` (a bare number is seconds)",
    "size": "size in bytes: `16384`, `64K`, `512M`, `1G`",
    "ratio": "ratio from 0 to 1",
    "path": "path (relative to the config file's directory)",
    "url": "`http://` or `https://` URL",
    "sha256": "64 hex digits",
    "addr": "`ADDRESS:PORT` or `[IPV6]:PORT`",
    "addrs": "list of `ADDRESS:PORT` / `[IPV6]:PORT`",
    "cidrs": "list of networks (`192.0.2.0/24`, `2001:db8::/32`; a bare address is one host)",
    "ints": "list of integers",
    "ips4": "list of IPv4 addresses",
    "ips6": "list of IPv6 addresses",
    "options": "mapping of format options (see [Format options](#format-options))",
    "sources": "list of sources (see [`sources[]`](#sources))",
}
TITLES = {"": "Top level", "sources[]": "sources[]"}
INTRO = {
    "": "Keys at the top of the file.",
    "sources[]": "Each entry of `sources:` is one blocklist; the list order is the precedence "
                 "order (between block rules at the same name, the source listed first wins).",
    "dns": "The DNS service.",
    "sni": "TLS/QUIC server-name enforcement.",
    "metrics": "The Prometheus endpoint (see [metrics.md](metrics.md)).",
    "log": "Logging. Logs go to stderr (the journal under systemd); the decision log writes "
           "one JSON line per block.",
}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _size(n: int) -> str:
    for unit, size in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


def default(spec: Key) -> str:
    if spec.required:
        return "required"
    value: Any = spec.default
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if spec.kind == "duration":
        return f"`{_duration(float(value))}`"
    if spec.kind == "size":
        return f"`{_size(int(value))}`"
    if isinstance(value, tuple | list):
        return "`[" + ", ".join(f'"{v}"' if isinstance(v, str) else str(v) for v in value) + "]`"
    if isinstance(value, dict):
        return "`{}`"
    if value == "":
        return '`""`'
    return f"`{value}`"


def section_table(name: str, keys: dict[str, Key]) -> list[str]:
    head = TITLES.get(name, name)
    lines = [f"## {head}" if name in TITLES else f"## `{head}`", "", INTRO[name], "",
             "| key | type | default | choices | meaning |", "|---|---|---|---|---|"]
    for key, spec in keys.items():
        if spec.kind == "section":
            continue
        if spec.kind not in KINDS:
            raise SystemExit(f"config key {name}.{key}: kind {spec.kind!r} has no description in {__file__}")
        choices = ", ".join(f"`{c}`" for c in spec.choices)
        lines.append(f"| `{key}` | {_cell(KINDS[spec.kind])} | {_cell(default(spec))} | {choices} "
                     f"| {_cell(spec.doc)} |")
    return [*lines, ""]


def options_table() -> list[str]:
    lines = ["## Format options", "", "`sources[].options` by format; the first value is the default.", "",
             "| format | option | values |", "|---|---|---|"]
    for fmt in FORMATS:
        opts = format_options(fmt)
        if not opts:
            lines.append(f"| `{fmt}` | (none) | |")
        for opt, allowed in opts.items():
            values = ", ".join(f"`{v}`" for v in allowed) if allowed else "free text"
            lines.append(f"| `{fmt}` | `{opt}` | {values} |")
    return [*lines, ""]


def render() -> str:
    lines = ["# Configuration reference", "",
             "Generated from the schema in `src/blockgate/config.py` by `make docs`"
             " (`scripts/gen_config_docs.py`); do not edit by hand. The commented example is"
             " `config/blockgate.yaml`; the file is checked with `blockgate check-config --config F`.",
             "Unknown keys and wrong types are refused with `file:line: key: reason`, all of them at once.",
             "", "Sections: " + ", ".join(
                 f"[{TITLES.get(n, n)}](#{'top-level' if n == '' else n.strip('[]').replace('_', '-')})"
                 for n in SECTIONS) + ", [format options](#format-options).", ""]
    for name, keys in SECTIONS.items():
        lines += section_table(name, keys)
    lines += options_table()
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--check", action="store_true", help="exit 1 if the file is not current")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        current = OUT.read_text(encoding="utf-8") if OUT.exists() else ""
        if current != text:
            print(f"{OUT} is not current: run `make docs`", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
