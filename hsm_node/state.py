"""The node's state and the domain it holds, kept in step with its store.

States: PROVISIONED -> ACTIVATED (download), or PROVISIONED -> RECOVERY_PENDING -> ACTIVATED (a
recovery ceremony completes). A node never activated is RECOVERY_PENDING only while a recovery
session runs: when it fails or a restart drops it, :meth:`Lifecycle.back_to_provisioned`. The data plane and custody work only in ACTIVATED:
:meth:`Lifecycle.require_active` is the one guard, and it hands back the domain secrets it guards.

Invariant: what :class:`Lifecycle` holds in memory is what the store holds. Every change writes the
store first and then memory; after a batch that did not commit, :meth:`Lifecycle.reload` reads
memory back from the store (a completion's activation or rotation is undone).
"""

from __future__ import annotations

import logging
from enum import StrEnum

from hsm_node.store import DomainInfo, NodeStore
from sdquorum.errors import StateError, StorageError
from sdquorum.sdfile import DomainSecrets

__all__ = ["Lifecycle", "NodeState"]

log = logging.getLogger("sdquorum.node")


class NodeState(StrEnum):
    PROVISIONED = "PROVISIONED"
    RECOVERY_PENDING = "RECOVERY_PENDING"
    ACTIVATED = "ACTIVATED"


class Lifecycle:
    """The node's state, and the domain secrets and info while it holds a domain."""

    def __init__(self, store: NodeStore) -> None:
        self._store = store
        self.first_start = store.domain.state() is None
        if self.first_start:
            store.domain.set_state(NodeState.PROVISIONED)
        self.reload()
        if self._state is NodeState.ACTIVATED and self._domain is None:
            raise StateError(
                "the node database says ACTIVATED but holds no domain: restore the data directory"
            )

    def reload(self) -> None:
        """Memory from the store (at start, and after a batch that did not commit)."""
        loaded = self._store.domain.load_domain()
        self._domain: DomainSecrets | None = loaded[0] if loaded is not None else None
        self._info: DomainInfo | None = loaded[1] if loaded is not None else None
        self._state = NodeState(self._store.domain.state() or NodeState.PROVISIONED)

    @property
    def state(self) -> NodeState:
        return self._state

    @property
    def domain(self) -> DomainSecrets | None:
        """The domain secrets, held from activation on (the states that use them ask
        :meth:`require_active`)."""
        return self._domain

    @property
    def info(self) -> DomainInfo | None:
        return self._info

    @property
    def compromised(self) -> bool:
        """Whether an admin marked the domain compromised (drills, rotation and Azure restores stop)."""
        return self._store.domain.flag("compromised") is not None

    def require_active(self) -> DomainSecrets:
        """The domain secrets of an ACTIVATED node; StateError in any other state."""
        if self._state is not NodeState.ACTIVATED or self._domain is None:
            raise StateError(
                "the node is not activated: download the security domain first (sdctl download), "
                "or recover it on a new node (sdctl recover)"
            )
        return self._domain

    def begin_recovery(self) -> None:
        self._store.domain.set_state(NodeState.RECOVERY_PENDING)
        self._state = NodeState.RECOVERY_PENDING

    def back_to_provisioned(self, why: str) -> None:
        """A node never activated whose recovery ended without completing is PROVISIONED again, so
        either a download or a new recovery may follow. If that cannot be written, memory keeps
        what the store says, and the next start tries again."""
        if self._domain is not None or self._state is not NodeState.RECOVERY_PENDING:
            return
        try:
            self._store.domain.set_state(NodeState.PROVISIONED)
        except StorageError as e:
            log.error("could not return the node to PROVISIONED (%s): %s", why, e)
            return
        self._state = NodeState.PROVISIONED
        log.warning("node back to PROVISIONED: %s", why)

    def activate(self, secrets: DomainSecrets, info: DomainInfo, sd_file: bytes) -> None:
        """Hold ``secrets`` (a download or a completed recovery): the domain, its SD file, the
        epoch seen and the state, written together."""
        with self._store.batch():
            self._store.domain.activate(secrets, info, NodeState.ACTIVATED, sd_file)
            self._store.domain.note_epoch(info.domain_id, info.epoch)
        self._state, self._domain, self._info = NodeState.ACTIVATED, secrets, info

    def rotate_to(self, info: DomainInfo) -> None:
        """The epoch the store now holds (after :meth:`NodeStore.rotate`)."""
        self._info = info
