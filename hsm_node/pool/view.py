"""A pool member's view of etcd: the cache, the watch that keeps it, and the transactions.

:class:`EtcdView` is what :mod:`hsm_node.pool.store` builds the storage seam on. It owns a thread
running an asyncio loop that speaks to etcd (:class:`~hsm_node.pool.etcd.EtcdClient`); the node
calls it synchronously.

Invariants:

* Every write, and every batch, is one etcd transaction (:meth:`EtcdClient.commit`): it applies only
  if every row it read to decide is still at the revision it read, so two members creating one
  row (a key name, an audit sequence number, a retired epoch): exactly one wins, the other gets
  AlreadyExistsError (a row another member changed meanwhile: StateError, nothing written). A
  write inside a batch that raises undoes only itself; an exception out of the batch, or a raise
  from ``on_commit`` (run before the transaction is sent), sends nothing. A transaction is its
  thread's: other threads read committed rows only.
* Reads come from the cache of the pool's prefix, loaded once and kept current by an etcd watch
  (reloaded if etcd compacted the history it needed). A write returns once the cache has reached
  the revision it made, so a member reads its own writes at once.
* The cache is known current at time T when a linearizable read sent at T (it needs etcd's
  quorum) answered revision R and the watch has brought the cache to R; a heartbeat makes that
  read every ``min(1 s, max_staleness / 4)``. Watch events and progress notices prove nothing
  alone: a member cut off from its quorum still answers them for a while. A member whose cache was
  last known current more than ``max_staleness`` seconds ago refuses every read and write with
  TransportError (UNAVAILABLE) saying so, until etcd answers again. A removed member refuses
  everything with PermissionDeniedError.
* A batch holds at most ``EtcdConfig.max_txn_ops`` rows and conditions and ``max_request_bytes``
  bytes (etcd's ``--max-txn-ops`` and ``--max-request-bytes``): larger ones are refused with
  UsageError before anything is sent. Every batch the node makes is bounded far below that (ADR
  0013, "Every write path and etcd's limits"); the one write of unbounded size, a backup restore,
  is not a batch: :mod:`hsm_node.pool.keyset` stages it in chunks.
* The watch applies each etcd revision whole, under the cache's lock; reads inside
  :meth:`EtcdView.snapshot` all see one revision (a key-set pointer and the rows it names).
* Integrity (:mod:`hsm_node.pool.integrity`, :mod:`hsm_node.pool.guard`): every write tags the rows
  of MAC'd tables and carries the next custody head if it changes a custody row; every read from
  the cache checks them first. A row that fails is never returned (TamperedError, logged once).
* This member's own file (``<data_dir>/pool-member.json``, 0600, :mod:`hsm_node.pool._member_file`)
  is written after the etcd transaction committed; if that fails, StorageError says the pool holds
  the change and this member does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from hsm_node.pool._member_file import MemberFile, read_local, write_local
from hsm_node.pool.cache import RowCache
from hsm_node.pool.etcd import CompactedError, EtcdClient, EtcdConfig, EventKind, KeyValue, Layout, WatchBatch
from hsm_node.pool.guard import RowGuard
from hsm_node.pool.integrity import Head
from sdquorum.errors import (
    AlreadyExistsError,
    ConflictError,
    PermissionDeniedError,
    SdquorumError,
    StateError,
    TransportError,
)
from sdquorum_rpc.files import private_dir

__all__ = ["DEFAULT_MAX_STALENESS", "LOCAL_FILE", "EtcdView", "caught_up", "read_local", "write_local"]

log = logging.getLogger("hsm_node.pool.store")
_T = TypeVar("_T")
DEFAULT_MAX_STALENESS = 5.0  # seconds a member serves without proof its view is current (pool.max_staleness)
LOCAL_FILE = "pool-member.json"
_NO_QUORUM = (
    "the pool's etcd cluster did not confirm the write (no quorum reachable): it was not acknowledged and "
    "may still apply when etcd returns, so check before you retry (the member's log names the etcd "
    "endpoints; docs/runbooks/pool.md)"
)
_CONFLICT = "another pool member changed the same rows at the same time: nothing was written; try again"


@dataclass
class _Tx:
    """The writes of one transaction, and what they were decided on."""

    writes: dict[bytes, bytes | None] = field(default_factory=dict)  # None: delete
    read: dict[bytes, int] = field(default_factory=dict)  # key -> mod revision read (0: absent)
    taken: dict[bytes, str] = field(default_factory=dict)  # a row this write creates -> "exists" message
    local: dict[str, Any] = field(default_factory=dict)  # this member's file: fields to set

    def copy(self) -> _Tx:
        return _Tx(dict(self.writes), dict(self.read), dict(self.taken), dict(self.local))


class EtcdView:
    """The cache, the watch, the freshness proof and the transactions (module docstring)."""

    def __init__(
        self,
        config: EtcdConfig,
        pool_id: bytes,
        data_dir: Path,
        node_id: str,
        *,
        max_staleness: float = DEFAULT_MAX_STALENESS,
        start_timeout: float = 15.0,
        client_factory: Callable[[EtcdConfig], EtcdClient] = EtcdClient,
    ) -> None:
        if max_staleness <= 0:
            raise StateError("pool.max_staleness must be more than 0 seconds")
        self.layout = Layout(pool_id)
        self.node_id = node_id
        self.prefix = self.layout.prefix
        self._config = config
        self._max_staleness = max_staleness
        self._file = private_dir(data_dir, "the data directory", "node.data_dir / --data-dir") / LOCAL_FILE
        self._member = MemberFile(self._file)
        self.on_commit: Callable[[], None] | None = None
        # the cache (guarded by _lock; written by the loop thread only)
        self._lock = threading.RLock()  # re-entered by reads inside snapshot()
        self._cache = RowCache(self.prefix)
        self._revision = 0
        self.guard = RowGuard(
            self.prefix, self._lock, lambda: self._cache, lambda: self._member.data, self._member.update
        )
        self._contact = 0.0  # time.monotonic() of the last answer from etcd
        self._removed = False
        self._tx: _Tx | None = None
        self._tx_thread = 0  # the thread whose transaction _tx is (others read committed rows only)
        self._writer = threading.RLock()  # one transaction at a time in this process
        # the loop that speaks to etcd
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="pool-etcd", daemon=True)
        self._thread.start()
        self._client = client_factory(config)
        self._caught_up: asyncio.Condition | None = None
        self._closed = False
        try:
            self.run(self._load(), start_timeout)
        except BaseException:
            self.close()
            raise
        self._follower: Future[None] = asyncio.run_coroutine_threadsafe(self._follow(), self._loop)
        self._beat: Future[None] = asyncio.run_coroutine_threadsafe(self._heartbeat(), self._loop)

    # ------------------------------------------------------------------ the loop thread

    @property
    def client(self) -> EtcdClient:
        """The etcd client (its coroutines run on this view's loop: :meth:`run`)."""
        return self._client

    def run(self, coro: Coroutine[Any, Any, _T], timeout: float | None = None) -> _T:
        if self._closed:  # no task may start on a loop being stopped: it would outlive the loop
            coro.close()
            raise StateError("the pool store is closed")
        wait = timeout if timeout is not None else self._config.call_timeout * 2 + self._max_staleness
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result(wait)
        except FutureTimeout:
            fut.cancel()
            raise TransportError(
                f"the pool's etcd did not answer within {wait:g} s: check the etcd cluster "
                "(docs/runbooks/pool.md)"
            ) from None

    async def _load(self) -> None:
        """The whole prefix as one snapshot, replacing the cache."""
        if self._caught_up is None:
            self._caught_up = asyncio.Condition()
        kvs, revision = await self._client.get_prefix(self.prefix)
        with self._lock:
            self._cache = RowCache(self.prefix, kvs)
            self._revision = revision
            self._contact = time.monotonic()
            self.guard.changed()
        async with self._caught_up:
            self._caught_up.notify_all()

    def _apply(self, batch: WatchBatch) -> None:
        with self._lock:  # one batch whole: a revision is never seen half applied
            _apply_events(self._cache, batch)
            if any(self.guard.watched(ev.key) for ev in batch.events):
                self.guard.changed()
            self._revision = max(self._revision, batch.revision)

    async def _follow(self) -> None:
        """Keep the cache current for as long as the store is open."""
        assert self._caught_up is not None
        while not self._closed:
            try:
                async for batch in self._client.watch_prefix(self.prefix, self._revision + 1):
                    self._apply(batch)
                    async with self._caught_up:
                        self._caught_up.notify_all()
            except CompactedError:
                log.warning("pool: etcd compacted the history this member's watch needed: reloading")
                with contextlib.suppress(SdquorumError):
                    await self._load()
                await asyncio.sleep(0.2)
            except PermissionDeniedError as e:
                self._refused(e)
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the watch never ends by itself; anything else: start again
                log.warning("pool: the etcd watch failed (%s): following again", e)
                await asyncio.sleep(0.2)

    async def _heartbeat(self) -> None:
        """Prove, often, that the cache is current (module docstring: a linearizable read's revision)."""
        interval = min(1.0, self._max_staleness / 4)
        while not self._closed:
            sent = time.monotonic()
            try:
                _, revision = await self._client.get_prefix(self.layout.epoch())
                if await self._wait_revision(revision, self._max_staleness):
                    with self._lock:
                        self._contact = max(self._contact, sent)
            except PermissionDeniedError as e:
                self._refused(e)
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.debug("pool: etcd did not answer the freshness read: %s", e)
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - sent)))

    def _refused(self, e: PermissionDeniedError) -> None:
        """etcd refuses this member's certificate (its user was deleted): it serves nothing more."""
        log.error("pool: etcd refuses this member (%s): it serves nothing more", e)
        self._removed = True

    async def _wait_revision(self, revision: int, timeout: float) -> bool:
        assert self._caught_up is not None
        async with self._caught_up:
            try:
                await asyncio.wait_for(self._caught_up.wait_for(lambda: self._revision >= revision), timeout)
            except TimeoutError:
                return False
        return True

    def wait_for(self, revision: int) -> bool:
        """Wait (at most ``max_staleness``) until the watch has brought the cache to ``revision``."""
        return self.run(self._wait_revision(revision, self._max_staleness))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        stopping = asyncio.run_coroutine_threadsafe(_stop(self._client), self._loop)
        with contextlib.suppress(Exception):  # its tasks end before the client closes (_stop)
            stopping.result(self._config.call_timeout + 5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if stopping.done() and not self._thread.is_alive():  # never with a task pending: its
            self._loop.close()  # coroutine, collected later, would call a closed loop

    # ------------------------------------------------------------------ freshness and reads

    def mark_removed(self) -> None:
        """This member was removed from the pool: refuse everything from now on."""
        self._removed = True

    def staleness(self) -> float:
        """Seconds since etcd last answered this member."""
        return time.monotonic() - self._contact

    def _fresh(self) -> None:
        if self._removed:
            raise PermissionDeniedError(
                "this node was removed from the pool (etcd refuses its certificate): it serves nothing; "
                "ask an admin to allow it again and rejoin"
            )
        if self._closed:
            raise StateError("the pool store is closed")
        age = self.staleness()
        if age > self._max_staleness:
            raise TransportError(
                f"this pool member has not heard from etcd for {age:.1f} s (pool.max_staleness is "
                f"{self._max_staleness:g} s), so it serves nothing until etcd answers again: check the "
                "etcd cluster and this member's network (docs/runbooks/pool.md)"
            )

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """``with view.snapshot():`` every read inside sees one revision (keep it short; no waits).
        The head is checked first, outside the lock: a check after a change writes the member file."""
        self.guard.warm()
        with self._lock:
            yield

    def transaction(self) -> _Tx | None:
        """This thread's open transaction, if any."""
        return self._tx if self._tx_thread == threading.get_ident() else None

    def get(self, key: bytes) -> bytes | None:
        """A value as this transaction sees it (its own writes, else the cache's, checked)."""
        tx = self.transaction()
        if tx is not None and key in tx.writes:
            return tx.writes[key]
        kv = _cached(self, key)
        return None if kv is None else self.guard.open(kv)

    def committed(self, prefix: bytes, *, verify: bool = True) -> list[KeyValue]:
        """Every committed row under ``prefix`` as the cache holds it (revisions too), by key; its
        values checked and opened, unless ``verify`` is False (their keys and revisions only)."""
        self._fresh()
        kvs = self.guard.read_checked(
            prefix, lambda: sorted(self._cache.under(prefix), key=lambda kv: kv.key)
        )
        return [replace(kv, value=self.guard.open(kv)) for kv in kvs] if verify else kvs

    def scan(self, prefix: bytes) -> list[tuple[bytes, bytes]]:
        """Every (key, value) under ``prefix`` as this transaction sees it, in creation order."""
        self._fresh()
        kvs = self.guard.read_checked(prefix, lambda: self._cache.under(prefix))
        kvs.sort(key=lambda kv: (kv.create_revision, kv.key))
        rows = [(kv.key, self.guard.open(kv)) for kv in kvs]
        tx = self.transaction()
        return rows if tx is None else _overlay(rows, tx, prefix)

    # ------------------------------------------------------------------ transactions

    @contextmanager
    def write(self) -> Iterator[_Tx]:
        """A transaction (or, inside one, a savepoint): sent when the outermost block ends."""
        with self._writer:
            outer = self._tx
            if outer is not None:  # a write inside a batch: undone alone if it raises
                saved = outer.copy()
                try:
                    yield outer
                except BaseException:
                    self._tx = saved
                    raise
                return
            self._fresh()
            tx = _Tx()
            self._tx, self._tx_thread = tx, threading.get_ident()
            try:
                yield tx
                done = self._tx or tx  # a savepoint that failed inside put its copy back
                if self.on_commit is not None:
                    self.on_commit()
                self._commit(done)
            finally:
                self._tx, self._tx_thread = None, 0

    def read_for_write(self, tx: _Tx, key: bytes) -> bytes | None:
        """The value the write decides on; the transaction applies only if it is still so."""
        if key in tx.writes:
            return tx.writes[key]
        kv = _cached(self, key)
        tx.read.setdefault(key, 0 if kv is None else kv.mod_revision)
        return None if kv is None else self.guard.open(kv)

    def create(self, tx: _Tx, key: bytes, value: bytes, exists: str) -> None:
        if self.read_for_write(tx, key) is not None:
            raise AlreadyExistsError(exists)
        tx.writes[key] = value
        tx.taken[key] = exists

    def _commit(self, tx: _Tx) -> None:
        head: Head | None = None
        if tx.writes:
            for tries_left in reversed(range(3)):  # refused on a derived row only (head, dead set): again
                ops, conds, head = self.guard.prepare(tx.writes, tx.read)
                try:
                    revision = self.run(self._client.commit(ops, unless_changed=conds))
                except TransportError as e:  # the etcd endpoints and detail stay in this member's log
                    log.warning("pool: a write was refused: %s", e)
                    raise TransportError(_NO_QUORUM) from e
                if revision is not None:
                    self._contact = max(self._contact, time.monotonic())
                    if not self.run(self._wait_revision(revision, self._max_staleness)):
                        log.warning("pool: the watch has not reached revision %d yet", revision)
                    break
                caught_up(self)  # a try again, here or by the caller, decides on the write that won
                if not tries_left or not self.guard.reads_hold(tx.read):
                    _refuse_conflict(self, tx)
        if tx.local or head is not None:
            self._member.update(lambda now: self.guard.with_head({**now, **tx.local}, head))

    # ------------------------------------------------------------------ this member's file

    def local_view(self) -> dict[str, Any]:
        tx = self.transaction()
        return {**self._member.data, **tx.local} if tx is not None else self._member.data

    def sub(self, *parts: str) -> bytes:
        return self.prefix + "/".join(urllib.parse.quote(p, safe="") for p in parts).encode()


async def _stop(client: EtcdClient) -> None:
    """On a view's loop: cancel every other task (the watch, the heartbeat) and await them (the
    watch's request stream ends), then close the client (it ends any stream still open)."""
    while tasks := [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]:  # new ones too
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    await client.close()
    await asyncio.get_running_loop().shutdown_asyncgens()  # none left for the closed loop's GC


def _apply_events(cache: RowCache, batch: WatchBatch) -> None:
    for ev in batch.events:
        if ev.kind is EventKind.DELETE:
            cache.pop(ev.key)
        else:  # etcd's own create_revision and version (row tags bind both): none counted here
            cache.put(KeyValue(ev.key, ev.value, ev.create_revision, ev.mod_revision, ev.version, 0))


def _cached(view: EtcdView, key: bytes) -> KeyValue | None:
    """A committed row as the cache holds it, once the view is fresh and the head checked."""
    view._fresh()
    return view.guard.read_checked(key, lambda: view._cache.get(key))


def _overlay(rows: list[tuple[bytes, bytes]], tx: _Tx, prefix: bytes) -> list[tuple[bytes, bytes]]:
    """``rows`` (committed, under ``prefix``) as transaction ``tx`` sees them: its writes over them."""
    present = {k for k, _ in rows}
    out = [(k, w) for k, v in rows if (w := tx.writes.get(k, v)) is not None]
    out += [
        (k, v) for k, v in tx.writes.items() if v is not None and k.startswith(prefix) and k not in present
    ]
    return out


def _refuse_conflict(view: EtcdView, tx: _Tx) -> NoReturn:
    """Nothing was written: the row another member took first (AlreadyExistsError), or a change."""
    for key, message in tx.taken.items():
        if view.run(view.client.get(key)) is not None:
            raise AlreadyExistsError(message)
    raise ConflictError(_CONFLICT)


def caught_up(view: EtcdView) -> bool:
    """Bring the cache to etcd's revision now (a linearizable read, then the watch): whether it did."""
    try:
        _, revision = view.run(view.client.get_prefix(view.layout.epoch()))
    except SdquorumError as e:
        log.debug("pool: could not catch up with etcd: %s", e)
        return False
    return view.wait_for(revision)
