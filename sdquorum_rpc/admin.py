"""A typed client for the operator's calls: one async method per ``Node``, ``NodeAdmin`` and ``Keys``
call that ``sdctl`` and the tests make, over one mTLS channel.

Invariants:

* Streams are chunked in exactly one place: :func:`_chunks` splits what goes up into ``CHUNK``-sized
  messages (one empty message for empty data: the server always sees a first message), and
  :func:`_join` gathers what comes down. No caller writes a chunking loop.
* Methods take and return plain Python values or the wire's response messages, never a request
  message: a caller cannot build one with a field left unset by mistake.
* Errors are translated where the caller says so, as with :class:`NodeClient`: make calls inside
  ``with c.errors():`` and a ``grpc.RpcError`` leaves as a project error with one actionable line.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from typing import Any, NamedTuple, TypeVar

from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2 as pb
from sdquorum_rpc.client import NodeClient

__all__ = ["CHUNK", "AdminClient", "Started"]

CHUNK = 1024 * 1024  # one message of a stream: well under the 4 MiB default gRPC limit

_M = TypeVar("_M")


async def _chunks(data: bytes, make: Callable[[bytes], _M]) -> AsyncIterator[_M]:
    """``data`` as messages of at most ``CHUNK`` bytes; one (empty) message for empty data."""
    for i in range(0, max(len(data), 1), CHUNK):
        yield make(data[i : i + CHUNK])


async def _join(stream: AsyncIterable[Any], each: Callable[[Any], None] | None = None) -> bytes:
    """The ``data`` of every message of a download stream, in order; ``each`` sees every message."""
    out = bytearray()
    async for chunk in stream:
        out += chunk.data
        if each is not None:
            each(chunk)
    return bytes(out)


class Started(NamedTuple):
    """A ceremony session the node opened: its id and deadline (unix time)."""

    session_id: str
    expires_at: int


class AdminClient(NodeClient):
    """``async with AdminClient(target, tls) as c, c.errors(): await c.status()``."""

    # ------------------------------------------------------------------ node state

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

    # ------------------------------------------------------------------ custody and audit

    async def add_custody_record(self, record: dict[str, Any]) -> None:
        await self.admin.AddCustodyRecord(pb.CustodyRecordRequest(record=json.dumps(record).encode()))

    async def custody_state(self) -> pb.CustodyState:
        res: pb.CustodyState = await self.admin.GetCustodyState(pb.GetCustodyStateRequest())
        return res

    async def mark_compromised(self, reason: str) -> None:
        await self.admin.MarkCompromised(pb.CompromiseRequest(reason=reason))

    async def export_audit(self, chain: str = "domain") -> bytes:
        return await _join(self.admin.ExportAudit(pb.ExportAuditRequest(chain=chain)))

    # ------------------------------------------------------------------ backup

    async def backup(self) -> bytes:
        return await _join(self.admin.Backup(pb.BackupRequest()))

    async def restore(self, data: bytes) -> int:
        """Replace the key store; the number of keys restored."""
        res = await self.admin.Restore(_chunks(data, lambda part: pb.BackupChunk(data=part)))
        return int(res.keys_restored)

    # ------------------------------------------------------------------ keys

    async def create_key(self, name: str, key_type: str, owner: str = "") -> pb.KeyInfo:
        """``key_type``: a ``pb.KeyType`` name (AES256_GCM, ED25519, RSA3072)."""
        res: pb.KeyInfo = await self.keys.CreateKey(
            pb.CreateKeyRequest(name=name, type=key_type, owner=owner)
        )
        return res

    async def list_keys(self, deleted: bool = False) -> list[pb.KeyInfo]:
        call = self.keys.ListDeletedKeys if deleted else self.keys.ListKeys
        return list((await call(pb.ListKeysRequest())).keys)

    async def delete_key(self, name: str) -> int:
        """Soft delete; when the key is purged (unix time)."""
        return int((await self.keys.DeleteKey(pb.DeleteKeyRequest(name=name))).purge_at_unix)

    async def recover_key(self, name: str) -> pb.KeyInfo:
        res: pb.KeyInfo = await self.keys.RecoverKey(pb.RecoverKeyRequest(name=name))
        return res

    async def purge_key(self, name: str) -> None:
        await self.keys.PurgeKey(pb.PurgeKeyRequest(name=name))

    async def encrypt(self, name: str, plaintext: bytes, aad: bytes = b"") -> bytes:
        res = await self.keys.Encrypt(pb.EncryptRequest(name=name, plaintext=plaintext, aad=aad))
        return bytes(res.ciphertext)

    async def decrypt(self, name: str, ciphertext: bytes, aad: bytes = b"") -> bytes:
        res = await self.keys.Decrypt(pb.DecryptRequest(name=name, ciphertext=ciphertext, aad=aad))
        return bytes(res.plaintext)

    async def sign(self, name: str, message: bytes) -> bytes:
        return bytes((await self.keys.Sign(pb.SignRequest(name=name, message=message))).signature)

    async def verify(self, name: str, message: bytes, signature: bytes) -> bool:
        res = await self.keys.Verify(pb.VerifyRequest(name=name, message=message, signature=signature))
        return bool(res.valid)
