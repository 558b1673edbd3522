"""Leases and the lock built on them (the pool-wide ceremony lock).

Invariants: a lock is one key created under a fresh lease with a token of random bytes naming its
holder; it is held while the lease is kept alive and released when the lease is revoked or expires
(its key goes with it). Taking it either wins (the lease is returned) or names the current holder;
a lease granted for a lost attempt is revoked, also when the attempt fails. Revoking a lease that
is gone already is not an error.
"""

from __future__ import annotations

import contextlib
from typing import Any

import grpc
from aetcd import rpc  # etcd's v3 API (generated, kept current by aetcd's maintainers)

from hsm_node.pool.etcd._connection import HASLEADER
from hsm_node.pool.etcd._errors import EOF, LeaseNotFound, stream_closed
from hsm_node.pool.etcd._keyvalue import KeyValues
from hsm_node.pool.etcd._values import Lease, LockHolder
from sdquorum.errors import StateError, TransportError, UsageError

__all__ = ["Leases"]


class Leases(KeyValues):
    """Leases (grant, keep alive, revoke) and the lock: a create under a lease."""

    async def grant_lease(self, ttl: int) -> Lease:
        if ttl < 1:
            raise UsageError("a lease needs a TTL of at least 1 second")

        def attempt(ch: grpc.Channel, t: float) -> Any:
            req = rpc.LeaseGrantRequest(TTL=ttl)
            return rpc.LeaseStub(ch).LeaseGrant(req, timeout=t, metadata=HASLEADER)

        r = await self._call("lease grant", attempt)
        if r.error:
            raise TransportError(f"etcd refused a lease: {r.error}")
        return Lease(int(r.ID), int(r.TTL))

    async def keep_alive(self, lease: int) -> int:
        """Refresh ``lease`` once; returns its new TTL. StateError if it has expired already."""

        def attempt(ch: grpc.Channel, t: float) -> Any:
            call = rpc.LeaseStub(ch).LeaseKeepAlive(
                iter([rpc.LeaseKeepAliveRequest(ID=lease)]), timeout=t, metadata=HASLEADER
            )
            try:
                reply = next(call, EOF)
            finally:
                call.cancel()
            if reply is EOF:
                raise stream_closed()
            return reply

        r = await self._call("lease keep-alive", attempt)
        if int(r.TTL) <= 0:
            raise StateError("the etcd lease has expired: whatever it held was released")
        return int(r.TTL)

    async def revoke_lease(self, lease: int) -> None:
        """Revoke ``lease`` (its keys go with it). A lease that is gone already is not an error."""

        def attempt(ch: grpc.Channel, t: float) -> Any:
            req = rpc.LeaseRevokeRequest(ID=lease)
            return rpc.LeaseStub(ch).LeaseRevoke(req, timeout=t, metadata=HASLEADER)

        try:
            await self._call("lease revoke", attempt)
        except LeaseNotFound:
            return

    async def leases(self) -> list[int]:
        """Every lease the cluster holds now (any holder's: an operator's question, as ``root``)."""

        def attempt(ch: grpc.Channel, t: float) -> Any:
            return rpc.LeaseStub(ch).LeaseLeases(rpc.LeaseLeasesRequest(), timeout=t, metadata=HASLEADER)

        r = await self._call("lease list", attempt)
        return [int(lease.ID) for lease in r.leases]

    async def lease_keys(self, lease: int) -> list[bytes]:
        """The keys that live under ``lease`` (none if it is gone)."""

        def attempt(ch: grpc.Channel, t: float) -> Any:
            req = rpc.LeaseTimeToLiveRequest(ID=lease, keys=True)
            return rpc.LeaseStub(ch).LeaseTimeToLive(req, timeout=t, metadata=HASLEADER)

        try:
            r = await self._call("lease time-to-live", attempt)
        except LeaseNotFound:
            return []
        return [] if int(r.TTL) < 0 else [bytes(k) for k in r.keys]

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
