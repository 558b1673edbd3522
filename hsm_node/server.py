"""gRPC servicers of ``hsm-node``: thin adapters from the wire contract to :class:`hsm_node.node.Node`.

Roles: ``Node`` any authenticated role; ``NodeAdmin`` admin; ``Keys`` app and admin (``PurgeKey``
and ``ListDeletedKeys`` admin only; which keys each caller may touch: :mod:`hsm_node.dataplane`);
``Custodian`` custodian. Every method goes through :func:`sdquorum_rpc.errors.rpc` (role check, error mapping).
The data plane's servicer is :mod:`hsm_node.keys_server`, the custodians' :mod:`hsm_node.custodian_server`,
the conversions to and from the wire :mod:`hsm_node.wire`; this module holds the status and admin
servicers and the server itself (binding, health, the ticker).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health as grpc_health
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hsm_node.custodian_server import CustodianServicer
from hsm_node.keys_server import KeysServicer
from hsm_node.node import Node
from hsm_node.pool.rpc import PoolAdminRpcs
from hsm_node.wire import (
    CHUNK_BYTES,
    MAX_BACKUP_BYTES,
    MAX_BATCH_ITEMS,
    STATE_TO_PROTO,
    chunked,
    chunks,
    request_to_proto,
    running_session,
    status_to_proto,
)
from sdquorum.errors import MalformedError, UsageError
from sdquorum.pki import Role
from sdquorum.review import CustodyRecord
from sdquorum.sdfile import MAX_SD_FILE_BYTES
from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2 as pb
from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2_grpc as pbg
from sdquorum_rpc.errors import RequestGuard, rpc
from sdquorum_rpc.listen import bind_failure
from sdquorum_rpc.observability import NodeSnapshot
from sdquorum_rpc.tls import DEFAULT_MAX_MESSAGE_BYTES, Ctx, TlsFiles, server_credentials, server_options

__all__ = ["CHUNK_BYTES", "MAX_BATCH_ITEMS", "NodeServer", "serve", "status_to_proto"]

log = logging.getLogger("sdquorum.node.server")


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
            state=STATE_TO_PROTO[n.state],
            node_id=n.config.node_id,
            domain_id=info.domain_id.hex() if info else "",
            epoch=info.epoch if info else 0,
            quorum=info.quorum if info else 0,
            custodians=info.custodians if info else 0,
            active_session_id=s.session_id if s is not None and not s.finished else "",
            key_count=n.store.keys.count_keys() if role.kind == "admin" else 0,  # the key set is not theirs
            **running_session(s),
            compromised=n.compromised,
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
        for i, chunk in enumerate(chunks(data)):
            yield pb.DownloadChunk(data=chunk, warnings=warnings if i == 0 else [])

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
    async def GetSession(
        self, request: pb.WatchSessionRequest, context: Ctx, role: Role
    ) -> pb.RecoveryProgress:
        return status_to_proto(self.node.ceremonies.session_status(request.session_id))

    @rpc("admin")
    async def CancelSession(
        self, request: pb.CancelSessionRequest, context: Ctx, role: Role
    ) -> pb.RecoveryProgress:
        return status_to_proto(
            await self.node.ceremonies.cancel_session(request.session_id, request.reason, role)
        )

    @rpc("admin")
    @chunked(pb.BackupChunk)
    async def Backup(self, request: pb.BackupRequest, context: Ctx, role: Role) -> bytes:
        data = self.node.backups.backup(role)
        log.info("backup of %d bytes taken by %s", len(data), role)
        return data

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
    @chunked(pb.DownloadChunk)
    async def GetSecurityDomain(
        self, request: pb.GetSecurityDomainRequest, context: Ctx, role: Role
    ) -> bytes:
        return self.node.custody.security_domain_file(request.format)

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
    @chunked(pb.DownloadChunk)
    async def GetAzureTransferFile(self, request: pb.WatchSessionRequest, context: Ctx, role: Role) -> bytes:
        return self.node.custody.azure_transfer_file(request.session_id)

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
    @chunked(pb.AuditChunk)
    async def ExportAudit(self, request: pb.ExportAuditRequest, context: Ctx, role: Role) -> bytes:
        lines = self.node.audit_log.export(request.chain or "domain")
        return ("\n".join(lines) + "\n").encode()


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
