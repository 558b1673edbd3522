"""Failover over the members of an HSM pool: which member a call goes to, and when one is tried again.

A client given several members (``NodeClient("a:1,b:2,c:3")``) sends each ``node`` and ``keys`` call
to the next member, round-robin, that is not *resting*. A member rests for ``retry_interval``
seconds from the moment a call to it failed with UNAVAILABLE (down, restarting, cut off from etcd):
meanwhile calls go to the others at once; after the interval it has its turn again, and a call that
finds it still down starts a new rest.

Invariants:

* A call that is not idempotent (not in :data:`IDEMPOTENT`) is sent at most once. Passing over a
  resting member happens before anything is sent, so it is done for every call; once sent, a
  non-idempotent call that fails with UNAVAILABLE is reported, never repeated (it may have been
  applied).
* An idempotent call that fails with UNAVAILABLE is sent at once to the next member not resting.
* When every member rests, a call (idempotent or not) waits for the first rest to end and tries
  that member, until the call's deadline: its ``timeout`` if it gives one (each attempt then gets
  what remains of it), else ``retry_timeout``. A call that cannot be tried before its deadline
  fails then with one UNAVAILABLE line naming the members, the interval and the last failure.
* Any other status ends the call as it came: the member answered, so it is not resting.
* Only unary calls fail over (every call of ``Node`` and ``Keys`` is one); a streaming method
  would go to the first member listed, as the ``admin`` and ``custodian`` calls do.
* The state is per client object and touched only from its event loop (grpc.aio objects belong to
  one loop), so it needs no lock.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import grpc.aio

from sdquorum.errors import UsageError

__all__ = ["DEFAULT_RETRY_INTERVAL", "DEFAULT_RETRY_TIMEOUT", "IDEMPOTENT", "FailoverStub", "Members"]

IDEMPOTENT = frozenset(
    {
        "GetStatus", "ListKeys", "ListDeletedKeys", "Encrypt", "Decrypt", "Sign", "Verify", "EncryptBatch",
        "SignBatch", "GetPoolStatus", "GetCustodyState",
    }
)  # fmt: skip
DEFAULT_RETRY_INTERVAL = 1.0  # seconds a member that failed with UNAVAILABLE is passed over
DEFAULT_RETRY_TIMEOUT = 10.0  # seconds a call without a timeout waits while every member rests
MAX_RETRY_INTERVAL = 300.0


def check_retry(retry_interval: float, retry_timeout: float) -> None:
    """UsageError naming the setting and the fix for a value no client can work with."""
    if not 0 < retry_interval <= MAX_RETRY_INTERVAL:
        raise UsageError(
            f"retry interval {retry_interval:g} s: use more than 0 and at most {MAX_RETRY_INTERVAL:g} "
            "seconds (sdctl: --retry-interval, SDCTL_RETRY_INTERVAL or sdctl.retry_interval)"
        )
    if not 0 <= retry_timeout <= 24 * 3600:
        raise UsageError(
            f"retry timeout {retry_timeout:g} s: use 0 to 86400 seconds (sdctl: --retry-timeout, "
            "SDCTL_RETRY_TIMEOUT or sdctl.retry_timeout)"
        )


class Members:
    """The round-robin turn and each member's rest (module docstring)."""

    def __init__(
        self,
        targets: Sequence[str],
        retry_interval: float = DEFAULT_RETRY_INTERVAL,
        retry_timeout: float = DEFAULT_RETRY_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        check_retry(retry_interval, retry_timeout)
        self.targets = list(targets)
        self.retry_interval = retry_interval
        self.retry_timeout = retry_timeout
        self.clock = clock
        self._rest_until = [0.0] * len(self.targets)
        self._turn = -1

    def pick(self) -> int | None:
        """The next member in turn that is not resting, or None when every member rests."""
        now = self.clock()
        n = len(self._rest_until)
        for step in range(1, n + 1):
            i = (self._turn + step) % n
            if self._rest_until[i] <= now:
                self._turn = i
                return i
        return None

    def rest(self, i: int) -> None:
        """Member ``i`` failed with UNAVAILABLE: pass it over for ``retry_interval`` seconds."""
        self._rest_until[i] = self.clock() + self.retry_interval

    def first_back(self) -> tuple[int, float]:
        """The member whose rest ends first, and when."""
        i = min(range(len(self._rest_until)), key=self._rest_until.__getitem__)
        return i, self._rest_until[i]


class _Unary:
    """One unary method over every member (module docstring)."""

    def __init__(self, method: str, calls: list[Any], members: Members) -> None:
        self._method = method
        self._calls = calls
        self._members = members
        self._idempotent = method in IDEMPOTENT

    async def __call__(self, request: Any, *, timeout: float | None = None, **kwargs: Any) -> Any:
        members = self._members
        wait = members.retry_timeout if timeout is None else timeout
        deadline = members.clock() + wait
        last: grpc.aio.AioRpcError | None = None
        while True:
            i = members.pick()
            if i is None:
                i, back = members.first_back()
                if back > deadline:
                    raise self._gave_up(wait, last)
                await asyncio.sleep(max(0.0, back - members.clock()))
            if timeout is not None:
                left = deadline - members.clock()
                if left <= 0:
                    raise self._gave_up(wait, last)
                kwargs["timeout"] = left
            try:
                return await self._calls[i](request, **kwargs)
            except grpc.aio.AioRpcError as e:
                if e.code() is not grpc.StatusCode.UNAVAILABLE:
                    raise
                members.rest(i)
                if not self._idempotent:
                    raise  # it may have been applied: reported, never sent again
                last = e

    def _gave_up(self, wait: float, last: grpc.aio.AioRpcError | None) -> grpc.aio.AioRpcError:
        members = self._members
        why = " ".join((last.details() or "").split()) if last is not None else "every member was resting"
        return grpc.aio.AioRpcError(
            grpc.StatusCode.UNAVAILABLE,
            grpc.aio.Metadata(),
            grpc.aio.Metadata(),
            details=(
                f"no pool member answered {self._method} within {wait:g} s, each tried again every "
                f"{members.retry_interval:g} s (last: {why})"
            ),
            debug_error_string=None,
        )


class FailoverStub:
    """A service's stub over several members: each method is built once, at its first use, and kept
    (a call makes no lists or closures of its own)."""

    def __init__(self, stubs: list[Any], members: Members) -> None:
        self._stubs = stubs
        self._members = members

    def __getattr__(self, method: str) -> Any:
        if method.startswith("_"):
            raise AttributeError(method)
        calls = [getattr(stub, method) for stub in self._stubs]
        built: Any = calls[0]  # a stream: on the first member (module docstring)
        if isinstance(calls[0], grpc.aio.UnaryUnaryMultiCallable):
            built = _Unary(method, calls, self._members)
        setattr(self, method, built)  # found in __dict__ from now on: __getattr__ is not called again
        return built
