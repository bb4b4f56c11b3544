"""[zi-csv]: the public z-i mirror of the Russian registry, ``dump.csv`` or ``dump-NN.csv``.

Optional first line ``Updated: YYYY-MM-DD HH:MM:SS +0000``, then one registry record per
line, six ``;``-separated fields (research/blocklist-formats.md §2.1)::

    IPs ; domain(s) ; URL(s) ; org ; decision number ; decision date

Lists inside a field are joined by ``|``, with spaces (``" | "``, 2014-2020) or without
(2021+); a URL may itself hold ``|``, so URLs are split on ``" | "`` when it occurs. A field
holding ``;`` is CSV-quoted. The rows mean what their ``dump.xml`` records mean (``rknxml``):
an empty URL field with a domain is a domain block (``*.x`` a mask), URLs decide otherwise.

Split files (``dump-00.csv`` ... ``dump-NN.csv``) are given in order as the inputs of one
source. The encoding is decided per file: strict UTF-8 when the whole file decodes (copies
re-saved by tools), else windows-1251, the mirror's own.

Real files have ~500k rows and lines of megabytes, so a line is split with ``str.split``;
only lines holding a quote go through the ``csv`` module, one line at a time, so a stray
quote cannot swallow the lines after it (z-i records never span lines).
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from blockgate.errors import ListFormatError
from blockgate.lists.base import Input, ParsedList
from blockgate.lists.rknxml import Policy, add_address, add_names, name_key, url_rules

# Same record semantics as the registry's own dump, hence the same options.
OPTIONS: Final[Mapping[str, tuple[str, ...]]] = {
    "domain_scope": ("exact", "subtree"),
    "mask_scope": ("subtree", "wildcard"),
    "https_urls": ("block-host", "ignore"),
    "http_urls": ("ignore", "block-host"),
}

FIELDS: Final = 6
HEADER: Final = "Updated:"
# What ``ParsedList.address`` counts.
_ADDRESS_COUNTS: Final = ("ip", "ip-subnet", "ipv6", "ipv6-subnet")
# A complete row ends with its decision date; a last line without newline whose date is
# cut short was published truncated (§2.2 item 1).
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def parse(inputs: Sequence[Input], options: Mapping[str, str] | None = None) -> ParsedList:
    """Parse z-i CSV files as one source. raises only ListFormatError; anything else is a bug."""
    rows = _Rows(ParsedList("zi-csv"), Policy.from_options(options))
    for inp in inputs:
        lines = _text(inp).split("\n")
        complete = lines[-1] == ""  # the file ends with a newline
        if complete:
            lines.pop()
        base = rows.out.begin_file(inp.name)
        rows.file(inp.name, base, lines, complete)
        rows.out.end_file(len(lines))
    return rows.out


def _text(inp: Input) -> str:
    try:
        data = inp.stream.read()
    except (OSError, ValueError) as exc:
        raise ListFormatError(inp.name, f"cannot read: {exc}", "unreadable") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        # cp1251 leaves one byte (0x98) unassigned: it becomes U+FFFD, which list_key refuses.
        text = data.decode("cp1251", "replace")
    return text.replace("\r\n", "\n") if "\r" in text else text


def _quoted(line: str) -> list[str]:
    """Fields of a line with CSV quoting (a URL ending in ``;`` is wrapped in quotes)."""
    if len(line) > csv.field_size_limit():
        # Lines reach megabytes (258k IPs in one record); the limit is only ever raised.
        csv.field_size_limit(len(line))
    try:
        return next(csv.reader((line,), delimiter=";", quotechar='"'), [])
    except csv.Error:
        return []


@dataclass(slots=True)
class _Rows:
    """The rows of all files of one source, with what consecutive rows tend to repeat."""

    out: ParsedList
    policy: Policy
    decisions: dict[tuple[str, str, str], int] = field(default_factory=dict)
    # Rows are sorted by domain and a domain has many URL records: reuse the last result.
    last_domain: str = ""
    last_names: list[tuple[bytes, bool]] = field(default_factory=list)
    last_idn: int = 0
    last_ips: str = ""
    last_v4: bytes = b""
    last_v6: bytes = b""
    last_ip_counts: Counter[str] = field(default_factory=Counter)

    def file(self, name: str, base: int, lines: list[str], complete: bool) -> None:
        last = len(lines)
        for lineno, line in enumerate(lines, 1):
            if lineno == 1 and line.startswith(HEADER):
                self.out.meta.setdefault("updated", line[len(HEADER) :].strip())
                continue
            fields = _quoted(line) if '"' in line else line.split(";")
            if len(fields) == FIELDS and (complete or lineno < last or _dated(fields)):
                self.out.units += 1
                self.row(fields, f"{name}:{lineno}", base + lineno)
            elif line.strip():
                self.out.units += 1
                cut = not complete and lineno == last and len(fields) <= FIELDS
                self.out.issue(f"{name}:{lineno}", "truncated-line" if cut else "bad-row", line)

    def row(self, fields: list[str], where: str, line: int) -> None:
        ips, domain, urls = fields[0], fields[1].strip(), fields[2].strip()
        out = self.out
        if ips:
            self.addresses(where, ips)
        names = self.names(where, domain) if domain else []
        rules: dict[bytes, int] = {}
        if urls:
            split = urls.split(" | " if " | " in urls else "|")
            rules = url_rules(out, where, split, names, self.policy)
        elif domain:
            add_names(out, rules, names, self.policy.domain, self.policy.mask)
        else:
            out.counts["ip-only" if ips.strip() else "empty"] += 1
        if rules:
            ref = out.record(line, 0, self.decision(fields[4], fields[5], fields[3]))
            for key, flags in rules.items():
                out.add(key, flags, ref)
            out.spill()

    def addresses(self, where: str, ips: str) -> None:
        """The IP field; a repeat of the previous row's field replays what that one added.

        Parsing addresses is most of the load time, and a site's URL records (most rows
        since 2019) repeat its address list row after row.
        """
        out = self.out
        if ips == self.last_ips:
            out.ipv4 += self.last_v4
            out.ipv6 += self.last_v6
            out.counts.update(self.last_ip_counts)
            return
        v4, v6, bad = len(out.ipv4), len(out.ipv6), out.issue_counts["bad-address"]
        before = Counter({k: out.counts[k] for k in _ADDRESS_COUNTS})
        for part in ips.split("|"):
            if part.strip():
                add_address(out, where, part)
        if out.issue_counts["bad-address"] == bad:  # issues are per row: not replayed
            self.last_ips = ips
            self.last_v4, self.last_v6 = bytes(out.ipv4[v4:]), bytes(out.ipv6[v6:])
            after = Counter({k: out.counts[k] for k in _ADDRESS_COUNTS})
            self.last_ip_counts = after - before  # keeps only what grew

    def names(self, where: str, domain: str) -> list[tuple[bytes, bool]]:
        """Keys of the domain field (one name, or several joined by ``|``)."""
        counts = self.out.counts
        if domain == self.last_domain:
            if self.last_idn:
                counts["idn"] += self.last_idn
            return self.last_names
        idn = counts["idn"]
        parts = domain.split("|") if "|" in domain else (domain,)
        found = [name_key(self.out, where, part) for part in parts if part.strip()]
        names = [n for n in found if n is not None]
        if len(names) == len(found):  # cache only what raised no issue: issues are per row
            self.last_domain, self.last_names = domain, names
            self.last_idn = counts["idn"] - idn
        return names

    def decision(self, number: str, date: str, org: str) -> int:
        key = (number, date, org)
        index = self.decisions.get(key)
        if index is None:
            index = self.decisions[key] = self.out.decision(number.strip(), date.strip(),
                                                            org.strip())  # fmt: skip
        return index


def _dated(fields: list[str]) -> bool:
    return _DATE.fullmatch(fields[FIELDS - 1].strip()) is not None
