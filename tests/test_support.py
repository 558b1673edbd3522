"""The shared test helpers (tests/support.py) do what the copies they replace did."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
from support import drbg, wait_for


def test_drbg_is_sha256_in_counter_mode_and_an_int_seed_is_its_8_bytes() -> None:
    expected = b"".join(hashlib.sha256(b"seed" + i.to_bytes(8, "big")).digest() for i in range(3))
    rng = drbg(b"seed")
    assert rng(5) + rng(40) + rng(51) == expected  # draws continue where the last one stopped
    assert drbg(7)(64) == drbg((7).to_bytes(8, "big"))(64)
    assert drbg(7)(32) != drbg(8)(32)


async def test_wait_for_takes_sync_and_async_predicates() -> None:
    ticks: list[int] = []

    def tick() -> bool:
        ticks.append(1)
        return len(ticks) >= 3

    await wait_for(tick, timeout=5, interval=0.001)

    async def ready() -> bool:
        await asyncio.sleep(0)
        return True

    await wait_for(ready, timeout=5)
    assert len(ticks) == 3


async def test_wait_for_names_what_it_waited_for() -> None:
    with pytest.raises(TimeoutError, match=r"waited 0\.05 s for the agents to connect in vain"):
        await wait_for(lambda: False, timeout=0.05, interval=0.01, what="the agents to connect")
