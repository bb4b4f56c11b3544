"""What every list parser produces: rules in columns, where they came from, located issues.

A registry dump holds hundreds of thousands of names; one Python object per rule would cost
more than the name itself. So a parsed list is columnar: the key ``bytes`` (shared later with
the matcher), one flag byte per rule, and one ``ref`` per rule that points at its origin (a
line, or a registry record with its decision).
"""

from __future__ import annotations

import bisect
import contextlib
import ipaddress
from array import array
from collections import Counter
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import BinaryIO, Final, Protocol

from blockgate.domain import ascii_key, list_key
from blockgate.errors import DomainError
from blockgate.lists.text import decode_line
from blockgate.policy import Action
from blockgate.trie import ACTION_SHIFT, ALLOW, KIND_MASK, Kind

# Located issues kept for ``--issues``; beyond this they are only counted (a broken 1M-line
# file must not turn into a million objects).
MAX_KEPT_ISSUES: Final = 100_000
# Offending text kept per issue.
MAX_ISSUE_TEXT: Final = 160
# A streaming parse hands its rules over in chunks of about this many.
SPILL_AT: Final = 65_536


class RuleSink(Protocol):
    """Takes a streaming parse's rules chunk by chunk (``trie.Differ`` is one)."""

    def feed(self, keys: list[bytes], flags: bytearray, refs: array[int]) -> None: ...


_SINK: ContextVar[RuleSink | None] = ContextVar("blockgate_rule_sink", default=None)


@contextlib.contextmanager
def streaming(sink: RuleSink | None) -> Iterator[None]:
    """Parses started inside hand their rules to ``sink`` instead of keeping them."""
    token = _SINK.set(sink)
    try:
        yield
    finally:
        _SINK.reset(token)


def make_flags(kind: int, allow: bool = False, action: Action | None = None) -> int:
    return kind | (ALLOW if allow else 0) | ((int(action) if action else 0) << ACTION_SHIFT)


@dataclass(frozen=True, slots=True)
class Input:
    """One file handed to a parser: a display name (for locations) and an open binary stream."""

    name: str
    stream: BinaryIO


@dataclass(frozen=True, slots=True)
class Issue:
    where: str
    reason: str
    text: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}: {self.text}"


@dataclass(frozen=True, slots=True)
class Decision:
    """The legal basis a registry gives for a record."""

    number: str
    date: str
    authority: str

    def __str__(self) -> str:
        parts = [p for p in (self.authority, self.number, self.date) if p]
        return " ".join(parts)


@dataclass(frozen=True, slots=True)
class Origin:
    where: str
    record_id: int | None = None
    decision: Decision | None = None


@dataclass(slots=True)
class ParsedList:
    """Rules of one source, in columns, plus what was seen while reading it.

    ``refs[i]`` is a global line number (lines of all files numbered on, see ``file_starts``)
    or, when ``records`` is used, an index into the record columns.
    """

    fmt: str
    keys: list[bytes] = field(default_factory=list)
    flags: bytearray = field(default_factory=bytearray)
    refs: array[int] = field(default_factory=lambda: array("I"))
    payloads: dict[int, tuple[tuple[str, str], ...]] = field(default_factory=dict)
    issues: list[Issue] = field(default_factory=list)
    issue_counts: Counter[str] = field(default_factory=Counter)
    counts: Counter[str] = field(default_factory=Counter)
    files: list[str] = field(default_factory=list)
    file_starts: list[int] = field(default_factory=list)
    units: int = 0
    meta: dict[str, str] = field(default_factory=dict)
    # Registry records: the line (global numbering) or registry id, and the decision index.
    records: bool = False
    rec_line: array[int] = field(default_factory=lambda: array("I"))
    rec_id: array[int] = field(default_factory=lambda: array("I"))
    rec_decision: array[int] = field(default_factory=lambda: array("i"))
    decisions: list[Decision] = field(default_factory=list)
    # IP entries of registry records (not DNS/SNI material; kept for a firewall export):
    # 5 bytes per IPv4 network (address, prefix length), 17 per IPv6 network.
    ipv4: bytearray = field(default_factory=bytearray)
    ipv6: bytearray = field(default_factory=bytearray)
    _decision_index: dict[Decision, int] = field(default_factory=dict)

    _line_base: int = 0
    # A streaming parse (``streaming``): rules spilled to ``sink`` are not kept here; their
    # number and kinds are. Such a list gives origins and counts but cannot be compiled.
    sink: RuleSink | None = field(default_factory=_SINK.get)
    spilled: int = 0
    spilled_flags: Counter[int] = field(default_factory=Counter)

    # -- building (parsers) ---------------------------------------------------------------
    def begin_file(self, name: str) -> int:
        """Start a new file; returns the base to add to its 1-based line numbers."""
        self.files.append(name)
        self.file_starts.append(self._line_base)
        return self._line_base

    def end_file(self, lines: int) -> None:
        self._line_base += lines

    def add(self, key: bytes, flags: int, ref: int) -> None:
        self.keys.append(key)
        self.flags.append(flags)
        self.refs.append(ref)

    def spill(self) -> None:
        """Parsers call this where no rule of theirs is half written (between lines or
        records): a streaming parse hands over what it holds once it holds a chunk."""
        if self.sink is not None and len(self.keys) >= SPILL_AT:
            self._spill()

    def _spill(self) -> None:
        assert self.sink is not None
        self.sink.feed(self.keys, self.flags, self.refs)
        self.spilled += len(self.keys)
        self.spilled_flags.update(Counter(self.flags))
        self.keys, self.flags, self.refs = [], bytearray(), array("I")

    def finish(self) -> None:
        """End of the parse: a streaming one hands over the rest."""
        if self.sink is not None:
            self._spill()

    def issue(self, where: str, reason: str, text: str) -> None:
        self.issue_counts[reason] += 1
        if len(self.issues) < MAX_KEPT_ISSUES:
            self.issues.append(Issue(where, reason, text[:MAX_ISSUE_TEXT]))

    def name_key(self, raw: bytes | str, where: str,
                 counted: Mapping[str, str] | None = None) -> tuple[bytes, bool] | None:
        """``(key, star)`` of one listed name, or None once the refusal is recorded.

        A refusal is a located issue, unless ``counted`` maps its reason to a counter (e.g.
        adblock's IP rules are a feature we do not support, not a broken line). Names
        converted from Unicode are counted as ``idn``. Plain lowercase ASCII names take
        the fast path without decoding.
        """
        text = raw if isinstance(raw, str) else None
        plain = raw.strip() if isinstance(raw, bytes) else raw.strip().encode("utf-8", "replace")
        star = plain.startswith(b"*.")
        key = ascii_key(plain[2:] if star else plain) if plain.isascii() else None
        if key is not None:
            return key, star
        try:
            key, star, idn = list_key(text if text is not None else decode_line(plain))
        except DomainError as exc:
            counter = (counted or {}).get(exc.reason)
            if counter is not None:
                self.counts[counter] += 1
            else:
                self.issue(where, exc.reason, str(exc))
            return None
        if idn:
            self.counts["idn"] += 1
        return key, star

    def decision(self, number: str, date: str, authority: str) -> int:
        d = Decision(number, date, authority)
        idx = self._decision_index.get(d)
        if idx is None:
            idx = self._decision_index[d] = len(self.decisions)
            self.decisions.append(d)
        return idx

    def record(self, line: int, record_id: int, decision: int) -> int:
        self.records = True
        self.rec_line.append(line)
        self.rec_id.append(record_id)
        self.rec_decision.append(decision)
        return len(self.rec_line) - 1

    def address(self, text: str) -> bool:
        """Keep one IP address or network (``a.b.c.d``, ``a.b.c.d/nn``, IPv6 either spelling).

        Counts it as ``ip``/``ip-subnet``/``ipv6``/``ipv6-subnet``; False if it does not parse.
        A registry row can carry a quarter of a million addresses, so plain IPv4 skips the
        ``ipaddress`` module (6 µs per address there).
        """
        text = text.strip()
        if text.count(".") == 3 and text.replace(".", "").isdigit() and text.isascii():
            try:
                self.ipv4 += bytes(map(int, text.split("."))) + b"\x20"
            except ValueError:  # an octet over 255
                return False
            self.counts["ip"] += 1
            return True
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            return False
        subnet = "/" in text
        if net.version == 4:
            self.ipv4 += net.network_address.packed + bytes((net.prefixlen,))
            self.counts["ip-subnet" if subnet else "ip"] += 1
        else:
            self.ipv6 += net.network_address.packed + bytes((net.prefixlen,))
            self.counts["ipv6-subnet" if subnet else "ipv6"] += 1
        return True

    # -- reading (compiler, CLI) ----------------------------------------------------------
    def where(self, global_line: int) -> str:
        """``file:line`` for a global line number."""
        if not self.files:
            return f"line {global_line}"
        i = bisect.bisect_right(self.file_starts, global_line - 1) - 1
        i = max(i, 0)
        return f"{self.files[i]}:{global_line - self.file_starts[i]}"

    def origin(self, ref: int) -> Origin:
        if not self.records:
            return Origin(self.where(ref))
        rid = self.rec_id[ref]
        d = self.rec_decision[ref]
        return Origin(
            self.where(self.rec_line[ref]),
            rid or None,
            self.decisions[d] if d >= 0 else None,
        )

    def kind_counts(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for f, n in (Counter(self.flags) + self.spilled_flags).items():
            name = Kind(f & KIND_MASK).name.lower()
            out[f"{'allow' if f & ALLOW else 'block'}-{name}"] += n
        return out

    def release(self) -> None:
        """Drop the rule columns once compiled; origins and local data stay answerable."""
        self.keys = []
        self.flags = bytearray()
        self.refs = array("I")

    def __len__(self) -> int:
        return self.spilled + len(self.keys)

    @property
    def streamed(self) -> bool:
        return self.sink is not None

    def iter_rules(self) -> Iterator[tuple[bytes, int, int]]:
        assert self.sink is None, "a streamed list keeps no rules"
        return zip(self.keys, self.flags, self.refs, strict=True)
