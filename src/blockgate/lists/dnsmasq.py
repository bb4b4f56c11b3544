"""[dnsmasq]: the blocking lines of a dnsmasq configuration (dnsmasq(8), ``--address``,
``--server``, ``--local``; https://thekelleys.org.uk/dnsmasq/docs/dnsmasq-man.html).

``/example.com/`` matches the name and every name below it (SUBTREE); ``/*.example.com/``
only the names below it (WILDCARD); ``/.example.com/`` is the historical spelling of
``/example.com/``. One line may list several domains, which share its ref and payload.

==================================  ======================================================
``address=/x/``                     NXDOMAIN (dnsmasq: "no-such-domain")
``address=/x/#``                    SINKHOLE, answers ``A 0.0.0.0`` and ``AAAA ::``
``address=/x/1.2.3.4`` (or IPv6)    SINKHOLE with that address
``server=/x/``, ``local=/x/``       NXDOMAIN: the domain is local, never forwarded
``server=/x/1.2.3.4``, ``/x/#``     forwarding, not a block: counted as ``forward``
==================================  ======================================================

Two ``address`` lines with one domain each, say ``/x/0.0.0.0`` then ``/x/::``, give one rule
with both records, as dnsmasq answers (counted ``merged-address``); otherwise the first rule
for a name is the one the matcher keeps.

The spaced variant ``address /x/#`` seen in real lists is read too (dnsmasq itself wants the
``=``). ``#`` starts a comment at the start of a line or after blank space (as dnsmasq's
option reader does), so the ``#`` of ``/x/#`` is data. Other options are counted as
``other-option``. Not expressible as a rule, and counted ``unsupported``: the empty domain
``//`` (unqualified names) and a ``*`` inside a name (``/*google.com/``). ``/#/`` (every
domain) is an issue, ``match-all``: silently dropping a rule that blocks everything would
hide what the list asks for. Bad addresses are ``bad-address`` issues, lines without the
closing ``/`` are ``bad-option``.
"""

from __future__ import annotations

import ipaddress
import re
from array import array
from collections import Counter
from collections.abc import Mapping, Sequence
from itertools import compress
from typing import Final

from blockgate.lists.base import Input, ParsedList, make_flags
from blockgate.lists.text import decode_line, numbered_lines
from blockgate.policy import Action
from blockgate.trie import Kind

OPTIONS: Final[Mapping[str, tuple[str, ...]]] = {}

# "#" is a comment at the start of a line or after blank space (dnsmasq option.c, one_file()).
_COMMENT: Final = re.compile(rb"(?:^|\s)#")
# "name=value", spaces allowed around "="; or "name value" (the spaced variant).
_OPTION: Final = re.compile(rb"([a-z0-9-]+)(?:\s*=\s*|\s+)(.*)", re.S)
_BLOCKING: Final = frozenset({b"address", b"server", b"local"})
# dnsmasq(8) --address: "#" is "the NULL address of 0.0.0.0 and its IPv6 equivalent of ::".
NULL_PAYLOAD: Final = (("A", "0.0.0.0"), ("AAAA", "::"))


def parse(inputs: Sequence[Input], options: Mapping[str, str] | None = None) -> ParsedList:
    """Parse dnsmasq configuration lines. raises only ListFormatError; anything else is a bug."""
    out = ParsedList("dnsmasq")
    shared: set[int] = set()  # refs of lines with several domains
    for inp in inputs:
        for number, ref, line in numbered_lines(out, inp):
            if b"#" in line:
                m = _COMMENT.search(line)
                line = line[: m.start()] if m else line
            line = line.strip()
            if line:
                out.units += 1
                _line(out, line, f"{inp.name}:{number}", ref, shared)
    _merge_addresses(out, shared)
    return out


def _line(out: ParsedList, line: bytes, where: str, ref: int, shared: set[int]) -> None:
    m = _OPTION.fullmatch(line)
    if m is None or m.group(1) not in _BLOCKING or not m.group(2).startswith(b"/"):
        out.counts["other-option"] += 1  # incl. "server=1.2.3.4", an upstream for everything
        return
    option, value = m.groups()
    parts = value.split(b"/")
    if len(parts) < 3:
        out.issue(where, "bad-option", decode_line(line))
        return
    domains, target = parts[1:-1], parts[-1].strip()
    if option != b"address":
        if target:
            out.counts["forward"] += 1
            return
        action, payload = Action.NXDOMAIN, None
    else:
        answer = _answer(target)
        if answer is None:
            out.issue(where, "bad-address", decode_line(line))
            return
        action, payload = answer
    keys = _keys(out, domains, where)
    for key, kind in keys:
        out.add(key, make_flags(kind, action=action), ref)
    if keys and payload is not None:
        out.payloads[ref] = payload
    if len(keys) > 1:
        shared.add(ref)


def _answer(target: bytes) -> tuple[Action, tuple[tuple[str, str], ...] | None] | None:
    """The action and payload of an ``address`` target; None if it is not an address."""
    if not target:
        return Action.NXDOMAIN, None
    if target == b"#":
        return Action.SINKHOLE, NULL_PAYLOAD
    if b"%" in target:  # an interface scope means nothing in an answer
        return None
    try:
        ip = ipaddress.ip_address(target.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None
    return Action.SINKHOLE, (("A" if ip.version == 4 else "AAAA", str(ip)),)


def _keys(out: ParsedList, domains: list[bytes], where: str) -> list[tuple[bytes, int]]:
    """Each domain of a line as (key, kind); the others are counted or reported."""
    keys: list[tuple[bytes, int]] = []
    for domain in domains:
        if domain == b"#":
            out.issue(where, "match-all", "/#/ matches every domain; not loaded")
            continue
        kind = Kind.WILDCARD if domain.startswith(b"*.") else Kind.SUBTREE
        name = domain[2:] if kind is Kind.WILDCARD else domain.removeprefix(b".")
        if not name or b"*" in name:
            out.counts["unsupported"] += 1
            continue
        got = out.name_key(name, where)
        if got is not None:
            keys.append((got[0], kind))
    return keys


def _merge_addresses(out: ParsedList, shared: set[int]) -> None:
    """Fold later ``address`` lines for a domain into its first rule, as dnsmasq answers all.

    Only rules of one-domain lines are folded (a payload is per line); the other repeats stay
    as they are, and the matcher keeps the first. Run once at the end: repeats are rare.
    """
    multi = {k for k, c in Counter(out.keys).items() if c > 1}
    if not multi:
        return
    first: dict[tuple[bytes, int], int] = {}
    keep = bytearray(b"\x01") * len(out.keys)
    for i in compress(range(len(out.keys)), map(multi.__contains__, out.keys)):
        j = first.setdefault((out.keys[i], out.flags[i]), i)
        ref, again = out.refs[j], out.refs[i]
        had = out.payloads.get(ref)  # same flags: a payload on both, or on neither
        if j == i or ref in shared or again in shared or had is None or again not in out.payloads:
            continue
        out.payloads[ref] = had + tuple(rr for rr in out.payloads.pop(again) if rr not in had)
        keep[i] = 0
        out.counts["merged-address"] += 1
    out.keys = list(compress(out.keys, keep))
    out.flags = bytearray(compress(out.flags, keep))
    out.refs = array("I", compress(out.refs, keep))
