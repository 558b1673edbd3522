"""Answers and denials: taken in batches, each batch one store transaction, failing closed.

Answers that arrive together are taken as one batch of at most :data:`MAX_ANSWERS_PER_COMMIT`
(the rest wait for the next) whose audit entries (and the completion the batch may cause) are
committed in one transaction; no answer is acknowledged, and no watcher sees
its effect, before that commit. A batch that does not commit fails every answer in it, the node's
memory is read back from its store (a completion is undone) and the session ends: no share counts
whose acceptance is not in the audit log.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable
from dataclasses import dataclass

from coordinator import (
    Ceremony,
    ReleaseOutcome,
)
from hsm_node.agents import Agents
from hsm_node.audit_log import AuditLog
from hsm_node.ceremony_host import CeremonyHost
from hsm_node.state import Lifecycle
from hsm_node.store import NodeStore
from sdquorum.errors import SdquorumError, StorageError, VerificationError
from sdquorum.pki import Role
from sdquorum.refusals import Refusal
from sdquorum_rpc.errors import bounded
from sdquorum_rpc.observability import SESSION_ID

log = logging.getLogger("sdquorum.node")
# Answers in one transaction at most. A pool's etcd takes 128 operations per transaction: an answer
# writes one audit entry (a create: a put and a condition), a completion about 30 more (a rotation
# or activation, up to 10 drill results, their audit entries), so 32 answers stay under it; a burst
# of refused answers is taken in several transactions instead of ending the session.
MAX_ANSWERS_PER_COMMIT = 32


__all__ = ["MAX_ANSWERS_PER_COMMIT", "AnswerNotRecorded", "Answers"]


@dataclass(frozen=True)
class _Answer:
    request_id: str
    answer: bytes
    caller: Role
    kind: str | tuple[str, ...] | None
    context: contextvars.Context  # the caller's (its request and session ids), for the log lines
    done: asyncio.Future[None]


class AnswerNotRecorded(StorageError):
    """An answer changed the session in memory but its record could not be written: the batch it
    came in does not commit, and the session ends."""


class Answers:
    """Custodians' answers and denials, taken in batches that commit once."""

    def __init__(
        self,
        store: NodeStore,
        lifecycle: Lifecycle,
        host: CeremonyHost,
        agents: Agents,
        audit: AuditLog,
        now: Callable[[], int],
    ) -> None:
        self._store = store
        self._lifecycle = lifecycle
        self._host = host
        self._notices = host.notices
        self._agents = agents
        self._audit = audit
        self._now = now
        self._inbox: list[_Answer] = []  # answers waiting for the next batch
        self._taker: asyncio.Task[None] | None = None

    async def submit_answer(
        self, request_id: str, answer: bytes, caller: Role, *, kind: str | tuple[str, ...] | None = None
    ) -> None:
        """A custodian's release (recovery) or proof (drill, rotation), online or carried offline.

        Answers that arrive together are taken as one batch (:meth:`_take_answers`): their audit
        entries, and the completion the last of them may cause, are committed in one transaction.
        This returns, or raises the answer's own error, only once that transaction has committed:
        no answer is acknowledged, and no watcher sees its effect, before its audit entry is on disk.
        """
        if self._host.session is not None:
            SESSION_ID.set(self._host.session.session_id)
        done = asyncio.get_running_loop().create_future()
        item = _Answer(request_id, answer, caller, kind, contextvars.copy_context(), done)
        self._inbox.append(item)
        if self._taker is None or self._taker.done():
            self._taker = asyncio.create_task(self._take_answers())
        await item.done  # cancelled before its batch is taken: the answer is not taken at all

    async def _take_answers(self) -> None:
        batch: list[_Answer] = []
        try:
            while self._inbox:
                async with self._host.lock:
                    waiting = [a for a in self._inbox if not a.done.done()]
                    batch, self._inbox[:] = waiting[:MAX_ANSWERS_PER_COMMIT], waiting[MAX_ANSWERS_PER_COMMIT:]
                    errors = self._take_batch(batch)
                for a, e in zip(batch, errors, strict=True):
                    if a.done.done():
                        continue
                    if e is None:
                        a.done.set_result(None)
                    else:
                        a.done.set_exception(e)
                batch = []
        except BaseException as e:  # the batch did not commit: its answers, and any waiting, fail
            if isinstance(e, Exception):
                self._after_failed_commit(e)
            for a in (*batch, *self._inbox):
                if a.done.done():
                    continue
                if isinstance(e, Exception):
                    a.done.set_exception(e)
                else:
                    a.done.cancel()
            self._inbox.clear()
            if not isinstance(e, Exception):
                raise  # cancelled: let it end the task; an error went to every caller above

    def _after_failed_commit(self, error: Exception) -> None:
        """A batch that did not commit left nothing on disk, but its answers ran: make the node's
        memory say what its database says (a completion's activation or rotation is undone), and end
        the session, so that no share whose acceptance is not in the audit log can count. Fail closed:
        the admin starts a new session once the node can write again."""
        self._lifecycle.reload()
        self._notices.refresh()
        session = self._host.session
        if session is not None:
            session.revoke(f"the node could not write its audit log ({error}): start a new session")
            self._host.drop_unrecorded(session)  # nothing more to apply: the disk refused it
        log.error("a batch of answers did not commit (%s): the session ended, nothing was applied", error)
        self._notices.notify()

    def _take_batch(self, batch: list[_Answer]) -> list[Exception | None]:
        """Take every answer of ``batch`` in one store transaction; each one's own error, or None.
        An answer that fails, even unexpectedly, fails alone (what it wrote before failing, such as
        its refusal's audit entry, is committed with the batch, as it was committed on its own)."""
        errors: list[Exception | None] = []
        with self._store.batch():
            for a in batch:
                try:
                    a.context.run(self._take_answer, a.request_id, a.answer, a.caller, a.kind)
                    errors.append(None)
                except AnswerNotRecorded:  # the session changed but its record did not: no commit
                    raise
                except Exception as e:  # handed to that answer's caller, which raises it
                    errors.append(e)
        return errors

    def _take_answer(
        self, request_id: str, answer: bytes, caller: Role, kind: str | tuple[str, ...] | None
    ) -> None:
        session = self._host.require_session()
        kinds = (kind,) if isinstance(kind, str) else kind
        if kinds is not None and session.kind not in kinds:
            raise VerificationError(f"a {' or '.join(kinds)} answer was sent to a {session.kind} session")
        try:
            self._agents.answer_named_for_caller(session, request_id, caller, answer, denial=False)
            outcome = session.submit(request_id, answer, self._now())
        except SdquorumError as e:
            self._audit_refused(session, "answer", caller, request_id, e)
            try:
                self._host.settle(session)  # a late answer may be what finds the deadline passed
            except Exception as err:  # the end is not recorded: like an unrecorded answer, fail closed
                raise AnswerNotRecorded(f"the node could not record the session's end ({err})") from err
            raise
        try:
            self._record_answer(session, outcome, caller)
        except Exception as e:
            # The session took the answer (a share counted, or a slot rejected) but its audit entry
            # or the completion's writes failed: nothing of this batch may commit, and the session
            # ends (_after_failed_commit), so no share counts whose acceptance is not on disk.
            raise AnswerNotRecorded(f"the node could not record the answer ({e}): start a new session") from e
        if not outcome.accepted:
            raise VerificationError(outcome.reason)

    def _record_answer(self, session: Ceremony, outcome: ReleaseOutcome, caller: Role) -> None:
        details = {
            "session_id": session.session_id,
            "custodian": outcome.name,
            "x": outcome.x,
            "via": str(caller),
        }
        if outcome.late:  # after completion: it counted for nothing, but a wrong one is named
            verdict = "verified" if outcome.accepted else "rejected"
            log_at = log.info if outcome.accepted else log.warning
            log_at(
                "session %s: late answer of %s (x=%d) via %s %s %s",
                session.session_id,
                outcome.name,
                outcome.x,
                caller,
                verdict.upper(),
                outcome.reason,
            )
            extra = {} if outcome.accepted else {"reason": outcome.reason}
            self._audit(f"{session.kind}-late-answer-{verdict}", caller, {**details, **extra})
        elif outcome.accepted:
            log.info(
                "session %s: %s (x=%d) answered via %s: accepted",
                session.session_id,
                outcome.name,
                outcome.x,
                caller,
            )
            self._audit(f"{session.kind}-answer-accepted", caller, details)
        else:
            log.warning(
                "session %s: answer of %s (x=%d) REJECTED via %s: %s",
                session.session_id,
                outcome.name,
                outcome.x,
                caller,
                outcome.reason,
            )
            self._audit(f"{session.kind}-answer-rejected", caller, {**details, "reason": outcome.reason})
        self._host.apply_if_finished(session)

    def _audit_refused(
        self, session: Ceremony, what: str, caller: Role, request_id: str, error: SdquorumError
    ) -> None:
        """``<kind>-answer-refused`` or ``<kind>-denial-refused``: what a custodian sent failed a check.
        Through the refusal windows (ADR 0010), kept by the caller's role: its first refusals of each
        kind in a window are written in full, the rest counted, so one custodian sending junk or the
        same answer again and again grows the log by a few entries a minute, not one a message."""
        self._audit.refusal(
            Refusal(
                f"{session.kind}-{what}",
                type(error).__name__,
                bounded(str(error)),
                str(caller),
                "",
                "",
                event=f"{session.kind}-{what}-refused",
                extra=(("session_id", session.session_id), ("request_id", request_id[:64])),
            )
        )

    async def deny(self, request_id: str, signed_denial: bytes, caller: Role) -> None:
        async with self._host.lock:
            session = self._host.require_session()
            try:
                self._agents.answer_named_for_caller(session, request_id, caller, signed_denial, denial=True)
                p = session.deny_signed(request_id, signed_denial, self._now())
            except SdquorumError as e:
                self._audit_refused(session, "denial", caller, request_id, e)
                self._host.settle(session)
                raise
            reason = p.detail
            log.warning(
                "session %s: %s (x=%d) denied the request via %s: %s",
                session.session_id,
                p.name,
                p.x,
                caller,
                reason,
            )
            self._audit(
                f"{session.kind}-denied",
                caller,
                {"session_id": session.session_id, "custodian": p.name, "x": p.x, "reason": p.detail},
            )
            self._host.apply_if_finished(session)
