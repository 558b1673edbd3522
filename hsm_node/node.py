"""The emulated HSM node: the composition root of its services over one store, clock and rng.

Each responsibility lives in one module, and :class:`Node` builds them and hands them out:

=====================  =====================================================================
``node.lifecycle``     :mod:`hsm_node.state`: node state; ``require_active()`` returns the secrets
``node.audit_log``     :mod:`hsm_node.audit_log`: the hash-chained audit log and refusal windows
``node.notices``       :mod:`hsm_node.notices`: change tokens and the domain notice for agents
``node.ceremonies``    :mod:`hsm_node.ceremony_host`: the one session slot: deadlines, status, cancel, watch
``node.agents``        :mod:`hsm_node.agents`: connected agents and what each stream is served
``node.answers``       :mod:`hsm_node.answers`: answers in batches of one transaction each
``node.activation``    :mod:`hsm_node.activation`: download and recovery
``node.custody``       :mod:`hsm_node.custody`: drills, Azure restore, custody records, exports
``node.rotation``      :mod:`hsm_node.rotation`: rotation to the next epoch
``node.keys``          :mod:`hsm_node.dataplane`: create, list, delete, recover, purge keys
``node.key_ops``       :mod:`hsm_node.dataplane`: use a key
``node.backups``       :mod:`hsm_node.backups`: backup and restore of the key store
``node.store``         :mod:`hsm_node.store`: the storage seam every service writes through
=====================  =====================================================================

Every ceremony step, every answer accepted or rejected (with the custodian), every refusal and every
custody event goes into the audit log, signed with the node's attestation key, in the same store
transaction as the change it records. Nothing here does network I/O: the gRPC servicers in
:mod:`hsm_node.server` call the services. The node owns the clock and randomness it was given; the
services read time and randomness only through them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordinator import Ceremony
from hsm_node.activation import Activation
from hsm_node.agents import Agents
from hsm_node.answers import Answers
from hsm_node.audit_log import AuditLog
from hsm_node.backups import Backups
from hsm_node.ceremony_host import DEFAULT_SESSION_SECONDS, CeremonyHost, Parts
from hsm_node.cryptopool import CryptoPool
from hsm_node.custody import Custody
from hsm_node.dataplane import DEFAULT_KEY_RETENTION_DAYS, MAX_KEY_RETENTION_DAYS, KeyManager, KeyService
from hsm_node.notices import Notices
from hsm_node.rotation import Rotation
from hsm_node.state import Lifecycle, NodeState
from hsm_node.store import DomainInfo, NodeStore
from sdquorum.errors import UsageError
from sdquorum_rpc.observability import NodeMetrics

__all__ = ["Node", "NodeConfig", "NodeState"]


@dataclass(frozen=True)
class NodeConfig:
    node_id: str
    address: str
    data_dir: Path
    attestation_key: Ed25519PrivateKey
    attestation_cert_der: bytes
    default_session_seconds: int = DEFAULT_SESSION_SECONDS
    key_retention_days: int = DEFAULT_KEY_RETENTION_DAYS

    def __post_init__(self) -> None:
        if not 1 <= self.key_retention_days <= MAX_KEY_RETENTION_DAYS:
            raise UsageError(
                f"keys.retention_days = {self.key_retention_days}: use 1..{MAX_KEY_RETENTION_DAYS}"
            )


class Node:
    """The services of one node over one store (module docstring)."""

    def __init__(
        self,
        config: NodeConfig,
        store: NodeStore,
        *,
        clock: Callable[[], float] = time.time,
        rng: Callable[[int], bytes] = os.urandom,
        metrics: NodeMetrics | None = None,
        crypto_pool: CryptoPool | None = None,
    ) -> None:
        self.config = config
        self.crypto_pool = crypto_pool
        self.store = store
        self._clock = clock
        now = self.now
        self.lifecycle = Lifecycle(store)
        self.pool: Any = None  # an HSM pool member: hsm_node.pool.service.PoolService (set by the CLI)
        self.audit_log = AuditLog(
            store,
            node_id=config.node_id,
            key=config.attestation_key,
            certificate_der=config.attestation_cert_der,
            now=now,
            chain=self.audit_chain,
        )
        audit = self.audit_log
        self.notices = Notices(store, self.lifecycle, lambda: self.ceremonies.session)
        self.ceremonies = CeremonyHost(
            config,
            audit,
            self.notices,
            store=store,
            lifecycle=self.lifecycle,
            now=now,
            rng=rng,
            tick=self.tick,
            metrics=metrics,
        )
        host, life = self.ceremonies, self.lifecycle
        self.agents = Agents(host, audit, now)
        self.answers = Answers(store, life, host, self.agents, audit, now)
        parts = Parts(config, store, life, host, audit, now, rng)
        self.activation = Activation(parts)
        self.custody = Custody(parts, self.agents)
        self.rotation = Rotation(parts, self.custody)
        self.keys = KeyManager(store, life, audit, now, config.key_retention_days)
        self.key_ops = KeyService(store, life, config.key_retention_days, crypto_pool)
        self.backups = Backups(store, life, audit, self.keys, node_id=config.node_id, now=now, rng=rng)
        if life.first_start:
            audit("node-provisioned", "node", {"node_id": config.node_id})
        if life.state is NodeState.ACTIVATED:
            self.keys.purge_expired_keys_now()

    def now(self) -> int:
        return int(self._clock())

    @property
    def address(self) -> str:
        """Where custodians reach this node, as the ceremonies' attestations say."""
        return self.ceremonies.address

    @address.setter
    def address(self, value: str) -> None:
        self.ceremonies.address = value

    @property
    def metrics(self) -> NodeMetrics | None:
        """Where ended ceremonies are counted (None: nowhere)."""
        return self.ceremonies.metrics

    @metrics.setter
    def metrics(self, value: NodeMetrics | None) -> None:
        self.ceremonies.metrics = value

    @property
    def state(self) -> NodeState:
        return self.lifecycle.state

    @property
    def domain_info(self) -> DomainInfo | None:
        return self.lifecycle.info

    @property
    def session(self) -> Ceremony | None:
        return self.ceremonies.session

    @property
    def compromised(self) -> bool:
        return self.lifecycle.compromised

    def audit_chain(self) -> str:
        return "domain" if self.lifecycle.domain is not None else "provisioning"

    async def tick(self) -> None:
        """Close due refusal windows, apply the session's deadline, return a never-activated node
        with no recovery running to PROVISIONED, purge keys past their retention (called
        periodically by the server, and by every watch)."""
        self.audit_log.close_refusal_windows()
        if self.ceremonies.session is not None:
            self.ceremonies.settle(self.ceremonies.session)
        self.activation.leave_recovery_if_none_runs()
        if self.state is NodeState.ACTIVATED and self.now() >= self.keys.next_purge_check:
            self.keys.purge_expired_keys_now()
