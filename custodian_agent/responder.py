"""What the agent does with one request, shared by the online agent and ``custodian-agent respond``.

:func:`check` makes every check before the private key is touched; :func:`describe` is what the
human is shown before approving; :func:`answer` decrypts the share, checks it against the
commitments, and returns a release sealed to the node's exchange key (recovery) or a proof of
possession bound to the attested challenge (drill, rotation approval). No I/O.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sdquorum import envelopes, shamir
from sdquorum.azure.ceremony import (
    AZURE_PURPOSE,
    CheckedAzureRequest,
    check_azure_request,
    release_azure_share,
)
from sdquorum.errors import VerificationError
from sdquorum.keys import WrappingKey
from sdquorum.offline import CeremonyRequest
from sdquorum.proposal import RotationProposal
from sdquorum.sdfile import SignedHeader

__all__ = ["answer", "check", "describe"]


Checked = envelopes.CheckedRequest | CheckedAzureRequest


def check(
    req: CeremonyRequest, thumbprint: bytes, policy: envelopes.CustodianPolicy, now: datetime
) -> Checked:
    attestation = envelopes.Attestation.from_bytes(req.attestation)
    if req.kind == AZURE_PURPOSE:
        azure = check_azure_request(attestation, req.header, req.x, thumbprint, policy, now)
        if azure.statement.session_id != req.session_id:
            raise VerificationError("the request's session differs from its attestation's")
        return azure
    signed = SignedHeader(req.header, req.header_signature)
    checked = envelopes.check_request(
        attestation, signed, req.x, thumbprint, policy, now, purpose=req.kind, proposal=req.proposal
    )
    if checked.statement.session_id != req.session_id:
        raise VerificationError("the request's session differs from its attestation's")
    if req.kind == "rotation":
        proposal = RotationProposal.from_bytes(req.proposal)
        if proposal.domain_id != checked.header.domain_id or proposal.from_epoch != checked.header.epoch:
            raise VerificationError("the rotation proposal names another domain or epoch")
    return checked


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
    if req.kind == "rotation" and isinstance(checked, envelopes.CheckedRequest):
        now = [(slot.name, slot.certificate_der) for slot in checked.header.slots]
        out["proposal"] = RotationProposal.from_bytes(req.proposal).summary(now)
    return out


def answer(req: CeremonyRequest, checked: Checked, key: WrappingKey, rng: shamir.Rng) -> bytes:
    if isinstance(checked, CheckedAzureRequest):
        return release_azure_share(checked, key).to_bytes()
    share = envelopes.decrypt_share(checked, key)
    if req.kind == "recovery":
        return envelopes.make_release(checked, share, key).to_bytes()
    return envelopes.make_proof(checked, share, key, rng).to_bytes()
