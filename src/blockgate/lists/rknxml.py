"""[rkn-xml]: the Russian registry dump ``dump.xml`` (windows-1251), bare or in its ZIP.

One ``<content>`` element is one registry record; its ``blockType`` says what the regulator
asks for (research/blocklist-formats.md §1.2):

* ``domain``: each ``<domain>`` is blocked as a name (EXACT; option ``domain_scope: subtree``
  blocks its subtree too).
* ``domain-mask``: each ``<domain>`` is a mask ``*.x``, which operators read as "x and all
  names below it" (§1.3): SUBTREE of ``x``; option ``mask_scope: wildcard`` makes it names
  strictly below ``x``, the RPZ reading.
* ``default`` (or absent): the URLs decide. A DNS/SNI engine cannot see a path, so an
  ``https://`` URL blocks its whole host (option ``https_urls``) while an ``http://`` URL is
  left to DPI unless ``http_urls: block-host``. The host blocked is the record's
  ``<domain>``, which the registry gets right more often than the URL (§1.4 item 3); the URL
  host is used only when the record has no usable ``<domain>``.
* ``ip``: addresses only.

Addresses of every record go to ``ParsedList.address`` (a firewall export, not DNS material).
The file is read by expat in chunks, so a dump of hundreds of MB never becomes a DOM.

The record semantics (``Policy``, ``name_key``, ``url_rules``) are shared with ``zicsv``: the
z-i CSV is a projection of the same records.
"""

from __future__ import annotations

import io
import ipaddress
import lzma
import re
import struct
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, BinaryIO, Final
from xml.parsers import expat

from blockgate.domain import url_host
from blockgate.errors import ListFormatError
from blockgate.lists.base import Input, ParsedList, make_flags
from blockgate.trie import Kind

OPTIONS: Final[Mapping[str, tuple[str, ...]]] = {
    "domain_scope": ("exact", "subtree"),
    "mask_scope": ("subtree", "wildcard"),
    "https_urls": ("block-host", "ignore"),
    "http_urls": ("ignore", "block-host"),
}

# Bytes handed to expat per call: large enough that the per-call overhead vanishes, small
# enough that a dump of hundreds of MB is never held whole.
CHUNK: Final = 1 << 20
ZIP_MAGIC: Final = b"PK\x03\x04"
DUMP_NAME: Final = "dump.xml"
SIGNATURE_NAME: Final = "dump.xml.sig"
# Record ids are stored in an ``array("I")`` column.
MAX_RECORD_ID: Final = 0xFFFFFFFF

EXACT: Final = make_flags(Kind.EXACT)
SUBTREE: Final = make_flags(Kind.SUBTREE)
_RECORD_ID = re.compile(r"[0-9]{1,10}")
# The common spelling of a registry URL, read in one C-level match; ``url_host`` takes the
# others (one slash, userinfo, port, brackets, odd case or spaces).
_PLAIN_URL = re.compile(r"(https?)://([^/?#\\:@\[\]\s]+)(?=[/?#\\]|\Z)")
_ADDRESS_TAGS: Final = frozenset({"ip", "ipSubnet", "ipv6", "ipv6Subnet"})
_TEXT_TAGS: Final = _ADDRESS_TAGS | {"url", "domain"}
# What zipfile and the decompressors raise on a damaged or unsupported archive.
_ZIP_ERRORS: Final = (
    zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, OSError, ValueError,
    NotImplementedError, RuntimeError, struct.error,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Policy:
    """What the options make of a registry record's names and URLs."""

    domain: int  # flags of a plain name listed to be blocked as a domain
    mask: int  # flags of a ``*.x`` mask
    https: bool  # an https:// URL blocks its host
    http: bool  # an http:// URL blocks its host

    @classmethod
    def from_options(cls, options: Mapping[str, str] | None) -> Policy:
        opts = options or {}
        return cls(
            domain=SUBTREE if opts.get("domain_scope") == "subtree" else EXACT,
            mask=make_flags(Kind.WILDCARD) if opts.get("mask_scope") == "wildcard" else SUBTREE,
            https=opts.get("https_urls", "block-host") != "ignore",
            http=opts.get("http_urls") == "block-host",
        )


def parse(inputs: Sequence[Input], options: Mapping[str, str] | None = None) -> ParsedList:
    """Parse registry dumps. raises only ListFormatError; anything else is a bug."""
    policy = Policy.from_options(options)
    out = ParsedList("rkn-xml")
    for inp in inputs:
        head, rewound = _peek(inp)
        if head.startswith(ZIP_MAGIC):
            _parse_zip(out, inp, b"" if rewound else head, policy)
        else:
            _parse_xml(out, inp.name, _chunks(inp.name, inp.stream, b"" if rewound else head), policy)
    return out


# -- shared record semantics (also used by zicsv) -------------------------------------------


def name_key(out: ParsedList, where: str, raw: str) -> tuple[bytes, bool] | None:
    """``(key, star)`` of one listed name, or None after recording a located issue.

    The registry puts an address in the domain field of some records: that is how it lists
    an address, not a damaged name, so it is counted (``ip-domain``) rather than reported as
    an issue (issues judge whether a download is broken: a real dump has a few per cent of
    these, and the record's own ``ip`` fields carry its addresses).
    """
    return out.name_key(raw, where, _REGISTRY_COUNTED)


_REGISTRY_COUNTED: Final = {"ip-literal": "ip-domain"}


def add_names(
    out: ParsedList, rules: dict[bytes, int], names: Iterable[tuple[bytes, bool]],
    plain: int, mask: int,
) -> None:  # fmt: skip
    """Names listed for blocking: ``*.x`` masks take ``mask`` flags, the others ``plain``."""
    for key, star in names:
        if star:
            out.counts["mask"] += 1
        rules.setdefault(key, mask if star else plain)


def url_rules(
    out: ParsedList, where: str, urls: Iterable[str], names: list[tuple[bytes, bool]],
    policy: Policy,
) -> dict[bytes, int]:  # fmt: skip
    """Rules of a URL record: its names (or, without any, the URL hosts) if a URL blocks one.

    Every URL is counted by scheme (``https-url``, ``http-url``, ``other-url``); an IP-literal
    host (``ip-host-url``) blocks nothing, there being no name to match.
    """
    hosts: list[str] = []
    blocks = False
    for url in urls:
        if not url.strip():
            continue
        plain = _PLAIN_URL.match(url)
        parts = plain.group(1, 2) if plain else url_host(url)
        if parts is None:
            out.counts["bad-url"] += 1
            out.issue(where, "bad-url", url)
            continue
        scheme, host = parts
        if scheme == "https":
            out.counts["https-url"] += 1
            wanted = policy.https
        elif scheme == "http":
            out.counts["http-url"] += 1
            wanted = policy.http
        else:
            out.counts["other-url"] += 1
            continue
        if _is_ip(host):
            out.counts["ip-host-url"] += 1
            continue
        if wanted:
            blocks = True
            hosts.append(host)
    rules: dict[bytes, int] = {}
    if not blocks:
        return rules
    if not names:  # no usable <domain>: the URL hosts are all there is
        found = (name_key(out, where, host) for host in dict.fromkeys(hosts))
        names = [n for n in found if n is not None]
    add_names(out, rules, names, EXACT, policy.mask)
    return rules


def _is_ip(host: str) -> bool:
    if not host or (host[-1] not in "0123456789" and ":" not in host and "]" not in host):
        return False
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def add_address(out: ParsedList, where: str, text: str) -> None:
    if not out.address(text):
        out.counts["bad-address"] += 1
        out.issue(where, "bad-address", text)


# -- reading the file ----------------------------------------------------------------------


def _peek(inp: Input) -> tuple[bytes, bool]:
    """The first bytes (a ZIP or XML?), and whether the stream was put back before them."""
    try:
        stream = inp.stream
        if stream.seekable():
            start = stream.tell()
            head = stream.read(len(ZIP_MAGIC))
            stream.seek(start)
            return head, True
        return stream.read(len(ZIP_MAGIC)), False
    except (OSError, ValueError) as exc:
        raise ListFormatError(inp.name, f"cannot read: {exc}", "unreadable") from None


def _chunks(name: str, stream: IO[bytes], head: bytes = b"", reason: str = "unreadable") -> Iterator[bytes]:
    if head:
        yield head
    while True:
        try:
            data = stream.read(CHUNK)
        except _ZIP_ERRORS as exc:  # a damaged ZIP member fails only when it is read
            raise ListFormatError(name, f"cannot read: {exc}", reason) from None
        if not data:
            return
        yield data


def _parse_zip(out: ParsedList, inp: Input, head: bytes, policy: Policy) -> None:
    """The ZIP the registry's SOAP service returns: ``dump.xml`` plus its detached signature.

    ``head``: bytes already taken from a stream that cannot seek (then it is read whole,
    as zipfile needs to seek to the central directory at the end).
    """
    try:
        stream: BinaryIO = io.BytesIO(head + inp.stream.read()) if head else inp.stream
        with zipfile.ZipFile(stream) as archive:
            members = {info.filename.rsplit("/", 1)[-1]: info for info in archive.infolist()}
            if SIGNATURE_NAME in members:
                out.counts["signature"] = 1
            info = members.get(DUMP_NAME)
            if info is None:
                raise ListFormatError(inp.name, f"ZIP without {DUMP_NAME}", "no-dump-xml")
            with archive.open(info) as member:
                chunks = _chunks(inp.name, member, reason="bad-zip")
                _parse_xml(out, f"{inp.name}/{info.filename}", chunks, policy)
    except _ZIP_ERRORS as exc:
        raise ListFormatError(inp.name, f"not a readable ZIP: {exc}", "bad-zip") from None


def _parse_xml(out: ParsedList, name: str, chunks: Iterable[bytes], policy: Policy) -> None:
    base = out.begin_file(name)
    parser = expat.ParserCreate()
    parser.buffer_text = True
    reader = _Reader(out, name, base, policy, parser)
    parser.StartElementHandler = reader.start
    parser.EndElementHandler = reader.end
    parser.CharacterDataHandler = reader.chars
    last = b""
    try:
        for data in chunks:
            parser.Parse(data, False)
            last = data
        parser.Parse(b"", True)
    except expat.ExpatError as exc:
        where = f"{name}:{exc.lineno}"
        raise ListFormatError(where, f"{exc} (column {exc.offset + 1})", "bad-xml") from None
    except (ValueError, LookupError) as exc:  # an encoding expat and Python cannot map
        raise ListFormatError(name, f"cannot decode: {exc}", "bad-encoding") from None
    if reader.root is None:
        raise ListFormatError(name, "no root element", "bad-xml")
    lines = parser.CurrentLineNumber
    out.end_file(lines - 1 if last.endswith(b"\n") else lines)


@dataclass(slots=True)
class _Record:
    line: int  # of the <content> start tag, in its file
    where: str  # "file:line", for issues
    record_id: int
    block_type: str
    decision: int = -1
    domains: list[str] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)
    addresses: int = 0


class _Reader:
    """Expat callbacks: collect one <content> at a time, turn it into rules at its end."""

    def __init__(
        self, out: ParsedList, name: str, base: int, policy: Policy, parser: expat.XMLParserType
    ) -> None:
        self.out = out
        self.name = name
        self.base = base
        self.policy = policy
        self.parser = parser
        self.root: str | None = None
        self.record: _Record | None = None
        self.nested = 0  # <content> inside <content>: not the registry's shape, skipped
        self.text: list[str] | None = None

    def start(self, tag: str, attrs: dict[str, str]) -> None:
        if self.root is None:
            self._root(tag, attrs)
        elif tag == "content":
            self._content(attrs)
        elif self.record is None:
            return
        elif tag in _TEXT_TAGS:
            self.text = []
        elif tag == "decision":
            self.record.decision = self.out.decision(
                attrs.get("number", "").strip(),
                attrs.get("date", "").strip(),
                attrs.get("org", "").strip(),
            )

    def chars(self, data: str) -> None:
        if self.text is not None:
            self.text.append(data)

    def end(self, tag: str) -> None:
        record = self.record
        if record is None:
            return
        if tag == "content":
            if self.nested:
                self.nested -= 1
            else:
                self.record = None
                _finish(self.out, self.base, record, self.policy)
        elif self.text is not None and tag in _TEXT_TAGS:
            text = "".join(self.text).strip()
            self.text = None
            if tag == "url":
                record.urls.append(text)
            elif tag == "domain":
                record.domains.append(text)
            else:
                record.addresses += 1
                add_address(self.out, record.where, text)

    def _root(self, tag: str, attrs: dict[str, str]) -> None:
        self.root = tag
        if tag.rsplit(":", 1)[-1] != "register":
            where = f"{self.name}:{self.parser.CurrentLineNumber}"
            raise ListFormatError(where, f"root element <{tag}> is not a registry <reg:register>",
                                  "not-registry")  # fmt: skip
        for attr in ("updateTime", "updateTimeUrgently", "formatVersion"):
            if attr in attrs:
                self.out.meta[attr] = attrs[attr]

    def _content(self, attrs: dict[str, str]) -> None:
        line = self.parser.CurrentLineNumber
        where = f"{self.name}:{line}"
        if self.record is not None:
            self.nested += 1
            self.out.issue(where, "nested-content", "<content> inside <content>")
            return
        raw_id = attrs.get("id", "").strip()
        record_id = int(raw_id) if _RECORD_ID.fullmatch(raw_id) else 0
        if not 0 < record_id <= MAX_RECORD_ID:
            record_id = 0
            self.out.issue(where, "bad-id", f"content id={raw_id!r}")
        block_type = attrs.get("blockType", "").strip() or "default"
        self.record = _Record(line, where, record_id, block_type)


def _finish(out: ParsedList, base: int, record: _Record, policy: Policy) -> None:
    """One complete <content>: its rules, with the record as their origin."""
    out.units += 1
    if not record.domains and not record.urls:
        out.counts["ip-only" if record.addresses else "empty"] += 1
    rules = _record_rules(out, record.where, record, policy)
    if rules:
        ref = out.record(base + record.line, record.record_id, record.decision)
        for key, flags in rules.items():
            out.add(key, flags, ref)
        out.spill()


def _record_rules(out: ParsedList, where: str, record: _Record, policy: Policy) -> dict[bytes, int]:
    block_type = record.block_type
    rules: dict[bytes, int] = {}
    if block_type == "ip":
        return rules
    names = [n for n in (name_key(out, where, d) for d in record.domains) if n is not None]
    if block_type in ("domain", "domain-mask") and not record.domains:
        out.issue(where, "no-domain", f"blockType={block_type} record without <domain>")
    if block_type == "domain":
        add_names(out, rules, names, policy.domain, policy.mask)
    elif block_type == "domain-mask":
        for key, star in names:
            # A mask written without "*." still names the base of the masked subtree.
            out.counts["mask" if star else "mask-without-star"] += 1
            rules.setdefault(key, policy.mask if star else SUBTREE)
    else:
        if block_type != "default":
            # As u2ckdump does: report it, and read the record by its URLs.
            out.issue(where, "unknown-block-type", block_type)
        if record.urls:
            rules = url_rules(out, where, record.urls, names, policy)
        elif names:
            # No URL to decide: the z-i projection shows such records as domain rows,
            # which are domain blocks, and so are they here.
            out.counts["domain-without-url"] += 1
            add_names(out, rules, names, policy.domain, policy.mask)
    return rules
