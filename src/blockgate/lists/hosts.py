"""[hosts]: ``address name [name...]`` lines, as in /etc/hosts and hosts-format blocklists.

Every name is an EXACT rule: a hosts file answers for the names it lists and for nothing below
them (AdGuard Home made its hosts rules match exactly for this reason, AdGuardHome#3998). A
``*.x`` name, which no hosts resolver reads, is taken as in the ``domains`` format: a WILDCARD
rule for the names strictly below ``x``.

The address column is only checked: ``0.0.0.0``, ``::``, loopback addresses and the short
``0`` some lists use are the usual sinkholes; any other address (a redirect to a block page)
still blocks the names, and such lines are counted as ``redirect-ip``. The names a hosts file
carries for the machine itself (``localhost``, ``broadcasthost``, ``ip6-allnodes``...) are
skipped and counted as ``skipped-local``. ``#`` starts a comment anywhere on a line.

Issues: ``bad-address`` (the first column is not an IP address), ``no-name`` (an address
alone), and the reasons of ``domain.list_key`` for names that cannot become keys.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from typing import Final

from blockgate.lists.base import Input, ParsedList, make_flags
from blockgate.lists.text import decode_line, numbered_lines
from blockgate.trie import Kind

OPTIONS: Final[Mapping[str, tuple[str, ...]]] = {}

# Names of the machine itself, from the header of StevenBlack/hosts and Debian's /etc/hosts;
# blocking them would break the hosts that load the list, so they are not rules.
SELF_NAMES: Final = frozenset({
    b"localhost", b"localhost.localdomain", b"local", b"broadcasthost", b"0.0.0.0",
    b"ip6-localhost", b"ip6-loopback", b"ip6-localnet", b"ip6-mcastprefix",
    b"ip6-allnodes", b"ip6-allrouters", b"ip6-allhosts",
})
# The common sinkhole spellings, known without parsing an address.
_SINKS: Final = frozenset({b"0.0.0.0", b"127.0.0.1", b"::", b"::1", b"0", b"::0"})
_EXACT: Final = make_flags(Kind.EXACT)
_WILDCARD: Final = make_flags(Kind.WILDCARD)


def parse(inputs: Sequence[Input], options: Mapping[str, str] | None = None) -> ParsedList:
    """Parse hosts files. raises only ListFormatError; anything else is a bug."""
    out = ParsedList("hosts")
    for inp in inputs:
        for number, ref, line in numbered_lines(out, inp):
            cut = line.find(b"#")
            fields = (line[:cut] if cut >= 0 else line).split()
            if fields:
                out.units += 1
                take_fields(out, fields, inp.name, number, ref)
    return out


def take_fields(out: ParsedList, fields: list[bytes], name: str, number: int, ref: int) -> None:
    """One hosts line, comment removed and split: ``address name...`` -> rules.

    ``fields`` are lowercased bytes; ``number`` is the line in file ``name``, ``ref`` its
    global number. Also used by the adblock parser, whose lists may hold hosts lines.
    """
    sink = _sinkhole(fields[0])
    if sink is None:
        out.issue(f"{name}:{number}", "bad-address", _text(fields))
        return
    if len(fields) == 1:
        out.issue(f"{name}:{number}", "no-name", _text(fields))
        return
    before = len(out.keys)
    for field in fields[1:]:
        if field in SELF_NAMES:
            out.counts["skipped-local"] += 1
            continue
        got = out.name_key(field, f"{name}:{number}")
        if got is not None:
            out.add(got[0], _WILDCARD if got[1] else _EXACT, ref)
    if not sink and len(out.keys) > before:
        out.counts["redirect-ip"] += 1


def _sinkhole(field: bytes) -> bool | None:
    """True for a sinkhole address, False for another address, None if not an address."""
    if field in _SINKS:
        return True
    try:
        ip = ipaddress.ip_address(field.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None
    return ip.is_unspecified or ip.is_loopback


def _text(fields: list[bytes]) -> str:
    return decode_line(b" ".join(fields))
