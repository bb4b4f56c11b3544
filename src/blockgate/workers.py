"""Worker processes: the listen sockets of a slot, and the DNS service a worker runs on them.

The supervisor binds every socket before forking (``open_slots``); a worker serves the
sockets of its slot (``serve_slot``) until SIGTERM, or drains when the supervisor says so
over its ``Channel``: it stops reading, answers what it sent upstream, reports its final
counters and returns. Messages from a worker: ``("ready",)`` once it reads its sockets,
``("stats", Stats)`` when asked ``"stats"``, ``("final", Stats)`` last.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import selectors
import signal
import socket
from dataclasses import dataclass
from typing import Final, Protocol

from blockgate.adapters.control import Channel
from blockgate.adapters.dns_server import DnsServer, bind_tcp, bind_udp, entropy, new_loop
from blockgate.adapters.mirror import MirrorService
from blockgate.adapters.nfqueue import QueueService
from blockgate.config import Config, Section, parse_addr
from blockgate.decisions import DecisionLog
from blockgate.engine import DnsEngine, RuleSet, make_settings, make_synth
from blockgate.stats import Stats

GC_EVERY: Final = 30.0
# An SNI worker looks at its supervisor's messages at least this often.
TICK: Final = 0.5

log = logging.getLogger("blockgate")


@dataclass(slots=True)
class Slot:
    """What one worker at a time serves: DNS listen sockets, or (``sni`` set) an NFQUEUE
    queue or the mirror port."""

    index: int
    udp: list[socket.socket]
    tcp: list[socket.socket]
    sni: str | None = None  # "nfqueue" | "mirror"
    queue: int = 0


@dataclass(slots=True)
class Worker:
    pid: int
    slot: int
    generation: int
    channel: Channel
    state: str  # starting | serving | draining | gone
    started: float
    stats: Stats | None = None
    deadline: float | None = None  # starting: READY_TIMEOUT; draining: when to kill
    final: bool = False


def make_server(config: Config, ruleset: RuleSet, workers: int = 1) -> DnsServer:
    dns = config.dns
    engine = DnsEngine(ruleset.matcher.classes, ruleset.match, make_synth(dns),
                       make_settings(dns, parse_addr), Stats(), entropy)
    listen = [parse_addr(a) for a in dns["listen"]]
    # the configured rate is the daemon's: each worker logs its share
    per_second = -(-int(config.log["decisions_per_second"]) // max(1, workers))
    decisions = DecisionLog(str(config.log["decisions"]), per_second)
    return DnsServer(engine, listen, float(dns["tcp_idle_timeout"]), int(dns["tcp_max_connections"]),
                     decisions)


def serve_slot(config: Config, ruleset: RuleSet, slot: Slot, channel: Channel, workers: int = 1) -> int:
    """A worker: serve the slot's sockets until SIGTERM, or drain when the supervisor says."""
    if slot.sni is not None:
        return serve_packets(config, ruleset, slot, channel)
    server = make_server(config, ruleset, workers)
    server.adopt(slot.udp, slot.tcp)
    stats = server.engine.stats

    async def main() -> None:
        # What a query allocates is freed by reference counting; the cycle collector would
        # only re-scan those short-lived tuples (~10 % of a core at full load). It runs every
        # GC_EVERY seconds instead, for the rare cycles (asyncio tracebacks).
        gc.disable()
        stop, drain = asyncio.Event(), asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

        def on_message() -> None:
            messages = channel.receive()
            if messages is None:  # the supervisor is gone: so are we
                loop.remove_reader(channel.fileno())
                stop.set()
                return
            for m in messages:
                if m == "stats":
                    channel.send(("stats", stats))
                elif m == "drain":
                    drain.set()

        loop.add_reader(channel.fileno(), on_message)
        collector = loop.create_task(_collect_cycles())
        def ready() -> None:
            channel.send(("ready",))

        await server.serve(stop, drain, ready, hot=selector)
        collector.cancel()
        channel.send(("final", stats))

    loop, selector = new_loop()
    with asyncio.Runner(loop_factory=lambda: loop) as runner:
        runner.run(main())
    return 0


class PacketService(Protocol):
    """An SNI adapter's packet source (``nfqueue.QueueService``, ``mirror.MirrorService``)."""

    stats: Stats

    def fileno(self) -> int: ...

    def on_readable(self) -> None: ...

    def close(self) -> None: ...


class _Stop(Exception):
    """SIGTERM/SIGINT in an SNI worker: leave the loop."""


def _raise_stop(_sig: int, _frame: object) -> None:
    raise _Stop


def serve_packets(config: Config, ruleset: RuleSet, slot: Slot, channel: Channel) -> int:
    """An SNI worker: verdicts for its queue (or mirror port) until SIGTERM or "drain";
    counters on request and at the end, as the DNS workers do."""
    decisions = DecisionLog(str(config.log["decisions"]), int(config.log["decisions_per_second"]))
    try:
        service: PacketService = (QueueService(config, ruleset, slot.queue, decisions)
                                  if slot.sni == "nfqueue" else MirrorService(config, ruleset, decisions))
    except OSError as exc:
        log.error("SNI %s: cannot start: %s", slot.sni, exc)
        return 1
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _raise_stop)
    sel = selectors.DefaultSelector()
    sel.register(service.fileno(), selectors.EVENT_READ, service.on_readable)
    sel.register(channel.fileno(), selectors.EVENT_READ, None)
    channel.send(("ready",))
    try:
        while True:
            for key, _ in sel.select(TICK):
                if key.data is not None:
                    key.data()
                    continue
                messages = channel.receive()
                if messages is None or "drain" in messages:  # the supervisor is gone, or a swap
                    raise _Stop
                if "stats" in messages:
                    channel.send(("stats", service.stats))
    except _Stop:
        pass
    finally:
        sel.close()
        service.close()
    channel.send(("final", service.stats))
    return 0


async def _collect_cycles() -> None:
    while True:
        await asyncio.sleep(GC_EVERY)
        gc.collect()


def sni_slots(sni: Section, first: int) -> list[Slot]:
    """The SNI workers ``sni.mode`` asks for: one per NFQUEUE queue, or one for the mirror."""
    mode = str(sni["mode"])
    if mode == "nfqueue":
        return [Slot(first + i, [], [], "nfqueue", int(q)) for i, q in enumerate(sni["queues"])]
    if mode == "mirror":
        return [Slot(first, [], [], "mirror")]
    return []


def open_slots(listen: list[str], workers: int) -> list[Slot]:
    """Every listen socket, bound now. raises OSError."""
    slots = []
    try:
        for i in range(workers):
            slot = Slot(i, [], [])
            slots.append(slot)
            for host, port in (parse_addr(a) for a in listen):
                slot.udp.append(bind_udp(host, port))
                slot.tcp.append(bind_tcp(host, port))
    except OSError:
        for s in slots:
            for sock in s.udp + s.tcp:
                sock.close()
        raise
    return slots
