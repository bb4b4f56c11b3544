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
import signal
import socket
from dataclasses import dataclass
from typing import Final

from blockgate.adapters.control import Channel
from blockgate.adapters.dns_server import DnsServer, bind_tcp, bind_udp, entropy
from blockgate.config import Config, parse_addr
from blockgate.decisions import DecisionLog
from blockgate.engine import DnsEngine, RuleSet, make_settings, make_synth
from blockgate.stats import Stats

GC_EVERY: Final = 30.0


@dataclass(slots=True)
class Slot:
    """The listen sockets one worker at a time serves."""

    index: int
    udp: list[socket.socket]
    tcp: list[socket.socket]


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

        await server.serve(stop, drain, ready)
        collector.cancel()
        channel.send(("final", stats))

    asyncio.run(main())
    return 0


async def _collect_cycles() -> None:
    while True:
        await asyncio.sleep(GC_EVERY)
        gc.collect()


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
