"""etcd's answers translated, once, into the project's errors (and which ones are worth retrying).

Invariants: unreachable, no leader or timed out -> retried on the next member (the caller's retry
loop ends in TransportError); etcd's permission denied -> PermissionDeniedError; request too large
or out of range -> UsageError; database quota exceeded -> StorageError; a compacted revision ->
:class:`CompactedError`. The etcd detail goes into the message for the local log, never to a
remote peer.
"""

from __future__ import annotations

import grpc
import grpc.aio

from sdquorum.errors import PermissionDeniedError, StateError, StorageError, TransportError, UsageError

__all__ = [
    "EOF",
    "CompactedError",
    "LeaseNotFound",
    "details_of",
    "raise_if_final",
    "rpc_detail",
    "stream_closed",
]

_RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
EOF: object = grpc.aio.EOF  # type: ignore[attr-defined]  # grpc-stubs lacks the end-of-stream marker


class CompactedError(StateError):
    """A watch asked for a revision etcd has compacted away: reload the prefix and watch again."""

    def __init__(self, compact_revision: int) -> None:
        upto = f" up to revision {compact_revision}" if compact_revision else ""
        super().__init__(f"etcd compacted its history{upto} during the read or watch: reload the pool state")
        self.compact_revision = compact_revision


class LeaseNotFound(StateError):
    """etcd no longer knows the lease (it expired or was revoked): kept inside the package."""


def code_of(e: grpc.RpcError) -> grpc.StatusCode:
    """A failed call's status (grpc's blocking calls raise errors that are also a ``grpc.Call``)."""
    code = getattr(e, "code", None)
    return code() if callable(code) else grpc.StatusCode.UNKNOWN


def details_of(e: grpc.RpcError) -> str:
    details = getattr(e, "details", None)
    return (details() if callable(details) else None) or ""


def rpc_detail(e: grpc.RpcError) -> str:
    """The status code and the first line of etcd's detail (at most 200 characters), for a log."""
    details = details_of(e)
    text = details.splitlines()[0][:200] if details else ""
    return f"{code_of(e).name}: {text}" if text else code_of(e).name


def stream_closed() -> grpc.aio.AioRpcError:
    """The error a stream that ended without an answer counts as: retried on the next member."""
    return grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "stream closed", ""
    )


def raise_if_final(e: grpc.RpcError, what: str) -> None:
    """Raise the project error for an answer that another member would give too; return for one
    worth retrying elsewhere (unreachable, no leader, timed out)."""
    code, details = code_of(e), details_of(e)
    if code in _RETRYABLE:
        return
    if code == grpc.StatusCode.PERMISSION_DENIED or "permission denied" in details:
        raise PermissionDeniedError(
            f"etcd refused the {what}: this member's etcd certificate may not do it (was the member "
            "removed from the pool, or its etcd user never added?)"
        ) from e
    if "requested lease not found" in details:
        raise LeaseNotFound("the etcd lease is gone") from e
    if "request is too large" in details or "too large" in details:
        raise UsageError(
            f"etcd refused the {what}: the request is larger than etcd accepts ({details})"
        ) from e
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED or "database space exceeded" in details:
        raise StorageError(
            f"etcd refused the {what}: its database is full ({details}); compact and defragment it, "
            "or raise --quota-backend-bytes"
        ) from e
    if code == grpc.StatusCode.OUT_OF_RANGE and "compacted" in details:
        raise CompactedError(0) from e
    if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE):
        raise UsageError(f"etcd refused the {what}: {rpc_detail(e)}") from e
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        raise StateError(f"etcd refused the {what}: {rpc_detail(e)}") from e
    if code == grpc.StatusCode.UNAUTHENTICATED:
        raise PermissionDeniedError(f"etcd did not accept this member's certificate for the {what}") from e
    raise TransportError(f"etcd {what} failed: {rpc_detail(e)}") from e
