"""Rotation approval: m custodians of the current epoch approve a new roster.

The admin's proposal (new custodian certificates and quorum, the proposer, the reason, the
deadline) is canonical JSON; its SHA-256 is in the attested statement. Each agent shows the proposal
to its human and, on approval, answers with a signed Schnorr proof of possession of its current share
bound to the proposal hash. With m valid approvals before the deadline the session COMPLETES and the
host re-seals the same payload to the new roster under a new secret, KEK and epoch. Fewer than m by
the deadline: FAILED, and nothing changes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from coordinator.ceremony import AttestationSigner, Ceremony, CustodianRequest, CustodianStatus
from sdquorum import pki
from sdquorum.encoding import b64d, b64e, canonical_json, parse_json_object
from sdquorum.envelopes import Attestation, Proof, verify_proof
from sdquorum.errors import MalformedError, StateError
from sdquorum.sdfile import SignedHeader

__all__ = ["RotationProposal", "RotationSession"]

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
        try:
            return cls(
                domain_id=bytes.fromhex(str(obj["domain_id"])),
                from_epoch=int(obj["from_epoch"]),
                quorum=int(obj["quorum"]),
                certificates_der=tuple(b64d(c.get("certificate"), "certificate") for c in custodians),
                proposer=str(obj["proposer"]),
                reason=str(obj["reason"]),
                expires_at=int(obj["expires_at"]),
            )
        except (KeyError, ValueError, TypeError, AttributeError) as e:
            raise MalformedError(f"rotation proposal is malformed: {e}") from e

    def summary(self) -> str:
        return (
            f"rotate domain {self.domain_id.hex()} from epoch {self.from_epoch} to {self.to_epoch}: "
            f"quorum {self.quorum} of {len(self.certificates_der)} ({'; '.join(self.names())})"
        )


class RotationSession(Ceremony):
    kind = "rotation"

    def __init__(self, *, proposal: RotationProposal, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]  # same keywords as Ceremony
        self.proposal = proposal
        self.proposal_bytes = proposal.to_bytes()
        self.new_sd_file: bytes | None = None  # set by the host once it has re-sealed

    def start(
        self, signed: SignedHeader, proposal: RotationProposal, now: int, sign: AttestationSigner
    ) -> Attestation:
        self.proposal = proposal
        if signed.header.domain_id != proposal.domain_id or signed.header.epoch != proposal.from_epoch:
            raise StateError("the proposal names another domain or epoch than the node holds")
        return self._open(signed, now, sign, proposal=proposal.to_bytes())

    def _collecting_message(self) -> str:
        return f"rotation: waiting for {self.required()} of {self.header.n} custodians to approve"

    def _accept(self, req: CustodianRequest, answer: bytes) -> str:
        if self._attestation is None:  # pragma: no cover - set when open
            raise StateError("the session has ended")
        verify_proof(
            Proof.from_bytes(answer), attestation=self._attestation, header=self.header, expected_x=req.x
        )
        return "approved, with proof of possession"

    def _after_answer(self) -> None:
        if not self.finished and self.progress_count() >= self.required():
            self._settle_open(CustodianStatus.NOT_NEEDED)
            summary = self.proposal.summary() if self.proposal else ""
            self._complete(f"approved by {self.progress_count()} custodians: {summary}")
        else:
            self._fail_if_quorum_unreachable()

    def _at_deadline(self) -> None:
        missing = [self._status[x].name for x in self.progress().missing]
        self._fail(
            f"deadline passed with {self.progress_count()} of {self.required()} approvals "
            f"(missing: {', '.join(missing) or 'none'}); nothing changed"
        )
