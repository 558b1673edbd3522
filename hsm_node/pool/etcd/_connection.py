"""The client's channels to the etcd members and its one retry loop: failover across endpoints
under a per-attempt and an overall deadline.

Invariants:

* Every call carries etcd's ``hasleader`` metadata (:data:`HASLEADER`), so a member cut off from its
  quorum refuses at once ("no leader") instead of serving a stale read or queueing a write; each
  attempt has its own deadline (``attempt_timeout``) and the whole call an overall one
  (``call_timeout``). When no member answers within it the call raises
  :class:`~sdquorum.errors.TransportError` with one line naming the endpoints and what to check:
  never a hang, never a partial answer.
* A failed attempt is retried on the next endpoint; an answer another member would give too is
  translated at once (:func:`._errors.raise_if_final`). The endpoint that answered last is tried
  first next time.
* Channels use mutual TLS with this member's etcd client pair and the cluster's TLS name; they are
  opened on first use and closed by :meth:`Connection.close`.
* The channels are grpc's blocking ones, each call made on this connection's own threads and
  awaited from the caller's loop: no grpc.aio object lives here. grpc.aio binds every event loop
  that uses it to one poller per process and wakes all of them for every event; a pool member
  runs this client on a loop of its own, so with grpc.aio its etcd thread woke for every call the
  node served and forwarded it to the serving loop (ADR 0013, "Data-plane cost of a member").
"""

from __future__ import annotations

import asyncio
import queue
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Self, TypeVar

import grpc

import sdquorum_rpc  # noqa: F401  # its import pins grpc's TLS 1.2 suites: etcd is offered what every channel offers
from hsm_node.pool.etcd._errors import details_of, raise_if_final, rpc_detail
from hsm_node.pool.etcd._values import EtcdConfig
from sdquorum.errors import TransportError

__all__ = ["HASLEADER", "Connection"]

_T = TypeVar("_T")
HASLEADER = (("hasleader", "true"),)  # etcd refuses at once when this member has no leader
_TLS_FAILURE = re.compile(r"TSI_|[Hh]andshake|SSL|certificate", re.ASCII)


class Connection:
    """Channels to the members of one cluster and the retry loop every request goes through."""

    def __init__(self, config: EtcdConfig) -> None:
        self.config = config
        self._creds = grpc.ssl_channel_credentials(
            root_certificates=config.ca_pem, private_key=config.key_pem, certificate_chain=config.cert_pem
        )
        self._channels: dict[str, grpc.Channel] = {}
        self._current = 0  # index of the endpoint that answered last
        # the blocking calls (made at first use; a watch reads on a thread of its own)
        self._threads: ThreadPoolExecutor | None = None
        self._streams: set[queue.SimpleQueue[Any]] = set()  # request streams open (watches)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        for requests in self._streams:  # every open request stream ends: no grpc thread waits on one
            requests.put(None)
        self._streams.clear()
        channels, self._channels = list(self._channels.values()), {}
        for ch in channels:
            ch.close()
        threads, self._threads = self._threads, None
        if threads is not None:
            threads.shutdown(wait=False, cancel_futures=True)

    async def blocking(self, fn: Callable[..., _T], *args: object) -> _T:
        """``fn(*args)`` (a blocking grpc call) on this connection's threads, awaited here."""
        if self._threads is None:
            self._threads = ThreadPoolExecutor(max_workers=4, thread_name_prefix="etcd-call")
        return await asyncio.get_running_loop().run_in_executor(self._threads, fn, *args)

    def _channel(self, endpoint: str) -> grpc.Channel:
        ch = self._channels.get(endpoint)
        if ch is None:
            ch = grpc.secure_channel(
                endpoint,
                self._creds,
                options=[
                    ("grpc.ssl_target_name_override", self.config.server_name),
                    ("grpc.default_authority", self.config.server_name),
                    # a member that comes back is used again within a second, not after minutes
                    ("grpc.initial_reconnect_backoff_ms", 200),
                    ("grpc.min_reconnect_backoff_ms", 200),
                    ("grpc.max_reconnect_backoff_ms", 1000),
                    # a silently dropped connection (a partition) is noticed on long watches
                    ("grpc.keepalive_time_ms", 10_000),
                    ("grpc.keepalive_timeout_ms", 3_000),
                    ("grpc.max_receive_message_length", 8 * 1024 * 1024),
                ],
            )
            self._channels[endpoint] = ch
        return ch

    # ------------------------------------------------------------------ the retry loop

    async def _call(self, what: str, attempt: Callable[[grpc.Channel, float], _T]) -> _T:
        """Run ``attempt`` (blocking, on this connection's threads) on the current endpoint, then
        on the next ones, until one answers or ``call_timeout`` is spent; translate the final
        failure."""
        cfg = self.config
        deadline = time.monotonic() + cfg.call_timeout
        n = len(cfg.endpoints)
        last: grpc.RpcError | None = None
        tried = 0
        while (remaining := deadline - time.monotonic()) > 0:
            endpoint = cfg.endpoints[self._current % n]
            try:
                result = await self.blocking(
                    attempt, self._channel(endpoint), min(cfg.attempt_timeout, remaining)
                )
            except grpc.RpcError as e:
                raise_if_final(e, what)
                last = e
                tried += 1
                self._current = (self._current + 1) % n
                if tried % n == 0:  # every member refused once: give them a moment (an election)
                    await asyncio.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
                continue
            return result
        detail = rpc_detail(last) if last is not None else "no attempt finished in time"
        if last is not None and _TLS_FAILURE.search(details_of(last)):
            raise TransportError(
                f"etcd {what} failed: TLS with {', '.join(cfg.endpoints)} failed ({detail}); check that "
                "this member's etcd certificate, key and CA come from the cluster's etcd CA"
            ) from last
        raise TransportError(
            f"etcd {what} failed: no member of {', '.join(cfg.endpoints)} answered with a quorum "
            f"within {cfg.call_timeout:g} s ({detail}); check that a majority of the etcd members "
            "(2 of 3) run and reach each other"
        ) from last
