"""The node's side of one worker process: its region, its two pipes, its job in hand and its watchdog.

Invariants: one job at a time; a job's answer is checked (one result per item, lengths that add
up) before any of it is returned; a job past its allowance kills the worker; every descriptor the
node keeps is closed once, by :meth:`_Worker.shut`, and the process is always reaped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mmap
import os
import signal
import subprocess
import sys

from hsm_node.cryptopool._layout import (
    _ERRORS,
    _JOB,
    _RESULT,
    _RESULT_AT,
    _ZEROS,
    AAD_ONE,
    AAD_PER_ITEM,
    FAILED,
    OK,
    Layout,
    _clear,
    _from_u32,
    _u32,
)
from hsm_node.keyops import KeyType
from sdquorum.errors import TransportError
from sdquorum_rpc.packed import Packed

log = logging.getLogger("sdquorum.node.cryptopool")
WORKER_COMMAND = (sys.executable, "-P", "-m", "hsm_node.cryptopool")  # -P: not the working directory


class WorkerFault(Exception):  # a fault of the node, not an SdquorumError: INTERNAL to the caller
    """A worker failed a job in a way the caller cannot fix, and retrying would fail again."""


class WorkerTimeout(WorkerFault):
    """A job ran past its allowance; its worker was killed."""


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
            cause = data.decode("ascii", "replace") if status == FAILED else f"status {status}"
            log.error("a crypto worker could not run a batch (%s)", cause[:200])
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
