"""Data-plane batches in worker processes, off the thread that runs the node's gRPC server.

Why processes: ``hsm-node`` serves gRPC from one asyncio thread, and that thread does the
transport's own work too (TLS, HTTP/2, copying messages). ``cryptography`` holds the GIL while it
seals a short AES-GCM item, so a batch of 1000 items kept that thread busy for about a millisecond
of each call's 2.5 and no other thread could help. A worker process has a GIL of its own: while it
seals one batch the server goes on receiving, parsing and answering the others (ADR 0008).

What a worker knows: only the job in hand. For each job the node writes the key material (already
opened from the key store, as for an in-process call), the items and their lengths into a shared
memory region of that worker's (``memfd_create``: anonymous memory, no file system name, mapped by
the node and that one worker only), rings the worker's doorbell (one byte on a pipe) and waits for
the answer's byte. The worker runs the very functions an in-process call runs
(:func:`hsm_node.keyops.encrypt_batch`, :func:`~hsm_node.keyops.sign_batch`) and writes the results
back. Once the job has ended the node wipes the key, the items and the results from the region
(the pages of a large job are given back to the system); the worker's own copies end with the job.
A worker never touches the key store, the data encryption key, TLS or a client: it can be told to
do nothing but seal or sign these items with this key.

Failure, all fail closed, none silent:

* A worker that dies (its doorbell pipe closes) fails the job in hand with
  :class:`~sdquorum.errors.TransportError` (UNAVAILABLE to the caller: nothing was returned, retry)
  and is replaced; callers waiting for a worker are woken to start the replacement.
* A job still running past its allowance (:data:`JOB_SECONDS` plus a per-item allowance many times
  the real cost) is a hung or starved worker: it is killed and the call fails with
  :class:`WorkerTimeout` (INTERNAL: retrying would hang again).
* Results that do not match the job (not one per item, lengths that do not add up), or a job the
  worker could not run, fail the call with :class:`WorkerFault` (INTERNAL), never with data.
* A call cancelled while its job runs leaves the worker busy until the job ends, so no later job
  can read its results.
* A worker that exits with an error before finishing its first job, or that cannot be created for
  a reason that will not change (a sandbox refusing ``memfd_create``), turns the pool off: the
  reason is logged once and every batch runs on the server's thread, as with
  ``node.crypto_workers = 0``. A passing failure (no file descriptor free, say) sends only that
  batch there.
* When the node stops, closing the pipes ends the workers (stragglers are killed after 2 s); a
  worker whose node dies sees the same end of file and exits.

Small batches stay on the server's thread (below :data:`MIN_POOLED_ITEMS` items the pipe round trip
costs more than it saves), except RSA batches, which are slow per item.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import errno
import logging
import mmap
import os
import resource
import signal
import struct
import subprocess
import sys
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

from hsm_node import keyops
from hsm_node.keyops import KeyType
from sdquorum.errors import SdquorumError, StateError, TransportError, UsageError, VerificationError
from sdquorum_rpc.packed import Packed

__all__ = [
    "JOB_SECONDS",
    "MIN_POOLED_ITEMS",
    "CryptoPool",
    "Layout",
    "WorkerFault",
    "WorkerTimeout",
    "reuse_large_buffers",
    "sign_batch_here",
]

log = logging.getLogger("sdquorum.node.cryptopool")

MIN_POOLED_ITEMS = 64
JOB_SECONDS = 30.0  # every job's allowance, before the per-item one
ITEM_SECONDS = {KeyType.RSA3072: 0.02}  # an RSA-3072 signature takes ~1.3 ms: 15 times that
OTHER_ITEM_SECONDS = 0.0005  # AES-GCM ~1 us, Ed25519 ~35 us an item
WIPE_IN_PLACE_BYTES = 1024 * 1024  # used areas larger than this are released, not zeroed
_ZEROS = memoryview(bytes(WIPE_IN_PLACE_BYTES))
WORKER_COMMAND = (sys.executable, "-P", "-m", "hsm_node.cryptopool")  # -P: not the working directory
PERMANENT_ERRNOS = frozenset({errno.EPERM, errno.EACCES, errno.ENOSYS})

ENCRYPT, SIGN = 1, 2
AAD_ONE, AAD_PER_ITEM = 0, 1
OK, USAGE, VERIFICATION, FAILED = 0, 1, 2, 3
_ERRORS: dict[int, type[SdquorumError]] = {USAGE: UsageError, VERIFICATION: VerificationError}
_JOB = struct.Struct("<BBB5xIIII")  # op, key type, AAD mode; key, item, data and AAD byte counts
_RESULT = struct.Struct("<III")  # status, result bytes (or error message bytes), result items
_RESULT_AT = 32
_KEY_CAPACITY = 16 * 1024  # an RSA-3072 PKCS#8 key is ~1.8 KB
_MOST_RESULT_OVERHEAD = 512  # bytes a result item may exceed its input: RSA-3072 gives 384 for any input
_PAGE = mmap.PAGESIZE


class WorkerFault(Exception):  # a fault of the node, not an SdquorumError: INTERNAL to the caller
    """A worker failed a job in a way the caller cannot fix, and retrying would fail again."""


class WorkerTimeout(WorkerFault):
    """A job ran past its allowance; its worker was killed."""


def _page_up(n: int) -> int:
    return -(-n // _PAGE) * _PAGE


@dataclass(frozen=True, slots=True)
class Layout:
    """Where each part of a job sits in a worker's region, for messages of at most
    ``max_message_bytes`` and batches of at most ``max_items``. Every area starts on a page, so a
    large one can be handed back to the system whole."""

    max_message_bytes: int
    max_items: int

    key_at = _PAGE  # the first page holds the job and result headers

    @property
    def lengths_at(self) -> int:
        return _page_up(self.key_at + _KEY_CAPACITY)

    @property
    def aad_lengths_at(self) -> int:
        return _page_up(self.lengths_at + 4 * self.max_items)

    @property
    def result_lengths_at(self) -> int:
        return _page_up(self.aad_lengths_at + 4 * self.max_items)

    @property
    def data_at(self) -> int:
        """The items, then the per-item AADs (or the one AAD): both came in one message."""
        return _page_up(self.result_lengths_at + 4 * self.max_items)

    @property
    def result_at(self) -> int:
        return _page_up(self.data_at + self.max_message_bytes)

    @property
    def most_result_bytes(self) -> int:
        return self.max_message_bytes + _MOST_RESULT_OVERHEAD * self.max_items

    @property
    def size(self) -> int:
        return _page_up(self.result_at + self.most_result_bytes)

    def fits(self, key: bytes, items: Packed, aad: bytes | Packed) -> bool:
        return (
            len(key) <= _KEY_CAPACITY
            and len(items) <= self.max_items
            and len(items.data) + _aad_bytes(aad) <= self.max_message_bytes
        )


def _aad_bytes(aad: bytes | Packed) -> int:
    return len(aad.data) if isinstance(aad, Packed) else len(aad)


def _u32(values: Sequence[int]) -> bytes:
    return array("I", values).tobytes()


def _from_u32(data: bytes) -> list[int]:
    a = array("I")
    a.frombytes(data)
    return a.tolist()


def _clear(r: mmap.mmap, at: int, n: int, *, secret: bool) -> None:
    """Hand a large area's pages back (zeroing them); zero a small one only if it is ``secret``."""
    if n > WIPE_IN_PLACE_BYTES:
        try:
            r.madvise(mmap.MADV_REMOVE, at, _page_up(n))
            return
        except (AttributeError, OSError):  # no hole punching here: zero it instead
            pass
    if secret:
        for start in range(at, at + n, WIPE_IN_PLACE_BYTES):
            end = min(start + WIPE_IN_PLACE_BYTES, at + n)
            r[start:end] = _ZEROS[: end - start]


class _Worker:
    """One worker process, its region and its two pipes; one job at a time."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.closed = self.lost = self.overdue = False
        self.jobs_done = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.region: mmap.mmap | None = None
        self._answer: asyncio.Future[None] | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._allowance = 0.0
        self._mine: list[int] = []  # descriptors this side keeps, closed once by shut()
        child: list[int] = []  # the worker's ends, closed here once it has them
        try:
            region_fd = os.memfd_create("sdquorum-crypto", os.MFD_CLOEXEC)
            self._mine.append(region_fd)
            os.ftruncate(region_fd, layout.size)  # pages are allocated only when first written
            self.region = mmap.mmap(region_fd, layout.size)
            jobs_r, self._jobs = os.pipe()
            child.append(jobs_r)
            self._mine.append(self._jobs)
            self._done, done_w = os.pipe()
            self._mine.append(self._done)
            child.append(done_w)
            self.proc = subprocess.Popen(
                [
                    *WORKER_COMMAND,
                    *(
                        str(v)
                        for v in (region_fd, jobs_r, done_w, layout.max_message_bytes, layout.max_items)
                    ),
                ],
                pass_fds=(region_fd, jobs_r, done_w),
                stdin=subprocess.DEVNULL,
                cwd="/",
            )
            os.set_blocking(self._done, False)
            asyncio.get_running_loop().add_reader(self._done, self._on_done)
        except BaseException:
            self.shut()
            self.reap()
            raise
        finally:
            for fd in child:
                os.close(fd)

    def _on_done(self) -> None:
        try:
            got = os.read(self._done, 1)
        except BlockingIOError:
            return
        except OSError:
            got = b""
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if not got:  # end of file: the worker has exited
            self.lost = True
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._done)
        answer, self._answer = self._answer, None
        if answer is None or answer.done():
            return
        if got:
            self.jobs_done += 1
            answer.set_result(None)
        elif self.overdue:
            answer.set_exception(
                WorkerTimeout(f"a crypto worker ran one batch for over {self._allowance:g} s and was stopped")
            )
        else:
            answer.set_exception(
                TransportError("a crypto worker process stopped during the call: nothing was done, retry it")
            )

    def _stop_overdue(self) -> None:
        self._watchdog = None
        self.overdue = True
        log.error("a crypto worker ran one job for over %g s: stopping it", self._allowance)
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()

    def start(
        self, op: int, kind: KeyType, key: bytes, items: Packed, aad: bytes | Packed, allowance: float
    ) -> asyncio.Future[None]:
        """Write the job into the region and ring the doorbell; the future resolves when it is done."""
        lay, r = self.layout, self.region
        if r is None or self.closed:
            raise TransportError("a crypto worker has stopped: nothing was done, retry the call")
        aad_data = aad.data if isinstance(aad, Packed) else aad
        r[: _JOB.size] = _JOB.pack(
            op,
            kind,
            AAD_PER_ITEM if isinstance(aad, Packed) else AAD_ONE,
            len(key),
            len(items),
            len(items.data),
            len(aad_data),
        )
        r[lay.key_at : lay.key_at + len(key)] = key
        r[lay.lengths_at : lay.lengths_at + 4 * len(items)] = _u32(items.lengths)
        if isinstance(aad, Packed):
            r[lay.aad_lengths_at : lay.aad_lengths_at + 4 * len(aad)] = _u32(aad.lengths)
        r[lay.data_at : lay.data_at + len(items.data)] = items.data
        at = lay.data_at + len(items.data)
        r[at : at + len(aad_data)] = aad_data
        loop = asyncio.get_running_loop()
        self._answer = answer = loop.create_future()
        self._allowance = allowance
        self._watchdog = loop.call_later(allowance, self._stop_overdue)
        try:
            os.write(self._jobs, b"\x01")
        except OSError:
            self.lost = True
            self._watchdog.cancel()
            self._answer = None
            raise TransportError("a crypto worker has stopped: nothing was done, retry the call") from None
        return answer

    def result(self, key_len: int, items: int, used: int) -> Packed:
        """The job's results, one per item of its ``items``, or the error it raised; the region is
        wiped first (:meth:`wipe`), whatever the outcome."""
        r, lay = self.region, self.layout
        if r is None or self.closed:
            raise TransportError("a crypto worker has stopped: nothing was done, retry the call")
        status, size, count = _RESULT.unpack_from(r, _RESULT_AT)
        size, count = min(size, lay.most_result_bytes), min(count, lay.max_items)
        data = r[lay.result_at : lay.result_at + size]
        lengths = _from_u32(r[lay.result_lengths_at : lay.result_lengths_at + 4 * count])
        self.wipe(key_len, used, size)
        if status == OK:
            if count != items or sum(lengths) != len(data):
                raise WorkerFault(
                    "a crypto worker's results do not match the job: the call was not completed"
                )
            return Packed(data, lengths)
        error = _ERRORS.get(status)
        if error is None:
            raise WorkerFault("a crypto worker could not run the batch: see the node log")
        raise error(data.decode("utf-8", "replace"))

    def wipe(self, key_len: int, used: int, result_bytes: int | None = None) -> None:
        """Zero the key and the items (``used`` bytes) in the region. The results (ciphertexts,
        signatures, or an error's message) are no secret and stay, unless large: an area over
        :data:`WIPE_IN_PLACE_BYTES`, items or results, has its pages handed back to the system
        (MADV_REMOVE, which zeroes them too), so a large batch leaves nothing resident."""
        r, lay = self.region, self.layout
        if r is None or self.closed:
            return
        if result_bytes is None:
            result_bytes = min(_RESULT.unpack_from(r, _RESULT_AT)[1], lay.most_result_bytes)
        r[lay.key_at : lay.key_at + key_len] = _ZEROS[:key_len]
        _clear(r, lay.data_at, used, secret=True)
        _clear(r, lay.result_at, result_bytes, secret=False)

    def shut(self) -> None:
        """Close this side's descriptors and the region, once; a job in hand fails. The worker sees
        its doorbell pipe close and exits once it is idle."""
        if self.closed:
            return
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(TransportError("the node is stopping: the call was not completed"))
        self._answer = None
        if len(self._mine) == 3:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._done)
        for fd in self._mine:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._mine = []
        if self.region is not None:
            with contextlib.suppress(BufferError, ValueError):
                self.region.close()

    def reap(self) -> None:
        """Kill the process if it still runs, and collect it (no zombie)."""
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait()

    def exited_at_start(self) -> str | None:
        """Why the worker ended before finishing any job, if it ended by itself (an import error, a
        sandbox killing it): a reason that will not change, so the pool turns off."""
        if self.jobs_done or self.overdue or self.proc is None:
            return None
        try:
            code = self.proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            return None
        if code > 0 or code == -signal.SIGSYS:
            return f"the worker exited with status {code} before its first job"
        return None


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


# ---------------------------------------------------------------------------------- the worker side


def _answer_job(region: mmap.mmap, layout: Layout) -> None:
    """Run the job in the region and write its results, or its error, back. Everything it read
    (key, items, results) is a local of this call: gone when it returns."""
    try:
        op, kind_value, aad_mode, key_len, n, data_len, aad_len = _JOB.unpack_from(region, 0)
        if key_len > _KEY_CAPACITY or n > layout.max_items or data_len + aad_len > layout.max_message_bytes:
            raise ValueError("job out of bounds")
        kind = KeyType(kind_value)
        key = region[layout.key_at : layout.key_at + key_len]
        items = Packed(
            region[layout.data_at : layout.data_at + data_len],
            _from_u32(region[layout.lengths_at : layout.lengths_at + 4 * n]),
        )
        at = layout.data_at + data_len
        aad_data = region[at : at + aad_len]
        aad: bytes | Packed = aad_data
        if aad_mode == AAD_PER_ITEM:
            aad = Packed(aad_data, _from_u32(region[layout.aad_lengths_at : layout.aad_lengths_at + 4 * n]))
        if op == ENCRYPT:
            out = keyops.encrypt_batch(kind, key, items, aad)
        elif op == SIGN:
            out = keyops.sign_batch(kind, key, items)
        else:
            raise ValueError("unknown operation")
        if len(out.data) > layout.most_result_bytes or len(out) > layout.max_items:
            raise ValueError("result out of bounds")
        region[layout.result_at : layout.result_at + len(out.data)] = out.data
        at = layout.result_lengths_at
        region[at : at + 4 * len(out)] = _u32(out.lengths)
        _RESULT.pack_into(region, _RESULT_AT, OK, len(out.data), len(out))
    except (UsageError, VerificationError) as e:
        message = str(e).encode()[:4096]
        region[layout.result_at : layout.result_at + len(message)] = message
        status = USAGE if isinstance(e, UsageError) else VERIFICATION
        _RESULT.pack_into(region, _RESULT_AT, status, len(message), 0)
    except Exception as e:  # the node logs that the call failed; the type names the cause
        print(f"sdquorum crypto worker: a job failed ({type(e).__name__})", file=sys.stderr, flush=True)
        _RESULT.pack_into(region, _RESULT_AT, FAILED, 0, 0)


async def sign_batch_here(kind: KeyType, key: bytes, messages: Packed) -> Packed:
    """A signing batch in this process: an RSA one (~1.3 ms a signature; cryptography releases the
    GIL while it signs) in a thread, so the event loop goes on serving; any other on the loop."""
    if kind is KeyType.RSA3072:
        return await asyncio.to_thread(keyops.sign_batch, kind, key, messages)
    return keyops.sign_batch(kind, key, messages)


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters (malloc.h)


def reuse_large_buffers(mmap_below: int = 32 * 1024 * 1024, keep_free: int = 64 * 1024 * 1024) -> bool:
    """Let glibc's malloc serve the data plane's large buffers (a batch's items and results, a few
    hundred KB each, several per call) from memory it already holds. By default a buffer over
    ~128 KB is mapped fresh from the kernel and unmapped on free, and the heap's free top is handed
    back as soon as it exceeds twice that, so every call paid page faults for every buffer: about
    half the CPU of a 1000-item AES batch. Buffers below ``mmap_below`` now come from the heap, and
    up to ``keep_free`` bytes of freed heap stay mapped. False where there is no glibc (nothing
    changes there)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, mmap_below)) and bool(mallopt(M_TRIM_THRESHOLD, keep_free))


def _no_core_dumps() -> None:
    """A crash must not write key material to disk. The systemd unit (LimitCORE=0) does this for the
    node and so for its workers already; its seccomp filter refuses the call (EPERM), hence the
    suppress: the worker is then exactly as covered as the node itself."""
    with contextlib.suppress(OSError, ValueError):
        if resource.getrlimit(resource.RLIMIT_CORE) != (0, 0):
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def main(argv: list[str]) -> int:
    fd, jobs, done, max_message_bytes, max_items = (int(a) for a in argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C drains the node, which then ends the workers
    _no_core_dumps()
    reuse_large_buffers()
    layout = Layout(max_message_bytes, max_items)
    region = mmap.mmap(fd, layout.size)
    with contextlib.suppress(BrokenPipeError):
        while os.read(jobs, 1):  # until the node closes the doorbell pipe
            _answer_job(region, layout)
            os.write(done, b"\x01")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
