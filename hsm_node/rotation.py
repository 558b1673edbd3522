"""Rotation: the same domain payload sealed to a new roster and quorum, as the next epoch.

A key recorded lost or compromised (compared by SPKI) must not hold a share of the next epoch. The
new epoch, its SD file and the retired epoch are written in the completion's transaction; the
custodians the rotation removed are told of the new epoch too (their agents would otherwise still
release for the retired one).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime

from coordinator import (
    RotationProposal,
    RotationSession,
)
from hsm_node.ceremony_host import Parts, PartsService
from hsm_node.custody import Custody
from hsm_node.store import DomainInfo
from sdquorum import pki, policy, sdfile
from sdquorum.errors import StateError, UsageError
from sdquorum.pki import Role
from sdquorum.review import LOSS_KINDS, RetiredEpoch

log = logging.getLogger("sdquorum.node")


__all__ = ["Rotation"]


class Rotation(PartsService):
    """Propose a rotation, and apply a completed one: the next epoch."""

    def __init__(self, parts: Parts, custody: Custody) -> None:
        super().__init__(parts)
        self._custody = custody
        self._host.on_completed(RotationSession, self._apply_rotation)

    async def propose_rotation(
        self, certificates: Sequence[bytes], quorum: int, reason: str, ttl_seconds: int, caller: Role
    ) -> RotationSession:
        async with self._host.lock:
            signed, secrets = self._custody.require_healthy_domain("rotation")
            now = self._now()
            plan = policy.validate_download(certificates, quorum, datetime.fromtimestamp(now, tz=UTC))
            self._refuse_lost_keys(signed.header, plan.certificates_der)
            with self._host.opening():  # the proposal unaudited: no session
                session = self._host.new_session(RotationSession, reason, ttl_seconds, caller)
                proposal = RotationProposal(
                    domain_id=secrets.domain_id,
                    from_epoch=signed.header.epoch,
                    quorum=plan.quorum,
                    certificates_der=plan.certificates_der,
                    proposer=str(caller),
                    reason=session.reason,
                    expires_at=session.expires_at,
                )
                session.start(signed, proposal, now, self._host.sign_attestation)
                current = [(slot.name, slot.certificate_der) for slot in signed.header.slots]
                for warning in plan.warnings:
                    log.warning("rotation %s: %s", session.session_id, warning)
                self._audit(
                    "rotation-proposed",
                    caller,
                    {
                        "session_id": session.session_id,
                        "proposal": proposal.summary(current),
                        "warnings": list(plan.warnings),
                    },
                )
            self._notices.notify()
            return session

    def _refuse_lost_keys(self, header: sdfile.Header, certificates_der: Sequence[bytes]) -> None:
        """A key recorded lost or compromised since this epoch was sealed must not hold a share of
        the next one: a lost key means compromise, and the quarterly review counts a loss from an
        earlier epoch as healed by the rotation that followed it."""
        records = self._store.records.custody_records()
        # Keys are compared by SPKI SHA-256: a fresh certificate over a lost key is that lost key.
        lost_keys: dict[bytes, tuple[str, str]] = {}
        for r in records:
            if r.kind in LOSS_KINDS and r.key_sha256 and r.custodian is not None:
                lost_keys[r.key_sha256] = (r.custodian, r.kind)  # whenever, under whatever name
        lost = {r.custodian: r.kind for r in records if r.kind in LOSS_KINDS and r.time >= header.created_at}
        for slot in header.slots:  # records made before they named their key: this epoch's, by name
            if slot.name in lost:
                lost_keys.setdefault(pki.spki_sha256(slot.certificate_der), (slot.name, lost[slot.name]))
        for der in certificates_der:
            found = lost_keys.get(pki.spki_sha256(der))
            if found is not None:
                name, kind = found
                raise UsageError(
                    f"the new roster keeps {name}'s key, which is recorded {kind}, under "
                    f"{pki.load_cert(der).subject.rfc4514_string() or 'a certificate'}: "
                    f"give {name} a new wrapping key (custodian-agent keygen), or leave that key out"
                )

    def _apply_rotation(self, session: RotationSession) -> bool:
        proposal, old, old_info = session.proposal, self._lifecycle.domain, self._lifecycle.info
        if proposal is None or old is None or old_info is None:  # pragma: no cover - set when it started
            raise StateError("the rotation has no proposal or the node no domain")
        old_sd = self._store.domain.sd_file()
        old_header_hash = (
            sdfile.SecurityDomainFile.from_bytes(old_sd).signed_header.sha256 if old_sd else bytes(32)
        )
        new_epoch = old_info.epoch + 1
        sd = sdfile.seal_domain(
            old,  # the same payload: data encryption key, signing and backup keys are unchanged
            proposal.certificates_der,
            proposal.quorum,
            epoch=new_epoch,
            created_by=self._config.node_id,
            created_at=self._now(),
            rng=self._rng,
        )
        data = sd.to_bytes()
        info = DomainInfo(old.domain_id, new_epoch, proposal.quorum, len(proposal.certificates_der))
        retired = RetiredEpoch(old_info.epoch, old_header_hash, self._now())
        self._store.domain.rotate(old, info, data, retired)
        self._store.domain.note_epoch(old.domain_id, new_epoch)
        if old_sd:  # the custodians this rotation removed are told of the new epoch too
            kept = {slot.thumbprint.hex() for slot in sd.header.slots}
            before = {s.thumbprint.hex() for s in sdfile.SecurityDomainFile.from_bytes(old_sd).header.slots}
            former = sorted((set(self._notices.former_custodians()) | before) - kept)
            self._store.domain.set_flag("former-custodians", json.dumps(former))
        self._lifecycle.rotate_to(info)
        self._notices.refresh(sd.signed_header)  # announced to its custodians' agents
        session.new_sd_file = data
        self._audit(
            "rotated",
            "node",
            {
                "session_id": session.session_id,
                "domain_id": old.domain_id.hex(),
                "retired_epoch": retired.epoch,
                "epoch": new_epoch,
                "quorum": proposal.quorum,
                "custodians": [s.name for s in sd.header.slots],
                "sd_file_sha256": hashlib.sha256(data).hexdigest(),
                "retired_sd_header_sha256": old_header_hash.hex(),
            },
        )
        return False
