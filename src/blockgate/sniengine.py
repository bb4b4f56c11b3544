"""Packet decisions: IP packets and the current time in, a ``Decision`` per packet out.

The adapters (NFQUEUE, mirror port, capture replay) hand every packet to
``SniEngine.on_packet``. The engine follows the client side of TCP and UDP flows to the
inspected ports, reassembles what a ClientHello may be spread over (TCP segments, TLS
records, QUIC Initials and their CRYPTO frames), and decides on the packet that completes
it. Earlier packets of the flow pass (they are already on their way in an inline setup);
the completing packet and every later one of a blocked flow get ``block``. DNS queries seen
in packets (UDP and TCP port 53) are decided too.

What a decision means (verdict.py): ``block``/``allow``/``pass`` for a name the rules
blocked, allowed or do not know; ``unknown`` when no name could be seen: no server_name,
a stream that is not TLS, a flow that ran out of its bounds (bytes, pieces, flows, idle
time). Unknown flows are not blocked (fail open) and are counted.

No I/O and no clock: ``now`` comes with each packet, so a replay decides exactly as the
live path does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, NamedTuple

from blockgate.config import Section
from blockgate.dnswire import DnsFormatError, parse_query
from blockgate.flows import FlowTable, Reassembler, Recent
from blockgate.packet import (
    GTP_U_PORT,
    FlowId,
    Packet,
    PacketFormatError,
    Tcp,
    flow_key,
    header_flow_key,
    inner,
    parse_ip,
)
from blockgate.quic import Initial, QuicFormatError, looks_like_initial, parse_datagram
from blockgate.stats import Stats
from blockgate.tls import ClientHello, Finished, NeedMore, TlsFormatError, read_handshake, read_hello
from blockgate.trie import Rule
from blockgate.verdict import Verdict, verdict_of

DNS_PORT: Final = 53
# RFC 8446 §4.1.4: a client answers at most one HelloRetryRequest, so two ClientHellos is
# the legitimate maximum; a few more are inspected (duplicates are an evasion attempt).
MAX_HELLOS: Final = 4
# TCP sequence space: offsets at or beyond half of it lie before the stream start (RFC 1982).
_SEQ_MOD: Final = 1 << 32
_SEQ_HALF: Final = 1 << 31
# Tunnels inside tunnels: GTP-U over IP in IP is the deepest real nesting.
MAX_TUNNELS: Final = 2
# DNS over TCP: the 2-byte length prefix (RFC 1035 §4.2.2).
_DNS_TCP_LIMIT: Final = 65535 + 2


def _first(frame: tuple[int, bytes]) -> int:
    return frame[0]


class Kind:
    """What an ``Event`` reports (also its JSON ``event`` value)."""

    HELLO: Final = "client_hello"
    QUERY: Final = "dns_query"
    MALFORMED: Final = "malformed"  # the bytes are not TLS/QUIC/DNS: no name
    OVERFLOW: Final = "overflow"  # bytes or pieces per flow exceeded
    EVICTED: Final = "evicted"  # the flow table was full and this flow was the oldest
    TIMEOUT: Final = "timeout"  # idle before its ClientHello completed


@dataclass(frozen=True, slots=True)
class Settings:
    ports: frozenset[int]
    max_flows: int = 65536
    max_flow_bytes: int = 16384
    flow_timeout: float = 10.0
    dns: bool = True


# NamedTuples, not frozen dataclasses: several are made per ClientHello, and a frozen
# dataclass's __init__ (one object.__setattr__ per field) cost several times as much.
class Event(NamedTuple):
    """One decision about a flow: a ClientHello or DNS query decided, or a flow given up.

    ``name``: the name that decided (the first blocked one, else the first allowed, else
    the first); ``names``: every name the message carried.
    """

    kind: str
    proto: str  # tls | quic | dns
    flow: FlowId
    verdict: Verdict
    name: bytes | None = None
    names: tuple[bytes, ...] = ()
    rule: Rule | None = None
    hello: ClientHello | None = None
    reason: str = ""

    @property
    def complete(self) -> bool:
        """A ClientHello or query was read whole (rather than a flow given up)."""
        return self.kind in _COMPLETE


class Decision(NamedTuple):
    """The verdict for one packet and the decisions it completed.

    ``verdict``: ``block`` means drop this packet. On a TCP packet that completed a blocked
    ClientHello, ``packet`` is set, with what the server has received of the client's
    stream (its RCV.NXT, RFC 9293 §3.3.1) in two cases: ``client_next`` once this segment
    is delivered (a passive box), ``client_next_dropped`` if it is dropped (inline).
    ``packet.resets`` builds the RSTs from them.
    """

    verdict: Verdict
    events: tuple[Event, ...] = ()
    packet: Packet | None = None
    client_next: int = 0
    client_next_dropped: int = 0

    @property
    def event(self) -> Event | None:
        return self.events[0] if self.events else None

    @property
    def complete(self) -> bool:
        return any(e.complete for e in self.events)

    @property
    def proto(self) -> str:
        return self.events[0].proto if self.events else ""

    @property
    def name(self) -> bytes | None:
        return self.events[0].name if self.events else None

    @property
    def rule(self) -> Rule | None:
        return self.events[0].rule if self.events else None

    @property
    def flow(self) -> FlowId | None:
        return self.events[0].flow if self.events else None


# Kinds of events that read a message whole (``Event.complete``).
_COMPLETE: Final = frozenset({Kind.HELLO, Kind.QUERY})
# ``Decision(...)`` and ``Event(...)`` run the NamedTuple's Python-level ``__new__``; the
# hot paths build the tuple directly with every field given.
_new: Final = tuple.__new__
# A verdict's text for counter keys: ``str`` of a StrEnum is C code, ``.value`` a Python
# property (visible per ClientHello in the compiled build).
_UNKNOWN: Final = str(Verdict.UNKNOWN)

PASS: Final = Decision(Verdict.PASS)
DROP: Final = Decision(Verdict.BLOCK)
MALFORMED: Final = Decision(Verdict.UNKNOWN)


class Flow:
    """Per-flow state while a ClientHello (or DNS message) is being read."""

    __slots__ = ("dcid", "decided", "hellos", "id", "isn", "last", "need", "proto", "seen", "stream")

    def __init__(self, fid: FlowId, proto: str, isn: int, limit: int, now: float) -> None:
        self.id = fid
        self.proto = proto
        self.isn = isn  # TCP: sequence number of stream offset 0
        self.stream: Reassembler | None = Reassembler(limit)
        self.need = 0  # parse again once the contiguous stream reaches this offset
        self.hellos = 0
        self.decided = False  # QUIC: the ClientHello was decided (later Initials pass)
        self.dcid: bytes | None = None  # QUIC: DCID of the client's first Initial
        self.seen: bytes | None = None  # QUIC: another DCID its decided Initials carried
        self.last = now


class SniEngine:
    """Decides packets; one per worker (it holds the flow state of the packets it sees)."""

    def __init__(self, match: Callable[[bytes], Rule | None], settings: Settings, stats: Stats) -> None:
        self.match = match
        self.settings = settings
        self.stats = stats
        self.ports = settings.ports
        self.tcp: FlowTable[Flow] = FlowTable(settings.max_flows, settings.flow_timeout)
        self.udp: FlowTable[Flow] = FlowTable(settings.max_flows, settings.flow_timeout)
        # Decided TCP flows: blocked ones keep dropping (retransmissions, re-cut segments),
        # the others pass without state. Bounded like the flow table.
        self.blocked: Recent[Event] = Recent(settings.max_flows)
        self.done: Recent[Verdict] = Recent(settings.max_flows)
        self.dns_ports = frozenset({DNS_PORT}) if settings.dns else frozenset()
        self.wanted = self.ports | self.dns_ports | {GTP_U_PORT}

    # -- the entry point -----------------------------------------------------------------
    def on_packet(self, data: bytes, now: float, depth: int = 0) -> Decision:
        """The decision for one IP packet (no link-layer header) seen at time ``now``.

        A tunnel packet (IP in IP, GTP-U) is decided by the packet inside it; its decision
        then has no ``packet`` (RSTs would need the tunnel headers).
        """
        fast = self._fast(data, now)
        if fast is not None:
            return fast
        try:
            p = parse_ip(data)
            tunneled = inner(p)
        except PacketFormatError as exc:
            self.stats.malformed["packet", exc.reason] += 1
            return MALFORMED
        if tunneled is not None:
            if depth >= MAX_TUNNELS:
                return PASS
            d = self.on_packet(tunneled, now, depth + 1)
            return d if d.packet is None else _new(Decision, (d.verdict, d.events, None, 0, 0))
        events: list[Event] = []
        if now >= self.tcp.next_sweep or now >= self.udp.next_sweep:
            self._expire(now, events, False)
        if p.fragment:
            return self._with(PASS, events)
        if p.dport in self.ports:
            if p.proto == 6:
                return self._tcp(p, now, events, False)
            if p.proto == 17:
                return self._quic(p, now, events)
        elif p.dport in self.dns_ports:
            if p.proto == 17:
                self._dns_message(p, p.payload, events, "udp")
                return self._decided(events)
            if p.proto == 6:
                return self._tcp(p, now, events, True)
        return self._with(PASS, events)

    def _fast(self, data: bytes, now: float) -> Decision | None:
        """The answer from the raw bytes when the packet needs no parse, else None.

        Most packets are server replies, other traffic, or later packets of flows already
        decided; answering them from the header fields costs no object. This covers IPv4
        without options and IPv6 without extension headers, unfragmented TCP and UDP whose
        length fields agree with the bytes; anything unusual (and any packet when flows are
        due to expire, so that their events are not lost) takes the full parse.
        """
        n = len(data)
        if n >= 40 and data[0] == 0x45:
            if data[6] & 0x3F or data[7]:
                return None  # a fragment
            proto, t = data[9], 20
        elif n >= 48 and data[0] >> 4 == 6:
            proto, t = data[6], 40
        else:
            return None
        if proto == 6:
            if n < t + 20:
                return None
        elif proto != 17 or n < t + 8:
            return None
        dport = (data[t + 2] << 8) | data[t + 3]
        if dport not in self.wanted:
            return PASS
        if (dport not in self.ports or now >= self.tcp.next_sweep or now >= self.udp.next_sweep
                or (((data[2] << 8) | data[3]) if t == 20 else 40 + ((data[4] << 8) | data[5])) != n):
            return None
        key = header_flow_key(data, t, proto)
        if proto == 6:
            flags = data[t + 13]
            if flags & 0x06:  # SYN or RST: flow state changes
                return None
            off = (data[t + 12] >> 4) * 4
            empty = off >= 20 and t + off == n
            flow = self.tcp.flows.get(key)
            if flow is not None:
                if not empty:
                    return None
                flow.last = now
                return PASS
            if key in self.blocked.keys:
                return DROP
            if empty or key in self.done.keys:
                return PASS
            return None
        if key in self.blocked.keys:
            return DROP
        if n == t + 8 or not data[t + 8] & 0x80:
            return PASS  # a short header (or nothing): never an Initial
        flow = self.udp.flows.get(key)
        if flow is None or not flow.decided or n < t + 14:
            return None
        # A decided flow's later Initials pass unopened while their DCID is one already
        # seen on it (a new DCID may be a restart after a Retry: that one is opened).
        at = t + 14
        dcid = data[at : at + data[at - 1]]
        if dcid == flow.dcid or dcid == flow.seen:
            flow.last = now
            return PASS
        return None

    def blocked_reply(self, data: bytes) -> Packet | None:
        """A server's TCP segment on a flow this engine blocked, else None: a passive box
        answers it with an RST to the client at the sequence number right after it."""
        try:
            p = parse_ip(data)
        except PacketFormatError:
            return None
        if p.proto != 6 or p.sport not in self.ports or p.flags & Tcp.RST:
            return None
        back = p._replace(src=p.dst, dst=p.src, sport=p.dport, dport=p.sport)
        return p if flow_key(back) in self.blocked.keys else None

    def finish(self, now: float) -> list[Event]:
        """Give up every flow still waiting (end of a capture): their final events."""
        events: list[Event] = []
        self._expire(now, events, True)
        return events

    # -- TCP -----------------------------------------------------------------------------
    def _tcp(self, p: Packet, now: float, events: list[Event], dns: bool) -> Decision:
        key = flow_key(p)
        syn = bool(p.flags & Tcp.SYN) and not p.flags & Tcp.ACK
        flow = self.tcp.get(key)
        if flow is None:
            if key in self.blocked.keys and not syn:
                return self._with(DROP, events)
            if key in self.done.keys and not syn:
                return self._with(PASS, events)
            if p.flags & Tcp.RST or not (p.payload or syn):
                return self._with(PASS, events)
            self.blocked.pop(key)
            self.done.pop(key)
            isn = (p.seq + 1) % _SEQ_MOD if syn else p.seq
            flow = Flow(_new(FlowId, (6, p.src, p.dst, p.sport, p.dport)), "dns" if dns else "tls", isn,
                        _DNS_TCP_LIMIT if dns else self.settings.max_flow_bytes, now)
            self._add(self.tcp, key, flow, events)
        elif syn and flow.stream is not None and not flow.stream.pieces:
            flow.isn = (p.seq + 1) % _SEQ_MOD  # a SYN retransmitted with a new ISN
        if p.flags & Tcp.RST:
            self.tcp.pop(key)
            return self._with(PASS, events)
        flow.last = now
        if not p.payload or flow.stream is None:
            return self._with(PASS, events)
        off = (p.seq + (1 if p.flags & Tcp.SYN else 0) - flow.isn) % _SEQ_MOD
        if off >= _SEQ_HALF:
            return self._with(PASS, events)  # before the stream start: already judged
        stream = flow.stream
        before = stream.contiguous()
        if not stream.add(off, p.payload):
            self._give_up(self.tcp, key, flow, Kind.OVERFLOW, events)
            return self._with(PASS, events)
        if stream.contiguous() < flow.need:
            return self._with(PASS, events)
        if dns:
            self._dns_stream(key, flow, events)
            return self._decided(events)
        block = self._tls_stream(key, flow, events)
        if block is None:
            return self._decided(events)
        self.blocked.add(key, block)
        return Decision(Verdict.BLOCK, tuple(events), p, (flow.isn + stream.contiguous()) % _SEQ_MOD,
                        (flow.isn + before) % _SEQ_MOD)

    def _tls_stream(self, key: bytes, flow: Flow, events: list[Event]) -> Event | None:
        """Read every ClientHello the stream now holds; the blocking event, if one blocks."""
        stream = flow.stream
        while stream is not None:
            try:
                res = read_hello(stream.data())
            except TlsFormatError as exc:
                self._malformed_stream(key, flow, exc.reason, events)
                return None
            if isinstance(res, NeedMore):
                flow.need = stream.start + res.need
                return None
            if isinstance(res, Finished):
                self._close(self.tcp, key, flow, Verdict.PASS)
                return None
            event = self._hello(flow, res)
            events.append(event)
            flow.hellos += 1
            if event.verdict is Verdict.BLOCK:
                self.tcp.pop(key)
                return event
            if flow.hellos >= MAX_HELLOS:
                self._close(self.tcp, key, flow, event.verdict)
                return None
            stream.discard(stream.start + res.end)  # wait for a second ClientHello (HRR)
            flow.need = stream.start + 5
        return None

    def _malformed_stream(self, key: bytes, flow: Flow, reason: str, events: list[Event]) -> None:
        self.stats.malformed[flow.proto, reason] += 1
        if not flow.hellos:  # after a ClientHello, bytes that are not a record are ciphertext
            self.stats.sni_flows[flow.proto, _UNKNOWN] += 1
            events.append(_new(Event, (Kind.MALFORMED, flow.proto, flow.id, Verdict.UNKNOWN, None, (), None,
                                       None, reason)))
        self._close(self.tcp, key, flow, Verdict.UNKNOWN)

    def _close(self, table: FlowTable[Flow], key: bytes, flow: Flow, verdict: Verdict) -> None:
        table.pop(key)
        flow.stream = None
        if table is self.tcp:
            self.done.add(key, verdict)

    # -- QUIC ----------------------------------------------------------------------------
    def _quic(self, p: Packet, now: float, events: list[Event]) -> Decision:
        key = flow_key(p)
        if key in self.blocked.keys:  # every packet of a blocked QUIC flow, for as long as it is kept
            return self._with(DROP, events)
        flow = self.udp.get(key)
        if not looks_like_initial(p.payload):
            return self._with(PASS, events)
        try:
            dg = parse_datagram(p.payload, flow.dcid if flow is not None else None)
        except QuicFormatError as exc:
            self.stats.malformed["quic", exc.reason] += 1
            return self._with(PASS, events)
        if dg.error:
            self.stats.malformed["quic", dg.error] += 1
        if not dg.initials:
            return self._with(PASS, events)
        if flow is None:
            flow = Flow(_new(FlowId, (17, p.src, p.dst, p.sport, p.dport)), "quic", 0,
                        self.settings.max_flow_bytes, now)
            flow.dcid = dg.initials[0].dcid
            self._add(self.udp, key, flow, events)
        flow.last = now
        block = self._crypto(key, flow, dg.initials, events)
        if flow.decided:
            for ini in dg.initials:
                if ini.rekeyed:
                    break
            else:
                flow.seen = dg.initials[-1].dcid
        if block is None:
            return self._decided(events)
        self.blocked.add(key, block)
        return Decision(Verdict.BLOCK, tuple(events), p)

    def _crypto(self, key: bytes, flow: Flow, initials: tuple[Initial, ...],
                events: list[Event]) -> Event | None:
        # The usual first Initial carries the whole ClientHello from offset 0: it is read
        # straight from the frames, and the stream only keeps it if more must follow.
        whole: bytes | None = None
        for ini in initials:
            if ini.rekeyed:  # after a Retry the client starts its CRYPTO stream over
                flow.dcid, flow.decided = ini.dcid, False
                flow.stream, flow.need = Reassembler(self.settings.max_flow_bytes), 0
            if flow.decided or flow.stream is None:
                continue
            # In offset order, most frames append (Chrome scatters them within a packet);
            # frames that follow each other go in as one piece.
            frames = sorted(ini.crypto, key=_first) if len(ini.crypto) > 1 else ini.crypto
            if not frames:
                continue
            first = frames[0][0]
            expect = first
            for offset, data in frames:
                if offset != expect:
                    break
                expect += len(data)
            else:
                joined = b"".join([data for _, data in frames])
                fresh = flow.stream
                if (first == 0 and len(initials) == 1 and fresh.start == 0 and not fresh.pieces
                        and len(joined) <= fresh.limit):
                    whole = joined
                    continue
                frames = ((first, joined),)
            for offset, data in frames:
                if not flow.stream.add(offset, data):
                    self._give_up(self.udp, key, flow, Kind.OVERFLOW, events)
                    return None
        stream = flow.stream
        if whole is None:
            if flow.decided or stream is None or stream.contiguous() < flow.need:
                return None
            data = stream.data()
        else:
            data = whole
        try:
            res = read_handshake(data)
        except TlsFormatError as exc:
            self.stats.malformed["quic", exc.reason] += 1
            self.stats.sni_flows["quic", _UNKNOWN] += 1
            events.append(_new(Event, (Kind.MALFORMED, "quic", flow.id, Verdict.UNKNOWN, None, (), None, None,
                                       exc.reason)))
            flow.decided, flow.stream = True, None
            return None
        if isinstance(res, NeedMore):
            if whole is not None and stream is not None:
                stream.add(0, whole)  # within the limit: checked above
            flow.need = res.need
            return None
        event = self._hello(flow, res)
        events.append(event)
        flow.hellos += 1
        flow.decided, flow.stream = True, None
        return event if event.verdict is Verdict.BLOCK else None

    # -- DNS -----------------------------------------------------------------------------
    def _dns_message(self, p: Packet | FlowId, msg: bytes, events: list[Event], transport: str) -> None:
        fid = p if isinstance(p, FlowId) else _new(FlowId, (p.proto, p.src, p.dst, p.sport, p.dport))
        try:
            key, _qtype, _qend = parse_query(msg)
        except DnsFormatError as exc:
            if exc.reason != "qr":  # a response: not ours to decide
                self.stats.malformed["dns", exc.reason] += 1
                events.append(_new(Event, (Kind.MALFORMED, "dns", fid, Verdict.UNKNOWN, None, (), None, None,
                                           exc.reason)))
            return
        rule = self.match(key)
        verdict = verdict_of(rule)
        if rule is not None and verdict is Verdict.BLOCK:
            self.stats.blocked["dns", rule.source, rule.category or ""] += 1
        events.append(_new(Event, (Kind.QUERY, "dns", fid, verdict, key, (key,), rule, None, "")))

    def _dns_stream(self, key: bytes, flow: Flow, events: list[Event]) -> None:
        """DNS over TCP: every length-prefixed message now complete (RFC 1035 §4.2.2)."""
        stream = flow.stream
        while stream is not None:
            data = stream.data()
            if len(data) < 2:
                flow.need = stream.start + 2
                return
            end = 2 + ((data[0] << 8) | data[1])
            if len(data) < end:
                flow.need = stream.start + end
                return
            self._dns_message(flow.id, data[2:end], events, "tcp")
            stream.discard(stream.start + end)

    # -- shared --------------------------------------------------------------------------
    def _hello(self, flow: Flow, hello: ClientHello) -> Event:
        """Match every name of a ClientHello: a blocked name wins, then an allowed one."""
        if hello.error:
            self.stats.malformed[flow.proto, hello.error] += 1
        best: tuple[Verdict, bytes | None, Rule | None] = (Verdict.UNKNOWN, None, None)
        for name in hello.names:
            rule = self.match(name)
            verdict = verdict_of(rule)
            if verdict is Verdict.BLOCK:
                best = (verdict, name, rule)
                break
            if best[1] is None or (verdict is Verdict.ALLOW and best[0] is not Verdict.ALLOW):
                best = (verdict, name, rule)
        verdict, chosen, rule = best
        self.stats.sni_flows[flow.proto, str(verdict)] += 1
        if rule is not None and verdict is Verdict.BLOCK:
            self.stats.blocked[flow.proto, rule.source, rule.category or ""] += 1
        return _new(Event, (Kind.HELLO, flow.proto, flow.id, verdict, chosen, hello.names, rule, hello,
                                  hello.error))

    def _add(self, table: FlowTable[Flow], key: bytes, flow: Flow, events: list[Event]) -> None:
        evicted = table.add(key, flow)
        if evicted is not None:
            self._final(evicted[1], Kind.EVICTED, events)
            if table is self.tcp:
                self.done.add(evicted[0], Verdict.UNKNOWN)

    def _give_up(self, table: FlowTable[Flow], key: bytes, flow: Flow, kind: str,
                 events: list[Event]) -> None:
        self._final(flow, kind, events)
        self._close(table, key, flow, Verdict.UNKNOWN)
        if table is self.udp:  # keep the key so the flow's later Initials pass unparsed
            flow.decided = True
            table.add(key, flow)

    def _final(self, flow: Flow, kind: str, events: list[Event]) -> None:
        """A flow given up before its ClientHello: counted, reported, memory freed."""
        flow.stream = None
        if flow.hellos or flow.decided or flow.proto == "dns":
            return
        self.stats.sni_flows[flow.proto, _UNKNOWN] += 1
        self.stats.malformed[flow.proto, kind] += 1
        events.append(_new(Event, (kind, flow.proto, flow.id, Verdict.UNKNOWN, None, (), None, None, kind)))

    def _expire(self, now: float, events: list[Event], force: bool) -> None:
        for table in (self.tcp, self.udp):
            for key, flow in table.expire(now, force):
                self._final(flow, Kind.TIMEOUT, events)
                if table is self.tcp and not force:
                    self.done.add(key, Verdict.UNKNOWN)

    @staticmethod
    def _with(base: Decision, events: list[Event]) -> Decision:
        return base if not events else _new(Decision, (base.verdict, tuple(events), None, 0, 0))

    @staticmethod
    def _decided(events: list[Event]) -> Decision:
        """A packet that completed messages (or none): it is blocked if one of them is."""
        if not events:
            return PASS
        verdict = Verdict.PASS
        for e in events:  # a loop, not any() over a generator: this runs per ClientHello
            if e.verdict is Verdict.BLOCK and e.kind in _COMPLETE:
                verdict = Verdict.BLOCK
                break
        return _new(Decision, (verdict, tuple(events), None, 0, 0))


def make_sni_settings(sni: Section, ports: Iterable[int] | None = None) -> Settings:
    """Settings from the ``sni:`` config section (``ports`` overrides ``sni.ports``)."""
    return Settings(frozenset(int(p) for p in (sni["ports"] if ports is None else ports)),
                    int(sni["max_flows"]), int(sni["max_flow_bytes"]), float(sni["flow_timeout"]))

