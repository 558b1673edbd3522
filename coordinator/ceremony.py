"""What every ceremony shares: a session, its attested statement, one request per slot, a deadline.

A ceremony (recovery, possession drill, rotation approval) is a session with a random id, a deadline
and an ephemeral X25519 exchange key that never leaves the process. :meth:`Ceremony._open` has the
host's attestation key sign a statement binding session, purpose, node, domain, epoch, SD header
hash, exchange key, a fresh challenge, the proposal hash (rotation), deadline, initiator and reason,
and makes one request per slot. Each slot then moves

    NOT_CONNECTED -> REQUESTED -> ACCEPTED | REJECTED | DENIED        (answered)
                               \\-> NOT_NEEDED | UNREACHABLE            (ended without its answer)

A settled slot accepts nothing more (the same custodian twice is refused), with one exception:
a **late answer**, one for a slot settled NOT_NEEDED because the session COMPLETED without it, that
arrives before the deadline. It can no longer count, but it is still verified exactly as if it had
come in time (:meth:`Ceremony._verify_late`): a wrong one makes its slot REJECTED and named in the
status, a good one leaves it NOT_NEEDED (with "answered late: verified"). Whatever a late answer
needs is kept until the deadline and not past it: the exchange key (to open a late release) is
dropped by the first :meth:`Ceremony.tick` at or after the deadline, and at once when a session
FAILS; the domain secrets themselves are never kept for it (a subclass keeps only what cannot open
anything, such as the public shares or digests of the expected shares).

Subclasses say what an answer must prove (:meth:`_accept`), how a late one is checked
(:meth:`_verify_late`; by default it is refused as before) and when the ceremony ends
(:meth:`_after_answer`, :meth:`_at_deadline`). No I/O: the host passes ``now`` (unix seconds) and
delivers messages.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import nacl.public

from sdquorum import shamir
from sdquorum.envelopes import CHALLENGED, Attestation, CeremonyKind, Denial, ExchangeStatement, verify_denial
from sdquorum.errors import (
    MalformedError,
    SdquorumError,
    StateError,
    UnauthenticatedError,
    UsageError,
    VerificationError,
)
from sdquorum.offline import CeremonyRequest
from sdquorum.sdfile import Header, SignedHeader

__all__ = [
    "AttestationSigner",
    "Ceremony",
    "CeremonyStatus",
    "CustodianProgress",
    "CustodianRequest",
    "CustodianStatus",
    "QuorumError",
    "QuorumProgress",
    "ReleaseOutcome",
    "SessionState",
]

AttestationSigner = Callable[[ExchangeStatement], Attestation]


class SessionState(enum.Enum):
    AWAITING_SD_FILE = "awaiting SD file"
    COLLECTING = "collecting"
    COMPLETED = "completed"
    FAILED = "failed"


class CustodianStatus(enum.Enum):
    NOT_CONNECTED = "not connected"
    REQUESTED = "requested"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    DENIED = "denied"
    NOT_NEEDED = "not needed"
    UNREACHABLE = "unreachable"


SETTLED = frozenset(
    {
        CustodianStatus.ACCEPTED,
        CustodianStatus.REJECTED,
        CustodianStatus.DENIED,
        CustodianStatus.NOT_NEEDED,
        CustodianStatus.UNREACHABLE,
    }
)
OPEN = frozenset({CustodianStatus.NOT_CONNECTED, CustodianStatus.REQUESTED})


class QuorumError(StateError):
    """Fewer than m valid answers."""


@dataclass(frozen=True)
class QuorumProgress:
    required: int
    accepted: tuple[int, ...]
    rejected: tuple[tuple[int, str], ...]
    missing: tuple[int, ...]
    noun: str = "answers"

    def require_quorum(self) -> None:
        if len(self.accepted) < self.required:
            raise QuorumError(
                f"only {len(self.accepted)} of the {self.required} required {self.noun} arrived; "
                f"missing slots {list(self.missing)}"
            )


@dataclass(frozen=True)
class CustodianProgress:
    x: int
    name: str
    status: CustodianStatus
    detail: str = ""


@dataclass(frozen=True)
class CeremonyStatus:
    session_id: str
    kind: CeremonyKind
    state: SessionState
    required: int
    custodians: tuple[CustodianProgress, ...]
    expires_at: int
    message: str
    domain_id: bytes
    epoch: int

    @property
    def accepted(self) -> int:
        return sum(1 for c in self.custodians if c.status is CustodianStatus.ACCEPTED)


@dataclass(frozen=True)
class CustodianRequest:
    request_id: str
    session_id: str
    kind: str  # a CeremonyKind (the node still spells its domain notice as the word)
    x: int
    thumbprint: bytes
    attestation: bytes
    header_bytes: bytes
    header_signature: bytes
    proposal: bytes = b""

    def for_custodian(self, name: str) -> CeremonyRequest:
        """What the custodian ``name`` receives: the same request as an agent or an offline request
        file carries it (:class:`sdquorum.offline.CeremonyRequest`)."""
        return CeremonyRequest(
            request_id=self.request_id,
            session_id=self.session_id,
            kind=self.kind,
            x=self.x,
            custodian=name,
            attestation=self.attestation,
            header=self.header_bytes,
            header_signature=self.header_signature,
            proposal=self.proposal,
        )


@dataclass(frozen=True)
class ReleaseOutcome:
    x: int
    name: str
    accepted: bool
    reason: str
    completed: bool
    late: bool = False  # came after the session completed: verified, but it counted for nothing


class Ceremony:
    kind: ClassVar[CeremonyKind]
    answer_word = "answers"
    checks_late_answers = False  # True: _verify_late checks answers after completion until the deadline

    def __init__(
        self,
        *,
        session_id: str,
        node_id: str,
        node_address: str,
        initiator: str,
        reason: str,
        created_at: int,
        expires_at: int,
        rng: shamir.Rng,
    ) -> None:
        if expires_at <= created_at:
            raise UsageError("the session deadline must be in the future")
        self.session_id = session_id
        self.node_id = node_id
        self.node_address = node_address
        self.initiator = initiator
        self.reason = reason
        self.created_at = created_at
        self.expires_at = expires_at
        self.state = SessionState.AWAITING_SD_FILE
        self.message = "waiting for the SD file"
        self._rng = rng
        self._exchange_key: nacl.public.PrivateKey | None = nacl.public.PrivateKey(rng(32))
        self._signed: SignedHeader | None = None
        self._attestation: Attestation | None = None
        self._requests: dict[str, CustodianRequest] = {}
        self._status: dict[int, CustodianProgress] = {}
        self._domain_id, self._epoch, self._required, self._n = b"", 0, 0, 0
        self._setup()

    def _setup(self) -> None:
        """Subclasses initialise their own state here."""

    # ------------------------------------------------------------------ queries

    @property
    def finished(self) -> bool:
        return self.state in (SessionState.COMPLETED, SessionState.FAILED)

    @property
    def header(self) -> Header:
        if self._signed is None:
            raise StateError("no SD file has been given to this session yet")
        return self._signed.header

    @property
    def attestation(self) -> Attestation | None:
        return self._attestation

    def required(self) -> int:
        return self._required

    @property
    def opened(self) -> bool:
        return self._attestation is not None

    def status(self) -> CeremonyStatus:
        return CeremonyStatus(
            session_id=self.session_id,
            kind=self.kind,
            state=self.state,
            required=self.required() if self.opened else 0,
            custodians=tuple(self._status[x] for x in sorted(self._status)),
            expires_at=self.expires_at,
            message=self.message,
            domain_id=self._domain_id,
            epoch=self._epoch,
        )

    def progress(self) -> QuorumProgress:
        return QuorumProgress(
            required=self.required(),
            accepted=tuple(
                x for x, p in sorted(self._status.items()) if p.status is CustodianStatus.ACCEPTED
            ),
            rejected=tuple(
                (p.x, p.detail) for p in self._status.values() if p.status is CustodianStatus.REJECTED
            ),
            missing=tuple(x for x, p in sorted(self._status.items()) if p.status in OPEN),
            noun=self.answer_word,
        )

    def requests(self) -> list[CustodianRequest]:
        """Every open request (for offline request files)."""
        if self.state is not SessionState.COLLECTING:
            return []
        return [r for r in self._requests.values() if self._status[r.x].status in OPEN]

    def requests_for(self, thumbprint: bytes) -> list[CustodianRequest]:
        """Open requests addressed to the holder of ``thumbprint`` (nothing once finished)."""
        return [r for r in self.requests() if r.thumbprint == thumbprint]

    def slot_named(self, name: str) -> int | None:
        for x, p in self._status.items():
            if p.name == name:
                return x
        return None

    # ------------------------------------------------------------------ transitions

    def _open(
        self, signed: SignedHeader, now: int, sign: AttestationSigner, *, proposal: bytes = b""
    ) -> Attestation:
        header = signed.header
        attestation = self._open_slots(
            [(slot.x, slot.name, slot.thumbprint) for slot in header.slots],
            domain_id=header.domain_id,
            epoch=header.epoch,
            required=header.quorum,
            file_sha256=signed.sha256,
            file_bytes=signed.header_bytes,
            file_signature=signed.signature,
            now=now,
            sign=sign,
            proposal=proposal,
        )
        self._signed = signed
        return attestation

    def _open_slots(
        self,
        slots: list[tuple[int, str, bytes]],
        *,
        domain_id: bytes,
        epoch: int,
        required: int,
        file_sha256: bytes,
        file_bytes: bytes,
        file_signature: bytes,
        now: int,
        sign: AttestationSigner,
        proposal: bytes = b"",
        destination_certificate: bytes = b"",
    ) -> Attestation:
        """Attest the session and make one request per slot ``(x, name, wrapping-cert thumbprint)``.

        ``destination_certificate``: the external key the result ends up under (Azure restore), bound
        in the statement the custodians verify and are shown."""
        if self.state is not SessionState.AWAITING_SD_FILE:
            raise StateError(f"session {self.session_id} already has its SD file")
        self._check_deadline(now)
        if self._exchange_key is None:  # pragma: no cover - only None once finished
            raise StateError("the session has ended")
        statement = ExchangeStatement(
            session_id=self.session_id,
            purpose=self.kind,
            node_id=self.node_id,
            node_address=self.node_address,
            domain_id=domain_id,
            epoch=epoch,
            sd_header_sha256=file_sha256,
            exchange_public_key=bytes(self._exchange_key.public_key),
            issued_at=now,
            expires_at=self.expires_at,
            initiator=self.initiator,
            reason=self.reason,
            challenge=self._rng(32) if self.kind in CHALLENGED else b"",
            proposal_sha256=hashlib.sha256(proposal).digest() if proposal else b"",
            destination_certificate=destination_certificate,
        )
        attestation = sign(statement)
        self._attestation = attestation
        self._domain_id, self._epoch, self._required, self._n = domain_id, epoch, required, len(slots)
        att_bytes = attestation.to_bytes()
        for x, name, thumbprint in slots:
            rid = self._rng(8).hex()
            self._requests[rid] = CustodianRequest(
                request_id=rid,
                session_id=self.session_id,
                kind=self.kind,
                x=x,
                thumbprint=thumbprint,
                attestation=att_bytes,
                header_bytes=file_bytes,
                header_signature=file_signature,
                proposal=proposal,
            )
            self._status[x] = CustodianProgress(x, name, CustodianStatus.NOT_CONNECTED)
        self.state = SessionState.COLLECTING
        self.message = self._collecting_message()
        return attestation

    def _collecting_message(self) -> str:
        return f"collecting {self.required()} of {self._n} answers"

    def mark_delivered(self, request_id: str) -> None:
        req = self._requests.get(request_id)
        if req is None or self.state is not SessionState.COLLECTING:
            return
        p = self._status[req.x]
        if p.status is CustodianStatus.NOT_CONNECTED:
            self._status[req.x] = CustodianProgress(
                p.x, p.name, CustodianStatus.REQUESTED, "awaiting approval"
            )

    def mark_disconnected(self, thumbprint: bytes) -> None:
        """The agent holding ``thumbprint`` went away: its open request is no longer 'requested'."""
        for req in self.requests_for(thumbprint):
            p = self._status[req.x]
            if p.status is CustodianStatus.REQUESTED:
                self._status[req.x] = CustodianProgress(
                    p.x, p.name, CustodianStatus.NOT_CONNECTED, "agent disconnected"
                )

    def reject_slot(self, x: int, reason: str, now: int) -> None:
        """The host found a slot's custodian unable to answer (for example: its key no longer matches)."""
        self._check_deadline(now)
        p = self._status.get(x)
        if p is None or p.status in SETTLED or self.state is not SessionState.COLLECTING:
            return
        self._status[x] = CustodianProgress(p.x, p.name, CustodianStatus.REJECTED, reason)
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
        p = self._status[req.x]
        self._status[req.x] = CustodianProgress(p.x, p.name, CustodianStatus.DENIED, reason[:200])
        self._after_answer()
        return self._status[req.x]

    def submit(self, request_id: str, answer: bytes, now: int) -> ReleaseOutcome:
        """Verify one answer. Raises StateError for a request that is not open, and MalformedError or
        UnauthenticatedError for an answer that does not parse or is not signed by the slot's key
        (the slot stays open). A signed answer that fails a check returns ``accepted=False`` with the
        check named, and its custodian is REJECTED. A late answer (see the module docstring) is
        verified the same way and returns ``late=True``."""
        late = self._late_request(request_id, now)
        if late is not None:
            return self._submit_late(late, answer)
        req = self._open_request(request_id, now)
        p = self._status[req.x]
        try:
            detail = self._accept(req, answer)
        except (UnauthenticatedError, MalformedError):
            raise  # not attributable to the slot's custodian: refused, the slot stays open
        except SdquorumError as e:
            self._status[req.x] = CustodianProgress(p.x, p.name, CustodianStatus.REJECTED, str(e))
            self._after_answer()
            return ReleaseOutcome(p.x, p.name, False, str(e), self.finished)
        self._status[req.x] = CustodianProgress(p.x, p.name, CustodianStatus.ACCEPTED, detail)
        self._after_answer()
        return ReleaseOutcome(p.x, p.name, True, "", self.finished)

    def _late_request(self, request_id: str, now: int) -> CustodianRequest | None:
        """The request of a late answer, or None when ``request_id`` is not one (the caller then
        refuses it as before)."""
        self.tick(now)
        req = self._requests.get(request_id)
        if (
            req is None
            or self.state is not SessionState.COMPLETED
            or self._exchange_key is None  # the deadline has passed: nothing is kept to check it with
            or self._status[req.x].status is not CustodianStatus.NOT_NEEDED
            or self._status[req.x].detail
        ):
            return None
        return req

    def _submit_late(self, req: CustodianRequest, answer: bytes) -> ReleaseOutcome:
        p = self._status[req.x]
        try:
            self._verify_late(req, answer)
        except (UnauthenticatedError, MalformedError, StateError):
            raise  # nobody's answer (or nothing to check it with): the slot stays as it was
        except SdquorumError as e:
            reason = f"answered late, and wrongly: {e}"
            self._status[req.x] = CustodianProgress(p.x, p.name, CustodianStatus.REJECTED, reason)
            self.message = f"{self.message}; late answer of {p.name} REJECTED: {e}"[:1000]
            return ReleaseOutcome(p.x, p.name, False, str(e), True, late=True)
        detail = "answered late: verified, not needed"
        self._status[req.x] = CustodianProgress(p.x, p.name, CustodianStatus.NOT_NEEDED, detail)
        return ReleaseOutcome(p.x, p.name, True, "", True, late=True)

    def tick(self, now: int) -> bool:
        """Apply the deadline; True if the session has finished. At or after the deadline of a
        COMPLETED session, what was kept to check late answers is dropped."""
        if self.finished and now >= self.expires_at and self._exchange_key is not None:
            self._drop_late_material()
        if not self.finished and now >= self.expires_at:
            if not self.opened:
                self._fail("deadline passed before the SD file was uploaded")
            else:
                self._at_deadline()
        return self.finished

    def abort(self, reason: str) -> None:
        if not self.finished:
            self._fail(reason)

    def revoke(self, reason: str) -> None:
        """FAILED whatever the session reached: its host could not make the outcome durable (a
        completion the node could not commit must not read as COMPLETED)."""
        self._fail(reason)

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
        """Called after every settled answer; default: fail when quorum can no longer be reached."""
        self._fail_if_quorum_unreachable()

    def _at_deadline(self) -> None:
        missing = [self._status[x].name for x in self.progress().missing]
        self._fail(
            f"deadline passed with {self.progress_count()} of {self.required()} {self.answer_word}; "
            f"missing custodians: {', '.join(missing) or 'none'}"
        )

    def progress_count(self) -> int:
        return len(self.progress().accepted)

    def _settle_open(self, status: CustodianStatus, detail: str = "") -> None:
        for x, p in self._status.items():
            if p.status in OPEN:
                self._status[x] = CustodianProgress(p.x, p.name, status, detail)

    def _open_request(self, request_id: str, now: int) -> CustodianRequest:
        self._check_deadline(now)
        if self.state is not SessionState.COLLECTING:
            raise StateError(f"session {self.session_id} is {self.state.value}")
        req = self._requests.get(request_id)
        if req is None:
            raise VerificationError("unknown request id for this session")
        if self._status[req.x].status in SETTLED:
            raise VerificationError(f"slot {req.x} has already answered this session")
        return req

    def _check_deadline(self, now: int) -> None:
        if self.tick(now):
            raise StateError(f"session {self.session_id} is {self.state.value}: {self.message}")

    def _fail_if_quorum_unreachable(self) -> None:
        if self.finished:
            return
        open_slots = sum(1 for p in self._status.values() if p.status in OPEN)
        if self.progress_count() + open_slots < self.required():
            bad = [
                f"{p.name} ({p.detail})"
                for p in self._status.values()
                if p.status is CustodianStatus.REJECTED
            ]
            denied = [p.name for p in self._status.values() if p.status is CustodianStatus.DENIED]
            parts = [
                f"rejected: {', '.join(bad)}" if bad else "",
                f"denied: {', '.join(denied)}" if denied else "",
            ]
            self._fail("quorum can no longer be reached: " + "; ".join(p for p in parts if p))

    def _complete(self, message: str) -> None:
        self.state = SessionState.COMPLETED
        self.message = message
        self._end()

    def _fail(self, message: str) -> None:
        self.state = SessionState.FAILED
        self.message = message
        self._end()
        self._drop_late_material()  # a failed session takes no late answer

    def _end(self) -> None:
        """The session has finished: subclasses drop what no late answer needs (the collected
        shares, any secret made from them). The exchange key stays until the deadline for a
        COMPLETED session whose subclass checks late answers (:meth:`_verify_late`)."""
        if not self.checks_late_answers:
            self._drop_late_material()

    def _drop_late_material(self) -> None:
        """The deadline has passed (or the session failed): nothing may open a release any more."""
        self._exchange_key = None
