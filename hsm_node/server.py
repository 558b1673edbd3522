"""gRPC servicers of ``hsm-node``: thin adapters from the wire contract to :class:`hsm_node.node.Node`.

Roles: ``Node`` any authenticated role; ``NodeAdmin`` admin; ``Keys`` app and admin (``PurgeKey``
and ``ListDeletedKeys`` admin only; which keys each caller may touch: :mod:`hsm_node.node`);
``Custodian`` custodian. Every method goes through :func:`sdquorum_rpc.errors.rpc` (role check, error mapping).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health as grpc_health
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coordinator import CeremonyStatus, CustodianRequest, CustodianStatus, SessionState
from hsm_node.agents import wrapping_key_name
from hsm_node.dataplane import KeyCaller
from hsm_node.keyops import KeyType
from hsm_node.node import Node
from hsm_node.pool.rpc import PoolAdminRpcs
from hsm_node.store import StoredKey
from sdquorum import pki
from sdquorum.errors import MalformedError, SdquorumError, UsageError
from sdquorum.pki import Role, load_cert, spki_sha256
from sdquorum.review import CustodyRecord
from sdquorum.sdfile import MAX_SD_FILE_BYTES
from sdquorum_rpc import packed
from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2 as pb
from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2_grpc as pbg
from sdquorum_rpc.convert import KIND_TO_PROTO
from sdquorum_rpc.errors import RequestGuard, rpc
from sdquorum_rpc.listen import bind_failure
from sdquorum_rpc.observability import NodeSnapshot
from sdquorum_rpc.tls import DEFAULT_MAX_MESSAGE_BYTES, Ctx, TlsFiles, server_credentials, server_options

__all__ = ["CHUNK_BYTES", "MAX_BATCH_ITEMS", "NodeServer", "serve", "status_to_proto"]

log = logging.getLogger("sdquorum.node.server")
CHUNK_BYTES = 1024 * 1024
MAX_BACKUP_BYTES = 1024 * 1024 * 1024
MAX_BATCH_ITEMS = 1000  # default of node.max_batch_items

_STATE = {"PROVISIONED": pb.PROVISIONED, "RECOVERY_PENDING": pb.RECOVERY_PENDING, "ACTIVATED": pb.ACTIVATED}
_SESSION = {
    SessionState.AWAITING_SD_FILE: pb.AWAITING_SD_FILE,
    SessionState.COLLECTING: pb.COLLECTING,
    SessionState.COMPLETED: pb.COMPLETED,
    SessionState.FAILED: pb.FAILED,
}
_CUSTODIAN = {
    CustodianStatus.NOT_CONNECTED: pb.NOT_CONNECTED,
    CustodianStatus.REQUESTED: pb.REQUESTED,
    CustodianStatus.ACCEPTED: pb.ACCEPTED,
    CustodianStatus.REJECTED: pb.REJECTED,
    CustodianStatus.DENIED: pb.DENIED,
    CustodianStatus.NOT_NEEDED: pb.NOT_NEEDED,
    CustodianStatus.UNREACHABLE: pb.UNREACHABLE,
}
_KIND = {**KIND_TO_PROTO, "domain-notice": pb.DOMAIN_NOTICE}  # a notice is sent, never answered


def request_to_proto(req: CustodianRequest) -> pb.CustodianRequest:
    return pb.CustodianRequest(
        request_id=req.request_id,
        session_id=req.session_id,
        kind=_KIND[req.kind],
        attestation=req.attestation,
        sd_header=req.header_bytes,
        sd_header_signature=req.header_signature,
        x=req.x,
        proposal=req.proposal,
    )


def status_to_proto(st: CeremonyStatus) -> pb.RecoveryProgress:
    return pb.RecoveryProgress(
        session_id=st.session_id,
        state=_SESSION[st.state],
        required=st.required,
        accepted=st.accepted,
        custodians=[
            pb.CustodianProgress(x=c.x, name=c.name, status=_CUSTODIAN[c.status], detail=c.detail)
            for c in st.custodians
        ],
        expires_at_unix=st.expires_at,
        message=st.message,
        domain_id=st.domain_id.hex(),
        epoch=st.epoch,
        kind=st.kind,
    )


def _key_info(k: StoredKey, purge_at: int = 0) -> pb.KeyInfo:
    return pb.KeyInfo(
        name=k.name,
        type=pb.KeyType.Name(k.key_type),
        public_key_der=k.public_der,
        created_at_unix=k.created_at,
        owner=k.owner,
        deleted_at_unix=k.deleted_at or 0,
        purge_at_unix=purge_at,
    )


def _caller(context: Ctx, role: Role) -> KeyCaller:
    """The caller of a key's create, delete, recover or purge, for its audit entry: the role the
    rpc guard found, with the subject and SPKI SHA-256 of the peer's certificate."""
    certs = list(context.auth_context().get("x509_pem_cert") or [])
    if len(certs) != 1:  # the guard found a role, so there is one; keep the role alone otherwise
        return KeyCaller(role)
    subject, spki = _identity_of(bytes(certs[0]))
    return KeyCaller(role, subject, spki)


@functools.lru_cache(maxsize=1024)
def _identity_of(cert_pem: bytes) -> tuple[str, str]:
    """(subject, SPKI SHA-256 hex) of a peer certificate, parsed once per certificate."""
    try:
        return load_cert(cert_pem).subject.rfc4514_string(), spki_sha256(cert_pem).hex()
    except SdquorumError:
        return "", ""


async def _collect(chunks: AsyncIterator[bytes], limit: int, what: str) -> bytes:
    buf = bytearray()
    async for data in chunks:
        buf += data
        if len(buf) > limit:
            raise MalformedError(f"{what} is larger than the {limit}-byte limit")
    return bytes(buf)


class NodeServicer:
    def __init__(self, node: Node) -> None:
        self.node = node

    @rpc("admin", "app", "custodian", "node")
    async def GetStatus(self, request: pb.GetStatusRequest, context: Ctx, role: Role) -> pb.NodeStatus:
        n = self.node
        info = n.domain_info
        s = n.session
        return pb.NodeStatus(
            state=_STATE[n.state],
            node_id=n.config.node_id,
            domain_id=info.domain_id.hex() if info else "",
            epoch=info.epoch if info else 0,
            quorum=info.quorum if info else 0,
            custodians=info.custodians if info else 0,
            active_session_id=s.session_id if s is not None and not s.finished else "",
            key_count=n.store.keys.count_keys(),
        )


class AdminServicer(PoolAdminRpcs):
    def __init__(self, node: Node) -> None:
        self.node = node

    @rpc("admin")
    async def DownloadSecurityDomain(
        self, request: pb.DownloadRequest, context: Ctx, role: Role
    ) -> AsyncIterator[pb.DownloadChunk]:
        data, warnings = await self.node.activation.download(
            list(request.custodian_certificates), request.quorum, role
        )
        for i in range(0, len(data), CHUNK_BYTES):
            yield pb.DownloadChunk(data=data[i : i + CHUNK_BYTES], warnings=warnings if i == 0 else [])

    @rpc("admin")
    async def InitRecovery(
        self, request: pb.InitRecoveryRequest, context: Ctx, role: Role
    ) -> pb.InitRecoveryResponse:
        s = await self.node.activation.init_recovery(request.reason, request.ttl_seconds, role)
        return pb.InitRecoveryResponse(session_id=s.session_id, expires_at_unix=s.expires_at)

    @rpc("admin")
    async def UploadSecurityDomain(
        self, request_iterator: AsyncIterator[pb.SdFileChunk], context: Ctx, role: Role
    ) -> pb.RecoveryProgress:
        session_id = ""

        async def data() -> AsyncIterator[bytes]:
            nonlocal session_id
            async for chunk in request_iterator:
                if not session_id:
                    session_id = chunk.session_id
                elif chunk.session_id and chunk.session_id != session_id:
                    raise UsageError("every chunk of an upload must name the same session")
                yield chunk.data

        blob = await _collect(data(), MAX_SD_FILE_BYTES, "the SD file")
        if not session_id:
            raise UsageError("the upload named no session: start one with InitRecovery first")
        return status_to_proto(await self.node.activation.upload_sd_file(session_id, blob))

    @rpc("admin")
    async def WatchSession(
        self, request: pb.WatchSessionRequest, context: Ctx, role: Role
    ) -> AsyncIterator[pb.RecoveryProgress]:
        async for st in self.node.ceremonies.watch(request.session_id):
            yield status_to_proto(st)

    @rpc("admin")
    async def Backup(
        self, request: pb.BackupRequest, context: Ctx, role: Role
    ) -> AsyncIterator[pb.BackupChunk]:
        data = self.node.backups.backup(role)
        log.info("backup of %d bytes taken by %s", len(data), role)
        for i in range(0, len(data), CHUNK_BYTES):
            yield pb.BackupChunk(data=data[i : i + CHUNK_BYTES])

    @rpc("admin")
    async def Restore(
        self, request_iterator: AsyncIterator[pb.BackupChunk], context: Ctx, role: Role
    ) -> pb.RestoreResponse:
        async def data() -> AsyncIterator[bytes]:
            async for chunk in request_iterator:
                yield chunk.data

        blob = await _collect(data(), MAX_BACKUP_BYTES, "the backup")
        return pb.RestoreResponse(keys_restored=self.node.backups.restore(blob, role))

    @rpc("admin")
    async def StartDrill(self, request: pb.StartDrillRequest, context: Ctx, role: Role) -> pb.SessionStarted:
        s = await self.node.custody.start_drill(
            request.reason or "possession drill", request.ttl_seconds, role
        )
        return pb.SessionStarted(session_id=s.session_id, expires_at_unix=s.expires_at)

    @rpc("admin")
    async def ProposeRotation(
        self, request: pb.RotationRequest, context: Ctx, role: Role
    ) -> pb.SessionStarted:
        s = await self.node.rotation.propose_rotation(
            list(request.custodian_certificates), request.quorum, request.reason, request.ttl_seconds, role
        )
        return pb.SessionStarted(session_id=s.session_id, expires_at_unix=s.expires_at)

    @rpc("admin")
    async def GetSecurityDomain(
        self, request: pb.GetSecurityDomainRequest, context: Ctx, role: Role
    ) -> AsyncIterator[pb.DownloadChunk]:
        data = self.node.custody.security_domain_file(request.format)
        for i in range(0, len(data), CHUNK_BYTES):
            yield pb.DownloadChunk(data=data[i : i + CHUNK_BYTES])

    @rpc("admin")
    async def ExportRequests(
        self, request: pb.ExportRequestsRequest, context: Ctx, role: Role
    ) -> pb.ExportRequestsResponse:
        return pb.ExportRequestsResponse(
            requests=[
                pb.OfflineRequest(custodian=name, request=request_to_proto(req))
                for name, req in self.node.ceremonies.export_requests(request.session_id)
            ]
        )

    @rpc("admin")
    async def SubmitOfflineResponse(self, request: pb.OfflineResponse, context: Ctx, role: Role) -> pb.Ack:
        if request.denied:
            await self.node.answers.deny(request.request_id, bytes(request.answer), role)
        else:
            await self.node.answers.submit_answer(request.request_id, bytes(request.answer), role)
        return pb.Ack()

    @rpc("admin")
    async def StartAzureRestore(
        self, request: pb.AzureRestoreRequest, context: Ctx, role: Role
    ) -> pb.SessionStarted:
        s = await self.node.custody.start_azure_restore(
            bytes(request.sd_file),
            bytes(request.exchange_certificate),
            request.reason,
            request.ttl_seconds,
            role,
        )
        return pb.SessionStarted(session_id=s.session_id, expires_at_unix=s.expires_at)

    @rpc("admin")
    async def GetAzureTransferFile(
        self, request: pb.WatchSessionRequest, context: Ctx, role: Role
    ) -> AsyncIterator[pb.DownloadChunk]:
        data = self.node.custody.azure_transfer_file(request.session_id)
        for i in range(0, len(data), CHUNK_BYTES):
            yield pb.DownloadChunk(data=data[i : i + CHUNK_BYTES])

    @rpc("admin")
    async def AddCustodyRecord(self, request: pb.CustodyRecordRequest, context: Ctx, role: Role) -> pb.Ack:
        try:
            obj = json.loads(bytes(request.record))
        except ValueError as e:
            raise UsageError("the custody record is not JSON") from e
        if not isinstance(obj, dict):
            raise UsageError("the custody record must be a JSON object")
        obj.setdefault("time", self.node.now())
        self.node.custody.add_custody_record(CustodyRecord.from_json(obj), role)
        return pb.Ack()

    @rpc("admin")
    async def MarkCompromised(self, request: pb.CompromiseRequest, context: Ctx, role: Role) -> pb.Ack:
        self.node.custody.mark_compromised(request.reason, role)
        return pb.Ack()

    @rpc("admin")
    async def GetCustodyState(
        self, request: pb.GetCustodyStateRequest, context: Ctx, role: Role
    ) -> pb.CustodyState:
        st = self.node.custody.custody_state()
        return pb.CustodyState(
            node_id=st["node_id"],
            sd_header=st["header"],
            sd_header_signature=st["signature"],
            records=json.dumps(st["records"]).encode(),
            drills=json.dumps(st["drills"]).encode(),
            retired=json.dumps(st["retired"]).encode(),
            compromised=st["compromised"],
        )

    @rpc("admin")
    async def ExportAudit(
        self, request: pb.ExportAuditRequest, context: Ctx, role: Role
    ) -> AsyncIterator[pb.AuditChunk]:
        lines = self.node.audit_log.export(request.chain or "domain")
        data = ("\n".join(lines) + "\n").encode()
        for i in range(0, len(data), CHUNK_BYTES):
            yield pb.AuditChunk(data=data[i : i + CHUNK_BYTES])


class KeysServicer:
    """The data plane. Batch calls carry their items packed (:mod:`sdquorum_rpc.packed`): the
    request is checked whole (item count, lengths that add up, AADs) before any key is used, and a
    response that would exceed the message limit is refused rather than sent to fail in transport.
    """

    def __init__(
        self,
        node: Node,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_batch_items: int = MAX_BATCH_ITEMS,
    ) -> None:
        self.node = node
        self.max_message_bytes = max_message_bytes
        self.max_batch_items = max_batch_items

    @rpc("app", "admin")
    async def CreateKey(self, request: pb.CreateKeyRequest, context: Ctx, role: Role) -> pb.KeyInfo:
        try:
            kind = KeyType(request.type)
        except ValueError as e:
            raise UsageError("choose a key type: AES256_GCM, ED25519 or RSA3072") from e
        return _key_info(
            await self.node.keys.create_key(request.name, kind, _caller(context, role), request.owner)
        )

    @rpc("app", "admin")
    async def ListKeys(self, request: pb.ListKeysRequest, context: Ctx, role: Role) -> pb.ListKeysResponse:
        return pb.ListKeysResponse(keys=[_key_info(k) for k in self.node.keys.list_keys(role)])

    @rpc("app", "admin")
    async def DeleteKey(self, request: pb.DeleteKeyRequest, context: Ctx, role: Role) -> pb.DeleteKeyResponse:
        return pb.DeleteKeyResponse(
            purge_at_unix=self.node.keys.delete_key(request.name, _caller(context, role))
        )

    @rpc("admin")
    async def ListDeletedKeys(
        self, request: pb.ListKeysRequest, context: Ctx, role: Role
    ) -> pb.ListKeysResponse:
        keys = self.node.keys.list_deleted_keys(role)
        return pb.ListKeysResponse(keys=[_key_info(k, self.node.keys.purge_time(k)) for k in keys])

    @rpc("app", "admin")
    async def RecoverKey(self, request: pb.RecoverKeyRequest, context: Ctx, role: Role) -> pb.KeyInfo:
        return _key_info(self.node.keys.recover_key(request.name, _caller(context, role)))

    @rpc("admin")
    async def PurgeKey(self, request: pb.PurgeKeyRequest, context: Ctx, role: Role) -> pb.PurgeKeyResponse:
        self.node.keys.purge_key(request.name, _caller(context, role))
        return pb.PurgeKeyResponse()

    @rpc("app", "admin")
    async def Encrypt(self, request: pb.EncryptRequest, context: Ctx, role: Role) -> pb.EncryptResponse:
        return pb.EncryptResponse(
            ciphertext=self.node.key_ops.encrypt(request.name, request.plaintext, request.aad, role)
        )

    @rpc("app", "admin")
    async def Decrypt(self, request: pb.DecryptRequest, context: Ctx, role: Role) -> pb.DecryptResponse:
        return pb.DecryptResponse(
            plaintext=self.node.key_ops.decrypt(request.name, request.ciphertext, request.aad, role)
        )

    @rpc("app", "admin")
    async def Sign(self, request: pb.SignRequest, context: Ctx, role: Role) -> pb.SignResponse:
        return pb.SignResponse(signature=self.node.key_ops.sign(request.name, request.message, role))

    @rpc("app", "admin")
    async def EncryptBatch(
        self, request: pb.EncryptBatchRequest, context: Ctx, role: Role
    ) -> pb.EncryptBatchResponse:
        plaintexts = self._batch(request.plaintexts, request.plaintext_lengths, "plaintext")
        out = await self.node.key_ops.encrypt_batch_async(
            request.name, plaintexts, _aad(request, len(plaintexts)), role
        )
        self._fits(out)
        return pb.EncryptBatchResponse(ciphertexts=out.data, ciphertext_lengths=out.lengths)

    @rpc("app", "admin")
    async def SignBatch(self, request: pb.SignBatchRequest, context: Ctx, role: Role) -> pb.SignBatchResponse:
        out = await self.node.key_ops.sign_batch_async(
            request.name, self._batch(request.messages, request.message_lengths, "message"), role
        )
        self._fits(out)
        return pb.SignBatchResponse(signatures=out.data, signature_lengths=out.lengths)

    @rpc("app", "admin")
    async def Verify(self, request: pb.VerifyRequest, context: Ctx, role: Role) -> pb.VerifyResponse:
        return pb.VerifyResponse(
            valid=self.node.key_ops.verify(request.name, request.message, request.signature, role)
        )

    def _batch(self, data: bytes, lengths: Sequence[int], what: str) -> packed.Packed:
        if not 1 <= len(lengths) <= self.max_batch_items:
            raise UsageError(
                f"a batch holds 1..{self.max_batch_items} items ({what}_lengths), not {len(lengths)}: split it"
            )
        return packed.checked(data, lengths, what)

    def _fits(self, results: packed.Packed) -> None:
        """Refuse results that could not be sent. The bound is the encoded response's most: the data,
        up to 5 bytes a length (uint32 varints), each field's tag and size (at most 6 bytes each)."""
        size = len(results.data) + 5 * len(results) + 12
        if size > self.max_message_bytes:
            raise UsageError(
                f"the results would take up to {size} bytes, more than the {self.max_message_bytes}-byte "
                "message limit: split the batch"
            )


def _aad(request: pb.EncryptBatchRequest, n: int) -> bytes | packed.Packed:
    """The AAD for every item (``aad``), or one per item (``aads`` cut by ``aad_lengths``)."""
    if not request.aad_lengths:
        if request.aads:
            raise UsageError("aads needs aad_lengths, one per item (or give one aad for all items)")
        return request.aad
    if request.aad:
        raise UsageError(
            "give aad (the same for every item) or aads with aad_lengths (one per item), not both"
        )
    if len(request.aad_lengths) != n:
        raise UsageError(
            f"aad_lengths has {len(request.aad_lengths)} entries for {n} items: give one per item"
        )
    return packed.checked(request.aads, request.aad_lengths, "aad")


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


ALWAYS_SERVING = ("sdquorum.v1.Node", "sdquorum.v1.NodeAdmin", "sdquorum.v1.Custodian")
KEYS_SERVICE = "sdquorum.v1.Keys"  # SERVING only while the node is ACTIVATED: the data plane works


def node_snapshot(node: Node) -> NodeSnapshot:
    session = node.session
    status = session.status() if session is not None else None
    return NodeSnapshot(
        state=node.state,
        compromised=node.compromised,
        session_kind=status.kind if status is not None else None,
        session_state=status.state.value if status is not None else None,
        custodians=tuple(c.name for c in status.custodians) if status is not None else (),
        connected=node.agents.connected_custodians(),
    )


class NodeServer:
    """A running node: the gRPC server, its health service (overall and per service: the data plane's
    ``sdquorum.v1.Keys`` is SERVING only while ACTIVATED), the deadline ticker and the snapshot the
    metrics gauges read."""

    def __init__(self, node: Node, server: grpc.aio.Server, port: int, health: Any) -> None:
        self.node = node
        self.server = server
        self.port = port
        self.health = health
        self.snapshot = node_snapshot(node)  # what the metrics gauges read (their own thread)
        self._keys_serving: bool | None = None
        self._ticker: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.server.start()
        for service in ("", *ALWAYS_SERVING):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        await self._refresh()
        self._ticker = asyncio.create_task(self._tick())

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            await self.node.tick()
            await self._refresh()

    async def _refresh(self) -> None:
        """Per-service health and the gauges' snapshot, from the node's state on the event loop."""
        self.snapshot = node_snapshot(self.node)
        serving = self.node.state == "ACTIVATED"
        if serving != self._keys_serving:
            self._keys_serving = serving
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if serving
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            await self.health.set(KEYS_SERVICE, status)

    async def stop(self, grace: float = 2.0) -> None:
        """Drain: report NOT_SERVING, refuse new calls, give calls in flight ``grace`` seconds."""
        await self.health.enter_graceful_shutdown()
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        await self.server.stop(grace)
        self.node.audit_log.close_refusal_windows(all_open=True)  # the counts of open windows are not lost


async def serve(
    node: Node,
    listen: str,
    tls: TlsFiles,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    max_batch_items: int = MAX_BATCH_ITEMS,
) -> NodeServer:
    """Bind ``listen`` (host:port, port 0 picks one) with mTLS and start serving."""
    server = grpc.aio.server(
        options=server_options(max_message_bytes), interceptors=[RequestGuard(node.audit_log.refusal)]
    )
    pbg.add_NodeServicer_to_server(NodeServicer(node), server)  # type: ignore[no-untyped-call]  # generated, untyped
    pbg.add_NodeAdminServicer_to_server(AdminServicer(node), server)  # type: ignore[no-untyped-call]  # generated, untyped
    pbg.add_KeysServicer_to_server(KeysServicer(node, max_message_bytes, max_batch_items), server)  # type: ignore[no-untyped-call]  # generated, untyped
    pbg.add_CustodianServicer_to_server(CustodianServicer(node), server)  # type: ignore[no-untyped-call]  # generated, untyped
    health = grpc_health.aio.HealthServicer()  # type: ignore[attr-defined]  # set at import time; no stub
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    credentials = server_credentials(tls)
    try:
        port = server.add_secure_port(listen, credentials)
    except RuntimeError as e:  # grpcio >= 1.60 raises where older versions returned 0
        raise bind_failure(listen, "--listen") from e
    if port == 0:
        raise bind_failure(listen, "--listen")
    ns = NodeServer(node, server, port, health)
    await ns.start()
    return ns
