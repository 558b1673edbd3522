"""Manual approval: the agent asks its human through a spool directory.

For each request that passed every check, the agent writes ``STATE_DIR/pending/<request_id>.json``
(who asks, from which node, why, which domain, epoch and slot, until when; no secret), with the
SHA-256 of exactly those details. The custodian reads it with ``custodian-agent pending`` and
answers ``custodian-agent approve|deny REQUEST_ID``, which writes ``STATE_DIR/decisions/<request_id>``
carrying the same SHA-256. The agent polls for the decision until the request's deadline; no
answer by then is a denial.

Invariants:

* A request id names files, so it is checked (8 to 64 lowercase hex digits) before any path is
  built from it: an id from the node cannot reach outside the spool.
* A decision counts only for the details it was made on: the agent accepts it only when its
  SHA-256 matches the details of the request it is waiting for. A decision left from an earlier
  request with the same id but other details, or made after the details changed, is a denial;
  posting a request removes such a decision. One made on the same details (the agent restarted
  while its human decided) stands.
* A decision is written once, whole (written aside, then linked into place; 0600); deciding again
  is refused.
* Only an open request can be decided or is listed: posted, not decided yet, and its deadline
  (``expires_at``) not passed. Deciding a closed one (decided, expired, answered or never asked)
  is refused with :class:`StateError`, so the custodian is never told "approved" for nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from custodian_agent.config import DEFAULT_STATE_DIR
from sdquorum.encoding import canonical_json
from sdquorum.errors import MalformedError, StateError, UsageError
from sdquorum.offline import check_request_id

__all__ = ["ApprovalBox", "Decision"]

DIGEST_KEY = "details_sha256"


@dataclass(frozen=True)
class Decision:
    approved: bool
    reason: str
    counts: bool = True  # False: no decision of the human's on these details (unreadable, other details)


def _deadline(details: dict[str, Any]) -> float | None:
    """The request's deadline (``expires_at``, ISO 8601 with its zone) as a Unix time; None if unreadable."""
    try:
        return datetime.fromisoformat(str(details["expires_at"])).timestamp()
    except (KeyError, ValueError, TypeError):
        return None


class ApprovalBox:
    def __init__(self, state_dir: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.pending_dir = state_dir / "pending"
        self.decisions_dir = state_dir / "decisions"
        self.state_dir = state_dir
        self._clock = clock

    def command(self, verb: str, request_id: str = "REQUEST") -> str:
        """The command that runs ``verb`` on this box, with ``--state-dir`` unless it is the default."""
        where = self.state_dir.absolute()
        flag = "" if where == DEFAULT_STATE_DIR else f" --state-dir {shlex.quote(str(where))}"
        return f"custodian-agent {verb} {request_id}{flag}"

    def _ensure(self) -> None:
        for d in (self.pending_dir, self.decisions_dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _file(self, folder: Path, request_id: str, suffix: str = "") -> Path:
        try:
            check_request_id(request_id)
        except MalformedError as e:
            raise UsageError(
                f"{request_id!r} is not a request id: list them with 'custodian-agent pending'"
            ) from e
        return folder / f"{request_id}{suffix}"

    def post(self, request_id: str, details: dict[str, Any]) -> str:
        """Show ``details`` to the human; returns their SHA-256, which the decision must carry."""
        path = self._file(self.pending_dir, request_id, ".json")
        self._ensure()
        digest = hashlib.sha256(canonical_json(details)).hexdigest()
        decision = self._file(self.decisions_dir, request_id)
        if decision.exists() and not self._read_decision(decision, digest).counts:
            decision.unlink(missing_ok=True)  # made on other details: it counts for nothing
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**details, DIGEST_KEY: digest}, indent=2, sort_keys=True))
        tmp.replace(path)
        return digest

    def pending(self) -> list[dict[str, Any]]:
        """The open requests, soonest deadline first: not decided, not past their deadline."""
        if not self.pending_dir.exists():
            return []
        out = []
        for p in self.pending_dir.glob("*.json"):
            try:
                details = json.loads(p.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(details, dict) and self._closed(p.stem, details) is None:
                out.append(details)
        return sorted(out, key=lambda d: (_deadline(d) or 0.0, str(d.get("request_id"))))

    def _closed(self, request_id: str, details: dict[str, Any]) -> str | None:
        """Why the request is no longer open, or None while it is."""
        if (self.decisions_dir / request_id).exists():
            return "is already decided"
        deadline = _deadline(details)  # none readable: the waiting agent's own deadline applies
        if deadline is not None and self._clock() >= deadline:
            return f"expired at {details['expires_at']}"
        return None

    def decide(self, request_id: str, approved: bool, reason: str = "") -> None:
        pending = self._file(self.pending_dir, request_id, ".json")
        try:
            details = json.loads(pending.read_text())
            digest = details[DIGEST_KEY]
        except FileNotFoundError:
            raise StateError(
                f"request {request_id} is not open (answered, expired or never asked): "
                "list the open ones with 'custodian-agent pending'"
            ) from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UsageError(
                f"the pending request file {pending} is unreadable or damaged: deny it, or let it expire"
            ) from e
        closed = self._closed(request_id, details)
        if closed is not None:
            raise StateError(
                f"request {request_id} {closed}: nothing was recorded; "
                "list the open ones with 'custodian-agent pending'"
            )
        self._ensure()
        final = self._file(self.decisions_dir, request_id)
        tmp = self.decisions_dir / f".{request_id}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            try:
                os.write(
                    fd, json.dumps({"approved": approved, "reason": reason, DIGEST_KEY: digest}).encode()
                )
            finally:
                os.close(fd)
            os.link(tmp, final)  # appears whole, and only once: the waiting agent never reads half
        except FileExistsError:
            raise StateError(
                f"request {request_id} is already decided: nothing was recorded; "
                "list the open ones with 'custodian-agent pending'"
            ) from None
        finally:
            tmp.unlink(missing_ok=True)

    async def wait(
        self, request_id: str, deadline: float, details_sha256: str, poll: float = 0.2
    ) -> Decision:
        """The human's decision on the details posted with SHA-256 ``details_sha256``; a denial at
        the deadline, or when the decision on disk was made on other details or cannot be read."""
        path = self._file(self.decisions_dir, request_id)
        pending = self._file(self.pending_dir, request_id, ".json")
        try:
            while time.time() < deadline:
                if path.exists():
                    return self._read_decision(path, details_sha256)
                await asyncio.sleep(poll)
            return Decision(False, "no decision before the deadline")
        finally:
            for p in (path, pending):
                p.unlink(missing_ok=True)

    @staticmethod
    def _read_decision(path: Path, details_sha256: str) -> Decision:
        try:
            obj = json.loads(path.read_text())
            digest = obj[DIGEST_KEY]
            if not isinstance(digest, str):
                raise TypeError("digest")
        except (OSError, ValueError, KeyError, TypeError):
            return Decision(False, "the decision file could not be read", counts=False)
        if not hmac.compare_digest(digest.encode(), details_sha256.encode()):
            return Decision(False, "the decision was made on other request details", counts=False)
        return Decision(obj.get("approved") is True, str(obj.get("reason", "")))
