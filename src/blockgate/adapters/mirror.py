"""Passive SNI enforcement on a mirror (SPAN/TAP) port: sniff, decide, reset both ends.

An AF_PACKET socket on ``sni.interface`` (promiscuous, with a classic BPF filter so the
kernel hands over only TCP/UDP to or from the inspected ports) feeds the engine. Nothing
can be dropped here, so a block is enforced by RSTs, sent through the host's routing
(raw IP sockets) to both ends, as Suricata's reject does in sniffer mode:

* on the packet that completed a blocked ClientHello: to the server at exactly the
  sequence number it expects next (it has the ClientHello), to the client at the ACK it
  sent, plus ``sni.rst_burst`` more at offsets of one full segment, for server data that
  may overtake the first (net4people/bbs#285);
* on every later server segment of that flow, which means the race was lost: to the
  client at the sequence number right after that segment (exact again); on every later
  client segment: to the server likewise. RFC 5961 §3.2 stacks ignore any other value.

QUIC cannot be stopped passively (no RST for UDP); its flows are decided and counted.
"""

from __future__ import annotations

import ctypes
import ipaddress
import logging
import socket
import struct
import time
from collections.abc import Callable, Sequence
from typing import Final

from blockgate.config import Config
from blockgate.decisions import DecisionLog
from blockgate.engine import RuleSet, SniEngine, make_sni_settings
from blockgate.packet import LinkType, Packet, PacketFormatError, Tcp, build_rst, ip_offset, parse_ip, resets
from blockgate.stats import Stats
from blockgate.verdict import Verdict

log = logging.getLogger("blockgate.mirror")
decision_log = logging.getLogger("blockgate.decisions")

ETH_P_ALL: Final = 0x0003
SO_ATTACH_FILTER: Final = 26
SOL_PACKET: Final = 263
PACKET_ADD_MEMBERSHIP: Final = 1
PACKET_MR_PROMISC: Final = 1
RCVBUF: Final = 16 << 20
SNAPLEN: Final = 65535
# Frames taken per wake-up before the worker looks at its supervisor's messages again.
BATCH: Final = 256
LOG_EVERY: Final = 10.0

# Classic BPF (linux/filter.h): opcodes used below.
_LDH_ABS, _LDB_ABS, _LDH_IND, _LDXB_MSH = 0x28, 0x30, 0x48, 0xB1
_JEQ, _JSET, _RET = 0x15, 0x45, 0x06


Ins = tuple[int, "str | int", "str | int", int]


def bpf_program(ports: Sequence[int]) -> list[tuple[int, int, int, int]]:
    """Ethernet frames holding TCP or UDP from or to one of ``ports`` (IPv4 first fragments,
    IPv6 without extension headers), as (code, jt, jf, k) instructions; others are cut.
    A string in the listing is a label; jumps name labels or give an offset."""
    def port_in() -> list[Ins]:
        return [(_JEQ, "accept", 0, p) for p in ports]

    listing: list[str | Ins] = [
        (_LDH_ABS, 0, 0, 12), (_JEQ, "v6", 0, 0x86DD), (_JEQ, 0, "drop", 0x0800),
        (_LDB_ABS, 0, 0, 23), (_JEQ, "v4", 0, 6), (_JEQ, 0, "drop", 17),
        "v4", (_LDH_ABS, 0, 0, 20), (_JSET, "drop", 0, 0x1FFF),  # a later fragment: no ports
        (_LDXB_MSH, 0, 0, 14),  # X = IPv4 header length
        (_LDH_IND, 0, 0, 14), *port_in(), (_LDH_IND, 0, 0, 16), *port_in(), (_RET, 0, 0, 0),
        "v6", (_LDB_ABS, 0, 0, 20), (_JEQ, "v6ok", 0, 6), (_JEQ, 0, "drop", 17),
        "v6ok", (_LDH_ABS, 0, 0, 54), *port_in(), (_LDH_ABS, 0, 0, 56), *port_in(),
        "drop", (_RET, 0, 0, 0),
        "accept", (_RET, 0, 0, SNAPLEN),
    ]
    labels: dict[str, int] = {}
    code: list[Ins] = []
    for item in listing:
        if isinstance(item, str):
            labels[item] = len(code)
        else:
            code.append(item)

    def rel(target: str | int, at: int) -> int:
        return labels[target] - at - 1 if isinstance(target, str) else target

    return [(op, rel(jt, i), rel(jf, i), k) for i, (op, jt, jf, k) in enumerate(code)]


def attach_filter(sock: socket.socket, program: list[tuple[int, int, int, int]]) -> None:
    raw = b"".join(struct.pack("HBBI", *ins) for ins in program)
    buf = ctypes.create_string_buffer(raw, len(raw))
    fprog = struct.pack("HL", len(program), ctypes.addressof(buf))  # struct sock_fprog
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def open_socket(interface: str, ports: Sequence[int]) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    attach_filter(sock, bpf_program(ports))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    sock.bind((interface, ETH_P_ALL))
    mreq = struct.pack("iHH8s", socket.if_nametoindex(interface), PACKET_MR_PROMISC, 0, b"")
    sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
    return sock


class Sender:
    """Raw IPv4/IPv6 sockets that send whole IP packets through the routing table."""

    def __init__(self) -> None:
        self.socks: dict[int, socket.socket] = {}
        for family, version in ((socket.AF_INET, 4), (socket.AF_INET6, 6)):
            try:
                self.socks[version] = socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_RAW)
            except OSError as exc:
                log.warning("no raw IPv%d socket for RSTs: %s", version, exc)

    def send(self, packet: bytes) -> None:
        s = self.socks.get(packet[0] >> 4)
        if s is not None:
            dst = packet[16:20] if packet[0] >> 4 == 4 else packet[24:40]
            s.sendto(packet, (str(ipaddress.ip_address(dst)), 0))


class Mirror:
    """Frames in, RSTs out."""

    def __init__(self, engine: SniEngine, send: Callable[[bytes], None], burst: int,
                 clock: Callable[[], float] = time.monotonic, decisions: DecisionLog | None = None) -> None:
        self.engine, self.send, self.burst, self.clock = engine, send, burst, clock
        self.decisions = decisions if decisions is not None and not decisions.off else None
        self.frames = self.rsts = 0
        self.next_log = 0.0

    def __call__(self, frame: bytes) -> None:
        self.frames += 1
        try:
            self._frame(frame)
        except Exception:  # the edge: count, log (rate-limited), go on with the next frame
            self.engine.stats.internal_errors += 1
            now = self.clock()
            if now >= self.next_log:
                self.next_log = now + LOG_EVERY
                log.exception("mirror: frame not handled")

    def _frame(self, frame: bytes) -> None:
        try:
            at = ip_offset(LinkType.ETHERNET, frame)
        except PacketFormatError as exc:
            self.engine.stats.malformed["link", exc.reason] += 1
            return
        ip = frame[at:]
        d = self.engine.on_packet(ip, self.clock())
        if d.verdict is Verdict.BLOCK:
            if d.packet is not None:  # the ClientHello just completed
                out = resets(d.packet, d.client_next, self.burst)
                e = d.event
                if self.decisions is not None and e is not None and e.name is not None and e.rule:
                    line = self.decisions.record(time.time(), str(ipaddress.ip_address(e.flow.src)), e.proto,
                                                 e.name, "reset" if e.proto == "tls" else "observed", e.rule)
                    if line is not None:
                        decision_log.info(line)
            else:
                out = self._after(ip)
        else:
            p = self.engine.blocked_reply(ip) if d.verdict is Verdict.PASS and not d.events else None
            out = [] if p is None else [build_rst(p.src, p.dst, p.sport, p.dport, _next(p), p.ack)]
        for rst in out:
            self.send(rst)
        self.rsts += len(out)

    @staticmethod
    def _after(ip: bytes) -> list[bytes]:
        """A later client segment of a blocked flow: reset the server right after it."""
        p = parse_ip(ip)
        if p.proto != 6 or p.flags & Tcp.RST:
            return []
        return [build_rst(p.src, p.dst, p.sport, p.dport, _next(p), None)]


def _next(p: Packet) -> int:
    """The sequence number right after segment ``p`` (SYN and FIN count one)."""
    return (p.seq + len(p.payload) + (1 if p.flags & (Tcp.SYN | Tcp.FIN) else 0)) % (1 << 32)


class MirrorService:
    """The sniffing socket of ``sni.interface``, for a worker's select loop: ``fileno()``
    becomes readable when frames wait, ``on_readable()`` handles up to ``BATCH`` of them,
    ``close()`` stops. raises OSError (no interface, no CAP_NET_RAW)."""

    def __init__(self, config: Config, ruleset: RuleSet, decisions: DecisionLog | None = None) -> None:
        sni = config.sni
        self.interface = str(sni["interface"] or "")
        if not self.interface:
            raise OSError("sni.mode mirror needs sni.interface")
        self.engine = SniEngine(ruleset.match, make_sni_settings(sni), Stats())
        self.stats = self.engine.stats
        self.sender = Sender()
        self.mirror = Mirror(self.engine, self.sender.send, int(sni["rst_burst"]), decisions=decisions)
        self.sock = open_socket(self.interface, list(sni["ports"]))
        self.sock.setblocking(False)
        log.info("ready: mirror on %s (ports %s, %d extra RSTs)", self.interface,
                 ",".join(map(str, sni["ports"])), self.mirror.burst)

    def fileno(self) -> int:
        return self.sock.fileno()

    def on_readable(self) -> None:
        recv, mirror = self.sock.recv, self.mirror
        for _ in range(BATCH):
            try:
                frame = recv(SNAPLEN)
            except (BlockingIOError, InterruptedError):
                return
            mirror(frame)

    def close(self) -> None:
        self.sock.close()
        log.info("mirror %s: %d frames, %d RSTs sent, %d internal errors", self.interface,
                 self.mirror.frames, self.mirror.rsts, self.stats.internal_errors)
