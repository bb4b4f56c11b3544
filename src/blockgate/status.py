"""``blockgate status`` as text: the daemon's status document in, lines out (no I/O, no clock:
the document carries the daemon's ``now``)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any


def age(seconds: float | None) -> str:
    """``42s``, ``5m07s``, ``3h12m``, ``2d04h``; ``-`` for none."""
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    if s >= 86400:
        return f"{s // 86400}d{s % 86400 // 3600:02d}h"
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def when(t: float | None, now: float) -> str:
    """A wall-clock time in UTC and how long ago it was (or is due)."""
    if t is None:
        return "never"
    stamp = datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    return f"{stamp} ({age(now - t)} ago)" if t <= now else f"{stamp} (in {age(t - now)})"


def format_status(doc: Mapping[str, Any]) -> list[str]:
    now = float(doc.get("now") or 0.0)
    workers = doc.get("workers", [])
    swap = doc.get("last_swap", {})
    lines = [f"blockgate {doc.get('version')} pid {doc.get('pid')}: {doc.get('rules')} rules on "
             f"{doc.get('names')} names, generation {doc.get('generation')}, "
             f"{sum(1 for w in workers if w.get('state') == 'serving')} workers serving on "
             f"{', '.join(doc.get('listen', []))}"]
    if swap.get("at"):
        ready = swap.get("ready_seconds")
        lines.append(f"last swap {when(swap['at'], now)}: {swap.get('how') or 'compiled'} in "
                     f"{swap.get('compile_seconds', 0):.2f} s"
                     + (f", new workers ready in {ready:.2f} s" if ready is not None else ""))
    reloads = doc.get("reloads", {})
    if reloads.get("ok") or reloads.get("refused"):
        lines.append(f"reloads: {reloads.get('ok', 0)} ok, {reloads.get('refused', 0)} refused")
        lines += [f"  {e}" for e in reloads.get("last_errors", [])]
    for s in doc.get("sources", []):
        lines += _source(s, now)
    return lines


def _source(s: Mapping[str, Any], now: float) -> list[str]:
    head = f"{s['name']} ({s['kind']} {s['origin']}): "
    if s.get("in_force"):
        head += (f"{s['rules']} rules, list age {age(s.get('list_age'))} "
                 f"(accepted {when(s.get('accepted_at'), now)})")
    else:
        head += "NO LIST IN FORCE"
    out = [head, f"  last attempt {when(s.get('last_attempt'), now)}: {s.get('last_result') or '-'}"
           + (f" ({s['last_detail']})" if s.get("last_detail") else "")]
    tail = [f"last success {when(s.get('last_success'), now)}"]
    if s.get("failures"):
        tail.append(f"{s['failures']} failures in a row")
    if s.get("next_attempt") is not None:
        tail.append(f"next attempt {when(s['next_attempt'], now)}")
    out.append("  " + "; ".join(tail))
    if s.get("etag") or s.get("last_modified"):
        out.append(f"  etag {s.get('etag') or '-'}, last-modified {s.get('last_modified') or '-'}")
    results = s.get("results") or []
    if results:
        out.append("  attempts: " + ", ".join(f"{k} {v}" for k, v in results))
    return out


def print_status(doc: Mapping[str, Any], out: Any) -> None:
    for line in format_status(doc):
        print(line, file=out)
