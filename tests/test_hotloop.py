"""The worker's event loop: asyncio on ``HotSelector``, UDP sockets served inside select().

Real sockets on loopback, a real asyncio loop: the hot handlers see every datagram, and the
loop's own work (timers, readers, TCP streams, tasks a handler creates) still runs.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from blockgate.adapters.dns_server import HotSelector, new_loop


def udp_pair() -> tuple[socket.socket, socket.socket]:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.connect(rx.getsockname())
    return rx, tx


def run(body: Callable[[asyncio.AbstractEventLoop, HotSelector], Coroutine[Any, Any, None]]) -> None:
    loop, selector = new_loop()
    with asyncio.Runner(loop_factory=lambda: loop) as runner:
        runner.run(body(loop, selector))


def drain(sock: socket.socket, into: list[bytes]) -> None:
    while True:
        try:
            into.append(sock.recv(2048))
        except BlockingIOError:
            return


def test_hot_handler_gets_every_datagram_while_timers_and_readers_run() -> None:
    got: list[bytes] = []
    other: list[bytes] = []
    ticks: list[float] = []

    async def body(loop: asyncio.AbstractEventLoop, hot: HotSelector) -> None:
        rx, tx = udp_pair()
        rx2, tx2 = udp_pair()
        hot.add_hot(rx.fileno(), lambda: drain(rx, got))
        loop.add_reader(rx2.fileno(), drain, rx2, other)  # asyncio's own reader, same epoll set

        def tick() -> None:
            ticks.append(time.monotonic())
            if len(ticks) < 5:
                loop.call_later(0.01, tick)

        loop.call_later(0.01, tick)
        for i in range(2000):  # a steady stream: select() keeps polling inside
            tx.send(b"q%d" % i)
            if i % 400 == 0:
                tx2.send(b"other%d" % i)
            if i % 50 == 0:
                await asyncio.sleep(0.001)
        for _ in range(200):
            if len(got) == 2000 and len(other) == 5 and len(ticks) == 5:
                break
            await asyncio.sleep(0.01)
        assert hot.remove_hot(rx.fileno()) and not hot.remove_hot(rx.fileno())
        loop.remove_reader(rx2.fileno())
        for s in (rx, tx, rx2, tx2):
            s.close()

    run(body)
    assert got == [b"q%d" % i for i in range(2000)]
    assert other == [b"other%d" % i for i in range(0, 2000, 400)]
    assert len(ticks) == 5  # the loop's timers fired while the hot socket was busy


def test_tcp_streams_work_on_the_hot_loop() -> None:
    async def body(loop: asyncio.AbstractEventLoop, hot: HotSelector) -> None:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(await reader.readexactly(70000))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        payload = (bytes(range(256)) * 274)[:70000]  # more than one socket buffer's worth
        writer.write(payload)
        assert await asyncio.wait_for(reader.readexactly(len(payload)), 5.0) == payload
        writer.close()
        server.close()
        await server.wait_closed()

    run(body)


def test_a_failing_handler_is_logged_and_the_next_datagram_served(caplog: pytest.LogCaptureFixture) -> None:
    got: list[bytes] = []

    async def body(loop: asyncio.AbstractEventLoop, hot: HotSelector) -> None:
        rx, tx = udp_pair()

        def handler() -> None:
            data = rx.recv(2048)
            if data == b"boom":
                raise RuntimeError("handler bug")
            got.append(data)

        hot.add_hot(rx, handler)
        tx.send(b"boom")
        await asyncio.sleep(0.05)
        tx.send(b"after")
        for _ in range(100):
            if got:
                break
            await asyncio.sleep(0.01)
        hot.remove_hot(rx)
        rx.close()
        tx.close()

    with caplog.at_level(logging.ERROR, logger="blockgate.dns"):
        run(body)
    assert got == [b"after"]
    assert any("handler bug" in (r.exc_text or "") or r.exc_info for r in caplog.records)


def test_work_a_handler_gives_the_loop_runs_at_once_after_wake() -> None:
    """A task created from a hot handler (the upstream TCP connection) must not wait for the
    loop's next timer (here 5 s away): ``wake()`` makes select() return."""

    async def body(loop: asyncio.AbstractEventLoop, hot: HotSelector) -> None:
        rx, tx = udp_pair()
        fut: asyncio.Future[float] = loop.create_future()

        async def job() -> None:
            fut.set_result(time.monotonic())

        def handler() -> None:
            rx.recv(2048)
            loop.create_task(job())
            hot.wake()

        hot.add_hot(rx, handler)
        await asyncio.sleep(0.05)
        sent = time.monotonic()
        tx.send(b"x")
        ran = await asyncio.wait_for(fut, 5.0)  # its timer is the only one
        hot.remove_hot(rx)
        rx.close()
        tx.close()
        assert ran - sent < 0.5

    run(body)


def test_registration_errors() -> None:
    sel = HotSelector()
    rx, tx = udp_pair()
    try:
        sel.add_hot(rx, lambda: None)
        with pytest.raises(KeyError):
            sel.add_hot(rx, lambda: None)
        with pytest.raises(KeyError):
            sel.register(rx, 1)
        with pytest.raises(KeyError):
            sel.unregister(tx)
        with pytest.raises(ValueError):
            sel.register(-1, 1)
        key = sel.register(tx, 1, "data")
        assert sel.get_map()[tx] == key and len(sel.get_map()) == 1
        assert sel.modify(tx, 3, "other").data == "other"
        assert sel.unregister(tx.fileno()).fd == tx.fileno()
    finally:
        sel.close()
        rx.close()
        tx.close()
