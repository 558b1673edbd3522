"""The pool's own rows in etcd (beside the storage seam's): membership and joins.

``allowed/<node_id>``: an admin's permission to join; ``members/<node_id>``: a member (its
attestation certificate and state); ``joins/<node_id>``: a pending join request;
``grants/<node_id>``: its answer; ``served/<request sha256 hex>``: a request answered once (a replay
finds it taken); ``lock/ceremony``: the pool-wide ceremony lock, under an etcd lease whose TTL is the
session's deadline (one ceremony at a time in the whole pool). The protocol over them: :mod:`hsm_node.pool.member`.
"""

from __future__ import annotations

import contextlib
import json
import os
import urllib.parse
from typing import TYPE_CHECKING

from hsm_node.pool.view import EtcdView
from hsm_node.store.protocol import DomainInfo
from sdquorum.errors import StateError
from sdquorum.sdfile import DomainSecrets

if TYPE_CHECKING:
    from hsm_node.pool.store import _PoolDomain

__all__ = ["PoolRows", "lock_holder"]


def lock_holder(token: bytes) -> tuple[str, str] | None:
    """The node id and session id a ceremony lock's token names, or None for a token that is not
    one (the lock's value: ``{"node": ..., "session": ..., "nonce": ...}``)."""
    with contextlib.suppress(ValueError, AttributeError, KeyError, TypeError):
        o = json.loads(token)
        return str(o["node"]), str(o["session"])
    return None


class PoolRows:
    def __init__(self, view: EtcdView, domain: _PoolDomain) -> None:
        self._v = view
        self._domain = domain
        self._leases: dict[str, int] = {}  # session id -> the lease of the ceremony lock it holds

    def take_ceremony_lock(self, session_id: str, ttl: int) -> None:
        """Hold the pool-wide ceremony lock for ``session_id`` (at most ``ttl`` seconds: the
        session's deadline, so a member that dies holding it frees it then); StateError naming the
        holder if another session holds it."""
        token = json.dumps({"node": self._v.node_id, "session": session_id, "nonce": os.urandom(8).hex()})
        lease, holder = self._v.run(
            self._v.client.acquire(self._v.layout.ceremony_lock(), token.encode(), ttl)
        )
        if lease is None:
            held_by = lock_holder(holder.token) if holder is not None else None
            who = f"node {held_by[0]} (session {held_by[1]})" if held_by else "another member"
            raise StateError(
                f"a ceremony is running in this pool on {who}: one at a time pool-wide; wait for it to end "
                "or for its deadline"
            )
        self._leases[session_id] = lease.id

    def release_ceremony_lock(self, session_id: str) -> None:
        """Free the lock ``session_id`` holds (nothing if it holds none)."""
        lease = self._leases.pop(session_id, None)
        if lease is not None:
            self._v.run(self._v.client.revoke_lease(lease))

    def staleness(self) -> float:
        """Seconds since this member's view of etcd was last proven current."""
        return self._v.staleness()

    def mark_removed(self) -> None:
        """This member was removed from the pool: its store refuses everything from now on."""
        self._v.mark_removed()

    def pool_info(self) -> DomainInfo | None:
        """The pool's domain id, epoch, quorum and n, as published with its header."""
        raw = self._v.get(self._v.layout.prefix + b"info")
        return None if raw is None else DomainInfo.from_json(raw.decode())

    def pool_rows(self, table: str) -> dict[str, bytes]:
        """Every row of one of the pool's tables, by node id."""
        start = self._v.sub(table) + b"/"
        return {urllib.parse.unquote(k[len(start) :].decode()): v for k, v in self._v.scan(start)}

    def pool_row(self, table: str, node_id: str) -> bytes | None:
        return self._v.get(self._v.sub(table, node_id))

    def put_pool_row(self, table: str, node_id: str, value: bytes) -> None:
        with self._v.write() as tx:
            tx.writes[self._v.sub(table, node_id)] = value

    def delete_pool_row(self, table: str, node_id: str) -> None:
        with self._v.write() as tx:
            if self._v.read_for_write(tx, self._v.sub(table, node_id)) is not None:
                tx.writes[self._v.sub(table, node_id)] = None

    def grant_join(self, node_id: str, request: bytes, request_sha256: bytes, grant: bytes) -> None:
        """Answer ``node_id``'s pending ``request`` with ``grant``, once: one transaction marks the
        request served (AlreadyExistsError if it was), puts the grant, removes the request, and
        applies only while ``node_id``'s permission to join is there as it was read (an admin's
        removal meanwhile, or a permission put back and deleted again, voids it)."""
        with self._v.write() as tx:
            if self._v.read_for_write(tx, self._v.sub("joins", node_id)) != request:
                raise StateError(f"the join request of {node_id!r} changed or is gone: nothing was granted")
            if self._v.read_for_write(tx, self._v.sub("allowed", node_id)) is None:
                raise StateError(f"{node_id!r} is not allowed to join (any more): nothing was granted")
            self._v.create(
                tx, self._v.sub("served", request_sha256.hex()), b"1", "this join request was served already"
            )
            tx.writes[self._v.sub("grants", node_id)] = grant
            tx.writes[self._v.sub("joins", node_id)] = None

    def served(self) -> list[bytes]:
        start = self._v.sub("served") + b"/"
        return [bytes.fromhex(k[len(start) :].decode()) for k, _ in self._v.scan(start)]

    def hold_domain(self, secrets: DomainSecrets, state: str) -> None:
        """A joined member: keep the pool's domain secrets on this member's disk (sealed under the
        node sealing key) and take ``state``; nothing is written to etcd."""
        raw = self._v.get(self._v.layout.prefix + b"info")
        if raw is None or DomainInfo.from_json(raw.decode()).domain_id != secrets.domain_id:
            raise StateError("these domain secrets are not the pool's domain: nothing was kept")
        self._v.guard.use_domain(secrets)
        with self._v.write() as tx:
            tx.local["domains"] = self._domain.domains_with(secrets)
            tx.local["state"] = state
