"""The decision log: one JSON line per enforced block, rate-limited so a flood stays a trickle.

Sans-I/O: the caller passes the wall-clock time (``time.time()``) with every block and writes
the returned line wherever its logs go (stderr, so the journal); this module never reads a
clock. The line says who asked for what, on which channel, what was done, and which rule of
which list decided it, down to the registry record and decision when the list has them::

    {"time":"2026-12-01T23:13:37.123Z","client":"192.0.2.7","channel":"dns",
     "name":"standaards.com","action":"nxdomain","source":"registry",
     "category":"registry","rule":"standaards.com","origin":"dump.xml:5",
     "record_id":1676124,"decision":{"number":"2а-4235/2019","date":"2019-06-25",
     "authority":"суд"}}

Modes (``log.decisions``): ``off``; ``sample``: a token bucket of ``per_second`` lines a
second (bursts up to one second's worth); ``all``: every block, but still through a bucket
of ``ALL_PER_SECOND``, so a flood cannot fill the disk or the journal. Lines left out are
counted, and the next line written says how many (``"suppressed": n``).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from json.encoder import encode_basestring
from typing import Final

from blockgate.trie import Rule

MODES: Final = ("all", "sample", "off")
# The hard cap, lines per second, of "all" (and of "sample" whatever per_second says).
# A line is about 250-400 bytes: 1000 a second is at most ~0.4 MB/s (~35 GB a day under a
# sustained flood, which journald's SystemMaxUse= rotates away), and JSON-encoding them
# costs a few milliseconds of CPU a second. Block rates seen in practice are far lower:
# an ISP resolver blocks a few to a few hundred queries a second.
ALL_PER_SECOND: Final = 1000
# The bucket holds this many seconds of lines: short bursts pass whole.
BURST_SECONDS: Final = 1.0
# Rules whose JSON is kept for their next line (the cache is emptied when full).
MAX_TAILS: Final = 4096


class DecisionLog:
    """Turns blocks into JSON lines, at most ``rate`` a second. One per worker."""

    __slots__ = ("_second", "_stamp", "_tails", "capacity", "last", "mode", "off", "rate",
                 "suppressed", "tokens")

    def __init__(self, mode: str, per_second: int) -> None:
        if mode not in MODES:
            raise ValueError(f"decision log mode {mode!r} is not one of {', '.join(MODES)}")
        if per_second < 0:
            raise ValueError("per_second must not be negative")
        self.mode = mode
        self.off = mode == "off"
        self.rate = {"all": ALL_PER_SECOND, "sample": min(per_second, ALL_PER_SECOND), "off": 0}[mode]
        self.capacity = self.rate * BURST_SECONDS
        self.tokens = self.capacity
        self.last: float | None = None
        self.suppressed = 0  # left out since the last line written
        # A line is written by the worker between two queries, so it is built from parts:
        # what depends on the rule alone is encoded once per rule, the time's seconds once a
        # second. A line through a dict and ``json.dumps`` cost ~9 µs; built so, 4.5 for a
        # rule's first line and 1.5 after. It is the same line: a test checks it character
        # for character against ``json.dumps`` of its fields.
        self._tails: dict[tuple[bytes, int, int], tuple[object, object, str]] = {}
        self._second = -1.0
        self._stamp = ""

    def allow(self, now: float) -> bool:
        """Take a token at ``now``; False (and counted in ``suppressed``) when there is none.

        Written out flat, without helpers: under a flood it runs for every block.
        """
        tokens = self.tokens
        last = self.last
        # A wall clock stepped back (NTP) restarts the refill from the new time; it never
        # grants tokens for time that did not pass.
        if last is not None and now > last:
            tokens += (now - last) * self.rate
            if tokens > self.capacity:
                tokens = self.capacity
        self.last = now
        if tokens < 1.0:
            self.tokens = tokens
            self.suppressed += 1
            return False
        self.tokens = tokens - 1.0
        return True

    def record(self, now: float, client: str, channel: str, name: bytes, action: str,
               rule: Rule) -> str | None:
        """The JSON line for one block, or None (mode off, or rate-limited and counted)."""
        if self.off or not self.allow(now):
            return None
        line = self._line_of(now, client, channel, name, action, rule)
        if self.suppressed:
            line = f'{line[:-1]},"suppressed":{self.suppressed}}}'
            self.suppressed = 0
        return line

    def _line_of(self, now: float, client: str, channel: str, name: bytes, action: str,
                 rule: Rule) -> str:
        # The time in RFC 3339, UTC, with milliseconds (``2026-12-01T23:13:37.123Z``,
        # https://www.rfc-editor.org/rfc/rfc3339#section-5.6), rounded as datetime does:
        # fromtimestamp takes microseconds half-even, carried into the second, and
        # isoformat(timespec="milliseconds") truncates them.
        frac, whole = math.modf(now)
        us = round(frac * 1e6)
        if us >= 1_000_000:
            whole += 1.0
            us -= 1_000_000
        elif us < 0:
            whole -= 1.0
            us += 1_000_000
        if whole != self._second:
            self._second = whole
            self._stamp = datetime.fromtimestamp(whole, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
        cls, side = rule.rule_class, rule.side
        cache_key = (rule.key, id(side), rule.ref)  # the ref: a patch may move a rule
        got = self._tails.get(cache_key)
        if got is None or got[0] is not cls or got[1] is not side:
            if len(self._tails) >= MAX_TAILS:
                self._tails.clear()
            got = (cls, side, _tail(rule))
            self._tails[cache_key] = got
        # names are ASCII (A-labels) off the wire; anything else is shown, not dropped
        text = name.decode("ascii", "backslashreplace")
        return (f'{{"time":"{self._stamp}.{us // 1000:03d}Z","client":{encode_basestring(client)},'
                f'"channel":{encode_basestring(channel)},"name":{encode_basestring(text)},'
                f'"action":{encode_basestring(action)},{got[2]}}}')


def _tail(rule: Rule) -> str:
    """The rule's part of a line, as JSON without the braces: the origin, record and
    decision only when the list has them."""
    origin = rule.located()
    category = rule.category
    parts = [f'"source":{encode_basestring(rule.source)}',
             f'"category":{"null" if category is None else encode_basestring(category)}',
             f'"rule":{encode_basestring(rule.pattern)}',
             f'"origin":{"null" if origin is None else encode_basestring(origin.where)}']
    if origin is not None:
        if origin.record_id is not None:
            parts.append(f'"record_id":{int(origin.record_id)}')
        d = origin.decision
        if d is not None:
            parts.append(f'"decision":{{"number":{encode_basestring(d.number)},'
                         f'"date":{encode_basestring(d.date)},'
                         f'"authority":{encode_basestring(d.authority)}}}')
    return ",".join(parts)
