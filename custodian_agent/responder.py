"""What the agent does with one request, shared by the online agent and ``custodian-agent respond``.

:func:`check` makes every check before the private key is touched; :func:`describe` is what the
human is shown before approving, including where what it releases ends up (``destination``): for a
recovery, this node's attested exchange key (SHA-256 of the X25519 public key, and the node); for an
Azure restore, the Azure exchange certificate from the signed statement, named as an EXTERNAL,
unattested key (its subject, SHA-256 of its SubjectPublicKeyInfo and of its DER); for a drill or a
rotation approval, nothing (no share leaves the agent); :func:`answer` decrypts the share, checks it against the
commitments, and returns a release sealed to the node's exchange key (recovery) or a proof of
possession bound to the attested challenge (drill, rotation approval). :func:`check_notice` checks
the node's notice of a domain (its signed header, sent at activation and after each rotation) before
the agent remembers the domain's key and epoch. No I/O.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sdquorum import envelopes, shamir
from sdquorum.azure.ceremony import (
    AZURE_PURPOSE,
    CheckedAzureRequest,
    check_azure_request,
    exchange_certificate_summary,
    release_azure_share,
)
from sdquorum.envelopes import CeremonyKind
from sdquorum.errors import VerificationError
from sdquorum.keys import WrappingKey
from sdquorum.offline import CeremonyRequest
from sdquorum.proposal import RotationProposal
from sdquorum.sdfile import Header, SignedHeader

__all__ = ["answer", "check", "check_notice", "describe", "destination"]


Checked = envelopes.CheckedRequest | CheckedAzureRequest


def check(
    req: CeremonyRequest,
    thumbprint: bytes,
    policy: envelopes.CustodianPolicy,
    now: datetime,
    remembered: Mapping[bytes, envelopes.RememberedDomain] | None = None,
) -> Checked:
    attestation = envelopes.Attestation.from_bytes(req.attestation)
    if req.kind == AZURE_PURPOSE:
        azure = check_azure_request(attestation, req.header, req.x, thumbprint, policy, now)
        if azure.statement.session_id != req.session_id:
            raise VerificationError("the request's session differs from its attestation's")
        return azure
    signed = SignedHeader(req.header, req.header_signature)
    checked = envelopes.check_request(
        attestation,
        signed,
        req.x,
        thumbprint,
        policy,
        now,
        purpose=req.kind,
        proposal=req.proposal,
        remembered=remembered,
    )
    if checked.statement.session_id != req.session_id:
        raise VerificationError("the request's session differs from its attestation's")
    if req.kind == CeremonyKind.ROTATION:
        proposal = RotationProposal.from_bytes(req.proposal)
        if proposal.domain_id != checked.header.domain_id or proposal.from_epoch != checked.header.epoch:
            raise VerificationError("the rotation proposal names another domain or epoch")
    return checked


def check_notice(
    header_bytes: bytes,
    signature: bytes,
    thumbprint: bytes,
    policy: envelopes.CustodianPolicy,
    remembered: Mapping[bytes, envelopes.RememberedDomain],
) -> Header:
    """A node's notice of a domain: its signed header. Returns the header to remember, after: the
    signature verifies under the key the header carries (and a statically pinned key, if any), the
    domain is allowed, a domain already remembered keeps its key, and this agent's certificate holds
    a slot (or, for a custodian a rotation removed, the domain is remembered: only its epoch can
    rise). A notice of an older epoch than remembered passes (it changes nothing)."""
    header = SignedHeader(header_bytes, signature).verify()
    if policy.pinned_signing_keys and header.signing_public_key not in policy.pinned_signing_keys:
        raise VerificationError("the notice's domain is signed by a key this agent has not pinned")
    if policy.allowed_domains and header.domain_id not in policy.allowed_domains:
        raise VerificationError(
            f"domain {header.domain_id.hex()} is not allowed by this agent's configuration"
        )
    seen = remembered.get(header.domain_id)
    if seen is not None and not hmac.compare_digest(header.signing_public_key, seen.signing_public_key):
        raise VerificationError(
            f"the notice of domain {header.domain_id.hex()} is signed by a key other than the one "
            "this agent pinned: the header was re-signed"
        )
    if header.slot_by_thumbprint(thumbprint) is None and seen is None:
        # A custodian removed by a rotation is told of the new epoch under the key it pinned; a
        # domain it never held is nothing to remember.
        raise VerificationError(f"this agent holds no slot of domain {header.domain_id.hex()}")
    return header  # an older epoch than remembered changes nothing (the memory keeps the highest)


def describe(req: CeremonyRequest, checked: Checked) -> dict[str, Any]:
    st = checked.statement
    out: dict[str, Any] = {
        "request_id": req.request_id,
        "kind": req.kind,
        "session_id": st.session_id,
        "node_id": st.node_id,
        "node_address": st.node_address,
        "domain_id": st.domain_id.hex(),
        "epoch": st.epoch,
        "slot": req.x,
        "initiator": st.initiator,
        "reason": st.reason,
        "expires_at": datetime.fromtimestamp(st.expires_at, tz=UTC).isoformat(),
    }
    out.update(destination(checked))
    if req.kind == CeremonyKind.ROTATION and isinstance(checked, envelopes.CheckedRequest):
        now = [(slot.name, slot.certificate_der) for slot in checked.header.slots]
        out["proposal"] = RotationProposal.from_bytes(req.proposal).summary(now)
    return out


def destination(checked: Checked) -> dict[str, str]:
    """The key what this custodian releases ends up under, from the signed statement: its SHA-256
    and what it is (``destination``, one line), with the digests as their own fields."""
    st = checked.statement
    exchange = hashlib.sha256(st.exchange_public_key).hexdigest()
    if isinstance(checked, CheckedAzureRequest):
        cert = exchange_certificate_summary(st.destination_certificate)
        return {
            "destination": (
                f"EXTERNAL, UNATTESTED key: the Azure exchange certificate {cert.subject!r} "
                f"(key SPKI SHA-256 {cert.spki_sha256.hex()}, certificate SHA-256 {cert.sha256.hex()}); "
                "the restored domain is wrapped to it and whoever holds its private key opens it: "
                "compare it with your Azure HSM's exchange key before approving"
            ),
            "destination_spki_sha256": cert.spki_sha256.hex(),
            "destination_certificate_sha256": cert.sha256.hex(),
            "destination_subject": cert.subject,
            "exchange_key_sha256": exchange,
        }
    if st.purpose == CeremonyKind.RECOVERY:
        return {
            "destination": (
                f"this node's attested exchange key (X25519 SHA-256 {exchange}, node {st.node_id}): the "
                "share is sealed to it and the domain opens only inside that node"
            ),
            "destination_sha256": exchange,
        }
    return {"destination": "none: no share leaves this agent (a proof of possession only)"}


def answer(req: CeremonyRequest, checked: Checked, key: WrappingKey, rng: shamir.Rng) -> bytes:
    if isinstance(checked, CheckedAzureRequest):
        return release_azure_share(checked, key).to_bytes()
    share = envelopes.decrypt_share(checked, key)
    if req.kind == CeremonyKind.RECOVERY:
        return envelopes.make_release(checked, share, key).to_bytes()
    return envelopes.make_proof(checked, share, key, rng).to_bytes()
