"""The signed answers a custodian sends back: release, possession proof and denial.

Each answer is a statement carried as the exact bytes the custodian signed with its wrapping key
(RSA-PSS-SHA256) together with the signature (:class:`_SignedEnvelope`); the statement is parsed
strictly on construction.

Invariants:

* A release and a proof bind their session, domain, epoch, slot, signer thumbprint and the SHA-256
  of the attestation they answer (:class:`AnswerBinding`); :func:`check_binding` checks the
  signature against the slot's certificate first (an answer not signed by the slot's key is
  nobody's and never counts against its custodian), then each binding, in constant time for
  digests and ids.
* A denial binds the refused request and the attestation it carried, so it cannot be replayed to
  another request or node.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Protocol, Self, TypeVar

from sdquorum import fields as f
from sdquorum.encoding import b64d, b64e, canonical_json, parse_json_object
from sdquorum.envelopes._attestation import check_size
from sdquorum.errors import MalformedError, UnauthenticatedError, VerificationError
from sdquorum.keys import WrappingKey, verify_pss

RELEASE_TYPE = "sdquorum-share-release-v1"
PROOF_TYPE = "sdquorum-possession-proof-v1"
DENIAL_TYPE = "sdquorum-denial-v2"  # v2: bound to the attestation of the request it refuses


@dataclass(frozen=True)
class AnswerBinding:
    """What a release and a proof both bind: session, domain, epoch, slot, signer and attestation.

    Checked by :func:`check_binding`; written by :meth:`binding_members` and read back by
    :meth:`binding_fields`, so the two statements spell these members once.
    """

    session_id: str
    domain_id: bytes
    epoch: int
    x: int
    thumbprint: bytes
    attestation_sha256: bytes

    def binding_members(self) -> dict[str, Any]:
        """The JSON members of the binding."""
        return {
            "session_id": self.session_id,
            "domain_id": self.domain_id.hex(),
            "epoch": self.epoch,
            "x": self.x,
            "x5t_256": b64e(self.thumbprint),
            "attestation_sha256": b64e(self.attestation_sha256),
        }

    @staticmethod
    def binding_fields(obj: dict[str, Any]) -> dict[str, Any]:
        """The binding's constructor arguments, read strictly from a statement's JSON members."""
        return {
            "session_id": f.string(obj.get("session_id"), "session_id", max_len=1024),
            "domain_id": f.hex_bytes(obj.get("domain_id"), "domain_id", 16),
            "epoch": f.non_negative(obj.get("epoch"), "epoch"),
            "x": f.non_negative(obj.get("x"), "x"),
            "thumbprint": f.b64_bytes(obj.get("x5t_256"), "x5t_256", 32),
            "attestation_sha256": f.b64_bytes(obj.get("attestation_sha256"), "attestation_sha256", 32),
        }


@dataclass(frozen=True)
class ReleaseStatement(AnswerBinding):
    sealed_share: bytes

    def to_bytes(self) -> bytes:
        return canonical_json(
            {
                "type": RELEASE_TYPE,
                **self.binding_members(),
                "sealed_share": b64e(self.sealed_share),
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> ReleaseStatement:
        obj = _statement_object(data, RELEASE_TYPE, "release statement")
        return cls(
            **cls.binding_fields(obj),
            sealed_share=f.b64_bytes(obj.get("sealed_share"), "sealed_share", None),
        )


@dataclass(frozen=True)
class ProofStatement(AnswerBinding):
    """A custodian's signed proof that it can open its share (drill) or approval of a proposal (rotation)."""

    purpose: str
    proposal_sha256: bytes
    proof: bytes  # Schnorr proof of knowledge of s_x (64 bytes)

    def to_bytes(self) -> bytes:
        return canonical_json(
            {
                "type": PROOF_TYPE,
                "purpose": self.purpose,
                **self.binding_members(),
                "proposal_sha256": b64e(self.proposal_sha256),
                "proof": b64e(self.proof),
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> ProofStatement:
        obj = _statement_object(data, PROOF_TYPE, "proof statement")
        return cls(
            purpose=f.string(obj.get("purpose"), "purpose", max_len=1024),
            **cls.binding_fields(obj),
            proposal_sha256=f.b64_bytes(obj.get("proposal_sha256"), "proposal_sha256", None),
            proof=f.b64_bytes(obj.get("proof"), "proof", 64),
        )


@dataclass(frozen=True)
class DenialStatement:
    """A custodian's signed refusal of one request: only the slot's own key can take its slot out."""

    session_id: str
    request_id: str
    x: int
    thumbprint: bytes
    reason: str
    attestation_sha256: bytes  # of the attestation the refused request carried: no other node's use
    certificate: bytes = b""  # the signer's certificate (DER), for SD files that carry only thumbprints

    def to_bytes(self) -> bytes:
        return canonical_json(
            {
                "type": DENIAL_TYPE,
                "attestation_sha256": b64e(self.attestation_sha256),
                "certificate": b64e(self.certificate),
                "session_id": self.session_id,
                "request_id": self.request_id,
                "x": self.x,
                "x5t_256": b64e(self.thumbprint),
                "reason": self.reason,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> DenialStatement:
        obj = _statement_object(data, DENIAL_TYPE, "denial statement")
        return cls(
            session_id=f.string(obj.get("session_id"), "session_id", max_len=1024),
            request_id=f.string(obj.get("request_id"), "request_id", max_len=1024),
            x=f.non_negative(obj.get("x"), "x"),
            thumbprint=f.b64_bytes(obj.get("x5t_256"), "x5t_256", 32),
            reason=f.string(obj.get("reason"), "reason", max_len=1024),
            attestation_sha256=f.b64_bytes(obj.get("attestation_sha256"), "attestation_sha256", 32),
            certificate=f.b64_bytes(obj.get("certificate"), "certificate", None),
        )


class _Statement(Protocol):
    """What an answer envelope carries: a statement with canonical bytes, parsed strictly."""

    def to_bytes(self) -> bytes: ...

    @classmethod
    def from_bytes(cls, data: bytes) -> Self: ...


S = TypeVar("S", bound=_Statement)


class _SignedEnvelope(Generic[S]):
    """A statement carried as the exact bytes a custodian signed (RSA-PSS), with the signature.

    A subclass names what it carries (``what``, for messages) and its statement type; the statement
    is parsed on construction, so a malformed one is refused before anything reads it.
    """

    what: ClassVar[str]
    statement_type: type[S]
    statement: S

    def __init__(self, statement_bytes: bytes, signature: bytes) -> None:
        self.statement_bytes = statement_bytes
        self.signature = signature
        self.statement = self.statement_type.from_bytes(statement_bytes)

    def to_bytes(self) -> bytes:
        return canonical_json({"statement": b64e(self.statement_bytes), "signature": b64e(self.signature)})

    @classmethod
    def signed(cls, statement: S, key: WrappingKey) -> Self:
        """The envelope of ``statement``'s canonical bytes, signed by the custodian's wrapping key."""
        data = statement.to_bytes()
        return cls(data, key.sign(data))

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        check_size(data, cls.what)
        obj = parse_json_object(data, cls.what)
        return cls(
            b64d(obj.get("statement"), f"{cls.what} statement"),
            b64d(obj.get("signature"), f"{cls.what} signature"),
        )


class Release(_SignedEnvelope[ReleaseStatement]):
    what, statement_type = "release", ReleaseStatement


class Proof(_SignedEnvelope[ProofStatement]):
    what, statement_type = "proof", ProofStatement


class Denial(_SignedEnvelope[DenialStatement]):
    what, statement_type = "denial", DenialStatement


@dataclass(frozen=True)
class SlotKey:
    """What an answer for a slot is checked against: the slot, its certificate, domain and epoch."""

    x: int
    certificate_der: bytes
    domain_id: bytes
    epoch: int

    @property
    def thumbprint(self) -> bytes:
        return hashlib.sha256(self.certificate_der).digest()


def check_binding(
    env: Release | Proof,
    st: AnswerBinding,
    *,
    slot: SlotKey,
    session_id: str,
    attestation_sha256: bytes,
) -> None:
    """What every custodian answer must bind: its slot and signer, session, domain, epoch, attestation."""
    what = env.what
    # The signature first: an answer not signed by the slot's key is nobody's, and must not count
    # against the slot's custodian (else anyone could knock an honest custodian out of a session).
    if not verify_pss(slot.certificate_der, env.statement_bytes, env.signature):
        raise UnauthenticatedError(f"the {what} is not signed by slot {slot.x}'s wrapping key")
    # A signed answer of another session is a replay by whoever kept it, not this custodian's doing.
    if not hmac.compare_digest(st.session_id.encode(), session_id.encode()):
        raise UnauthenticatedError(f"the {what} belongs to another session (replay)")
    if not hmac.compare_digest(st.attestation_sha256, attestation_sha256):
        raise UnauthenticatedError(f"the {what} answers another attestation than this session's (replay)")
    if st.x != slot.x:
        raise VerificationError(f"the {what} claims slot {st.x} on a request for slot {slot.x}")
    if st.domain_id != slot.domain_id or st.epoch != slot.epoch:
        raise VerificationError(f"the {what} is for another domain or epoch")
    if not hmac.compare_digest(st.thumbprint, slot.thumbprint):
        raise VerificationError(f"the {what} names another wrapping certificate than the slot's")


def _statement_object(data: bytes, statement_type: str, what: str) -> dict[str, Any]:
    """The JSON object of a statement, refused unless it is one and of ``statement_type``."""
    obj = parse_json_object(data, what)
    if obj.get("type") != statement_type:
        raise MalformedError(f"{what}: unknown type")
    return obj
