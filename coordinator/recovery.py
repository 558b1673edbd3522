"""The recovery ceremony: a session that collects m verified shares and opens the security domain.

Order and invariants:

1. A session is made with a random id, a deadline and an ephemeral X25519 exchange key that never
   leaves the process (it is held only by this object and dropped when the session ends).
2. :meth:`RecoverySession.load_sd_file` takes the SD file (header signature already verified by the
   parser), has the host's attestation key sign an exchange statement binding session, node, domain,
   epoch, header hash, exchange key, deadline, initiator and reason, and makes one request per slot.
3. :meth:`RecoverySession.submit` takes a release for a request: signature by the slot's wrapping
   key, session/domain/epoch/attestation binding, sealed-box opening, inner-outer binding, then the
   Feldman check of the share. A failing release marks its custodian REJECTED with the check named;
   a second release for a slot already settled is refused (the same custodian twice).
4. The first m valid shares reconstruct s; the payload is opened and the session COMPLETES with the
   domain secrets; every slot not heard from becomes NOT_NEEDED. Nobody waits for the slower ones.
5. At the deadline with fewer than m valid shares the session FAILS, naming the missing custodians;
   nothing has changed on the node (the host applies ``result`` only on COMPLETED).

A session in COMPLETED or FAILED accepts nothing more.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

import nacl.public

from sdquorum import shamir
from sdquorum.envelopes import Attestation, ExchangeStatement, Release, open_release
from sdquorum.errors import SdquorumError, StateError, UsageError, VerificationError
from sdquorum.sdfile import DomainSecrets, SecurityDomainFile, open_domain

__all__ = [
    "CeremonyStatus",
    "CustodianProgress",
    "CustodianStatus",
    "QuorumError",
    "QuorumProgress",
    "RecoveryRequest",
    "RecoverySession",
    "ReleaseOutcome",
    "SessionState",
]

AttestationSigner = Callable[[ExchangeStatement], Attestation]


class SessionState(enum.Enum):
    AWAITING_SD_FILE = "awaiting SD file"
    COLLECTING = "collecting shares"
    COMPLETED = "completed"
    FAILED = "failed"


class CustodianStatus(enum.Enum):
    NOT_CONNECTED = "not connected"
    REQUESTED = "requested"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    DENIED = "denied"
    NOT_NEEDED = "not needed"


_SETTLED = {
    CustodianStatus.ACCEPTED,
    CustodianStatus.REJECTED,
    CustodianStatus.DENIED,
    CustodianStatus.NOT_NEEDED,
}


class QuorumError(StateError):
    """Fewer than m valid shares."""


@dataclass(frozen=True)
class QuorumProgress:
    required: int
    accepted: tuple[int, ...]
    rejected: tuple[tuple[int, str], ...]
    missing: tuple[int, ...]

    def require_quorum(self) -> None:
        if len(self.accepted) < self.required:
            raise QuorumError(
                f"only {len(self.accepted)} of the {self.required} required shares arrived; "
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
class RecoveryRequest:
    request_id: str
    session_id: str
    x: int
    thumbprint: bytes
    attestation: bytes
    header_bytes: bytes
    header_signature: bytes


@dataclass(frozen=True)
class ReleaseOutcome:
    x: int
    name: str
    accepted: bool
    reason: str
    completed: bool


class RecoverySession:
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
        self.result: DomainSecrets | None = None
        self._rng = rng
        self._exchange_key: nacl.public.PrivateKey | None = nacl.public.PrivateKey(rng(32))
        self._sd: SecurityDomainFile | None = None
        self._attestation: Attestation | None = None
        self._requests: dict[str, RecoveryRequest] = {}
        self._status: dict[int, CustodianProgress] = {}
        self._shares: dict[int, shamir.Share] = {}

    # ------------------------------------------------------------------ queries

    @property
    def sd_file(self) -> SecurityDomainFile | None:
        return self._sd

    @property
    def finished(self) -> bool:
        return self.state in (SessionState.COMPLETED, SessionState.FAILED)

    def status(self) -> CeremonyStatus:
        header = self._sd.header if self._sd else None
        return CeremonyStatus(
            session_id=self.session_id,
            state=self.state,
            required=header.quorum if header else 0,
            custodians=tuple(self._status[x] for x in sorted(self._status)),
            expires_at=self.expires_at,
            message=self.message,
            domain_id=header.domain_id if header else b"",
            epoch=header.epoch if header else 0,
        )

    def progress(self) -> QuorumProgress:
        header = self._require_sd().header
        return QuorumProgress(
            required=header.quorum,
            accepted=tuple(
                x for x, p in sorted(self._status.items()) if p.status is CustodianStatus.ACCEPTED
            ),
            rejected=tuple(
                (p.x, p.detail) for p in self._status.values() if p.status is CustodianStatus.REJECTED
            ),
            missing=tuple(
                x
                for x, p in sorted(self._status.items())
                if p.status in (CustodianStatus.NOT_CONNECTED, CustodianStatus.REQUESTED)
            ),
        )

    def requests_for(self, thumbprint: bytes) -> list[RecoveryRequest]:
        """Open requests addressed to the holder of ``thumbprint`` (nothing once finished)."""
        if self.state is not SessionState.COLLECTING:
            return []
        return [
            r
            for r in self._requests.values()
            if r.thumbprint == thumbprint and self._status[r.x].status not in _SETTLED
        ]

    # ------------------------------------------------------------------ transitions

    def load_sd_file(self, sd: SecurityDomainFile, now: int, sign: AttestationSigner) -> Attestation:
        if self.state is not SessionState.AWAITING_SD_FILE:
            raise StateError(f"session {self.session_id} already has its SD file")
        self._check_deadline(now)
        if self._exchange_key is None:  # pragma: no cover - only None once finished
            raise StateError("the session has ended")
        header = sd.header
        statement = ExchangeStatement(
            session_id=self.session_id,
            purpose="recovery",
            node_id=self.node_id,
            node_address=self.node_address,
            domain_id=header.domain_id,
            epoch=header.epoch,
            sd_header_sha256=sd.signed_header.sha256,
            exchange_public_key=bytes(self._exchange_key.public_key),
            issued_at=now,
            expires_at=self.expires_at,
            initiator=self.initiator,
            reason=self.reason,
        )
        attestation = sign(statement)
        self._sd = sd
        self._attestation = attestation
        att_bytes = attestation.to_bytes()
        for slot in header.slots:
            rid = self._rng(8).hex()
            self._requests[rid] = RecoveryRequest(
                request_id=rid,
                session_id=self.session_id,
                x=slot.x,
                thumbprint=slot.thumbprint,
                attestation=att_bytes,
                header_bytes=sd.signed_header.header_bytes,
                header_signature=sd.signed_header.signature,
            )
            self._status[slot.x] = CustodianProgress(slot.x, slot.name, CustodianStatus.NOT_CONNECTED)
        self.state = SessionState.COLLECTING
        self.message = f"collecting {header.quorum} of {header.n} shares"
        return attestation

    def mark_delivered(self, request_id: str) -> None:
        req = self._requests.get(request_id)
        if req is None or self.state is not SessionState.COLLECTING:
            return
        p = self._status[req.x]
        if p.status is CustodianStatus.NOT_CONNECTED:
            self._status[req.x] = CustodianProgress(
                p.x, p.name, CustodianStatus.REQUESTED, "awaiting approval"
            )

    def deny(self, request_id: str, reason: str, now: int) -> CustodianProgress:
        req = self._open_request(request_id, now)
        p = self._status[req.x]
        self._status[req.x] = CustodianProgress(p.x, p.name, CustodianStatus.DENIED, reason[:200])
        self._fail_if_quorum_unreachable()
        return self._status[req.x]

    def submit(self, request_id: str, release_bytes: bytes, now: int) -> ReleaseOutcome:
        """Verify one release. Raises StateError for a request that is not open; a release that
        fails a check returns ``accepted=False`` with the check named (and the custodian REJECTED)."""
        req = self._open_request(request_id, now)
        header = self._require_sd().header
        p = self._status[req.x]
        if self._attestation is None or self._exchange_key is None:  # pragma: no cover - set by load_sd_file
            raise StateError("the session has ended")
        try:
            release = Release.from_bytes(release_bytes)
            share = open_release(
                release,
                session_id=self.session_id,
                header=header,
                expected_x=req.x,
                attestation_sha256=self._attestation.sha256,
                exchange_key=self._exchange_key,
            )
            if not shamir.verify_share(share, header.commitments, header.n):
                raise VerificationError(f"the share of slot {req.x} does not match the SD commitments (VSS)")
        except SdquorumError as e:
            self._status[req.x] = CustodianProgress(p.x, p.name, CustodianStatus.REJECTED, str(e))
            self._fail_if_quorum_unreachable()
            return ReleaseOutcome(p.x, p.name, False, str(e), self.finished)
        self._shares[req.x] = share
        self._status[req.x] = CustodianProgress(p.x, p.name, CustodianStatus.ACCEPTED, "share verified")
        if len(self._shares) >= header.quorum:
            self._complete()
        return ReleaseOutcome(p.x, p.name, True, "", self.finished)

    def tick(self, now: int) -> bool:
        """Apply the deadline; True if the session has finished."""
        if not self.finished and now >= self.expires_at:
            if self._sd is None:
                self._fail("deadline passed before the SD file was uploaded")
            else:
                missing = [self._status[x].name for x in self.progress().missing]
                self._fail(
                    f"deadline passed with {len(self._shares)} of {self._sd.header.quorum} shares; "
                    f"missing custodians: {', '.join(missing) or 'none'}"
                )
        return self.finished

    def abort(self, reason: str) -> None:
        if not self.finished:
            self._fail(reason)

    # ------------------------------------------------------------------ internals

    def _require_sd(self) -> SecurityDomainFile:
        if self._sd is None:
            raise StateError("no SD file has been uploaded to this session yet")
        return self._sd

    def _open_request(self, request_id: str, now: int) -> RecoveryRequest:
        self._check_deadline(now)
        if self.state is not SessionState.COLLECTING:
            raise StateError(f"session {self.session_id} is {self.state.value}")
        req = self._requests.get(request_id)
        if req is None:
            raise VerificationError("unknown request id for this session")
        if self._status[req.x].status in _SETTLED:
            raise VerificationError(f"slot {req.x} has already answered this session")
        return req

    def _check_deadline(self, now: int) -> None:
        if self.tick(now):
            raise StateError(f"session {self.session_id} is {self.state.value}: {self.message}")

    def _fail_if_quorum_unreachable(self) -> None:
        header = self._require_sd().header
        open_slots = sum(1 for p in self._status.values() if p.status not in _SETTLED)
        if len(self._shares) + open_slots < header.quorum:
            prog = self.progress()
            bad = [f"{self._status[x].name} ({why})" for x, why in prog.rejected]
            denied = [p.name for p in self._status.values() if p.status is CustodianStatus.DENIED]
            self._fail(
                "quorum can no longer be reached: "
                + "; ".join(
                    filter(
                        None,
                        [
                            f"rejected: {', '.join(bad)}" if bad else "",
                            f"denied: {', '.join(denied)}" if denied else "",
                        ],
                    )
                )
            )

    def _complete(self) -> None:
        sd = self._require_sd()
        header = sd.header
        shares = [self._shares[x] for x in sorted(self._shares)][: header.quorum]
        try:
            secret = shamir.combine(shares, header.quorum, header.n)
            self.result = open_domain(sd, secret)
        except SdquorumError as e:
            self._fail(f"the security domain did not open: {e}")
            return
        for x, p in self._status.items():
            if p.status in (CustodianStatus.NOT_CONNECTED, CustodianStatus.REQUESTED):
                self._status[x] = CustodianProgress(p.x, p.name, CustodianStatus.NOT_NEEDED)
        self.state = SessionState.COMPLETED
        self.message = f"security domain {header.domain_id.hex()} epoch {header.epoch} recovered"
        self._end()

    def _fail(self, message: str) -> None:
        self.state = SessionState.FAILED
        self.message = message
        self._end()

    def _end(self) -> None:
        self._exchange_key = None
        self._shares.clear()
