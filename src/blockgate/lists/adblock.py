"""[adblock]: the domain subset of adblock-style rules, as AdGuard Home's DNS filtering reads it.

=========================  =======================================================
``||example.org^``         SUBTREE block: the name and every name below it
``@@||example.org^``       SUBTREE allow (``@@`` makes any of these an allow rule)
``||*.example.org^``       as ``||example.org^``: the ``*.`` is dropped (strictly,
                           AdGuard would not match ``example.org`` itself)
``|example.org^``          EXACT: anchored at the start of the host name
``example.org``            EXACT: a bare name reads like a hosts entry
``|*.example.org^``        WILDCARD (names strictly below), as ``*.x`` in the other
``*.example.org``          formats
``0.0.0.0 example.org``    hosts syntax, which these lists mix in: as ``hosts``
=========================  =======================================================

A ``||x`` or ``|x`` without the closing ``^`` matches more in AdGuard (``x.evil.com``,
``xample.organic``); it is loaded as if the ``^`` were there, a subset of its meaning (it never
blocks more than the list says), and counted as ``no-separator``.

Rules with modifiers (``$dnsrewrite=...``, ``$client=...``, ``$badfilter``, ``$denyallow``...)
change the meaning in ways a name set cannot hold: they are not loaded and are counted as
``unsupported-modifier``. The one exception is ``$important`` alone, loaded as the plain rule
(counted ``important``); note that it then loses its priority over ``@@`` allow rules, since in
the matcher an allow wins at the same name.

Not loaded, counted ``unsupported``: regex rules ``/.../``, cosmetic and HTML rules (``##``,
``#@#``, ``#$#``, ``#?#``, ``$$``...), URL and path patterns (``/banner/*``, ``ads.js``,
``||x^*``), wildcards inside a name, IP-address rules, and bare words without a dot. Comments
are ``!`` and ``#`` lines; ``[Adblock Plus 2.0]`` headers are skipped. Names that still fail
``domain.list_key`` become issues with its reason.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from typing import Final

from blockgate.lists.base import Input, ParsedList, make_flags
from blockgate.lists.hosts import take_fields
from blockgate.lists.text import numbered_lines
from blockgate.trie import Kind

OPTIONS: Final[Mapping[str, tuple[str, ...]]] = {}

# Element hiding, CSS/JS injection and HTML filtering markers (AdGuard "Cosmetic rules").
_COSMETIC: Final = re.compile(rb"#@?[$?%]{0,2}#|\$@?\$")
# Characters of URL patterns, never of host names.
_PATTERN: Final = re.compile(rb"[/*?=&:%|^,$]")
# A bare line ending in one of these is a URL fragment (``ads.js``), not a host: none of them
# is a top-level domain (checked against the IANA root zone list).
FILE_SUFFIXES: Final = frozenset({
    b"js", b"css", b"php", b"html", b"htm", b"gif", b"png", b"jpg", b"jpeg", b"svg", b"swf",
    b"json", b"xml", b"txt", b"asp", b"aspx", b"cgi", b"ico", b"webp", b"woff", b"woff2",
    b"ttf", b"mp4", b"mp3", b"ashx", b"jsp",
})


def parse(inputs: Sequence[Input], options: Mapping[str, str] | None = None) -> ParsedList:
    """Parse adblock-style lists. raises only ListFormatError; anything else is a bug."""
    out = ParsedList("adblock")
    for inp in inputs:
        for number, ref, line in numbered_lines(out, inp):
            _line(out, line.strip(), inp.name, number, ref)
    return out


def _line(out: ParsedList, line: bytes, name: str, number: int, ref: int) -> None:
    if not line or line[0] == 33 or (line[0] == 91 and line[-1] == 93):  # "!", "[...]"
        return
    if line[0] == 35 and not _COSMETIC.match(line):  # "#" comment, not "##.banner"
        return
    out.units += 1
    if _COSMETIC.search(line):
        out.counts["unsupported"] += 1
        return
    fields = line.split()
    if len(fields) > 1 and _is_ip(fields[0]):
        cut = line.find(b"#")
        take_fields(out, (line[:cut] if cut >= 0 else line).split(), name, number, ref)
        return
    allow = line.startswith(b"@@")
    body = line[2:] if allow else line
    if body.startswith(b"/"):  # a regex or a path
        out.counts["unsupported"] += 1
        return
    body, dollar, modifiers = body.partition(b"$")
    if dollar:
        if modifiers.strip() != b"important":
            out.counts["unsupported-modifier"] += 1
            return
        out.counts["important"] += 1
    _pattern(out, body, allow, name, number, ref)


def _pattern(out: ParsedList, body: bytes, allow: bool, name: str, number: int, ref: int) -> None:
    """``||x^``, ``|x^`` or a bare ``x``, with modifiers and ``@@`` removed."""
    subtree = body.startswith(b"||")
    anchored = subtree or body.startswith(b"|")
    body = body[2 if subtree else 1 :] if anchored else body
    if body.endswith(b"|"):  # "||x^|": the end of the address, the same as "^" here
        body = body[:-1]
    loose = anchored and not body.endswith(b"^")
    body = body if loose else body.removesuffix(b"^")
    host = body[2:] if body.startswith(b"*.") else body
    if _PATTERN.search(host) or (not anchored and _not_a_host(host)):
        out.counts["unsupported"] += 1
        return
    # AdGuard's IP rules match answers, not names: a feature, counted, not a broken line
    got = out.name_key(body, f"{name}:{number}", {"ip-literal": "unsupported"})
    if got is None:
        return
    key, star = got
    kind = Kind.SUBTREE if subtree else Kind.WILDCARD if star else Kind.EXACT
    out.add(key, make_flags(kind, allow), ref)
    if loose:
        out.counts["no-separator"] += 1


def _not_a_host(bare: bytes) -> bool:
    """A bare word without a dot (``banner``) or a file name (``ads.js``)."""
    dot = bare.rfind(b".")
    return dot < 0 or bare[dot + 1 :] in FILE_SUFFIXES


def _is_ip(field: bytes) -> bool:
    try:
        ipaddress.ip_address(field.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return False
    return True
