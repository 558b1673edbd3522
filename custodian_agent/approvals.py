"""Manual approval: the agent asks its human through a spool directory.

For each request that passed every check, the agent writes ``STATE_DIR/pending/<request_id>.json``
(who asks, from which node, why, which domain, epoch and slot, until when; no secret). The custodian
reads it with ``custodian-agent pending`` and answers ``custodian-agent approve|deny REQUEST_ID``,
which writes ``STATE_DIR/decisions/<request_id>``. The agent polls for the decision until the
request's deadline; no answer by then is a denial.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdquorum.errors import NotFoundError, UsageError

__all__ = ["ApprovalBox", "Decision"]

_ID = re.compile(r"^[0-9a-f]{8,64}$")


@dataclass(frozen=True)
class Decision:
    approved: bool
    reason: str


class ApprovalBox:
    def __init__(self, state_dir: Path) -> None:
        self.pending_dir = state_dir / "pending"
        self.decisions_dir = state_dir / "decisions"

    def _ensure(self) -> None:
        for d in (self.pending_dir, self.decisions_dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)

    def post(self, request_id: str, details: dict[str, Any]) -> None:
        self._ensure()
        path = self.pending_dir / f"{request_id}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(details, indent=2, sort_keys=True))
        tmp.replace(path)

    def pending(self) -> list[dict[str, Any]]:
        if not self.pending_dir.exists():
            return []
        out = []
        for p in sorted(self.pending_dir.glob("*.json")):
            try:
                out.append(json.loads(p.read_text()))
            except (OSError, ValueError):
                continue
        return out

    def decide(self, request_id: str, approved: bool, reason: str = "") -> None:
        if not _ID.match(request_id):
            raise UsageError(f"{request_id!r} is not a request id: list them with 'custodian-agent pending'")
        if not (self.pending_dir / f"{request_id}.json").exists():
            raise NotFoundError(f"no pending request {request_id}: list them with 'custodian-agent pending'")
        self._ensure()
        fd = os.open(self.decisions_dir / request_id, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, json.dumps({"approved": approved, "reason": reason}).encode())
        finally:
            os.close(fd)

    async def wait(self, request_id: str, deadline: float, poll: float = 0.2) -> Decision:
        path = self.decisions_dir / request_id
        try:
            while time.time() < deadline:
                if path.exists():
                    obj = json.loads(path.read_text())
                    return Decision(bool(obj.get("approved")), str(obj.get("reason", "")))
                await asyncio.sleep(poll)
            return Decision(False, "no decision before the deadline")
        finally:
            for p in (path, self.pending_dir / f"{request_id}.json"):
                p.unlink(missing_ok=True)
