"""DNS over UDP and TCP for one worker: sockets in, ``DnsEngine`` decisions out.

The event loop is asyncio's, on a selector of our own (``HotSelector``): the UDP sockets
(clients and upstreams) are served inside its ``select()``: a readable socket is read once
when traffic is light and drained in a tight ``recvfrom`` loop (up to ``BATCH`` packets per
wake-up) when it is busy (``BURST_GAP``), each query answered with ``sendto`` on the spot,
without asyncio's callback machinery. TCP (RFC 7766: length-prefixed,
pipelined, idle timeout, connection limit), the upstream TCP connections, the timers and the
supervisor's channel are asyncio's as usual: they are the rare path. The module is compiled
(``setup.py``), as the packets' path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import select
import selectors
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, Final

from blockgate.decisions import DecisionLog
from blockgate.engine import Delivery, DnsEngine

log = logging.getLogger("blockgate.dns")
decision_log = logging.getLogger("blockgate.decisions")

# Packets taken from one socket per wake-up: enough to amortise the loop, few enough that
# other sockets (upstream answers) are not starved.
BATCH: Final = 256
# A socket is drained (up to BATCH) only when it was last ready less than this long ago: at
# a moderate rate each wake-up finds one datagram, and the read after it, which finds none,
# costs a system call and a BlockingIOError (~2 µs, twice per forwarded query). epoll is
# level-triggered, so what a single read leaves is reported again at once, and that second
# wake-up, this soon after the first, turns draining on.
BURST_GAP: Final = 0.0001
# Largest query we read over UDP: a query is a question and an OPT record.
MAX_QUERY: Final = 4096
# Largest answer we read from an upstream (RFC 6891 allows up to 65535 bytes with EDNS).
MAX_UDP: Final = 65535
# How often queries without an upstream answer are checked for their timeout.
EXPIRE_EVERY: Final = 0.05
# Internal errors are logged at most this often (they are always counted).
LOG_EVERY: Final = 10.0
# Receive buffer of every UDP socket (clients and upstreams): ~4,000 queries, 200 ms at
# 20,000 QPS, so a worker that loses its CPU for a moment (a rule-set swap on the same core,
# a noisy host) finds the queries queued, not dropped; the default (net.core.rmem_default,
# 208 KiB) overflowed in 14 ms in bench/reload.py. Unbound's so-rcvbuf advice is 4m too.
# Without CAP_NET_ADMIN the kernel caps it at net.core.rmem_max.
UDP_RCVBUF: Final = 4 << 20
SO_RCVBUFFORCE: Final[int] = getattr(socket, "SO_RCVBUFFORCE", 33)  # socket(7), Linux
# A draining worker waits for its last upstream answers at most the failover time plus this.
DRAIN_SLACK: Final = 0.5
# The engine may queue a decision-log line for this share of a second's worth of blocks at
# a time (the rest are only counted); the budget is renewed, and the blocks left out are
# accounted, this often.
DECISIONS_EVERY: Final = 0.25
# Queued lines written per wake-up of the loop, after its answers are sent. Written a quarter
# second's worth at a time (25 at the default rate), lines of ~15-30 µs each in the worker
# (JSON, the clock, the log write) stalled the loop for ~1 ms four times a second, which set
# the 99th percentile of the latency at 5,000 QPS. A few per wake-up spread that over
# traffic (and ``DecisionLog`` now builds a line in a few µs).
LINES_PER_WAKE: Final = 4


# -- the event loop's selector ------------------------------------------------------------
_READ = select.EPOLLIN
_WRITE = select.EPOLLOUT


def _fd(fileobj: Any) -> int:
    if isinstance(fileobj, int):
        fd = fileobj
    else:
        try:
            fd = int(fileobj.fileno())
        except (AttributeError, TypeError, ValueError):
            raise ValueError(f"invalid file object: {fileobj!r}") from None
    if fd < 0:
        raise ValueError(f"invalid file descriptor: {fd}")
    return fd


class _Map(Mapping[Any, selectors.SelectorKey]):
    def __init__(self, keys: dict[int, selectors.SelectorKey]) -> None:
        self._keys = keys

    def __len__(self) -> int:
        return len(self._keys)

    def __getitem__(self, fileobj: Any) -> selectors.SelectorKey:
        try:
            return self._keys[_fd(fileobj)]
        except (KeyError, ValueError):
            raise KeyError(f"{fileobj!r} is not registered") from None

    def __iter__(self) -> Any:
        return iter(self._keys)


class HotSelector(selectors.BaseSelector):
    """The epoll selector for asyncio that serves the UDP sockets itself.

    asyncio turns every readable socket into a callback: a selector key, a handle in the ready
    queue, ``Handle._run`` through a context, then another turn of ``_run_once`` for the timers.
    At a few thousand queries a second, one query per wake-up, that machinery cost about as much
    as the query itself. ``HotSelector`` is the selector asyncio's loop runs on; the sockets given
    to ``add_hot`` are registered with the same epoll set but never reach the loop: their handler
    runs inside ``select()`` as soon as epoll reports them, and ``select()`` polls again for as
    long as the loop has nothing else to do (its timeout, which is when its next timer is due).
    Everything else (TCP streams, timers, signals, the supervisor's channel) is asyncio's as
    usual. A handler that hands work to the loop (a task, a callback) calls ``wake()``, so that
    ``select()`` returns and the loop runs it.

    Only the public ``select.epoll`` and ``selectors`` interfaces are used.
    """

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._keys: dict[int, selectors.SelectorKey] = {}
        self._map = _Map(self._keys)
        self._hot: dict[int, Callable[[], None]] = {}
        self._woken = False

    # -- the hot sockets -----------------------------------------------------------------
    def add_hot(self, fileobj: Any, handler: Callable[[], None]) -> None:
        """Call ``handler()`` whenever ``fileobj`` is readable, inside ``select()``."""
        fd = _fd(fileobj)
        if fd in self._keys or fd in self._hot:
            raise KeyError(f"{fileobj!r} is already registered")
        self._epoll.register(fd, _READ)
        self._hot[fd] = handler

    def remove_hot(self, fileobj: Any) -> bool:
        fd = _fd(fileobj)
        if self._hot.pop(fd, None) is None:
            return False
        with contextlib.suppress(OSError):  # closed already: the kernel dropped it
            self._epoll.unregister(fd)
        return True

    def wake(self) -> None:
        """A handler gave the loop work: ``select()`` returns after this round."""
        self._woken = True

    # -- selectors.BaseSelector ----------------------------------------------------------
    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        if not events or events & ~(selectors.EVENT_READ | selectors.EVENT_WRITE):
            raise ValueError(f"invalid events: {events!r}")
        fd = _fd(fileobj)
        if fd in self._keys or fd in self._hot:
            raise KeyError(f"{fileobj!r} (FD {fd}) is already registered")
        key = selectors.SelectorKey(fileobj, fd, events, data)
        self._epoll.register(fd, self._mask(events))
        self._keys[fd] = key
        self._woken = True
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        try:
            key = self._keys.pop(_fd(fileobj))
        except (KeyError, ValueError):
            raise KeyError(f"{fileobj!r} is not registered") from None
        with contextlib.suppress(OSError):
            self._epoll.unregister(key.fd)
        self._woken = True
        return key

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        try:
            key = self._keys[_fd(fileobj)]
        except (KeyError, ValueError):
            raise KeyError(f"{fileobj!r} is not registered") from None
        if events != key.events:
            self._epoll.modify(key.fd, self._mask(events))
        if events != key.events or data != key.data:
            key = key._replace(events=events, data=data)
            self._keys[key.fd] = key
        self._woken = True
        return key

    @staticmethod
    def _mask(events: int) -> int:
        return ((_READ if events & selectors.EVENT_READ else 0)
                | (_WRITE if events & selectors.EVENT_WRITE else 0))

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        poll, hot, keys = self._epoll.poll, self._hot, self._keys
        ready: list[tuple[selectors.SelectorKey, int]] = []
        wait = timeout
        while True:
            if wait is None:
                ms = -1.0
            elif wait <= 0:
                ms = 0.0
            else:  # epoll's resolution is 1 ms: wait at least the timeout
                ms = math.ceil(wait * 1e3) * 1e-3
            self._woken = False
            try:
                events = poll(ms, max(len(keys) + len(hot), 1))
            except InterruptedError:
                return ready
            for fd, ev in events:
                handler = hot.get(fd)
                if handler is not None:
                    try:
                        handler()
                    except Exception:  # as the loop would for a callback: logged, not fatal
                        log.exception("UDP handler for FD %d failed", fd)
                    continue
                key = keys.get(fd)
                if key is not None:
                    mask = ((selectors.EVENT_WRITE if ev & ~_READ else 0)
                            | (selectors.EVENT_READ if ev & ~_WRITE else 0))
                    ready.append((key, mask & key.events))
            if ready or self._woken or not events:
                return ready  # the loop's turn: its events, its timers, or its new work
            if deadline is not None:
                wait = deadline - time.monotonic()
                if wait <= 0:
                    return ready

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._map

    def close(self) -> None:
        self._keys.clear()
        self._hot.clear()
        self._epoll.close()


def new_loop() -> tuple[asyncio.AbstractEventLoop, HotSelector]:
    """An asyncio loop on a ``HotSelector``, for ``DnsServer.serve(..., hot=)``."""
    selector = HotSelector()
    return asyncio.SelectorEventLoop(selector), selector


def receive_buffer(s: socket.socket, size: int = UDP_RCVBUF) -> None:
    try:
        s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)  # beyond rmem_max: root only
    except OSError:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def bind_udp(host: str, port: int) -> socket.socket:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    receive_buffer(s)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((host, port))
    s.setblocking(False)
    return s


def bind_tcp(host: str, port: int, backlog: int = 1024) -> socket.socket:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((host, port))
    s.listen(backlog)
    s.setblocking(False)
    return s


def upstream_udp(host: str, port: int) -> socket.socket:
    """A connected UDP socket: the kernel drops datagrams from any other address."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    receive_buffer(s)
    s.connect((host, port))
    s.setblocking(False)
    return s


class TcpClient:
    """One client TCP connection; answers may be written in any order (RFC 7766 §6.2.1.1)."""

    __slots__ = ("closed", "pending", "writer")

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.pending = 0
        self.closed = False

    def sendto(self, payload: bytes, _addr: Any) -> None:
        """The engine answers every client with ``channel.sendto(payload, addr)``."""
        self.pending = max(0, self.pending - 1)
        if not self.closed:
            self.writer.write(len(payload).to_bytes(2, "big") + payload)


class UpstreamTcp:
    """A persistent, pipelined TCP connection to one upstream, opened when first needed."""

    def __init__(self, server: DnsServer, index: int, host: str, port: int) -> None:
        self.server = server
        self.index = index
        self.host = host
        self.port = port
        self.writer: asyncio.StreamWriter | None = None
        self.queue: list[bytes] = []
        self.task: asyncio.Task[None] | None = None

    def send(self, payload: bytes) -> None:
        frame = len(payload).to_bytes(2, "big") + payload
        if self.writer is not None and not self.writer.is_closing():
            self.writer.write(frame)
            return
        self.queue.append(frame)
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run())
            self.server.wake()

    async def _run(self) -> None:
        engine = self.server.engine
        label = engine.settings.upstreams[self.index].label
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), engine.settings.timeout)
        except (TimeoutError, OSError) as exc:
            engine.stats.upstream_errors[label, "tcp-connect"] += 1
            log.debug("upstream %s over TCP: %s", label, exc)
            self.queue.clear()  # their queries fail over when they time out
            return
        self.writer = writer
        for frame in self.queue:
            writer.write(frame)
        self.queue.clear()
        try:
            while True:
                size = int.from_bytes(await reader.readexactly(2), "big")
                data = await reader.readexactly(size)
                got = engine.answer(data, self.index, time.monotonic(), via_tcp=True)
                if got is not None:
                    self.server.deliver(got)
                self.server.flush()
        except (asyncio.IncompleteReadError, OSError):
            pass
        finally:
            self.writer = None
            writer.close()


class DnsServer:
    def __init__(self, engine: DnsEngine, listen: Sequence[tuple[str, int]],
                 tcp_idle: float, tcp_max: int, decisions: DecisionLog | None = None) -> None:
        self.engine = engine
        self.decisions = decisions if decisions is not None and not decisions.off else None
        self.listen = listen
        self.tcp_idle = tcp_idle
        self.tcp_max = tcp_max
        self.tcp_clients = 0
        self.udp: list[socket.socket] = []
        self.tcp: list[socket.socket] = []
        self.usocks: list[socket.socket] = []
        self.utcp: list[UpstreamTcp] = []
        self._last_log = 0.0
        self._client_ready = 0.0  # when a client / an upstream socket was last ready
        self._upstream_was_ready = 0.0
        self._blocks_seen = 0  # blocks counted, and lines queued, when last accounted
        self._queued_seen = 0
        self._lines_taken = 0  # lines taken from the engine's queue, ever
        self.hot: HotSelector | None = None

    # -- setup ---------------------------------------------------------------------------
    def bind(self) -> None:
        """Bind every listen address (UDP and TCP) and connect the upstream sockets."""
        udp, tcp = [], []
        for host, port in self.listen:
            udp.append(bind_udp(host, port))
            tcp.append(bind_tcp(host, port))
        self.adopt(udp, tcp)

    def adopt(self, udp: Sequence[socket.socket], tcp: Sequence[socket.socket]) -> None:
        """Serve client sockets bound elsewhere (by the supervisor, which keeps them open
        across worker generations); connect the upstream sockets."""
        self.udp, self.tcp = list(udp), list(tcp)
        for i, up in enumerate(self.engine.settings.upstreams):
            self.usocks.append(upstream_udp(up.host, up.port))
            self.utcp.append(UpstreamTcp(self, i, up.host, up.port))

    async def serve(self, stop: asyncio.Event, drain: asyncio.Event | None = None,
                    ready: Callable[[], None] | None = None, hot: HotSelector | None = None) -> None:
        """Serve until ``stop``; or, once ``drain`` is set, stop taking client queries, finish
        those sent upstream, and return. ``ready`` is called once every socket is read.
        ``hot``: the running loop's selector, when it is a ``HotSelector`` (``new_loop``): the
        UDP sockets are then served inside it."""
        loop = asyncio.get_running_loop()
        self.hot = hot
        for s in self.udp:
            self._read(s, partial(self._udp_ready, s))
        for i, u in enumerate(self.usocks):
            self._read(u, partial(self._upstream_ready, i, u))
        servers = [await asyncio.start_server(self._tcp_client, sock=s) for s in self.tcp]
        expiry = loop.create_task(self._expire_loop())
        logger = None if self.decisions is None else loop.create_task(self._decisions_loop(self.decisions))
        if ready is not None:
            ready()
        try:
            waits = [loop.create_task(e.wait()) for e in (stop, drain) if e is not None]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()
            if not stop.is_set():
                await self._drain(servers, stop)
        finally:
            expiry.cancel()
            if logger is not None:
                logger.cancel()
                self._write_decisions()
            for s in self.udp + self.usocks:
                if s.fileno() >= 0:
                    self._unread(s)
                    s.close()
            for srv in servers:
                srv.close()
            for up in self.utcp:
                if up.writer is not None:
                    up.writer.close()

    def _read(self, sock: socket.socket, handler: Callable[[], None]) -> None:
        if self.hot is not None:
            self.hot.add_hot(sock.fileno(), handler)
        else:
            asyncio.get_running_loop().add_reader(sock.fileno(), handler)

    def _unread(self, sock: socket.socket) -> None:
        if self.hot is None or not self.hot.remove_hot(sock.fileno()):
            asyncio.get_running_loop().remove_reader(sock.fileno())

    def wake(self) -> None:
        """Work was given to the loop from a UDP handler: let it run."""
        if self.hot is not None:
            self.hot.wake()

    async def _decisions_loop(self, dl: DecisionLog) -> None:
        """Renew the engine's budget for queued blocks, write what is still queued, and tell
        the log how many blocks were left out (the next line written says so)."""
        self.engine.log_budget[0] = max(1, int(dl.rate * DECISIONS_EVERY))
        while True:
            await asyncio.sleep(DECISIONS_EVERY)
            try:
                self._write_decisions()
                self._account_decisions(dl)
            except Exception as exc:  # a bug must not stop the worker: counted, logged
                self._internal(exc)

    def _account_decisions(self, dl: DecisionLog) -> None:
        engine = self.engine
        blocks = sum(engine.stats.blocked_dns)
        queued = self._lines_taken + len(engine.block_log)
        dl.suppressed += max(0, (blocks - self._blocks_seen) - (queued - self._queued_seen))
        self._blocks_seen, self._queued_seen = blocks, queued
        engine.log_budget[0] = max(1, int(dl.rate * DECISIONS_EVERY))

    def _write_decisions(self, most: int = 0) -> None:
        """Write up to ``most`` (0: every) queued block as decision-log lines, oldest first,
        in one write."""
        dl, queue = self.decisions, self.engine.block_log
        if dl is None or not queue:
            return
        events = queue[:most] if most else queue[:]
        del queue[:len(events)]
        self._lines_taken += len(events)
        now = time.time()
        lines = []
        for client, name, action, rule in events:
            line = dl.record(now, client, "dns", name, action, rule)
            if line is not None:
                lines.append(line)
        if lines:
            decision_log.info("\n".join(lines))

    async def _drain(self, servers: list[asyncio.Server], stop: asyncio.Event) -> None:
        """Leave the client sockets to the next worker: what is queued in them stays there
        for it. Queries already sent upstream are answered (or fail over and time out)
        within ``timeout`` per upstream."""
        for s in self.udp:
            self._unread(s)
        for srv in servers:
            srv.close()  # this process's handle only: the supervisor's stays open
        settings = self.engine.settings
        deadline = time.monotonic() + settings.timeout * max(1, len(settings.upstreams)) + DRAIN_SLACK
        while (self.engine.inflight or self.engine.outbox) and not stop.is_set() \
                and time.monotonic() < deadline:
            await asyncio.sleep(EXPIRE_EVERY / 5)

    # -- UDP -----------------------------------------------------------------------------
    def _udp_ready(self, sock: socket.socket) -> None:
        query = self.engine.query
        outbox = self.engine.outbox
        usocks = self.usocks
        recvfrom, sendto = sock.recvfrom, sock.sendto
        now = time.monotonic()
        burst = now - self._client_ready < BURST_GAP
        self._client_ready = now
        for _ in range(BATCH if burst else 1):
            try:
                data, addr = recvfrom(MAX_QUERY)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._internal(exc)
                break
            try:
                resp = query(data, addr, sock, False, now)
                if resp is not None:
                    sendto(resp, addr)
                elif outbox:
                    up, via, payload = outbox.pop()  # one query at most: sent right here
                    if via or outbox:
                        outbox.append((up, via, payload))
                        self.flush()
                    else:
                        usocks[up].send(payload)
            except OSError as exc:  # a full socket buffer: this packet is lost, counted
                self.engine.stats.upstream_errors["*", f"send-{exc.errno}"] += 1
            except Exception as exc:  # a bug must not stop the worker: counted, logged
                outbox.clear()
                self._internal(exc)
        if self.engine.block_log:
            self._write_some()

    def _write_some(self) -> None:
        try:
            self._write_decisions(LINES_PER_WAKE)
        except Exception as exc:  # a bug must not stop the worker: counted, logged
            self._internal(exc)

    def flush(self) -> None:
        """Send the queries the engine queued for its upstreams."""
        outbox = self.engine.outbox
        usocks = self.usocks
        for up, tcp, payload in outbox:
            try:
                if tcp:
                    self.utcp[up].send(payload)
                else:
                    usocks[up].send(payload)
            except OSError as exc:  # they fail over when they time out
                self.engine.stats.upstream_errors[self.engine.settings.upstreams[up].label,
                                                  f"send-{exc.errno}"] += 1
        outbox.clear()

    def _upstream_ready(self, index: int, sock: socket.socket) -> None:
        answer = self.engine.answer
        recv = sock.recv
        now = time.monotonic()
        burst = now - self._upstream_was_ready < BURST_GAP
        self._upstream_was_ready = now
        for _ in range(BATCH if burst else 1):
            try:
                data = recv(MAX_UDP)
            except (BlockingIOError, InterruptedError):
                break
            except ConnectionRefusedError:  # ICMP port unreachable: fail over at once
                for failed in self.engine.upstream_failed(index, now, "refused"):
                    self.deliver(failed)
                continue
            except OSError as exc:
                self._internal(exc)
                break
            try:
                got = answer(data, index, now)
                if got is not None:
                    got[0].sendto(got[2], got[1])
            except Exception as exc:  # a bug must not stop the worker: counted, logged
                self._internal(exc)
        if self.engine.outbox:
            self.flush()
        if self.engine.block_log:  # CNAME inspection blocks
            self._write_some()

    def deliver(self, got: Delivery) -> None:
        channel, addr, payload = got
        try:
            channel.sendto(payload, addr)
        except OSError as exc:
            self.engine.stats.upstream_errors["*", f"send-{exc.errno}"] += 1

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(EXPIRE_EVERY)
            try:
                for got in self.engine.expire(time.monotonic()):
                    self.deliver(got)
                self.flush()
            except Exception as exc:  # a bug must not stop the worker: counted, logged
                self._internal(exc)

    # -- TCP -----------------------------------------------------------------------------
    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.tcp_clients >= self.tcp_max:
            self.engine.stats.upstream_errors["*", "tcp-client-limit"] += 1
            writer.close()
            return
        self.tcp_clients += 1
        conn = TcpClient(writer)
        peer: Any = writer.get_extra_info("peername") or ("", 0)
        try:
            while True:
                try:
                    head = await asyncio.wait_for(reader.readexactly(2), self.tcp_idle)
                except TimeoutError:
                    if conn.pending:  # answers still on their way: keep the connection
                        continue
                    break
                size = int.from_bytes(head, "big")
                data = await asyncio.wait_for(reader.readexactly(size), self.tcp_idle)
                self._tcp_query(data, conn, peer)
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, OSError):
            pass
        finally:
            self.tcp_clients -= 1
            conn.closed = True
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()

    def _tcp_query(self, data: bytes, conn: TcpClient, peer: Any) -> None:
        try:
            resp = self.engine.query(data, peer, conn, True, time.monotonic())
        except Exception as exc:  # a bug must not stop the worker: counted, logged
            self.engine.outbox.clear()
            self._internal(exc)
            return
        if resp is not None:
            conn.pending += 1  # sendto() counts it down
            conn.sendto(resp, peer)
        elif self.engine.outbox:
            conn.pending += 1
            self.flush()
        if self.engine.block_log:
            self._write_some()

    # -- errors --------------------------------------------------------------------------
    def _internal(self, exc: BaseException) -> None:
        self.engine.stats.internal_errors += 1
        now = time.monotonic()
        if now - self._last_log >= LOG_EVERY:
            self._last_log = now
            log.error("internal error (counted; further ones logged every %.0f s): %r",
                      LOG_EVERY, exc, exc_info=exc)


def entropy(n: int) -> bytes:
    return os.urandom(n)
