"""Getting list bodies and keeping the last good one: HTTP(S), files on disk, the state dir.

* ``http_get``: one GET with the stdlib (``http.client`` + ``ssl``): conditional
  (If-None-Match / If-Modified-Since), a connect timeout and a total deadline, a size cap,
  TLS verified by default (optionally against ``ca_file``), redirects followed. The body
  streams into a file as it arrives, hashed on the way.
* ``path:`` sources (a file, a directory or a glob of split files, one source) are copied
  into the state dir when their size or mtime changed, and count as changed only when the
  copy's SHA-256 differs: the copy, not the live file, is what gets parsed and kept.
* ``Store``: the last good copy of every source under ``state_dir/sources/NAME/``, written
  so that a SIGKILL at any moment leaves the previous copy or the new one, never a mix
  (temporary file, fsync, rename, fsync of the directory; the metadata file is the commit).
* ``update``: fetch, parse, judge (``feeds``), and commit or discard: one source, one try.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import http.client
import io
import json
import os
import re
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from typing import BinaryIO, Final

from blockgate import __version__, feeds, lists
from blockgate.config import Config, SourceConfig
from blockgate.engine import LoadedSource
from blockgate.errors import FeedFormatError, FetchError, ListFormatError
from blockgate.feeds import ACCEPTED, NOT_MODIFIED, Candidate, Limits, Validators
from blockgate.lists.base import Input, ParsedList, RuleSink, streaming

_GLOB_CHARS = re.compile(r"[*?\[]")
# Time allowed to open the TCP connection (and finish TLS), within the source's total
# ``timeout``: a resolver or firewall that drops SYNs should fail fast, not in a minute.
CONNECT_TIMEOUT: Final = 10.0
# Bytes read per call while a body streams to disk.
CHUNK: Final = 1 << 16
# Redirects followed (GitHub raw and mirrors answer with one or two).
MAX_REDIRECTS: Final = 5
# A SHA-256 sidecar is one line; anything longer is not a sidecar.
MAX_SIDECAR: Final = 64 << 10
USER_AGENT: Final = f"blockgate/{__version__}"
NO_VALIDATORS: Final = Validators()
META: Final = "meta.json"
# Parsing is CPU work under the GIL: one at a time, so two large lists never sit in memory
# half-parsed together.
PARSE_LOCK: Final = threading.Lock()


# -- files ----------------------------------------------------------------------------------


def source_files(path: str) -> list[str]:
    """The files of a ``path:`` source, in name order: one file, a directory, or a glob.

    raises ListFormatError when nothing is there to read.
    """
    if _GLOB_CHARS.search(path):
        files = sorted(f for f in glob.glob(path) if os.path.isfile(f))
    elif os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path)
                       if not f.startswith(".") and os.path.isfile(os.path.join(path, f)))
    elif os.path.isfile(path):
        files = [path]
    else:
        raise ListFormatError(path, "no such file or directory", "missing")
    if not files:
        raise ListFormatError(path, "no files match", "missing")
    return files


def fingerprint(path: str) -> tuple[tuple[str, int, int], ...]:
    """(file, size, mtime) of every file of a path source: cheap to compare every few seconds.

    raises ListFormatError when nothing is there to read.
    """
    out = []
    for f in source_files(path):
        try:
            st = os.stat(f)
        except OSError as exc:
            raise ListFormatError(f, exc.strerror or str(exc), "unreadable") from None
        out.append((f, st.st_size, st.st_mtime_ns))
    return tuple(out)


@contextmanager
def open_members(fmt: str, members: Sequence[tuple[str, str]], max_bytes: int) -> Iterator[list[Input]]:
    """Parser inputs for body files ``(display name, file)``: gzip and ZIP decoded (feeds)."""
    with ExitStack() as stack:
        raw = []
        for name, file in members:
            try:
                raw.append(Input(name, stack.enter_context(open(file, "rb"))))
            except OSError as exc:
                raise ListFormatError(name, exc.strerror or str(exc), "unreadable") from None
        yield feeds.open_inputs(fmt, raw, max_bytes)


def parse_members(src: SourceConfig, members: Sequence[tuple[str, str]],
                  sink: RuleSink | None = None) -> ParsedList:
    """raises only ListFormatError. With ``sink``, the rules go there as they are read and
    the list keeps only their counts and origins (``ParsedList.streamed``)."""
    with PARSE_LOCK, open_members(src.format, members, src.max_bytes) as inputs, streaming(sink):
        parsed = lists.parse(src.format, inputs, src.options)
        parsed.finish()
        return parsed


def rss_bytes() -> int:
    """Resident memory of this process (Linux), for load reports."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- the state dir ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Member:
    name: str  # as parse locations show it (the URL's file name, or the file's)
    file: str  # file name inside the source's directory
    sha256: str
    size: int


@dataclass(frozen=True, slots=True)
class Stored:
    """The last good copy of a source: what it is, where it came from, when it was taken."""

    origin: str  # the URL or path it was taken from
    sha256: str  # of the body (of the files one after the other, for split files)
    size: int
    rules: int
    accepted_at: float  # wall clock
    etag: str | None = None
    last_modified: str | None = None
    members: tuple[Member, ...] = ()
    directory: str = field(default="", compare=False)

    @property
    def validators(self) -> Validators:
        return Validators(self.etag, self.last_modified)

    def files(self) -> list[tuple[str, str]]:
        return [(m.name, os.path.join(self.directory, m.file)) for m in self.members]


class Store:
    """``ROOT/NAME/meta.json`` names the body files ``SHA256.N`` of the copy in force."""

    def __init__(self, root: str) -> None:
        self.root = root

    def directory(self, source: str) -> str:
        d = os.path.join(self.root, source)
        os.makedirs(d, exist_ok=True)
        return d

    def temp(self, source: str, n: int = 0) -> str:
        return os.path.join(self.directory(source), f"tmp-{os.getpid()}-{threading.get_ident()}-{n}")

    def load(self, source: str, verify: bool = True) -> Stored | None:
        """The copy in force, or None (none yet, or not what its metadata says: a bug or a disk
        fault, never a crash, which the write order rules out). raises nothing."""
        d = os.path.join(self.root, source)
        try:
            with open(os.path.join(d, META), encoding="utf-8") as f:
                raw = json.load(f)
            members = tuple(Member(**m) for m in raw.pop("members"))
            stored = Stored(**raw, members=members, directory=d)
            if verify:
                for m in members:
                    if _sha256_file(os.path.join(d, m.file)) != m.sha256:
                        return None
            return stored
        except (OSError, ValueError, TypeError, KeyError):
            return None

    def commit(self, source: str, stored: Stored, temps: Sequence[str]) -> Stored:
        """Make ``stored`` (bodies in ``temps``, already fsync'ed) the copy in force."""
        d = self.directory(source)
        for m, temp in zip(stored.members, temps, strict=True):
            os.replace(temp, os.path.join(d, m.file))
        _fsync_dir(d)
        meta = {k: v for k, v in asdict(stored).items() if k != "directory"}
        tmp = os.path.join(d, f"{META}.tmp-{os.getpid()}-{threading.get_ident()}")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(d, META))
        _fsync_dir(d)
        keep = {m.file for m in stored.members} | {META}
        for name in os.listdir(d):
            if name not in keep and not name.startswith("tmp-") and ".tmp-" not in name:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(d, name))
        return Stored(**{**asdict(stored), "members": stored.members, "directory": d})

    def clean(self, source: str) -> None:
        """Remove what interrupted downloads and writes left (at start, before any fetch)."""
        d = os.path.join(self.root, source)
        with contextlib.suppress(OSError):
            for name in os.listdir(d):
                if name.startswith("tmp-") or ".tmp-" in name:
                    os.unlink(os.path.join(d, name))


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# -- HTTP -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fetched:
    status: int  # 200, or 304 Not Modified
    validators: Validators
    size: int = 0
    sha256: str = ""


def _connect(url: str, deadline: float, ca_file: str | None) -> tuple[http.client.HTTPConnection, str]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchError(f"not an http(s) URL: {url}", "bad-url")
    timeout = max(0.001, min(CONNECT_TIMEOUT, deadline - time.monotonic()))
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        # Verification on (certificate chain and host name): the system store, or ca_file.
        ctx = ssl.create_default_context(cafile=ca_file)
        conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout, context=ctx)
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    target = parts.path or "/"
    return conn, target + (f"?{parts.query}" if parts.query else "")


def http_get(url: str, out: BinaryIO, validators: Validators = NO_VALIDATORS, *, timeout: float,
             max_bytes: int, ca_file: str | None = None) -> Fetched:
    """GET ``url`` into ``out`` (fsync'ed when it is a file). raises only FetchError."""
    deadline = time.monotonic() + timeout
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity",
               **feeds.conditional_headers(validators)}
    for _ in range(MAX_REDIRECTS + 1):
        try:
            conn, target = _connect(url, deadline, ca_file)
            try:
                conn.request("GET", target, headers=headers)
                _budget(conn, deadline)
                resp = conn.getresponse()
                if resp.status in (301, 302, 303, 307, 308) and resp.getheader("Location"):
                    url = urllib.parse.urljoin(url, resp.getheader("Location", ""))
                    continue
                return _response(resp, conn, out, deadline, max_bytes)
            finally:
                conn.close()
        except FetchError:
            raise
        except TimeoutError:
            raise FetchError("timed out", "timeout") from None
        except http.client.IncompleteRead as exc:
            raise FetchError(f"body cut short after {len(exc.partial)} more bytes", "truncated") from None
        except ConnectionResetError:
            raise FetchError("connection reset by the server", "connection-reset") from None
        except ConnectionRefusedError:
            raise FetchError("connection refused", "connection-refused") from None
        except (ssl.SSLError, ssl.CertificateError) as exc:
            raise FetchError(f"TLS: {exc}", "tls") from None
        except http.client.HTTPException as exc:
            raise FetchError(f"not a valid HTTP response: {exc!r}", "bad-http") from None
        except OSError as exc:
            raise FetchError(exc.strerror or str(exc), "network") from None
    raise FetchError(f"more than {MAX_REDIRECTS} redirects", "redirects")


def _budget(conn: http.client.HTTPConnection, deadline: float) -> None:
    """Every blocking read gets what is left of the total time, so a stalled server ends it."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise FetchError("timed out", "timeout")
    if conn.sock is not None:
        conn.sock.settimeout(left)


def _response(resp: http.client.HTTPResponse, conn: http.client.HTTPConnection, out: BinaryIO,
              deadline: float, max_bytes: int) -> Fetched:
    got = Validators(resp.getheader("ETag"), resp.getheader("Last-Modified"))
    if resp.status == 304:
        return Fetched(304, got)
    if resp.status != 200:
        raise FetchError(f"HTTP {resp.status} {resp.reason}", f"http-{resp.status}")
    length = resp.getheader("Content-Length")
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise FetchError(f"Content-Length {length} over max_bytes {max_bytes}", "too-large")
    h, size = hashlib.sha256(), 0
    while True:
        _budget(conn, deadline)
        chunk = resp.read(CHUNK)
        if not chunk:
            break
        size += len(chunk)
        if size > max_bytes:
            raise FetchError(f"body over max_bytes {max_bytes}", "too-large")
        h.update(chunk)
        out.write(chunk)
    if length is not None and length.isdigit() and size < int(length):
        # http.client's read(amt) returns b"" at a premature close instead of raising.
        raise FetchError(f"body cut short: {size} of {length} bytes", "truncated")
    out.flush()
    with contextlib.suppress(OSError, AttributeError, ValueError):
        os.fsync(out.fileno())
    return Fetched(200, got, size, h.hexdigest())


# -- one update -------------------------------------------------------------------------------


@dataclass(slots=True)
class Outcome:
    """One try at a source: the result label (ACCEPTED, NOT_MODIFIED or a refusal reason)."""

    result: str
    detail: str = ""
    stored: Stored | None = None  # the new copy in force (accepted)
    parsed: ParsedList | None = None  # its rules, parsed (accepted)
    fingerprint: tuple[tuple[str, int, int], ...] = ()
    seconds: float = 0.0

    @property
    def accepted(self) -> bool:
        return self.result == ACCEPTED


def update(src: SourceConfig, store: Store, last: Stored | None,
           last_fingerprint: tuple[tuple[str, int, int], ...] = (),
           sink: RuleSink | None = None) -> Outcome:
    """Fetch ``src`` once; parse, judge and commit the body, or say why not. raises nothing
    but bugs (every expected failure is an Outcome). ``sink``: see ``parse_members``."""
    t0 = time.monotonic()
    temps: list[str] = []
    try:
        if src.url is not None:
            out = _update_url(src, src.url, store, last, temps, sink)
        elif src.path is not None:
            out = _update_path(src, src.path, store, last, last_fingerprint, temps, sink)
        else:
            out = Outcome("missing", "neither path nor url")
    except FetchError as exc:
        out = Outcome(exc.reason, str(exc))
    except ListFormatError as exc:
        out = Outcome(exc.reason, str(exc))
    except OSError as exc:  # the state dir: full, read-only, gone
        out = Outcome("state-dir", f"{store.root}: {exc.strerror or exc}")
    finally:
        for t in temps:
            with contextlib.suppress(OSError):
                os.unlink(t)
    out.seconds = time.monotonic() - t0
    return out


def _update_url(src: SourceConfig, url: str, store: Store, last: Stored | None,
                temps: list[str], sink: RuleSink | None) -> Outcome:
    temp = store.temp(src.name)
    temps.append(temp)
    with open(temp, "wb") as f:
        got = http_get(url, f, last.validators if last else Validators(), timeout=src.timeout,
                       max_bytes=src.max_bytes, ca_file=src.ca_file)
    if got.status == 304:
        return Outcome(NOT_MODIFIED, "304 Not Modified")
    name = urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1] or src.name
    expected = src.sha256 or (_sidecar(src, src.sha256_url, name) if src.sha256_url else None)
    members = (Member(name, f"{got.sha256}.0", got.sha256, got.size),)
    stored = Stored(url, got.sha256, got.size, 0, time.time(), got.validators.etag,
                    got.validators.last_modified, members, store.directory(src.name))
    return _judge_commit(src, store, last, stored, temps, expected, sink)


def _sidecar(src: SourceConfig, url: str, name: str) -> str:
    buf = io.BytesIO()
    try:
        http_get(url, buf, timeout=src.timeout, max_bytes=MAX_SIDECAR, ca_file=src.ca_file)
        return feeds.parse_sidecar(buf.getvalue(), name)
    except (FetchError, FeedFormatError) as exc:
        raise FetchError(f"sha256_url {url}: {exc}", "sha256-sidecar") from None


def _update_path(src: SourceConfig, path: str, store: Store, last: Stored | None,
                 last_fp: tuple[tuple[str, int, int], ...], temps: list[str],
                 sink: RuleSink | None) -> Outcome:
    fp = fingerprint(path)
    if last is not None and fp == last_fp:
        return Outcome(NOT_MODIFIED, "size and mtime unchanged", fingerprint=fp)
    whole, members, size = hashlib.sha256(), [], 0
    for i, (file, _size, _mtime) in enumerate(fp):
        temp = store.temp(src.name, i)
        temps.append(temp)
        h, n = hashlib.sha256(), 0
        try:
            with open(file, "rb") as f, open(temp, "wb") as out:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
                    whole.update(chunk)
                    out.write(chunk)
                    n += len(chunk)
                out.flush()
                os.fsync(out.fileno())
        except FileNotFoundError as exc:  # removed between the listing and the copy
            raise ListFormatError(file, exc.strerror or str(exc), "unreadable") from None
        size += n
        members.append(Member(os.path.basename(file), f"{h.hexdigest()}.{i}", h.hexdigest(), n))
    sha = whole.hexdigest()
    if last is not None and sha == last.sha256:
        return Outcome(NOT_MODIFIED, "content unchanged", fingerprint=fp)
    stored = Stored(path, sha, size, 0, time.time(), None, None, tuple(members),
                    store.directory(src.name))
    out_ = _judge_commit(src, store, last, stored, temps, src.sha256, sink)
    out_.fingerprint = fp
    return out_


def _judge_commit(src: SourceConfig, store: Store, last: Stored | None, stored: Stored,
                  temps: list[str], expected: str | None, sink: RuleSink | None = None) -> Outcome:
    files = list(zip((m.name for m in stored.members), temps, strict=True))
    parsed: ParsedList | None = None
    if stored.size == 0:
        verdict = feeds.refused("empty", "the body is empty")
    elif expected is not None and stored.sha256 != expected.lower():
        verdict = feeds.judge(Limits.of(src), Candidate(stored.size, stored.sha256), None, expected)
    else:
        try:
            parsed = parse_members(src, files, sink)
            verdict = feeds.judge(Limits.of(src), Candidate.of(parsed, stored.size, stored.sha256),
                                  last.rules if last else None, expected)
        except ListFormatError as exc:
            verdict = feeds.judge_error(exc, stored.size)
    if not verdict.accepted or parsed is None:
        return Outcome(verdict.reason, verdict.detail)
    stored = Stored(**{**asdict(stored), "members": stored.members, "rules": len(parsed)})
    committed = store.commit(src.name, stored, temps)
    temps.clear()
    return Outcome(ACCEPTED, verdict.detail, committed, parsed)


# -- loading for the commands that do not run the daemon (compile, lookup) ---------------------


def load_sources(config: Config) -> list[LoadedSource]:
    """Read and parse every source: ``path:`` from its files, ``url:`` from the copy the daemon
    stored (there is no network here), timing each one."""
    store = Store(os.path.join(config.state_dir, "sources"))
    out = []
    for src in config.sources:
        ls = LoadedSource(src)
        t0, m0 = time.perf_counter(), rss_bytes()
        try:
            if src.path is not None:
                ls.parsed = parse_members(src, [(os.path.basename(f), f) for f in source_files(src.path)])
            elif (stored := store.load(src.name)) is not None:
                ls.parsed = parse_members(src, stored.files())
            else:
                ls.error = f"{src.url}: no stored copy in {store.root} (the daemon fetches url sources)"
        except ListFormatError as exc:
            ls.error = str(exc)
        ls.seconds = time.perf_counter() - t0
        ls.memory = rss_bytes() - m0
        out.append(ls)
    return out
