"""The emulated HSM node: state machine, key store, data plane, and host of the coordinator.

States: PROVISIONED -> ACTIVATED (download), or PROVISIONED -> RECOVERY_PENDING -> ACTIVATED (a
recovery ceremony completes). The data plane is open only in ACTIVATED. At most one ceremony
(recovery, drill, rotation) runs at a time; a node restart drops a running session (its exchange
key lived only in memory) and the node stays RECOVERY_PENDING until a new session completes.
COMPROMISED is a flag an admin sets on an ACTIVATED node: drills, rotation and Azure restores stop.

An Azure restore re-encrypts a domain to an external key, so it is never a way out for this node's
own domain: it is refused on a compromised node, and refused before any custodian is asked (and
audited) when the Azure file's slots are encrypted to a custodian certificate of the domain this
node holds or the file holds an sdquorum domain exported for Azure (``security_domain_file(fmt=
"azure")``, whose one item is tagged ``AZURE_PAYLOAD_TAG``). That export stays possible (its shares
are the same custodians'; Azure's own tools need their private keys), but no sdquorum node turns
it into a transfer file, and agents refuse it too (:mod:`sdquorum.azure.ceremony`).

Every ceremony step, every answer accepted or rejected (with the custodian), every refusal and every
custody event goes into the audit log (:mod:`sdquorum.audit`), signed with the node's attestation
key. There are two chains: ``provisioning`` until the node is activated, then ``domain``, whose first
entry names the domain, epoch and SD file the node was activated or recovered with, and the ceremony
that did it (linking the provisioning chain's head). Refused calls are audited through per-peer windows
(:mod:`sdquorum.refusals`): each peer's first refusals of a window in full, the rest counted into one
entry when the window closes (the ticker) or the server stops, so a caller flooding refused calls adds
a bounded number of entries per window. Answers that arrive together are taken as one
batch whose audit entries (and the completion the batch may cause) are committed in one transaction;
no answer is acknowledged, and no watcher sees its effect, before that commit.

Agents learn the domain from the node: while it holds a domain, every agent whose key holds a slot of
the current header is sent that signed header as a notice (:meth:`Node.domain_notice`) when it
connects, at activation and after each rotation; the agent pins the domain key and remembers the
epoch. The node remembers too: per domain, the highest epoch whose signed header it has seen
(activation, an accepted recovery upload, a rotation), and refuses a recovery upload of a lower one
before any custodian is asked ("sd-file-refused", audited; the session ends).

Who may use a key (the data plane). Every key has one owner, the role that may use it: the app
that created it (``app``, or ``app/<name>`` for a named app certificate), or ``admin`` for a key an
admin created for itself. An admin may create a key for an app (``owner``); that is the only way an
admin's decision gives an app a key. An app lists, uses, deletes and recovers only the keys it owns;
a key of another owner is refused as not its own (PERMISSION_DENIED, audited as a refusal). The
admin lists every key (live and deleted), deletes, recovers and purges any key, and uses only the
keys it owns: managing a key is not using it. Every unnamed ``app`` certificate is one owner; give
apps names to keep their keys apart.

Deletion is soft: a deleted key stays in the store, unusable and out of ListKeys, and an admin (or
its owner) can recover it for ``key_retention_days``; then the node purges it (at start, and at
most :data:`PURGE_CHECK_SECONDS` after the retention ends, by the node's clock). Only an admin
purges earlier. A deleted key's name stays taken until it is purged. Create, delete, recover and
purge are audited in the same transaction as the change, with who did it (role, certificate subject
and SPKI SHA-256 where the call came over mTLS).

Custodians are tied to their keys by name (issue 13, class 4): a custodian's request stream is
served only the requests addressed to a key named for the caller's TLS identity
(``custodian/<name>``), and a custodian's answer or denial is taken only for such a request. A
native slot's name comes from its certificate in the signed SD header; an Azure file names its
slots only by certificate thumbprint, so an Azure slot is named for a caller only through that very
certificate (its SHA-256 the slot's thumbprint) whose CN is the caller's name: the one the caller's
stream sent in its hello, or the one its answer or denial carries and must verify under. The admin
relays offline answers; those are tied to the slot by the slot key's signature alone, which every
answer must carry in any case (docs/adr/0012).

This class does no network I/O: the gRPC servicers in :mod:`hsm_node.server` call it. It owns the
clock and randomness it was given.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import hmac
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from coordinator import (
    DRILL_OUTCOMES,
    AzureRestoreSession,
    Ceremony,
    CeremonyStatus,
    CustodianRequest,
    DrillSession,
    RecoverySession,
    ReleaseOutcome,
    RotationProposal,
    RotationSession,
    SessionState,
)
from hsm_node.audit_log import AuditLog, Auditor
from hsm_node.backups import Backups
from hsm_node.cryptopool import CryptoPool
from hsm_node.dataplane import DEFAULT_KEY_RETENTION_DAYS, MAX_KEY_RETENTION_DAYS, KeyManager, KeyService
from hsm_node.state import Lifecycle, NodeState
from hsm_node.store import DomainInfo, NodeStore
from sdquorum import envelopes, pki, policy, sdfile
from sdquorum.azure.ceremony import AZURE_PAYLOAD_TAG, AzureAnswer
from sdquorum.azure.sdfile import seal_azure_domain
from sdquorum.errors import (
    SdquorumError,
    StateError,
    StorageError,
    UsageError,
    VerificationError,
)
from sdquorum.pki import Role
from sdquorum.review import LOSS_KINDS, CustodyRecord, DrillResult, RetiredEpoch
from sdquorum_rpc.observability import SESSION_ID, NodeMetrics

__all__ = ["Node", "NodeConfig", "NodeState"]

C = TypeVar("C", bound=Ceremony)

log = logging.getLogger("sdquorum.node")

DEFAULT_SESSION_SECONDS = 600
MAX_SESSION_SECONDS = 24 * 3600


@dataclass(frozen=True)
class _Answer:
    request_id: str
    answer: bytes
    caller: Role
    kind: str | tuple[str, ...] | None
    context: contextvars.Context  # the caller's (its request and session ids), for the log lines
    done: asyncio.Future[None]


@dataclass(frozen=True)
class NodeConfig:
    node_id: str
    address: str
    data_dir: Path
    attestation_key: Ed25519PrivateKey
    attestation_cert_der: bytes
    default_session_seconds: int = DEFAULT_SESSION_SECONDS
    key_retention_days: int = DEFAULT_KEY_RETENTION_DAYS

    def __post_init__(self) -> None:
        if not 1 <= self.key_retention_days <= MAX_KEY_RETENTION_DAYS:
            raise UsageError(
                f"keys.retention_days = {self.key_retention_days}: use 1..{MAX_KEY_RETENTION_DAYS}"
            )


class AnswerNotRecorded(StorageError):
    """An answer changed the session in memory but its record could not be written: the batch it
    came in does not commit, and the session ends."""


def wrapping_key_name(thumbprint: bytes, certificate: bytes) -> str | None:
    """The CN of ``certificate`` (DER or PEM) if it is the wrapping certificate ``thumbprint``
    names, else None; "" when it has no single CN. MalformedError if it does not parse."""
    if not hmac.compare_digest(pki.thumbprint_sha256(certificate), thumbprint):
        return None
    names = pki.load_cert(certificate).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if len(names) == 1 else ""


class Node:
    def __init__(
        self,
        config: NodeConfig,
        store: NodeStore,
        *,
        clock: Callable[[], float] = time.time,
        rng: Callable[[int], bytes] = os.urandom,
        metrics: NodeMetrics | None = None,
        crypto_pool: CryptoPool | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.crypto_pool = crypto_pool
        self.address = config.address
        self._store = store
        self._clock = clock
        self._rng = rng
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._new_requests = asyncio.Event()
        self._announced: frozenset[str] = frozenset()  # ids of the open requests at the last change
        self._session: Ceremony | None = None
        self._inbox: list[_Answer] = []  # answers waiting for the next batch
        self._taker: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._applied: set[str] = set()  # sessions whose end has been applied and audited
        self._recovery_file: bytes | None = None
        self._agents: dict[str, bytes] = {}  # custodian name -> thumbprint of its connected agent
        self._agent_keys: dict[str, bytes] = {}  # custodian name -> SPKI SHA-256 its agent's hello showed
        # (custodian name, thumbprint, CN of the certificate it sent or "") -> its open streams
        self._streams: dict[tuple[str, bytes, str], int] = {}
        self._notice: tuple[str, sdfile.SignedHeader] | None = None  # (id, current signed header)
        self.lifecycle = Lifecycle(store)
        self.audit_log = AuditLog(
            store,
            node_id=config.node_id,
            key=config.attestation_key,
            certificate_der=config.attestation_cert_der,
            now=self.now,
            chain=self.audit_chain,
        )
        self._audit: Auditor = self.audit_log
        self.keys = KeyManager(store, self.lifecycle, self._audit, self.now, config.key_retention_days)
        self.key_ops = KeyService(store, self.lifecycle, config.key_retention_days, crypto_pool)
        self.backups = Backups(
            store, self.lifecycle, self._audit, self.keys, node_id=config.node_id, now=self.now, rng=rng
        )
        self._refresh_notice()
        if self.lifecycle.first_start:
            self._audit("node-provisioned", "node", {"node_id": config.node_id})
        if self.lifecycle.state is NodeState.ACTIVATED:
            self.keys.purge_expired_keys_now()

    # ------------------------------------------------------------------ queries

    def now(self) -> int:
        return int(self._clock())

    @property
    def state(self) -> NodeState:
        return self.lifecycle.state

    @property
    def domain_info(self) -> DomainInfo | None:
        return self.lifecycle.info

    @property
    def session(self) -> Ceremony | None:
        return self._session

    @property
    def store(self) -> NodeStore:
        """The store this node keeps its state in (read it; write through the node)."""
        return self._store

    @property
    def compromised(self) -> bool:
        return self._store.flag("compromised") is not None

    # ------------------------------------------------------------------ audit

    def audit_chain(self) -> str:
        return "domain" if self.lifecycle.domain is not None else "provisioning"

    def _refresh_notice(self) -> None:
        """The notice agents are sent: the current SD file's signed header, while a domain is held."""
        data = self._store.sd_file() if self.lifecycle.domain is not None else None
        if data is None:
            self._notice = None
            return
        signed = sdfile.SecurityDomainFile.from_bytes(data).signed_header
        self._notice = (signed.sha256.hex(), signed)

    def domain_notice(self, role: Role, thumbprint: bytes, key_name: str = "") -> CustodianRequest | None:
        """The domain's current signed header for the agent holding ``thumbprint``: a custodian of
        the current epoch (x = its slot), or of a retired one, removed by a rotation (x = 0): it must
        learn the new epoch too, or it would still release for the retired one. Like requests, a
        notice goes only to a stream whose key is named for its caller (the slot's name in the header;
        for a former custodian, the CN of the certificate its hello sent)."""
        if self._notice is None or role.kind != "custodian" or not role.name:
            return None
        notice_id, signed = self._notice
        slot = signed.header.slot_by_thumbprint(thumbprint)
        if slot is not None and slot.name != role.name:
            return None
        if slot is None and (thumbprint.hex() not in self._former_custodians() or key_name != role.name):
            return None
        return CustodianRequest(
            request_id=notice_id,
            session_id="",
            kind="domain-notice",
            x=slot.x if slot is not None else 0,
            thumbprint=thumbprint,
            attestation=b"",
            header_bytes=signed.header_bytes,
            header_signature=signed.signature,
        )

    def _former_custodians(self) -> list[str]:
        """Thumbprints (hex) of wrapping keys that held a slot of a retired epoch but not the current one."""
        raw = self._store.flag("former-custodians")
        return list(json.loads(raw)) if raw else []

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
        s = self._session
        open_ids = frozenset(r.request_id for r in s.requests()) if s is not None else frozenset()
        if self._notice is not None:  # a new header wakes the request streams too, to announce it
            open_ids |= {self._notice[0]}
        if not open_ids <= self._announced:
            self._new_requests.set()
            self._new_requests = asyncio.Event()
        self._announced = open_ids

    def change_token(self) -> asyncio.Event:
        """Take this before reading state; ``wait_change`` with it then misses no change."""
        return self._changed

    def request_token(self) -> asyncio.Event:
        """Like :meth:`change_token`, but set only when a request opens that was not open at the
        previous change: an agent's request stream wakes once per ceremony, not once per answer or
        delivery of every other custodian (n streams x n changes)."""
        return self._new_requests

    async def wait_change(self, token: asyncio.Event, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(token.wait(), timeout)

    # ------------------------------------------------------------------ activation

    async def download(
        self, certificates: Sequence[bytes], quorum: int, caller: Role
    ) -> tuple[bytes, list[str]]:
        async with self._lock:
            if self.state is not NodeState.PROVISIONED or self.lifecycle.domain is not None:
                raise StateError(
                    "this node's security domain was already created or is being recovered: "
                    "a node is activated only once (recover with 'sdctl recover' instead)"
                )
            now = self.now()
            plan = policy.validate_download(certificates, quorum, datetime.fromtimestamp(now, tz=UTC))
            secrets = sdfile.new_domain_secrets(self._rng, admins=[str(caller)])
            sd = sdfile.seal_domain(
                secrets,
                plan.certificates_der,
                plan.quorum,
                epoch=1,
                created_by=self.config.node_id,
                created_at=now,
                rng=self._rng,
            )
            info = DomainInfo(secrets.domain_id, 1, plan.quorum, len(plan.certificates_der))
            data = sd.to_bytes()
            self.lifecycle.activate(secrets, info, data)
            self._refresh_notice()
            self.audit_log.start_domain_chain(
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
            self._notify()
            return data, list(plan.warnings)

    # ------------------------------------------------------------------ recovery

    async def init_recovery(self, reason: str, ttl_seconds: int, caller: Role) -> RecoverySession:
        async with self._lock:
            if self.state is NodeState.ACTIVATED:
                raise StateError("this node is already activated: recovery runs on a new, provisioned node")
            session = self._new_session(RecoverySession, reason, ttl_seconds, caller)
            self.lifecycle.begin_recovery()
            self._notify()
            return session

    def _new_session(self, cls: type[C], reason: str, ttl_seconds: int, caller: Role) -> C:
        """Make a session of ``cls`` (checks: no other running, reason, deadline) and audit it."""
        if self._session is not None and not self._ended(self._session):
            raise StateError(
                f"{self._session.kind} session {self._session.session_id} is still running: "
                "wait for it to end or for its deadline"
            )
        if not reason.strip() or len(reason) > 500 or not reason.isprintable():
            raise UsageError(
                "give a reason of 1..500 printable characters: custodians see it before approving"
            )
        ttl = ttl_seconds or self.config.default_session_seconds
        if not 10 <= ttl <= MAX_SESSION_SECONDS:
            raise UsageError(f"the session deadline must be 10..{MAX_SESSION_SECONDS} seconds")
        now = self.now()
        session = cls(
            session_id=self._rng(16).hex(),
            node_id=self.config.node_id,
            node_address=self.address,
            initiator=str(caller),
            reason=reason.strip(),
            created_at=now,
            expires_at=now + ttl,
            rng=self._rng,
        )
        self._session = session
        SESSION_ID.set(session.session_id)
        log.info("%s session %s started by %s: %s", session.kind, session.session_id, caller, reason)
        self._audit(
            f"{session.kind}-started",
            caller,
            {"session_id": session.session_id, "reason": session.reason, "expires_at": session.expires_at},
        )
        return session

    def _session_by_id(self, session_id: str) -> Ceremony:
        s = self._session
        SESSION_ID.set(session_id[:64])
        if s is None or s.session_id != session_id:
            raise StateError(
                f"no session {session_id!r} on this node: start one with sdctl recover, drill or rotate"
            )
        return s

    async def upload_sd_file(self, session_id: str, data: bytes) -> CeremonyStatus:
        async with self._lock:
            session = self._session_by_id(session_id)
            if not isinstance(session, RecoverySession):
                raise StateError(f"session {session_id} is a {session.kind}, not a recovery")
            try:
                sd = sdfile.SecurityDomainFile.from_bytes(data)  # header signature and payload hash first
                self._refuse_retired_epoch(sd.header)
                session.load_sd_file(sd, self.now(), self._sign_attestation)
            except SdquorumError as e:
                session.abort(f"the SD file was refused: {e}")  # a retry with the right file need not wait
                self._audit("sd-file-refused", "admin", {"session_id": session_id, "reason": str(e)[:500]})
                self._after_change(session)  # the session's end is applied and audited now: nothing runs
                raise
            self._store.note_epoch(sd.header.domain_id, sd.header.epoch)
            self._audit(
                "sd-file-accepted",
                "admin",
                {
                    "session_id": session_id,
                    "domain_id": sd.header.domain_id.hex(),
                    "epoch": sd.header.epoch,
                    "sd_file_sha256": hashlib.sha256(data).hexdigest(),
                },
            )
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
            self._notify()
            self._in_background(self._prepare(session), "computing the public shares")
            return session.status()

    def _refuse_retired_epoch(self, header: sdfile.Header) -> None:
        highest = self._store.highest_epoch(header.domain_id)
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

    def _in_background(self, work: Coroutine[Any, Any, None], what: str) -> None:
        task = asyncio.create_task(work)
        self._background.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._background.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("%s failed: %s", what, t.exception())

        task.add_done_callback(done)

    def _sign_attestation(self, statement: envelopes.ExchangeStatement) -> envelopes.Attestation:
        return envelopes.sign_attestation(
            statement, self.config.attestation_key, self.config.attestation_cert_der
        )

    def pending_requests(self, thumbprint: bytes) -> list[CustodianRequest]:
        s = self._session
        if s is None or self._ended(s):
            return []
        return s.requests_for(thumbprint)

    def agent_requests(self, role: Role, thumbprint: bytes, key_name: str = "") -> list[CustodianRequest]:
        """The open requests a custodian's stream is served: addressed to ``thumbprint`` and to a
        key named for ``role`` (module docstring). ``key_name``: the CN of the wrapping certificate
        the stream sent, already checked to hash to ``thumbprint`` ("" when it sent none)."""
        s = self._session
        if s is None or self._ended(s):
            return []
        return [r for r in s.requests_for(thumbprint) if self._named_for(s, r, role, key_name)]

    @staticmethod
    def _named_for(s: Ceremony, req: CustodianRequest, role: Role, key_name: str) -> bool:
        if role.kind != "custodian" or not role.name:
            return False
        if isinstance(s, AzureRestoreSession):  # the file names the slot by thumbprint only
            return key_name == role.name
        return any(p.x == req.x and p.name == role.name for p in s.status().custodians)

    def _answer_named_for_caller(
        self, s: Ceremony, request_id: str, caller: Role, message: bytes, *, denial: bool
    ) -> None:
        """A custodian answers or denies only a request addressed to a key named for it; the admin
        relays offline answers (the slot key's signature ties those). An Azure slot's key is named
        by the certificate the answer or denial itself carries (the one it must verify under).
        VerificationError otherwise."""
        if caller.kind != "custodian":
            return
        req = next((r for r in s.requests() if r.request_id == request_id), None)
        if req is None:
            return  # not open: the session says why, as before
        key_name = ""
        if isinstance(s, AzureRestoreSession):
            offered = (
                envelopes.Denial.from_bytes(message).statement.certificate
                if denial
                else AzureAnswer.from_bytes(message).certificate_der
            )
            key_name = wrapping_key_name(req.thumbprint, offered) or ""
        if not self._named_for(s, req, caller, key_name):
            raise VerificationError(
                f"request {request_id} (slot {req.x}) is not addressed to a key named for {caller}"
            )

    def agent_connected(
        self, role: Role, thumbprint: bytes, key_name: str = "", key_sha256: bytes = b""
    ) -> None:
        """Remember which key each custodian's agent holds; a drill fails a slot whose key changed.
        ``key_name`` and ``key_sha256``: the CN and the SPKI SHA-256 of the wrapping certificate
        the stream sent (checked against ``thumbprint`` by the caller), empty when it sent none."""
        if role.name:
            self._agents[role.name] = thumbprint
            self._agent_keys[role.name] = key_sha256
            entry = (role.name, thumbprint, key_name)
            self._streams[entry] = self._streams.get(entry, 0) + 1
            if key_name and key_name != role.name:
                log.warning(
                    "%s announced a wrapping certificate named %r: requests for it are not served to it",
                    role,
                    key_name[:64],
                )
            self._check_agent_keys()

    def connected_custodians(self) -> frozenset[str]:
        """Custodians whose agent holds its request stream open now (for the metrics gauges)."""
        return frozenset(self._agents.copy())

    def agent_disconnected(self, role: Role, thumbprint: bytes, key_name: str = "") -> None:
        if role.name:
            entry = (role.name, thumbprint, key_name)
            left = self._streams.get(entry, 0) - 1
            if left > 0:
                self._streams[entry] = left
            else:
                self._streams.pop(entry, None)
        if role.name and self._agents.get(role.name) == thumbprint:
            del self._agents[role.name]
            self._agent_keys.pop(role.name, None)
        # Only a stream that was served a request may mark it disconnected, and only when no other
        # stream is served it: another custodian announcing this thumbprint neither receives nor
        # withdraws it, nor keeps it shown as requested.
        if self._session is not None and self.agent_requests(role, thumbprint, key_name):
            still = any(
                self.agent_requests(Role("custodian", who), thumb, name)
                for (who, thumb, name) in self._streams
                if thumb == thumbprint
            )
            if not still:
                self._session.mark_disconnected(thumbprint)
                self._notify()

    def _check_agent_keys(self) -> None:
        s = self._session
        if not isinstance(s, DrillSession) or s.state is not SessionState.COLLECTING:
            return
        for slot in s.header.slots:
            held = self._agents.get(slot.name)
            if held is not None and held != slot.thumbprint:
                # Which key it holds is a question of public keys; which certificate, of thumbprints.
                if self._agent_keys.get(slot.name) == pki.spki_sha256(slot.certificate_der):
                    reason = (
                        f"{slot.name}'s agent holds slot {slot.x}'s key under another certificate: "
                        "run it with the wrapping certificate the security domain was sealed to"
                    )
                else:
                    reason = f"{slot.name}'s agent holds a wrapping key that no longer matches slot {slot.x}"
                before = s.progress().rejected
                s.reject_slot(slot.x, reason, self.now())
                if s.progress().rejected != before:  # newly rejected: its own audit entry
                    self._audit(
                        "drill-slot-rejected",
                        "node",
                        {"session_id": s.session_id, "custodian": slot.name, "x": slot.x, "reason": reason},
                    )
        self._after_change(s)

    def export_requests(self, session_id: str) -> list[tuple[str, CustodianRequest]]:
        """Every open request with its custodian's name, for offline request files."""
        s = self._session_by_id(session_id)
        names = {p.x: p.name for p in s.status().custodians}
        self._audit("offline-requests-exported", "admin", {"session_id": session_id})
        return [(names[r.x], r) for r in s.requests()]

    def mark_delivered(self, request: CustodianRequest) -> None:
        s = self._session
        if s is not None and s.session_id == request.session_id:
            s.mark_delivered(request.request_id)
            self._notify()

    async def submit_answer(
        self, request_id: str, answer: bytes, caller: Role, *, kind: str | tuple[str, ...] | None = None
    ) -> None:
        """A custodian's release (recovery) or proof (drill, rotation), online or carried offline.

        Answers that arrive together are taken as one batch (:meth:`_take_answers`): their audit
        entries, and the completion the last of them may cause, are committed in one transaction.
        This returns, or raises the answer's own error, only once that transaction has committed:
        no answer is acknowledged, and no watcher sees its effect, before its audit entry is on disk.
        """
        if self._session is not None:
            SESSION_ID.set(self._session.session_id)
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
                async with self._lock:
                    batch = [a for a in self._inbox if not a.done.done()]
                    self._inbox.clear()
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
        self.lifecycle.reload()
        self._refresh_notice()
        session = self._session
        if session is not None:
            session.revoke(f"the node could not write its audit log ({error}): start a new session")
            self._applied.add(session.session_id)  # nothing more to apply: the disk refused it
        log.error("a batch of answers did not commit (%s): the session ended, nothing was applied", error)
        self._notify()

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
        session = self._require_session()
        kinds = (kind,) if isinstance(kind, str) else kind
        if kinds is not None and session.kind not in kinds:
            raise VerificationError(f"a {' or '.join(kinds)} answer was sent to a {session.kind} session")
        try:
            self._answer_named_for_caller(session, request_id, caller, answer, denial=False)
            outcome = session.submit(request_id, answer, self.now())
        except SdquorumError as e:
            self._audit_refused(session, "answer", caller, request_id, e)
            try:
                self._ended(session)  # a late answer may be what finds the deadline passed
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
        self._after_change(session)

    def _audit_refused(
        self, session: Ceremony, what: str, caller: Role, request_id: str, error: SdquorumError
    ) -> None:
        """``<kind>-answer-refused`` or ``<kind>-denial-refused``: what a custodian sent failed a check."""
        self._audit(
            f"{session.kind}-{what}-refused",
            caller,
            {"session_id": session.session_id, "request_id": request_id[:64], "reason": str(error)},
        )

    async def deny(self, request_id: str, signed_denial: bytes, caller: Role) -> None:
        async with self._lock:
            session = self._require_session()
            try:
                self._answer_named_for_caller(session, request_id, caller, signed_denial, denial=True)
                p = session.deny_signed(request_id, signed_denial, self.now())
            except SdquorumError as e:
                self._audit_refused(session, "denial", caller, request_id, e)
                self._ended(session)
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
            self._after_change(session)

    def _require_session(self) -> Ceremony:
        if self._session is None:
            raise StateError("no ceremony is running")
        SESSION_ID.set(self._session.session_id)
        return self._session

    def _after_change(self, session: Ceremony) -> None:
        """Apply a session that has just finished (once), then wake every watcher."""
        if session.finished and session.session_id not in self._applied:
            self._applied.add(session.session_id)
            if self.metrics is not None:
                self.metrics.ceremony_ended(
                    session.kind, session.state.name.lower(), self.now() - session.created_at
                )
            if session.state is SessionState.COMPLETED:
                if isinstance(session, RecoverySession):
                    self._apply_recovery(session)
                elif isinstance(session, DrillSession):
                    self._apply_drill(session)
                elif isinstance(session, RotationSession):
                    self._apply_rotation(session)
            if not (isinstance(session, RecoverySession) and session.state is SessionState.COMPLETED):
                self._audit(
                    f"{session.kind}-{session.state.name.lower()}",
                    "node",
                    {"session_id": session.session_id, "message": session.message},
                )
        self._notify()

    def _apply_recovery(self, session: RecoverySession) -> None:
        secrets, sd = session.result, session.sd_file
        if secrets is None or sd is None:  # pragma: no cover - COMPLETED implies both
            raise StateError("the session completed without a result")
        h = sd.header
        info = DomainInfo(h.domain_id, h.epoch, h.quorum, h.n)
        data = self._recovery_file or sd.to_bytes()
        self._audit(
            "recovery-completed", "node", {"session_id": session.session_id, "message": session.message}
        )
        self.lifecycle.activate(secrets, info, data)
        self._refresh_notice()
        if self._notice is not None:  # its agents just checked (and remember) this very header: no
            self._announced |= {self._notice[0]}  # stream is woken for it; one that connects gets it
        released = [c.name for c in session.status().custodians if c.status.name == "ACCEPTED"]
        self.audit_log.start_domain_chain(
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

    def _apply_drill(self, session: DrillSession) -> None:
        now = self.now()
        results = [
            DrillResult(now, p.name, p.x, DRILL_OUTCOMES.get(p.status, "unreachable"), p.detail[:200])
            for p in session.status().custodians
        ]
        self._store.add_drill_results(results)
        self._audit(
            "drill-results",
            "node",
            {"session_id": session.session_id, "results": {r.custodian: r.outcome for r in results}},
        )

    def _apply_rotation(self, session: RotationSession) -> None:
        proposal, old, old_info = session.proposal, self.lifecycle.domain, self.lifecycle.info
        if proposal is None or old is None or old_info is None:  # pragma: no cover - set when it started
            raise StateError("the rotation has no proposal or the node no domain")
        old_sd = self._store.sd_file()
        old_header_hash = (
            sdfile.SecurityDomainFile.from_bytes(old_sd).signed_header.sha256 if old_sd else bytes(32)
        )
        new_epoch = old_info.epoch + 1
        sd = sdfile.seal_domain(
            old,  # the same payload: data encryption key, signing and backup keys are unchanged
            proposal.certificates_der,
            proposal.quorum,
            epoch=new_epoch,
            created_by=self.config.node_id,
            created_at=self.now(),
            rng=self._rng,
        )
        data = sd.to_bytes()
        info = DomainInfo(old.domain_id, new_epoch, proposal.quorum, len(proposal.certificates_der))
        retired = RetiredEpoch(old_info.epoch, old_header_hash, self.now())
        self._store.rotate(old, info, data, retired)
        self._store.note_epoch(old.domain_id, new_epoch)
        if old_sd:  # the custodians this rotation removed are told of the new epoch too
            kept = {slot.thumbprint.hex() for slot in sd.header.slots}
            before = {s.thumbprint.hex() for s in sdfile.SecurityDomainFile.from_bytes(old_sd).header.slots}
            former = sorted((set(self._former_custodians()) | before) - kept)
            self._store.set_flag("former-custodians", json.dumps(former))
        self.lifecycle.rotate_to(info)
        self._refresh_notice()  # the new header is announced to its custodians' agents
        session.new_sd_file = data
        self._audit(
            "rotated",
            "node",
            {
                "session_id": session.session_id,
                "domain_id": old.domain_id.hex(),
                "retired_epoch": retired.epoch,
                "epoch": new_epoch,
                "quorum": proposal.quorum,
                "custodians": [s.name for s in sd.header.slots],
                "sd_file_sha256": hashlib.sha256(data).hexdigest(),
                "retired_sd_header_sha256": old_header_hash.hex(),
            },
        )

    async def tick(self) -> None:
        """Apply session deadlines and close due refusal windows (called periodically by the server)."""
        self.audit_log.close_refusal_windows()
        if self._session is not None:
            self._ended(self._session)
        if self.state is NodeState.ACTIVATED and self.now() >= self.keys.next_purge_check:
            self.keys.purge_expired_keys_now()

    def _ended(self, s: Ceremony) -> bool:
        """Whether ``s`` has finished, its deadline applied first. Whichever path finds a session
        ended (this ticker, an agent's request stream, a late answer, the next session) applies it,
        once: a drill's results and every end's audit entry never depend on which came first."""
        if not s.tick(self.now()):
            return False
        if s.session_id not in self._applied:
            log.warning("%s session %s ended: %s", s.kind, s.session_id, s.message)
            self._after_change(s)
        return True

    async def watch(self, session_id: str) -> AsyncIterator[CeremonyStatus]:
        session = self._session_by_id(session_id)
        last: CeremonyStatus | None = None
        while True:
            token = self.change_token()
            await self.tick()
            st = session.status()
            if st != last:
                yield st
                last = st
            if st.state in (SessionState.COMPLETED, SessionState.FAILED):
                return  # decided on the status just sent, so the final state is always sent
            await self.wait_change(token, timeout=1.0)

    # ------------------------------------------------------------------ custody lifecycle

    def _require_healthy_domain(self, what: str) -> tuple[sdfile.SignedHeader, sdfile.DomainSecrets]:
        self.lifecycle.require_active()
        if self.compromised:
            raise StateError(
                f"the domain is marked compromised: no {what}; provision a new domain (docs/runbooks/compromise.md)"
            )
        data = self._store.sd_file()
        if data is None or self.lifecycle.domain is None:
            raise StateError("this node holds no SD file: it was activated by an older version")
        return sdfile.SecurityDomainFile.from_bytes(data).signed_header, self.lifecycle.domain

    async def start_drill(self, reason: str, ttl_seconds: int, caller: Role) -> DrillSession:
        async with self._lock:
            signed, _ = self._require_healthy_domain("drills")
            session = self._new_session(DrillSession, reason, ttl_seconds, caller)
            session.start(signed, self.now(), self._sign_attestation)
            self._check_agent_keys()
            self._notify()
            return session

    async def propose_rotation(
        self, certificates: Sequence[bytes], quorum: int, reason: str, ttl_seconds: int, caller: Role
    ) -> RotationSession:
        async with self._lock:
            signed, secrets = self._require_healthy_domain("rotation")
            now = self.now()
            plan = policy.validate_download(certificates, quorum, datetime.fromtimestamp(now, tz=UTC))
            self._refuse_lost_keys(signed.header, plan.certificates_der)
            session = self._new_session(RotationSession, reason, ttl_seconds, caller)
            proposal = RotationProposal(
                domain_id=secrets.domain_id,
                from_epoch=signed.header.epoch,
                quorum=plan.quorum,
                certificates_der=plan.certificates_der,
                proposer=str(caller),
                reason=session.reason,
                expires_at=session.expires_at,
            )
            session.start(signed, proposal, now, self._sign_attestation)
            current = [(slot.name, slot.certificate_der) for slot in signed.header.slots]
            for warning in plan.warnings:
                log.warning("rotation %s: %s", session.session_id, warning)
            self._audit(
                "rotation-proposed",
                caller,
                {
                    "session_id": session.session_id,
                    "proposal": proposal.summary(current),
                    "warnings": list(plan.warnings),
                },
            )
            self._notify()
            return session

    def _refuse_lost_keys(self, header: sdfile.Header, certificates_der: Sequence[bytes]) -> None:
        """A key recorded lost or compromised since this epoch was sealed must not hold a share of
        the next one: a lost key means compromise, and the quarterly review counts a loss from an
        earlier epoch as healed by the rotation that followed it."""
        records = self._store.custody_records()
        # Keys are compared by SPKI SHA-256: a fresh certificate over a lost key is that lost key.
        lost_keys: dict[bytes, tuple[str, str]] = {}
        for r in records:
            if r.kind in LOSS_KINDS and r.key_sha256 and r.custodian is not None:
                lost_keys[r.key_sha256] = (r.custodian, r.kind)  # whenever, under whatever name
        lost = {r.custodian: r.kind for r in records if r.kind in LOSS_KINDS and r.time >= header.created_at}
        for slot in header.slots:  # records made before they named their key: this epoch's, by name
            if slot.name in lost:
                lost_keys.setdefault(pki.spki_sha256(slot.certificate_der), (slot.name, lost[slot.name]))
        for der in certificates_der:
            found = lost_keys.get(pki.spki_sha256(der))
            if found is not None:
                name, kind = found
                raise UsageError(
                    f"the new roster keeps {name}'s key, which is recorded {kind}, under "
                    f"{pki.load_cert(der).subject.rfc4514_string() or 'a certificate'}: "
                    f"give {name} a new wrapping key (custodian-agent keygen), or leave that key out"
                )

    async def start_azure_restore(
        self, sd_file: bytes, exchange_cert: bytes, reason: str, ttl_seconds: int, caller: Role
    ) -> AzureRestoreSession:
        """Coordinate an Azure restore: the node's own state and domain are not touched, and no share
        of the domain this node holds goes into it (module docstring)."""
        async with self._lock:
            if self.compromised:
                reason = (
                    "the domain on this node is marked compromised: no Azure restore here; "
                    "use a new node (docs/runbooks/compromise.md)"
                )
                self._audit("azure-restore-refused", caller, {"reason": reason})
                raise StateError(reason)
            thumbprints, keys = self._held_custodian_keys()
            session = self._new_session(AzureRestoreSession, reason, ttl_seconds, caller)
            try:
                session.start(
                    sd_file,
                    exchange_cert,
                    self.now(),
                    self._sign_attestation,
                    held_thumbprints=thumbprints,
                    held_keys=keys,
                )
            except SdquorumError as e:
                session.abort(f"the Azure file or exchange certificate was refused: {e}")
                self._audit(
                    "azure-restore-refused",
                    caller,
                    {"session_id": session.session_id, "reason": str(e)},
                )
                self._after_change(session)
                raise
            destination = session.destination_certificate
            self._audit(
                "azure-restore-file-accepted",
                caller,
                {
                    "session_id": session.session_id,
                    "sd_file_sha256": hashlib.sha256(sd_file).hexdigest(),
                    "exchange_certificate_sha256": hashlib.sha256(destination).hexdigest(),
                    "exchange_key_spki_sha256": pki.spki_sha256(destination).hex(),
                },
            )
            self._notify()
            return session

    def _held_custodian_keys(self) -> tuple[frozenset[bytes], frozenset[bytes]]:
        """Thumbprints and SPKI digests of every custodian certificate of the domain this node holds
        (none on a node that holds no domain)."""
        data = self._store.sd_file()
        if data is None or self.lifecycle.domain is None:
            return frozenset(), frozenset()
        slots = sdfile.SecurityDomainFile.from_bytes(data).header.slots
        return (
            frozenset(slot.thumbprint for slot in slots),
            frozenset(pki.spki_sha256(slot.certificate_der) for slot in slots),
        )

    def azure_transfer_file(self, session_id: str) -> bytes:
        session = self._session_by_id(session_id)
        if not isinstance(session, AzureRestoreSession) or session.transfer_file is None:
            raise StateError(f"session {session_id} has no Azure transfer file (it has not completed)")
        return session.transfer_file

    def security_domain_file(self, fmt: str = "native") -> bytes:
        """The current epoch's SD file; ``azure``: the same payload as an Azure version-2 file, split
        anew to the same custodians and quorum (their keys open it with Azure's own tools too, each
        custodian handing over its private key). Its one item is tagged ``AZURE_PAYLOAD_TAG``, so no
        sdquorum node and no agent turns it into a transfer file (module docstring)."""
        self.lifecycle.require_active()
        data = self._store.sd_file()
        if data is None or self.lifecycle.domain is None:
            raise StateError("this node holds no SD file")
        if fmt in ("", "native"):
            return data
        if fmt != "azure":
            raise UsageError(f"SD file format {fmt!r}: use native or azure")
        header = sdfile.SecurityDomainFile.from_bytes(data).header
        azure = seal_azure_domain(
            [(AZURE_PAYLOAD_TAG, self.lifecycle.domain.to_bytes())],
            [slot.certificate_der for slot in header.slots],
            header.quorum,
            self._rng,
        )
        self._audit("sd-file-exported", "admin", {"format": "azure", "epoch": header.epoch})
        return azure.to_bytes()

    def add_custody_record(self, record: CustodyRecord, caller: Role) -> CustodyRecord:
        self.lifecycle.require_active()
        stamped = CustodyRecord(
            time=self.now(),
            kind=record.kind,
            custodian=record.custodian,
            holder=record.holder,
            location=record.location,
            note=record.note,
            actor=str(caller),
        )
        slots = {s.name: s for s in self._current_header().slots}
        names = set(slots)
        if stamped.kind in LOSS_KINDS and stamped.custodian in slots:  # the key, not only the name
            stamped = replace(stamped, key_sha256=pki.spki_sha256(slots[stamped.custodian].certificate_der))
        if (
            stamped.custodian is not None
            and stamped.custodian not in names
            and stamped.kind not in ("lost", "compromised")
        ):
            raise UsageError(
                f"{stamped.custodian!r} is not a custodian of this epoch: use one of {', '.join(sorted(names))}"
            )
        self._store.add_custody_record(stamped)
        self._audit(f"custody-{stamped.kind}", caller, stamped.to_json())
        return stamped

    def mark_compromised(self, reason: str, caller: Role) -> None:
        self.lifecycle.require_active()
        if not reason.strip():
            raise UsageError("say why the domain is compromised (--reason)")
        if self._session is not None and not self._session.finished:
            self._session.abort("the domain was marked compromised")
            self._after_change(self._session)
        self._store.set_flag("compromised", reason.strip()[:500])
        self._audit("domain-compromised", caller, {"reason": reason.strip()[:500]})
        self._notify()

    def custody_state(self) -> dict[str, Any]:
        self.lifecycle.require_active()
        signed = self._current_signed()
        return {
            "node_id": self.config.node_id,
            "header": signed.header_bytes,
            "signature": signed.signature,
            "records": [r.to_json() for r in self._store.custody_records()],
            "drills": [r.to_json() for r in self._store.drill_results()],
            "retired": [r.to_json() for r in self._store.retired_epochs()],
            "compromised": self.compromised,
        }

    def _current_signed(self) -> sdfile.SignedHeader:
        data = self._store.sd_file()
        if data is None:
            raise StateError("this node holds no SD file")
        return sdfile.SecurityDomainFile.from_bytes(data).signed_header

    def _current_header(self) -> sdfile.Header:
        return self._current_signed().header
