"""Rotation approval: m custodians of the current epoch approve a new roster.

The admin's proposal (new custodian certificates and quorum, the proposer, the reason, the
deadline) is canonical JSON; its SHA-256 is in the attested statement. Each agent shows the proposal
to its human and, on approval, answers with a signed Schnorr proof of possession of its current share
bound to the proposal hash. With m valid approvals before the deadline the session COMPLETES and the
host re-seals the same payload to the new roster under a new secret, KEK and epoch. Fewer than m by
the deadline: FAILED, and nothing changes. An approval that arrives after completion (before the
deadline) is still verified: a wrong one is REJECTED and named, a good one stays NOT_NEEDED.
"""

from __future__ import annotations

from coordinator.ceremony import AttestationSigner, CustodianRequest, CustodianStatus, ProofCeremony
from sdquorum.envelopes import Attestation, CeremonyKind
from sdquorum.errors import StateError
from sdquorum.proposal import RotationProposal
from sdquorum.sdfile import SignedHeader

__all__ = ["RotationProposal", "RotationSession"]


class RotationSession(ProofCeremony):
    kind = CeremonyKind.ROTATION
    proved = "approved, with proof of possession"
    checks_late_answers = True

    def _setup(self) -> None:
        self.proposal: RotationProposal | None = None
        self.new_sd_file: bytes | None = None  # set by the host once it has re-sealed

    def start(
        self, signed: SignedHeader, proposal: RotationProposal, now: int, sign: AttestationSigner
    ) -> Attestation:
        if signed.header.domain_id != proposal.domain_id or signed.header.epoch != proposal.from_epoch:
            raise StateError("the proposal names another domain or epoch than the node holds")
        self.proposal = proposal
        return self._open(signed, now, sign, proposal=proposal.to_bytes())

    def _collecting_message(self) -> str:
        return f"rotation: waiting for {self.required()} of {self._n} custodians to approve"

    def _verify_late(self, req: CustodianRequest, answer: bytes) -> None:
        self._accept(req, answer)  # a proof changes nothing by itself: the same check, not counted

    def _at_quorum(self) -> None:
        self._settle_open(CustodianStatus.NOT_NEEDED)
        summary = self.proposal.summary() if self.proposal else ""
        self._complete(f"approved by {self.progress_count()} custodians: {summary}")

    def _at_deadline(self) -> None:
        missing = [self._slots[x].name for x in self.progress().missing]
        self._fail(
            f"deadline passed with {self.progress_count()} of {self.required()} approvals "
            f"(missing: {', '.join(missing) or 'none'}); nothing changed"
        )
