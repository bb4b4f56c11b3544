"""The DNS decisions of one worker: block, forward, or refuse; and the forwarding state.

Sans-I/O, like the rest of the core: the adapter hands in packets, the time, where a
packet came from and the channel to answer on (a UDP socket or a TCP connection, opaque
here: anything with ``sendto(payload, addr)``), and gets back the bytes to send. Queries to
send upstream are queued in ``outbox`` as ``(upstream, tcp, payload)``. The engine never
reads a clock or a socket; random query ids come from bytes the adapter supplies.

Per query: parse (``dnswire.parse_query``), classify the client (bypass / allowed /
refused, cached per address), ``match`` the name, then either build the block answer from
bytes or forward the query with a fresh random id. Per upstream answer: match it to its
query by id, upstream, transport and question; look through its CNAME/DNAME chain for a
blocked name; give the client the answer with its own id back.

``query`` is built as a closure with everything it touches in local cells: it runs for
every packet, and an attribute lookup costs as much as a set probe.
"""

from __future__ import annotations

import ipaddress
import struct
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from blockgate.dnswire import (
    HEADER,
    DnsFormatError,
    Ede,
    QType,
    Rcode,
    Synth,
    answer_targets,
    ede_text,
    error_response,
    local_records,
    opt_record,
    parse_query,
    query_edns,
)
from blockgate.policy import Action, block_text
from blockgate.stats import LATENCY_BUCKETS, A, Stats
from blockgate.trie import Rule, RuleClass

# Client classes, cached per address.
_FILTER, _BYPASS, _REFUSE = 0, 1, 2
# Addresses remembered per worker before the cache starts over (a flood of sources must
# not grow memory without bound).
MAX_CLIENT_CACHE: Final = 65536
# Query ids are 16 bits; past this many queries in flight per worker, new ones get SERVFAIL.
MAX_INFLIGHT: Final = 60000
# EDE texts remembered per worker (one per blocked name seen with EDNS).
MAX_TEXT_CACHE: Final = 16384
# Fields of a pending (forwarded) query, kept as a tuple: one allocation per forward.
_DATA, _QEND, _ADDR, _CHAN, _TCP, _UP, _SENT, _DEADLINE, _TRIED, _VIA, _RESENT = range(11)
# Ids of answered queries that had been sent again: the other copy's answer may follow.
MAX_LATE: Final = 4096
# The common answer header tail: QD=1 AN=0 NS=1 AR=0 (negative answer without OPT).
_NEG_COUNTS: Final = b"\x00\x01\x00\x00\x00\x01\x00\x00"
_ACTION_SLOT: Final = {a: A[a.config_name] for a in Action}
_PLAIN_TYPES: Final = frozenset({QType.A, QType.AAAA})


def _nx_flags(ra: int) -> list[bytes]:
    """Flags and counts of an NXDOMAIN without OPT, by the query's flag byte 2 and CD bit:
    QR, the query's opcode and RD, ``ra``, CD as asked, RCODE 3; QD=1 AN=0 NS=1 AR=0."""
    return [bytes(((b & 0x79) | 0x80, ra | 0x03 | (cd << 4))) + _NEG_COUNTS
            for cd in (0, 1) for b in range(256)]

Delivery = tuple[Any, Any, bytes]  # (channel, addr, payload)


@dataclass(frozen=True, slots=True)
class Upstream:
    host: str
    port: int
    label: str  # "host:port", as configured: the metric label


@dataclass(frozen=True, slots=True)
class DnsSettings:
    upstreams: tuple[Upstream, ...]
    timeout: float
    inspect_cnames: bool
    bypass: tuple[str, ...]
    allow: tuple[str, ...]
    max_inflight: int = MAX_INFLIGHT
    # A UDP query its upstream has not answered after this long is sent to it once more
    # (same id); ``timeout`` still decides the failover. 0 (or not less than ``timeout``):
    # never.
    retransmit: float = 0.0

    @property
    def step(self) -> float:
        """How long an entry waits before ``expire`` looks at it again."""
        return self.retransmit if 0 < self.retransmit < self.timeout else self.timeout


class DnsEngine:
    query: Callable[[bytes, Any, Any, bool, float], bytes | None]

    def __init__(self, classes: list[RuleClass], match: Callable[[bytes], Rule | None],
                 synth: Synth, settings: DnsSettings, stats: Stats,
                 entropy: Callable[[int], bytes]) -> None:
        self.match = match
        self.synth = synth
        self.settings = settings
        self.stats = stats
        self.entropy = entropy
        self.inflight: dict[int, tuple[Any, ...]] = {}
        self.outbox: list[tuple[int, bool, bytes]] = []
        self.current = 0  # the upstream tried first; moves on when one times out
        self._ids: list[int] = []
        self._late: dict[int, None] = {}  # see MAX_LATE
        self._clients: dict[str, int] = {}
        self._texts: dict[bytes, bytes] = {}
        # the NXDOMAIN fast path's prebuilt flags, refilled in place when the upstream's RA changes
        self._nx_flags = _nx_flags(synth.ra)
        # The decision log's share of this worker's blocks (see ``_block``).
        self.log_budget = [0]
        self.block_log: list[tuple[str, bytes, str, Rule]] = []
        self._bypass = [ipaddress.ip_network(n) for n in settings.bypass]
        self._allow = [ipaddress.ip_network(n) for n in settings.allow]
        stats.set_upstreams([u.label for u in settings.upstreams])
        stats.set_classes([(c.source.name, c.source.category or "") for c in classes])
        self.query = self._make_query()

    # -- queries -----------------------------------------------------------------------
    def _make_query(self) -> Callable[[bytes, Any, Any, bool, float], bytes | None]:
        parse, match, clients, classify = parse_query, self.match, self._clients, self._classify
        udp, tcp_counts, blocked = self.stats.dns_udp, self.stats.dns_tcp, self.stats.blocked_dns
        soa, forward, block, malformed = self.synth.soa, self._forward, self._block, self._malformed
        a_fwd, a_nx, a_bypass = A["forward"], A["nxdomain"], A["bypass"]
        refused, new_id, inflight, outbox = self._refused, self._new_id, self.inflight, self.outbox
        nx_flags, log_budget = self._nx_flags, self.log_budget
        step, limit = self.settings.step, self.settings.max_inflight
        nx = Action.NXDOMAIN

        def query(data: bytes, addr: Any, channel: Any, tcp: bool, now: float) -> bytes | None:
            try:
                key, qtype, qend = parse(data)
            except DnsFormatError as exc:
                return malformed(data, exc, tcp)
            counts = tcp_counts if tcp else udp
            cls = clients.get(addr[0])
            if cls is None:
                cls = classify(addr[0])
            if cls == _FILTER:
                rule = match(key)
                if rule is not None:
                    rc = rule.rule_class
                    if not rc.allow:
                        if rc.action is nx and not (data[10] or data[11] or log_budget[0]):
                            # the common block: NXDOMAIN to a query without EDNS
                            counts[a_nx] += 1
                            blocked[rc.index] += 1
                            return (data[:2] + nx_flags[data[2] | ((data[3] & 0x10) << 4)]
                                    + data[HEADER:qend] + soa)
                        resp = block(data, qend, qtype, rule, tcp, counts, addr, key)
                        if resp is not None or rc.action is not Action.TCP_ONLY or not tcp:
                            return resp
                counts[a_fwd] += 1
            elif cls == _BYPASS:
                counts[a_bypass] += 1
            else:
                return refused(data, qend, counts)
            if len(inflight) >= limit:
                return forward(data, qend, addr, channel, tcp, now, self.current, 1)
            qid = new_id()  # the usual forward, written out: it is most of the traffic
            up = self.current
            inflight[qid] = (data, qend, addr, channel, tcp, up, now, now + step, 1, tcp, 0)
            outbox.append((up, tcp, bytes((qid >> 8, qid & 0xFF)) + data[2:]))
            return None

        return query

    def _malformed(self, data: bytes, exc: DnsFormatError, tcp: bool) -> bytes | None:
        reason = exc.reason
        self.stats.malformed["dns", reason] += 1
        if reason in ("short", "qr"):  # no header to answer, or a response: answering a
            return None                # response invites reflection loops (drop, count)
        rcode = Rcode.NOTIMP if reason == "opcode" else Rcode.FORMERR
        (self.stats.dns_tcp if tcp else self.stats.dns_udp)[
            A["notimp" if rcode == Rcode.NOTIMP else "formerr"]] += 1
        return error_response(data, rcode)

    def _refused(self, data: bytes, qend: int, counts: list[int]) -> bytes:
        counts[A["not-allowed"]] += 1
        return self.synth.bare(data, qend, Rcode.REFUSED, self._opt(data, qend, Ede.PROHIBITED))

    def _classify(self, client: str) -> int:
        try:
            ip = ipaddress.ip_address(client.split("%", 1)[0])
        except ValueError:
            cls = _REFUSE
        else:
            if any(ip in net for net in self._bypass):
                cls = _BYPASS
            elif any(ip in net for net in self._allow):
                cls = _FILTER
            else:
                cls = _REFUSE
        if len(self._clients) >= MAX_CLIENT_CACHE:
            self._clients.clear()
        self._clients[client] = cls
        return cls

    def _opt(self, data: bytes, qend: int, ede: int | None, text: bytes = b"") -> bytes:
        """Our OPT record when the query had one (with an EDE), else nothing."""
        try:
            has, do = query_edns(data, qend)
        except DnsFormatError:
            return b""
        return opt_record(do, ede, text) if has else b""

    def _block(self, data: bytes, qend: int, qtype: int, rule: Rule, tcp: bool,
               counts: list[int], addr: Any, key: bytes) -> bytes | None:
        """The block answer for ``rule``; None for a drop, or for tcp-only over TCP.

        While ``log_budget`` is above zero the block is also queued in ``block_log`` as
        ``(client, name, action, rule)`` for the decision log (the adapter drains it and sets
        the budget); with no budget left the common NXDOMAIN never gets here at all.
        """
        rc: RuleClass = rule.rule_class
        action = rc.action or Action.NXDOMAIN
        if action is Action.TCP_ONLY and tcp:
            return None  # RPZ tcp-only: over TCP the name resolves normally (the caller forwards)
        counts[_ACTION_SLOT[action]] += 1
        self.stats.blocked_dns[rc.index] += 1
        if self.log_budget[0]:
            self.log_budget[0] -= 1
            self.block_log.append((addr[0], key, action.config_name, rule))
        if action is Action.DROP:
            return None
        opt = b""
        if data[10] or data[11]:  # ARCOUNT: the query may carry EDNS
            opt = self._opt(data, qend, rc.source.ede or Ede.BLOCKED, self._text(rule))
        synth = self.synth
        if action is Action.NXDOMAIN:
            return synth.negative(data, qend, Rcode.NXDOMAIN, opt)
        if action is Action.NODATA:
            return synth.negative(data, qend, Rcode.NOERROR, opt)
        if action is Action.REFUSED:
            return synth.bare(data, qend, Rcode.REFUSED, opt)
        if action is Action.TCP_ONLY:
            return synth.bare(data, qend, Rcode.NOERROR, opt, tc=True)
        payload = rule.payload  # SINKHOLE: the rule's own records (RPZ local data) if any
        if payload:
            rrs, n = local_records(payload, qtype, synth.ttl)
            return synth.records(data, qend, rrs, n, opt)
        return synth.sinkhole(data, qend, qtype, opt)

    def _text(self, rule: Rule) -> bytes:
        text = self._texts.get(rule.key)
        if text is None:
            if len(self._texts) >= MAX_TEXT_CACHE:
                self._texts.clear()
            text = self._texts[rule.key] = ede_text(block_text(rule.source, rule.record_id,
                                                               rule.decision))
        return text

    # -- forwarding --------------------------------------------------------------------
    def _new_id(self) -> int:
        ids = self._ids
        inflight, late = self.inflight, self._late
        while True:
            if not ids:
                raw = self.entropy(4096)
                ids.extend(struct.unpack(f"!{len(raw) // 2}H", raw[: len(raw) // 2 * 2]))
            qid = ids.pop()
            # not an id whose second answer may still come (it would not match this question)
            if qid not in inflight and qid not in late:
                return qid

    def _forward(self, data: bytes, qend: int, addr: Any, channel: Any, tcp: bool, now: float,
                 upstream: int, tried: int, via_tcp: bool | None = None) -> bytes | None:
        """Queue the query for ``upstream`` under a fresh id; None, or SERVFAIL when full.

        ``tcp`` is the client's transport; ``via_tcp`` the upstream's (TCP clients are
        forwarded over TCP; a truncated UDP answer is asked again over TCP).
        """
        via = tcp if via_tcp is None else via_tcp
        inflight = self.inflight
        if len(inflight) >= self.settings.max_inflight:
            self.stats.upstream_errors["*", "inflight-full"] += 1
            (self.stats.dns_tcp if tcp else self.stats.dns_udp)[A["servfail"]] += 1
            return self.synth.bare(data, qend, Rcode.SERVFAIL,
                                   self._opt(data, qend, Ede.OTHER, b"forwarding table full"))
        qid = self._new_id()
        inflight[qid] = (data, qend, addr, channel, tcp, upstream, now,
                         now + self.settings.step, tried, via, 0)
        self.outbox.append((upstream, via, bytes((qid >> 8, qid & 0xFF)) + data[2:]))
        return None

    def answer(self, data: bytes, upstream: int, now: float, via_tcp: bool = False) -> Delivery | None:
        """An upstream's answer: where to send what, or None (dropped and counted)."""
        qid = (data[0] << 8) | data[1] if len(data) >= HEADER else -1
        p = self.inflight.get(qid)
        if p is None and self._late.pop(qid, 0) is None:
            return None  # the second answer to a query that was sent again: expected, dropped
        if p is None or p[_UP] != upstream or p[_VIA] != via_tcp:
            self.stats.upstream_errors[self.settings.upstreams[upstream].label,
                                      "malformed" if len(data) < HEADER else "unexpected-id"] += 1
            return None
        # Typed: the compiled build then slices and compares natively (``p`` holds Any).
        query: bytes = p[_DATA]
        qend: int = p[_QEND]
        sent: float = p[_SENT]
        # The answer repeats the question: same bytes (or the same name in another case).
        if data[HEADER:qend] != query[HEADER:qend] and (
                data[HEADER:qend].lower() != query[HEADER:qend].lower() or data[4:6] != b"\x00\x01"):
            self.stats.upstream_errors[self.settings.upstreams[upstream].label, "wrong-question"] += 1
            return None
        del self.inflight[qid]
        if p[_RESENT]:
            late = self._late
            if len(late) >= MAX_LATE:
                del late[next(iter(late))]
            late[qid] = None
        stats = self.stats
        stats.upstream_latency[upstream][bisect_left(LATENCY_BUCKETS, now - sent)] += 1
        stats.upstream_latency_sum[upstream] += now - sent
        self.current = upstream
        if data[3] & 0x80 != self.synth.ra:  # our own answers set RA as the upstream does
            self.synth.ra = data[3] & 0x80
            self._nx_flags[:] = _nx_flags(self.synth.ra)
        rcode = data[3] & 0x0F
        stats.upstream_rcodes[upstream][rcode] += 1
        if data[2] & 0x02 and not via_tcp:  # TC=1 over UDP: ask the same upstream over TCP
            return self._deliver_or_none(p, self._forward(
                query, qend, p[_ADDR], p[_CHAN], p[_TCP], now, upstream, p[_TRIED], True))
        if rcode == 0 and (data[6] or data[7]) and self.settings.inspect_cnames and not (
                # the usual answer: one A/AAAA record whose owner points at the question
                data[7] == 1 and data[6] == 0 and len(data) > qend + 3 and data[qend] == 0xC0
                and data[qend + 2] == 0 and data[qend + 3] in _PLAIN_TYPES):
            blocked, delivery = self._cname_block(data, qend, p, self.settings.upstreams[upstream].label)
            if blocked:
                return delivery
        if via_tcp and not p[_TCP] and len(data) > udp_limit(query, qend):
            # the full answer (asked over TCP) does not fit the UDP client: TC=1, it retries
            return p[_CHAN], p[_ADDR], self.synth.bare(query, qend, rcode, b"", tc=True)
        return p[_CHAN], p[_ADDR], query[:2] + data[2:]

    @staticmethod
    def _deliver_or_none(p: tuple[Any, ...], resp: bytes | None) -> Delivery | None:
        return None if resp is None else (p[_CHAN], p[_ADDR], resp)

    def _cname_block(self, data: bytes, qend: int, p: tuple[Any, ...],
                     label: str) -> tuple[bool, Delivery | None]:
        """``(True, answer)`` when the answer's CNAME/DNAME chain reaches a blocked name (the
        answer is None for a drop), ``(False, None)`` when the upstream's answer stands."""
        query, q_end = p[_DATA], p[_QEND]
        try:
            targets = answer_targets(data, qend)
        except DnsFormatError as exc:
            self.stats.upstream_errors[label, "malformed"] += 1
            self.stats.malformed["dns-answer", exc.reason] += 1
            return True, (p[_CHAN], p[_ADDR], self.synth.bare(query, q_end, Rcode.SERVFAIL, self._opt(
                query, q_end, Ede.OTHER, b"malformed upstream answer")))
        for target in targets:
            rule = self.match(target)
            if rule is None or rule.rule_class.allow:
                continue
            action = rule.rule_class.action or Action.NXDOMAIN
            if action is Action.TCP_ONLY and p[_TCP]:
                return False, None  # tcp-only: over TCP the chain resolves as it is
            counts = self.stats.dns_tcp if p[_TCP] else self.stats.dns_udp
            counts[A["forward"]] -= 1  # it was counted as forwarded; it is a block now
            qtype = (query[q_end - 4] << 8) | query[q_end - 3]
            resp = self._block(query, q_end, qtype, rule, p[_TCP], counts, p[_ADDR], parse_query(query)[0])
            return True, (None if resp is None else (p[_CHAN], p[_ADDR], resp))
        return False, None

    def _give_up(self, p: tuple[Any, ...], ede: int, text: bytes) -> Delivery:
        (self.stats.dns_tcp if p[_TCP] else self.stats.dns_udp)[A["servfail"]] += 1
        query, q_end = p[_DATA], p[_QEND]
        return p[_CHAN], p[_ADDR], self.synth.bare(query, q_end, Rcode.SERVFAIL,
                                                   self._opt(query, q_end, ede, text))

    def _retry(self, p: tuple[Any, ...], now: float, ede: int, text: bytes) -> Delivery | None:
        """The next upstream for a query that got no answer, or SERVFAIL after all of them."""
        n = len(self.settings.upstreams)
        if p[_UP] == self.current:
            self.current = (p[_UP] + 1) % n
        if p[_TRIED] < n:
            return self._deliver_or_none(p, self._forward(
                p[_DATA], p[_QEND], p[_ADDR], p[_CHAN], p[_TCP], now, (p[_UP] + 1) % n,
                p[_TRIED] + 1))
        return self._give_up(p, ede, text)

    def expire(self, now: float) -> list[Delivery]:
        """Queries whose upstream did not answer in time: the next upstream, or SERVFAIL.

        Every entry waits ``settings.step`` between looks, so the table stays in deadline
        order and the scan stops at the first entry not yet due. Before ``timeout`` a UDP
        query is sent to the same upstream once more (a datagram either way may have been
        lost); at ``timeout`` it fails over.
        """
        late = []
        inflight = self.inflight
        for qid, p in inflight.items():
            if p[_DEADLINE] > now:
                break  # entries are in deadline order: each waits the same step
            late.append(qid)
        out: list[Delivery] = []
        ups = self.settings.upstreams
        timeout, step = self.settings.timeout, self.settings.step
        for qid in late:
            p = inflight.pop(qid)
            if now - p[_SENT] < timeout - 1e-6:
                resent = p[_RESENT]
                if not p[_VIA] and not resent:  # once: an upstream that is down or overloaded
                    # gets at most twice its queries, never a retry storm
                    self.outbox.append((p[_UP], False, bytes((qid >> 8, qid & 0xFF)) + p[_DATA][2:]))
                    self.stats.upstream_errors[ups[p[_UP]].label, "retransmit"] += 1
                    resent = 1
                inflight[qid] = (*p[:_DEADLINE], now + step, p[_TRIED], p[_VIA], resent)
                continue
            self.stats.upstream_errors[ups[p[_UP]].label, "timeout"] += 1
            got = self._retry(p, now, Ede.NO_REACHABLE_AUTHORITY, b"no upstream answered")
            if got is not None:
                out.append(got)
        return out

    def upstream_failed(self, upstream: int, now: float, reason: str) -> list[Delivery]:
        """An upstream refused us (ICMP port unreachable): its queries fail over now."""
        self.stats.upstream_errors[self.settings.upstreams[upstream].label, reason] += 1
        out: list[Delivery] = []
        for qid in [q for q, p in self.inflight.items() if p[_UP] == upstream and not p[_VIA]]:
            got = self._retry(self.inflight.pop(qid), now, Ede.NETWORK_ERROR, b"upstream unreachable")
            if got is not None:
                out.append(got)
        return out


def udp_limit(query: bytes, qend: int) -> int:
    """The largest UDP answer the client can take: its EDNS payload size, else 512."""
    if (query[10] or query[11]) and len(query) >= qend + 5 and query[qend] == 0 \
            and query[qend + 1] == 0 and query[qend + 2] == QType.OPT:
        return max(512, (query[qend + 3] << 8) | query[qend + 4])
    return 512


def make_settings(dns: Any, parse_addr: Callable[[str], tuple[str, int]]) -> DnsSettings:
    """Settings from the config's ``dns`` section (``parse_addr`` from config)."""
    ups = tuple(Upstream(*parse_addr(u), u) for u in dns["upstreams"])
    return DnsSettings(ups, float(dns["timeout"]), bool(dns["inspect_cnames"]),
                       tuple(dns["bypass_clients"]), tuple(dns["allow_clients"]),
                       min(int(dns["max_inflight"]), MAX_INFLIGHT), float(dns["retransmit"]))


def make_synth(dns: Any) -> Synth:
    return Synth(int(dns["block_ttl"]), str(dns["soa_mname"]), str(dns["soa_rname"]),
                 tuple(dns["sinkhole_a"]), tuple(dns["sinkhole_aaaa"]))
