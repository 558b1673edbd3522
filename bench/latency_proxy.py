"""An asyncio TCP proxy that delays every byte by a configurable one-way latency.

Each custodian's agent dials its own :class:`DelayProxy`, so each custodian sees its own round-trip
time to the node. The proxy listens on 127.0.0.1 port 0 and, per accepted connection, opens one
connection to the upstream (the node) and pumps bytes both ways.

Invariants:

* Every chunk read in either direction is written to the other side no earlier than
  ``rtt / 2 + U(0, jitter)`` seconds after it was read: one round trip through the proxy costs
  ``rtt`` plus on average ``jitter`` (two directions, each ``jitter / 2`` on average).
* Byte order per connection and direction is preserved: a chunk's due time is never earlier than
  the previous chunk's, so jitter delays but never reorders.
* Bandwidth is not limited; only latency is added. TLS passes through untouched (the proxy sees
  ciphertext), so mTLS stays end to end between the agent and the node.
* The TCP handshake to the proxy itself is local and not delayed: the first round trip the peers
  notice is their TLS handshake. Benchmarks connect agents before they measure anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Coroutine
from typing import Any

__all__ = ["DelayProxy"]

_READ_BYTES = 64 * 1024


class DelayProxy:
    """``async with DelayProxy("127.0.0.1", node_port, rtt=0.05) as p:`` then dial ``p.target``."""

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        rtt: float,
        jitter: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        if rtt < 0 or jitter < 0:
            raise ValueError("rtt and jitter are non-negative seconds")
        self.upstream = (upstream_host, upstream_port)
        self.rtt = rtt
        self.jitter = jitter
        self._rng = rng or random.Random()  # noqa: S311  # simulated network jitter, not a secret
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0
        self.bytes_forwarded = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def one_way_delay(self) -> float:
        return self.rtt / 2 + (self._rng.uniform(0.0, self.jitter) if self.jitter else 0.0)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for t in list(self._tasks):
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> DelayProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_w.close()
            return
        pumps = [self._spawn(self._pump(client_r, up_w)), self._spawn(self._pump(up_r, client_w))]
        try:
            # wait, not gather: close() cancels the pumps, and this callback must end quietly
            await asyncio.wait(pumps)
        finally:
            for w in (client_w, up_w):
                w.close()

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        """Read from ``src`` as fast as it comes; write each chunk to ``dst`` when it is due."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:  # end of stream, delayed like data so a close never overtakes bytes
                    if dst.can_write_eof():
                        with contextlib.suppress(OSError):
                            dst.write_eof()
                    return
                dst.write(data)
                self.bytes_forwarded += len(data)
                await dst.drain()

        writer = self._spawn(deliver())
        last_due = 0.0
        try:
            while True:
                try:
                    data = await src.read(_READ_BYTES)
                except (ConnectionError, OSError):
                    data = b""
                last_due = max(loop.time() + self.one_way_delay(), last_due)
                queue.put_nowait((last_due, data))
                if not data or writer.done():  # end of stream, or the other side went away
                    break
            await writer
        except (ConnectionError, OSError):
            pass
        finally:
            writer.cancel()
