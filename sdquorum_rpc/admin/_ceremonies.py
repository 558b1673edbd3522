"""The node's state and its ceremonies: activation (download), recovery, drills, rotations and Azure
restores, each a session the node opens, which this client starts, feeds, watches and cancels.

Invariants:

* A method that opens a session returns :class:`Started` (its id and deadline), never the wire's
  response: the caller gets the two values every later call of the session needs.
* SD files go up and come down through :func:`_chunks` and :func:`_join` only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2 as pb
from sdquorum_rpc.admin._streams import Started, _chunks, _join
from sdquorum_rpc.client import NodeClient

__all__ = ["CeremonyClient"]


class CeremonyClient(NodeClient):
    """The ``Node`` and ``NodeAdmin`` calls of the node's state and ceremony sessions."""

    async def status(self) -> pb.NodeStatus:
        res: pb.NodeStatus = await self.node.GetStatus(pb.GetStatusRequest())
        return res

    async def download(self, certificates: Sequence[bytes], quorum: int) -> tuple[bytes, list[str]]:
        """Activate the node: its new SD file and the node's warnings about the roster."""
        warnings: list[str] = []
        request = pb.DownloadRequest(custodian_certificates=list(certificates), quorum=quorum)
        data = await _join(self.admin.DownloadSecurityDomain(request), lambda c: warnings.extend(c.warnings))
        return data, warnings

    async def init_recovery(self, reason: str, ttl_seconds: int = 0) -> Started:
        """Open a recovery session; its id and deadline."""
        init = await self.admin.InitRecovery(pb.InitRecoveryRequest(reason=reason, ttl_seconds=ttl_seconds))
        return Started(str(init.session_id), int(init.expires_at_unix))

    async def upload_sd_file(self, session_id: str, sd_file: bytes) -> pb.RecoveryProgress:
        def make(part: bytes) -> pb.SdFileChunk:
            return pb.SdFileChunk(session_id=session_id, data=part)

        res: pb.RecoveryProgress = await self.admin.UploadSecurityDomain(_chunks(sd_file, make))
        return res

    def watch(self, session_id: str) -> AsyncIterator[pb.RecoveryProgress]:
        """The session's progress: its current state first, then every change until it ends."""
        stream: AsyncIterator[pb.RecoveryProgress] = self.admin.WatchSession(
            pb.WatchSessionRequest(session_id=session_id)
        )
        return stream

    async def get_session(self, session_id: str = "") -> pb.RecoveryProgress:
        """The session's progress now; ``""``: the node's current (or last) session."""
        res: pb.RecoveryProgress = await self.admin.GetSession(pb.WatchSessionRequest(session_id=session_id))
        return res

    async def cancel_session(self, session_id: str, reason: str) -> pb.RecoveryProgress:
        """End the running session FAILED ("cancelled by <you>: <reason>", audited); its last progress."""
        res: pb.RecoveryProgress = await self.admin.CancelSession(
            pb.CancelSessionRequest(session_id=session_id, reason=reason)
        )
        return res

    async def export_requests(self, session_id: str) -> list[pb.OfflineRequest]:
        res = await self.admin.ExportRequests(pb.ExportRequestsRequest(session_id=session_id))
        return list(res.requests)

    async def start_drill(self, reason: str, ttl_seconds: int = 0) -> Started:
        res = await self.admin.StartDrill(pb.StartDrillRequest(reason=reason, ttl_seconds=ttl_seconds))
        return Started(str(res.session_id), int(res.expires_at_unix))

    async def propose_rotation(
        self, certificates: Sequence[bytes], quorum: int, reason: str, ttl_seconds: int = 0
    ) -> Started:
        request = pb.RotationRequest(
            custodian_certificates=list(certificates), quorum=quorum, reason=reason, ttl_seconds=ttl_seconds
        )
        res = await self.admin.ProposeRotation(request)
        return Started(str(res.session_id), int(res.expires_at_unix))

    async def start_azure_restore(
        self, sd_file: bytes, exchange_certificate: bytes, reason: str, ttl_seconds: int = 0
    ) -> Started:
        request = pb.AzureRestoreRequest(
            sd_file=sd_file, exchange_certificate=exchange_certificate, reason=reason, ttl_seconds=ttl_seconds
        )
        res = await self.admin.StartAzureRestore(request)
        return Started(str(res.session_id), int(res.expires_at_unix))

    async def azure_transfer_file(self, session_id: str) -> bytes:
        return await _join(self.admin.GetAzureTransferFile(pb.WatchSessionRequest(session_id=session_id)))

    async def submit_offline_response(self, request_id: str, answer: bytes, denied: bool) -> None:
        await self.admin.SubmitOfflineResponse(
            pb.OfflineResponse(request_id=request_id, answer=answer, denied=denied)
        )

    async def security_domain(self, sd_format: str = "") -> bytes:
        """The current epoch's SD file ("" or "native"; "azure": the same domain as an Azure v2 file)."""
        return await _join(self.admin.GetSecurityDomain(pb.GetSecurityDomainRequest(format=sd_format)))
