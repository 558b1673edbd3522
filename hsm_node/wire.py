"""Conversions between the node's values and the wire messages, and the wire's limits."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

from coordinator import Ceremony, CeremonyStatus, CustodianRequest, CustodianStatus, SessionState
from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2 as pb
from sdquorum_rpc.convert import KIND_TO_PROTO

__all__ = [
    "CHUNK_BYTES",
    "MAX_BACKUP_BYTES",
    "MAX_BATCH_ITEMS",
    "STATE_TO_PROTO",
    "chunked",
    "chunks",
    "request_to_proto",
    "running_session",
    "status_to_proto",
]

CHUNK_BYTES = 1024 * 1024
MAX_BACKUP_BYTES = 1024 * 1024 * 1024
MAX_BATCH_ITEMS = 1000  # default of node.max_batch_items
M = TypeVar("M")

STATE_TO_PROTO = {
    "PROVISIONED": pb.PROVISIONED,
    "RECOVERY_PENDING": pb.RECOVERY_PENDING,
    "ACTIVATED": pb.ACTIVATED,
}
_SESSION = {
    SessionState.AWAITING_SD_FILE: pb.AWAITING_SD_FILE,
    SessionState.COLLECTING: pb.COLLECTING,
    SessionState.COMPLETED: pb.COMPLETED,
    SessionState.FAILED: pb.FAILED,
}
_CUSTODIAN = {
    CustodianStatus.NOT_CONNECTED: pb.NOT_CONNECTED,
    CustodianStatus.REQUESTED: pb.REQUESTED,
    CustodianStatus.ACCEPTED: pb.ACCEPTED,
    CustodianStatus.REJECTED: pb.REJECTED,
    CustodianStatus.DENIED: pb.DENIED,
    CustodianStatus.NOT_NEEDED: pb.NOT_NEEDED,
    CustodianStatus.UNREACHABLE: pb.UNREACHABLE,
}
_KIND = {**KIND_TO_PROTO, "domain-notice": pb.DOMAIN_NOTICE}  # a notice is sent, never answered


def request_to_proto(req: CustodianRequest) -> pb.CustodianRequest:
    return pb.CustodianRequest(
        request_id=req.request_id,
        session_id=req.session_id,
        kind=_KIND[req.kind],
        attestation=req.attestation,
        sd_header=req.header_bytes,
        sd_header_signature=req.header_signature,
        x=req.x,
        proposal=req.proposal,
    )


def status_to_proto(st: CeremonyStatus) -> pb.RecoveryProgress:
    return pb.RecoveryProgress(
        session_id=st.session_id,
        state=_SESSION[st.state],
        required=st.required,
        accepted=st.accepted,
        custodians=[
            pb.CustodianProgress(x=c.x, name=c.name, status=_CUSTODIAN[c.status], detail=c.detail)
            for c in st.custodians
        ],
        expires_at_unix=st.expires_at,
        message=st.message,
        domain_id=st.domain_id.hex(),
        epoch=st.epoch,
        kind=st.kind,
    )


def running_session(s: Ceremony | None) -> dict[str, Any]:
    """The running session's kind, state and deadline for NodeStatus (none once it has ended)."""
    if s is None or s.finished:
        return {}
    return {
        "session_kind": s.kind,
        "session_state": _SESSION[s.state],
        "session_expires_at_unix": s.expires_at,
    }


def chunks(data: bytes) -> Iterator[bytes]:
    """``data`` in order, in pieces of at most CHUNK_BYTES (none for empty data)."""
    return (data[i : i + CHUNK_BYTES] for i in range(0, len(data), CHUNK_BYTES))


def chunked(
    message: Callable[..., M],
) -> Callable[[Callable[..., Awaitable[bytes]]], Callable[..., AsyncIterator[M]]]:
    """A servicer method that returns bytes, streamed as ``message(data=...)`` chunks of CHUNK_BYTES.

    Goes under :func:`sdquorum_rpc.errors.rpc`, which sees a streaming method: the bytes are made
    when the stream is first read, and a failure there is translated like any other.
    """

    def decorate(fn: Callable[..., Awaitable[bytes]]) -> Callable[..., AsyncIterator[M]]:
        @functools.wraps(fn)
        async def stream(*args: Any) -> AsyncIterator[M]:
            for chunk in chunks(await fn(*args)):
                yield message(data=chunk)

        return stream

    return decorate
