"""The emulated HSM node: state machine, key store, data plane, and host of the coordinator.

States: PROVISIONED -> ACTIVATED (download), or PROVISIONED -> RECOVERY_PENDING -> ACTIVATED (a
recovery ceremony completes). The data plane is open only in ACTIVATED. At most one ceremony
(recovery, drill, rotation) runs at a time; a node restart drops a running session (its exchange
key lived only in memory). A node that was never activated is RECOVERY_PENDING only while a
recovery session runs: when that session fails (deadline, refused file, cancel) or a restart drops
it, the node is PROVISIONED again, so either a download or a new recovery may follow.

Sessions under the operator's control. A step refused with "nothing was changed" (the data volume
full or read-only) leaves nothing running: a session whose opening could not be written is
forgotten (:meth:`Node._opening`), and a recovery upload whose acceptance could not be written ends
its session before any custodian is asked. An admin may cancel the running session
(:meth:`Node.cancel_session`): it ends FAILED with "cancelled by <admin>: <reason>". Every end
of a session is logged and audited once, as ``<kind>-completed`` or ``<kind>-failed`` with its
``reason`` (:meth:`Node._after_change`).
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
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
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
from hsm_node import keyops
from hsm_node.cryptopool import CryptoPool, sign_batch_here
from hsm_node.keyops import KeyType
from hsm_node.store import DomainInfo, NodeStore, StoredKey
from sdquorum import audit, backup, envelopes, pki, policy, sdfile
from sdquorum.azure.ceremony import AZURE_PAYLOAD_TAG, AzureAnswer
from sdquorum.azure.sdfile import seal_azure_domain
from sdquorum.errors import (
    AlreadyExistsError,
    NotFoundError,
    PermissionDeniedError,
    SdquorumError,
    StateError,
    StorageError,
    UsageError,
    VerificationError,
)
from sdquorum.pki import Role
from sdquorum.refusals import Refusal, RefusalWindows
from sdquorum.review import LOSS_KINDS, CustodyRecord, DrillResult, RetiredEpoch
from sdquorum_rpc.observability import SESSION_ID, NodeMetrics
from sdquorum_rpc.packed import Packed

__all__ = ["KeyCaller", "Node", "NodeConfig", "NodeState"]

C = TypeVar("C", bound=Ceremony)

log = logging.getLogger("sdquorum.node")

PROVISIONED, RECOVERY_PENDING, ACTIVATED = "PROVISIONED", "RECOVERY_PENDING", "ACTIVATED"
NodeState = str
MAX_KEY_NAME = 128


def _check_key_name(name: str) -> str:
    """Key names are 1..MAX_KEY_NAME printable characters: checked before any lookup, so a name
    never travels further (into an error message, a log or the audit log) than that."""
    if not name or len(name) > MAX_KEY_NAME or not name.isprintable():
        raise UsageError(f"key names are 1..{MAX_KEY_NAME} printable characters")
    return name


DEFAULT_SESSION_SECONDS = 600
MAX_SESSION_SECONDS = 24 * 3600
DEFAULT_KEY_RETENTION_DAYS = 90  # as the seed's managed HSM keeps a deleted key until purged
MAX_KEY_RETENTION_DAYS = 3650
PURGE_CHECK_SECONDS = 600  # how often the ticker looks for deleted keys past their retention
DAY = 86400


@dataclass(frozen=True)
class KeyCaller:
    """Who calls the data plane: the role from the certificate, and (over mTLS) the certificate's
    subject and the SHA-256 of its SubjectPublicKeyInfo, recorded in the key audit entries."""

    role: Role
    subject: str = ""
    spki_sha256: str = ""

    def who(self) -> dict[str, str]:
        out = {"by": str(self.role)}
        if self.subject:
            out["subject"] = self.subject
        if self.spki_sha256:
            out["spki_sha256"] = self.spki_sha256
        return out


def _caller(caller: KeyCaller | Role) -> KeyCaller:
    return caller if isinstance(caller, KeyCaller) else KeyCaller(caller)


def _day(t: int) -> str:
    return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")


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
        self._refusals = RefusalWindows()
        self._agent_keys: dict[str, bytes] = {}  # custodian name -> SPKI SHA-256 its agent's hello showed
        # (custodian name, thumbprint, CN of the certificate it sent or "") -> its open streams
        self._streams: dict[tuple[str, bytes, str], int] = {}
        self._domain: sdfile.DomainSecrets | None = None
        self._info: DomainInfo | None = None
        self._notice: tuple[str, sdfile.SignedHeader] | None = None  # (id, current signed header)
        loaded = store.load_domain()
        state = store.state()
        if loaded is not None:
            self._domain, self._info = loaded
        self._refresh_notice()
        self._state: NodeState = state or PROVISIONED  # mirrors the database; read on every data-plane call
        if state is None:
            store.set_state(PROVISIONED)
            self.audit("node-provisioned", "node", {"node_id": config.node_id})
        elif state == ACTIVATED and loaded is None:
            raise StateError(
                "the node database says ACTIVATED but holds no domain: restore the data directory"
            )
        self._next_purge_check = 0
        if self._state == ACTIVATED:
            self._purge_expired_keys_now()
        if self._state == RECOVERY_PENDING and self._domain is None:
            self._back_to_provisioned("the node restarted: its recovery session was dropped")

    # ------------------------------------------------------------------ queries

    def now(self) -> int:
        return int(self._clock())

    @property
    def state(self) -> NodeState:
        return self._state

    @property
    def domain_info(self) -> DomainInfo | None:
        return self._info

    @property
    def session(self) -> Ceremony | None:
        return self._session

    @property
    def compromised(self) -> bool:
        return self._store.flag("compromised") is not None

    # ------------------------------------------------------------------ audit

    def audit_chain(self) -> str:
        return "domain" if self._domain is not None else "provisioning"

    def audit(self, event: str, actor: str | Role, details: dict[str, Any], chain: str | None = None) -> None:
        chain = chain or self.audit_chain()
        last = self._store.last_audit(chain)
        prev = audit.AuditEntry.from_json(json.loads(last)) if last else None
        entry = audit.make_entry(
            prev,
            time=self.now(),
            event=event,
            actor=str(actor),
            details=details,
            key=self.config.attestation_key,
        )
        self._store.append_audit(chain, entry.seq, json.dumps(entry.to_json(), sort_keys=True))

    def audit_refusal(self, refusal: Refusal) -> bool:
        """A refused call (its reason comes bounded from sdquorum_rpc.errors, its caller named by
        certificate subject and public-key SHA-256): the peer's first of its (method, code) in the
        window is written now, later ones are counted into the window's closing entry. True if
        this refusal was written in full."""
        records = self._refusals.refused(refusal, self.now())
        for rec in records:
            self.audit(rec.event, rec.actor, rec.details)
        return any(rec.event == "refused" for rec in records)

    def close_refusal_windows(self, *, all_open: bool = False) -> None:
        """Write the counts of the refusal windows that have ended (``all_open``: of every window,
        on shutdown, so no count is lost)."""
        now = self.now()
        done = self._refusals.close_all(now) if all_open else self._refusals.close_due(now)
        for rec in done:
            try:
                self.audit(rec.event, rec.actor, rec.details)
            except Exception:  # the ticker and the shutdown go on; the counts at least reach the log
                log.exception("could not audit %s by %s: %s", rec.event, rec.actor, json.dumps(rec.details))

    def export_audit(self, chain: str) -> list[str]:
        if chain not in ("domain", "provisioning"):
            raise UsageError("the audit chain is 'domain' or 'provisioning'")
        entries = [audit.AuditEntry.from_json(json.loads(e)) for e in self._store.audit_entries(chain)]
        return audit.export_lines(
            entries,
            node_id=self.config.node_id,
            certificate_der=self.config.attestation_cert_der,
            key=self.config.attestation_key,
            time=self.now(),
        )

    def _start_domain_chain(self, event: str, details: dict[str, Any]) -> None:
        head = self._store.last_audit("provisioning")
        details = {**details, "provisioning_head": json.loads(head)["hash"] if head else audit.GENESIS.hex()}
        self.audit(event, "node", details, chain="domain")

    def key_count(self) -> int:
        return self._store.count_keys()

    def _refresh_notice(self) -> None:
        """The notice agents are sent: the current SD file's signed header, while a domain is held."""
        data = self._store.sd_file() if self._domain is not None else None
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
            if self.state != PROVISIONED or self._domain is not None:
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
            with self._store.batch():
                self._store.activate(secrets, info, ACTIVATED, data)
                self._store.note_epoch(secrets.domain_id, 1)
            self._state, self._domain, self._info = ACTIVATED, secrets, info
            self._refresh_notice()
            self._start_domain_chain(
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
            if self.state == ACTIVATED:
                raise StateError("this node is already activated: recovery runs on a new, provisioned node")
            with self._opening():
                session = self._new_session(RecoverySession, reason, ttl_seconds, caller)
                self._store.set_state(RECOVERY_PENDING)
            self._state = RECOVERY_PENDING
            self._notify()
            return session

    @contextlib.contextmanager
    def _opening(self) -> Iterator[None]:
        """Open a session inside this block, its writes in one transaction: if any of them fails (a
        full or read-only data volume: "nothing was changed"), the new session is forgotten, so
        nothing runs and the next session is not blocked until its deadline."""
        previous = self._session
        try:
            with self._store.batch():
                yield
        except StorageError as e:
            dropped = self._session
            self._session = previous
            if dropped is not None and dropped is not previous:
                self._applied.add(dropped.session_id)
                log.error("%s session %s not opened: %s", dropped.kind, dropped.session_id, e)
            raise

    def _back_to_provisioned(self, why: str) -> None:
        """A node never activated whose recovery ended without completing is PROVISIONED again."""
        if self._domain is not None or self._state != RECOVERY_PENDING:
            return
        try:
            self._store.set_state(PROVISIONED)
        except StorageError as e:  # memory mirrors the disk: tried again at the next start
            log.error("could not return the node to PROVISIONED (%s): %s", why, e)
            return
        self._state = PROVISIONED
        log.warning("node back to PROVISIONED: %s", why)

    async def cancel_session(self, session_id: str, reason: str, caller: Role) -> CeremonyStatus:
        """End the running session FAILED, "cancelled by <caller>: <reason>" (audited by the end)."""
        async with self._lock:
            session = self._session_by_id(session_id)
            if self._ended(session):
                raise StateError(
                    f"session {session_id} has ended already ({session.state.name}): nothing to cancel"
                )
            if not reason.strip() or len(reason) > 500 or not reason.isprintable():
                raise UsageError("give a reason of 1..500 printable characters: it goes into the audit log")
            session.abort(f"cancelled by {caller}: {reason.strip()}")
            self._after_change(session)
            return session.status()

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
        SESSION_ID.set(session.session_id)
        self.audit(
            f"{session.kind}-started",
            caller,
            {"session_id": session.session_id, "reason": session.reason, "expires_at": session.expires_at},
        )
        self._session = session  # only once its start is audited
        log.info("%s session %s started by %s: %s", session.kind, session.session_id, caller, reason)
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
                self.audit("sd-file-refused", "admin", {"session_id": session_id, "reason": str(e)[:500]})
                self._after_change(session)  # the session's end is applied and audited now: nothing runs
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
            self._notify()
            self._in_background(self._prepare(session), "computing the public shares")
            return session.status()

    def _record_upload(self, session: RecoverySession, sd: sdfile.SecurityDomainFile, data: bytes) -> None:
        """Record an accepted SD file; if that cannot be written, end the session before any
        custodian is asked (a refused upload never asks, nor activates later) and raise."""
        try:
            with self._store.batch():
                self._store.note_epoch(sd.header.domain_id, sd.header.epoch)
                self.audit(
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
                self._after_change(session)
            self._applied.add(session.session_id)
            self._notify()
            raise

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
                    self.audit(
                        "drill-slot-rejected",
                        "node",
                        {"session_id": s.session_id, "custodian": slot.name, "x": slot.x, "reason": reason},
                    )
        self._after_change(s)

    def export_requests(self, session_id: str) -> list[tuple[str, CustodianRequest]]:
        """Every open request with its custodian's name, for offline request files."""
        s = self._session_by_id(session_id)
        names = {p.x: p.name for p in s.status().custodians}
        self.audit("offline-requests-exported", "admin", {"session_id": session_id})
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
        loaded = self._store.load_domain()
        self._domain, self._info = loaded if loaded is not None else (None, None)
        self._state = self._store.state() or PROVISIONED
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
            self.audit(f"{session.kind}-late-answer-{verdict}", caller, {**details, **extra})
        elif outcome.accepted:
            log.info(
                "session %s: %s (x=%d) answered via %s: accepted",
                session.session_id,
                outcome.name,
                outcome.x,
                caller,
            )
            self.audit(f"{session.kind}-answer-accepted", caller, details)
        else:
            log.warning(
                "session %s: answer of %s (x=%d) REJECTED via %s: %s",
                session.session_id,
                outcome.name,
                outcome.x,
                caller,
                outcome.reason,
            )
            self.audit(f"{session.kind}-answer-rejected", caller, {**details, "reason": outcome.reason})
        self._after_change(session)

    def _audit_refused(
        self, session: Ceremony, what: str, caller: Role, request_id: str, error: SdquorumError
    ) -> None:
        """``<kind>-answer-refused`` or ``<kind>-denial-refused``: what a custodian sent failed a check."""
        self.audit(
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
            self.audit(
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
            if session.state is SessionState.FAILED:
                log.warning("%s session %s failed: %s", session.kind, session.session_id, session.message)
            if not (isinstance(session, RecoverySession) and session.state is SessionState.COMPLETED):
                failed = session.state is SessionState.FAILED
                self.audit(
                    f"{session.kind}-{session.state.name.lower()}",
                    "node",
                    {
                        "session_id": session.session_id,
                        "message": session.message,
                        **({"reason": session.message} if failed else {}),
                    },
                )
            if isinstance(session, RecoverySession) and session.state is SessionState.FAILED:
                self._back_to_provisioned(f"recovery session {session.session_id} failed")
        self._notify()

    def _apply_recovery(self, session: RecoverySession) -> None:
        secrets, sd = session.result, session.sd_file
        if secrets is None or sd is None:  # pragma: no cover - COMPLETED implies both
            raise StateError("the session completed without a result")
        h = sd.header
        info = DomainInfo(h.domain_id, h.epoch, h.quorum, h.n)
        data = self._recovery_file or sd.to_bytes()
        self.audit(
            "recovery-completed", "node", {"session_id": session.session_id, "message": session.message}
        )
        self._store.activate(secrets, info, ACTIVATED, data)
        self._store.note_epoch(h.domain_id, h.epoch)
        self._state, self._domain, self._info = ACTIVATED, secrets, info
        self._refresh_notice()
        if self._notice is not None:  # its agents just checked (and remember) this very header: no
            self._announced |= {self._notice[0]}  # stream is woken for it; one that connects gets it
        released = [c.name for c in session.status().custodians if c.status.name == "ACCEPTED"]
        self._start_domain_chain(
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
        self._store.add_rows("drills", "result", [json.dumps(r.to_json(), sort_keys=True) for r in results])
        self.audit(
            "drill-results",
            "node",
            {"session_id": session.session_id, "results": {r.custodian: r.outcome for r in results}},
        )

    def _apply_rotation(self, session: RotationSession) -> None:
        proposal, old = session.proposal, self._domain
        if proposal is None or old is None or self._info is None:  # pragma: no cover - set when it started
            raise StateError("the rotation has no proposal or the node no domain")
        old_sd = self._store.sd_file()
        old_header_hash = (
            sdfile.SecurityDomainFile.from_bytes(old_sd).signed_header.sha256 if old_sd else bytes(32)
        )
        new_epoch = self._info.epoch + 1
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
        retired = RetiredEpoch(self._info.epoch, old_header_hash, self.now())
        self._store.rotate(old, info, data, retired.epoch, json.dumps(retired.to_json(), sort_keys=True))
        self._store.note_epoch(old.domain_id, new_epoch)
        if old_sd:  # the custodians this rotation removed are told of the new epoch too
            kept = {slot.thumbprint.hex() for slot in sd.header.slots}
            before = {s.thumbprint.hex() for s in sdfile.SecurityDomainFile.from_bytes(old_sd).header.slots}
            former = sorted((set(self._former_custodians()) | before) - kept)
            self._store.set_flag("former-custodians", json.dumps(former))
        self._info = info
        self._refresh_notice()  # the new header is announced to its custodians' agents
        session.new_sd_file = data
        self.audit(
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
        self.close_refusal_windows()
        if self._session is not None:
            self._ended(self._session)
        if self._state == ACTIVATED and self.now() >= self._next_purge_check:
            self._purge_expired_keys_now()

    def _ended(self, s: Ceremony) -> bool:
        """Whether ``s`` has finished, its deadline applied first. Whichever path finds a session
        ended (this ticker, an agent's request stream, a late answer, the next session) applies it,
        once: a drill's results and every end's audit entry never depend on which came first."""
        if not s.tick(self.now()):
            return False
        if s.session_id not in self._applied:
            self._after_change(s)
        return True

    def session_status(self, session_id: str = "") -> CeremonyStatus:
        """The status of session ``session_id`` (empty: the current or last one), deadline applied."""
        session = self._session_or_current(session_id)
        self._ended(session)
        return session.status()

    def _session_or_current(self, session_id: str) -> Ceremony:
        if session_id:
            return self._session_by_id(session_id)
        if self._session is None:
            raise StateError("no session has run on this node since it started")
        return self._session_by_id(self._session.session_id)

    async def watch(self, session_id: str) -> AsyncIterator[CeremonyStatus]:
        session = self._session_or_current(session_id)
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
        self._dek()
        if self.compromised:
            raise StateError(
                f"the domain is marked compromised: no {what}; provision a new domain (docs/runbooks/compromise.md)"
            )
        data = self._store.sd_file()
        if data is None or self._domain is None:
            raise StateError("this node holds no SD file: it was activated by an older version")
        return sdfile.SecurityDomainFile.from_bytes(data).signed_header, self._domain

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
            with self._opening():  # the proposal unaudited: no session
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
                self.audit(
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
        records = [CustodyRecord.from_json(json.loads(r)) for r in self._store.rows("custody", "record")]
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
                self.audit("azure-restore-refused", caller, {"reason": reason})
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
                self.audit(
                    "azure-restore-refused",
                    caller,
                    {"session_id": session.session_id, "reason": str(e)},
                )
                self._after_change(session)
                raise
            destination = session.destination_certificate
            self.audit(
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
        if data is None or self._domain is None:
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
        self._dek()
        data = self._store.sd_file()
        if data is None or self._domain is None:
            raise StateError("this node holds no SD file")
        if fmt in ("", "native"):
            return data
        if fmt != "azure":
            raise UsageError(f"SD file format {fmt!r}: use native or azure")
        header = sdfile.SecurityDomainFile.from_bytes(data).header
        azure = seal_azure_domain(
            [(AZURE_PAYLOAD_TAG, self._domain.to_bytes())],
            [slot.certificate_der for slot in header.slots],
            header.quorum,
            self._rng,
        )
        self.audit("sd-file-exported", "admin", {"format": "azure", "epoch": header.epoch})
        return azure.to_bytes()

    def add_custody_record(self, record: CustodyRecord, caller: Role) -> CustodyRecord:
        self._dek()
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
        self._store.add_rows("custody", "record", [json.dumps(stamped.to_json(), sort_keys=True)])
        self.audit(f"custody-{stamped.kind}", caller, stamped.to_json())
        return stamped

    def mark_compromised(self, reason: str, caller: Role) -> None:
        self._dek()
        if not reason.strip():
            raise UsageError("say why the domain is compromised (--reason)")
        if self._session is not None and not self._session.finished:
            self._session.abort("the domain was marked compromised")
            self._after_change(self._session)
        self._store.set_flag("compromised", reason.strip()[:500])
        self.audit("domain-compromised", caller, {"reason": reason.strip()[:500]})
        self._notify()

    def custody_state(self) -> dict[str, Any]:
        self._dek()
        signed = self._current_signed()
        return {
            "node_id": self.config.node_id,
            "header": signed.header_bytes,
            "signature": signed.signature,
            "records": [json.loads(r) for r in self._store.rows("custody", "record")],
            "drills": [json.loads(r) for r in self._store.rows("drills", "result")],
            "retired": [json.loads(r) for r in self._store.rows("retired", "record")],
            "compromised": self.compromised,
        }

    def _current_signed(self) -> sdfile.SignedHeader:
        data = self._store.sd_file()
        if data is None:
            raise StateError("this node holds no SD file")
        return sdfile.SecurityDomainFile.from_bytes(data).signed_header

    def _current_header(self) -> sdfile.Header:
        return self._current_signed().header

    # ------------------------------------------------------------------ data plane

    def _dek(self) -> bytes:
        if self.state != ACTIVATED or self._domain is None:
            raise StateError(
                "the node is not activated: download the security domain first (sdctl download), "
                "or recover it on a new node (sdctl recover)"
            )
        return self._domain.data_encryption_key

    async def create_key(
        self, name: str, kind: KeyType, caller: KeyCaller | Role, owner: str = ""
    ) -> StoredKey:
        """A new key owned by the caller, or (an admin only) by ``owner``: ``app`` or ``app/<name>``."""
        who = _caller(caller)
        self._dek()
        _check_key_name(name)
        owner = self._owner_for(who.role, owner)
        self._refuse_taken(name)
        # Generation (RSA-3072 takes ~0.1 s) runs off the event loop; the database is only ever
        # touched from the loop's thread, so writes never interleave on the one connection.
        public, private = await asyncio.to_thread(keyops.generate, kind)
        dek = self._dek()
        created = self.now()
        with self._store.batch():
            self._refuse_taken(name)  # made meanwhile, during the generation
            self._store.put_key(dek, name, int(kind), public, private, created, owner)
            self.audit(
                "key-created", who.role, {"name": name, "type": kind.name, "owner": owner, **who.who()}
            )
        log.info("key %s (%s) created for %s by %s", name, kind.name, owner, who.role)
        return StoredKey(name, int(kind), public, created, owner)

    @staticmethod
    def _owner_for(role: Role, owner: str) -> str:
        if role.kind not in ("admin", "app"):
            raise PermissionDeniedError(f"role {role} may not own keys")
        if not owner or owner == str(role):
            return str(role)
        if role.kind != "admin":
            raise PermissionDeniedError(f"{role} may create keys only for itself: leave the owner out")
        try:
            parsed = Role.parse(owner)
        except UsageError as e:
            raise UsageError(f"key owner {owner!r}: use admin, app or app/<name> ({e})") from e
        if parsed.kind not in ("admin", "app"):
            raise UsageError(f"key owner {owner!r}: use admin, app or app/<name>")
        return str(parsed)

    def _refuse_taken(self, name: str) -> None:
        found = self._store.find_key(name)
        if found is None:
            return
        if found.deleted_at is None:
            raise AlreadyExistsError(f"a key named {name!r} exists already: pick another name")
        raise AlreadyExistsError(
            f"a deleted key named {name!r} is kept until {_day(self._purge_time(found.deleted_at))}: "
            f"recover it (sdctl keys recover {name}) or purge it (sdctl keys purge {name} --yes) first"
        )

    def _purge_time(self, deleted_at: int) -> int:
        return deleted_at + self.config.key_retention_days * DAY

    def list_keys(self, caller: KeyCaller | Role) -> list[StoredKey]:
        """The live keys the caller may use; for an admin, every live key."""
        role = _caller(caller).role
        self._dek()
        return self._store.list_keys(owner=None if role.kind == "admin" else self._owner_for(role, ""))

    def list_deleted_keys(self, caller: KeyCaller | Role) -> list[StoredKey]:
        """The deleted keys still retained (admin only), each purged at :meth:`purge_time`."""
        self._require_admin(_caller(caller).role, "list deleted keys")
        self._dek()
        self.purge_expired_keys()
        return self._store.list_keys(deleted=True)

    def purge_time(self, key: StoredKey) -> int:
        return 0 if key.deleted_at is None else self._purge_time(key.deleted_at)

    def delete_key(self, name: str, caller: KeyCaller | Role) -> int:
        """Soft-delete a live key the caller manages; returns when it will be purged."""
        who = _caller(caller)
        self._dek()
        key = self._managed(name, who.role)
        if key.deleted_at is not None:
            raise NotFoundError(
                f"key {name!r} is deleted already: recover it (sdctl keys recover {name}) or purge it"
            )
        now = self.now()
        purge_at = self._purge_time(now)
        with self._store.batch():
            self._store.mark_deleted(name, now)
            self.audit(
                "key-deleted",
                who.role,
                {"name": name, "owner": key.owner, "purge_at": purge_at, **who.who()},
            )
        log.info("key %s of %s deleted by %s (kept until %s)", name, key.owner, who.role, _day(purge_at))
        return purge_at

    def recover_key(self, name: str, caller: KeyCaller | Role) -> StoredKey:
        """Undelete a retained key the caller manages."""
        who = _caller(caller)
        self._dek()
        self.purge_expired_keys()
        key = self._managed(name, who.role)
        if key.deleted_at is None:
            raise StateError(f"key {name!r} is not deleted: nothing to recover")
        with self._store.batch():
            self._store.mark_deleted(name, None)
            self.audit(
                "key-recovered",
                who.role,
                {"name": name, "owner": key.owner, "deleted_at": key.deleted_at, **who.who()},
            )
        log.info("key %s of %s recovered by %s", name, key.owner, who.role)
        return StoredKey(key.name, key.key_type, key.public_der, key.created_at, key.owner)

    def purge_key(self, name: str, caller: KeyCaller | Role) -> None:
        """Remove a deleted key for good (admin only): it cannot be recovered afterwards."""
        who = _caller(caller)
        self._require_admin(who.role, "purge keys")
        self._dek()
        key = self._store.find_key(_check_key_name(name))
        if key is None or key.deleted_at is None:
            raise NotFoundError(
                f"no deleted key named {name!r}: delete it first (sdctl keys delete {name}); "
                "list deleted keys with 'sdctl keys deleted'"
            )
        self._purge(key, who.role, {"reason": "purged by an admin", **who.who()})

    def purge_expired_keys(self) -> list[str]:
        """Purge every deleted key whose retention has ended, by the node's clock (audited, by
        the node). Called at start, by the ticker and before a deleted key is listed or recovered."""
        if self._domain is None:
            return []
        now = self.now()
        self._next_purge_check = now + PURGE_CHECK_SECONDS
        expired = self._store.deleted_before(now - self.config.key_retention_days * DAY)
        for key in expired:
            self._purge(
                key,
                "node",
                {"reason": f"retention of {self.config.key_retention_days} days ended", "by": "node"},
            )
        return [k.name for k in expired]

    def _purge_expired_keys_now(self) -> None:
        """:meth:`purge_expired_keys` from the start and the ticker: a failure (a full or read-only
        disk) is logged and tried again later. It leaves the keys deleted, so unusable: safe."""
        try:
            self.purge_expired_keys()
        except SdquorumError as e:
            log.error(
                "could not purge deleted keys past their retention (tried again in %d s): %s",
                PURGE_CHECK_SECONDS,
                e,
            )

    def _purge(self, key: StoredKey, actor: Role | str, who: dict[str, str]) -> None:
        with self._store.batch():
            self._store.purge_key(key.name)
            self.audit(
                "key-purged",
                actor,
                {"name": key.name, "owner": key.owner, "deleted_at": key.deleted_at, **who},
            )
        log.info("key %s of %s purged by %s", key.name, key.owner, actor)

    @staticmethod
    def _require_admin(role: Role, what: str) -> None:
        if role.kind != "admin":
            raise PermissionDeniedError(f"only an admin may {what}")

    def _managed(self, name: str, role: Role) -> StoredKey:
        """The key ``name``, live or deleted, if ``role`` may manage it (its owner, or an admin)."""
        key = self._store.find_key(_check_key_name(name))
        if key is None:
            raise NotFoundError(f"no key named {name!r}: list keys with 'sdctl keys list'")
        if role.kind != "admin" and key.owner != self._owner_for(role, ""):
            raise PermissionDeniedError(f"key {name!r} is not {role}'s: an app manages only its own keys")
        return key

    def _key(self, name: str, caller: KeyCaller | Role) -> tuple[StoredKey, bytes, KeyType]:
        """A live key its owner may use: anyone else is refused, an admin too (see the module)."""
        role = _caller(caller).role
        dek = self._dek()
        user = self._owner_for(role, "")

        def allow(key: StoredKey) -> None:
            if key.owner != user:
                raise PermissionDeniedError(
                    f"key {name!r} is not {role}'s to use: an admin can create a key for {role} "
                    f"(sdctl keys create NAME --owner {role})"
                )
            if key.deleted_at is not None:
                raise NotFoundError(
                    f"key {name!r} is deleted: an admin can recover it until "
                    f"{_day(self._purge_time(key.deleted_at))}"
                )

        info, private = self._store.get_key(dek, _check_key_name(name), allow)
        return info, private, KeyType(info.key_type)

    def encrypt(self, name: str, plaintext: bytes, aad: bytes, caller: KeyCaller | Role) -> bytes:
        _, private, kind = self._key(name, caller)
        return keyops.encrypt(kind, private, plaintext, aad)

    def decrypt(self, name: str, ciphertext: bytes, aad: bytes, caller: KeyCaller | Role) -> bytes:
        _, private, kind = self._key(name, caller)
        return keyops.decrypt(kind, private, ciphertext, aad)

    def sign(self, name: str, message: bytes, caller: KeyCaller | Role) -> bytes:
        _, private, kind = self._key(name, caller)
        return keyops.sign(kind, private, message)

    def encrypt_batch(
        self, name: str, plaintexts: Packed, aad: bytes | Packed, caller: KeyCaller | Role
    ) -> Packed:
        """Many plaintexts under one key opened once; ``aad`` for every item, or one per item."""
        _, private, kind = self._key(name, caller)
        return keyops.encrypt_batch(kind, private, plaintexts, aad)

    def sign_batch(self, name: str, messages: Packed, caller: KeyCaller | Role) -> Packed:
        """Many messages signed by one key opened once."""
        _, private, kind = self._key(name, caller)
        return keyops.sign_batch(kind, private, messages)

    async def encrypt_batch_async(
        self, name: str, plaintexts: Packed, aad: bytes | Packed, caller: KeyCaller | Role
    ) -> Packed:
        """:meth:`encrypt_batch` for the server: a batch big enough to pay for the trip goes to a
        worker process of :attr:`crypto_pool` (see :mod:`hsm_node.cryptopool`), so the server's
        thread goes on serving meanwhile. The key is read from the database here, on the event
        loop's thread, as every read is."""
        _, private, kind = self._key(name, caller)
        pool = self.crypto_pool
        if pool is not None and pool.wants(kind, plaintexts, private, aad):
            return await pool.encrypt_batch(kind, private, plaintexts, aad)
        return keyops.encrypt_batch(kind, private, plaintexts, aad)

    async def sign_batch_async(self, name: str, messages: Packed, caller: KeyCaller | Role) -> Packed:
        """:meth:`sign_batch` for the server: in a worker process of :attr:`crypto_pool` as
        :meth:`encrypt_batch_async`; otherwise :func:`~hsm_node.cryptopool.sign_batch_here` (an RSA
        batch in a thread)."""
        _, private, kind = self._key(name, caller)
        pool = self.crypto_pool
        if pool is not None and pool.wants(kind, messages, private):
            return await pool.sign_batch(kind, private, messages)
        return await sign_batch_here(kind, private, messages)

    def verify(self, name: str, message: bytes, signature: bytes, caller: KeyCaller | Role) -> bool:
        # Against the public key of the sealed private key, not the row's public column: the
        # column is not under the row's seal, so whoever can write the data directory could put
        # a key of theirs there and have their own signatures verify.
        _, private, kind = self._key(name, caller)
        return keyops.verify(kind, keyops.public_der(kind, private), message, signature)

    # ------------------------------------------------------------------ backup and restore

    def backup(self, caller: Role | str = "admin") -> bytes:
        """The key store as a version 2 backup: its rows (keys still sealed under the data
        encryption key; deleted keys still retained with their owner and deletion time, so a
        restore neither loses nor revives them) in an SQLite image, sealed under the domain's
        backup key and signed."""
        dek = self._dek()
        if self._domain is None:  # pragma: no cover - _dek checked it
            raise StateError("no domain")
        image, count = self._store.export_key_rows(dek)
        created = self.now()
        data = backup.seal_backup(
            self._domain,
            image,
            key_count=count,
            node_id=self.config.node_id,
            created_at=created,
            rng=self._rng,
        )
        self.audit("backup-exported", caller, {"keys": count, "created_at": created, "bytes": len(data)})
        return data

    def restore(self, data: bytes, caller: Role | str = "admin") -> int:
        """Replace the key store with a backup of this node's domain (version 2 or 1), in one
        transaction; a refused backup changes nothing. A restore rolls the key store back to the
        backup's day (keys deleted or purged since come back as they were then), so it is audited
        with the backup's origin. Keys deleted in the backup come back deleted, with their deletion
        time: those whose retention has ended since are purged at once (audited)."""
        dek = self._dek()
        if self._domain is None:  # pragma: no cover - _dek checked it
            raise StateError("no domain")
        opened = backup.open_backup(data, self._domain)
        if opened.key_rows is not None:
            self._store.import_key_rows(opened.key_rows, opened.header.key_count)
        else:
            self._store.replace_keys(dek, opened.keys)
        count = opened.header.key_count
        log.info("restored %d keys from a backup of domain %s", count, self._domain.domain_id.hex())
        self.audit(
            "key-store-restored",
            caller,
            {
                "keys": count,
                "backup_created_at": opened.header.created_at,
                "backup_node": opened.header.node_id,
            },
        )
        self.purge_expired_keys()
        return count
