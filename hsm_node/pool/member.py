"""A pool member's part in joining and membership (the protocol is :mod:`sdquorum.pooljoin`).

Everything goes through the pool's etcd rows (:class:`~hsm_node.pool.store.PoolNodeStore`), so no
member needs to reach another: an admin's ``allowed/<node_id>`` (a custody decision: tagged and in
the custody head, :mod:`hsm_node.pool.integrity`, so only a member holding the domain writes it and
a permission put or put back with etcd alone is refused); the joiner's request at
``joins/<node_id>``; a live member's grant at ``grants/<node_id>``; ``members/<node_id>`` for each
member (its attestation certificate and state, ``active`` or ``removed``).

Invariants:

* A member seals the domain only to a request :func:`~sdquorum.pooljoin.check_join_request` passed
  (attested under the root, its own id, allowed, in time, the pool's current domain, epoch and SD
  file, never served before), and marks it served in the same etcd transaction as the grant, so two
  members answering at once give one grant.
* A joiner accepts only a grant :func:`~sdquorum.pooljoin.open_join_grant` passed, from a sender
  that ``members/`` lists as active; it then keeps the secrets on its own disk only.
* A member whose row says ``removed`` serves nothing (:meth:`PoolMember.check_standing`); the
  others no longer accept its grants; ``sdctl pool remove`` then deletes its etcd user with etcd's
  root certificate (:mod:`hsm_node.pool.access`: no node holds that certificate), so it can no
  longer write. Only an admin's new permission (:func:`allow`) drops that row: it then joins anew.
* A refused request is logged here with the reason and left in place; the joiner learns only that
  no grant came before its deadline.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime

import nacl.public
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hsm_node.pool.integrity import Head
from hsm_node.pool.store import PoolNodeStore
from sdquorum import pooljoin
from sdquorum.encoding import b64d, b64e
from sdquorum.errors import (
    AlreadyExistsError,
    MalformedError,
    PermissionDeniedError,
    SdquorumError,
    StateError,
    TransportError,
    VerificationError,
)
from sdquorum.sdfile import DomainSecrets

__all__ = ["ACTIVE", "REMOVED", "PoolMember", "allow", "remove"]

log = logging.getLogger(__name__)
ACTIVE, REMOVED = "active", "removed"


def _require_domain(store: PoolNodeStore, command: str) -> None:
    """A permission to join is a custody decision: tagged under the domain's row key and in the
    custody head, so only a member that holds the domain writes it (a node without it would write
    a row every member refuses)."""
    if not store.view.guard.mac.keyed:
        raise StateError(
            f"this node does not hold the pool's domain yet: run 'sdctl pool {command}' against a member "
            "that does ('sdctl pool status' there lists them); nothing was changed"
        )


def allow(store: PoolNodeStore, node_id: str, by: str, now: int) -> None:
    """An admin lets ``node_id`` join (the caller audits it). A node removed before may join anew:
    its ``removed`` row goes in the same transaction (it would refuse to start, and the members its
    join, while the row says removed)."""
    _require_domain(store, f"allow {node_id}")
    with store.batch():
        store.pool.put_pool_row("allowed", node_id, json.dumps({"by": by, "at": now}).encode())
        raw = store.pool.pool_row("members", node_id)
        if raw is not None and json.loads(raw).get("state") == REMOVED:
            store.pool.delete_pool_row("members", node_id)


def remove(store: PoolNodeStore, node_id: str, by: str, now: int) -> None:
    """End a member: its row says removed and its permission to join goes (the caller audits it;
    ``sdctl pool remove`` deletes its etcd user with the etcd root certificate)."""
    _require_domain(store, f"remove {node_id}")
    with store.batch():
        store.pool.put_pool_row(
            "members", node_id, json.dumps({"state": REMOVED, "by": by, "at": now}).encode()
        )
        store.pool.delete_pool_row("allowed", node_id)


class PoolMember:
    """This node's membership: register, join, serve others' joins."""

    def __init__(
        self,
        store: PoolNodeStore,
        node_id: str,
        attestation_key: Ed25519PrivateKey,
        attestation_cert_der: bytes,
        attestation_root_pem: bytes,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.node_id = node_id
        self._key = attestation_key
        self._cert = attestation_cert_der
        self._root = attestation_root_pem
        self._clock = clock

    def _now(self) -> datetime:
        return datetime.fromtimestamp(int(self._clock()), UTC)

    def _pool(self) -> pooljoin.PoolHeader:
        loaded_sd = self.store.domain.sd_file()
        raw = self.store.pool.pool_info()
        if loaded_sd is None or raw is None:
            raise StateError(
                "the pool has no security domain yet: activate its first member with a ceremony "
                "(docs/runbooks/pool.md)"
            )
        return pooljoin.PoolHeader.of(raw.domain_id, raw.epoch, loaded_sd)

    def active_members(self) -> set[str]:
        out = set()
        for node_id, raw in self.store.pool.pool_rows("members").items():
            try:
                if json.loads(raw).get("state") == ACTIVE:
                    out.add(node_id)
            except ValueError:
                continue
        return out

    def removed(self, node_id: str) -> bool:
        """Whether the pool lists ``node_id`` as removed."""
        raw = self.store.pool.pool_row("members", node_id)
        return raw is not None and json.loads(raw).get("state") == REMOVED

    def check_standing(self) -> None:
        """PermissionDeniedError if this member was removed from the pool."""
        if self.removed(self.node_id):
            raise PermissionDeniedError(
                f"node {self.node_id!r} was removed from the pool: it serves nothing; an admin allows it "
                "again ('sdctl pool allow') and it joins anew"
            )

    def register(self) -> None:
        """A member that holds the domain lists itself as active (refused if it was removed)."""
        self.check_standing()
        row = {"state": ACTIVE, "certificate": b64e(self._cert), "at": int(self._clock())}
        self.store.pool.put_pool_row("members", self.node_id, json.dumps(row).encode())

    # ------------------------------------------------------------------ the joiner

    async def join(self, timeout: float = 60.0, poll: float = 0.05) -> DomainSecrets:
        """Ask the pool for its domain and wait for a member's grant (StateError if none comes)."""
        self.check_standing()
        pool = self._pool()
        exchange = nacl.public.PrivateKey.generate()
        request = pooljoin.make_join_request(
            self.node_id,
            pool,
            bytes(exchange.public_key),
            os.urandom(32),
            int(self._clock()),
            self._key,
            self._cert,
            ttl=min(pooljoin.MAX_JOIN_SECONDS, max(1, int(timeout) + 1)),
        )
        self.store.pool.delete_pool_row("grants", self.node_id)
        self.store.pool.put_pool_row("joins", self.node_id, request.to_bytes())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            raw = self.store.pool.pool_row("grants", self.node_id)
            if raw is not None:
                try:
                    grant = pooljoin.JoinGrant.from_bytes(raw)
                    secrets, head = pooljoin.open_join_grant_with_head(
                        grant,
                        request=request,
                        exchange_key=exchange,
                        root_pem=self._root,
                        now=self._now(),
                        pool=self._pool(),
                        members=self.active_members(),
                    )
                except (VerificationError, MalformedError) as e:
                    log.warning("pool join: refused a grant: %s", e)
                else:
                    if head is not None:  # the custody state the granting member verified: never less
                        self.store.view.guard.keep_head(Head(head.counter, head.digest))
                    self.store.pool.hold_domain(secrets, "ACTIVATED")
                    self.store.pool.delete_pool_row("grants", self.node_id)
                    self.register()
                    log.info(
                        "pool join: node %s holds the domain, from %s", self.node_id, grant.statement.sender
                    )
                    return secrets
            await asyncio.sleep(poll)
        self.store.pool.delete_pool_row("joins", self.node_id)
        raise StateError(
            f"no pool member granted this node's join within {timeout:g} s: check that an admin ran "
            f"'sdctl pool allow {self.node_id}', that a member is up, and the members' logs"
        )

    # ------------------------------------------------------------------ a member

    def serve_joins_once(self, secrets: DomainSecrets) -> list[str]:
        """Answer every pending join request this member can check; the node ids granted."""
        requests = self.store.pool.pool_rows("joins")
        if not requests:
            return []
        self.check_standing()
        pool = self._pool()
        checked = self.store.view.guard.check_head()  # a member never grants over an altered custody state
        allowed = set(self.store.pool.pool_rows("allowed"))  # read against a verified head, and
        used = self.store.pool.served()  # each grant applies only while the permission stays as read
        head = None if checked is None else pooljoin.CustodyHead(checked.counter, checked.digest)
        granted = []
        for node_id, raw in requests.items():
            try:
                request = pooljoin.JoinRequest.from_bytes(raw)
                if request.statement.node_id != node_id:
                    raise VerificationError(
                        f"a join request under {node_id!r} names {request.statement.node_id!r}"
                    )
                pooljoin.check_join_request(
                    request, root_pem=self._root, now=self._now(), allowed=allowed, pool=pool, used=used
                )
                grant = pooljoin.make_join_grant(
                    request, secrets, self.node_id, pool, self._key, self._cert, custody_head=head
                )
                self.store.pool.grant_join(node_id, raw, request.sha256, grant.to_bytes())
            except (VerificationError, MalformedError) as e:
                log.warning("pool join of %r refused: %s", node_id, e)
                continue
            except AlreadyExistsError:
                continue  # another member answered it first
            except StateError as e:  # answered or withdrawn meanwhile, its permission gone, ...
                log.info("pool join of %r not granted: %s", node_id, e)
                continue
            granted.append(node_id)
            log.info("pool join: sealed the domain to %s", node_id)
        return granted

    async def serve_joins(self, secrets: Callable[[], DomainSecrets | None], interval: float = 0.1) -> None:
        """Answer join requests for as long as this runs (cancel to stop)."""
        while True:
            held = secrets()
            if held is not None:
                try:
                    self.serve_joins_once(held)
                except PermissionDeniedError as e:
                    log.error("pool: %s", e)
                    return
                except (TransportError, SdquorumError) as e:
                    log.debug("pool join service: %s", e)
            await asyncio.sleep(interval)


def certificate_of(row: bytes) -> bytes:
    """A member row's attestation certificate (DER)."""
    return b64d(json.loads(row).get("certificate"), "member certificate")
