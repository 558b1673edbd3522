"""A session's lifecycle: its attested statement, its deadline and its end.

    AWAITING_SD_FILE -> COLLECTING -> COMPLETED | FAILED

Invariants: :meth:`Session._open_slots` is the one way into COLLECTING (the host's attestation key
signs the statement, then one request per slot is made in the :class:`SlotBook`); COMPLETED and
FAILED are final, except that :meth:`Session.revoke` turns any state FAILED; every transition that
takes ``now`` first applies the deadline (:meth:`Session.tick`). The ephemeral exchange key never
leaves the process and is dropped at once when the session FAILS, when it ends unless its ceremony
checks late answers, and otherwise by the first tick at or after the deadline. What an answer must
prove, and what happens at the deadline, is the ceremony's (:class:`~coordinator.ceremony.Ceremony`).
"""

from __future__ import annotations

import hashlib
from typing import ClassVar

import nacl.public

from coordinator.ceremony._records import AttestationSigner, CustodianRequest, SessionState
from coordinator.ceremony._slots import SlotBook
from sdquorum import shamir
from sdquorum.envelopes import CHALLENGED, Attestation, CeremonyKind, ExchangeStatement
from sdquorum.errors import StateError, UsageError
from sdquorum.sdfile import Header, SignedHeader


class Session:
    kind: ClassVar[CeremonyKind]
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
        self._slots = SlotBook()
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

    # ------------------------------------------------------------------ opening

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
            request = CustodianRequest(
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
            self._slots.add(request, name)
        self.state = SessionState.COLLECTING
        self.message = self._collecting_message()
        return attestation

    def _collecting_message(self) -> str:
        return f"collecting {self.required()} of {self._n} answers"

    # ------------------------------------------------------------------ deadline and end

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

    def _at_deadline(self) -> None:
        """The deadline passed while COLLECTING: the ceremony ends the session."""
        raise NotImplementedError

    def _check_deadline(self, now: int) -> None:
        if self.tick(now):
            raise StateError(f"session {self.session_id} is {self.state.value}: {self.message}")

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
