"""The ``blockgate`` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from blockgate import __version__
from blockgate.adapters.control import STATUS_SOCKET, request
from blockgate.adapters.nfqueue import iptables_rules, nft_rules
from blockgate.adapters.replay import replay
from blockgate.daemon import build_ruleset, load_config, run, setup_logging
from blockgate.domain import to_unicode
from blockgate.engine import Engine, LoadedSource, Lookup, SniEngine, make_sni_settings
from blockgate.errors import ConfigError
from blockgate.stats import Stats
from blockgate.status import print_status

EXIT_OK = 0
EXIT_SOURCE_FAILED = 1
EXIT_BAD_CONFIG = 2


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _source_record(ls: LoadedSource) -> dict[str, Any]:
    p = ls.parsed
    return {
        "source": ls.config.name,
        "format": ls.config.format,
        "loaded": p is not None,
        "error": ls.error,
        "rules": ls.rules,
        "kinds": dict(sorted(ls.kinds.items())),
        "units": p.units if p is not None else 0,
        "issues": dict(sorted(p.issue_counts.items())) if p is not None else {},
        "counts": dict(sorted(p.counts.items())) if p is not None else {},
        "meta": p.meta if p is not None else {},
        "seconds": round(ls.seconds, 3),
        "memory_bytes": ls.memory,
    }


def cmd_compile(args: argparse.Namespace, out: TextIO) -> int:
    config = load_config(args.config)
    ruleset, seconds, memory = build_ruleset(config)
    records = [_source_record(ls) for ls in ruleset.loaded]
    m = ruleset.matcher
    total = {"total": True, "rules": ruleset.rules, "names": m.names,
             "shadowed": m.stats["shadowed"], "seconds": round(seconds, 3),
             "memory_bytes": memory, "index_bytes": m.index_bytes()}
    if args.json:
        for rec in records:
            print(json.dumps(rec, ensure_ascii=False), file=out)
        print(json.dumps(total), file=out)
    else:
        for rec, ls in zip(records, ruleset.loaded, strict=True):
            _print_source(rec, ls, out, args.issues)
        print(f"total: {total['rules']} rules on {total['names']} names "
              f"({total['shadowed']} shadowed by a rule of higher precedence), "
              f"loaded and compiled in {seconds:.2f} s, {_mib(memory)}", file=out)
    return EXIT_SOURCE_FAILED if any(ls.error for ls in ruleset.loaded) else EXIT_OK


def _print_source(rec: dict[str, Any], ls: LoadedSource, out: TextIO, issues: bool) -> None:
    head = f"{rec['source']} ({rec['format']})"
    if rec["error"]:
        print(f"{head}: NOT LOADED: {rec['error']}", file=out)
        return
    kinds = ", ".join(f"{k} {v}" for k, v in rec["kinds"].items()) or "none"
    print(f"{head}: {rec['rules']} rules ({kinds}) from {rec['units']} entries "
          f"in {rec['seconds']:.2f} s, {_mib(rec['memory_bytes'])}", file=out)
    if rec["issues"]:
        print("  issues: " + ", ".join(f"{k} {v}" for k, v in rec["issues"].items()), file=out)
    if rec["counts"]:
        print("  counted: " + ", ".join(f"{k} {v}" for k, v in rec["counts"].items()), file=out)
    for k, v in rec["meta"].items():
        print(f"  {k}: {v}", file=out)
    if issues and ls.parsed is not None:
        for issue in ls.parsed.issues:
            print(f"  {issue}", file=out)
        hidden = sum(ls.parsed.issue_counts.values()) - len(ls.parsed.issues)
        if hidden > 0:
            print(f"  ... and {hidden} more (counted, not kept)", file=out)


def lookup_record(lk: Lookup) -> dict[str, Any]:
    rec: dict[str, Any] = {"name": lk.name, "verdict": lk.verdict.value, "source": None,
                           "kind": None, "origin": None}
    if lk.key is not None:
        rec["key"] = lk.key.decode("ascii")
    if lk.error:
        rec["error"] = lk.error
    rule = lk.rule
    if rule is not None:
        decision = rule.decision
        action = rule.action
        rec.update({
            "source": rule.source, "kind": rule.kind.name.lower(), "origin": rule.origin,
            "rule": rule.pattern, "category": rule.category,
            "action": action.config_name if action is not None else None,
            "record_id": rule.record_id,
            "decision": None if decision is None else {
                "number": decision.number, "date": decision.date, "authority": decision.authority},
        })
    return rec


def cmd_lookup(args: argparse.Namespace, out: TextIO) -> int:
    config = load_config(args.config)
    ruleset, _s, _m = build_ruleset(config)
    for ls in ruleset.loaded:
        if ls.error:
            print(f"warning: source {ls.config.name} not loaded: {ls.error}", file=sys.stderr)
    engine = Engine(config, ruleset)
    for name in args.names:
        rec = lookup_record(engine.lookup(name))
        if args.json:
            print(json.dumps(rec, ensure_ascii=False), file=out)
            continue
        line = f"{name}  {rec['verdict']}"
        if "error" in rec:
            line += f"  ({rec['error']})"
        if rec["source"]:
            line += f"  {rec['kind']} {rec['rule']}  source={rec['source']}  origin={rec['origin']}"
            if rec["record_id"]:
                line += f"  record={rec['record_id']}"
            if rec["decision"]:
                d = rec["decision"]
                line += f"  decision={' '.join(v for v in (d['authority'], d['number'], d['date']) if v)}"
        if "key" in rec and rec["key"] != name.lower().rstrip("."):
            line += f"  (looked up as {rec['key']}, {to_unicode(rec['key'].encode())})"
        print(line, file=out)
    return EXIT_OK


def _ports(text: str) -> list[int]:
    try:
        ports = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of ports: {text!r}") from None
    if not ports or not all(0 < p < 65536 for p in ports):
        raise argparse.ArgumentTypeError(f"ports must be 1-65535: {text!r}")
    return ports


def cmd_replay(args: argparse.Namespace, out: TextIO) -> int:
    config = load_config(args.config)
    ruleset, _s, _m = build_ruleset(config)
    for ls in ruleset.loaded:
        if ls.error:
            print(f"warning: source {ls.config.name} not loaded: {ls.error}", file=sys.stderr)
    settings = make_sni_settings(config.sni, args.ports)
    return replay(args.files, lambda: SniEngine(ruleset.match, settings, Stats()), out, args.json)


def cmd_rules(args: argparse.Namespace, out: TextIO) -> int:
    config = load_config(args.config)
    try:
        text = nft_rules(config.sni) if args.nft else "\n".join(iptables_rules(config.sni))
    except ValueError as exc:
        raise ConfigError([f"{args.config}: {exc}"]) from None
    print(text, file=out)
    return EXIT_OK


def cmd_run(args: argparse.Namespace, out: TextIO) -> int:
    config = load_config(args.config)
    setup_logging(str(config.log["level"]))
    return run(config, args.config)


def cmd_status(args: argparse.Namespace, out: TextIO) -> int:
    config = load_config(args.config)
    path = os.path.join(config.state_dir, STATUS_SOCKET)
    try:
        doc = request(path)
    except (OSError, ValueError) as exc:
        print(f"blockgate is not running ({path}: {exc})", file=sys.stderr)
        return EXIT_SOURCE_FAILED
    if args.json:
        print(json.dumps(doc, ensure_ascii=False, indent=1), file=out)
    else:
        print_status(doc, out)
    return EXIT_OK


def cmd_check_config(args: argparse.Namespace, out: TextIO) -> int:
    config = load_config(args.config)
    print(f"{args.config}: ok, {len(config.sources)} sources", file=out)
    return EXIT_OK


def version_text() -> str:
    """The version and which modules run compiled (setup.py), read off the package's files."""
    import importlib.machinery
    from pathlib import Path

    import blockgate

    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    root = Path(blockgate.__file__).parent
    native = sorted(".".join((*p.relative_to(root).parent.parts, p.name.split(".", 1)[0]))
                    for p in root.rglob("*") if p.name.endswith(suffixes))
    built = f"compiled: {', '.join(native)}" if native else "pure Python: no compiled modules"
    return f"blockgate {__version__} ({built})"


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="blockgate", description="DNS and TLS-SNI enforcement "
                                 "of regulator blocklists.")
    ap.add_argument("--version", action="version", version=version_text())
    sub = ap.add_subparsers(dest="command", required=True)

    def with_config(name: str, text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--config", "-c", required=True, help="configuration file (YAML)")
        return p

    p = with_config("compile", "Load every source and compile the rules; report per source.")
    p.add_argument("--json", action="store_true", help="one JSON object per source, then a total")
    p.add_argument("--issues", action="store_true", help="list every located issue")
    p.set_defaults(func=cmd_compile)
    p = with_config("lookup", "Decide names the way the daemon would.")
    p.add_argument("--json", action="store_true", help="one JSON object per name")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.set_defaults(func=cmd_lookup)
    p = with_config("replay", "Decide the ClientHellos and DNS queries of pcap/pcapng captures.")
    p.add_argument("--json", action="store_true", help="one JSON object per decision, then a summary")
    p.add_argument("--ports", type=_ports, help="inspected TCP/UDP ports, comma-separated "
                   "(default: sni.ports)")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.set_defaults(func=cmd_replay)
    p = with_config("rules", "Print the firewall rules that queue what sni.mode nfqueue inspects.")
    fw = p.add_mutually_exclusive_group(required=True)
    fw.add_argument("--nft", action="store_true", help="an nftables ruleset (nft -f)")
    fw.add_argument("--iptables", action="store_true", help="iptables commands")
    p.set_defaults(func=cmd_rules)
    p = with_config("run", "Serve DNS (and SNI enforcement) with the configured rules.")
    p.set_defaults(func=cmd_run)
    p = with_config("status", "Ask the running daemon: each source, its list in force, its last tries.")
    p.add_argument("--json", action="store_true", help="the daemon's status document as it is")
    p.set_defaults(func=cmd_status)
    p = with_config("check-config", "Validate the configuration; exit 2 with located errors.")
    p.set_defaults(func=cmd_check_config)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code: int = args.func(args, sys.stdout)
    except ConfigError as exc:
        for err in exc.errors:
            print(err, file=sys.stderr)
        return EXIT_BAD_CONFIG
    except BrokenPipeError:
        return EXIT_OK
    return code
