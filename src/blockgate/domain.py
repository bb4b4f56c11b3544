"""Domain names, from list entries to lookup keys.

Two sides meet in the matcher, and they must produce the same bytes for the same name:

* the **list side** (this module, run once per entry at load time): strip, one leading ``*.``
  as a flag, drop one trailing dot, lowercase, Unicode to A-labels by UTS #46 and IDNA 2008
  (the ``idna`` package), then check the DNS limits. A name that cannot become a key raises
  :class:`DomainError` with a short reason; list parsers turn that into a located issue.
* the **wire side** (``dnswire``, ``tls``): the key is the lowercased ASCII ``bytes`` of the
  name without the trailing dot (``b"www.example.com"``). Nothing is decoded per lookup.

Underscores are accepted (``_dmarc``, real registry entries such as
``gde-kupit-spajs_orenburg.eurobro.biz``); hyphens are accepted anywhere in a label because
matching is bytewise and the registry does list such names.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
from typing import Final

import idna

from blockgate.errors import DomainError

# RFC 1035 §2.3.4 (https://www.rfc-editor.org/rfc/rfc1035#section-2.3.4): 63 octets per label,
# 255 octets on the wire. On the wire a name of presentation length n (no trailing dot) takes
# n + 2 octets (first length octet and the root label), hence 253.
MAX_LABEL: Final = 63
MAX_NAME: Final = 253

# A whole key in one C-level match: labels of 1..63 characters from [a-z0-9_-].
_ASCII_KEY = re.compile(rb"[a-z0-9_-]{1,63}(?:\.[a-z0-9_-]{1,63})*")
_DIGITS: Final = frozenset(b"0123456789")


def ascii_key(name: bytes) -> bytes | None:
    """The key for an already lowercased ASCII name without ``*.`` or trailing dot.

    Returns ``None`` when the fast path cannot decide (non-ASCII, other characters, limits,
    IP literals); the caller then uses :func:`list_key` to get the reason. This is the load
    path for the millions of plain entries, so it is one regex and two length checks.
    """
    if len(name) > MAX_NAME or _ASCII_KEY.fullmatch(name) is None:
        return None
    if name[-1] in _DIGITS and _is_ip(name.decode("ascii")):
        return None
    return name


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def list_key(raw: bytes | str) -> tuple[bytes, bool, bool]:
    """Normalise one list entry: returns ``(key, star, idn)``.

    ``star`` says the entry began with ``*.``; what that means (subtree, or names strictly
    below) is the list format's business. ``idn`` says the name was converted from Unicode.

    raises only DomainError; anything else is a bug.
    """
    text = raw.decode("utf-8", "surrogateescape") if isinstance(raw, bytes) else raw
    text = text.strip()
    star = False
    if text.startswith("*."):
        star = True
        text = text[2:]
    if "*" in text:
        raise DomainError(f"'*' is allowed only as a leading '*.': {raw!r}", "bad-wildcard")
    if text.endswith("."):
        text = text[:-1]
    if not text:
        raise DomainError("empty name", "empty-name")
    if text.isascii():
        lowered = text.lower()
        key = ascii_key(lowered.encode("ascii"))
        if key is not None:
            return key, star, False
        _explain_ascii(lowered)
    return _idn_key(text), star, True


def _explain_ascii(name: str) -> None:
    """Raise the precise reason an ASCII name was refused by the fast path."""
    if ":" in name or _is_ip(name):
        raise DomainError(f"IP literal, not a name: {name}", "ip-literal")
    labels = name.split(".")
    if any(not label for label in labels):
        raise DomainError(f"empty label in {name!r}", "empty-label")
    if any(len(label) > MAX_LABEL for label in labels):
        raise DomainError(f"label longer than {MAX_LABEL} octets in {name!r}", "label-too-long")
    if len(name) > MAX_NAME:
        raise DomainError(f"name longer than {MAX_NAME} octets: {name[:40]}...", "name-too-long")
    if any(c.isspace() for c in name):
        raise DomainError(f"whitespace inside {name!r}", "bad-character")
    raise DomainError(f"character not allowed in a name: {name!r}", "bad-character")


def _idn_key(text: str) -> bytes:
    """UTS #46 mapping (non-transitional), then IDNA 2008 A-labels for non-ASCII labels."""
    if "\ufffd" in text:
        raise DomainError(f"U+FFFD in {text!r} (text damaged by a wrong decoding)", "replacement")
    if any(0xDC80 <= ord(c) <= 0xDCFF for c in text):
        raise DomainError(f"undecodable bytes in {text!r}", "bad-encoding")
    try:
        mapped = idna.uts46_remap(text, std3_rules=False, transitional=False)
    except idna.IDNAError as exc:
        raise DomainError(f"{text!r}: {exc}", "idna") from None
    out = []
    for label in mapped.split("."):
        if not label or label.isascii():
            out.append(label)
            continue
        try:
            out.append(idna.alabel(label).decode("ascii"))
        except (idna.IDNAError, UnicodeError) as exc:
            raise DomainError(f"{text!r}: {exc}", "idna") from None
    name = ".".join(out).lower()
    key = ascii_key(name.encode("ascii")) if name.isascii() else None
    if key is None:
        _explain_ascii(name)
    return key  # type: ignore[return-value]  # _explain_ascii always raises


def to_unicode(key: bytes) -> str:
    """The Unicode form of a key for display; labels that do not decode stay as they are."""
    out = []
    for label in key.decode("ascii", "replace").split("."):
        if label.startswith("xn--"):
            with contextlib.suppress(idna.IDNAError, UnicodeError):
                label = idna.decode(label)
        out.append(label)
    return ".".join(out)


def input_key(name: str) -> bytes:
    """The key for a name typed by a person (command line).

    Unicode input goes through the same IDNA mapping as the lists, so ``пример.рф`` and
    ``xn--e1afmkfd.xn--p1ai`` give the same key. A ``*`` is refused: a lookup is of a name.
    """
    if "*" in name:
        raise DomainError(f"look up a name, not a pattern: {name!r}", "bad-wildcard")
    return list_key(name)[0]


_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*):[/\\]*")


def url_host(url: str) -> tuple[str, str] | None:
    """``(scheme, host)`` of a registry URL, tolerant of what the registry really contains.

    Handles ``http:/host`` (one slash), ``http:\\\\host``, ``//host`` (no scheme), userinfo,
    ports, IPv6 brackets, and a path/query/fragment with any characters. Returns ``None``
    when there is no host at all. The scheme is lowercased; the host is returned as written
    (``list_key`` normalises it).
    """
    text = url.strip()
    m = _SCHEME.match(text)
    if m:
        scheme = m.group(1).lower()
        rest = text[m.end() :]
        if m.end() - len(m.group(1)) - 1 > 2:  # "https:///path": an empty authority
            return None
    else:
        scheme = ""
        rest = text.lstrip("/\\")
    end = len(rest)
    for sep in "/?#\\":
        i = rest.find(sep)
        if 0 <= i < end:
            end = i
    authority = rest[:end]
    if "@" in authority:
        authority = authority.rsplit("@", 1)[1]
    if authority.startswith("["):
        close = authority.find("]")
        host = authority[1:close] if close > 0 else authority[1:]
    else:
        host = authority.split(":", 1)[0] if authority.count(":") == 1 else authority
    host = host.strip()
    if not host:
        return None
    return scheme, host
