"""What a ceremony does with the answers to its requests: verify, settle the slot, decide the end.

Invariants: an answer is taken only for an open request of a COLLECTING session before its deadline
(:meth:`Ceremony._open_request`), except a late answer (see :mod:`coordinator.ceremony`); one that
does not parse or is not signed by the slot's own key changes nothing (the slot stays open); one
that is signed but fails a check settles its slot REJECTED with the check named; after every
settled slot the subclass decides whether the session has ended (:meth:`Ceremony._after_answer`;
by default the session ends through :meth:`Ceremony._at_quorum` once m answers are accepted).
"""

from __future__ import annotations

from coordinator.ceremony._records import (
    SETTLED,
    CeremonyStatus,
    CustodianProgress,
    CustodianRequest,
    CustodianStatus,
    QuorumProgress,
    ReleaseOutcome,
    SessionState,
)
from coordinator.ceremony._session import Session
from sdquorum.envelopes import Denial, Proof, verify_denial, verify_proof
from sdquorum.errors import MalformedError, SdquorumError, StateError, UnauthenticatedError, VerificationError


class Ceremony(Session):
    answer_word = "answers"

    # ------------------------------------------------------------------ queries

    def status(self) -> CeremonyStatus:
        return CeremonyStatus(
            session_id=self.session_id,
            kind=self.kind,
            state=self.state,
            required=self.required() if self.opened else 0,
            custodians=self._slots.sorted(),
            expires_at=self.expires_at,
            message=self.message,
            domain_id=self._domain_id,
            epoch=self._epoch,
        )

    def progress(self) -> QuorumProgress:
        return self._slots.progress(self.required(), self.answer_word)

    def progress_count(self) -> int:
        return self._slots.count(CustodianStatus.ACCEPTED)

    def requests(self) -> list[CustodianRequest]:
        """Every open request (for offline request files)."""
        if self.state is not SessionState.COLLECTING:
            return []
        return self._slots.open_requests()

    def requests_for(self, thumbprint: bytes) -> list[CustodianRequest]:
        """Open requests addressed to the holder of ``thumbprint`` (nothing once finished)."""
        return [r for r in self.requests() if r.thumbprint == thumbprint]

    def slot_named(self, name: str) -> int | None:
        return self._slots.named(name)

    def open_request(self, request_id: str) -> CustodianRequest | None:
        """The request ``request_id`` if it is open (one of :meth:`requests`), else None."""
        req = self._slots.request(request_id)
        if req is None or self.state is not SessionState.COLLECTING or self._slots[req.x].status in SETTLED:
            return None
        return req

    def holder(self, x: int) -> str:
        """The name of slot ``x``'s custodian."""
        return self._slots[x].name

    # ------------------------------------------------------------------ transitions

    def mark_delivered(self, request_id: str) -> None:
        req = self._slots.request(request_id)
        if req is None or self.state is not SessionState.COLLECTING:
            return
        if self._slots[req.x].status is CustodianStatus.NOT_CONNECTED:
            self._slots.set(req.x, CustodianStatus.REQUESTED, "awaiting approval")

    def mark_disconnected(self, thumbprint: bytes) -> None:
        """The agent holding ``thumbprint`` went away: its open request is no longer 'requested'."""
        for req in self.requests_for(thumbprint):
            if self._slots[req.x].status is CustodianStatus.REQUESTED:
                self._slots.set(req.x, CustodianStatus.NOT_CONNECTED, "agent disconnected")

    def reject_slot(self, x: int, reason: str, now: int) -> None:
        """The host found a slot's custodian unable to answer (for example: its key no longer matches)."""
        self._check_deadline(now)
        p = self._slots.get(x)
        if p is None or p.status in SETTLED or self.state is not SessionState.COLLECTING:
            return
        self._slots.set(x, CustodianStatus.REJECTED, reason)
        self._after_answer()

    def deny_signed(self, request_id: str, denial: bytes, now: int) -> CustodianProgress:
        """A denial signed by the slot's own key (UnauthenticatedError otherwise: the slot stays open)."""
        req = self._open_request(request_id, now)
        if self._attestation is None:  # pragma: no cover - a request is open only once attested
            raise StateError("the session has no attestation yet")
        envelope = Denial.from_bytes(denial)
        reason = verify_denial(
            envelope,
            slot_certificate=self._slot_certificate(req, envelope.statement.certificate),
            expected_x=req.x,
            session_id=self.session_id,
            request_id=request_id,
            attestation_sha256=self._attestation.sha256,
        )
        return self.deny(request_id, reason, now)

    def deny(self, request_id: str, reason: str, now: int) -> CustodianProgress:
        """Settle a request as DENIED (the host calls :meth:`deny_signed` for what a peer sends)."""
        req = self._open_request(request_id, now)
        self._slots.set(req.x, CustodianStatus.DENIED, reason[:200])
        self._after_answer()
        return self._slots[req.x]

    def submit(self, request_id: str, answer: bytes, now: int) -> ReleaseOutcome:
        """Verify one answer. Raises StateError for a request that is not open, and MalformedError or
        UnauthenticatedError for an answer that does not parse or is not signed by the slot's key
        (the slot stays open). A signed answer that fails a check returns ``accepted=False`` with the
        check named, and its custodian is REJECTED. A late answer (see the package docstring) is
        verified the same way and returns ``late=True``."""
        late = self._late_request(request_id, now)
        if late is not None:
            return self._submit_late(late, answer)
        req = self._open_request(request_id, now)
        p = self._slots[req.x]
        try:
            detail = self._accept(req, answer)
        except (UnauthenticatedError, MalformedError):
            raise  # not attributable to the slot's custodian: refused, the slot stays open
        except SdquorumError as e:
            self._slots.set(req.x, CustodianStatus.REJECTED, str(e))
            self._after_answer()
            return ReleaseOutcome(p.x, p.name, False, str(e), self.finished)
        self._slots.set(req.x, CustodianStatus.ACCEPTED, detail)
        self._after_answer()
        return ReleaseOutcome(p.x, p.name, True, "", self.finished)

    def _late_request(self, request_id: str, now: int) -> CustodianRequest | None:
        """The request of a late answer, or None when ``request_id`` is not one (the caller then
        refuses it as before)."""
        self.tick(now)
        req = self._slots.request(request_id)
        if (
            req is None
            or self.state is not SessionState.COMPLETED
            or self._exchange_key is None  # the deadline has passed: nothing is kept to check it with
            or self._slots[req.x].status is not CustodianStatus.NOT_NEEDED
            or self._slots[req.x].detail
        ):
            return None
        return req

    def _submit_late(self, req: CustodianRequest, answer: bytes) -> ReleaseOutcome:
        p = self._slots[req.x]
        try:
            self._verify_late(req, answer)
        except (UnauthenticatedError, MalformedError, StateError):
            raise  # nobody's answer (or nothing to check it with): the slot stays as it was
        except SdquorumError as e:
            self._slots.set(req.x, CustodianStatus.REJECTED, f"answered late, and wrongly: {e}")
            self.message = f"{self.message}; late answer of {p.name} REJECTED: {e}"[:1000]
            return ReleaseOutcome(p.x, p.name, False, str(e), True, late=True)
        self._slots.set(req.x, CustodianStatus.NOT_NEEDED, "answered late: verified, not needed")
        return ReleaseOutcome(p.x, p.name, True, "", True, late=True)

    # ------------------------------------------------------------------ for subclasses

    def _slot_certificate(self, req: CustodianRequest, offered: bytes) -> bytes:
        """The wrapping certificate answers for ``req`` must verify under: the SD header's (native
        files carry the certificates); a file that holds only thumbprints overrides this."""
        return self.header.slot(req.x).certificate_der

    def _accept(self, req: CustodianRequest, answer: bytes) -> str:
        raise NotImplementedError

    def _verify_late(self, req: CustodianRequest, answer: bytes) -> None:
        """Check an answer that came after completion as :meth:`_accept` would, changing nothing
        (VerificationError names the check). Default: late answers are not taken."""
        raise StateError(f"session {self.session_id} is {self.state.value}: {self.message}")

    def _after_answer(self) -> None:
        """Called after every settled answer: with quorum accepted, :meth:`_at_quorum`; before, the
        session fails once quorum can no longer be reached."""
        if not self.finished and self.progress_count() >= self.required():
            self._at_quorum()
        else:
            self._fail_if_quorum_unreachable()

    def _at_quorum(self) -> None:
        """What m accepted answers do (open the domain, approve the rotation); default: nothing."""

    def _at_deadline(self) -> None:
        missing = [self._slots[x].name for x in self.progress().missing]
        self._fail(
            f"deadline passed with {self.progress_count()} of {self.required()} {self.answer_word}; "
            f"missing custodians: {', '.join(missing) or 'none'}"
        )

    def _settle_open(self, status: CustodianStatus, detail: str = "") -> None:
        self._slots.settle_open(status, detail)

    def _open_request(self, request_id: str, now: int) -> CustodianRequest:
        self._check_deadline(now)
        if self.state is not SessionState.COLLECTING:
            raise StateError(f"session {self.session_id} is {self.state.value}")
        req = self._slots.request(request_id)
        if req is None:
            raise VerificationError("unknown request id for this session")
        if self._slots[req.x].status in SETTLED:
            raise VerificationError(f"slot {req.x} has already answered this session")
        return req

    def _fail_if_quorum_unreachable(self) -> None:
        if self.finished:
            return
        if self.progress_count() + len(self._slots.open_slots()) < self.required():
            self._fail("quorum can no longer be reached: " + self._slots.refusals())


class ProofCeremony(Ceremony):
    """A ceremony answered by proofs of possession (drill, rotation approval): no share leaves an
    agent; an answer counts when its Schnorr proof of s_x verifies, bound to this attestation."""

    proved = "proved possession of its share"  # the detail an accepted slot shows

    def _accept(self, req: CustodianRequest, answer: bytes) -> str:
        if self._attestation is None:  # pragma: no cover - set when open
            raise StateError("the session has ended")
        verify_proof(
            Proof.from_bytes(answer), attestation=self._attestation, header=self.header, expected_x=req.x
        )
        return self.proved
