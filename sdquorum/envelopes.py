"""Envelopes of the recovery protocol: the exchange-key attestation and the share release.

Order of a recovery, and what binds each step to the one before:

1. The node makes a session and an ephemeral X25519 exchange key, and signs an
   :class:`ExchangeStatement` with its attestation key (certificate chaining to the attestation
   root the agents trust). The statement binds session id, node id and address, domain id, epoch,
   SHA-256 of the SD header, the exchange public key, issue and expiry times, the initiating admin
   and the stated reason, and the key every released share (or the result made from them) ends
   up under: the exchange public key for a native recovery; for an Azure restore, also the Azure
   exchange certificate (``destination_certificate``, DER) the transfer file is wrapped to, which
   the agent shows its custodian as an EXTERNAL, unattested key. A statement names a destination
   certificate if and only if its purpose is ``azure-recovery``.
2. An agent checks, before any decryption (:func:`check_request`): the attestation chain, root and
   expiry; the signature; that the statement names the SD header it was sent; that the header
   signature verifies (and matches a pinned domain key, if any); that the domain is allowed; that
   the header is signed by the key the agent remembers for that domain (pinned at activation or
   first use, :class:`RememberedDomain`) and its epoch is not below the highest the agent has seen
   (a retired epoch is never served again); and that the requested slot's thumbprint is its own
   certificate's.
3. The agent decrypts its share, checks it against the Feldman commitments, seals
   ``{session, domain, epoch, x, share}`` to the exchange key (libsodium sealed box) and signs a
   :class:`ReleaseStatement` (session, domain, epoch, x, thumbprint, SHA-256 of the attestation,
   sealed share) with its wrapping key (RSA-PSS-SHA256) (:func:`make_release`).
4. The coordinator (:func:`open_release`) checks the signature against the slot's certificate from
   the SD header, every binding field of the outer statement, opens the sealed box, checks the inner
   fields equal the outer ones, and returns the share for VSS verification.

Statement version: ``sdquorum-exchange-attestation-v2`` (v2 added ``destination_certificate``).
Parsing is strict: exactly the v2 members, no other. A v1 statement is refused by this version and a
v2 one by older agents ("unknown type"), so each side fails closed and nothing is released to a
request whose destination its custodian could not be shown: upgrade nodes and agents together (a
session lives at most 24 h; a v1 session running during the upgrade is simply started again).

Nothing here does I/O or reads a clock: ``now`` is passed in.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import nacl.exceptions
import nacl.public
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sdquorum import fields as f
from sdquorum import pki, shamir
from sdquorum.encoding import Word, b64d, b64e, canonical_json, parse_json_object
from sdquorum.errors import MalformedError, UnauthenticatedError, VerificationError
from sdquorum.keys import WrappingKey, verify_pss
from sdquorum.sdfile import Header, SignedHeader, share_label

__all__ = [
    "CHALLENGED",
    "PURPOSES",
    "Attestation",
    "CeremonyKind",
    "CheckedRequest",
    "CustodianPolicy",
    "Denial",
    "DenialStatement",
    "ExchangeStatement",
    "Proof",
    "ProofStatement",
    "Release",
    "ReleaseStatement",
    "RememberedDomain",
    "SlotKey",
    "check_remembered",
    "check_request",
    "decrypt_share",
    "make_denial",
    "make_proof",
    "make_release",
    "open_release",
    "open_sealed_share",
    "proof_context",
    "seal_release",
    "sign_attestation",
    "verify_attestation",
    "verify_denial",
    "verify_proof",
]

ATTESTATION_TYPE = "sdquorum-exchange-attestation-v2"  # v2: destination_certificate, strict members
ATTESTATION_CONTEXT = b"sdquorum exchange attestation v1\x00"
RELEASE_TYPE = "sdquorum-share-release-v1"
SHARE_TYPE = "sdquorum-sealed-share-v1"
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
PROOF_TYPE = "sdquorum-possession-proof-v1"
DENIAL_TYPE = "sdquorum-denial-v2"  # v2: bound to the attestation of the request it refuses
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


@dataclass(frozen=True)
class Attestation:
    """A signed :class:`ExchangeStatement` with the node's attestation certificate."""

    statement_bytes: bytes
    signature: bytes
    certificate_der: bytes
    statement: ExchangeStatement = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "statement", ExchangeStatement.from_bytes(self.statement_bytes))

    def to_bytes(self) -> bytes:
        return canonical_json(
            {
                "statement": b64e(self.statement_bytes),
                "signature": b64e(self.signature),
                "certificate": b64e(self.certificate_der),
            }
        )

    @property
    def sha256(self) -> bytes:
        return hashlib.sha256(self.to_bytes()).digest()

    @classmethod
    def from_bytes(cls, data: bytes) -> Attestation:
        _limit(data, "attestation")
        obj = parse_json_object(data, "attestation")
        if set(obj) != {"statement", "signature", "certificate"}:
            raise MalformedError("attestation: expected exactly statement, signature and certificate")
        return cls(
            b64d(obj.get("statement"), "attestation statement"),
            b64d(obj.get("signature"), "attestation signature"),
            b64d(obj.get("certificate"), "attestation certificate"),
        )


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


@dataclass(frozen=True)
class CustodianPolicy:
    """What an agent accepts, from its configuration."""

    attestation_root_pem: bytes
    allowed_domains: frozenset[bytes] = frozenset()  # empty = any domain signed by a pinned key
    pinned_signing_keys: frozenset[bytes] = frozenset()
    azure_restore: bool = False  # agent.azure_restore: serve Azure restores (an external destination)


@dataclass(frozen=True)
class RememberedDomain:
    """What an agent remembers of one domain: the signing key it pinned and the highest epoch seen."""

    signing_public_key: bytes
    epoch: int


def check_remembered(header: Header, remembered: Mapping[bytes, RememberedDomain]) -> None:
    """Refuse a header of a remembered domain signed by another key, or of a retired (lower) epoch.

    A domain not remembered passes: the caller then remembers it (first use)."""
    seen = remembered.get(header.domain_id)
    if seen is None:
        return
    domain = header.domain_id.hex()
    if not hmac.compare_digest(header.signing_public_key, seen.signing_public_key):
        raise VerificationError(
            f"the SD header of domain {domain} is signed by a key other than the domain key this agent "
            "pinned: the file was re-signed"
        )
    if header.epoch < seen.epoch:
        raise VerificationError(
            f"epoch {header.epoch} of domain {domain} was retired: this agent has seen epoch {seen.epoch}"
        )


@dataclass(frozen=True)
class CheckedRequest:
    """A request that passed every check an agent makes before decrypting anything."""

    statement: ExchangeStatement
    attestation_sha256: bytes
    header: Header
    x: int


def check_request(
    attestation: Attestation,
    signed_header: SignedHeader,
    x: int,
    my_thumbprint: bytes,
    policy: CustodianPolicy,
    now: datetime,
    *,
    purpose: str = CeremonyKind.RECOVERY,
    proposal: bytes = b"",
    remembered: Mapping[bytes, RememberedDomain] | None = None,
) -> CheckedRequest:
    """Every check an agent makes before it touches its private key (DESIGN.md, Recovery).

    ``purpose`` is what the request says it is; the signed statement must say the same. For a
    rotation, ``proposal`` is the roster shown to the custodian and must hash to the attested value.
    ``remembered`` is the agent's memory of domains (:func:`check_remembered`).
    """
    st = verify_attestation(attestation, policy.attestation_root_pem, now)
    if st.purpose != purpose:
        raise VerificationError(f"the request says {purpose!r} but its attestation says {st.purpose!r}")
    if purpose == CeremonyKind.ROTATION and not hmac.compare_digest(
        hashlib.sha256(proposal).digest(), st.proposal_sha256
    ):
        raise VerificationError("the rotation proposal shown differs from the one the node attested")
    if not hmac.compare_digest(st.sd_header_sha256, signed_header.sha256):
        raise VerificationError("the attestation names a different SD file than the one sent")
    header = signed_header.verify()
    if policy.pinned_signing_keys and header.signing_public_key not in policy.pinned_signing_keys:
        raise VerificationError("the SD file is signed by a domain key this agent has not pinned")
    if policy.allowed_domains and header.domain_id not in policy.allowed_domains:
        raise VerificationError(
            f"domain {header.domain_id.hex()} is not allowed by this agent's configuration"
        )
    if st.domain_id != header.domain_id or st.epoch != header.epoch:
        raise VerificationError("the attestation names another domain or epoch than the SD file")
    check_remembered(header, remembered or {})
    slot = header.slot(x)
    if not hmac.compare_digest(slot.thumbprint, my_thumbprint):
        raise VerificationError(f"slot {x} belongs to another custodian's certificate, not this agent's")
    return CheckedRequest(st, attestation.sha256, header, x)


@dataclass(frozen=True)
class ReleaseStatement:
    session_id: str
    domain_id: bytes
    epoch: int
    x: int
    thumbprint: bytes
    attestation_sha256: bytes
    sealed_share: bytes

    def to_bytes(self) -> bytes:
        return canonical_json(
            {
                "type": RELEASE_TYPE,
                "session_id": self.session_id,
                "domain_id": self.domain_id.hex(),
                "epoch": self.epoch,
                "x": self.x,
                "x5t_256": b64e(self.thumbprint),
                "attestation_sha256": b64e(self.attestation_sha256),
                "sealed_share": b64e(self.sealed_share),
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> ReleaseStatement:
        obj = parse_json_object(data, "release statement")
        if obj.get("type") != RELEASE_TYPE:
            raise MalformedError("release statement: unknown type")
        return cls(
            **_answer_fields(obj),
            sealed_share=f.b64_bytes(obj.get("sealed_share"), "sealed_share", None),
        )


class _SignedEnvelope:
    """A statement carried as the exact bytes a custodian signed (RSA-PSS), with the signature."""

    what = "envelope"
    statement_bytes: bytes
    signature: bytes

    def __init__(self, statement_bytes: bytes, signature: bytes) -> None:
        self.statement_bytes = statement_bytes
        self.signature = signature
        self._parse()  # a malformed statement is refused on construction

    def _parse(self) -> None:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        return canonical_json({"statement": b64e(self.statement_bytes), "signature": b64e(self.signature)})

    @classmethod
    def from_bytes(cls: type[E], data: bytes) -> E:
        _limit(data, cls.what)
        obj = parse_json_object(data, cls.what)
        return cls(
            b64d(obj.get("statement"), f"{cls.what} statement"),
            b64d(obj.get("signature"), f"{cls.what} signature"),
        )


E = TypeVar("E", bound=_SignedEnvelope)


class Release(_SignedEnvelope):
    what = "release"

    def _parse(self) -> None:
        self.statement = ReleaseStatement.from_bytes(self.statement_bytes)


def decrypt_share(checked: CheckedRequest, key: WrappingKey) -> shamir.Share:
    """Decrypt this agent's share and check it against the commitments before it goes anywhere."""
    header = checked.header
    slot = header.slot(checked.x)
    raw = key.decrypt(slot.encrypted_share, share_label(header.domain_id, header.epoch, slot.x))
    share = shamir.Share.from_bytes(slot.x, raw)
    if not shamir.verify_share(share, header.commitments, header.n):
        raise VerificationError(f"the decrypted share for slot {slot.x} does not match the SD commitments")
    return share


def make_release(checked: CheckedRequest, share: shamir.Share, key: WrappingKey) -> Release:
    """Seal ``share`` to the attested exchange key and sign the release with the wrapping key."""
    return seal_release(checked.statement, checked.attestation_sha256, share.x, share.to_bytes(), key)


def seal_release(
    st: ExchangeStatement, attestation_sha256: bytes, x: int, share_bytes: bytes, key: WrappingKey
) -> Release:
    """The release of slot ``x``'s share bytes (native scalar or Azure GF(257) words) to ``st``'s key."""
    inner = canonical_json(
        {
            "type": SHARE_TYPE,
            "session_id": st.session_id,
            "domain_id": st.domain_id.hex(),
            "epoch": st.epoch,
            "x": x,
            "share": b64e(share_bytes),
        }
    )
    sealed = nacl.public.SealedBox(nacl.public.PublicKey(st.exchange_public_key)).encrypt(inner)
    statement = ReleaseStatement(
        session_id=st.session_id,
        domain_id=st.domain_id,
        epoch=st.epoch,
        x=x,
        thumbprint=hashlib.sha256(key.certificate_der()).digest(),
        attestation_sha256=attestation_sha256,
        sealed_share=bytes(sealed),
    )
    data = statement.to_bytes()
    return Release(data, key.sign(data))


def open_release(
    release: Release,
    *,
    session_id: str,
    header: Header,
    expected_x: int,
    attestation_sha256: bytes,
    exchange_key: nacl.public.PrivateKey,
) -> shamir.Share:
    """Verify a release for slot ``expected_x`` of this session and return its share (VSS not yet checked)."""
    slot = header.slot(expected_x)
    raw = open_sealed_share(
        release,
        slot=SlotKey(expected_x, slot.certificate_der, header.domain_id, header.epoch),
        session_id=session_id,
        attestation_sha256=attestation_sha256,
        exchange_key=exchange_key,
    )
    try:
        return shamir.Share.from_bytes(expected_x, raw)
    except MalformedError as e:  # the custodian signed it: its slot's failure, not an anonymous one
        raise VerificationError(f"the signed release of slot {expected_x} seals no valid share ({e})") from e


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


def open_sealed_share(
    release: Release,
    *,
    slot: SlotKey,
    session_id: str,
    attestation_sha256: bytes,
    exchange_key: nacl.public.PrivateKey,
) -> bytes:
    """Every check of a release, then the share bytes it sealed to this session's exchange key."""
    st = release.statement
    _check_binding(release, st, slot=slot, session_id=session_id, attestation_sha256=attestation_sha256)
    try:
        inner = nacl.public.SealedBox(exchange_key).decrypt(st.sealed_share)
    except nacl.exceptions.CryptoError as e:
        raise VerificationError("the share is not sealed to this session's exchange key") from e
    try:  # from here on the content is signed by the slot's key: what fails is the custodian's
        obj = parse_json_object(inner, "sealed share")
        if (
            obj.get("type") != SHARE_TYPE
            or obj.get("session_id") != session_id
            or obj.get("domain_id") != slot.domain_id.hex()
            or obj.get("epoch") != slot.epoch
            or obj.get("x") != slot.x
        ):
            raise VerificationError("the sealed share's bindings differ from its signed release")
        return b64d(obj.get("share"), "share")
    except MalformedError as e:
        raise VerificationError(f"the signed release of slot {slot.x} seals no valid share ({e})") from e


@dataclass(frozen=True)
class ProofStatement:
    """A custodian's signed proof that it can open its share (drill) or approval of a proposal (rotation)."""

    purpose: str
    session_id: str
    domain_id: bytes
    epoch: int
    x: int
    thumbprint: bytes
    attestation_sha256: bytes
    proposal_sha256: bytes
    proof: bytes  # Schnorr proof of knowledge of s_x (64 bytes)

    def to_bytes(self) -> bytes:
        return canonical_json(
            {
                "type": PROOF_TYPE,
                "purpose": self.purpose,
                "session_id": self.session_id,
                "domain_id": self.domain_id.hex(),
                "epoch": self.epoch,
                "x": self.x,
                "x5t_256": b64e(self.thumbprint),
                "attestation_sha256": b64e(self.attestation_sha256),
                "proposal_sha256": b64e(self.proposal_sha256),
                "proof": b64e(self.proof),
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> ProofStatement:
        obj = parse_json_object(data, "proof statement")
        if obj.get("type") != PROOF_TYPE:
            raise MalformedError("proof statement: unknown type")
        return cls(
            purpose=f.string(obj.get("purpose"), "purpose", max_len=1024),
            **_answer_fields(obj),
            proposal_sha256=f.b64_bytes(obj.get("proposal_sha256"), "proposal_sha256", None),
            proof=f.b64_bytes(obj.get("proof"), "proof", 64),
        )


class Proof(_SignedEnvelope):
    what = "proof"

    def _parse(self) -> None:
        self.statement = ProofStatement.from_bytes(self.statement_bytes)


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
        obj = parse_json_object(data, "denial statement")
        if obj.get("type") != DENIAL_TYPE:
            raise MalformedError("denial statement: unknown type")
        return cls(
            session_id=f.string(obj.get("session_id"), "session_id", max_len=1024),
            request_id=f.string(obj.get("request_id"), "request_id", max_len=1024),
            x=f.non_negative(obj.get("x"), "x"),
            thumbprint=f.b64_bytes(obj.get("x5t_256"), "x5t_256", 32),
            reason=f.string(obj.get("reason"), "reason", max_len=1024),
            attestation_sha256=f.b64_bytes(obj.get("attestation_sha256"), "attestation_sha256", 32),
            certificate=f.b64_bytes(obj.get("certificate"), "certificate", None),
        )


class Denial(_SignedEnvelope):
    what = "denial"

    def _parse(self) -> None:
        self.statement = DenialStatement.from_bytes(self.statement_bytes)


def make_denial(
    key: WrappingKey, *, session_id: str, request_id: str, x: int, reason: str, attestation: bytes
) -> Denial:
    """A signed refusal of one request, bound to the attestation bytes that request carried (so a
    node that obtains it cannot hand it to another node, whose attestation differs)."""
    statement = DenialStatement(
        session_id=session_id,
        request_id=request_id,
        x=x,
        thumbprint=hashlib.sha256(key.certificate_der()).digest(),
        reason=reason[:200],
        attestation_sha256=hashlib.sha256(attestation).digest(),
        certificate=key.certificate_der(),
    )
    data = statement.to_bytes()
    return Denial(data, key.sign(data))


def verify_denial(
    denial: Denial,
    *,
    slot_certificate: bytes,
    expected_x: int,
    session_id: str,
    request_id: str,
    attestation_sha256: bytes,
) -> str:
    """The reason of a denial signed by slot ``expected_x``'s key for exactly this request, under
    exactly this session's attestation."""
    st = denial.statement
    if not verify_pss(slot_certificate, denial.statement_bytes, denial.signature):
        raise UnauthenticatedError(f"the denial is not signed by slot {expected_x}'s wrapping key")
    if (
        st.x != expected_x
        or not hmac.compare_digest(st.session_id.encode(), session_id.encode())
        or not hmac.compare_digest(st.request_id.encode(), request_id.encode())
        or not hmac.compare_digest(st.thumbprint, hashlib.sha256(slot_certificate).digest())
        or not hmac.compare_digest(st.attestation_sha256, attestation_sha256)
    ):
        raise UnauthenticatedError("the denial was made for another request (replay)")
    return st.reason


def proof_context(st: ExchangeStatement, x: int, attestation_sha256: bytes) -> bytes:
    """What a Schnorr proof is bound to: purpose, session, node, domain, epoch, slot, challenge, proposal."""
    return canonical_json(
        {
            "purpose": st.purpose,
            "session_id": st.session_id,
            "node_id": st.node_id,
            "domain_id": st.domain_id.hex(),
            "epoch": st.epoch,
            "x": x,
            "challenge": b64e(st.challenge),
            "proposal_sha256": b64e(st.proposal_sha256),
            "attestation_sha256": b64e(attestation_sha256),
        }
    )


def make_proof(checked: CheckedRequest, share: shamir.Share, key: WrappingKey, rng: shamir.Rng) -> Proof:
    """Prove possession of ``share`` for a drill or a rotation approval; the share never leaves."""
    st = checked.statement
    proof = shamir.prove_share(share, proof_context(st, share.x, checked.attestation_sha256), rng)
    statement = ProofStatement(
        purpose=st.purpose,
        session_id=st.session_id,
        domain_id=st.domain_id,
        epoch=st.epoch,
        x=share.x,
        thumbprint=checked.header.slot(share.x).thumbprint,
        attestation_sha256=checked.attestation_sha256,
        proposal_sha256=st.proposal_sha256,
        proof=proof.to_bytes(),
    )
    data = statement.to_bytes()
    return Proof(data, key.sign(data))


def verify_proof(proof: Proof, *, attestation: Attestation, header: Header, expected_x: int) -> None:
    """Check a proof for slot ``expected_x`` answers this attestation; VerificationError names the check."""
    st, att = proof.statement, attestation.statement
    slot_info = header.slot(expected_x)
    _check_binding(
        proof,
        st,
        slot=SlotKey(expected_x, slot_info.certificate_der, header.domain_id, header.epoch),
        session_id=att.session_id,
        attestation_sha256=attestation.sha256,
    )
    if st.purpose != att.purpose:
        raise VerificationError("the proof belongs to another ceremony (replay)")
    if not hmac.compare_digest(st.proposal_sha256, att.proposal_sha256):
        raise VerificationError("the proof approves another proposal than this one")
    schnorr = shamir.SchnorrProof.from_bytes(st.proof)
    public = header.commitments.public_share(expected_x)
    if not shamir.verify_share_proof(schnorr, public, proof_context(att, expected_x, attestation.sha256)):
        raise VerificationError(f"slot {expected_x}'s proof of possession of its share does not verify")


def _check_binding(
    env: Release | Proof,
    st: ReleaseStatement | ProofStatement,
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


def _answer_fields(obj: dict[str, Any]) -> dict[str, Any]:
    """The members a release and a proof statement share: which session, domain, epoch, slot and key."""
    return {
        "session_id": f.string(obj.get("session_id"), "session_id", max_len=1024),
        "domain_id": f.hex_bytes(obj.get("domain_id"), "domain_id", 16),
        "epoch": f.non_negative(obj.get("epoch"), "epoch"),
        "x": f.non_negative(obj.get("x"), "x"),
        "thumbprint": f.b64_bytes(obj.get("x5t_256"), "x5t_256", 32),
        "attestation_sha256": f.b64_bytes(obj.get("attestation_sha256"), "attestation_sha256", 32),
    }


def _limit(data: bytes, what: str) -> None:
    if len(data) > MAX_ENVELOPE_BYTES:
        raise MalformedError(f"{what} is larger than {MAX_ENVELOPE_BYTES} bytes")
