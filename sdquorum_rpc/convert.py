"""Conversions between wire messages and the core's values, shared by the node, the agent and sdctl.

One table maps each ceremony kind to its ``RequestKind`` on the wire, in both directions, so the
three processes cannot disagree on it. A kind missing from the table is refused, never guessed.
Importing this module costs the generated messages only (no grpc channel code, no agent, no node).
"""

from __future__ import annotations

from sdquorum.envelopes import CeremonyKind
from sdquorum.errors import VerificationError
from sdquorum.offline import CeremonyRequest
from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2 as pb

__all__ = ["KIND_FROM_PROTO", "KIND_TO_PROTO", "request_from_proto"]

KIND_TO_PROTO: dict[str, pb.RequestKind] = {
    CeremonyKind.RECOVERY: pb.RECOVERY,
    CeremonyKind.DRILL: pb.DRILL,
    CeremonyKind.ROTATION: pb.ROTATION,
    CeremonyKind.AZURE_RECOVERY: pb.AZURE_RECOVERY,
}
KIND_FROM_PROTO: dict[pb.RequestKind, CeremonyKind] = {v: CeremonyKind(k) for k, v in KIND_TO_PROTO.items()}


def request_from_proto(msg: pb.CustodianRequest, custodian: str = "") -> CeremonyRequest:
    """The request as the agent checks it, or as ``sdctl`` writes it to a file for an offline custodian."""
    kind = KIND_FROM_PROTO.get(msg.kind)
    if kind is None:
        raise VerificationError("the request is of an unknown kind")
    return CeremonyRequest(
        request_id=msg.request_id,
        session_id=msg.session_id,
        kind=kind,
        x=msg.x,
        custodian=custodian,
        attestation=bytes(msg.attestation),
        header=bytes(msg.sd_header),
        header_signature=bytes(msg.sd_header_signature),
        proposal=bytes(msg.proposal),
    )
