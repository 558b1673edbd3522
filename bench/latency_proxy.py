"""An asyncio TCP proxy that delays every byte by a configurable one-way latency.

Each custodian's agent dials its own :class:`DelayProxy`, so each custodian sees its own round-trip
time to the node. The proxy listens on 127.0.0.1 port 0 and, per accepted connection, opens one
connection to the upstream (the node) and pumps bytes both ways.

Invariants:

* Every chunk read in either direction is written to the other side no earlier than
  ``rtt / 2 + U(0, jitter)`` seconds after it was read: one round trip through the proxy costs
  ``rtt`` plus on average ``jitter`` (two directions, each ``jitter / 2`` on average).
* Byte order per connection and direction is preserved: each direction is one FIFO queue, and a
  chunk's due time is never earlier than the previous chunk's, so jitter delays but never reorders.
* End of stream travels like data: a half-close (EOF) reaches the other side after the bytes sent
  before it, delayed the same way; the other direction keeps flowing until it closes too.
* Bandwidth is not limited; only latency is added. A destination whose socket buffer fills pauses
  reading from its source until it drains; the bytes already in the delay line (up to one one-way
  delay's worth) are held meanwhile, not bounded by a window as in TCP.
* A socket that is lost (reset, or closed both ways) sends the other side what it had sent before,
  then its end of stream; once neither direction can carry anything more, both sockets close.
* TLS passes through untouched (the proxy sees ciphertext), so mTLS stays end to end between the
  agent and the node.
* The TCP handshake to the proxy itself is local and not delayed: the first round trip the peers
  notice is their TLS handshake. Benchmarks connect agents before they measure anything.
* The proxy stands in for a network, which costs the hosts at either end no CPU: so it is built
  on protocols and timer callbacks (no task, queue or stream per chunk), to take as little of the
  benchmark machine's cores from the node and the agents as it can.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random

__all__ = ["DelayProxy"]

_EOF = b""  # the marker queued for an end of stream


class _Side(asyncio.Protocol):
    """One socket of a proxied connection; what it reads is delivered, delayed, to ``peer``."""

    def __init__(self, proxy: DelayProxy, loop: asyncio.AbstractEventLoop, *, accepted: bool) -> None:
        self.proxy = proxy
        self.accepted = accepted  # the client's socket: its upstream is dialled once it is made
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.queue: collections.deque[tuple[float, bytes]] = collections.deque()  # towards peer
        self.timer: asyncio.TimerHandle | None = None
        self.last_due = 0.0
        self.read_done = False  # this side's input has ended (its EOF is queued)
        self.write_done = False  # the peer's EOF has been delivered to this side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not isinstance(transport, asyncio.Transport):  # pragma: no cover - TCP sockets only
            raise TypeError("the delay proxy carries stream sockets only")
        self.transport = transport
        self.proxy._sides.add(self)
        if self.accepted:  # hold the client's bytes until there is somewhere to send them
            transport.pause_reading()
            self.proxy._dial_for(self)

    def data_received(self, data: bytes) -> None:
        self._queue(data)

    def eof_received(self) -> bool:
        self._queue(_EOF)
        return True  # keep the socket half-open: the other direction may still be sending

    def connection_lost(self, exc: Exception | None) -> None:
        self.proxy._sides.discard(self)
        self.write_done = True  # nothing more can be written here
        if not self.read_done:
            self._queue(_EOF)  # the peer learns of it after the bytes read before
        else:
            self._end_if_done()

    def pause_writing(self) -> None:  # this socket's buffer is full: stop reading what fills it
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def _queue(self, data: bytes) -> None:
        if self.read_done:
            return
        if not data:
            self.read_done = True
        self.last_due = max(self.loop.time() + self.proxy.one_way_delay(), self.last_due)
        self.queue.append((self.last_due, data))
        if self.timer is None:
            self.timer = self.loop.call_at(self.last_due, self._flush)

    def _flush(self) -> None:
        """Deliver every chunk now due, in order; re-arm for the next one."""
        self.timer = None
        now = self.loop.time()
        peer = self.peer
        if peer is None:  # the upstream is still being dialled: _connected flushes again
            return
        while self.queue and self.queue[0][0] <= now:
            _, data = self.queue.popleft()
            if peer.transport is None or peer.write_done:
                continue
            if data:
                peer.transport.write(data)
                self.proxy.bytes_forwarded += len(data)
            else:
                peer.write_done = True
                if peer.transport.can_write_eof():
                    with contextlib.suppress(OSError):
                        peer.transport.write_eof()
                else:
                    peer.transport.close()
        if self._end_if_done():
            return
        if self.queue:
            self.timer = self.loop.call_at(self.queue[0][0], self._flush)

    def _end_if_done(self) -> bool:
        """Close both sockets once neither direction can carry anything more."""
        peer = self.peer
        if peer is None or not (self.write_done and peer.write_done):
            return False
        self.close()
        peer.close()
        return True

    def connected(self, peer: _Side) -> None:
        self.peer = peer
        if self.queue and self.timer is None:
            self.timer = self.loop.call_at(self.queue[0][0], self._flush)

    def close(self) -> None:
        self.read_done = True  # nothing more is queued, not even the EOF of the coming connection_lost
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.queue.clear()
        if self.transport is not None:
            self.transport.close()


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
        self._sides: set[_Side] = set()
        self._connecting: set[asyncio.Task[None]] = set()
        self.port = 0
        self.bytes_forwarded = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def one_way_delay(self) -> float:
        return self.rtt / 2 + (self._rng.uniform(0.0, self.jitter) if self.jitter else 0.0)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Side(self, loop, accepted=True), "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def _dial_for(self, client: _Side) -> None:
        task = client.loop.create_task(self._dial_upstream(client))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    async def _dial_upstream(self, client: _Side) -> None:
        upstream = _Side(self, client.loop, accepted=False)
        try:
            await client.loop.create_connection(lambda: upstream, *self.upstream)
        except OSError:
            client.close()
            return
        upstream.connected(client)
        client.connected(upstream)
        if client.transport is not None and not client.transport.is_closing():
            client.transport.resume_reading()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for t in list(self._connecting):
                t.cancel()
            await asyncio.gather(*self._connecting, return_exceptions=True)
            for side in list(self._sides):
                side.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> DelayProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
