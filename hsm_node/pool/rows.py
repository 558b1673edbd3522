"""The pool's own rows in etcd (beside the storage seam's): membership and joins.

``allowed/<node_id>``: an admin's permission to join; ``members/<node_id>``: a member (its
attestation certificate and state); ``joins/<node_id>``: a pending join request;
``grants/<node_id>``: its answer; ``served/<request sha256 hex>``: a request answered once (a replay
finds it taken). The protocol over them: :mod:`hsm_node.pool.member`.
"""

from __future__ import annotations

import urllib.parse
from typing import TYPE_CHECKING

from hsm_node.pool.view import EtcdView
from hsm_node.store.protocol import DomainInfo
from sdquorum.errors import StateError
from sdquorum.sdfile import DomainSecrets

if TYPE_CHECKING:
    from hsm_node.pool.store import _PoolDomain

__all__ = ["PoolRows"]


class PoolRows:
    def __init__(self, view: EtcdView, domain: _PoolDomain) -> None:
        self._v = view
        self._domain = domain

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
        request served (AlreadyExistsError if it was), puts the grant, removes the request."""
        with self._v.write() as tx:
            if self._v.read_for_write(tx, self._v.sub("joins", node_id)) != request:
                raise StateError(f"the join request of {node_id!r} changed or is gone: nothing was granted")
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
        with self._v.write() as tx:
            tx.local["domains"] = self._domain.domains_with(secrets)
            tx.local["state"] = state
