"""[rpz]: a DNS Response Policy Zone master file, QNAME triggers only.

An RPZ is a zone whose owners are triggers and whose records are actions ("Policy Actions" and
"Policy Triggers" of https://datatracker.ietf.org/doc/html/draft-vixie-dnsop-dns-rpz-00). The
trigger is the owner relative to the zone apex: ``x`` is an EXACT rule, ``*.x`` a WILDCARD rule
(names strictly below ``x``). ``CNAME .`` is NXDOMAIN, ``CNAME *.`` NODATA, ``CNAME rpz-drop.``
DROP, ``CNAME rpz-tcp-only.`` TCP_ONLY, and ``CNAME rpz-passthru.`` an allow rule (so is the
obsolete CNAME to the trigger itself, still PASSTHRU in BIND). Anything else (A, AAAA, TXT, a
CNAME to a real name, any type) is local data: a SINKHOLE rule whose payload is all the owner's
records as ``(TYPE, presentation rdata)``, under the ref of its first record. ``rpz-ip``,
``rpz-nsdname``, ``rpz-nsip`` and ``rpz-client-ip`` triggers are counted
(``unsupported-trigger``, ``unsupported-<label>``, per record), not loaded. A different second
policy for a trigger is a ``duplicate-trigger`` issue and the first stays (as in Unbound's
tests); identical records count once, as in a zone.

The apex is the ``origin`` option, else ``$ORIGIN``, else the first SOA owner; an SOA with
another absolute owner starts a new zone (Knot's ``policy.test.rpz.soa``). With no apex known,
relative owners are the triggers as they stand (``@ SOA`` plus relative names, as URLhaus
writes) and absolute owners are ``outside-zone``. Files of one source are read as if each were
``$INCLUDE``d at the end of the one before: origin and apex carry over, the owner does not.

The master-file reader (RFC 1035 §5.1, https://www.rfc-editor.org/rfc/rfc1035#section-5.1) is
hand-written; dnspython is the tests' oracle only. It reads ``$ORIGIN``, ``$TTL``, ``$INCLUDE``
(an ``include-ignored`` issue: a parser reads only its streams), ``;`` comments, ``( )`` over
lines, quoted strings, ``\\`` escapes, a blank owner (the previous one), ``@``, TTL and class in
either order. Case is kept (TXT data is answered as written); names are lowercased.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from itertools import compress, repeat
from operator import itemgetter, or_
from typing import Final, NamedTuple

from blockgate.domain import list_key
from blockgate.errors import DomainError, ListFormatError
from blockgate.lists.base import Input, ParsedList, make_flags
from blockgate.lists.text import BLOCK, decode_line, unusual_lines
from blockgate.policy import Action
from blockgate.trie import KIND_MASK, Kind

ORIGIN_OPTION: Final = "origin"
# ``origin``: the zone apex, free text (an empty tuple, see ``lists.format_options``).
OPTIONS: Final[Mapping[str, tuple[str, ...]]] = {ORIGIN_OPTION: ()}

# Lines one ``( )`` group may span: an SOA takes under ten, and a stray "(" must not swallow the
# file; past this the group is reported and its lines are read again on their own.
MAX_GROUP_LINES: Final = 64
# Local-data records per trigger: 64 A records already make a ~1 KB answer; more is a broken feed.
MAX_LOCAL_RECORDS: Final = 64

# draft-vixie-dnsop-dns-rpz-00, "Policy Actions": CNAME targets that are actions, not data.
_POLICY: Final[dict[str, tuple[Action | None, bool]]] = {
    ".": (Action.NXDOMAIN, False),
    "*.": (Action.NODATA, False),
    "rpz-passthru.": (None, True),
    "rpz-drop.": (Action.DROP, False),
    "rpz-tcp-only.": (Action.TCP_ONLY, False),
}
# draft-vixie-dnsop-dns-rpz-00, "Policy Triggers": the last label names a non-QNAME trigger.
_NON_QNAME: Final = frozenset({"rpz-ip", "rpz-nsdname", "rpz-nsip", "rpz-client-ip"})
_CLASSES: Final = frozenset({"in", "ch", "hs", "cs", "none", "any"})

# RFC 2308 §4 TTLs, with BIND's unit suffixes (1h30m).
_TTL: Final = re.compile(r"[0-9]+|(?:[0-9]+[smhdw])+", re.I)
_TYPE: Final = re.compile(r"[a-z][a-z0-9-]*")
_SPECIAL: Final = re.compile(r'["();\\]')
_TOKEN: Final = re.compile(
    r'(?P<s>\s+)|(?P<w>"(?:[^"\\]|\\.)*"|(?:[^\s"();\\]|\\.)+)|(?P<p>[()])|(?P<c>;)|(?P<x>.)', re.S)
_ESCAPE: Final = re.compile(r"\\([0-9]{3}|.)", re.S)
_BOM: Final = b"\xef\xbb\xbf"

# The bulk of a large RPZ is ``owner CNAME <policy>``; runs of such lines are taken in C-level
# passes (``_block``, ``plain_run``), every other line by the full reader, to the same rules.
_NON_QNAME_BYTES: Final = frozenset(label.encode("ascii") for label in _NON_QNAME)
_FIRST: Final = itemgetter(0)
_THIRD: Final = itemgetter(2)
# Flag byte of an EXACT rule per policy target; a WILDCARD rule adds 2 (Kind 1 -> 3).
_TARGET_FLAGS: Final = {t.encode("ascii"): make_flags(Kind.EXACT, allow, act)
                         for t, (act, allow) in _POLICY.items()}
_WILD_BIT: Final = Kind.WILDCARD ^ Kind.EXACT
_STAR_TO_WILD: Final = bytes(_WILD_BIT if b == 42 else 0 for b in range(256))  # first byte "*"
_IS_WILD: Final = bytes(1 if f & KIND_MASK == Kind.WILDCARD else 0 for f in range(256))
_NOT_WILD: Final = bytes(1 - b for b in _IS_WILD)


def parse(inputs: Sequence[Input], options: Mapping[str, str] | None = None) -> ParsedList:
    """Parse RPZ master files. raises only ListFormatError; anything else is a bug."""
    out = ParsedList("rpz")
    zone = _Zone(out, _origin_option(options or {}))
    for inp in inputs:
        base = out.begin_file(inp.name)
        zone.begin_file(inp.name, base)
        reader = _Reader(zone.entry)
        lines = 0
        for block in iter(partial(inp.stream.readlines, BLOCK), []):
            if not lines and block[0].startswith(_BOM):
                block[0] = block[0][len(_BOM) :]
            _block(zone, reader, block, lines + 1)
            lines += len(block)
        reader.finish()
        out.end_file(lines)
    _settle(out)
    return out


def _block(zone: _Zone, reader: _Reader, block: list[bytes], first: int) -> None:
    """One block of lines: runs of plain policy lines in bulk, the others one by one.

    A plain line is ``owner CNAME <policy target>``, single spaces, with a relative owner that
    is a key as it stands (what generators write, a million times over). Whole-block C-level
    passes find them: split at `` cname ``, look the target up, and ``unusual_lines`` names
    the owners that are not clean keys (blank, indented, absolute, quoted...).
    """
    low = b"".join(block).lower().replace(b"\r\n", b"\n").split(b"\n")
    if len(low) > len(block):
        low.pop()  # the block ends with a newline
    parts = list(map(bytes.rpartition, low, repeat(b" cname ")))
    owners = list(map(_FIRST, parts))
    flags = list(map(_TARGET_FLAGS.get, map(_THIRD, parts)))
    plain = bytearray(map(bool, flags))
    for i in unusual_lines(owners):
        plain[i] = 0
    if b"rpz-" in b"".join(owners):
        for i, owner in enumerate(owners):
            if owner[owner.rfind(b".") + 1 :] in _NON_QNAME_BYTES:
                plain[i] = 0
    i, n = 0, len(block)
    while i < n:
        if plain[i] and not reader.depth and zone.suffix == "":
            j = plain.find(0, i)
            j = n if j < 0 else j
            zone.plain_run(owners[i:j], flags[i:j], first + i)  # type: ignore[arg-type]  # no None
            i = j
        else:
            reader.feed(first + i, decode_line(block[i].rstrip(b"\r\n")))
            i += 1


def _origin_option(options: Mapping[str, str]) -> str | None:
    text = options.get(ORIGIN_OPTION, "").strip()
    if not text:
        return None
    if text == ".":
        return "."
    try:
        key = list_key(text)[0]
    except DomainError as exc:
        raise ListFormatError("option origin", str(exc), "bad-option") from None
    return key.decode("ascii") + "."


# -- reading: physical lines -> entries ---------------------------------------------------


class _Entry(NamedTuple):
    """A logical entry: the tokens of a line or of a ``( )`` group (quoted strings keep quotes)."""

    line: int  # its first line in the file
    indented: bool  # starts with blank space: the owner is the previous one
    tokens: list[str]
    text: str  # the first line, for issues
    ok: bool  # False: an unbalanced quote or parenthesis


class _Reader:
    """Lines in, entries out (to ``emit``); a ``( )`` group holds its lines until it closes."""

    def __init__(self, emit: Callable[[_Entry], None]) -> None:
        self.emit = emit
        self.held: list[tuple[int, str]] = []
        self.tokens: list[str] = []
        self.depth = 0

    def feed(self, number: int, text: str) -> None:
        if not self.depth:
            tokens: list[str] = []
            depth = _tokens(text, 0, tokens)
            if depth > 0:
                self.held, self.tokens, self.depth = [(number, text)], tokens, depth
            elif depth < 0 or tokens:
                self.emit(_Entry(number, text[:1].isspace(), tokens, text, depth == 0))
            return
        self.held.append((number, text))
        self.depth = _tokens(text, self.depth, self.tokens)
        if self.depth == 0:
            (number, text), tokens = self.held[0], self.tokens
            self.held, self.tokens = [], []
            if tokens:
                self.emit(_Entry(number, text[:1].isspace(), tokens, text, True))
        elif self.depth < 0 or len(self.held) > MAX_GROUP_LINES:
            self.fail()

    def fail(self) -> None:
        """The group does not close: report its first line, read the others on their own."""
        held = self.held
        self.held, self.tokens, self.depth = [], [], 0
        self.emit(_Entry(held[0][0], False, [], held[0][1], False))
        for item in held[1:]:
            self.feed(*item)

    def finish(self) -> None:
        while self.depth > 0:
            self.fail()


def _tokens(text: str, depth: int, into: list[str]) -> int:
    """Append the tokens of one line; return the parenthesis depth after it, -1 if malformed."""
    if _SPECIAL.search(text) is None:
        into.extend(text.split())
        return depth
    for m in _TOKEN.finditer(text):
        kind = m.lastgroup
        if kind == "w":
            into.append(m.group())
        elif kind == "p":
            depth += 1 if m.group() == "(" else -1
            if depth < 0:
                return -1
        elif kind == "c":
            break
        elif kind == "x":  # a quote never closed, or a backslash at the end of the line
            return -1
    return depth


def _split_rr(tokens: list[str]) -> tuple[str, str, list[str]] | None:
    """``[ttl] [class] type rdata...`` (TTL and class in either order) -> class, type, rdata."""
    cls, ttl, i = "", False, 0
    while i < min(2, len(tokens)):
        low = tokens[i].lower()
        if not cls and (low in _CLASSES or (low[:5] == "class" and low[5:].isdigit())):
            cls = low
        elif not ttl and low[:1].isdigit() and _TTL.fullmatch(low):
            ttl = True
        else:
            break
        i += 1
    if i >= len(tokens) - 1:  # no type, or a type without data
        return None
    rtype = tokens[i].lower()
    if not _TYPE.fullmatch(rtype) or rtype in _CLASSES:
        return None
    return cls or "in", rtype, tokens[i + 1 :]


def _absolute(name: str) -> bool:
    """The name ends with an unescaped dot (RFC 1035 §5.1: then it is absolute)."""
    if not name.endswith("."):
        return False
    body = name[:-1]
    return (len(body) - len(body.rstrip("\\"))) % 2 == 0


def _unescape(name: str) -> str | None:
    """``\\X`` and ``\\DDD`` resolved; None if a label holds a dot (no key can say that)."""
    if "\\" not in name:
        return name
    codes = [int(e) if len(e) == 3 else ord(e) for e in _ESCAPE.findall(name)]
    if any(c == 46 or c > 255 for c in codes):  # 46: "."
        return None
    chars = iter(map(chr, codes))
    return _ESCAPE.sub(lambda _m: next(chars), name)


# -- meaning: entries -> rules -------------------------------------------------------------


class _Zone:
    """What the files have said so far (origin, apex, previous owner), and the rules made."""

    def __init__(self, out: ParsedList, origin: str | None) -> None:
        self.out = out
        self.origin = origin  # absolute, lowercase, with the final dot; None: unknown
        self.apex = origin
        self.suffix: str | None = ""  # appended to a relative owner to make its trigger
        self.dot_apex = "." + origin if origin else ""
        self.last: tuple[str | None, str | None] | None = None  # previous owner's (trigger, name)
        self.name = ""
        self.base = 0
        if origin is not None:
            out.meta["origin"] = origin

    def begin_file(self, name: str, base: int) -> None:
        self.name, self.base, self.last = name, base, None

    def issue(self, entry: _Entry, reason: str, detail: str = "") -> None:
        text = entry.text.strip()
        self.out.issue(f"{self.name}:{entry.line}", reason, f"{detail}: {text}" if detail else text)

    # names -------------------------------------------------------------------------------
    def qualify(self, name: str) -> str | None:
        """The absolute form of an owner or target; None if relative with no origin known."""
        if name == "@":
            return self.origin
        if _absolute(name):
            return name
        if self.origin is None:
            return None
        return name + self.origin if self.origin == "." else f"{name}.{self.origin}"

    def relative(self, absolute: str) -> str | None:
        """An absolute name minus the apex ("" for the apex); None if outside the zone."""
        if self.apex is None or absolute == self.apex:
            return None if self.apex is None else ""
        if self.apex == ".":
            return absolute[:-1]
        return absolute[: -len(self.dot_apex)] if absolute.endswith(self.dot_apex) else None

    def resolve(self, owner: str) -> tuple[str | None, str | None]:
        """An owner as written -> (trigger, absolute name); either may be None."""
        if owner != "@" and not _absolute(owner):
            if self.origin is None:  # no apex known: the relative owner is the trigger
                return owner, None
            trigger = owner + self.suffix if self.suffix is not None else None
            return trigger, self.qualify(owner)
        absolute = self.qualify(owner)
        if absolute is None:
            return "", None  # "@" with no origin: the (unnamed) apex itself
        return self.relative(absolute), absolute

    def set_apex(self, apex: str) -> None:
        self.apex = apex
        self.dot_apex = "." + apex
        self.out.meta.setdefault("origin", apex)
        self.rebase()

    def rebase(self) -> None:
        rel = self.relative(self.origin) if self.origin is not None else ""
        self.suffix = None if rel is None else ("." + rel if rel else "")

    # entries -----------------------------------------------------------------------------
    def entry(self, entry: _Entry) -> None:
        self.out.units += 1
        if not entry.ok:
            self.issue(entry, "bad-record", "unbalanced quote or parenthesis")
            return
        tokens = entry.tokens
        if entry.indented:
            if self.last is None:
                self.issue(entry, "bad-record", "no previous owner")
                return
            owner, rest = self.last, tokens
        elif tokens[0].startswith("$"):
            self.directive(entry)
            return
        else:
            owner, rest = self.resolve(tokens[0].lower()), tokens[1:]
            self.last = owner
        rr = _split_rr(rest)
        if rr is None or rr[0] != "in":
            self.issue(entry, "bad-record")
            return
        _, rtype, rdata = rr
        trigger = owner[0]
        if rtype == "soa":
            self.soa(owner[1], rdata, entry)
        elif trigger is None:
            self.issue(entry, "outside-zone", f"apex {self.apex or '(none)'}")
        elif not trigger:
            # SOA and NS at the apex make the zone valid; they are not policy.
            if rtype not in ("soa", "ns"):
                self.out.counts["apex-record"] += 1
        else:
            self.record(trigger, rtype, rdata, entry)

    def directive(self, entry: _Entry) -> None:
        word, args = entry.tokens[0].lower(), entry.tokens[1:]
        if word == "$include":
            self.issue(entry, "include-ignored")
        elif word == "$origin" and len(args) == 1:
            self.set_origin(args[0].lower(), entry)
        elif word != "$ttl" or len(args) != 1 or not _TTL.fullmatch(args[0]):
            # (a good $TTL says nothing about rules: TTLs are the DNS layer's business)
            self.issue(entry, "bad-record" if word in ("$origin", "$ttl") else "unknown-directive")

    def set_origin(self, name: str, entry: _Entry) -> None:
        absolute = self.qualify(name)
        if absolute is None:
            self.issue(entry, "bad-record", "relative $ORIGIN with no origin to extend")
            return
        self.origin = absolute
        if self.apex is None or self.relative(absolute) is None:
            self.set_apex(absolute)  # the first origin, or one outside the zone: a new apex
        else:
            self.rebase()

    def soa(self, absolute: str | None, rdata: list[str], entry: _Entry) -> None:
        """An SOA names the apex; one with a new absolute owner starts a new zone."""
        if len(rdata) != 7:
            self.issue(entry, "bad-record", "SOA needs 7 fields")
            return
        self.out.meta.setdefault("serial", rdata[2])
        if absolute is None or absolute == self.apex:
            return
        self.set_apex(absolute)
        if self.origin is None or self.relative(self.origin) is None:
            self.origin = absolute  # relative names now belong to the new zone
            self.rebase()
        self.last = ("", absolute)

    def record(self, trigger: str, rtype: str, rdata: list[str], entry: _Entry) -> None:
        """One record at a trigger: a policy action or a piece of local data."""
        label = trigger[trigger.rfind(".") + 1 :]
        if label in _NON_QNAME:
            self.out.counts["unsupported-trigger"] += 1
            self.out.counts["unsupported-" + label] += 1
            return
        target = rdata[0].lower() if rtype == "cname" and len(rdata) == 1 else ""
        # A CNAME to the trigger itself is the obsolete spelling of PASSTHRU (BIND ARM, RPZ).
        action, allow = _POLICY.get(target) or (
            (None, True) if target == trigger + "." else (Action.SINKHOLE, False))
        rr = self.local_data(rtype, rdata) if action is Action.SINKHOLE else None
        if action is Action.SINKHOLE and rr is None:
            self.issue(entry, "bad-record", f"bad {rtype.upper()} data")
            return
        name = _unescape(trigger)
        try:
            if name is None:
                raise DomainError("a dot inside a label", "escaped-dot")
            key, star, idn = list_key(name)
        except DomainError as exc:
            self.issue(entry, exc.reason, str(exc))
            return
        ref = self.base + entry.line
        self.out.add(key, make_flags(Kind.WILDCARD if star else Kind.EXACT, allow, action), ref)
        self.out.counts["idn"] += idn
        if rr is not None:
            self.out.payloads[ref] = (rr,)

    def plain_run(self, owners: list[bytes], flags: list[int], first: int) -> None:
        """Plain policy lines from line ``first`` on (see ``_block``), in C-level passes."""
        out = self.out
        wild = bytes(map(_FIRST, owners)).translate(_STAR_TO_WILD)  # a clean "*" is "*."
        at = len(out.keys)
        out.keys.extend(owners)
        for i in compress(range(at, at + len(owners)), wild):
            out.keys[i] = out.keys[i][2:]
        out.flags.extend(map(or_, flags, wild))
        out.refs.extend(range(self.base + first, self.base + first + len(owners)))
        out.units += len(owners)
        self.last = self.resolve(owners[-1].decode("ascii"))

    def local_data(self, rtype: str, rdata: list[str]) -> tuple[str, str] | None:
        """A record as (TYPE, presentation rdata); None if its data is malformed."""
        if rtype in ("a", "aaaa"):
            try:
                ip = ipaddress.ip_address(rdata[0] if len(rdata) == 1 else "")
            except ValueError:
                return None
            ok = ip.version == (4 if rtype == "a" else 6) and "%" not in rdata[0]
            return (rtype.upper(), str(ip)) if ok else None
        if rtype == "cname":
            if len(rdata) != 1:
                return None
            target = rdata[0].lower()
            return "CNAME", self.qualify(target) or target  # no origin: as written
        if rtype == "txt":
            return "TXT", " ".join(t if t.startswith('"') else f'"{t}"' for t in rdata)
        return rtype.upper(), " ".join(rdata)


# -- settling: one rule per trigger --------------------------------------------------------


def _settle(out: ParsedList) -> None:
    """Keep the first rule (in file order) per trigger; fold later local data into it.

    Rules are added as records come, one each; a trigger seen again is rare, so the columns
    are checked once at the end rather than through a dict kept during the whole parse.
    """
    groups: list[list[int]] = []
    for table in (_NOT_WILD, _IS_WILD):
        mask = out.flags.translate(table)
        keys = list(compress(out.keys, mask))
        if len(set(keys)) == len(keys):
            continue
        multi = {k for k, c in Counter(keys).items() if c > 1}
        at: dict[bytes, list[int]] = {}
        for i in compress(range(len(out.keys)), mask):
            if out.keys[i] in multi:
                at.setdefault(out.keys[i], []).append(i)
        groups.extend(at.values())
    if not groups:
        return
    keep = bytearray(b"\x01") * len(out.keys)
    for group in groups:
        group.sort(key=out.refs.__getitem__)
        for later in group[1:]:
            keep[later] = 0
            _fold(out, group[0], later)
    out.keys = list(compress(out.keys, keep))
    out.flags = bytearray(compress(out.flags, keep))
    out.refs = type(out.refs)(out.refs.typecode, compress(out.refs, keep))


def _fold(out: ParsedList, first: int, later: int) -> None:
    """A later record for a trigger: more local data, a repeat, or a conflict (first stays)."""
    ref, again = out.refs[first], out.refs[later]
    payload = out.payloads.get(ref)
    extra = out.payloads.pop(again, None)
    if extra is None:
        if payload is None and out.flags[first] == out.flags[later]:
            return  # the same policy again: a zone holds one copy of a record
    elif payload is not None:
        rr = extra[0]
        if rr in payload:
            return
        # A CNAME stands alone at its owner (RFC 1034 §3.6.2,
        # https://www.rfc-editor.org/rfc/rfc1034#section-3.6.2).
        if rr[0] != "CNAME" and all(t != "CNAME" for t, _ in payload):
            if len(payload) < MAX_LOCAL_RECORDS:
                out.payloads[ref] = (*payload, rr)
            else:
                out.issue(out.where(again), "too-many-records", f"over {MAX_LOCAL_RECORDS}")
            return
    name = out.keys[first].decode("ascii")
    if out.flags[first] & KIND_MASK == Kind.WILDCARD:
        name = "*." + name
    out.issue(out.where(again), "duplicate-trigger", f"{name}: first at {out.where(ref)}")
