"""The pool: up to ``node.crypto_workers`` worker processes, which batch goes to one, and its fallbacks.

Invariants: a worker serves one job at a time and is given back only once its job has ended (a
cancelled call leaves it busy until then); a permanent failure to run workers turns the pool off
once, logged, and every later batch runs on the server's thread; a passing one sends only that
batch there; a closed pool refuses new work.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging

from hsm_node import keyops
from hsm_node.cryptopool._layout import ENCRYPT, SIGN, Layout, _aad_bytes
from hsm_node.cryptopool._process import _Worker
from hsm_node.keyops import KeyType
from sdquorum.errors import StateError, TransportError, UsageError
from sdquorum_rpc.packed import Packed

log = logging.getLogger("sdquorum.node.cryptopool")

MIN_POOLED_ITEMS = 64
JOB_SECONDS = 30.0  # every job's allowance, before the per-item one
ITEM_SECONDS = {KeyType.RSA3072: 0.02}  # an RSA-3072 signature takes ~1.3 ms: 15 times that
OTHER_ITEM_SECONDS = 0.0005  # AES-GCM ~1 us, Ed25519 ~35 us an item
PERMANENT_ERRNOS = frozenset({errno.EPERM, errno.EACCES, errno.ENOSYS})


class CryptoPool:
    """Up to ``workers`` worker processes, started when a batch first needs one."""

    def __init__(
        self,
        workers: int,
        max_message_bytes: int,
        max_items: int,
        *,
        min_items: int = MIN_POOLED_ITEMS,
        job_seconds: float = JOB_SECONDS,
        item_seconds: dict[KeyType, float] | None = None,
    ) -> None:
        if not 1 <= workers <= 64:
            raise UsageError(f"node.crypto_workers = {workers}: use 0 (off) or 1..64")
        self.layout = Layout(max_message_bytes, max_items)
        self.min_items = min_items
        self.job_seconds = job_seconds
        self.item_seconds = ITEM_SECONDS if item_seconds is None else item_seconds
        self._capacity = workers
        self._workers: list[_Worker] = []  # every live worker, idle or busy
        self._idle: list[_Worker] = []
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._closed = False
        self.unavailable = ""  # why no worker can run here; batches then stay on the server's thread

    def wants(self, kind: KeyType, items: Packed, key: bytes, aad: bytes | Packed = b"") -> bool:
        """Whether a batch should go to a worker: big enough to pay for the trip, and fitting."""
        big = kind is KeyType.RSA3072 or len(items) >= self.min_items
        return big and not self._closed and not self.unavailable and self.layout.fits(key, items, aad)

    async def encrypt_batch(
        self, kind: KeyType, key: bytes, plaintexts: Packed, aad: bytes | Packed
    ) -> Packed:
        return await self._run(ENCRYPT, kind, key, plaintexts, aad)

    async def sign_batch(self, kind: KeyType, key: bytes, messages: Packed) -> Packed:
        return await self._run(SIGN, kind, key, messages, b"")

    @property
    def pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers if w.proc is not None]

    def allowance(self, kind: KeyType, items: int) -> float:
        """Seconds a job of ``items`` items may run before its worker is taken for hung."""
        return self.job_seconds + items * self.item_seconds.get(kind, OTHER_ITEM_SECONDS)

    # ------------------------------------------------------------------------------ workers

    async def _take(self) -> _Worker:
        """An idle worker, a new one while below capacity, or the next one given back or replaced."""
        while True:
            if self._closed:
                raise StateError("the node is stopping: the call was not completed")
            while self._idle:
                worker = self._idle.pop()
                if not worker.lost and worker.proc is not None and worker.proc.poll() is None:
                    return worker
                self._drop(worker)  # it died while idle
            if len(self._workers) < self._capacity:
                worker = _Worker(self.layout)
                self._workers.append(worker)
                return worker
            turn = asyncio.get_running_loop().create_future()
            self._waiters.append(turn)
            try:
                await turn
            except asyncio.CancelledError:
                if turn.done() and not turn.cancelled():
                    self._wake_one()  # woken, then cancelled: pass the turn on
                else:
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(turn)
                raise

    def _wake_one(self) -> None:
        while self._waiters:
            turn = self._waiters.popleft()
            if not turn.done():
                turn.set_result(None)
                return

    def _give_back(self, worker: _Worker) -> None:
        """A worker whose job has ended: idle again, or dropped if it cannot serve another."""
        if self._closed or worker.closed or worker.lost or worker.overdue:
            self._drop(worker)
        elif worker not in self._idle:
            self._idle.append(worker)
        self._wake_one()  # a waiter takes it, or starts the replacement

    def _drop(self, worker: _Worker) -> None:
        if worker in self._workers:
            self._workers.remove(worker)
        if worker in self._idle:
            self._idle.remove(worker)
        worker.shut()
        worker.reap()

    def _turn_off(self, reason: str) -> None:
        if not self.unavailable:
            self.unavailable = reason
            log.error(
                "crypto workers cannot run here (%s): batches run on the server's thread from now on; "
                "allow memfd_create and process creation, or set node.crypto_workers = 0",
                reason,
            )

    async def _here(self, op: int, kind: KeyType, key: bytes, items: Packed, aad: bytes | Packed) -> Packed:
        """The batch without a worker, as the node runs it with none."""
        if op == ENCRYPT:
            return keyops.encrypt_batch(kind, key, items, aad)
        return await sign_batch_here(kind, key, items)

    async def _run(self, op: int, kind: KeyType, key: bytes, items: Packed, aad: bytes | Packed) -> Packed:
        try:
            worker = await self._take()
        except OSError as e:
            reason = f"{e.strerror or e}"
            if e.errno in PERMANENT_ERRNOS:
                self._turn_off(reason)
            else:
                log.warning(
                    "cannot start a crypto worker now (%s): this batch runs on the server's thread", reason
                )
            return await self._here(op, kind, key, items, aad)
        used = len(items.data) + _aad_bytes(aad)
        try:
            answer = worker.start(op, kind, key, items, aad, self.allowance(kind, len(items)))
        except BaseException:
            worker.wipe(len(key), used, 0)
            self._give_back(worker)
            raise
        try:
            await asyncio.shield(answer)
        except BaseException as e:
            if not answer.done():
                # Cancelled while the job runs: the worker goes on with it, and is wiped and given
                # back only when it has ended, so no later job can read this one's results.
                def ended(_: asyncio.Future[None]) -> None:
                    worker.wipe(len(key), used)
                    self._give_back(worker)

                answer.add_done_callback(ended)
                raise
            worker.wipe(len(key), used)
            self._give_back(worker)
            why = worker.exited_at_start() if isinstance(e, TransportError) and not self._closed else None
            if why is None:
                raise
            self._turn_off(why)
            return await self._here(op, kind, key, items, aad)
        try:
            return worker.result(len(key), len(items), used)
        finally:
            self._give_back(worker)

    async def close(self) -> None:
        """End every worker: each sees its doorbell pipe close and exits; any still busy after 2 s
        is killed. Callers waiting for a worker are refused."""
        self._closed = True
        for turn in self._waiters:
            if not turn.done():
                turn.set_result(None)  # it wakes, sees the pool closed, and raises
        self._waiters.clear()
        workers, self._workers, self._idle = self._workers, [], []
        for worker in workers:
            worker.shut()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 2.0
        while loop.time() < deadline and any(w.proc is not None and w.proc.poll() is None for w in workers):
            await asyncio.sleep(0.02)
        for worker in workers:
            worker.reap()


async def sign_batch_here(kind: KeyType, key: bytes, messages: Packed) -> Packed:
    """A signing batch in this process: an RSA one (~1.3 ms a signature; cryptography releases the
    GIL while it signs) in a thread, so the event loop goes on serving; any other on the loop."""
    if kind is KeyType.RSA3072:
        return await asyncio.to_thread(keyops.sign_batch, kind, key, messages)
    return keyops.sign_batch(kind, key, messages)
