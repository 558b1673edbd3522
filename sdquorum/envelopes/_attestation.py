"""The exchange-key attestation: what a node signs about a recovery session, and its checks.

An :class:`ExchangeStatement` binds session, node, domain, epoch, SD header, exchange key, times,
initiator, reason and (per purpose) challenge, proposal hash and destination certificate; the node
signs its canonical bytes, prefixed by :data:`ATTESTATION_CONTEXT`, with the Ed25519 key its
attestation certificate certifies (:func:`sign_attestation`).

Invariants:

* Parsing is strict: exactly the v2 members (:data:`ATTESTATION_TYPE`), a known purpose, and the
  purpose-bound members present exactly where their purpose needs them (a challenge for a drill or
  rotation, a proposal hash for a rotation, a destination certificate for an Azure restore).
* :func:`verify_attestation` returns a statement only after the chain to the attestation root, the
  signature, the node id (the certificate's CN) and the time window (``now`` passed in, skew
  :data:`CLOCK_SKEW_SECONDS`) all passed.
* No envelope over :data:`MAX_ENVELOPE_BYTES` is parsed (:func:`check_size`).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Generic, Self, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sdquorum import fields as f
from sdquorum import pki
from sdquorum.encoding import Word, b64d, b64e, canonical_json, parse_json_object
from sdquorum.errors import MalformedError, VerificationError

ATTESTATION_TYPE = "sdquorum-exchange-attestation-v2"  # v2: destination_certificate, strict members
ATTESTATION_CONTEXT = b"sdquorum exchange attestation v1\x00"
MAX_ENVELOPE_BYTES = 64 * 1024
CLOCK_SKEW_SECONDS = 120


class CeremonyKind(Word):
    """What a ceremony is, and so what the request an agent receives asks of it.

    The value is the word on the wire and in every JSON form (attestation ``purpose``, request and
    answer files, audit events), so a member compares equal to its word.
    """

    RECOVERY = "recovery"
    DRILL = "drill"
    ROTATION = "rotation"
    AZURE_RECOVERY = "azure-recovery"
    # A request kind only: the node tells an agent which domain it now serves. It is never the
    # purpose of an attestation and never answered.
    DOMAIN_NOTICE = "domain-notice"


# The kinds an attestation may name (every ceremony; a domain notice is not one).
PURPOSES = (CeremonyKind.RECOVERY, CeremonyKind.DRILL, CeremonyKind.ROTATION, CeremonyKind.AZURE_RECOVERY)

# The ceremonies whose attestation carries a 32-byte challenge (possession is proved, not a share released).
CHALLENGED = (CeremonyKind.DRILL, CeremonyKind.ROTATION)
MAX_DESTINATION_CERTIFICATE_BYTES = 16 * 1024
_STATEMENT_MEMBERS = frozenset(
    {
        "type", "challenge", "proposal_sha256", "session_id", "purpose", "node_id", "node_address",
        "domain_id", "epoch", "sd_header_sha256", "exchange_public_key", "issued_at", "expires_at",
        "initiator", "reason", "destination_certificate",
    }
)  # fmt: skip


@dataclass(frozen=True)
class ExchangeStatement:
    session_id: str
    purpose: str
    node_id: str
    node_address: str
    domain_id: bytes
    epoch: int
    sd_header_sha256: bytes
    exchange_public_key: bytes
    issued_at: int
    expires_at: int
    initiator: str
    reason: str
    challenge: bytes = b""  # fresh 32 random bytes: what a possession proof answers
    proposal_sha256: bytes = b""  # rotation only: SHA-256 of the proposal the custodian approves
    destination_certificate: bytes = b""  # Azure restore only: the exchange certificate (DER) the
    # transfer file is wrapped to; an external key the node cannot attest, shown to each custodian

    def to_bytes(self) -> bytes:
        return canonical_json(
            {
                "type": ATTESTATION_TYPE,
                "destination_certificate": b64e(self.destination_certificate),
                "challenge": b64e(self.challenge),
                "proposal_sha256": b64e(self.proposal_sha256),
                "session_id": self.session_id,
                "purpose": self.purpose,
                "node_id": self.node_id,
                "node_address": self.node_address,
                "domain_id": self.domain_id.hex(),
                "epoch": self.epoch,
                "sd_header_sha256": b64e(self.sd_header_sha256),
                "exchange_public_key": b64e(self.exchange_public_key),
                "issued_at": self.issued_at,
                "expires_at": self.expires_at,
                "initiator": self.initiator,
                "reason": self.reason,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> ExchangeStatement:
        obj = parse_json_object(data, "attestation statement")
        if obj.get("type") != ATTESTATION_TYPE:
            raise MalformedError(
                "attestation statement: unknown type (nodes and agents of different versions? upgrade both)"
            )
        if set(obj) != _STATEMENT_MEMBERS:
            raise MalformedError(
                f"attestation statement: unexpected members {sorted(set(obj) ^ _STATEMENT_MEMBERS)}"
            )
        st = cls(
            session_id=f.string(obj.get("session_id"), "session_id", max_len=1024),
            purpose=f.string(obj.get("purpose"), "purpose", max_len=1024),
            node_id=f.string(obj.get("node_id"), "node_id", max_len=1024),
            node_address=f.string(obj.get("node_address"), "node_address", max_len=1024),
            domain_id=f.hex_bytes(obj.get("domain_id"), "domain_id", 16),
            epoch=f.non_negative(obj.get("epoch"), "epoch"),
            sd_header_sha256=f.b64_bytes(obj.get("sd_header_sha256"), "sd_header_sha256", 32),
            exchange_public_key=f.b64_bytes(obj.get("exchange_public_key"), "exchange_public_key", 32),
            issued_at=f.non_negative(obj.get("issued_at"), "issued_at"),
            expires_at=f.non_negative(obj.get("expires_at"), "expires_at"),
            initiator=f.string(obj.get("initiator"), "initiator", max_len=1024),
            reason=f.string(obj.get("reason"), "reason", max_len=1024),
            challenge=f.b64_bytes(obj.get("challenge"), "challenge", None),
            proposal_sha256=f.b64_bytes(obj.get("proposal_sha256"), "proposal_sha256", None),
            destination_certificate=f.b64_bytes(
                obj.get("destination_certificate"), "destination_certificate", None
            ),
        )
        if st.purpose not in PURPOSES:
            raise MalformedError(f"attestation statement: unknown purpose {st.purpose!r}")
        if len(st.challenge) not in (0, 32) or len(st.proposal_sha256) not in (0, 32):
            raise MalformedError("attestation statement: challenge and proposal hash must be 32 bytes")
        if st.purpose in CHALLENGED and len(st.challenge) != 32:
            raise MalformedError("attestation statement: a drill or rotation needs a 32-byte challenge")
        if (st.purpose == CeremonyKind.ROTATION) != (len(st.proposal_sha256) == 32):
            raise MalformedError(
                "attestation statement: a proposal hash goes with a rotation, and only there"
            )
        if (st.purpose == CeremonyKind.AZURE_RECOVERY) != bool(st.destination_certificate):
            raise MalformedError(
                "attestation statement: a destination certificate goes with an Azure restore, and only there"
            )
        if len(st.destination_certificate) > MAX_DESTINATION_CERTIFICATE_BYTES:
            raise MalformedError(
                f"attestation statement: destination certificate over {MAX_DESTINATION_CERTIFICATE_BYTES} bytes"
            )
        return st


S = TypeVar("S")


@dataclass(frozen=True)
class CertifiedStatement(Generic[S]):
    """A statement carried as the exact bytes its signer signed (Ed25519), with the signature and the
    signer's certificate: the exchange-key attestation, and the pool's join request and grant. The
    JSON carries exactly these three members.

    A subclass names what it carries (``what``, for messages) and its statement type, whose
    ``from_bytes`` parses ``statement`` on construction: a malformed statement is refused there.
    """

    what: ClassVar[str]
    statement_type: ClassVar[type[Any]]  # a class with from_bytes(bytes) -> S (ClassVar cannot say S)

    statement_bytes: bytes
    signature: bytes
    certificate_der: bytes
    statement: S = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "statement", self.statement_type.from_bytes(self.statement_bytes))

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        return cls(*cls.parts(data, cls.what))

    def to_bytes(self) -> bytes:
        return canonical_json(
            {
                "statement": b64e(self.statement_bytes),
                "signature": b64e(self.signature),
                "certificate": b64e(self.certificate_der),
            }
        )

    @functools.cached_property
    def sha256(self) -> bytes:
        """SHA-256 of :meth:`to_bytes` (computed once: every answer of a session binds it)."""
        return hashlib.sha256(self.to_bytes()).digest()

    @staticmethod
    def parts(data: bytes, what: str) -> tuple[bytes, bytes, bytes]:
        """(statement, signature, certificate) of ``data``, size and members checked first."""
        check_size(data, what)
        obj = parse_json_object(data, what)
        if set(obj) != {"statement", "signature", "certificate"}:
            raise MalformedError(f"{what}: expected exactly statement, signature and certificate")
        return (
            b64d(obj.get("statement"), f"{what} statement"),
            b64d(obj.get("signature"), f"{what} signature"),
            b64d(obj.get("certificate"), f"{what} certificate"),
        )


class Attestation(CertifiedStatement[ExchangeStatement]):
    """A signed :class:`ExchangeStatement` with the node's attestation certificate."""

    what, statement_type = "attestation", ExchangeStatement


def sign_attestation(
    statement: ExchangeStatement, key: Ed25519PrivateKey, certificate_der: bytes
) -> Attestation:
    data = statement.to_bytes()
    return Attestation(data, key.sign(ATTESTATION_CONTEXT + data), certificate_der)


def verify_attestation(att: Attestation, root_pem: bytes, now: datetime) -> ExchangeStatement:
    """Chain to ``root_pem``, signature, node id (the certificate's CN), and time window; returns the
    statement."""
    public, node_id = pki.verify_attestation_cert(att.certificate_der, root_pem, now)
    try:
        public.verify(att.signature, ATTESTATION_CONTEXT + att.statement_bytes)
    except InvalidSignature as e:
        raise VerificationError("the exchange-key attestation signature does not verify") from e
    st = att.statement
    if st.node_id != node_id:  # what the custodian is shown as "from which node" must be certified
        raise VerificationError(
            f"the attestation says it comes from node {st.node_id!r} but its certificate is node {node_id!r}'s"
        )
    t = int(now.timestamp())
    if t >= st.expires_at:
        raise VerificationError("the request has expired (its attestation deadline has passed)")
    if st.issued_at > t + CLOCK_SKEW_SECONDS:
        raise VerificationError("the attestation is issued in the future: check the clocks")
    return st


def check_size(data: bytes, what: str) -> None:
    if len(data) > MAX_ENVELOPE_BYTES:
        raise MalformedError(f"{what} is larger than {MAX_ENVELOPE_BYTES} bytes")
