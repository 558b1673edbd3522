"""The node's audit log: hash-chained entries signed with the node's attestation key.

There are two chains: ``provisioning`` until the node holds a domain, then ``domain``, whose first
entry (:meth:`AuditLog.start_domain_chain`) names the domain, epoch and SD file the node was
activated or recovered with, and links the provisioning chain's head. Refused calls are audited
through per-peer windows (:mod:`sdquorum.refusals`): each peer's first refusals of a window in full,
the rest counted into one entry when the window closes (the ticker) or the server stops, so a
caller flooding refused calls adds a bounded number of entries per window.

An entry is written in the caller's transaction (inside a batch, it commits with the batch): an
action and its audit entry are durable together or not at all. Each entry links to the last one
the store holds, read back before every append; the log parses that one again only when it is not
the entry the log itself wrote last (a batch that did not commit leaves the store's older head).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hsm_node.store import NodeStore
from sdquorum import audit
from sdquorum.errors import UsageError
from sdquorum.pki import Role
from sdquorum.refusals import Refusal, RefusalWindows

__all__ = ["AuditLog", "Auditor"]

log = logging.getLogger("sdquorum.node")


class Auditor(Protocol):
    """What a service needs of the audit log: one call that writes an entry."""

    def __call__(
        self, event: str, actor: str | Role, details: dict[str, Any], chain: str | None = None
    ) -> None: ...


class AuditLog:
    """Append, export, and the refusal windows. ``chain`` says which chain is current."""

    def __init__(
        self,
        store: NodeStore,
        *,
        node_id: str,
        key: Ed25519PrivateKey,
        certificate_der: bytes,
        now: Callable[[], int],
        chain: Callable[[], str],
    ) -> None:
        self._store = store
        self._node_id = node_id
        self._key = key
        self._certificate_der = certificate_der
        self._now = now
        self.chain = chain
        self.refusals = RefusalWindows()  # public: a test may bound its peers
        self._written: dict[str, tuple[str, audit.ChainHead]] = {}  # chain -> last entry written, its head

    def __call__(
        self, event: str, actor: str | Role, details: dict[str, Any], chain: str | None = None
    ) -> None:
        """Append an entry to ``chain`` (the current chain if None)."""
        chain = chain or self.chain()
        entry = audit.make_entry(
            self._head(chain), time=self._now(), event=event, actor=str(actor), details=details, key=self._key
        )
        text = json.dumps(entry.to_json(), sort_keys=True)
        self._store.records.append_audit(chain, entry.seq, text)
        self._written[chain] = (text, audit.ChainHead(entry.seq, entry.hash))

    def _head(self, chain: str) -> audit.ChainHead | None:
        """Where ``chain`` ends in the store (None: it is empty)."""
        last = self._store.records.last_audit(chain)
        if last is None:
            return None
        written = self._written.get(chain)
        if written is not None and written[0] == last:  # the entry this log wrote: its head is known
            return written[1]
        entry = audit.AuditEntry.from_json(json.loads(last))
        return audit.ChainHead(entry.seq, entry.hash)

    def start_domain_chain(self, event: str, details: dict[str, Any]) -> None:
        head = self._store.records.last_audit("provisioning")
        details = {**details, "provisioning_head": json.loads(head)["hash"] if head else audit.GENESIS.hex()}
        self(event, "node", details, chain="domain")

    def export(self, chain: str) -> list[str]:
        if chain not in ("domain", "provisioning"):
            raise UsageError("the audit chain is 'domain' or 'provisioning'")
        entries = [
            audit.AuditEntry.from_json(json.loads(e)) for e in self._store.records.audit_entries(chain)
        ]
        return audit.export_lines(
            entries,
            node_id=self._node_id,
            certificate_der=self._certificate_der,
            key=self._key,
            time=self._now(),
        )

    def refusal(self, refusal: Refusal) -> bool:
        """A refused call (its reason comes bounded from sdquorum_rpc.errors, its caller named by
        certificate subject and public-key SHA-256): the peer's first of its (method, code) in the
        window is written now, later ones are counted into the window's closing entry. True if
        this refusal was written in full."""
        records = self.refusals.refused(refusal, self._now())
        for rec in records:
            self(rec.event, rec.actor, rec.details)
        return any(rec.event == "refused" for rec in records)

    def close_refusal_windows(self, *, all_open: bool = False) -> None:
        """Write the counts of the refusal windows that have ended (``all_open``: of every window,
        on shutdown, so no count is lost)."""
        now = self._now()
        done = self.refusals.close_all(now) if all_open else self.refusals.close_due(now)
        for rec in done:
            try:
                self(rec.event, rec.actor, rec.details)
            except Exception:  # the ticker and the shutdown go on; the counts at least reach the log
                log.exception("could not audit %s by %s: %s", rec.event, rec.actor, json.dumps(rec.details))
