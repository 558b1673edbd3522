"""The possession drill: every custodian (all n, not only m) proves it can still open its share.

Each agent answers the attested challenge with a Schnorr proof of knowledge of s_x (public value
s_x * B from the Feldman commitments), bound to the challenge, the session, the domain, epoch, slot
and node, and signed with its wrapping key. No share leaves the agent.

Outcome per slot: ACCEPTED (proved), REJECTED (a check failed: named), DENIED (the custodian or its
agent declined), UNREACHABLE (no answer by the deadline). The drill COMPLETES when every slot has
settled or the deadline passes; a drill never fails as a session, its report is the result.
"""

from __future__ import annotations

from coordinator.ceremony import AttestationSigner, CustodianStatus, ProofCeremony
from sdquorum.envelopes import Attestation, CeremonyKind
from sdquorum.review import DrillOutcome
from sdquorum.sdfile import SignedHeader

__all__ = ["DRILL_OUTCOMES", "DrillSession"]

# How each settled slot is recorded in the review (sdquorum.review.DrillResult); a slot still open
# at the end counts as unreachable.
DRILL_OUTCOMES = {
    CustodianStatus.ACCEPTED: DrillOutcome.PROVED,
    CustodianStatus.REJECTED: DrillOutcome.FAILED,
    CustodianStatus.DENIED: DrillOutcome.DENIED,
    CustodianStatus.UNREACHABLE: DrillOutcome.UNREACHABLE,
}


class DrillSession(ProofCeremony):
    kind = CeremonyKind.DRILL

    def start(self, signed: SignedHeader, now: int, sign: AttestationSigner) -> Attestation:
        return self._open(signed, now, sign)

    def required(self) -> int:
        return self._n

    def _collecting_message(self) -> str:
        return f"drill: waiting for all {self._n} custodians to prove possession"

    def _after_answer(self) -> None:
        if not self.finished and not self.progress().missing:
            self._finish()

    def _at_deadline(self) -> None:
        self._settle_open(CustodianStatus.UNREACHABLE, "no answer before the deadline")
        self._finish()

    def _finish(self) -> None:
        counts = {word: 0 for word in DRILL_OUTCOMES.values()}
        for p in self.status().custodians:
            counts[DRILL_OUTCOMES.get(p.status, DrillOutcome.UNREACHABLE)] += 1
        self._complete("drill finished: " + ", ".join(f"{n} {w}" for w, n in counts.items() if n))
