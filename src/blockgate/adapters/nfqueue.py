"""Inline SNI enforcement on NFQUEUE: one worker process per queue, verdicts from the engine.

The kernel queues only the first packets of each TCP/UDP flow to the inspected ports (the
ruleset printed by ``blockgate rules``). For each packet the engine decides:

* pass / allow / unknown: accept.
* block: the packet is re-queued to the hook with the conntrack mark (``sni.mark``) set
  (NF_REPEAT), where the ruleset saves the mark to the connection and drops the packet;
  every later packet of the connection, both directions, is then dropped by the kernel
  without reaching userspace. On the TCP packet that completed the ClientHello, RSTs go to
  both ends first (the server's at the sequence number it expects with this packet
  dropped), so both fail fast instead of retransmitting into a black hole. QUIC flows
  simply lose their Initials (no RST exists for UDP; browsers fall back to TCP).

Fail-open: the rules use ``--queue-bypass`` (no worker bound: the kernel accepts); each
bound queue is configured with ``NFQA_CFG_F_FAIL_OPEN`` (a full queue: the kernel accepts
instead of dropping; python-netfilterqueue has no call for it, so the netlink message is
sent here on its socket); a worker that cannot decide a packet accepts it, and anything
unexpected at this edge is counted in ``internal_errors``, logged at most once per
``LOG_EVERY`` seconds, and the packet still gets its verdict.

RSTs are sent from raw sockets carrying ``sni.mark + 1`` (SO_MARK), which the ruleset
accepts before the connmark drop: they belong to the blocked connection too.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import struct
import time
from collections.abc import Callable
from typing import Any, Final

from blockgate.config import Config, Section
from blockgate.decisions import DecisionLog
from blockgate.engine import Event, RuleSet, SniEngine, make_sni_settings
from blockgate.packet import resets
from blockgate.stats import Stats
from blockgate.verdict import Verdict

log = logging.getLogger("blockgate.nfqueue")
decision_log = logging.getLogger("blockgate.decisions")

LOG_EVERY: Final = 10.0
# Packets of a connection's original direction queued to userspace: SYN, ACK, a ClientHello
# in up to 6 segments and a second one after HelloRetryRequest fit; later packets of a
# blocked flow are dropped by conntrack mark, of the others never queued.
QUEUE_PACKETS: Final = 16
# Kernel queue length per queue (packets waiting for a verdict) and the netlink receive
# buffer: python-netfilterqueue's run() used to stop on ENOBUFS when the buffer overflowed
# (oremanj/python-netfilterqueue PR #8).
MAX_LEN: Final = 4096
SOCK_LEN: Final = 8 << 20
CHAIN: Final = "BLOCKGATE"
# linux/netfilter/nfnetlink.h and nfnetlink_queue.h: the queue's configuration message.
NETLINK_NETFILTER: Final = 12
NFNL_SUBSYS_QUEUE: Final = 3
NFQNL_MSG_CONFIG: Final = 2
NFQA_CFG_MASK: Final = 4
NFQA_CFG_FLAGS: Final = 5
NFQA_CFG_F_FAIL_OPEN: Final = 0x01
NLM_F_REQUEST: Final = 0x01
# How long a new worker waits for the queue its predecessor still holds (a swap), and how
# often it tries: the predecessor unbinds as soon as it is told to drain.
BIND_WAIT: Final = 5.0
BIND_RETRY: Final = 0.01


class RateLimitedLog:
    """At most one message per ``every`` seconds; the ones left out are counted in the next."""

    def __init__(self, logger: logging.Logger, every: float = LOG_EVERY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger, self.every, self.clock = logger, every, clock
        self.next = 0.0
        self.skipped = 0

    def error(self, msg: str, *args: object) -> None:
        now = self.clock()
        if now < self.next:
            self.skipped += 1
            return
        if self.skipped:
            msg += f" ({self.skipped} more since the last message)"
        self.logger.error(msg, *args, exc_info=True)
        self.next, self.skipped = now + self.every, 0


class Injector:
    """Raw IPv4/IPv6 sockets that send whole IP packets (the RSTs), marked ``mark``."""

    def __init__(self, mark: int) -> None:
        self.socks: dict[int, socket.socket] = {}
        for family, version in ((socket.AF_INET, 4), (socket.AF_INET6, 6)):
            try:
                s = socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_RAW)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
            except OSError as exc:
                log.warning("no raw IPv%d socket for RSTs: %s", version, exc)
                continue
            self.socks[version] = s

    def send(self, packet: bytes) -> None:
        version = packet[0] >> 4
        s = self.socks.get(version)
        if s is None:
            return
        dst = packet[16:20] if version == 4 else packet[24:40]
        s.sendto(packet, (str(ipaddress.ip_address(dst)), 0))

    def close(self) -> None:
        for s in self.socks.values():
            s.close()


class Worker:
    """The callback of one queue: engine decision in, one kernel verdict out."""

    def __init__(self, engine: SniEngine, mark: int, send: Callable[[bytes], None],
                 clock: Callable[[], float] = time.monotonic, decisions: DecisionLog | None = None) -> None:
        self.engine, self.mark, self.send, self.clock = engine, mark, send, clock
        self.decisions = decisions if decisions is not None and not decisions.off else None
        self.errors = RateLimitedLog(log)
        self.verdicts = 0

    def __call__(self, pkt: Any) -> None:
        block = False
        try:
            d = self.engine.on_packet(pkt.get_payload(), self.clock())
            block = d.verdict is Verdict.BLOCK
            if block and d.packet is not None:
                for rst in resets(d.packet, d.client_next_dropped):
                    self.send(rst)
                if self.decisions is not None and d.event is not None:
                    log_block(self.decisions, d.event, "reset" if d.event.proto == "tls" else "drop")
        except Exception:  # the edge: count, log, and still give the packet its verdict
            self.engine.stats.internal_errors += 1
            self.errors.error("nfqueue: packet not decided")
        self.verdicts += 1
        if block:
            pkt.set_mark(self.mark)
            pkt.repeat()
        else:
            pkt.accept()


def log_block(decisions: DecisionLog, e: Event | None, action: str) -> None:
    """The decision-log line of a blocked ClientHello (rate-limited by ``decisions``)."""
    if e is None or e.name is None or e.rule is None:
        return
    client = str(ipaddress.ip_address(e.flow.src))
    line = decisions.record(time.time(), client, e.proto, e.name, action, e.rule)
    if line is not None:
        decision_log.info(line)


def fail_open_message(queue: int) -> bytes:
    """NFQNL_MSG_CONFIG setting NFQA_CFG_F_FAIL_OPEN on ``queue``: netlink headers in host
    order, the nfgenmsg resource id and the attribute values in network order (as
    libnetfilter_queue's ``nfq_set_queue_flags`` writes them). No ACK is asked for: the
    socket is the one packets arrive on, and an error reply is read and ignored there."""
    def attr(kind: int, value: int) -> bytes:
        return struct.pack("=HH", 8, kind) + struct.pack("!I", value)

    body = (struct.pack("!BBH", socket.AF_UNSPEC, 0, queue)
            + attr(NFQA_CFG_MASK, NFQA_CFG_F_FAIL_OPEN) + attr(NFQA_CFG_FLAGS, NFQA_CFG_F_FAIL_OPEN))
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_CONFIG,
                       NLM_F_REQUEST, 0, 0) + body


def set_fail_open(fd: int, queue: int) -> None:
    """Send ``fail_open_message`` on the netlink socket ``fd`` that holds ``queue`` (the
    kernel accepts configuration only from the socket bound to the queue)."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER, fileno=os.dup(fd)) as s:
        s.sendto(fail_open_message(queue), (0, 0))


class QueueService:
    """One bound NFQUEUE, for a worker's select loop: ``fileno()`` becomes readable when
    packets wait, ``on_readable()`` gives them their verdicts, ``close()`` unbinds."""

    def __init__(self, config: Config, ruleset: RuleSet, queue: int, decisions: DecisionLog | None = None,
                 bind_wait: float = BIND_WAIT) -> None:
        from netfilterqueue import NetfilterQueue  # the optional extra: only this mode needs it

        sni = config.sni
        self.queue = queue
        self.mark = int(sni["mark"])
        self.engine = SniEngine(ruleset.match, make_sni_settings(sni), Stats())
        self.stats = self.engine.stats
        self.injector = Injector(self.mark + 1)
        self.worker = Worker(self.engine, self.mark, self.injector.send, decisions=decisions)
        self.nfq = NetfilterQueue()
        # The worker of the rule set before this one may still hold the queue for a moment
        # (a swap): meanwhile the kernel lets packets through (--queue-bypass).
        deadline = time.monotonic() + bind_wait
        while True:
            try:
                self.nfq.bind(queue, self.worker, max_len=MAX_LEN, sock_len=SOCK_LEN)
                break
            except OSError:
                if time.monotonic() >= deadline:
                    self.injector.close()
                    raise
                time.sleep(BIND_RETRY)
        try:
            set_fail_open(self.fileno(), queue)
            fail_open = "fail-open"
        except OSError as exc:  # the queue still works; a full queue then drops
            log.warning("NFQUEUE %d: cannot set fail-open: %s", queue, exc)
            fail_open = "no fail-open"
        log.info("ready: NFQUEUE %d bound (ports %s, conntrack mark %#x, %s)", queue,
                 ",".join(map(str, sni["ports"])), self.mark, fail_open)

    def fileno(self) -> int:
        return int(self.nfq.get_fd())

    def on_readable(self) -> None:
        self.nfq.run(block=False)

    def close(self) -> None:
        self.nfq.unbind()
        self.injector.close()
        log.info("NFQUEUE %d: %d verdicts, %d internal errors", self.queue, self.worker.verdicts,
                 self.stats.internal_errors)


# -- the ruleset ----------------------------------------------------------------------------


def _queue_spec(queues: list[int]) -> tuple[int, int]:
    qs = sorted(set(queues))
    if qs != list(range(qs[0], qs[-1] + 1)):
        raise ValueError(f"sni.queues {queues} are not consecutive: --queue-balance takes a range")
    return qs[0], qs[-1]


def iptables_rules(sni: Section) -> list[str]:
    """iptables commands that queue only what needs inspection and drop marked flows."""
    first, last = _queue_spec(list(sni["queues"]))
    mark = int(sni["mark"])
    ports = ",".join(str(p) for p in sni["ports"])
    queue = f"--queue-num {first}" if first == last else f"--queue-balance {first}:{last}"
    nfq = (f"-m multiport --dports {ports} -m connbytes --connbytes 0:{QUEUE_PACKETS} "
           f"--connbytes-dir original --connbytes-mode packets -j NFQUEUE {queue} --queue-bypass")
    return [
        "# blockgate sni.mode nfqueue: queue the first packets of TCP/UDP flows to the inspected ports;",
        "# blocked flows carry a conntrack mark and are dropped here, both directions.",
        "sysctl -qw net.netfilter.nf_conntrack_acct=1",
        f"iptables -N {CHAIN}",
        f"iptables -A {CHAIN} -m mark --mark {mark + 1:#x} -j ACCEPT",
        f"iptables -A {CHAIN} -m mark --mark {mark:#x} -j CONNMARK --save-mark",
        f"iptables -A {CHAIN} -m connmark --mark {mark:#x} -j DROP",
        f"iptables -A {CHAIN} -p tcp {nfq}",
        f"iptables -A {CHAIN} -p udp {nfq}",
        f"iptables -I FORWARD -j {CHAIN}",
        f"iptables -I OUTPUT -j {CHAIN}",
        f"iptables -I INPUT -m connmark --mark {mark:#x} -j DROP",
    ]


def nft_rules(sni: Section) -> str:
    """The same ruleset for nftables (``nft -f``), for kernels with the ``queue`` statement."""
    first, last = _queue_spec(list(sni["queues"]))
    mark = int(sni["mark"])
    ports = ", ".join(str(p) for p in sni["ports"])
    # a range balances by flow hash (nft's "fanout" flag would spread by CPU instead)
    queue = f"queue num {first} bypass" if first == last else f"queue num {first}-{last} bypass"
    inspect = [f"        {proto} dport {{ {ports} }} ct original packets 0-{QUEUE_PACKETS} {queue}"
               for proto in ("tcp", "udp")]
    chain = [f"        meta mark {mark + 1:#x} accept",
             f"        meta mark {mark:#x} ct mark set meta mark drop",
             f"        ct mark {mark:#x} drop",
             *inspect]
    return "\n".join([
        "# blockgate sni.mode nfqueue (needs net.netfilter.nf_conntrack_acct=1)",
        "table inet blockgate {",
        "    chain forward {",
        "        type filter hook forward priority 0; policy accept;",
        *chain,
        "    }",
        "    chain output {",
        "        type filter hook output priority 0; policy accept;",
        *chain,
        "    }",
        "    chain input {",
        "        type filter hook input priority 0; policy accept;",
        f"        ct mark {mark:#x} drop",
        "    }",
        "}",
    ])
