"""The pool inside a running hsm-node: admin commands, status, and the member's background loop.

``hsm-node run --pool-etcd ...`` makes one :class:`PoolService` and sets it as ``node.pool``; the
admin RPCs ``AllowPoolMember`` / ``RemovePoolMember`` and ``GetStatus`` use it. Its loop
(:meth:`PoolService.run`) keeps the node in step with the pool:

* a PROVISIONED node that an admin allowed joins (:meth:`PoolMember.join`) and then holds the
  domain as ACTIVATED, with no custodian involved;
* a node holding the domain registers as a member, answers other nodes' join requests, and reloads
  its state when the pool's domain info changes (another member rotated the epoch);
* a member the pool lists as removed stops serving (its store refuses everything).

Every admin action is written to the audit log before it returns; node ids are checked against the
pool's key layout before anything is written.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from hsm_node.pool.etcd import Layout
from hsm_node.pool.member import PoolMember, allow, remove
from hsm_node.pool.store import PoolNodeStore
from hsm_node.store import DomainInfo
from sdquorum.errors import PermissionDeniedError, SdquorumError, UsageError
from sdquorum.sdfile import DomainSecrets

__all__ = ["PoolService", "PoolStatus"]

log = logging.getLogger(__name__)


class _Lifecycle(Protocol):
    @property
    def domain(self) -> DomainSecrets | None: ...
    @property
    def info(self) -> DomainInfo | None: ...
    def reload(self) -> None: ...


@dataclass(frozen=True)
class PoolStatus:
    name: str
    members: list[str]
    allowed: list[str]
    staleness: float


class PoolService:
    def __init__(
        self,
        name: str,
        member: PoolMember,
        lifecycle: _Lifecycle,
        audit: Callable[[str, Any, dict[str, Any]], None],
        now: Callable[[], int],
        join_timeout: float = 30.0,
    ) -> None:
        self.name = name
        self.member = member
        self.store: PoolNodeStore = member.store
        self._lifecycle = lifecycle
        self._audit = audit
        self._now = now
        self._join_timeout = join_timeout

    # ------------------------------------------------------------------ admin

    def allow(self, node_id: str, caller: Any) -> None:
        _check_node_id(node_id)
        allow(self.store, node_id, str(caller), self._now())
        self._audit("pool-allow", caller, {"node_id": node_id})

    def remove(self, node_id: str, caller: Any) -> bool:
        """End ``node_id``'s membership (audited). True if this changed anything; False if it was
        removed already and not allowed since: a repeated removal is no error and no new entry."""
        _check_node_id(node_id)
        allowed = self.store.pool.pool_row("allowed", node_id) is not None
        if node_id not in self.member.active_members() and not allowed:
            if self.member.removed(node_id):
                return False
            raise UsageError(f"{node_id!r} is neither a member of this pool nor allowed to join it")
        remove(self.store, node_id, str(caller), self._now())
        self._audit("pool-remove", caller, {"node_id": node_id})
        return True

    def status(self) -> PoolStatus:
        return PoolStatus(
            self.name,
            sorted(self.member.active_members()),
            sorted(self.store.pool.pool_rows("allowed")),
            self.store.pool.staleness(),
        )

    # ------------------------------------------------------------------ the loop

    def audit_alterations(self) -> None:
        """Audit each pool row this member found altered outside sdquorum, once (the reads that found
        it were refused and logged; hsm_node.pool.integrity)."""
        guard = self.store.view.guard
        while (row := guard.next_alteration()) is not None:
            self._audit("pool-state-altered", "node", {"row": row})
            guard.alteration_audited()

    def step(self) -> None:
        """One pass of the member loop, for a node that holds the domain."""
        life = self._lifecycle
        if life.info != self.store.pool.pool_info():
            life.reload()  # another member rotated, or this node's view was behind
        held = life.domain
        if held is None:
            return
        if self.member.node_id not in self.member.active_members():
            self.member.register()
        self.member.serve_joins_once(held)

    async def run(self, interval: float = 0.1) -> None:
        """Keep the node in step with the pool until cancelled."""
        last = ""
        while True:
            try:
                self.audit_alterations()
                self.member.check_standing()
                if self._lifecycle.domain is None:
                    await self._maybe_join()
                else:
                    self.step()
            except PermissionDeniedError as e:
                log.error("pool: %s", e)
                self.store.pool.mark_removed()
                return
            except SdquorumError as e:  # once per kind of problem, not every pass of the loop
                kind = re.sub(r"[0-9.]+", "#", str(e))  # "not heard from etcd for 6.1 s" is one kind
                if kind != last:
                    log.warning("pool: %s", e)
                last = kind
            else:
                last = ""
            await asyncio.sleep(interval)

    async def _maybe_join(self) -> None:
        if (
            self.store.pool.pool_info() is None
            or self.store.pool.pool_row("allowed", self.member.node_id) is None
        ):
            return
        await self.member.join(self._join_timeout)
        self._lifecycle.reload()
        log.info("pool: joined %s; state ACTIVATED", self.name)


def _check_node_id(node_id: str) -> None:
    Layout(b"x").member(node_id)  # UsageError naming the rule for a name that cannot be a key segment
