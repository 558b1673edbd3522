"""Data-plane batches in worker processes, off the thread that runs the node's gRPC server.

Why processes: ``hsm-node`` serves gRPC from one asyncio thread, and that thread does the
transport's own work too (TLS, HTTP/2, copying messages). ``cryptography`` holds the GIL while it
seals a short AES-GCM item, so a batch of 1000 items kept that thread busy for about a millisecond
of each call's 2.5 and no other thread could help. A worker process has a GIL of its own: while it
seals one batch the server goes on receiving, parsing and answering the others.

What a worker knows: only the job in hand. For each job the node writes the key material (already
opened from the key store, as for an in-process call), the items and their lengths into a shared
memory region of that worker's (``memfd_create``: anonymous memory, no file system name, mapped by
the node and that one worker only), rings the worker's doorbell (one byte on a pipe) and waits for
the answer's byte. The worker runs the very functions an in-process call runs
(:func:`hsm_node.keyops.encrypt_batch`, :func:`~hsm_node.keyops.sign_batch`), writes the results
back and the node zeroes the key material in the region before the worker takes another job. A
worker never touches the key store, the data encryption key, TLS or a client: it can be told to do
nothing but seal or sign these items with this key.

Failure: a worker that dies (its doorbell pipe closes) fails the job in hand with
:class:`~sdquorum.errors.TransportError` (UNAVAILABLE to the caller: nothing was returned, retry)
and is replaced on the next job; so does a job still running after :data:`JOB_SECONDS` (its worker
is killed). A call cancelled while its job runs leaves the worker busy until the job ends, so no
later job can read its results. When the node stops, closing the pipes ends the
workers; a worker whose parent dies sees the same end of file and exits.

Small batches stay on the server's thread (below :data:`MIN_POOLED_ITEMS` items the pipe round trip
costs more than it saves), except RSA batches, which are slow per item.
"""

from __future__ import annotations

import asyncio
import contextlib
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

__all__ = ["MIN_POOLED_ITEMS", "CryptoPool", "Layout"]

log = logging.getLogger("sdquorum.node.cryptopool")

MIN_POOLED_ITEMS = 64
JOB_SECONDS = 60.0  # a job still running after this is stopped (1000 RSA-3072 signatures take ~1.5 s)
ENCRYPT, SIGN = 1, 2
AAD_ONE, AAD_PER_ITEM = 0, 1
OK, USAGE, VERIFICATION, FAILED = 0, 1, 2, 3
_ERRORS: dict[int, type[SdquorumError]] = {USAGE: UsageError, VERIFICATION: VerificationError}
_JOB = struct.Struct("<BBB5xIIII")  # op, key type, AAD mode; key, item, data and AAD byte counts
_RESULT = struct.Struct("<III")  # status, result bytes (or error message bytes), result items
_RESULT_AT = 32
_KEY_AT = 64
_KEY_CAPACITY = 16 * 1024  # an RSA-3072 PKCS#8 key is ~1.8 KB
_MOST_RESULT_OVERHEAD = 512  # bytes a result item may exceed its input: RSA-3072 gives 384 for any input


@dataclass(frozen=True, slots=True)
class Layout:
    """Where each part of a job sits in a worker's region, for messages of at most
    ``max_message_bytes`` and batches of at most ``max_items``."""

    max_message_bytes: int
    max_items: int

    @property
    def lengths_at(self) -> int:
        return _KEY_AT + _KEY_CAPACITY

    @property
    def aad_lengths_at(self) -> int:
        return self.lengths_at + 4 * self.max_items

    @property
    def result_lengths_at(self) -> int:
        return self.aad_lengths_at + 4 * self.max_items

    @property
    def data_at(self) -> int:
        """The items, then the per-item AADs (or the one AAD): both came in one message."""
        return self.result_lengths_at + 4 * self.max_items

    @property
    def result_at(self) -> int:
        return self.data_at + self.max_message_bytes

    @property
    def size(self) -> int:
        return self.result_at + self.max_message_bytes + _MOST_RESULT_OVERHEAD * self.max_items

    def fits(self, key: bytes, items: Packed, aad: bytes | Packed) -> bool:
        aad_bytes = len(aad.data) if isinstance(aad, Packed) else len(aad)
        return (
            len(key) <= _KEY_CAPACITY
            and len(items) <= self.max_items
            and len(items.data) + aad_bytes <= self.max_message_bytes
        )


def _u32(values: Sequence[int]) -> bytes:
    return array("I", values).tobytes()


def _from_u32(data: bytes) -> list[int]:
    a = array("I")
    a.frombytes(data)
    return a.tolist()


class _Worker:
    """One worker process, its region and its two pipes; one job at a time."""

    def __init__(self, layout: Layout, job_seconds: float = JOB_SECONDS) -> None:
        self.layout = layout
        self.job_seconds = job_seconds
        self._watchdog: asyncio.TimerHandle | None = None
        self.overdue = False
        self._fd = os.memfd_create("sdquorum-crypto", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self._fd, layout.size)  # pages are allocated only when first written
            self.region = mmap.mmap(self._fd, layout.size)
        except BaseException:
            os.close(self._fd)
            raise
        jobs_r, self._jobs = os.pipe()
        self._done, done_w = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "hsm_node.cryptopool",
                    str(self._fd),
                    str(jobs_r),
                    str(done_w),
                    str(layout.max_message_bytes),
                    str(layout.max_items),
                ],
                pass_fds=(self._fd, jobs_r, done_w),
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            self._close_fds()
            raise
        finally:
            os.close(jobs_r)
            os.close(done_w)
        os.set_blocking(self._done, False)
        self._answer: asyncio.Future[None] | None = None
        self.lost = False
        asyncio.get_running_loop().add_reader(self._done, self._on_done)

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
            asyncio.get_running_loop().remove_reader(self._done)
        answer, self._answer = self._answer, None
        if answer is not None and not answer.done():
            if got:
                answer.set_result(None)
            elif self.overdue:
                answer.set_exception(
                    TransportError(
                        f"a crypto worker did not finish the batch in {self.job_seconds:g} s and was "
                        "stopped: nothing was done, retry it"
                    )
                )
            else:
                answer.set_exception(
                    TransportError(
                        "a crypto worker process stopped during the call: nothing was done, retry it"
                    )
                )

    def _stop_overdue(self) -> None:
        """A job has run past its time (:data:`JOB_SECONDS`): the worker is hung or starved. Kill it;
        its end of file fails the job, and a cancelled call's worker does not stay busy for ever."""
        self._watchdog = None
        self.overdue = True
        log.error("a crypto worker ran one job for over %g s: stopping it", self.job_seconds)
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()

    def start(
        self, op: int, kind: KeyType, key: bytes, items: Packed, aad: bytes | Packed
    ) -> asyncio.Future[None]:
        """Write the job into the region and ring the doorbell; the future resolves when it is done."""
        lay, r = self.layout, self.region
        per_item = isinstance(aad, Packed)
        aad_data = aad.data if isinstance(aad, Packed) else aad
        r[: _JOB.size] = _JOB.pack(
            op,
            kind,
            AAD_PER_ITEM if per_item else AAD_ONE,
            len(key),
            len(items),
            len(items.data),
            len(aad_data),
        )
        r[_KEY_AT : _KEY_AT + len(key)] = key
        r[lay.lengths_at : lay.lengths_at + 4 * len(items)] = _u32(items.lengths)
        if isinstance(aad, Packed):
            r[lay.aad_lengths_at : lay.aad_lengths_at + 4 * len(aad)] = _u32(aad.lengths)
        r[lay.data_at : lay.data_at + len(items.data)] = items.data
        at = lay.data_at + len(items.data)
        r[at : at + len(aad_data)] = aad_data
        loop = asyncio.get_running_loop()
        self._answer = answer = loop.create_future()
        self._watchdog = loop.call_later(self.job_seconds, self._stop_overdue)
        try:
            os.write(self._jobs, b"\x01")
        except OSError:
            self.lost = True
            self._answer = None
            self._watchdog.cancel()
            raise TransportError(
                "a crypto worker process has stopped: nothing was done, retry the call"
            ) from None
        return answer

    def result(self, key_len: int, items: int) -> Packed:
        """The job's results, one per item of its ``items``; an error the job raised, raised again
        here. The key is wiped first."""
        lay, r = self.layout, self.region
        r[_KEY_AT : _KEY_AT + key_len] = bytes(key_len)
        status, size, count = _RESULT.unpack_from(r, _RESULT_AT)
        if size > lay.max_message_bytes + _MOST_RESULT_OVERHEAD * lay.max_items or count > lay.max_items:
            raise TransportError("a crypto worker answered out of bounds: the call was not completed")
        data = r[lay.result_at : lay.result_at + size]
        if status == OK:
            lengths = _from_u32(r[lay.result_lengths_at : lay.result_lengths_at + 4 * count])
            if count != items or sum(lengths) != size:
                raise TransportError(
                    "a crypto worker's results do not match the job: the call was not completed"
                )
            return Packed(data, lengths)
        error = _ERRORS.get(status)
        if error is None:
            raise TransportError("a crypto worker failed the call: see the node log; retry it")
        raise error(data.decode("utf-8", "replace"))

    def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self._done)
        self._close_fds()
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(TransportError("the node is stopping: the call was not completed"))
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.region.close()

    def _close_fds(self) -> None:
        for fd in (self._jobs, self._done, self._fd):
            with contextlib.suppress(OSError):
                os.close(fd)


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
    ) -> None:
        if not 1 <= workers <= 64:
            raise UsageError(f"node.crypto_workers = {workers}: use 0 (off) or 1..64")
        self.layout = Layout(max_message_bytes, max_items)
        self.min_items = min_items
        self.job_seconds = job_seconds
        self._capacity = workers
        self._workers: list[_Worker] = []
        self._idle: asyncio.Queue[_Worker] | None = None
        self._closed = False
        self.unavailable = ""  # why no worker can be started (a sandbox refusing memfd_create, say)

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
        return [w.proc.pid for w in self._workers]

    async def _take(self) -> _Worker:
        if self._closed:
            raise StateError("the node is stopping: the call was not completed")
        if self._idle is None:
            self._idle = asyncio.Queue()
        if self._idle.empty() and len(self._workers) < self._capacity:
            return self._spawn()
        worker = await self._idle.get()
        if worker.lost or worker.proc.poll() is not None:  # it died while idle: replace it
            self._drop(worker)
            return self._spawn()
        return worker

    def _spawn(self) -> _Worker:
        try:
            worker = _Worker(self.layout, self.job_seconds)
        except OSError as e:
            self.unavailable = f"{e.strerror or e}"
            log.error(
                "cannot start a crypto worker (%s): batches run on the server's thread from now on; "
                "allow memfd_create and process creation, or set node.crypto_workers = 0",
                self.unavailable,
            )
            raise
        self._workers.append(worker)
        return worker

    def _give_back(self, worker: _Worker) -> None:
        if worker.lost or self._closed:
            self._drop(worker)
        elif self._idle is not None:
            self._idle.put_nowait(worker)

    def _drop(self, worker: _Worker) -> None:
        if worker in self._workers:
            self._workers.remove(worker)
        worker.close()

    async def _run(self, op: int, kind: KeyType, key: bytes, items: Packed, aad: bytes | Packed) -> Packed:
        try:
            worker = await self._take()
        except OSError:  # no worker could be started (logged): the batch runs here, as without a pool
            if op == ENCRYPT:
                return keyops.encrypt_batch(kind, key, items, aad)
            return keyops.sign_batch(kind, key, items)
        try:
            answer = worker.start(op, kind, key, items, aad)
        except BaseException:
            self._give_back(worker)
            raise
        try:
            await asyncio.shield(answer)
        except asyncio.CancelledError:
            # The worker goes on with the job: it is given back only when the job has ended, and the
            # key is wiped then, so no later job can read this one's results.
            def finished(_: asyncio.Future[None]) -> None:
                with contextlib.suppress(Exception):
                    worker.result(len(key), len(items))
                self._give_back(worker)

            answer.add_done_callback(finished)
            raise
        except BaseException:
            self._give_back(worker)
            raise
        try:
            return worker.result(len(key), len(items))
        finally:
            self._give_back(worker)

    async def close(self) -> None:
        """End every worker (each sees its doorbell pipe close and exits)."""
        self._closed = True
        for worker in list(self._workers):
            self._drop(worker)


# ---------------------------------------------------------------------------------- the worker side


def _serve_jobs(region: mmap.mmap, jobs: int, done: int, layout: Layout) -> None:
    """Run jobs until the node closes the doorbell pipe."""
    while os.read(jobs, 1):
        try:
            op, kind_value, aad_mode, key_len, n, data_len, aad_len = _JOB.unpack_from(region, 0)
            if (
                key_len > _KEY_CAPACITY
                or n > layout.max_items
                or data_len + aad_len > layout.max_message_bytes
            ):
                raise ValueError("job out of bounds")
            kind = KeyType(kind_value)
            key = region[_KEY_AT : _KEY_AT + key_len]
            items = Packed(
                region[layout.data_at : layout.data_at + data_len],
                _from_u32(region[layout.lengths_at : layout.lengths_at + 4 * n]),
            )
            at = layout.data_at + data_len
            aad_data = region[at : at + aad_len]
            aad: bytes | Packed = aad_data
            if aad_mode == AAD_PER_ITEM:
                aad = Packed(
                    aad_data, _from_u32(region[layout.aad_lengths_at : layout.aad_lengths_at + 4 * n])
                )
            if op == ENCRYPT:
                out = keyops.encrypt_batch(kind, key, items, aad)
            elif op == SIGN:
                out = keyops.sign_batch(kind, key, items)
            else:
                raise ValueError("unknown operation")
            del key
            if len(out.data) > layout.max_message_bytes + _MOST_RESULT_OVERHEAD * layout.max_items:
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
        os.write(done, b"\x01")


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
    layout = Layout(max_message_bytes, max_items)
    region = mmap.mmap(fd, layout.size)
    with contextlib.suppress(BrokenPipeError):
        _serve_jobs(region, jobs, done, layout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
