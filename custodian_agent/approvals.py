"""Approval: who says yes before the agent answers, and the spool through which a person does.

Modes (``agent.approval``; :func:`check_mode` validates it wherever a mode is set):

* ``manual`` (the default): a person approves every request.
* ``auto-drills``: possession drills are answered without a person (a drill proves possession and
  releases nothing); every other kind (``recovery`` and ``azure-recovery`` release a share, a
  ``rotation`` approval decides custody) still goes to the person. :func:`asks_person` decides by
  the request's kind and fails closed: a kind it does not know is asked.
* ``auto`` (the old "answer everything alone") is refused with a line that says why and what to use:
  it released shares with no person approving (issue 13, class 1).

For each request that passed every check, the agent writes ``STATE_DIR/pending/<request_id>.json``
(who asks, from which node, why, which domain, epoch and slot, until when; no secret), with the
SHA-256 of exactly those details. The custodian reads it with ``custodian-agent pending`` and
answers ``custodian-agent approve|deny REQUEST_ID``, which writes ``STATE_DIR/decisions/<request_id>``
carrying the same SHA-256. The agent polls for the decision until the request's deadline (every few
milliseconds at first, backing off to every 0.2 s, so a prompt decision is noticed promptly); no
answer by then is a denial.

Invariants:

* A request id names files, so it is checked (8 to 64 lowercase hex digits) before any path is
  built from it: an id from the node cannot reach outside the spool.
* A decision counts only for the details it was made on: the agent accepts it only when its
  SHA-256 matches the details of the request it is waiting for. A decision left from an earlier
  request with the same id but other details, or made after the details changed, is a denial;
  posting a request removes such a decision. One made on the same details (the agent restarted
  while its human decided) stands.
* A wait that is cancelled (the agent's connection to the node dropped) leaves the pending file
  and any decision where they are: the wait the agent starts when the node sends the request
  again finds an approval given just before the drop. Only a wait that ends (a decision read, or
  the deadline) removes them.
* A decision is written once, whole (written aside, then linked into place; 0600); deciding again
  is refused.
* The state directory and its folders are 0700 and every file in them 0600, whatever the umask;
  a state directory writable by group or others, or another user's, is refused
  (:func:`sdquorum_rpc.files.private_dir`): anyone who can write there can forge a decision.
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

from sdquorum.encoding import canonical_json
from sdquorum.envelopes import CeremonyKind
from sdquorum.errors import MalformedError, StateError, UsageError
from sdquorum.offline import check_request_id
from sdquorum_rpc.files import private_dir, replace_private_file, tighten_files

__all__ = ["APPROVAL_MODES", "DEFAULT_STATE_DIR", "ApprovalBox", "Decision", "asks_person", "check_mode"]

DIGEST_KEY = "details_sha256"
DEFAULT_STATE_DIR = Path.home() / ".sdquorum-agent"  # agent.state_dir's default

APPROVAL_MODES = ("manual", "auto-drills")
UNATTENDED_KINDS = {"auto-drills": frozenset({CeremonyKind.DRILL})}  # kinds a mode answers without a person
POLL_FIRST, POLL_MAX = 0.002, 0.2  # seconds between looks for a decision: doubling up to the cap


def check_mode(mode: str, setting: str = "agent.approval") -> str:
    """``mode`` if it is an approval mode; otherwise a :class:`UsageError` naming ``setting`` and the fix."""
    if mode == "auto":
        raise UsageError(
            f"{setting} = 'auto' is refused: it would release shares with no person approving; "
            "use manual (a person approves each request) or auto-drills (drills answered alone, "
            "recoveries and rotations still asked)"
        )
    if mode not in APPROVAL_MODES:
        raise UsageError(
            f"{setting} = {mode!r}: use manual (a person approves each request, the default) or "
            "auto-drills (drills answered alone, recoveries and rotations still asked)"
        )
    return mode


def asks_person(mode: str, kind: str) -> bool:
    """True unless ``mode`` answers requests of ``kind`` alone (only ``auto-drills`` a ``drill``)."""
    return kind not in UNATTENDED_KINDS.get(check_mode(mode), frozenset())


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
        self.state_dir = state_dir
        self.pending_dir = state_dir / "pending"
        self.decisions_dir = state_dir / "decisions"
        self._clock = clock

    def command(self, verb: str, request_id: str = "REQUEST") -> str:
        """The command that runs ``verb`` on this box, with ``--state-dir`` unless it is the default."""
        where = self.state_dir.absolute()
        flag = "" if where == DEFAULT_STATE_DIR else f" --state-dir {shlex.quote(str(where))}"
        return f"custodian-agent {verb} {request_id}{flag}"

    def check(self) -> None:
        """Make (0700) and check the state directory and its folders; refuse one writable by others
        (UsageError, with the command to run); tighten files that earlier versions left 0644."""
        what, flag = "the agent state directory", "agent.state_dir / --state-dir"
        for d in (self.state_dir, self.pending_dir, self.decisions_dir):
            private_dir(d, what, flag)
            tighten_files(d.iterdir())

    def _ensure(self) -> None:
        self.check()

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
        replace_private_file(
            path, json.dumps({**details, DIGEST_KEY: digest}, indent=2, sort_keys=True).encode()
        )
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
        self, request_id: str, deadline: float, details_sha256: str, poll: float = POLL_MAX
    ) -> Decision:
        """The human's decision on the details posted with SHA-256 ``details_sha256``; a denial at
        the deadline, or when the decision on disk was made on other details or cannot be read.
        Looks every :data:`POLL_FIRST` s at first, doubling up to ``poll``: a decision made at once
        (a person already at the prompt) costs milliseconds, a long wait costs few looks."""
        path = self._file(self.decisions_dir, request_id)
        pending = self._file(self.pending_dir, request_id, ".json")
        interval = min(POLL_FIRST, poll)
        while time.time() < deadline:  # cancelled (the connection dropped): both files stay
            if path.exists():
                decision = self._read_decision(path, details_sha256)
                break
            await asyncio.sleep(interval)
            interval = min(interval * 2, poll)
        else:
            decision = Decision(False, "no decision before the deadline")
        for p in (path, pending):  # decided or expired: the request is closed
            p.unlink(missing_ok=True)
        return decision

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
