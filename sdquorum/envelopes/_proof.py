"""Answers that release nothing: possession proofs (drill, rotation approval) and denials.

Invariants:

* A Schnorr proof of knowledge of a share is bound to :func:`proof_context` (purpose, session,
  node, domain, epoch, slot, challenge, proposal hash, attestation hash); the share never leaves
  the agent.
* :func:`verify_proof` accepts a proof only for the same ceremony, the same proposal, and a share
  matching the slot's public commitment.
* :func:`verify_denial` returns a reason only from a denial signed by the slot's key for exactly
  this session, request and attestation.
"""

from __future__ import annotations

import hashlib
import hmac

from sdquorum import shamir
from sdquorum.encoding import b64e, canonical_json
from sdquorum.envelopes._answers import (
    Denial,
    DenialStatement,
    Proof,
    ProofStatement,
    SlotKey,
    check_binding,
)
from sdquorum.envelopes._attestation import Attestation, ExchangeStatement
from sdquorum.envelopes._request import CheckedRequest
from sdquorum.errors import UnauthenticatedError, VerificationError
from sdquorum.keys import WrappingKey, verify_pss
from sdquorum.sdfile import Header


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
    return Denial.signed(statement, key)


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
    return Proof.signed(statement, key)


def verify_proof(proof: Proof, *, attestation: Attestation, header: Header, expected_x: int) -> None:
    """Check a proof for slot ``expected_x`` answers this attestation; VerificationError names the check."""
    st, att = proof.statement, attestation.statement
    slot_info = header.slot(expected_x)
    check_binding(
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
