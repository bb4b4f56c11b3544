"""The supervisor: sources kept and fetched, rule sets compiled and swapped, workers forked.

It

* creates every listen socket *before* forking (one SO_REUSEPORT UDP socket and one TCP
  listener per worker slot and listen address) and keeps them open for its whole life:
  the worker of slot i serves the sockets of slot i. A worker that leaves never takes
  queued datagrams with it, nor re-hashes flows: its sockets stay, for its successor.
* keeps each source's last good list (``fetch.Store``), fetches on schedule (threads, HTTP
  with timeouts), judges what it got (``feeds``). A fetch's parse is compared, as it is
  read, with the rules in force (``trie.Differ``: the new version is never held whole);
* builds the new ``RuleSet`` off the serving path (a thread of this process; workers keep
  answering from their own copy): when one source changed, by patching the rules in force
  in place (this process's copy only; ``fork_lock`` keeps a fork from seeing half a patch);
  otherwise by compiling from scratch, after which the old RuleSet is dropped here first
  (so no new process inherits it);
* swaps it in: a new worker per slot is forked with the new rules, and once it reads its
  sockets the old worker of that slot is told to drain: stop reading, finish its upstream
  queries, send its final counters, exit. Nothing queued in a kernel socket is lost;
* handles signals: SIGTERM/SIGINT stop, SIGHUP re-reads the config and every source (an
  invalid config is refused with its located errors; the running one stays), SIGCHLD reaps;
* answers ``blockgate status`` on ``state_dir/control.sock``; ``totals()`` and
  ``source_states()`` are what the metrics endpoint reads.

One worker is a supervisor with one slot: the same code path.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import pwd
import queue
import selectors
import signal
import socket
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from blockgate import __version__
from blockgate.adapters.control import STATUS_SOCKET, Channel, ControlServer
from blockgate.adapters.fetch import Store
from blockgate.adapters.metrics import MetricsServer, make_registry, start_metrics
from blockgate.adapters.privileges import SNI_CAPABILITIES, PrivilegeError, drop_privileges
from blockgate.adapters.systemd import Notifier, watchdog_interval
from blockgate.config import Config, SourceConfig, load, parse_addr
from blockgate.engine import LoadedSource, RuleSet
from blockgate.errors import ConfigError
from blockgate.feeds import SourceState
from blockgate.lists.base import RuleSink
from blockgate.sources import Sources, background, compile_stored, malloc_trim
from blockgate.stats import SourceMetrics, Stats
from blockgate.workers import Slot, Worker, open_slots, serve_slot, sni_slots

log = logging.getLogger("blockgate")

RESPAWN_DELAY: Final = 1.0
STOP_GRACE: Final = 5.0
# Worker counters are polled this often; ``totals()`` sums the last answers.
STATS_EVERY: Final = 1.0
# A new worker that has not started reading its sockets by then is killed (the old one
# of its slot keeps serving).
READY_TIMEOUT: Final = 30.0
# A draining worker is killed when it has not exited this long after its drain deadline.
DRAIN_GRACE: Final = 2.0
# The supervisor's loop wakes at least this often (schedules, deadlines).
TICK: Final = 0.5
# Consecutive worker failures (exit without being asked) per slot before giving up.
MAX_FAILURES: Final = 5


def load_config(path: str) -> Config:
    """raises ConfigError with every located problem."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text: {exc.reason}"]) from None
    return load(text, file=path, base=os.path.dirname(os.path.abspath(path)))


@dataclass(slots=True)
class Swap:
    generation: int = 0
    at: float | None = None  # wall clock of the last swap
    compile_seconds: float = 0.0
    how: str = "compiled"  # or "patched": one source's changes written into the rules in force
    ready_seconds: float | None = None  # fork to every new worker reading
    forked: float = 0.0


@dataclass(slots=True)
class Reloads:
    ok: int = 0
    refused: int = 0
    last_errors: list[str] = field(default_factory=list)


class Supervisor:
    def __init__(self, config: Config, config_path: str | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.listen = list(config.dns["listen"])
        self.nworkers = int(config.dns["workers"]) or os.cpu_count() or 1
        self.state_dir = config.state_dir
        self.sources = Sources(config, Store(os.path.join(self.state_dir, "sources")), self._wake,
                               self._sink_for)
        self.ruleset: RuleSet | None = None
        self.generation = 0
        self.slots: list[Slot] = []
        self.workers: dict[int, Worker] = {}
        self.retired = Stats()
        self.lock = threading.Lock()  # what totals() and source_states() read
        # Held while a patch writes the rule set in force, and around each fork: a worker
        # never starts from a half-written one.
        self.fork_lock = threading.Lock()
        self.done: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self.stopping = False
        self.exit_code = 0
        self.building = False
        self.build_wanted = False  # a reload changed the config: compile even if no list did
        self.respawn: dict[int, float] = {}
        self.failures: dict[int, int] = {}
        self.swap = Swap()
        self.swaps = {"compiled": 0, "patched": 0}  # rule sets put in force, by how
        self.in_force = (0, 0)  # rules and names of the rule set served
        self.reloads = Reloads()
        self.started = time.time()
        self.announced = False
        self.next_stats = 0.0
        self.sel = selectors.DefaultSelector()
        self.control: ControlServer | None = None
        self.metrics: MetricsServer | None = None
        self.loads: dict[str, tuple[dict[str, int], float]] = {}  # per source: kinds, load s
        # systemd: read before the variables are removed, so that no worker sees them
        watchdog = watchdog_interval()
        self.notifier = Notifier.from_environ(unset=True)
        self.watchdog_every = watchdog / 2 if watchdog else None
        self.next_watchdog = 0.0
        self.reload_pending = False
        self._sig_r, self._sig_w = socket.socketpair()
        self._wake_r, self._wake_w = socket.socketpair()
        for s in (self._sig_r, self._sig_w, self._wake_r, self._wake_w):
            s.setblocking(False)

    # -- what other components read (metrics) ---------------------------------------------
    def totals(self) -> Stats:
        """Counters of every worker, live and retired: never go backwards across swaps."""
        with self.lock:
            total = Stats().merge(self.retired)
            for w in self.workers.values():
                if w.stats is not None:
                    total.merge(w.stats)
        return total

    def source_states(self) -> list[SourceState]:
        return self.sources.states()

    def source_metrics(self) -> list[SourceMetrics]:
        """Per source, for the metrics endpoint: rules by kind of the list in force, freshness,
        fetch results, read and parse time."""
        with self.lock:
            loads = dict(self.loads)
        out = []
        for st in self.source_states():
            kinds, seconds = loads.get(st.name, ({}, 0.0))
            out.append(SourceMetrics(st.name, kinds if st.in_force else {}, st.last_success,
                                     dict(st.results), seconds))
        return out

    def status_line(self) -> str:
        """systemd's STATUS=: what is served, and how old the oldest list in force is."""
        ages = [s.list_age for s in self.source_states() if s.in_force and s.list_age is not None]
        age = f"; oldest list {_age(max(ages))}" if ages else ""
        return (f"{_count(self.in_force[0], 'rule')} on {_count(self.in_force[1], 'name')} from "
                f"{_count(len(self.config.sources), 'source')}{age}; "
                f"{_count(self.dns_workers, 'worker')}{self._sni_text()}")

    @property
    def dns_workers(self) -> int:
        return sum(1 for s in self.slots if s.sni is None)

    def _sni_text(self) -> str:
        sni = [s for s in self.slots if s.sni is not None]
        return f", SNI {sni[0].sni} x{len(sni)}" if sni else ""

    def status(self) -> dict[str, Any]:
        return {
            "version": __version__, "pid": os.getpid(), "config": self.config_path, "now": time.time(),
            "started_at": self.started, "generation": self.generation,
            "rules": self.in_force[0], "names": self.in_force[1],
            "building": self.building, "listen": self.listen,
            "workers": [{"pid": w.pid, "slot": w.slot, "generation": w.generation, "state": w.state}
                        for w in sorted(self.workers.values(), key=lambda w: (w.slot, w.generation))],
            "last_swap": {k: v for k, v in asdict(self.swap).items() if k != "forked"},
            "reloads": asdict(self.reloads),
            "sources": [asdict(s) for s in self.source_states()],
            "counters": _counters(self.totals()),
        }

    # -- start --------------------------------------------------------------------------------
    def start(self) -> int | None:
        """Load every source (the stored copy, or a first fetch), compile, bind, fork.
        Returns an exit code when it cannot serve, else None."""
        self._signals()  # a SIGHUP or SIGTERM while loading must not kill the process
        sources = self.sources
        sources.fetch_now(sources.load_stored())
        missing = sources.missing()
        for src in missing:
            log.warning("source %s: no list (%s) and no stored copy in %s", src.name,
                        sources.feeds[src.name].last_detail or "not loaded", sources.store.root)
        if missing and self.config.on_missing_list == "refuse":
            log.error("on_missing_list is refuse: exiting")
            return 1
        t0 = time.perf_counter()
        self.ruleset = compile_stored(*sources.take())
        self._note_loaded(self.ruleset, time.perf_counter() - t0)
        try:
            self.slots = open_slots(self.listen, self.nworkers)
            self.slots += sni_slots(self.config.sni, len(self.slots))
        except OSError as exc:
            log.error("cannot listen on %s: %s", ", ".join(self.listen), exc)
            return 1
        self._open_control()
        if not self._open_metrics() or not self._drop_privileges():
            return 1
        gc.collect()
        self._fork_generation()
        return None

    def _open_metrics(self) -> bool:
        listen = str(self.config.metrics["listen"])
        if not listen:
            return True
        registry = make_registry(self.totals, self.source_metrics,
                                 compile_seconds=lambda: self.swap.compile_seconds,
                                 swaps=lambda: dict(self.swaps))
        try:
            self.metrics = start_metrics(parse_addr(listen), registry)
        except OSError as exc:
            log.error("cannot serve metrics on %s: %s", listen, exc)
            return False
        log.info("metrics on http://%s:%d/metrics", *self.metrics.address)
        return True

    def _drop_privileges(self) -> bool:
        """Started as root with ``run_as``: every socket is bound, so become that user now
        (the state directory becomes theirs first). Keeps CAP_NET_ADMIN/CAP_NET_RAW only
        when an SNI mode needs them."""
        user = self.config.run_as
        if not user or os.geteuid() != 0:
            return True
        keep = SNI_CAPABILITIES if self.config.sni["mode"] != "off" else ()
        try:
            _chown_tree(self.state_dir, user)
            dropped = drop_privileges(user, keep)
        except (PrivilegeError, OSError, KeyError) as exc:
            log.error("cannot switch to user %s: %s", user, exc)
            return False
        if dropped is not None:
            log.info("running as %s (uid %d), capabilities kept: %s", dropped.user, dropped.uid,
                     ", ".join(dropped.capabilities) or "none")
        return True

    def _open_control(self) -> None:
        path = os.path.join(self.state_dir, STATUS_SOCKET)
        try:
            self.control = ControlServer(path)
        except OSError as exc:
            log.warning("no status socket at %s: %s", path, exc)
            return
        self.sel.register(self.control.sock, selectors.EVENT_READ, self._on_control)

    def _signals(self) -> None:
        signal.set_wakeup_fd(self._sig_w.fileno(), warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, _no_op)
        self.sel.register(self._sig_r, selectors.EVENT_READ, self._on_signals)
        self.sel.register(self._wake_r, selectors.EVENT_READ, self._on_wake)

    # -- the loop -----------------------------------------------------------------------------
    def run(self) -> int:
        while not self.stopping:
            try:
                for key, _ in self.sel.select(self._timeout()):
                    key.data()
                self._tick()
            except Exception:  # a bug must not take the service down: the workers keep serving
                log.exception("supervisor: internal error (continuing)")
                time.sleep(TICK)
        return self._shutdown()

    def _timeout(self) -> float:
        now = time.monotonic()
        due = [*self.sources.due(), *self.respawn.values(), self.next_stats]
        return max(0.0, min([now + TICK, *due]) - now)

    def _tick(self) -> None:
        now = time.monotonic()
        self.sources.start_due(now)
        wanted = self.build_wanted or self.sources.changed
        if wanted and not self.building and not self.sources.waiting:
            self._start_build()
        for slot, when in list(self.respawn.items()):
            if when <= now and self.ruleset is not None:
                del self.respawn[slot]
                self._spawn(self.slots[slot])
        for w in list(self.workers.values()):
            if w.deadline is not None and now > w.deadline and w.state in ("starting", "draining"):
                log.error("worker %d (%s) overran its deadline: killed", w.pid, w.state)
                _kill(w.pid, signal.SIGKILL)
                w.deadline = None
        if self.watchdog_every is not None and now >= self.next_watchdog:
            self.next_watchdog = now + self.watchdog_every
            if self._healthy():
                self.notifier.watchdog()
        if self.reload_pending and not (self.building or self.build_wanted or self.sources.changed
                                        or self.sources.waiting):
            self._reloaded()  # every source re-read and nothing to swap
        if now >= self.next_stats:
            self.next_stats = now + STATS_EVERY
            for w in self.workers.values():
                if w.state in ("serving", "draining"):
                    w.channel.send("stats")

    def _healthy(self) -> bool:
        """Every slot has a worker serving: what the watchdog vouches for."""
        serving = {w.slot for w in self.workers.values() if w.state == "serving"}
        return len(serving) == len(self.slots)

    def _reloaded(self) -> None:
        self.reload_pending = False
        self.notifier.ready(self.status_line())

    def _on_signals(self) -> None:
        try:
            data = self._sig_r.recv(4096)
        except BlockingIOError:
            return
        # A stop first, whatever the order of arrival: a service manager signals every
        # process of the service, and a worker that stops on its own SIGTERM must not be
        # taken for a failure (nor replaced) because its SIGCHLD was read first.
        for sig in data:
            if sig in (signal.SIGTERM, signal.SIGINT):
                if not self.stopping:
                    log.info("signal %d: stopping", sig)
                self.stopping = True
        for sig in data:
            if sig == signal.SIGHUP and not self.stopping:
                self._reload()
        self._reap()

    def _on_wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            self._wake_r.recv(4096)
        while True:
            try:
                event = self.done.get_nowait()
            except queue.Empty:
                return
            if event[0] == "fetched":
                self.sources.fetched(*event[1:])
            elif event[0] == "built":
                self._built(*event[1:])
            elif event[0] == "released":
                self._released(*event[1:])

    def _on_control(self) -> None:
        if self.control is not None:
            self.control.handle(lambda command: self.status() if command in ("", "status")
                                else {"error": f"unknown command {command!r}"})

    def _wake(self, *event: Any) -> None:
        self.done.put(event)
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"\0")

    # -- compile and swap --------------------------------------------------------------------
    def _start_build(self) -> None:
        self.build_wanted = False
        self.building = True
        sources, stored, fresh = self.sources.take()

        def run() -> None:
            background()  # off the serving path, also for the CPU
            t0 = time.perf_counter()
            try:
                ruleset: RuleSet | None = self._patch(sources, fresh)
                if ruleset is None:
                    ruleset = compile_stored(sources, stored, fresh)
            except Exception:  # a bug: the rules in force stay
                log.exception("compiling the new rule set failed; the rules in force stay")
                ruleset = None
            self._wake("built", ruleset, time.perf_counter() - t0)

        threading.Thread(target=run, name="compile", daemon=True).start()

    def _sink_for(self, src: SourceConfig) -> RuleSink | None:
        """Where a fetch of ``src`` hands its rules as it parses them: a Differ against the
        rules in force, so the new version is compared while it is read and never held
        whole. None before the first rule set (the parse keeps its rules)."""
        current = self.ruleset
        return current.differ(src) if current is not None else None

    def _patch(self, sources: tuple[SourceConfig, ...], fresh: dict[str, Any]) -> RuleSet | None:
        """The rule set in force with the one source that changed patched in (in place: it
        is this process's copy; workers have their own), or None: compile from scratch.

        A patch holds one rule set and the differences, where a compile holds two rule sets
        and the compile's transient (docs/performance.md, "Swaps that hold one rule set").
        """
        current = self.ruleset
        if current is None or len(fresh) != 1:
            return None
        if tuple(ls.config for ls in current.loaded) != tuple(sources):
            return None
        ((name, parsed),) = fresh.items()
        config = next((s for s in sources if s.name == name), None)
        if config is None or parsed is None:
            return None
        t0 = time.perf_counter()
        new = LoadedSource(config, parsed)
        patch = current.patch(new)
        if isinstance(patch, str):
            log.info("source %s: compiling the rule set from scratch: %s%s", name, patch,
                     " (its stored copy is parsed again)" if parsed.streamed else "")
            return None
        with self.fork_lock:
            try:
                ruleset = current.patched(new, patch)
            except BaseException:
                self.ruleset = None  # half written: no worker may start from it
                raise
            self.ruleset = ruleset
        new.seconds = time.perf_counter() - t0
        log.info("source %s: patched into the rules in force: %s added, %s removed, %s changed "
                 "in %.2f s%s", name, _count(patch.added, "name"), patch.removed, patch.changed,
                 new.seconds, " (compared with them while it was parsed)" if parsed.streamed else "")
        return ruleset

    def _built(self, ruleset: RuleSet | None, seconds: float) -> None:
        if ruleset is None or self.stopping:
            self.building = False
            if ruleset is None and self.ruleset is None and not self.stopping:
                log.error("no rule set to start workers from: compiling from scratch")
                self.build_wanted = True
            return
        if ruleset is self.ruleset:  # patched in place: nothing to drop
            self.swap.how = "patched"
            self._released(ruleset, seconds)
            return
        self.swap.how = "compiled"
        # Drop the rules in force before forking: a process forked while this one still
        # holds them would keep their pages alive for its whole life. Freeing ~100 MB of
        # objects takes a while (every page is touched, and first copied, as it is shared
        # with the old workers): a background thread does it, then the loop forks.
        box, self.ruleset = [self.ruleset], None

        def release() -> None:
            background()
            victim = box.pop()
            del victim
            gc.unfreeze()  # what the last fork froze, so that its cycles (if any) go too
            gc.collect()
            malloc_trim()
            self._wake("released", ruleset, seconds)

        threading.Thread(target=release, name="release", daemon=True).start()

    def _released(self, ruleset: RuleSet, seconds: float) -> None:
        self.building = False
        if self.stopping:
            return
        self.ruleset = ruleset
        self._note_loaded(ruleset, seconds)
        self._fork_generation()

    def _note_loaded(self, ruleset: RuleSet, seconds: float) -> None:
        with self.lock:
            self.loads = {ls.config.name: (dict(ls.kinds), ls.seconds) for ls in ruleset.loaded}
        for ls in ruleset.loaded:
            if ls.error and self.sources.stored.get(ls.config.name) is not None:
                log.error("source %s: the stored copy does not load: %s", ls.config.name, ls.error)
        self.swap.compile_seconds = seconds
        self.swaps[self.swap.how] += 1
        self.in_force = (ruleset.rules, ruleset.matcher.names)
        log.info("%s on %s from %s, %s in %.2f s", _count(ruleset.rules, "rule"),
                 _count(ruleset.matcher.names, "name"), _count(len(ruleset.loaded), "source"),
                 self.swap.how, seconds)

    def _fork_generation(self) -> None:
        gc.freeze()  # the rules stay in pages shared with the workers
        self.generation += 1
        self.swap.generation, self.swap.forked = self.generation, time.monotonic()
        self.swap.ready_seconds = None
        for slot in self.slots:
            self.respawn.pop(slot.index, None)
            if slot.sni == "nfqueue":
                self._release_queue(slot)
            self._spawn(slot)

    def _release_queue(self, slot: Slot) -> None:
        """A queue has one reader: the worker holding it lets go before its successor binds
        (which waits for it); meanwhile the kernel passes the packets (--queue-bypass)."""
        for old in self.workers.values():
            if old.slot == slot.index and old.state in ("serving", "starting"):
                old.state = "draining"
                old.deadline = time.monotonic() + DRAIN_GRACE
                if not old.channel.send("drain"):
                    _kill(old.pid, signal.SIGTERM)

    def _spawn(self, slot: Slot) -> None:
        parent, child = Channel.pair()
        with self.fork_lock:
            ruleset = self.ruleset
            if ruleset is None:
                parent.close()
                child.close()
                return
            pid = os.fork()
        if pid == 0:
            code = 1
            try:
                parent.close()
                self._in_child(slot)
                code = serve_slot(self.config, ruleset, slot, child, self.dns_workers)
            except BaseException:  # a worker reports and exits; it never returns into the loop
                log.exception("worker %d failed", os.getpid())
            finally:
                logging.shutdown()
                os._exit(code)
        child.close()
        w = Worker(pid, slot.index, self.generation, parent, "starting", time.monotonic())
        w.deadline = w.started + READY_TIMEOUT
        with self.lock:
            self.workers[pid] = w
        self.sel.register(parent.sock, selectors.EVENT_READ, lambda: self._on_channel(w))

    def _in_child(self, slot: Slot) -> None:
        """Leave only what a worker needs: its slot's sockets and its channel."""
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        self.sel.close()
        for s in (self._sig_r, self._sig_w, self._wake_r, self._wake_w):
            s.close()
        if self.control is not None:
            self.control.sock.close()  # not close(): the socket file is the supervisor's
        if self.metrics is not None:
            self.metrics.detach()
        for w in self.workers.values():
            w.channel.close()
        for other in self.slots:
            if other is not slot:
                for s in other.udp + other.tcp:
                    s.close()

    def _on_channel(self, w: Worker) -> None:
        messages = w.channel.receive()
        for m in messages or []:
            if m[0] == "ready":
                self._ready(w)
            elif m[0] == "stats":
                with self.lock:
                    w.stats = m[1]
            elif m[0] == "final":
                with self.lock:
                    self.retired.merge(m[1])
                    w.stats, w.final = None, True
        if messages is None:
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(w.channel.sock)

    def _ready(self, w: Worker) -> None:
        w.state, w.deadline = "serving", None
        self.failures[w.slot] = 0
        for old in self.workers.values():
            if old.slot == w.slot and old.generation < w.generation and old.state in ("serving", "starting"):
                if old.state == "serving" and old.channel.send("drain"):
                    old.state = "draining"
                    dns = self.config.dns
                    old.deadline = time.monotonic() + float(dns["timeout"]) * max(1, len(dns["upstreams"])) \
                        + DRAIN_GRACE
                else:
                    old.state = "draining"
                    _kill(old.pid, signal.SIGTERM)
        current = [x for x in self.workers.values() if x.generation == self.generation]
        if len(current) == len(self.slots) and all(x.state == "serving" for x in current):
            if self.swap.ready_seconds is None:
                self.swap.ready_seconds = time.monotonic() - self.swap.forked
                self.swap.at = time.time()
                if self.announced and not self.reload_pending:
                    self.notifier.status(self.status_line())
            if not self.announced:
                self.announced = True
                log.info("ready: listening on %s (%s%s)", ", ".join(self.listen),
                         _count(self.dns_workers, "worker"), self._sni_text())
                self.notifier.ready(self.status_line())
            elif self.reload_pending and not (self.building or self.build_wanted):
                self._reloaded()

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            w = self.workers.get(pid)
            if w is None:
                continue
            self._on_channel(w)  # its last words (the final counters) may still be queued
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(w.channel.sock)
            w.channel.close()
            with self.lock:
                del self.workers[pid]
                if not w.final and w.stats is not None:
                    self.retired.merge(w.stats)  # a crash: its last polled counters
            if w.state in ("draining",) or self.stopping or w.generation != self.generation:
                continue
            code = os.waitstatus_to_exitcode(status)
            self.failures[w.slot] = self.failures.get(w.slot, 0) + 1
            log.error("worker %d (slot %d) exited (%d); starting another", pid, w.slot, code)
            if self.failures[w.slot] > MAX_FAILURES:
                log.error("workers keep failing: giving up")
                self.stopping, self.exit_code = True, 1
            else:
                self.respawn[w.slot] = time.monotonic() + RESPAWN_DELAY

    # -- reload ---------------------------------------------------------------------------------
    def _reload(self) -> None:
        if self.config_path is None:
            log.warning("SIGHUP: no config file to re-read")
            return
        self.notifier.reloading(f"reloading {self.config_path}")
        try:
            config = load_config(self.config_path)
        except ConfigError as exc:
            self.notifier.ready(f"{self.status_line()}; reload refused: {len(exc.errors)} errors")
            self.reloads.refused += 1
            self.reloads.last_errors = list(exc.errors)
            log.error("SIGHUP: %s refused; the running configuration stays:", self.config_path)
            for e in exc.errors:
                log.error("  %s", e)
            return
        workers = int(config.dns["workers"]) or os.cpu_count() or 1
        for key, now, new in (("dns.listen", self.listen, list(config.dns["listen"])),
                              ("dns.workers", self.nworkers, workers),
                              ("state_dir", self.state_dir, config.state_dir)):
            if now != new:
                log.warning("SIGHUP: %s changed; that takes a restart (still %s)", key, now)
        changed = config != self.config
        self.config = config
        self.sources.reload(config)
        self.reloads.ok += 1
        self.reloads.last_errors = []
        self.build_wanted = self.build_wanted or changed
        self.reload_pending = True
        log.info("SIGHUP: %s re-read (%s); fetching every source", self.config_path,
                 "changed" if changed else "unchanged")

    # -- stop -----------------------------------------------------------------------------------
    def _shutdown(self) -> int:
        self.notifier.stopping()
        for w in self.workers.values():
            _kill(w.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        while self.workers and time.monotonic() < deadline:
            self._reap()
            if self.workers:
                time.sleep(0.02)
        for w in self.workers.values():
            _kill(w.pid, signal.SIGKILL)
        if self.control is not None:
            self.control.close()
        if self.metrics is not None:
            self.metrics.close()
        for slot in self.slots:
            for s in slot.udp + slot.tcp:
                s.close()
        signal.set_wakeup_fd(-1)
        return self.exit_code


def _counters(t: Stats) -> dict[str, Any]:
    return {"dns_queries": {f"{tr}/{action}": n for (tr, action), n in sorted(t.dns_queries().items())},
            "blocked": {"/".join(k): n for k, n in sorted(t.blocks().items())},
            "internal_errors": t.internal_errors}


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def _chown_tree(path: str, user: str) -> None:
    """Give ``user`` the state directory (it keeps lists there once root is gone).
    raises KeyError (no such user), OSError."""
    pw = pwd.getpwnam(user)
    os.makedirs(path, exist_ok=True)
    for root, dirs, files in os.walk(path):
        for name in [root, *(os.path.join(root, d) for d in dirs), *(os.path.join(root, f) for f in files)]:
            os.chown(name, pw.pw_uid, pw.pw_gid, follow_symlinks=False)


def _no_op(_sig: int, _frame: object) -> None:
    """Signals are read from the wakeup socket; the handler only has to exist."""


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
