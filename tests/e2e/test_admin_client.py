"""The typed admin client's one chunking loop (issue 15: it was written seven times)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2 as pb
from sdquorum_rpc.admin._streams import CHUNK, _chunks, _join


async def _collect(data: bytes) -> list[pb.BackupChunk]:
    return [m async for m in _chunks(data, lambda part: pb.BackupChunk(data=part))]


@pytest.mark.parametrize(
    ("size", "messages"), [(0, 1), (1, 1), (CHUNK, 1), (CHUNK + 1, 2), (3 * CHUNK, 3), (3 * CHUNK + 7, 4)]
)
async def test_chunks_splits_at_chunk_and_sends_one_message_for_empty_data(size: int, messages: int) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    sent = await _collect(data)
    assert len(sent) == messages
    assert all(len(m.data) <= CHUNK for m in sent)
    assert b"".join(m.data for m in sent) == data


async def test_join_reassembles_in_order_and_shows_every_message() -> None:
    parts = [b"a" * CHUNK, b"b" * 3, b""]

    async def stream() -> AsyncIterator[pb.DownloadChunk]:
        for p in parts:
            yield pb.DownloadChunk(data=p, warnings=[f"w{len(p)}"])

    seen: list[str] = []
    assert await _join(stream(), lambda c: seen.extend(c.warnings)) == b"".join(parts)
    assert seen == [f"w{len(p)}" for p in parts]
