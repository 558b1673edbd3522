"""Activation: the download that creates a domain, and the recovery ceremony that restores one.

PROVISIONED -> ACTIVATED (download), or PROVISIONED -> RECOVERY_PENDING -> ACTIVATED (a recovery
ceremony completes). A recovery that fails (deadline, refused file, cancel) or that a restart drops
returns a never-activated node to PROVISIONED. A recovery whose opening or whose accepted SD file
cannot be written (a full or read-only data volume) leaves nothing running: no session, or a session
ended before any custodian is asked, so it can never activate later. The node remembers, per
domain, the highest epoch whose signed header it has seen (activation, an accepted recovery upload,
a rotation), and refuses a recovery upload of a lower one before any custodian is asked
("sd-file-refused", audited; the session ends). The domain chain of the audit log begins here,
naming the domain, epoch and SD file, and the ceremony that did it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Sequence
from datetime import UTC, datetime

from coordinator import (
    CeremonyStatus,
    RecoverySession,
)
from hsm_node.ceremony_host import Parts, PartsService
from hsm_node.state import NodeState
from hsm_node.store import DomainInfo
from sdquorum import policy, sdfile
from sdquorum.errors import SdquorumError, StateError, StorageError, VerificationError
from sdquorum.pki import Role

log = logging.getLogger("sdquorum.node")


__all__ = ["Activation"]


class Activation(PartsService):
    """Download, and recovery: init, SD-file upload, and the completed recovery applied."""

    def __init__(self, parts: Parts) -> None:
        super().__init__(parts)
        self._recovery_file: bytes | None = None
        self._host.on_completed(RecoverySession, self._apply_recovery)
        self._host.on_failed(RecoverySession, self._recovery_failed)
        self.leave_recovery_if_none_runs("the node restarted: its recovery session was dropped")

    def _recovery_failed(self, session: RecoverySession) -> None:
        self._lifecycle.back_to_provisioned(f"recovery session {session.session_id} failed")

    def leave_recovery_if_none_runs(self, why: str = "no recovery session runs") -> None:
        """A never-activated node is RECOVERY_PENDING only while a recovery session runs. Called at
        start (no session survives a restart) and at every tick: it also returns a node whose return
        could not be written when its recovery failed (a full disk), or whose session ended in a
        batch that did not commit (nothing of it was applied)."""
        s = self._host.session
        if self._lifecycle.state is NodeState.RECOVERY_PENDING and (s is None or s.finished):
            self._lifecycle.back_to_provisioned(why)

    async def download(
        self, certificates: Sequence[bytes], quorum: int, caller: Role
    ) -> tuple[bytes, list[str]]:
        async with self._host.lock:
            if self._lifecycle.state is not NodeState.PROVISIONED or self._lifecycle.domain is not None:
                raise StateError(
                    "this node's security domain was already created or is being recovered: "
                    "a node is activated only once (recover with 'sdctl recover' instead)"
                )
            now = self._now()
            plan = policy.validate_download(certificates, quorum, datetime.fromtimestamp(now, tz=UTC))
            secrets = sdfile.new_domain_secrets(self._rng, admins=[str(caller)])
            sd = sdfile.seal_domain(
                secrets,
                plan.certificates_der,
                plan.quorum,
                epoch=1,
                created_by=self._config.node_id,
                created_at=now,
                rng=self._rng,
            )
            info = DomainInfo(secrets.domain_id, 1, plan.quorum, len(plan.certificates_der))
            data = sd.to_bytes()
            self._lifecycle.activate(secrets, info, data)
            self._notices.refresh(sd.signed_header)
            self._audit.start_domain_chain(
                "activated",
                {
                    "domain_id": secrets.domain_id.hex(),
                    "epoch": 1,
                    "quorum": plan.quorum,
                    "custodians": [s.name for s in sd.header.slots],
                    "sd_file_sha256": hashlib.sha256(data).hexdigest(),
                    "sd_header_sha256": sd.signed_header.sha256.hex(),
                    "ceremony": "download",
                    "by": str(caller),
                },
            )
            log.info(
                "activated: domain %s, quorum %d of %d, by %s",
                secrets.domain_id.hex(),
                quorum,
                info.custodians,
                caller,
            )
            self._notices.notify()
            return data, list(plan.warnings)

    async def init_recovery(self, reason: str, ttl_seconds: int, caller: Role) -> RecoverySession:
        async with self._host.lock:
            if self._lifecycle.state is NodeState.ACTIVATED:
                raise StateError("this node is already activated: recovery runs on a new, provisioned node")
            with self._host.opening():
                session = self._host.new_session(RecoverySession, reason, ttl_seconds, caller)
                self._lifecycle.begin_recovery()
            self._notices.notify()
            return session

    async def upload_sd_file(self, session_id: str, data: bytes) -> CeremonyStatus:
        async with self._host.lock:
            session = self._host.session_by_id(session_id)
            if not isinstance(session, RecoverySession):
                raise StateError(f"session {session_id} is a {session.kind}, not a recovery")
            try:
                sd = sdfile.SecurityDomainFile.from_bytes(data)  # header signature and payload hash first
                self._refuse_retired_epoch(sd.header)
                session.load_sd_file(sd, self._now(), self._host.sign_attestation)
            except SdquorumError as e:
                session.abort(f"the SD file was refused: {e}")  # a retry with the right file need not wait
                self._audit("sd-file-refused", "admin", {"session_id": session_id, "reason": str(e)[:500]})
                self._host.apply_if_finished(session)  # its end applied and audited now: nothing runs
                raise
            self._record_upload(session, sd, data)
            self._recovery_file = data
            h = sd.header
            log.info(
                "session %s: SD file for domain %s epoch %d accepted; asking %d custodians for %d shares",
                session_id,
                h.domain_id.hex(),
                h.epoch,
                h.n,
                h.quorum,
            )
            self._notices.notify()
            self._host.in_background(self._prepare(session), "computing the public shares")
            return session.status()

    def _record_upload(self, session: RecoverySession, sd: sdfile.SecurityDomainFile, data: bytes) -> None:
        """Record an accepted SD file; if that cannot be written, end the session before any
        custodian is asked (a refused upload never asks, nor activates later) and raise."""
        try:
            with self._store.batch():
                self._store.domain.note_epoch(sd.header.domain_id, sd.header.epoch)
                self._audit(
                    "sd-file-accepted",
                    "admin",
                    {
                        "session_id": session.session_id,
                        "domain_id": sd.header.domain_id.hex(),
                        "epoch": sd.header.epoch,
                        "sd_file_sha256": hashlib.sha256(data).hexdigest(),
                    },
                )
        except StorageError as e:
            session.abort(f"the node could not record the SD file ({e}): start a new session")
            with contextlib.suppress(StorageError):  # its end is logged even if it cannot be audited
                self._host.apply_if_finished(session)
            self._host.drop_unrecorded(session)
            self._notices.notify()
            raise

    def _refuse_retired_epoch(self, header: sdfile.Header) -> None:
        highest = self._store.domain.highest_epoch(header.domain_id)
        if highest is not None and header.epoch < highest:
            raise VerificationError(
                f"epoch {header.epoch} of domain {header.domain_id.hex()} was retired: this node has seen "
                f"epoch {highest}; recover from the SD file of epoch {highest} or later"
            )

    async def _prepare(self, session: RecoverySession) -> None:
        """Each slot's public share, computed after the request streams have run and while the
        requests travel, one slot per turn of the event loop (~0.5 ms at m = 10), so that checking
        an answer is then one multiplication. Not a thread: PyNaCl holds the GIL in libsodium,
        and a thread would make the event loop wait for the GIL."""
        for slot in session.header.slots:
            await asyncio.sleep(0)
            if session.finished:
                return
            session.prepare([slot.x])

    def _apply_recovery(self, session: RecoverySession) -> bool:
        secrets, sd = session.result, session.sd_file
        if secrets is None or sd is None:  # pragma: no cover - COMPLETED implies both
            raise StateError("the session completed without a result")
        h = sd.header
        info = DomainInfo(h.domain_id, h.epoch, h.quorum, h.n)
        data = self._recovery_file or sd.to_bytes()
        self._audit(
            "recovery-completed", "node", {"session_id": session.session_id, "message": session.message}
        )
        self._lifecycle.activate(secrets, info, data)
        self._notices.refresh(sd.signed_header)  # the very file stored: parsed at its upload
        self._notices.announced_already()  # its agents just checked (and remember) this very header
        released = [c.name for c in session.status().custodians if c.status.name == "ACCEPTED"]
        self._audit.start_domain_chain(
            "recovered",
            {
                "domain_id": h.domain_id.hex(),
                "epoch": h.epoch,
                "sd_file_sha256": hashlib.sha256(data).hexdigest(),
                "sd_header_sha256": sd.signed_header.sha256.hex(),
                "ceremony": "recovery",
                "session_id": session.session_id,
                "initiator": session.initiator,
                "reason": session.reason,
                "shares_from": released,
            },
        )
        log.info(
            "session %s completed: node activated with domain %s epoch %d",
            session.session_id,
            h.domain_id.hex(),
            h.epoch,
        )
        return True
