"""The benchmarks' latency harness (bench/latency_proxy.py): a delaying TCP proxy.

What the recovery benchmarks rely on: every byte is delayed by at least half the round-trip time
each way, jitter never reorders, end of stream travels like data (half-close included), the proxy
forwards large transfers intact, and a refused upstream or a closed proxy ends the client's
connection instead of hanging it. Delays are checked as lower bounds (a property of the proxy),
never as a speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from bench.latency_proxy import DelayProxy

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    while data := await r.read(65536):
        w.write(data)
        await w.drain()
    w.close()


async def _server(handler: Handler) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _round_trip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> float:
    started = time.perf_counter()
    writer.write(b"x")
    await writer.drain()
    assert await reader.readexactly(1) == b"x"
    return time.perf_counter() - started


@contextlib.asynccontextmanager
async def _proxied(
    handler: Handler, **kw: object
) -> AsyncIterator[tuple[DelayProxy, asyncio.StreamReader, asyncio.StreamWriter]]:
    server, port = await _server(handler)
    try:
        async with DelayProxy("127.0.0.1", port, **kw) as proxy:  # type: ignore[arg-type]  # rtt, jitter, rng
            r, w = await asyncio.open_connection("127.0.0.1", proxy.port)
            try:
                yield proxy, r, w
            finally:
                w.close()
    finally:
        server.close()


async def test_every_round_trip_takes_at_least_the_rtt() -> None:
    async with _proxied(_echo, rtt=0.12) as (_, r, w):
        trips = [await _round_trip(r, w) for _ in range(3)]
    assert min(trips) >= 0.12


async def test_jitter_delays_but_never_reorders() -> None:
    # each chunk draws its own delay in [rtt/2, rtt/2 + jitter]; a later chunk never overtakes
    messages = [f"<{i:04d}>".encode() for i in range(300)]
    async with _proxied(_echo, rtt=0.02, jitter=0.05, rng=random.Random(7)) as (_, r, w):  # noqa: S311  # simulated jitter
        for m in messages:
            w.write(m)
            await w.drain()
            await asyncio.sleep(0.0005)  # separate reads, so chunks draw separate delays
        got = await asyncio.wait_for(r.readexactly(len(b"".join(messages))), 20)
    assert got == b"".join(messages)


def test_one_way_delay_stays_within_rtt_half_plus_jitter() -> None:
    proxy = DelayProxy("127.0.0.1", 1, rtt=0.1, jitter=0.04, rng=random.Random(1))  # noqa: S311  # simulated jitter
    delays = [proxy.one_way_delay() for _ in range(2000)]
    assert min(delays) >= 0.05
    assert max(delays) <= 0.09
    assert max(delays) - min(delays) > 0.03  # the jitter is really drawn, not a constant


def test_negative_rtt_or_jitter_is_refused() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        DelayProxy("127.0.0.1", 1, rtt=-0.1)
    with pytest.raises(ValueError, match="non-negative"):
        DelayProxy("127.0.0.1", 1, rtt=0.1, jitter=-1)


async def test_a_large_transfer_arrives_intact_and_is_counted() -> None:
    blob = os.urandom(3 * 1024 * 1024)  # larger than the socket buffers on the way
    async with _proxied(_echo, rtt=0.01) as (proxy, r, w):

        async def send() -> None:
            w.write(blob)
            await w.drain()

        sender = asyncio.create_task(send())
        got = await asyncio.wait_for(r.readexactly(len(blob)), 30)
        await sender
    assert got == blob
    assert proxy.bytes_forwarded == 2 * len(blob)


async def test_half_close_travels_after_the_data_and_the_other_way_keeps_flowing() -> None:
    seen: list[bytes] = []

    async def upstream(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        seen.append(await r.read())  # everything up to the client's EOF
        w.write(b"reply after your EOF")
        await w.drain()
        w.close()

    async with _proxied(upstream, rtt=0.04) as (_, r, w):
        started = time.perf_counter()
        w.write(b"request")
        w.write_eof()
        reply = await asyncio.wait_for(r.read(), 10)  # then EOF from the upstream's close
        elapsed = time.perf_counter() - started
    assert seen == [b"request"]
    assert reply == b"reply after your EOF"
    assert elapsed >= 0.04


async def test_a_refused_upstream_closes_the_client_connection() -> None:
    server, port = await _server(_echo)
    server.close()
    await server.wait_closed()  # nothing listens on port now
    async with DelayProxy("127.0.0.1", port, rtt=0.01) as proxy:
        r, w = await asyncio.open_connection("127.0.0.1", proxy.port)
        w.write(b"anyone?")
        with contextlib.suppress(ConnectionResetError):  # a close with unread bytes may reach us as a reset
            assert await asyncio.wait_for(r.read(), 10) == b""
        w.close()


async def test_closing_the_proxy_ends_open_connections_and_drops_what_is_in_flight() -> None:
    got: list[bytes] = []

    async def upstream(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while data := await r.read(65536):
            got.append(data)
        w.close()

    server, port = await _server(upstream)
    try:
        proxy = DelayProxy("127.0.0.1", port, rtt=0.6)
        await proxy.start()
        r, w = await asyncio.open_connection("127.0.0.1", proxy.port)
        w.write(b"in flight")
        await asyncio.sleep(0.1)  # read by the proxy, due upstream only at 0.3 s
        await proxy.close()
        with contextlib.suppress(ConnectionResetError):
            assert await asyncio.wait_for(r.read(), 10) == b""
        await asyncio.sleep(0.4)  # past the chunk's due time
        assert got == []
        assert not proxy._sides  # every socket closed, no timer left holding one
        w.close()
        await proxy.close()  # a second close does nothing
    finally:
        server.close()


async def test_a_client_lost_after_its_half_close_closes_the_upstream() -> None:
    # The client sends its request and EOF, then goes away while the upstream is still answering:
    # the upstream must learn it (its writes fail), not write into a socket nobody reads.
    ended = asyncio.get_running_loop().create_future()

    async def upstream(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.read()  # the request, up to the client's EOF
        try:
            for _ in range(500):  # 10 s at most
                w.write(b"x" * 1000)
                await w.drain()
                await asyncio.sleep(0.02)
            ended.set_result("the proxy kept the upstream socket open")
        except ConnectionError:
            ended.set_result("closed")

    async with _proxied(upstream, rtt=0.02) as (proxy, r, w):
        w.write(b"request")
        w.write_eof()
        assert (await r.readexactly(1000)) == b"x" * 1000  # answers flow after the half-close
        transport = w.transport
        assert isinstance(transport, asyncio.Transport)
        transport.abort()  # gone, with a reset
        assert await asyncio.wait_for(ended, 15) == "closed"
    assert not proxy._sides


async def test_a_client_found_lost_by_the_last_write_closes_the_upstream() -> None:
    # The upstream writes twice more after the client went away, then has nothing more to say. As
    # in TCP, the first write to a closed peer goes out and draws a reset, the second fails: that
    # failure is enough for the proxy to close the upstream's socket too, without waiting for the
    # upstream to write again. (A half-closed client that vanishes is noticed only by a write.)
    async def upstream(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.read()
        for _ in range(2):
            await asyncio.sleep(0.15)
            w.write(b"late answer")
        await asyncio.sleep(30)

    async with _proxied(upstream, rtt=0.02) as (proxy, _r, w):
        w.write(b"request")
        w.write_eof()
        await asyncio.sleep(0.05)  # the EOF has reached the upstream
        transport = w.transport
        assert isinstance(transport, asyncio.Transport)
        transport.abort()
        for _ in range(100):
            if not proxy._sides:
                break
            await asyncio.sleep(0.05)
        assert not proxy._sides


async def test_a_destination_that_does_not_read_stops_the_source() -> None:
    # Backpressure: an upstream that never reads fills its socket buffer; the proxy then stops
    # reading from the client, whose writes block, instead of buffering everything it is sent.
    async def upstream(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    chunk = bytes(1024 * 1024)
    sent = 0
    async with _proxied(upstream, rtt=0.01) as (_, _r, w):
        loop = asyncio.get_running_loop()
        until = loop.time() + 2.0
        with contextlib.suppress(TimeoutError):
            while loop.time() < until:
                w.write(chunk)
                await asyncio.wait_for(w.drain(), until - loop.time())
                sent += len(chunk)
        transport = w.transport
        assert isinstance(transport, asyncio.Transport)
        transport.abort()
    # socket buffers on the way plus one one-way delay's worth in the proxy: far below 64 MiB
    assert sent < 64 * 1024 * 1024
