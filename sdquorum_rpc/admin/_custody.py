"""Custody and its evidence: the custody records the node keeps, a compromise declared, the audit
chains exported, and the key store's backup and restore.

Invariants:

* A custody record travels as the JSON of the dict given, encoded once here; the node validates it.
* Backups go up and come down through :func:`_chunks` and :func:`_join` only.
"""

from __future__ import annotations

import json
from typing import Any

from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2 as pb
from sdquorum_rpc.admin._streams import _chunks, _join
from sdquorum_rpc.client import NodeClient

__all__ = ["CustodyClient"]


class CustodyClient(NodeClient):
    """The ``NodeAdmin`` calls of custody, audit and backup."""

    async def add_custody_record(self, record: dict[str, Any]) -> None:
        await self.admin.AddCustodyRecord(pb.CustodyRecordRequest(record=json.dumps(record).encode()))

    async def custody_state(self) -> pb.CustodyState:
        res: pb.CustodyState = await self.admin.GetCustodyState(pb.GetCustodyStateRequest())
        return res

    async def mark_compromised(self, reason: str) -> None:
        await self.admin.MarkCompromised(pb.CompromiseRequest(reason=reason))

    async def export_audit(self, chain: str = "domain") -> bytes:
        return await _join(self.admin.ExportAudit(pb.ExportAuditRequest(chain=chain)))

    async def backup(self) -> bytes:
        return await _join(self.admin.Backup(pb.BackupRequest()))

    async def restore(self, data: bytes) -> int:
        """Replace the key store; the number of keys restored."""
        res = await self.admin.Restore(_chunks(data, lambda part: pb.BackupChunk(data=part)))
        return int(res.keys_restored)
