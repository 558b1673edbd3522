"""Watching a prefix across broken streams and member losses.

Invariants: a watch resumes after a broken stream from the revision after the last one it
delivered, on any endpoint, so no event is lost or delivered twice; if etcd compacted that revision
away it raises :class:`CompactedError` and the caller reloads. A quiet stream asks for a progress
notice every ``progress_interval`` and leaves a member that does not answer one within
``attempt_timeout`` (a silent partition is noticed that fast). One thread reads each stream (grpc's
blocking API, see :mod:`._connection`) into a queue of the caller's loop; timeouts wait on that
queue, and leaving a stream cancels its call, which ends the thread's read.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
from aetcd import rpc  # etcd's v3 API (generated, kept current by aetcd's maintainers)

from hsm_node.pool.etcd._connection import HASLEADER, Connection
from hsm_node.pool.etcd._errors import EOF, CompactedError, raise_if_final
from hsm_node.pool.etcd._layout import prefix_end
from hsm_node.pool.etcd._values import EventKind, WatchBatch, WatchEvent
from sdquorum.errors import PermissionDeniedError

__all__ = ["Watches"]


class Watches(Connection):
    """Watches of a key prefix that survive broken streams."""

    async def watch_prefix(self, prefix: bytes, start_revision: int) -> AsyncIterator[WatchBatch]:
        """Every change under ``prefix`` from ``start_revision`` on (typically the revision of a
        :meth:`get_prefix` plus one), in order, across broken streams and member losses.

        A quiet stream asks for a progress notice every ``progress_interval``; a member that does
        not answer one within ``attempt_timeout`` is left for the next (a silent partition is
        noticed that fast). Each batch, events or not, proves the cluster answered: the caller
        bounds how long it serves without one. While no member with a quorum answers it keeps
        trying; it never ends by itself (cancel the iteration to stop)."""
        cfg = self.config
        next_rev = start_revision
        n = len(cfg.endpoints)
        while True:
            endpoint = cfg.endpoints[self._current % n]
            requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
            self._streams.add(requests)
            call = rpc.WatchStub(self._channel(endpoint)).Watch(_until_none(requests), metadata=HASLEADER)
            inbox: asyncio.Queue[Any] = asyncio.Queue()
            threading.Thread(
                target=_pump, args=(call, inbox, asyncio.get_running_loop()), name="etcd-watch", daemon=True
            ).start()
            try:
                create = rpc.WatchCreateRequest(
                    key=prefix, range_end=prefix_end(prefix), start_revision=next_rev, progress_notify=True
                )
                requests.put(rpc.WatchRequest(create_request=create))
                asked = False
                while True:
                    try:
                        r = await asyncio.wait_for(
                            inbox.get(), cfg.attempt_timeout if asked else cfg.progress_interval
                        )
                    except TimeoutError:
                        if asked:
                            break  # no answer to a progress request: this member is cut off
                        requests.put(rpc.WatchRequest(progress_request=rpc.WatchProgressRequest()))
                        asked = True
                        continue
                    asked = False
                    if isinstance(r, grpc.RpcError):
                        raise_if_final(r, "watch")
                        break
                    if r is EOF:
                        break
                    if r.compact_revision:
                        raise CompactedError(int(r.compact_revision))
                    if r.canceled:
                        if "permission denied" in r.cancel_reason:
                            raise PermissionDeniedError(
                                "etcd refused the watch: this member's etcd certificate may not read the pool"
                            )
                        break  # e.g. this member lost its leader: go to the next one
                    if r.created and not r.events:
                        continue
                    events = tuple(_event(ev) for ev in r.events)
                    if events:
                        next_rev = max(ev.mod_revision for ev in events) + 1
                    else:
                        next_rev = max(next_rev, int(r.header.revision) + 1)
                    yield WatchBatch(int(r.header.revision), events)
            finally:
                self._streams.discard(requests)
                requests.put(None)  # the request stream ends
                call.cancel()  # and the pump's read with it
            self._current = (self._current + 1) % n
            await asyncio.sleep(min(cfg.attempt_timeout, 0.2))


def _until_none(requests: queue.SimpleQueue[Any]) -> Iterator[Any]:
    """A stream's requests, as the caller queues them, until it queues None."""
    while (r := requests.get()) is not None:
        yield r


def _pump(call: Any, inbox: asyncio.Queue[Any], loop: asyncio.AbstractEventLoop) -> None:
    """Move a stream's responses (then EOF, or the error that ended it) into ``inbox`` on
    ``loop`` (this runs on a thread of its own)."""

    def put(item: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody reads any more
            loop.call_soon_threadsafe(inbox.put_nowait, item)

    try:
        for r in call:
            put(r)
        put(EOF)
    except grpc.RpcError as e:
        put(e)


def _event(ev: Any) -> WatchEvent:
    kind = EventKind.DELETE if ev.type == rpc.Event.DELETE else EventKind.PUT
    kv = ev.kv
    return WatchEvent(
        kind, bytes(kv.key), bytes(kv.value), int(kv.mod_revision), int(kv.create_revision), int(kv.version)
    )
