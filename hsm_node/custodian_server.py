"""The custodians' servicer of ``hsm-node`` (``sdquorum.v1.Custodian``): request streams, releases,
proofs and denials, each tied to the caller's TLS name (:mod:`hsm_node.agents`)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from hsm_node.agents import wrapping_key_name
from hsm_node.node import Node
from hsm_node.wire import request_to_proto
from sdquorum import pki
from sdquorum.errors import MalformedError, UsageError
from sdquorum.pki import Role
from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2 as pb
from sdquorum_rpc.errors import rpc
from sdquorum_rpc.tls import Ctx

__all__ = ["CustodianServicer"]

log = logging.getLogger("sdquorum.node.server")


def _wrapping_key_name(thumbprint: bytes, certificate: bytes) -> str:
    """The CN of the wrapping certificate a hello sent ("" if it sent none); MalformedError when
    the certificate does not parse or is not the one the hello's thumbprint names."""
    if not certificate:
        return ""
    name = wrapping_key_name(thumbprint, certificate)
    if name is None:
        raise MalformedError("the hello's wrapping certificate is not the one its thumbprint names")
    return name


class CustodianServicer:
    def __init__(self, node: Node) -> None:
        self.node = node

    @rpc("custodian")
    async def WatchRequests(
        self, request: pb.AgentHello, context: Ctx, role: Role
    ) -> AsyncIterator[pb.CustodianRequest]:
        thumb = bytes(request.wrapping_cert_sha256)
        if len(thumb) != 32:
            raise UsageError(
                "the hello must carry the 32-byte SHA-256 thumbprint of the wrapping certificate"
            )
        certificate = bytes(request.wrapping_certificate)
        key_name = _wrapping_key_name(thumb, certificate)
        key_sha256 = pki.spki_sha256(certificate) if certificate else b""
        log.info("agent %s connected (wrapping certificate %s)", role, thumb.hex()[:16])
        await context.send_initial_metadata(())  # lets the agent know it is connected before any request
        self.node.agents.agent_connected(role, thumb, key_name, key_sha256)
        sent: set[str] = set()
        try:
            while True:
                token = self.node.notices.request_token()
                notice = self.node.notices.domain_notice(
                    role, thumb, key_name
                )  # the domain's current header, if a slot is its
                if notice is not None and notice.request_id not in sent:
                    sent.add(notice.request_id)
                    yield request_to_proto(notice)
                    log.info("told %s of domain epoch %s", role, notice.request_id[:16])
                # Only requests for a key named for this caller: announcing another custodian's
                # thumbprint receives nothing (issue 13, class 4; hsm_node.node's docstring).
                for req in self.node.agents.agent_requests(role, thumb, key_name):
                    if req.request_id in sent:
                        continue
                    sent.add(req.request_id)
                    yield request_to_proto(req)
                    self.node.ceremonies.mark_delivered(req)
                    log.debug(
                        "delivered %s request %s (slot %d) to %s", req.kind, req.request_id, req.x, role
                    )
                await self.node.notices.wait_change(token, timeout=5.0)
        finally:
            self.node.agents.agent_disconnected(role, thumb, key_name)
            log.info("agent %s disconnected", role)

    @rpc("custodian")
    async def SubmitRelease(self, request: pb.ShareRelease, context: Ctx, role: Role) -> pb.Ack:
        kinds = ("recovery", "azure-recovery")  # a release answers these; proofs come by SubmitProof
        await self.node.answers.submit_answer(request.request_id, bytes(request.release), role, kind=kinds)
        return pb.Ack()

    @rpc("custodian")
    async def SubmitProof(self, request: pb.ProofSubmission, context: Ctx, role: Role) -> pb.Ack:
        await self.node.answers.submit_answer(
            request.request_id, bytes(request.proof), role, kind=("drill", "rotation")
        )
        return pb.Ack()

    @rpc("custodian")
    async def Deny(self, request: pb.Denial, context: Ctx, role: Role) -> pb.Ack:
        await self.node.answers.deny(request.request_id, bytes(request.signed), role)
        return pb.Ack()
