"""Judging a fetched list: does it replace the last good one, and if not, why not.

Nothing here fetches, reads a clock or touches a file: the fetch adapter hands over the
body (as open streams), its size and digest, the parsed list or the parse error, and the
figures of the last good list; this module answers with a ``Judgement`` whose ``reason`` is
a short code, used both in the log line and as the metric label.

The gates (in this order, the first failing one is the reason):

* ``empty``: a body of zero bytes (research/dns-anchors.md §3.3: lists wiped by empty
  downloads);
* ``sha256-mismatch``: the body is not the pinned ``sha256:`` or the sidecar's digest;
* a parse error: the ``ListFormatError`` reason (``bad-xml``, ``bad-zip``, ``no-dump-xml``...);
* ``too-many-issues``: located issues above ``max_issue_ratio`` of the lines/records;
* ``too-few-rules``: fewer than ``min_rules``;
* ``shrank``: fewer than ``(1 - max_shrink)`` times the rules of the last good list.

Also pure helpers the adapter uses: the retry schedule (exponential backoff with jitter),
the conditional-request headers, the sidecar reader, and the body decoder (gzip, ZIP).
"""

from __future__ import annotations

import gzip
import io
import re
import struct
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO, Final, cast

from blockgate.config import SourceConfig
from blockgate.errors import FeedFormatError, ListFormatError
from blockgate.lists.base import Input, ParsedList

ACCEPTED: Final = "accepted"
NOT_MODIFIED: Final = "not-modified"

GZIP_MAGIC: Final = b"\x1f\x8b"
ZIP_MAGIC: Final = b"PK\x03\x04"
# The rkn-xml parser opens the registry's ZIP itself (it looks for dump.xml in it).
ZIP_AWARE_FORMATS: Final = frozenset({"rkn-xml"})

# Retries after a failed fetch: 10 s, 20 s, 40 s ... (Blocky waits 500 ms between its 3
# attempts, PowerDNS retries a failed RPZ every 60 s, research/dns-anchors.md §1), never
# later than the source's own refresh interval, and at most every 15 minutes.
RETRY_FIRST: Final = 10.0
RETRY_CAP: Final = 900.0

# What gzip and zipfile raise on damaged or truncated input, as they are read.
_DECODE_ERRORS: Final = (
    OSError, EOFError, zlib.error, zipfile.BadZipFile, ValueError, NotImplementedError,
    RuntimeError, struct.error,
)  # fmt: skip
_SIDECAR_LINE: Final = re.compile(rb"^\s*([0-9a-fA-F]{64})(?:\s+\*?(\S.*?))?\s*$")


@dataclass(frozen=True, slots=True)
class Limits:
    """The gates of one source (from its config)."""

    max_issue_ratio: float = 0.01
    min_rules: int = 1
    max_shrink: float = 0.5

    @classmethod
    def of(cls, src: SourceConfig) -> Limits:
        return cls(src.max_issue_ratio, src.min_rules, src.max_shrink)


@dataclass(frozen=True, slots=True)
class Candidate:
    """What was fetched, reduced to the figures the gates look at."""

    size: int
    sha256: str
    rules: int = 0
    units: int = 0
    issues: int = 0

    @classmethod
    def of(cls, parsed: ParsedList, size: int, sha256: str) -> Candidate:
        return cls(size, sha256, len(parsed), parsed.units, sum(parsed.issue_counts.values()))


@dataclass(frozen=True, slots=True)
class Judgement:
    accepted: bool
    reason: str  # ACCEPTED, or the code of the gate that refused (a metric label)
    detail: str  # for the log line

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}" if self.detail else self.reason


def refused(reason: str, detail: str = "") -> Judgement:
    return Judgement(False, reason, detail)


def judge(limits: Limits, got: Candidate, last_good_rules: int | None,
          expected_sha256: str | None = None) -> Judgement:
    """Accept ``got`` or give the first gate it fails (parse errors: see ``judge_error``)."""
    if got.size == 0:
        return refused("empty", "the body is empty")
    if expected_sha256 is not None and got.sha256 != expected_sha256.lower():
        return refused("sha256-mismatch", f"sha256 is {got.sha256}, expected {expected_sha256.lower()}")
    if got.issues > limits.max_issue_ratio * got.units:
        share = got.issues / got.units if got.units else 1.0
        return refused("too-many-issues", f"{got.issues} located issues in {got.units} entries "
                       f"({share:.1%} > {limits.max_issue_ratio:.1%})")
    if got.rules < limits.min_rules:
        return refused("too-few-rules", f"{got.rules} rules, at least {limits.min_rules} required")
    if last_good_rules and got.rules < (1.0 - limits.max_shrink) * last_good_rules:
        return refused("shrank", f"{got.rules} rules against {last_good_rules} in the last good list "
                       f"(more than {limits.max_shrink:.0%} fewer)")
    detail = f"{got.rules} rules" + (f" (was {last_good_rules})" if last_good_rules is not None else "")
    return Judgement(True, ACCEPTED, detail)


def judge_error(exc: ListFormatError, size: int) -> Judgement:
    """A body the parser refused as a whole (an empty body is ``empty`` whatever it says)."""
    if size == 0:
        return refused("empty", "the body is empty")
    return refused(exc.reason, str(exc))


# -- schedule -------------------------------------------------------------------------------


def retry_delay(failures: int, refresh: float, jitter: float) -> float:
    """Seconds until the next try after ``failures`` failures in a row (``failures >= 1``).

    Exponential backoff with "equal jitter": half the step is fixed, half is spread by
    ``jitter`` in [0, 1) (the caller's random number), so sources that failed together
    do not retry together.
    """
    step = min(RETRY_FIRST * 2.0 ** min(max(failures, 1) - 1, 32), RETRY_CAP, refresh)
    return step * (0.5 + 0.5 * min(max(jitter, 0.0), 1.0))


# -- HTTP ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Validators:
    """What the last accepted response said about itself (RFC 9110 §8.8)."""

    etag: str | None = None
    last_modified: str | None = None


def conditional_headers(v: Validators) -> dict[str, str]:
    """Headers of a conditional GET (RFC 9110 §13.1.2, §13.1.3): a server that implements
    both evaluates If-None-Match first, so sending both is safe."""
    out = {}
    if v.etag:
        out["If-None-Match"] = v.etag
    if v.last_modified:
        out["If-Modified-Since"] = v.last_modified
    return out


def parse_sidecar(data: bytes, name: str = "") -> str:
    """The SHA-256 in a sidecar file: a bare digest, or ``sha256sum`` lines (``DIGEST  NAME``).

    With several lines, the one naming ``name`` (the list's file name) is taken.
    raises only FeedFormatError; anything else is a bug.
    """
    found: list[tuple[str, str]] = []
    for line in data.splitlines():
        if not line.strip():
            continue
        m = _SIDECAR_LINE.match(line)
        if m is None:
            raise FeedFormatError("the sidecar is not a SHA-256 digest or sha256sum output",
                                  "sha256-sidecar")
        file = (m.group(2) or b"").decode("utf-8", "replace")
        found.append((m.group(1).decode("ascii").lower(), file))
    if len(found) == 1:
        return found[0][0]
    named = [d for d, f in found if f and f.rsplit("/", 1)[-1] == name]
    if len(named) == 1:
        return named[0]
    raise FeedFormatError(f"the sidecar holds {len(found)} digests, none for {name!r}" if found
                          else "the sidecar is empty", "sha256-sidecar")


# -- bodies -------------------------------------------------------------------------------


class _Guarded(io.RawIOBase):
    """A decoded stream whose errors are ``ListFormatError`` and whose size is capped."""

    def __init__(self, inner: BinaryIO, name: str, reason: str, limit: int) -> None:
        self.inner = inner
        self.name_ = name
        self.reason = reason
        self.left = limit

    def readable(self) -> bool:
        return True

    def readinto(self, buf: bytearray | memoryview) -> int:  # type: ignore[override]
        want = min(len(buf), self.left + 1)
        try:
            data = self.inner.read(want)
        except _DECODE_ERRORS as exc:
            raise ListFormatError(self.name_, f"cannot decode: {exc}", self.reason) from None
        self.left -= len(data)
        if self.left < 0:
            raise ListFormatError(self.name_, "decoded body over max_bytes", "too-large")
        buf[:len(data)] = data
        return len(data)


def _guard(inner: BinaryIO, name: str, reason: str, limit: int) -> BinaryIO:
    return cast(BinaryIO, io.BufferedReader(_Guarded(inner, name, reason, limit), 1 << 16))


def open_inputs(fmt: str, members: Sequence[Input], max_bytes: int) -> list[Input]:
    """The parser's inputs for stored body files: gzip is decoded, a ZIP becomes its files
    (in name order) unless the format reads ZIPs itself. Streams must be seekable.

    Decoded bytes are capped at ``max_bytes`` per input (a small gzip can hold a huge body).
    raises only ListFormatError; anything else is a bug.
    """
    out: list[Input] = []
    for m in members:
        try:
            head = m.stream.read(4)
            m.stream.seek(0)
        except (OSError, ValueError) as exc:
            raise ListFormatError(m.name, f"cannot read: {exc}", "unreadable") from None
        if head.startswith(GZIP_MAGIC):
            name = m.name[:-3] if m.name.endswith(".gz") else m.name
            decoded = cast(BinaryIO, gzip.GzipFile(fileobj=m.stream, mode="rb"))
            out.append(Input(name, _guard(decoded, m.name, "bad-gzip", max_bytes)))
        elif head.startswith(ZIP_MAGIC) and fmt not in ZIP_AWARE_FORMATS:
            out.extend(_zip_members(m, max_bytes))
        else:
            out.append(m)
    return out


def _zip_members(m: Input, max_bytes: int) -> list[Input]:
    try:
        archive = zipfile.ZipFile(m.stream)
        infos = sorted((i for i in archive.infolist() if not i.is_dir()), key=lambda i: i.filename)
        if not infos:
            raise ListFormatError(m.name, "ZIP without files", "bad-zip")
        return [Input(f"{m.name}/{i.filename}",
                      _guard(cast(BinaryIO, archive.open(i)), m.name, "bad-zip", max_bytes))
                for i in infos]
    except _DECODE_ERRORS as exc:
        raise ListFormatError(m.name, f"not a readable ZIP: {exc}", "bad-zip") from None


# -- per-source state -------------------------------------------------------------------------

# ``path:`` sources are looked at (one stat per file) at least this often, whatever their
# ``refresh``: a changed local file should be in force within seconds, not half an hour.
PATH_POLL: Final = 5.0


@dataclass(frozen=True, slots=True)
class SourceState:
    """What ``blockgate status`` and the metrics show of one source (wall-clock seconds)."""

    name: str
    kind: str  # "url" or "path"
    origin: str
    rules: int  # of the list in force (0: none)
    in_force: bool
    last_attempt: float | None
    last_result: str | None  # ACCEPTED, NOT_MODIFIED, or the reason of the refusal/failure
    last_detail: str
    last_success: float | None  # last ACCEPTED or NOT_MODIFIED
    accepted_at: float | None  # when the list in force was accepted
    list_age: float | None  # seconds, at the time of the snapshot
    etag: str | None
    last_modified: str | None
    sha256: str | None
    failures: int  # in a row
    next_attempt: float | None
    results: tuple[tuple[str, int], ...]  # attempts by result label, for *_fetch_total


@dataclass(slots=True)
class InForce:
    """The list a source serves (from the stored copy's metadata)."""

    rules: int
    accepted_at: float
    sha256: str
    etag: str | None = None
    last_modified: str | None = None


class Feed:
    """When to try a source next, and what its tries gave. Times are passed in: ``mono``
    (monotonic, for scheduling) and ``wall`` (for display)."""

    def __init__(self, name: str, kind: str, origin: str, refresh: float) -> None:
        self.name = name
        self.kind = kind
        self.origin = origin
        self.interval = min(refresh, PATH_POLL) if kind == "path" else refresh
        self.due = 0.0  # monotonic: at once
        self.due_wall: float | None = None
        self.failures = 0
        self.results: dict[str, int] = {}
        self.last_attempt: float | None = None
        self.last_result: str | None = None
        self.last_detail = ""
        self.last_success: float | None = None
        self.in_force: InForce | None = None

    def done(self, result: str, detail: str, mono: float, wall: float, jitter: float) -> float:
        """Record one try; returns the delay until the next one."""
        self.results[result] = self.results.get(result, 0) + 1
        self.last_attempt, self.last_result, self.last_detail = wall, result, detail
        if result in (ACCEPTED, NOT_MODIFIED):
            self.failures = 0
            self.last_success = wall
            delay = self.interval
        else:
            self.failures += 1
            delay = retry_delay(self.failures, self.interval, jitter)
        self.due, self.due_wall = mono + delay, wall + delay
        return delay

    def now(self, mono: float) -> None:
        """Try again at once (a reload)."""
        self.due = mono

    def state(self, wall: float) -> SourceState:
        f = self.in_force
        return SourceState(
            self.name, self.kind, self.origin, f.rules if f else 0, f is not None,
            self.last_attempt, self.last_result, self.last_detail, self.last_success,
            f.accepted_at if f else None, max(0.0, wall - f.accepted_at) if f else None,
            f.etag if f else None, f.last_modified if f else None, f.sha256 if f else None,
            self.failures, self.due_wall, tuple(sorted(self.results.items())))
