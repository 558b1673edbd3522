"""The rotation proposal: the new roster and quorum an admin proposes and m custodians approve.

Canonical JSON; its SHA-256 is carried in the node's attested statement, and each approving
custodian's proof of possession is bound to it. Shown to each custodian's human before approval.

Invariant: a key is identified by the SHA-256 of its SubjectPublicKeyInfo (:func:`pki.spki_sha256`),
never by certificate bytes: a roster holding one key twice is refused, and the summary's NEW KEY
mark compares keys, so a new certificate over a key the domain already uses is not a NEW KEY.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from sdquorum import fields as f
from sdquorum import pki
from sdquorum.encoding import b64d, b64e, canonical_json, parse_json_object
from sdquorum.errors import MalformedError

__all__ = ["RotationProposal"]

PROPOSAL_TYPE = "sdquorum-rotation-proposal-v1"


@dataclass(frozen=True)
class RotationProposal:
    domain_id: bytes
    from_epoch: int
    quorum: int
    certificates_der: tuple[bytes, ...]
    proposer: str
    reason: str
    expires_at: int

    @property
    def to_epoch(self) -> int:
        return self.from_epoch + 1

    def names(self) -> list[str]:
        out = []
        for der in self.certificates_der:
            cns = pki.load_cert(der).subject.rfc4514_string()
            out.append(cns)
        return out

    def to_bytes(self) -> bytes:
        return canonical_json(
            {
                "type": PROPOSAL_TYPE,
                "domain_id": self.domain_id.hex(),
                "from_epoch": self.from_epoch,
                "to_epoch": self.to_epoch,
                "quorum": self.quorum,
                "custodians": [
                    {"subject": n, "x5t_256": b64e(hashlib.sha256(d).digest()), "certificate": b64e(d)}
                    for n, d in zip(self.names(), self.certificates_der, strict=True)
                ],
                "proposer": self.proposer,
                "reason": self.reason,
                "expires_at": self.expires_at,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> RotationProposal:
        obj = parse_json_object(data, "rotation proposal")
        custodians = obj.get("custodians")
        if obj.get("type") != PROPOSAL_TYPE or not isinstance(custodians, list):
            raise MalformedError("not a rotation proposal")
        if not all(isinstance(c, dict) for c in custodians):
            raise MalformedError("rotation proposal: every custodian must be an object")
        domain, proposer, reason = obj.get("domain_id"), obj.get("proposer"), obj.get("reason")
        if not isinstance(domain, str) or not isinstance(proposer, str) or not isinstance(reason, str):
            raise MalformedError("rotation proposal: domain_id, proposer and reason must be strings")
        try:
            domain_id = bytes.fromhex(domain)
        except ValueError as e:
            raise MalformedError("rotation proposal: domain_id must be hex") from e
        certificates = tuple(b64d(c.get("certificate"), "certificate") for c in custodians)
        if len({pki.spki_sha256(der) for der in certificates}) != len(certificates):
            raise MalformedError("rotation proposal: two slots hold the same key")
        return cls(
            domain_id=domain_id,
            from_epoch=f.non_negative(obj.get("from_epoch"), "rotation proposal: from_epoch"),
            quorum=f.non_negative(obj.get("quorum"), "rotation proposal: quorum"),
            certificates_der=certificates,
            proposer=proposer,
            reason=reason,
            expires_at=f.non_negative(obj.get("expires_at"), "rotation proposal: expires_at"),
        )

    def summary(self, current: Sequence[tuple[str, bytes]] = ()) -> str:
        """What a custodian approves, in one line. Each new slot shows its certificate's SHA-256
        (the first 32 hex digits, what ``openssl x509 -fingerprint -sha256`` prints), and, given
        ``current`` (the roster now: name and wrapping certificate per slot), whether it holds a key
        the domain already uses or a NEW KEY. Keys are compared by :func:`sdquorum.pki.spki_sha256`,
        never by certificate bytes: a fresh certificate over a key the domain uses is that key
        (marked "same key as X now, new certificate"), and a certificate's subject alone is no
        identity (anyone can issue one saying CN=alice)."""
        known = {pki.spki_sha256(cert): (name, hashlib.sha256(cert).digest()) for name, cert in current}
        slots = []
        for subject, der in zip(self.names(), self.certificates_der, strict=True):
            thumb = hashlib.sha256(der).digest()
            if current:
                held = known.get(pki.spki_sha256(der))
                if held is None:
                    mark = "NEW KEY"
                elif held[1] == thumb:
                    mark = f"same key as {held[0]} now"
                else:
                    mark = f"same key as {held[0]} now, new certificate"
                slots.append(f"{subject} [{thumb.hex()[:32]}, {mark}]")
            else:
                slots.append(f"{subject} [{thumb.hex()[:32]}]")
        return (
            f"rotate domain {self.domain_id.hex()} from epoch {self.from_epoch} to {self.to_epoch}: "
            f"quorum {self.quorum} of {len(self.certificates_der)} ({'; '.join(slots)})"
        )
