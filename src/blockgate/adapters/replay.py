"""``blockgate replay``: capture files through the packet engine, one line per decision.

Each file gets a fresh engine (flows never span files); frames are numbered from 1 as
tshark numbers them, and a decision sits on the frame that completed its ClientHello or
carried its DNS query. Bad records are counted and skipped; a file that cannot be read at
all makes the exit status 1 (the other files are still replayed).
"""

from __future__ import annotations

import functools
import gc
import ipaddress
import json
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TextIO

from blockgate.engine import Event, SniEngine
from blockgate.packet import PacketFormatError, ip_offset
from blockgate.pcap import PcapFormatError, parse_capture

EXIT_OK: Final = 0
EXIT_UNREADABLE: Final = 1
_BATCH: Final = 256  # decision lines per write


@dataclass(slots=True)
class Totals:
    files: int = 0
    unreadable: int = 0
    packets: int = 0
    hellos: int = 0
    decisions: Counter[tuple[str, str]] = field(default_factory=Counter)
    seconds: float = 0.0


# Bytes a name shows as they are: printable ASCII but the backslash (the escape itself).
_PLAIN: Final = bytes(b for b in range(256) if 32 < b < 127 and b != 92)
# ``json.dumps(s, ensure_ascii=False)`` of one string, without the encoder's set-up.
_js: Final[Callable[[str], str]] = json.encoder.encode_basestring


def name_text(name: bytes | None) -> str:
    """A name for people: printable ASCII as it is, other bytes as ``\\ooo`` (as tshark)."""
    if name is None:
        return ""
    if not name.translate(None, _PLAIN):
        return name.decode("ascii")
    return "".join(chr(b) if 32 < b < 127 and b != 92 else f"\\{b:03o}" for b in name)


_ntop: Final = socket.inet_ntop


@functools.lru_cache(maxsize=65536)
def address(raw: bytes) -> str:
    """An address as ``ipaddress`` writes it (RFC 5952 for IPv6), without its ~5 us per new
    address: the C formatter, which writes the same text but for the IPv4-mapped and
    IPv4-compatible forms (dotted there, hex in ``ipaddress``)."""
    if len(raw) == 4:
        return f"{raw[0]}.{raw[1]}.{raw[2]}.{raw[3]}"
    if len(raw) == 16:
        text = _ntop(socket.AF_INET6, raw)
        if "." not in text:
            return text
    return str(ipaddress.ip_address(raw))


def record(path: str, frame: int, e: Event) -> dict[str, Any]:
    rule = e.rule
    rec: dict[str, Any] = {
        "file": path, "frame": frame, "event": e.kind, "proto": e.proto,
        "src": address(e.flow.src), "dst": address(e.flow.dst),
        "sport": e.flow.sport, "dport": e.flow.dport, "name": name_text(e.name),
        "names": [name_text(n) for n in e.names], "verdict": e.verdict.value,
        "source": rule.source if rule is not None else None,
        "category": rule.category if rule is not None else None,
        "rule": rule.pattern if rule is not None else None,
    }
    if e.reason:
        rec["reason"] = e.reason
    h = e.hello
    if h is not None:
        rec.update(alpn=[name_text(a) for a in h.alpn], ech=h.ech, anomalies=list(h.anomalies))
    return rec


def _jlist(items: Sequence[str]) -> str:
    return "[" + ", ".join(map(_js, items)) + "]"


# Names repeat across flows (popular services, every ClientHello's ALPN list): their JSON
# text is kept, bounded.
@functools.lru_cache(maxsize=65536)
def _jname(name: bytes | None) -> str:
    return _js(name_text(name))


@functools.lru_cache(maxsize=65536)
def _jnames(names: tuple[bytes, ...]) -> str:
    return _jlist([name_text(n) for n in names])


def _jopt(s: str | None) -> str:
    return "null" if s is None else _js(s)


def json_line(path_js: str, frame: int, e: Event) -> str:
    """``json.dumps(record(...), ensure_ascii=False)``, written directly: a replay emits a
    line per ClientHello and query, and the generic encoder of a fresh dict was a third of
    the replay loop. ``path_js`` is the file name already encoded. Same keys, same order,
    same text (the tests compare the two)."""
    rule, flow = e.rule, e.flow
    text = (f'{{"file": {path_js}, "frame": {frame}, "event": "{e.kind}", "proto": "{e.proto}", '
            f'"src": "{address(flow.src)}", "dst": "{address(flow.dst)}", "sport": {flow.sport}, '
            f'"dport": {flow.dport}, "name": {_jname(e.name)}, '
            f'"names": {_jnames(e.names)}, "verdict": "{e.verdict!s}", ')
    if rule is None:
        text += '"source": null, "category": null, "rule": null'
    else:
        text += (f'"source": {_js(rule.source)}, "category": {_jopt(rule.category)}, '
                 f'"rule": {_js(rule.pattern)}')
    if e.reason:
        text += f', "reason": {_js(e.reason)}'
    h = e.hello
    if h is not None:
        text += (f', "alpn": {_jnames(h.alpn)}, '
                 f'"ech": {"true" if h.ech else "false"}, "anomalies": {_jlist(h.anomalies)}')
    return text + "}\n"


def line(rec: dict[str, Any]) -> str:
    src = f"[{rec['src']}]" if ":" in rec["src"] else rec["src"]
    dst = f"[{rec['dst']}]" if ":" in rec["dst"] else rec["dst"]
    text = (f"{rec['file']}:{rec['frame']} {rec['proto']} {src}:{rec['sport']} -> {dst}:{rec['dport']} "
            f"{rec['name'] or '-'} {rec['verdict']}")
    reason = rec.get("reason")
    if rec["event"] not in ("client_hello", "dns_query"):
        text += f" ({rec['event']}{': ' + reason if reason and reason != rec['event'] else ''})"
    elif reason:
        text += f" (malformed: {reason})"
    if rec["source"]:
        text += f" source={rec['source']} rule={rec['rule']}"
    return text


def replay_file(path: str, engine: SniEngine, emit: Callable[[str, int, Event], None], totals: Totals,
                err: TextIO, flush: Callable[[], None]) -> None:
    """Every record of one capture through ``engine``; decisions go to ``emit``, and
    ``flush`` writes out what it holds (inside the timed loop)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        records = parse_capture(data)
    except (OSError, PcapFormatError) as exc:
        print(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}", file=err)
        totals.unreadable += 1
        return
    totals.files += 1
    on_packet = engine.on_packet
    frame = 0
    now = 0.0
    t0 = time.process_time()
    try:
        for linktype, now, raw, _orig in records:
            frame += 1
            try:
                at = ip_offset(linktype, raw)
            except PacketFormatError as exc:
                engine.stats.malformed["link", exc.reason] += 1
                continue
            d = on_packet(raw[at:] if at else raw, now)
            if d.events:
                for e in d.events:
                    emit(path, frame, e)
    except PcapFormatError as exc:
        print(f"{path}: stops at record {frame + 1}: {exc}", file=err)
    for e in engine.finish(now):
        emit(path, frame, e)
    flush()
    totals.seconds += time.process_time() - t0
    totals.packets += frame


def replay(paths: Sequence[str], make_engine: Callable[[], SniEngine], out: TextIO, as_json: bool,
           err: TextIO = sys.stderr) -> int:
    """Replay ``paths``; print decisions and a summary; the exit status."""
    totals = Totals()

    decisions = totals.decisions
    encoded: dict[str, str] = {}
    # Lines go out in batches: a write per line to a pipe was a tenth of the replay loop.
    pending: list[str] = []
    add = pending.append

    def flush() -> None:
        if pending:
            out.write("".join(pending))
            pending.clear()

    def emit(path: str, frame: int, e: Event) -> None:
        decisions[e.proto, str(e.verdict)] += 1  # str of a StrEnum: C, where .value is Python
        if e.kind == "client_hello":
            totals.hellos += 1
        if as_json:
            path_js = encoded.get(path)
            if path_js is None:
                path_js = encoded[path] = _js(path)
            add(json_line(path_js, frame, e))
        else:
            add(line(record(path, frame, e)) + "\n")
        if len(pending) >= _BATCH:
            flush()

    # The compiled rules are millions of long-lived objects: keep the cycle collector from
    # walking them again and again while packets allocate (the daemon's workers do the same).
    gc.collect()
    gc.freeze()
    malformed: Counter[tuple[str, str]] = Counter()
    for path in paths:
        engine = make_engine()
        replay_file(path, engine, emit, totals, err, flush)
        malformed.update(engine.stats.malformed)
    summary(totals, malformed, out, as_json)
    return EXIT_UNREADABLE if totals.unreadable else EXIT_OK


def summary(t: Totals, malformed: Counter[tuple[str, str]], out: TextIO, as_json: bool) -> None:
    pps = t.packets / t.seconds if t.seconds > 0 else 0.0
    if as_json:
        print(json.dumps({
            "summary": True, "files": t.files, "unreadable": t.unreadable, "packets": t.packets,
            "client_hellos": t.hellos, "cpu_seconds": round(t.seconds, 6), "packets_per_second": round(pps),
            "decisions": {f"{p}/{v}": n for (p, v), n in sorted(t.decisions.items())},
            "malformed": {f"{c}/{r}": n for (c, r), n in sorted(malformed.items())},
        }), file=out)
        return
    by = ", ".join(f"{p} {v} {n}" for (p, v), n in sorted(t.decisions.items())) or "none"
    bad = ", ".join(f"{c} {r} {n}" for (c, r), n in sorted(malformed.items())) or "none"
    print(f"summary: {t.files} files ({t.unreadable} unreadable), {t.packets} packets, "
          f"{t.hellos} ClientHellos, {t.seconds:.3f} s CPU ({pps:,.0f} packets/s); decisions: {by}; "
          f"malformed: {bad}", file=out)
