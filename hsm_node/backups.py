"""Backup and restore of the key store (format: :mod:`sdquorum.backup`, ADR 0003 and 0007).

A backup is the key store's rows (keys still sealed under the data encryption key; deleted keys
still retained with their owner and deletion time, so a restore neither loses nor revives them) in
a backup image (:mod:`hsm_node.store.image`), sealed under the domain's backup key and signed. A
restore replaces the whole key store atomically (one transaction; in a pool, rows staged under a new
key-set generation and one flip, :mod:`hsm_node.pool.keyset`); a refused or failed restore changes
nothing. Both
are audited; only an ACTIVATED node does either.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from hsm_node.audit_log import Auditor
from hsm_node.dataplane import KeyManager
from hsm_node.state import Lifecycle
from hsm_node.store import NodeStore
from sdquorum import backup
from sdquorum.errors import OutcomeUnknownError
from sdquorum.pki import Role

__all__ = ["Backups"]

log = logging.getLogger("sdquorum.node")


class Backups:
    """Seal the key store into a backup, and restore one."""

    def __init__(
        self,
        store: NodeStore,
        lifecycle: Lifecycle,
        audit: Auditor,
        keys: KeyManager,
        *,
        node_id: str,
        now: Callable[[], int],
        rng: Callable[[int], bytes],
    ) -> None:
        self._store = store
        self._lifecycle = lifecycle
        self._audit = audit
        self._keys = keys
        self._node_id = node_id
        self._now = now
        self._rng = rng

    def backup(self, caller: Role | str = "admin") -> bytes:
        """The key store as a version 2 backup (module docstring)."""
        domain = self._lifecycle.require_active()
        image, count = self._store.keys.export_key_rows(domain.data_encryption_key)
        created = self._now()
        data = backup.seal_backup(
            domain, image, key_count=count, node_id=self._node_id, created_at=created, rng=self._rng
        )
        self._audit("backup-exported", caller, {"keys": count, "created_at": created, "bytes": len(data)})
        return data

    def restore(self, data: bytes, caller: Role | str = "admin") -> int:
        """Replace the key store with a backup of this node's domain (version 2 or 1), atomically;
        a refused or failed restore changes nothing. A restore rolls the key store back to the
        backup's day (keys deleted or purged since come back as they were then), so it is audited
        with the backup's origin. Keys deleted in the backup come back deleted, with their deletion
        time: those whose retention has ended since are purged at once (audited)."""
        domain = self._lifecycle.require_active()
        opened = backup.open_backup(data, domain)
        count = opened.header.key_count
        details: dict[str, object] = {
            "keys": count,
            "backup_created_at": opened.header.created_at,
            "backup_node": opened.header.node_id,
        }
        try:
            if opened.key_rows is not None:
                self._store.keys.import_key_rows(opened.key_rows, opened.header.key_count)
            else:
                self._store.keys.replace_keys(domain.data_encryption_key, opened.keys)
        except OutcomeUnknownError:  # it may have taken effect: its audit cannot be lost
            log.warning("a restore of %d keys may or may not have taken effect", count)
            try:
                self._audit("key-store-restored", caller, {**details, "outcome": "unknown"})
            except Exception as e:  # the store that was lost holds the audit log too (a pool)
                log.error(
                    "a restore whose outcome is unknown could not be audited (%s): %s",
                    e,
                    {**details, "by": str(caller)},
                )
            raise
        log.info("restored %d keys from a backup of domain %s", count, domain.domain_id.hex())
        self._audit("key-store-restored", caller, details)
        self._keys.purge_expired_keys()
        return count
