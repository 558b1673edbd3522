"""Reads, writes and transactions on etcd's key-value store, each retried across members.

Invariants:

* Reads are linearizable (etcd's default); nothing here uses serializable reads. A prefix is read
  in pages all pinned to the first page's revision: one consistent snapshot.
* Writes stay correct under the retry loop's retries because every conditional write checks, when
  its condition fails, whether the key already holds exactly the bytes it meant to write (sealed
  rows and lock tokens carry random bytes, so nobody else writes the same bytes): a create whose
  first attempt committed before the connection broke is reported won, not lost. Those bytes are
  compared in constant time.
* A transaction over etcd's limits (``EtcdConfig.max_txn_ops`` operations and conditions,
  ``max_request_bytes`` bytes) is refused with UsageError before it is sent: nothing is half-sent,
  and the caller learns it must split its write.
* A write that ends in TransportError may still be applied later (it can sit in a leader's log when
  the quorum goes): callers re-read before they decide.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from typing import Any

import grpc
from aetcd import rpc  # etcd's v3 API (generated, kept current by aetcd's maintainers)

from hsm_node.pool.etcd._connection import HASLEADER, Connection
from hsm_node.pool.etcd._layout import prefix_end
from hsm_node.pool.etcd._values import Delete, KeyValue, Put, Unchanged
from sdquorum.errors import UsageError

__all__ = ["REQUEST_ENVELOPE", "KeyValues"]

# etcd wraps a transaction in its own raft request (a header of a few dozen bytes) before it checks
# --max-request-bytes; a commit leaves this much room for it
REQUEST_ENVELOPE = 1024


class KeyValues(Connection):
    """Key-value reads, plain writes, compare-and-set and all-or-nothing transactions."""

    async def get(self, key: bytes) -> KeyValue | None:
        def attempt(ch: grpc.Channel, t: float) -> Any:
            return rpc.KVStub(ch).Range(rpc.RangeRequest(key=key), timeout=t, metadata=HASLEADER)

        r = await self._call("read", attempt)
        return _kv(r.kvs[0]) if r.kvs else None

    async def get_prefix(self, prefix: bytes, *, page: int = 1000) -> tuple[list[KeyValue], int]:
        """Every key under ``prefix``, sorted, and the one cluster revision they were all read at.

        Read in pages of ``page`` keys (a 100,000-key domain does not fit in one gRPC message),
        every page pinned to the first page's revision, so the result is one consistent snapshot.
        CompactedError if etcd compacts that revision away while the pages are read."""
        if page < 1:
            raise UsageError("page must be at least 1")
        rows: list[KeyValue] = []
        start, end, revision = prefix, prefix_end(prefix), 0
        while True:

            def attempt(ch: grpc.Channel, t: float, start: bytes = start, revision: int = revision) -> Any:
                req = rpc.RangeRequest(key=start, range_end=end, limit=page, revision=revision)
                return rpc.KVStub(ch).Range(req, timeout=t, metadata=HASLEADER)

            r = await self._call("read", attempt)
            if revision == 0:
                revision = int(r.header.revision)
            rows.extend(_kv(kv) for kv in r.kvs)
            if not r.more or not r.kvs:
                return rows, revision
            start = bytes(r.kvs[-1].key) + b"\x00"

    async def put(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        """Write ``value`` at ``key`` unconditionally; returns the revision it was written at."""

        def attempt(ch: grpc.Channel, t: float) -> Any:
            req = rpc.PutRequest(key=key, value=value, lease=lease)
            return rpc.KVStub(ch).Put(req, timeout=t, metadata=HASLEADER)

        r = await self._call("write", attempt)
        return int(r.header.revision)

    async def delete(self, key: bytes) -> bool:
        """Delete ``key``; True if it existed (on a retried call: if it is gone now)."""

        def attempt(ch: grpc.Channel, t: float) -> Any:
            req = rpc.DeleteRangeRequest(key=key)
            return rpc.KVStub(ch).DeleteRange(req, timeout=t, metadata=HASLEADER)

        r = await self._call("delete", attempt)
        return int(r.deleted) > 0

    # ------------------------------------------------------------------ compare-and-set

    async def create(self, key: bytes, value: bytes, *, lease: int = 0) -> tuple[bool, KeyValue | None]:
        """Create ``key`` only if absent. Returns ``(True, None)`` if this call created it, else
        ``(False, current)``. Two concurrent creates of one key: exactly one gets True."""
        cmp = rpc.Compare(key=key, target=rpc.Compare.VERSION, result=rpc.Compare.EQUAL, version=0)
        return await self._txn_put("create", key, value, lease, cmp)

    async def replace_if_revision(
        self, key: bytes, value: bytes, mod_revision: int, *, lease: int = 0
    ) -> tuple[bool, KeyValue | None]:
        """Write ``value`` only if ``key`` was last modified at ``mod_revision``."""
        cmp = rpc.Compare(
            key=key, target=rpc.Compare.MOD, result=rpc.Compare.EQUAL, mod_revision=mod_revision
        )
        return await self._txn_put("compare-and-set", key, value, lease, cmp)

    async def commit(
        self, ops: Sequence[Put | Delete], *, unless_changed: Sequence[Unchanged] = ()
    ) -> int | None:
        """Apply every op in one etcd transaction if every ``unless_changed`` key is still at its
        revision; the revision the transaction made, or None when a key had changed (then nothing
        was applied). All or nothing: a rotation publishes its header and epoch this way.

        A transaction of more than ``config.max_txn_ops`` operations and conditions, or longer than
        ``config.max_request_bytes`` (etcd's limits), is refused with UsageError before it is sent.

        On a retried attempt whose first try committed, the conditions fail on our own change: if
        every put key then holds exactly our bytes, all at one revision, and every deleted key or
        range is gone, it is reported applied. That is sound when at least one put carries bytes
        only this writer makes (a signed header, a sealed row with its random nonce, a random
        generation id): callers make sure."""
        limit = self.config.max_txn_ops
        if not ops or len(ops) + len(unless_changed) > limit:
            raise UsageError(f"a commit takes 1 to {limit} operations and conditions (etcd's --max-txn-ops)")
        keys = [op.key for op in ops]
        if len(set(keys)) != len(keys):
            raise UsageError("a commit names a key twice: etcd refuses that in one transaction")
        compare = [
            rpc.Compare(
                key=c.key, target=rpc.Compare.MOD, result=rpc.Compare.EQUAL, mod_revision=c.mod_revision
            )
            for c in unless_changed
        ]
        success = [
            rpc.RequestOp(request_put=rpc.PutRequest(key=op.key, value=op.value, lease=op.lease))
            if isinstance(op, Put)
            else rpc.RequestOp(
                request_delete_range=rpc.DeleteRangeRequest(key=op.key, range_end=op.range_end)
            )
            for op in ops
        ]
        failure = [  # read back only when there is a condition to fail
            rpc.RequestOp(request_range=rpc.RangeRequest(key=op.key, range_end=op.range_end, limit=1))
            if isinstance(op, Delete)
            else rpc.RequestOp(request_range=rpc.RangeRequest(key=op.key))
            for op in (ops if unless_changed else ())
        ]
        txn = rpc.TxnRequest(compare=compare, success=success, failure=failure)
        if txn.ByteSize() > self.config.max_request_bytes - REQUEST_ENVELOPE:
            raise UsageError(
                f"a commit of {txn.ByteSize()} bytes is over etcd's --max-request-bytes "
                f"({self.config.max_request_bytes}): write it in smaller transactions"
            )

        def attempt(ch: grpc.Channel, t: float) -> Any:
            return rpc.KVStub(ch).Txn(txn, timeout=t, metadata=HASLEADER)

        r = await self._call("commit", attempt)
        if r.succeeded:
            return int(r.header.revision)
        revisions = []
        for op, response in zip(ops, r.responses, strict=True):
            kvs = response.response_range.kvs
            if isinstance(op, Delete):
                if kvs:
                    return None
                continue
            if (
                not kvs
                or not hmac.compare_digest(bytes(kvs[0].value), op.value)
                or int(kvs[0].lease) != op.lease
            ):
                return None
            revisions.append(int(kvs[0].mod_revision))
        if not revisions or len(set(revisions)) != 1:
            return None  # our puts are made together, at one revision; anything else is not ours
        return revisions[0]

    async def delete_if_revision(self, key: bytes, mod_revision: int) -> bool:
        """Delete ``key`` only if it was last modified at ``mod_revision``. True if it is gone
        because of this call (or, after a retried attempt, gone at all)."""
        cmp = rpc.Compare(
            key=key, target=rpc.Compare.MOD, result=rpc.Compare.EQUAL, mod_revision=mod_revision
        )

        def attempt(ch: grpc.Channel, t: float) -> Any:
            req = rpc.TxnRequest(
                compare=[cmp],
                success=[rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key))],
                failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=key))],
            )
            return rpc.KVStub(ch).Txn(req, timeout=t, metadata=HASLEADER)

        r = await self._call("delete", attempt)
        if r.succeeded:
            return True
        return not r.responses[0].response_range.kvs

    async def _txn_put(
        self, what: str, key: bytes, value: bytes, lease: int, cmp: Any
    ) -> tuple[bool, KeyValue | None]:
        def attempt(ch: grpc.Channel, t: float) -> Any:
            req = rpc.TxnRequest(
                compare=[cmp],
                success=[rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value, lease=lease))],
                failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=key))],
            )
            return rpc.KVStub(ch).Txn(req, timeout=t, metadata=HASLEADER)

        r = await self._call(what, attempt)
        if r.succeeded:
            return True, None
        kvs = r.responses[0].response_range.kvs
        current = _kv(kvs[0]) if kvs else None
        if current is not None and hmac.compare_digest(current.value, value) and current.lease == lease:
            return True, None  # our own earlier attempt committed before its answer was lost
        return False, current


def _kv(kv: Any) -> KeyValue:
    return KeyValue(
        key=bytes(kv.key),
        value=bytes(kv.value),
        create_revision=int(kv.create_revision),
        mod_revision=int(kv.mod_revision),
        version=int(kv.version),
        lease=int(kv.lease),
    )
