"""The node's download streams: bytes cut into CHUNK_BYTES pieces, in order, made on first read."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from hsm_node.wire import CHUNK_BYTES, chunked, chunks
from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2 as pb


@pytest.mark.parametrize(
    ("size", "pieces"),
    [(0, []), (1, [1]), (CHUNK_BYTES, [CHUNK_BYTES]), (2 * CHUNK_BYTES + 5, [CHUNK_BYTES, CHUNK_BYTES, 5])],
)
def test_chunks_cut_data_in_order_at_the_wire_limit(size: int, pieces: list[int]) -> None:
    data = bytes(i % 251 for i in range(size))
    got = list(chunks(data))
    assert [len(c) for c in got] == pieces
    assert b"".join(got) == data


async def _collect(stream: AsyncIterator[Any]) -> list[Any]:
    return [item async for item in stream]


async def test_a_chunked_method_streams_its_bytes_as_messages() -> None:
    data = b"a" * CHUNK_BYTES + b"bc"

    @chunked(pb.AuditChunk)
    async def export(request: object) -> bytes:
        return data

    got = await _collect(export(object()))
    assert all(isinstance(m, pb.AuditChunk) for m in got)
    assert [m.data for m in got] == [b"a" * CHUNK_BYTES, b"bc"]


async def test_a_chunked_method_runs_and_fails_when_the_stream_is_read() -> None:
    calls: list[str] = []

    @chunked(pb.BackupChunk)
    async def backup() -> bytes:
        calls.append("made")
        raise RuntimeError("store unreadable")

    stream = backup()
    assert calls == []  # nothing made until the first read, as an async generator servicer
    with pytest.raises(RuntimeError, match="store unreadable"):
        await _collect(stream)
    assert calls == ["made"]
