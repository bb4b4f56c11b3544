"""The composition root: build the rule set, then serve it from worker processes.

``blockgate run``: the sources are loaded and compiled once, in this process; then
``dns.workers`` processes are forked (``gc.freeze`` first, so the compiled rules stay in
pages shared by all of them) and each binds the listen addresses with SO_REUSEPORT, so the
kernel spreads queries across them. With one worker the process serves by itself. This
process supervises: SIGTERM/SIGINT stop every worker and exit 0; a worker that dies
unexpectedly is started again (at most once per ``RESPAWN_DELAY``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
import time
from typing import Final

from blockgate.adapters import mirror, nfqueue
from blockgate.adapters.dns_server import DnsServer, entropy
from blockgate.adapters.fetch import load_sources, rss_bytes
from blockgate.config import Config, parse_addr
from blockgate.engine import DnsEngine, RuleSet, make_settings, make_synth
from blockgate.stats import Stats

log = logging.getLogger("blockgate")

RESPAWN_DELAY: Final = 1.0
GC_EVERY: Final = 30.0
STOP_GRACE: Final = 5.0


def build_ruleset(config: Config) -> tuple[RuleSet, float, int]:
    """Load every source and compile them: the rule set, seconds taken, RSS growth."""
    t0, m0 = time.perf_counter(), rss_bytes()
    loaded = load_sources(config)
    ruleset = RuleSet(loaded)
    return ruleset, time.perf_counter() - t0, rss_bytes() - m0


def worker(config: Config, ruleset: RuleSet, server: DnsServer) -> int:
    """Serve until SIGTERM/SIGINT (sockets already bound)."""

    async def main() -> None:
        # What a query allocates is freed by reference counting; the cycle collector would
        # only re-scan those short-lived tuples (~10 % of a core at full load). It runs every
        # GC_EVERY seconds instead, for the rare cycles (asyncio tracebacks).
        gc.disable()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        collector = loop.create_task(_collect_cycles())
        await server.serve(stop)
        collector.cancel()

    asyncio.run(main())
    return 0


async def _collect_cycles() -> None:
    while True:
        await asyncio.sleep(GC_EVERY)
        gc.collect()


def make_server(config: Config, ruleset: RuleSet) -> DnsServer:
    dns = config.dns
    engine = DnsEngine(ruleset.matcher.classes, ruleset.match, make_synth(dns),
                       make_settings(dns, parse_addr), Stats(), entropy)
    listen = [parse_addr(a) for a in dns["listen"]]
    return DnsServer(engine, listen, float(dns["tcp_idle_timeout"]), int(dns["tcp_max_connections"]))


def run(config: Config) -> int:
    ruleset, seconds, memory = build_ruleset(config)
    for ls in ruleset.loaded:
        if ls.error:
            log.warning("source %s not loaded: %s", ls.config.name, ls.error)
            if config.on_missing_list == "refuse":
                log.error("on_missing_list is refuse: exiting")
                return 1
    log.info("%d rules on %d names from %d sources, compiled in %.2f s (%.0f MiB)",
             ruleset.rules, ruleset.matcher.names, len(ruleset.loaded), seconds, memory / 2**20)
    workers = int(config.dns["workers"]) or os.cpu_count() or 1
    gc.collect()
    gc.freeze()
    sni = start_sni_workers(config, ruleset)
    try:
        if workers == 1:
            server = make_server(config, ruleset)
            try:
                server.bind()
            except OSError as exc:
                log.error("cannot listen on %s: %s", ", ".join(config.dns["listen"]), exc)
                return 1
            log.info("ready: listening on %s (1 worker)", ", ".join(config.dns["listen"]))
            return worker(config, ruleset, server)
        return supervise(config, ruleset, workers)
    finally:
        stop_sni_workers(sni)


def start_sni_workers(config: Config, ruleset: RuleSet) -> list[int]:
    """Fork the SNI enforcement workers ``sni.mode`` asks for (nfqueue: one process per
    queue in ``sni.queues``, mirror: one); their pids. Called after compiling, like the DNS workers, so
    the rules stay in shared pages."""
    mode = config.sni["mode"]
    if mode == "off":
        return []
    pids = []
    for queue in config.sni["queues"] if mode == "nfqueue" else [None]:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us with SIGTERM
                if queue is None:
                    code = mirror.serve(config, ruleset)
                else:
                    code = nfqueue.serve(config, ruleset, int(queue))
            except BaseException:  # a worker reports and exits; it never returns into the parent
                log.exception("SNI worker %d failed", os.getpid())
            finally:
                logging.shutdown()
                os._exit(code)
        pids.append(pid)
    return pids


def stop_sni_workers(pids: list[int]) -> None:
    for pid in pids:
        _kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    break
            except ChildProcessError:
                break
            time.sleep(0.05)
        else:
            _kill(pid, signal.SIGKILL)


def _spawn(config: Config, ruleset: RuleSet) -> int:
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        server = make_server(config, ruleset)
        server.bind()
        code = worker(config, ruleset, server)
    except OSError as exc:
        log.error("worker %d cannot listen on %s: %s", os.getpid(), ", ".join(config.dns["listen"]), exc)
    except BaseException:  # a worker reports and exits; it never returns into the parent
        log.exception("worker %d failed", os.getpid())
    finally:
        logging.shutdown()
        os._exit(code)


def supervise(config: Config, ruleset: RuleSet, workers: int) -> int:
    stopping = False

    def stop(_sig: int, _frame: object) -> None:
        # waitpid() below is retried after a signal (PEP 475): the workers are told here,
        # and their exits wake it up.
        nonlocal stopping
        stopping = True
        for pid in pids:
            _kill(pid, signal.SIGTERM)

    pids: set[int] = set()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    pids.update(_spawn(config, ruleset) for _ in range(workers))
    log.info("ready: listening on %s (%d workers)", ", ".join(config.dns["listen"]), workers)
    failures = 0
    while pids and not stopping:
        try:
            pid, status = os.waitpid(-1, 0)
        except InterruptedError:
            continue
        except ChildProcessError:
            break
        if pid not in pids:
            continue
        pids.discard(pid)
        if stopping:
            break
        code = os.waitstatus_to_exitcode(status)
        failures += 1
        log.error("worker %d exited (%d); starting another", pid, code)
        if code == 1 and failures > workers * 3:
            log.error("workers keep failing: giving up")
            stopping = True
            break
        time.sleep(RESPAWN_DELAY)
        pids.add(_spawn(config, ruleset))
    for pid in pids:
        _kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    while pids and time.monotonic() < deadline:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid:
            pids.discard(pid)
        else:
            time.sleep(0.05)
    for pid in pids:
        _kill(pid, signal.SIGKILL)
    return 0 if not failures or stopping else 1


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def setup_logging(level: str) -> None:
    under_systemd = "JOURNAL_STREAM" in os.environ or "INVOCATION_ID" in os.environ
    fmt = "%(name)s: %(message)s" if under_systemd else "%(asctime)s %(name)s: %(message)s"
    logging.basicConfig(stream=sys.stderr, level=level.upper(), format=fmt)
