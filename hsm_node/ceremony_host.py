"""The ceremony host: the node's one session slot.

At most one ceremony (recovery, drill, rotation, Azure restore) runs at a time; a node restart drops
a running session (its exchange key lived only in memory). Whichever path finds a session ended
(the ticker, an agent's request stream, a late answer, the next session) settles it
(:meth:`CeremonyHost.settle`): the end is applied once, by the function the owning service
registered for its kind (:meth:`CeremonyHost.on_completed`), and audited once, so a drill's results
and every end's audit entry never depend on which path came first.

Sessions under the operator's control. A step refused with "nothing was changed" (the data volume
full or read-only) leaves nothing running: a session whose opening could not be written is
forgotten (:meth:`CeremonyHost.opening`), and the host holds a session only once its start is
audited. An admin may cancel the running session (:meth:`CeremonyHost.cancel_session`): it ends
FAILED with "cancelled by <admin>: <reason>". Every end of a session is logged once and audited
once, as ``<kind>-completed`` or ``<kind>-failed`` with its ``reason``; what a failed session of a
kind undoes is registered by its service (:meth:`CeremonyHost.on_failed`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from coordinator import (
    Ceremony,
    CeremonyStatus,
    CustodianRequest,
    SessionState,
)
from hsm_node.audit_log import AuditLog
from hsm_node.notices import Notices
from hsm_node.state import Lifecycle
from hsm_node.store import NodeStore
from sdquorum import envelopes
from sdquorum.errors import StateError, StorageError, UsageError
from sdquorum.pki import Role
from sdquorum_rpc.observability import SESSION_ID, NodeMetrics


class HostConfig(Protocol):
    @property
    def node_id(self) -> str: ...
    @property
    def address(self) -> str: ...
    @property
    def attestation_key(self) -> Any: ...
    @property
    def attestation_cert_der(self) -> bytes: ...
    @property
    def default_session_seconds(self) -> int: ...


log = logging.getLogger("sdquorum.node")


__all__ = ["CeremonyHost", "HostConfig", "Parts", "PartsService"]

C = TypeVar("C", bound=Ceremony)
DEFAULT_SESSION_SECONDS = 600
MAX_SESSION_SECONDS = 24 * 3600
Apply = Callable[[Any], bool]  # True: it audited the completion itself


class CeremonyHost:
    """The one session slot: start, find, settle and apply sessions; watch them."""

    def __init__(
        self,
        config: HostConfig,
        audit: AuditLog,
        notices: Notices,
        *,
        store: NodeStore,
        lifecycle: Lifecycle,
        now: Callable[[], int],
        rng: Callable[[int], bytes],
        tick: Callable[[], Awaitable[None]],
        metrics: NodeMetrics | None,
    ) -> None:
        self._config = config
        self._audit = audit
        self._store = store
        self._lifecycle = lifecycle
        self._now = now
        self._rng = rng
        self._tick = tick
        self.metrics = metrics
        self.address = config.address  # where custodians reach the node (known once it listens)
        self.lock = asyncio.Lock()
        self.session: Ceremony | None = None
        self.notices = notices
        self._applied: set[str] = set()  # sessions whose end has been applied and audited
        self._background: set[asyncio.Task[None]] = set()
        self._appliers: dict[type[Ceremony], Apply] = {}
        self._on_failed: dict[type[Ceremony], Callable[[Any], None]] = {}
        # an HSM pool: one session at a time pool-wide (hsm_node/pool/rows.py), set by the CLI
        self.pool_lock: Callable[[str, int], None] | None = None
        self.pool_unlock: Callable[[str], None] | None = None

    def on_completed(self, kind: type[C], apply: Callable[[C], bool]) -> None:
        """Register what a completed session of ``kind`` changes (in its ending's transaction);
        ``apply`` returns True if it wrote the completion's audit entry itself."""
        self._appliers[kind] = apply

    def on_failed(self, kind: type[C], undo: Callable[[C], None]) -> None:
        """Register what a failed session of ``kind`` undoes, once its failure is audited."""
        self._on_failed[kind] = undo

    def _changed(self) -> None:
        self.notices.notify()

    def drop_unrecorded(self, session: Ceremony) -> None:
        """``session`` ended in a batch that did not commit: nothing more is applied for it."""
        self._applied.add(session.session_id)

    def new_session(self, cls: type[C], reason: str, ttl_seconds: int, caller: Role) -> C:
        """Make a session of ``cls`` (checks: no other running, reason, deadline) and audit it."""
        if self.session is not None and not self.settle(self.session):
            raise StateError(
                f"{self.session.kind} session {self.session.session_id} is still running: "
                "wait for it to end or for its deadline"
            )
        if not reason.strip() or len(reason) > 500 or not reason.isprintable():
            raise UsageError(
                "give a reason of 1..500 printable characters: custodians see it before approving"
            )
        ttl = ttl_seconds or self._config.default_session_seconds
        if not 10 <= ttl <= MAX_SESSION_SECONDS:
            raise UsageError(f"the session deadline must be 10..{MAX_SESSION_SECONDS} seconds")
        now = self._now()
        session = cls(
            session_id=self._rng(16).hex(),
            node_id=self._config.node_id,
            node_address=self.address,
            initiator=str(caller),
            reason=reason.strip(),
            created_at=now,
            expires_at=now + ttl,
            rng=self._rng,
        )
        if self.pool_lock is not None:
            self.pool_lock(session.session_id, ttl)  # StateError if another member runs one
        SESSION_ID.set(session.session_id)
        self._audit(
            f"{session.kind}-started",
            caller,
            {"session_id": session.session_id, "reason": session.reason, "expires_at": session.expires_at},
        )
        self.session = session  # only once its start is audited
        log.info("%s session %s started by %s: %s", session.kind, session.session_id, caller, reason)
        return session

    @contextlib.contextmanager
    def opening(self) -> Iterator[None]:
        """Open a session inside this block, its writes in one transaction: if any of them fails (a
        full or read-only data volume: "nothing was changed"), the new session is forgotten and the
        node's memory read back from its store, so nothing runs and the next session is not blocked
        until its deadline."""
        previous = self.session
        try:
            with self._store.batch():
                yield
        except StorageError as e:
            dropped = self.session
            self.session = previous
            self._lifecycle.reload()
            if dropped is not None and dropped is not previous:
                self._applied.add(dropped.session_id)
                if self.pool_unlock is not None:
                    self.pool_unlock(dropped.session_id)
                log.error("%s session %s not opened: %s", dropped.kind, dropped.session_id, e)
            raise

    async def cancel_session(self, session_id: str, reason: str, caller: Role) -> CeremonyStatus:
        """End the running session FAILED, "cancelled by <caller>: <reason>" (audited by its end)."""
        async with self.lock:
            session = self.session_by_id(session_id)
            if self.settle(session):
                raise StateError(
                    f"session {session_id} has ended already ({session.state.name}): nothing to cancel"
                )
            if not reason.strip() or len(reason) > 500 or not reason.isprintable():
                raise UsageError("give a reason of 1..500 printable characters: it goes into the audit log")
            session.abort(f"cancelled by {caller}: {reason.strip()}")
            self.apply_if_finished(session)
            return session.status()

    def session_status(self, session_id: str = "") -> CeremonyStatus:
        """The status of session ``session_id`` (empty: the current or last one), deadline applied."""
        session = self._session_or_current(session_id)
        self.settle(session)
        return session.status()

    def _session_or_current(self, session_id: str) -> Ceremony:
        if session_id:
            return self.session_by_id(session_id)
        if self.session is None:
            raise StateError("no session has run on this node since it started")
        return self.session_by_id(self.session.session_id)

    def session_by_id(self, session_id: str) -> Ceremony:
        s = self.session
        SESSION_ID.set(session_id[:64])
        if s is None or s.session_id != session_id:
            raise StateError(
                f"no session {session_id!r} on this node: start one with sdctl recover, drill or rotate"
            )
        return s

    def require_session(self) -> Ceremony:
        if self.session is None:
            raise StateError("no ceremony is running")
        SESSION_ID.set(self.session.session_id)
        return self.session

    def in_background(self, work: Coroutine[Any, Any, None], what: str) -> None:
        task = asyncio.create_task(work)
        self._background.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._background.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("%s failed: %s", what, t.exception())

        task.add_done_callback(done)

    def sign_attestation(self, statement: envelopes.ExchangeStatement) -> envelopes.Attestation:
        return envelopes.sign_attestation(
            statement, self._config.attestation_key, self._config.attestation_cert_der
        )

    def apply_if_finished(self, session: Ceremony) -> None:
        """Apply a session that has just finished (once), then wake every watcher."""
        if session.finished and session.session_id not in self._applied:
            self._applied.add(session.session_id)
            if self.pool_unlock is not None:
                self.pool_unlock(session.session_id)
            if self.metrics is not None:
                self.metrics.ceremony_ended(
                    session.kind, session.state.name.lower(), self._now() - session.created_at
                )
            apply = self._appliers.get(type(session))
            audited_by_apply = False
            if session.state is SessionState.COMPLETED and apply is not None:
                audited_by_apply = apply(session)
            failed = session.state is SessionState.FAILED
            if failed:
                log.warning("%s session %s failed: %s", session.kind, session.session_id, session.message)
            if not audited_by_apply:
                self._audit(
                    f"{session.kind}-{session.state.name.lower()}",
                    "node",
                    {
                        "session_id": session.session_id,
                        "message": session.message,
                        **({"reason": session.message} if failed else {}),
                    },
                )
            undo = self._on_failed.get(type(session))
            if failed and undo is not None:
                undo(session)
        self._changed()

    def settle(self, s: Ceremony) -> bool:
        """Whether ``s`` has finished, its deadline applied first. Whichever path finds a session
        ended (this ticker, an agent's request stream, a late answer, the next session) applies it,
        once: a drill's results and every end's audit entry never depend on which came first."""
        if not s.tick(self._now()):
            return False
        if s.session_id not in self._applied:
            self.apply_if_finished(s)
        return True

    async def watch(self, session_id: str) -> AsyncIterator[CeremonyStatus]:
        session = self._session_or_current(session_id)
        last: CeremonyStatus | None = None
        while True:
            token = self.notices.change_token()
            await self._tick()
            st = session.status()
            if st != last:
                yield st
                last = st
            if st.state in (SessionState.COMPLETED, SessionState.FAILED):
                return  # decided on the status just sent, so the final state is always sent
            await self.notices.wait_change(token, timeout=1.0)

    def export_requests(self, session_id: str) -> list[tuple[str, CustodianRequest]]:
        """Every open request with its custodian's name, for offline request files."""
        s = self.session_by_id(session_id)
        names = {p.x: p.name for p in s.status().custodians}
        self._audit("offline-requests-exported", "admin", {"session_id": session_id})
        return [(names[r.x], r) for r in s.requests()]

    def mark_delivered(self, request: CustodianRequest) -> None:
        s = self.session
        if s is not None and s.session_id == request.session_id:
            s.mark_delivered(request.request_id)
            self._changed()


@dataclass(frozen=True)
class Parts:
    """What each ceremony service is built over: the node's configuration, store, lifecycle,
    session host and audit log, and the node's clock and randomness (the only ones it reads)."""

    config: HostConfig
    store: NodeStore
    lifecycle: Lifecycle
    host: CeremonyHost
    audit: AuditLog
    now: Callable[[], int]
    rng: Callable[[int], bytes]


class PartsService:
    """A service built over :class:`Parts` (activation, custody, rotation): it keeps each part as
    the same private attribute, and the host's notices as ``_notices``."""

    def __init__(self, parts: Parts) -> None:
        p = parts
        self._config, self._store, self._lifecycle, self._host = p.config, p.store, p.lifecycle, p.host
        self._notices, self._audit, self._now, self._rng = p.host.notices, p.audit, p.now, p.rng
