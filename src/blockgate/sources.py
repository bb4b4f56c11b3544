"""Every source's schedule, its copy in force, and its fetches (one thread per try).

``Sources`` belongs to the supervisor's loop: the loop calls ``start_due`` when fetches are
due, and ``fetched`` with each result (a thread hands it over through ``wake``). A result
that was accepted is kept parsed (``fresh``) until the next compile takes it; ``changed``
says a compile is wanted. A reload (SIGHUP) makes every source due at once and holds the
compile until each has been tried (``waiting``), so a reload compiles once.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from typing import Any, Final

from blockgate.adapters.fetch import META, Outcome, Store, Stored, parse_members, update
from blockgate.config import Config, SourceConfig
from blockgate.engine import LoadedSource, RuleSet
from blockgate.errors import ListFormatError
from blockgate.feeds import NOT_MODIFIED, Feed, InForce, SourceState
from blockgate.lists.base import ParsedList, RuleSink
from blockgate.status import age

log = logging.getLogger("blockgate")

Fingerprint = tuple[tuple[str, int, int], ...]


# Niceness of the threads that fetch, parse and compile. On Linux a thread has its own: at
# 19 the scheduler gives a worker on the same CPU ~98 % of it when it has packets to read
# (CFS weights 1024 against 15), so a compile never makes a worker's socket overflow.
BACKGROUND_NICE: Final = 19


def background() -> None:
    """Lower the calling thread's priority (Linux: per thread; elsewhere: best effort)."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)


def in_force(copy: Stored | None) -> InForce | None:
    if copy is None:
        return None
    return InForce(copy.rules, copy.accepted_at, copy.sha256, copy.etag, copy.last_modified)


class Sources:
    def __init__(self, config: Config, store: Store, wake: Callable[..., None],
                 sink_for: Callable[[SourceConfig], RuleSink | None] | None = None) -> None:
        self.config = config
        self.store = store
        self.wake = wake
        # Where a fetch's parse hands its rules (a Differ against the rules in force), or
        # None: the parse keeps them.
        self.sink_for = sink_for
        self.lock = threading.Lock()  # feeds, as read by other threads (status, metrics)
        self.feeds: dict[str, Feed] = {}
        self.stored: dict[str, Stored | None] = {}
        self.fingerprints: dict[str, Fingerprint] = {}
        self.fresh: dict[str, ParsedList | None] = {}
        self.in_flight: set[str] = set()
        self.tag = 0  # reload count: a try started before the last reload does not count for it
        self.waiting: set[str] = set()
        self.changed = False
        self.sync(config)

    # -- config -------------------------------------------------------------------------------
    def sync(self, config: Config) -> None:
        """One Feed per source: kept when the source still reads from the same place."""
        self.config = config
        with self.lock:
            old, self.feeds = self.feeds, {}
            for src in config.sources:
                kind, origin = ("url", src.url) if src.url is not None else ("path", str(src.path))
                feed = old.get(src.name)
                fresh = Feed(src.name, kind, origin, src.refresh)
                if feed is None or (feed.kind, feed.origin) != (kind, origin):
                    feed = fresh
                    feed.in_force = in_force(self.stored.get(src.name))
                else:
                    feed.interval = fresh.interval
                self.feeds[src.name] = feed
        for name in set(self.stored) - set(self.feeds):
            del self.stored[name]
            self.fingerprints.pop(name, None)

    def reload(self, config: Config) -> None:
        """Every source tried again now; the stored copies are re-parsed with the new options."""
        self.sync(config)
        self.tag += 1
        self.waiting = set(self.feeds)
        self.fresh.clear()
        self.fingerprints.clear()  # path sources: read and hash them, whatever their mtime
        mono = time.monotonic()
        for feed in self.feeds.values():
            feed.now(mono)

    # -- start ----------------------------------------------------------------------------------
    def load_stored(self) -> list[SourceConfig]:
        """Clean up and load the stored copies; returns the sources to try before serving:
        path sources, and url sources with no copy (the others are served from theirs and
        fetched right after the start)."""
        pending = []
        for src in self.config.sources:
            self.store.clean(src.name)
            copy = self.store.load(src.name)
            if copy is None and os.path.exists(os.path.join(self.store.root, src.name, META)):
                log.warning("source %s: the stored copy in %s does not match its metadata; ignored",
                            src.name, self.store.root)
            self.set_stored(src.name, copy)
            if src.path is not None or copy is None:
                pending.append(src)
            else:
                log.info("source %s: %d rules from the stored copy of %s (list age %s); fetching now",
                         src.name, copy.rules, copy.origin, age(time.time() - copy.accepted_at))
        return pending

    def fetch_now(self, sources: list[SourceConfig]) -> None:
        """Try ``sources`` in parallel and wait (each try is bounded by its own timeout)."""
        results: dict[str, Outcome] = {}

        def one(src: SourceConfig) -> None:
            results[src.name] = update(src, self.store, self.stored.get(src.name),
                                       self.fingerprints.get(src.name, ()))

        threads = [threading.Thread(target=one, args=(s,), daemon=True) for s in sources]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for src in sources:
            self.record(src, results[src.name], self.tag)

    def missing(self) -> list[SourceConfig]:
        return [s for s in self.config.sources if self.stored.get(s.name) is None]

    # -- the schedule ---------------------------------------------------------------------------
    def due(self) -> list[float]:
        return [f.due for n, f in self.feeds.items() if n not in self.in_flight]

    def start_due(self, now: float) -> None:
        for name, feed in self.feeds.items():
            if feed.due <= now and name not in self.in_flight:
                self._start(name)

    def _start(self, name: str) -> None:
        src = next((s for s in self.config.sources if s.name == name), None)
        if src is None:
            return
        self.in_flight.add(name)
        last, fp, tag = self.stored.get(name), self.fingerprints.get(name, ()), self.tag
        sink = self.sink_for(src) if self.sink_for is not None else None

        def run() -> None:
            background()
            try:
                out = update(src, self.store, last, fp, sink)
            except Exception as exc:  # a bug: counted as a failed try, logged, retried
                log.exception("source %s: fetch failed", name)
                out = Outcome("internal-error", repr(exc))
            self.wake("fetched", src, out, tag)

        threading.Thread(target=run, name=f"fetch-{name}", daemon=True).start()

    def fetched(self, src: SourceConfig, out: Outcome, tag: int) -> None:
        """A try is over (called by the loop)."""
        self.in_flight.discard(src.name)
        if src.name not in self.feeds:
            return  # removed by a reload meanwhile
        self.record(src, out, tag)
        if tag != self.tag and src.name in self.waiting:
            self.feeds[src.name].now(time.monotonic())  # started before the reload: again

    def record(self, src: SourceConfig, out: Outcome, tag: int) -> None:
        feed = self.feeds[src.name]
        with self.lock:
            delay = feed.done(out.result, out.detail, time.monotonic(), time.time(), random.random())
        if out.fingerprint:
            self.fingerprints[src.name] = out.fingerprint
        if tag == self.tag:
            self.waiting.discard(src.name)
        if out.accepted and out.stored is not None:
            self.set_stored(src.name, out.stored)
            self.fresh[src.name] = out.parsed
            self.changed = True
            log.info("source %s: accepted %s in %.2f s: %s", src.name, feed.origin, out.seconds, out.detail)
        elif out.result == NOT_MODIFIED:
            log.debug("source %s: not modified (%s)", src.name, out.detail)
        else:
            copy = self.stored.get(src.name)
            keep = (f"keeping the list accepted {age(time.time() - copy.accepted_at)} ago "
                    f"({copy.rules} rules)") if copy else "no list in force for it"
            log.warning("source %s: %s: %s; %s; next try in %.0f s", src.name, out.result, out.detail,
                        keep, delay)

    def set_stored(self, name: str, copy: Stored | None) -> None:
        self.stored[name] = copy
        with self.lock:
            if name in self.feeds:
                self.feeds[name].in_force = in_force(copy)

    def take(self) -> tuple[tuple[SourceConfig, ...], dict[str, Stored | None], dict[str, Any]]:
        """What the next compile needs: the sources, their copies in force, the fresh parses."""
        fresh, self.fresh = self.fresh, {}
        self.changed = False
        return self.config.sources, dict(self.stored), fresh

    def states(self) -> list[SourceState]:
        now = time.time()
        with self.lock:
            return [f.state(now) for f in self.feeds.values()]


def compile_stored(sources: tuple[SourceConfig, ...], stored: dict[str, Stored | None],
                   fresh: dict[str, Any]) -> RuleSet:
    """A RuleSet from the copies in force (``fresh``: sources already parsed, by name; a
    streamed parse kept no rules, so its stored copy is parsed again)."""
    loaded = []
    for src in sources:
        ls = LoadedSource(src)
        t0 = time.perf_counter()
        if src.name in fresh and not fresh[src.name].streamed:
            ls.parsed = fresh[src.name]
        elif (copy := stored.get(src.name)) is not None:
            try:
                ls.parsed = parse_members(src, copy.files())
            except ListFormatError as exc:  # a copy this version cannot read: a bug, reported
                ls.error = str(exc)
        else:
            ls.error = "no list yet"
        ls.seconds = time.perf_counter() - t0
        loaded.append(ls)
    return RuleSet(loaded)


def malloc_trim() -> None:
    """Give freed heap pages back to the kernel (glibc keeps them otherwise)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
