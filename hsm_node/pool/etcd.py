"""A thin, typed asyncio client for the pool's etcd cluster (docs/adr/0013-pool-on-etcd.md).

etcd is the pool's only replication: this module adds no consensus of its own. It speaks etcd's v3
gRPC API through the generated stubs that the ``aetcd`` package maintains (``aetcd.rpc``), over
channels of its own, because ``aetcd.Client`` 1.0 opens one plaintext channel to one host: a pool
needs mutual TLS and several endpoints.

Key layout (every key of one domain under one prefix; :class:`Layout` builds them and refuses a
name that could step out of its place)::

    /sdquorum/<domain_id hex>/header              the signed SD header (bytes of the SD file header)
    /sdquorum/<domain_id hex>/epoch               the current epoch (decimal)
    /sdquorum/<domain_id hex>/keys/<name>         one key row, sealed under the domain DEK
    /sdquorum/<domain_id hex>/custody/<id>        custody records and the compromise flag
    /sdquorum/<domain_id hex>/members/<node_id>   a member: attestation certificate and state
    /sdquorum/<domain_id hex>/allowed/<node_id>   an admin's permission for a node to join
    /sdquorum/<domain_id hex>/audit/<chain>/<seq> audit entries, <seq> zero-padded to 20 digits
    /sdquorum/<domain_id hex>/lock/ceremony       the pool-wide ceremony lock (held under a lease)

Invariants:

* Every call carries etcd's ``hasleader`` metadata, so a member cut off from its quorum refuses at
  once ("no leader") instead of serving a stale read or queueing a write; each attempt has its own
  deadline (``attempt_timeout``) and the whole call an overall one (``call_timeout``). When no member
  answers within it the call raises :class:`~sdquorum.errors.TransportError` with one line naming
  the endpoints and what to check: never a hang, never a partial answer.
* Reads are linearizable (etcd's default); nothing here uses serializable reads.
* A failed attempt is retried on the next endpoint. Writes stay correct under that retry because
  every conditional write checks, when its condition fails, whether the key already holds exactly
  the bytes it meant to write (sealed rows and lock tokens carry random bytes, so nobody else writes
  the same bytes): a create whose first attempt committed before the connection broke is reported
  won, not lost.
* A watch resumes after a broken stream from the revision after the last one it delivered, on any
  endpoint, so no event is lost or delivered twice; if etcd compacted that revision away it raises
  :class:`CompactedError` and the caller reloads.
* Errors are translated once, here: unreachable or no quorum -> TransportError; etcd's permission
  denied -> PermissionDeniedError; request too large or out of range -> UsageError; database quota
  exceeded -> StorageError. The etcd detail goes into the message for the local log, never to a
  remote peer.
* A write that ends in TransportError may still be applied later (it can sit in a leader's log when
  the quorum goes): callers re-read before they decide, and the conditional writes above recognise
  their own bytes when they are retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, TypeVar

import grpc
import grpc.aio
from aetcd import rpc  # etcd's v3 API (generated, kept current by aetcd's maintainers)

import sdquorum_rpc  # noqa: F401  # its import pins grpc's TLS 1.2 suites: etcd is offered what every channel offers
from sdquorum.errors import PermissionDeniedError, StateError, StorageError, TransportError, UsageError
from sdquorum.etcd_pki import ETCD_CLUSTER_NAME

__all__ = [
    "MAX_TXN_OPS",
    "CompactedError",
    "Delete",
    "EtcdClient",
    "EtcdConfig",
    "EventKind",
    "KeyValue",
    "Layout",
    "Lease",
    "LockHolder",
    "MemberStatus",
    "Put",
    "Unchanged",
    "WatchBatch",
    "WatchEvent",
    "prefix_end",
]

_T = TypeVar("_T")
_HASLEADER = (("hasleader", "true"),)  # etcd refuses at once when this member has no leader
_RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}")
_ROOT = b"/sdquorum/"
MAX_TXN_OPS = 128  # etcd's --max-txn-ops default: operations plus conditions in one transaction
_EOF: object = grpc.aio.EOF  # type: ignore[attr-defined]  # grpc-stubs lacks the end-of-stream marker
_TLS_FAILURE = re.compile(r"TSI_|[Hh]andshake|SSL|certificate", re.ASCII)


class CompactedError(StateError):
    """A watch asked for a revision etcd has compacted away: reload the prefix and watch again."""

    def __init__(self, compact_revision: int) -> None:
        upto = f" up to revision {compact_revision}" if compact_revision else ""
        super().__init__(f"etcd compacted its history{upto} during the read or watch: reload the pool state")
        self.compact_revision = compact_revision


@dataclass(frozen=True)
class EtcdConfig:
    """How to reach the cluster: endpoints ``host:port``, the etcd CA and this member's client pair."""

    endpoints: tuple[str, ...]
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes = field(repr=False)  # this member's etcd client key: never in a log line
    server_name: str = ETCD_CLUSTER_NAME  # the TLS name every member's certificate carries
    attempt_timeout: float = 1.0  # seconds for one request to one member
    call_timeout: float = 4.0  # seconds for a call across every member before TransportError
    progress_interval: float = 1.0  # a quiet watch asks for a progress notice this often (seconds)

    def __post_init__(self) -> None:
        if not self.endpoints:
            raise UsageError("pool.etcd_endpoints is empty: give at least one host:port of the etcd cluster")
        for e in self.endpoints:
            host, sep, port = e.rpartition(":")
            if not sep or not host or not port.isdigit() or "/" in e:
                raise UsageError(f"etcd endpoint {e!r} is not host:port: write it like 10.0.0.5:2379")
        if not 0 < self.attempt_timeout <= self.call_timeout or self.progress_interval <= 0:
            raise UsageError(
                "pool etcd timeouts: need 0 < attempt_timeout <= call_timeout and progress_interval > 0"
            )


@dataclass(frozen=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int


class EventKind(Enum):
    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True)
class WatchEvent:
    kind: EventKind
    key: bytes
    value: bytes  # empty for DELETE
    mod_revision: int


@dataclass(frozen=True)
class WatchBatch:
    """Events of one or more revisions, in order; ``revision`` is the cluster revision they reach.
    An empty batch is a progress notice: nothing changed up to ``revision``."""

    revision: int
    events: tuple[WatchEvent, ...]


@dataclass(frozen=True)
class Put:
    """In :meth:`EtcdClient.commit`: write ``value`` at ``key``."""

    key: bytes
    value: bytes
    lease: int = 0


@dataclass(frozen=True)
class Delete:
    """In :meth:`EtcdClient.commit`: remove ``key``."""

    key: bytes


@dataclass(frozen=True)
class Unchanged:
    """In :meth:`EtcdClient.commit`: ``key`` was last modified at ``mod_revision`` (0: absent)."""

    key: bytes
    mod_revision: int


@dataclass(frozen=True)
class MemberStatus:
    member_id: int  # this member's id
    leader: int  # the leader's member id as this member sees it; 0: none
    raft_term: int
    raft_applied_index: int  # how far this member has applied the log
    db_size: int  # bytes of the database file
    db_size_in_use: int  # bytes of it holding data (the rest is free pages)
    version: str


@dataclass(frozen=True)
class Lease:
    id: int
    ttl: int  # seconds granted (etcd may round up to its minimum)


@dataclass(frozen=True)
class LockHolder:
    """Who holds a lock: the token they wrote and the lease it lives under."""

    token: bytes
    lease: int


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key after every key starting with ``prefix`` (etcd's range_end for a prefix)."""
    b = bytearray(prefix)
    while b:
        if b[-1] < 0xFF:
            b[-1] += 1
            return bytes(b)
        b.pop()
    return b"\x00"  # every key


class Layout:
    """The keys of one domain (see the module docstring). Each name is one path segment."""

    def __init__(self, domain_id: bytes) -> None:
        if not 1 <= len(domain_id) <= 64:
            raise UsageError("a domain id is 1 to 64 bytes")
        self.prefix = _ROOT + domain_id.hex().encode() + b"/"

    def _under(self, *parts: str) -> bytes:
        for p in parts:
            if not _SEGMENT.fullmatch(p):
                raise UsageError(
                    f"{p!r} cannot be an etcd key segment: use 1-128 characters of A-Z a-z 0-9 . _ @ - "
                    "starting with a letter or digit"
                )
        return self.prefix + "/".join(parts).encode()

    def header(self) -> bytes:
        return self.prefix + b"header"

    def epoch(self) -> bytes:
        return self.prefix + b"epoch"

    def key(self, name: str) -> bytes:
        return self._under("keys", name)

    def keys(self) -> bytes:
        return self.prefix + b"keys/"

    def custody(self, record_id: str) -> bytes:
        return self._under("custody", record_id)

    def member(self, node_id: str) -> bytes:
        return self._under("members", node_id)

    def allowed(self, node_id: str) -> bytes:
        return self._under("allowed", node_id)

    def audit(self, chain: str, seq: int) -> bytes:
        if not 0 <= seq < 10**20:
            raise UsageError(f"audit sequence {seq} is out of range")
        return self._under("audit", chain, f"{seq:020d}")

    def ceremony_lock(self) -> bytes:
        return self.prefix + b"lock/ceremony"


# ------------------------------------------------------------------------------------------ client


class EtcdClient:
    """One member's connection to the etcd cluster. Use ``async with`` or call :meth:`close`."""

    def __init__(self, config: EtcdConfig) -> None:
        self.config = config
        self._creds = grpc.ssl_channel_credentials(
            root_certificates=config.ca_pem, private_key=config.key_pem, certificate_chain=config.cert_pem
        )
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._current = 0  # index of the endpoint that answered last

    async def __aenter__(self) -> EtcdClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for ch in channels:
            await ch.close(None)

    def _channel(self, endpoint: str) -> grpc.aio.Channel:
        ch = self._channels.get(endpoint)
        if ch is None:
            ch = grpc.aio.secure_channel(
                endpoint,
                self._creds,
                options=[
                    ("grpc.ssl_target_name_override", self.config.server_name),
                    ("grpc.default_authority", self.config.server_name),
                    # a member that comes back is used again within a second, not after minutes
                    ("grpc.initial_reconnect_backoff_ms", 200),
                    ("grpc.min_reconnect_backoff_ms", 200),
                    ("grpc.max_reconnect_backoff_ms", 1000),
                    # a silently dropped connection (a partition) is noticed on long watches
                    ("grpc.keepalive_time_ms", 10_000),
                    ("grpc.keepalive_timeout_ms", 3_000),
                    ("grpc.max_receive_message_length", 8 * 1024 * 1024),
                ],
            )
            self._channels[endpoint] = ch
        return ch

    # ------------------------------------------------------------------ the retry loop

    async def _call(self, what: str, attempt: Callable[[grpc.aio.Channel, float], Awaitable[_T]]) -> _T:
        """Run ``attempt`` on the current endpoint, then on the next ones, until one answers or
        ``call_timeout`` is spent; translate the final failure."""
        cfg = self.config
        deadline = time.monotonic() + cfg.call_timeout
        n = len(cfg.endpoints)
        last: grpc.aio.AioRpcError | None = None
        tried = 0
        while (remaining := deadline - time.monotonic()) > 0:
            endpoint = cfg.endpoints[self._current % n]
            try:
                result = await attempt(self._channel(endpoint), min(cfg.attempt_timeout, remaining))
            except grpc.aio.AioRpcError as e:
                _raise_if_final(e, what)
                last = e
                tried += 1
                self._current = (self._current + 1) % n
                if tried % n == 0:  # every member refused once: give them a moment (an election)
                    await asyncio.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
                continue
            return result
        detail = _detail(last) if last is not None else "no attempt finished in time"
        if last is not None and _TLS_FAILURE.search(last.details() or ""):
            raise TransportError(
                f"etcd {what} failed: TLS with {', '.join(cfg.endpoints)} failed ({detail}); check that "
                "this member's etcd certificate, key and CA come from the cluster's etcd CA"
            ) from last
        raise TransportError(
            f"etcd {what} failed: no member of {', '.join(cfg.endpoints)} answered with a quorum "
            f"within {cfg.call_timeout:g} s ({detail}); check that a majority of the etcd members "
            "(2 of 3) run and reach each other"
        ) from last

    # ------------------------------------------------------------------ reads and plain writes

    async def get(self, key: bytes) -> KeyValue | None:
        async def attempt(ch: grpc.aio.Channel, t: float) -> Any:
            return await rpc.KVStub(ch).Range(rpc.RangeRequest(key=key), timeout=t, metadata=_HASLEADER)

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

            async def attempt(
                ch: grpc.aio.Channel, t: float, start: bytes = start, revision: int = revision
            ) -> Any:
                req = rpc.RangeRequest(key=start, range_end=end, limit=page, revision=revision)
                return await rpc.KVStub(ch).Range(req, timeout=t, metadata=_HASLEADER)

            r = await self._call("read", attempt)
            if revision == 0:
                revision = int(r.header.revision)
            rows.extend(_kv(kv) for kv in r.kvs)
            if not r.more or not r.kvs:
                return rows, revision
            start = bytes(r.kvs[-1].key) + b"\x00"

    async def put(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        """Write ``value`` at ``key`` unconditionally; returns the revision it was written at."""

        async def attempt(ch: grpc.aio.Channel, t: float) -> Any:
            req = rpc.PutRequest(key=key, value=value, lease=lease)
            return await rpc.KVStub(ch).Put(req, timeout=t, metadata=_HASLEADER)

        r = await self._call("write", attempt)
        return int(r.header.revision)

    async def delete(self, key: bytes) -> bool:
        """Delete ``key``; True if it existed (on a retried call: if it is gone now)."""

        async def attempt(ch: grpc.aio.Channel, t: float) -> Any:
            req = rpc.DeleteRangeRequest(key=key)
            return await rpc.KVStub(ch).DeleteRange(req, timeout=t, metadata=_HASLEADER)

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

        On a retried attempt whose first try committed, the conditions fail on our own change: if
        every put key then holds exactly our bytes, all at one revision, and every deleted key is
        gone, it is reported applied. That is sound when at least one put carries bytes only this
        writer makes (a signed header, a sealed row with its random nonce): callers make sure."""
        if not ops or len(ops) + len(unless_changed) > MAX_TXN_OPS:
            raise UsageError(
                f"a commit takes 1 to {MAX_TXN_OPS} operations and conditions (etcd's --max-txn-ops)"
            )
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
            else rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=op.key))
            for op in ops
        ]
        failure = [rpc.RequestOp(request_range=rpc.RangeRequest(key=k)) for k in keys]

        async def attempt(ch: grpc.aio.Channel, t: float) -> Any:
            req = rpc.TxnRequest(compare=compare, success=success, failure=failure)
            return await rpc.KVStub(ch).Txn(req, timeout=t, metadata=_HASLEADER)

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

        async def attempt(ch: grpc.aio.Channel, t: float) -> Any:
            req = rpc.TxnRequest(
                compare=[cmp],
                success=[rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key))],
                failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=key))],
            )
            return await rpc.KVStub(ch).Txn(req, timeout=t, metadata=_HASLEADER)

        r = await self._call("delete", attempt)
        if r.succeeded:
            return True
        return not r.responses[0].response_range.kvs

    async def _txn_put(
        self, what: str, key: bytes, value: bytes, lease: int, cmp: Any
    ) -> tuple[bool, KeyValue | None]:
        async def attempt(ch: grpc.aio.Channel, t: float) -> Any:
            req = rpc.TxnRequest(
                compare=[cmp],
                success=[rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value, lease=lease))],
                failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=key))],
            )
            return await rpc.KVStub(ch).Txn(req, timeout=t, metadata=_HASLEADER)

        r = await self._call(what, attempt)
        if r.succeeded:
            return True, None
        kvs = r.responses[0].response_range.kvs
        current = _kv(kvs[0]) if kvs else None
        if current is not None and hmac.compare_digest(current.value, value) and current.lease == lease:
            return True, None  # our own earlier attempt committed before its answer was lost
        return False, current

    # ------------------------------------------------------------------ leases and the lock

    async def grant_lease(self, ttl: int) -> Lease:
        if ttl < 1:
            raise UsageError("a lease needs a TTL of at least 1 second")

        async def attempt(ch: grpc.aio.Channel, t: float) -> Any:
            req = rpc.LeaseGrantRequest(TTL=ttl)
            return await rpc.LeaseStub(ch).LeaseGrant(req, timeout=t, metadata=_HASLEADER)

        r = await self._call("lease grant", attempt)
        if r.error:
            raise TransportError(f"etcd refused a lease: {r.error}")
        return Lease(int(r.ID), int(r.TTL))

    async def keep_alive(self, lease: int) -> int:
        """Refresh ``lease`` once; returns its new TTL. StateError if it has expired already."""

        async def attempt(ch: grpc.aio.Channel, t: float) -> Any:
            call = rpc.LeaseStub(ch).LeaseKeepAlive(timeout=t, metadata=_HASLEADER)
            try:
                await call.write(rpc.LeaseKeepAliveRequest(ID=lease))
                reply = await call.read()
            finally:
                call.cancel()
            if reply is _EOF:
                raise _eof()
            return reply

        r = await self._call("lease keep-alive", attempt)
        if int(r.TTL) <= 0:
            raise StateError("the etcd lease has expired: whatever it held was released")
        return int(r.TTL)

    async def revoke_lease(self, lease: int) -> None:
        """Revoke ``lease`` (its keys go with it). A lease that is gone already is not an error."""

        async def attempt(ch: grpc.aio.Channel, t: float) -> Any:
            req = rpc.LeaseRevokeRequest(ID=lease)
            return await rpc.LeaseStub(ch).LeaseRevoke(req, timeout=t, metadata=_HASLEADER)

        try:
            await self._call("lease revoke", attempt)
        except _LeaseNotFound:
            return

    async def acquire(self, key: bytes, token: bytes, ttl: int) -> tuple[Lease | None, LockHolder | None]:
        """Take the lock at ``key`` for ``ttl`` seconds under a new lease, writing ``token`` (random
        bytes that name this holder). Returns ``(lease, None)`` when taken, ``(None, holder)`` when
        someone holds it. The lock ends when the lease is revoked or not kept alive."""
        lease = await self.grant_lease(ttl)
        try:
            won, current = await self.create(key, token, lease=lease.id)
        except BaseException:
            with contextlib.suppress(Exception):
                await self.revoke_lease(lease.id)
            raise
        if won:
            return lease, None
        await self.revoke_lease(lease.id)
        return None, (LockHolder(current.value, current.lease) if current is not None else None)

    # ------------------------------------------------------------------ watch

    async def watch_prefix(self, prefix: bytes, start_revision: int) -> AsyncIterator[WatchBatch]:
        """Every change under ``prefix`` from ``start_revision`` on (typically the revision of a
        :meth:`get_prefix` plus one), in order, across broken streams and member losses.

        A quiet stream asks for a progress notice every ``progress_interval``; a member that does
        not answer one within ``attempt_timeout`` is left for the next (a silent partition is
        noticed that fast). Each batch, events or not, proves the cluster answered: the caller
        bounds how long it serves without one. While no member with a quorum answers it keeps
        trying; it never ends by itself (cancel the iteration to stop)."""
        cfg = self.config
        next_rev = start_revision
        n = len(cfg.endpoints)
        while True:
            endpoint = cfg.endpoints[self._current % n]
            call = rpc.WatchStub(self._channel(endpoint)).Watch(metadata=_HASLEADER)
            # one reader per stream: cancelling a pending read would end the whole stream, so the
            # timeouts below wait on this queue instead
            inbox: asyncio.Queue[Any] = asyncio.Queue()
            pump = asyncio.ensure_future(_pump(call, inbox))
            try:
                create = rpc.WatchCreateRequest(
                    key=prefix, range_end=prefix_end(prefix), start_revision=next_rev, progress_notify=True
                )
                await asyncio.wait_for(
                    call.write(rpc.WatchRequest(create_request=create)), cfg.attempt_timeout
                )
                asked = False
                while True:
                    try:
                        r = await asyncio.wait_for(
                            inbox.get(), cfg.attempt_timeout if asked else cfg.progress_interval
                        )
                    except TimeoutError:
                        if asked:
                            break  # no answer to a progress request: this member is cut off
                        await asyncio.wait_for(
                            call.write(rpc.WatchRequest(progress_request=rpc.WatchProgressRequest())),
                            cfg.attempt_timeout,
                        )
                        asked = True
                        continue
                    asked = False
                    if isinstance(r, grpc.aio.AioRpcError):
                        _raise_if_final(r, "watch")
                        break
                    if r is _EOF:
                        break
                    if r.compact_revision:
                        raise CompactedError(int(r.compact_revision))
                    if r.canceled:
                        if "permission denied" in r.cancel_reason:
                            raise PermissionDeniedError(
                                "etcd refused the watch: this member's etcd certificate may not read the pool"
                            )
                        break  # e.g. this member lost its leader: go to the next one
                    if r.created and not r.events:
                        continue
                    events = tuple(_event(ev) for ev in r.events)
                    if events:
                        next_rev = max(ev.mod_revision for ev in events) + 1
                    else:
                        next_rev = max(next_rev, int(r.header.revision) + 1)
                    yield WatchBatch(int(r.header.revision), events)
            except grpc.aio.AioRpcError as e:
                _raise_if_final(e, "watch")
            except (TimeoutError, asyncio.InvalidStateError):
                pass  # a request did not go out, or the stream ended under us: next member
            finally:
                pump.cancel()
                call.cancel()
            self._current = (self._current + 1) % n
            await asyncio.sleep(min(cfg.attempt_timeout, 0.2))

    # ------------------------------------------------------------------ cluster and auth (root only)

    async def status(self, endpoint: str) -> MemberStatus:
        """What ``endpoint`` says of itself (one member, no failover: for health checks)."""
        try:
            r = await rpc.MaintenanceStub(self._channel(endpoint)).Status(
                rpc.StatusRequest(), timeout=self.config.attempt_timeout
            )
        except grpc.aio.AioRpcError as e:
            raise TransportError(
                f"etcd member {endpoint} did not answer a status request ({_detail(e)})"
            ) from e
        return MemberStatus(
            member_id=int(r.header.member_id),
            leader=int(r.leader),
            raft_term=int(r.raftTerm),
            raft_applied_index=int(r.raftAppliedIndex),
            db_size=int(r.dbSize),
            db_size_in_use=int(r.dbSizeInUse),
            version=str(r.version),
        )

    async def compact(self, revision: int) -> None:
        """As etcd ``root``: drop the history before ``revision`` (watches from before it then end
        with :class:`CompactedError`)."""

        async def attempt(ch: grpc.aio.Channel, t: float) -> Any:
            req = rpc.CompactionRequest(revision=revision, physical=True)
            return await rpc.KVStub(ch).Compact(req, timeout=t, metadata=_HASLEADER)

        await self._call("compaction", attempt)

    async def bootstrap_auth(self, member_role: str, users: Sequence[str], prefix: bytes = _ROOT) -> None:
        """As etcd ``root``: create ``member_role`` with read-write on ``prefix``, one user per name
        in ``users`` (certificate CN; no password: only a certificate logs in) holding that role,
        the ``root`` user, and turn authentication on. Run once on a new cluster."""
        await self._auth("RoleAdd", rpc.AuthRoleAddRequest(name=member_role))
        perm = rpc.Permission(permType=rpc.Permission.READWRITE, key=prefix, range_end=prefix_end(prefix))
        await self._auth(
            "RoleGrantPermission", rpc.AuthRoleGrantPermissionRequest(name=member_role, perm=perm)
        )
        for user in ("root", *users):
            opts = rpc.UserAddOptions(no_password=True)
            await self._auth("UserAdd", rpc.AuthUserAddRequest(name=user, options=opts))
        await self._auth("UserGrantRole", rpc.AuthUserGrantRoleRequest(user="root", role="root"))
        for user in users:
            await self._auth("UserGrantRole", rpc.AuthUserGrantRoleRequest(user=user, role=member_role))
        await self._auth("AuthEnable", rpc.AuthEnableRequest())

    async def add_member_user(self, user: str, member_role: str) -> None:
        """As etcd ``root``: let one more member certificate (CN ``user``) write the pool."""
        await self._auth(
            "UserAdd", rpc.AuthUserAddRequest(name=user, options=rpc.UserAddOptions(no_password=True))
        )
        await self._auth("UserGrantRole", rpc.AuthUserGrantRoleRequest(user=user, role=member_role))

    async def remove_member_user(self, user: str) -> None:
        """As etcd ``root``: the member certificate with CN ``user`` can no longer read or write."""
        await self._auth("UserDelete", rpc.AuthUserDeleteRequest(name=user))

    async def _auth(self, method: str, request: Any) -> None:
        async def attempt(ch: grpc.aio.Channel, t: float) -> Any:
            return await getattr(rpc.AuthStub(ch), method)(request, timeout=t, metadata=_HASLEADER)

        await self._call(f"auth {method}", attempt)


# ------------------------------------------------------------------------------------------ helpers


class _LeaseNotFound(StateError):
    pass


async def _pump(call: Any, inbox: asyncio.Queue[Any]) -> None:
    """Move a stream's responses (then EOF, or the error that ended it) into ``inbox``."""
    try:
        while True:
            r = await call.read()
            inbox.put_nowait(r)
            if r is _EOF:
                return
    except grpc.aio.AioRpcError as e:
        inbox.put_nowait(e)
    except asyncio.InvalidStateError:
        inbox.put_nowait(_EOF)


def _kv(kv: Any) -> KeyValue:
    return KeyValue(
        key=bytes(kv.key),
        value=bytes(kv.value),
        create_revision=int(kv.create_revision),
        mod_revision=int(kv.mod_revision),
        version=int(kv.version),
        lease=int(kv.lease),
    )


def _event(ev: Any) -> WatchEvent:
    kind = EventKind.DELETE if ev.type == rpc.Event.DELETE else EventKind.PUT
    return WatchEvent(kind, bytes(ev.kv.key), bytes(ev.kv.value), int(ev.kv.mod_revision))


def _detail(e: grpc.aio.AioRpcError) -> str:
    text = (e.details() or "").splitlines()[0][:200] if e.details() else ""
    return f"{e.code().name}: {text}" if text else e.code().name


def _eof() -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "stream closed", ""
    )


def _raise_if_final(e: grpc.aio.AioRpcError, what: str) -> None:
    """Raise the project error for an answer that another member would give too; return for one
    worth retrying elsewhere (unreachable, no leader, timed out)."""
    code, details = e.code(), e.details() or ""
    if code in _RETRYABLE:
        return
    if code == grpc.StatusCode.PERMISSION_DENIED or "permission denied" in details:
        raise PermissionDeniedError(
            f"etcd refused the {what}: this member's etcd certificate may not do it (was the member "
            "removed from the pool, or its etcd user never added?)"
        ) from e
    if "requested lease not found" in details:
        raise _LeaseNotFound("the etcd lease is gone") from e
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
        raise UsageError(f"etcd refused the {what}: {_detail(e)}") from e
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        raise StateError(f"etcd refused the {what}: {_detail(e)}") from e
    if code == grpc.StatusCode.UNAUTHENTICATED:
        raise PermissionDeniedError(f"etcd did not accept this member's certificate for the {what}") from e
    raise TransportError(f"etcd {what} failed: {_detail(e)}") from e
