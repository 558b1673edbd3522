"""Helpers shared by tests of every package (imported as ``support``; ``tests/`` is on sys.path).

Light on purpose: no grpc, no node, no agent, so a core test imports it for free.

* :func:`drbg`: a deterministic rng (SHA-256 in counter mode over a seed): the same seed gives the
  same bytes, in any process, so a failing case replays exactly.
* :func:`wait_for`: poll a condition until it holds, failing after a deadline instead of hanging.

No helper hands out a "free port": a port found by binding and closing a socket can be taken by
another process before its user binds it again. Start servers on port 0 and read the port they
report (``NodeProcess`` reads its port file, ``NodeMetrics.serve`` returns it).
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
from collections.abc import Awaitable, Callable

__all__ = ["Rng", "drbg", "wait_for"]

Rng = Callable[[int], bytes]


def drbg(seed: bytes | int) -> Rng:
    """Deterministic rng: SHA-256 in counter mode over ``seed`` (an int seed is its 8 big-endian bytes)."""
    key = seed.to_bytes(8, "big") if isinstance(seed, int) else seed
    buffer = b""
    counter = 0

    def rng(k: int) -> bytes:
        nonlocal buffer, counter
        while len(buffer) < k:
            buffer += hashlib.sha256(key + counter.to_bytes(8, "big")).digest()
            counter += 1
        out, buffer = buffer[:k], buffer[k:]
        return out

    return rng


async def wait_for(
    predicate: Callable[[], bool | Awaitable[bool]],
    timeout: float = 20.0,
    interval: float = 0.05,
    what: str = "",
) -> None:
    """Return once ``predicate()`` (sync or async) is true; TimeoutError naming ``what`` after ``timeout``."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                done = predicate()
                if inspect.isawaitable(done):
                    done = await done
                if done:
                    return
                await asyncio.sleep(interval)
    except TimeoutError as e:
        raise TimeoutError(f"waited {timeout:g} s{' for ' + what if what else ''} in vain") from e
