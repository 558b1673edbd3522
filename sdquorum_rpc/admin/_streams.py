"""What the admin clients share: stream chunking and the handle of a session the node opened.

Invariants:

* Streams are chunked in exactly one place: :func:`_chunks` splits what goes up into ``CHUNK``-sized
  messages (one empty message for empty data: the server always sees a first message), and
  :func:`_join` gathers what comes down. No client method writes a chunking loop.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any, NamedTuple, TypeVar

__all__ = ["CHUNK", "Started", "_chunks", "_join"]

CHUNK = 1024 * 1024  # one message of a stream: well under the 4 MiB default gRPC limit

_M = TypeVar("_M")


async def _chunks(data: bytes, make: Callable[[bytes], _M]) -> AsyncIterator[_M]:
    """``data`` as messages of at most ``CHUNK`` bytes; one (empty) message for empty data."""
    for i in range(0, max(len(data), 1), CHUNK):
        yield make(data[i : i + CHUNK])


async def _join(stream: AsyncIterable[Any], each: Callable[[Any], None] | None = None) -> bytes:
    """The ``data`` of every message of a download stream, in order; ``each`` sees every message."""
    out = bytearray()
    async for chunk in stream:
        out += chunk.data
        if each is not None:
            each(chunk)
    return bytes(out)


class Started(NamedTuple):
    """A ceremony session the node opened: its id and deadline (unix time)."""

    session_id: str
    expires_at: int
