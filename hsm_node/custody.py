"""Custody of an activated domain: drills, Azure restores, custody records, compromise, exports.

COMPROMISED is a flag an admin sets on an ACTIVATED node: drills, rotation and Azure restores stop.
An Azure restore re-encrypts a domain to an external key, so it is never a way out for this node's
own domain: it is refused on a compromised node, and refused before any custodian is asked (and
audited) when the Azure file's slots are encrypted to a custodian certificate of the domain this
node holds or the file holds an sdquorum domain exported for Azure (``security_domain_file(fmt=
"azure")``, whose one item is tagged ``AZURE_PAYLOAD_TAG``). That export stays possible (its shares
are the same custodians'; Azure's own tools need their private keys), but no sdquorum node turns
it into a transfer file, and agents refuse it too (:mod:`sdquorum.azure.ceremony`).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import replace
from typing import Any

from coordinator import (
    DRILL_OUTCOMES,
    AzureRestoreSession,
    DrillSession,
)
from hsm_node.agents import Agents
from hsm_node.ceremony_host import Parts, PartsService
from sdquorum import pki, sdfile
from sdquorum.azure.ceremony import AZURE_PAYLOAD_TAG
from sdquorum.azure.sdfile import seal_azure_domain
from sdquorum.errors import SdquorumError, StateError, UsageError
from sdquorum.pki import Role
from sdquorum.review import LOSS_KINDS, CustodyRecord, DrillResult

log = logging.getLogger("sdquorum.node")


__all__ = ["Custody"]


class Custody(PartsService):
    """Drills, Azure restores, custody records, the compromise flag and SD-file exports."""

    def __init__(self, parts: Parts, agents: Agents) -> None:
        super().__init__(parts)
        self._agents = agents
        self._host.on_completed(DrillSession, self._apply_drill)

    def require_healthy_domain(self, what: str) -> tuple[sdfile.SignedHeader, sdfile.DomainSecrets]:
        self._lifecycle.require_active()
        if self._lifecycle.compromised:
            raise StateError(
                f"the domain is marked compromised: no {what}; provision a new domain (docs/runbooks/compromise.md)"
            )
        data = self._store.domain.sd_file()
        if data is None or self._lifecycle.domain is None:
            raise StateError("this node holds no SD file: it was activated by an older version")
        return sdfile.SecurityDomainFile.from_bytes(data).signed_header, self._lifecycle.domain

    async def start_drill(self, reason: str, ttl_seconds: int, caller: Role) -> DrillSession:
        async with self._host.lock:
            signed, _ = self.require_healthy_domain("drills")
            session = self._host.new_session(DrillSession, reason, ttl_seconds, caller)
            session.start(signed, self._now(), self._host.sign_attestation)
            self._agents.check_keys()
            self._notices.notify()
            return session

    async def start_azure_restore(
        self, sd_file: bytes, exchange_cert: bytes, reason: str, ttl_seconds: int, caller: Role
    ) -> AzureRestoreSession:
        """Coordinate an Azure restore: the node's own state and domain are not touched, and no share
        of the domain this node holds goes into it (module docstring)."""
        async with self._host.lock:
            if self._lifecycle.compromised:
                reason = (
                    "the domain on this node is marked compromised: no Azure restore here; "
                    "use a new node (docs/runbooks/compromise.md)"
                )
                self._audit("azure-restore-refused", caller, {"reason": reason})
                raise StateError(reason)
            thumbprints, keys = self._held_custodian_keys()
            session = self._host.new_session(AzureRestoreSession, reason, ttl_seconds, caller)
            try:
                session.start(
                    sd_file,
                    exchange_cert,
                    self._now(),
                    self._host.sign_attestation,
                    held_thumbprints=thumbprints,
                    held_keys=keys,
                )
            except SdquorumError as e:
                session.abort(f"the Azure file or exchange certificate was refused: {e}")
                self._audit(
                    "azure-restore-refused",
                    caller,
                    {"session_id": session.session_id, "reason": str(e)},
                )
                self._host.apply_if_finished(session)
                raise
            destination = session.destination_certificate
            self._audit(
                "azure-restore-file-accepted",
                caller,
                {
                    "session_id": session.session_id,
                    "sd_file_sha256": hashlib.sha256(sd_file).hexdigest(),
                    "exchange_certificate_sha256": hashlib.sha256(destination).hexdigest(),
                    "exchange_key_spki_sha256": pki.spki_sha256(destination).hex(),
                },
            )
            self._notices.notify()
            return session

    def _held_custodian_keys(self) -> tuple[frozenset[bytes], frozenset[bytes]]:
        """Thumbprints and SPKI digests of every custodian certificate of the domain this node holds
        (none on a node that holds no domain)."""
        data = self._store.domain.sd_file()
        if data is None or self._lifecycle.domain is None:
            return frozenset(), frozenset()
        slots = sdfile.SecurityDomainFile.from_bytes(data).header.slots
        return (
            frozenset(slot.thumbprint for slot in slots),
            frozenset(pki.spki_sha256(slot.certificate_der) for slot in slots),
        )

    def azure_transfer_file(self, session_id: str) -> bytes:
        session = self._host.session_by_id(session_id)
        if not isinstance(session, AzureRestoreSession) or session.transfer_file is None:
            raise StateError(f"session {session_id} has no Azure transfer file (it has not completed)")
        return session.transfer_file

    def security_domain_file(self, fmt: str = "native") -> bytes:
        """The current epoch's SD file; ``azure``: the same payload as an Azure version-2 file, split
        anew to the same custodians and quorum (their keys open it with Azure's own tools too, each
        custodian handing over its private key). Its one item is tagged ``AZURE_PAYLOAD_TAG``, so no
        sdquorum node and no agent turns it into a transfer file (module docstring)."""
        self._lifecycle.require_active()
        data = self._store.domain.sd_file()
        if data is None or self._lifecycle.domain is None:
            raise StateError("this node holds no SD file")
        if fmt in ("", "native"):
            return data
        if fmt != "azure":
            raise UsageError(f"SD file format {fmt!r}: use native or azure")
        header = sdfile.SecurityDomainFile.from_bytes(data).header
        azure = seal_azure_domain(
            [(AZURE_PAYLOAD_TAG, self._lifecycle.domain.to_bytes())],
            [slot.certificate_der for slot in header.slots],
            header.quorum,
            self._rng,
        )
        self._audit("sd-file-exported", "admin", {"format": "azure", "epoch": header.epoch})
        return azure.to_bytes()

    def add_custody_record(self, record: CustodyRecord, caller: Role) -> CustodyRecord:
        self._lifecycle.require_active()
        stamped = CustodyRecord(
            time=self._now(),
            kind=record.kind,
            custodian=record.custodian,
            holder=record.holder,
            location=record.location,
            note=record.note,
            actor=str(caller),
        )
        slots = {s.name: s for s in self._current_header().slots}
        names = set(slots)
        if stamped.kind in LOSS_KINDS and stamped.custodian in slots:  # the key, not only the name
            stamped = replace(stamped, key_sha256=pki.spki_sha256(slots[stamped.custodian].certificate_der))
        if (
            stamped.custodian is not None
            and stamped.custodian not in names
            and stamped.kind not in ("lost", "compromised")
        ):
            raise UsageError(
                f"{stamped.custodian!r} is not a custodian of this epoch: use one of {', '.join(sorted(names))}"
            )
        self._store.records.add_custody_record(stamped)
        self._audit(f"custody-{stamped.kind}", caller, stamped.to_json())
        return stamped

    def mark_compromised(self, reason: str, caller: Role) -> None:
        self._lifecycle.require_active()
        if not reason.strip():
            raise UsageError("say why the domain is compromised (--reason)")
        if self._host.session is not None and not self._host.session.finished:
            self._host.session.abort("the domain was marked compromised")
            self._host.apply_if_finished(self._host.session)
        self._store.domain.set_flag("compromised", reason.strip()[:500])
        self._audit("domain-compromised", caller, {"reason": reason.strip()[:500]})
        self._notices.notify()

    def custody_state(self) -> dict[str, Any]:
        self._lifecycle.require_active()
        signed = self._current_signed()
        return {
            "node_id": self._config.node_id,
            "header": signed.header_bytes,
            "signature": signed.signature,
            "records": [r.to_json() for r in self._store.records.custody_records()],
            "drills": [r.to_json() for r in self._store.records.drill_results()],
            "retired": [r.to_json() for r in self._store.records.retired_epochs()],
            "compromised": self._lifecycle.compromised,
        }

    def _current_signed(self) -> sdfile.SignedHeader:
        data = self._store.domain.sd_file()
        if data is None:
            raise StateError("this node holds no SD file")
        return sdfile.SecurityDomainFile.from_bytes(data).signed_header

    def _current_header(self) -> sdfile.Header:
        return self._current_signed().header

    def _apply_drill(self, session: DrillSession) -> bool:
        now = self._now()
        results = [
            DrillResult(now, p.name, p.x, DRILL_OUTCOMES.get(p.status, "unreachable"), p.detail[:200])
            for p in session.status().custodians
        ]
        self._store.records.add_drill_results(results)
        self._audit(
            "drill-results",
            "node",
            {"session_id": session.session_id, "results": {r.custodian: r.outcome for r in results}},
        )
        return False
