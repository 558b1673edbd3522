"""The emulated HSM node: state machine, key store, data plane, and host of the coordinator.

States: PROVISIONED -> ACTIVATED (download), or PROVISIONED -> RECOVERY_PENDING -> ACTIVATED (a
recovery ceremony completes). The data plane is open only in ACTIVATED. At most one ceremony runs
at a time; a node restart drops a running session (its exchange key lived only in memory) and the
node stays RECOVERY_PENDING until a new session completes.

This class does no network I/O: the gRPC servicers in :mod:`hsm_node.server` call it. It owns the
clock and randomness it was given.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordinator import CeremonyStatus, RecoveryRequest, RecoverySession, SessionState
from hsm_node import keyops
from hsm_node.keyops import KeyType
from hsm_node.store import DomainInfo, NodeStore, StoredKey
from sdquorum import backup, envelopes, policy, sdfile
from sdquorum.errors import SdquorumError, StateError, UsageError, VerificationError
from sdquorum.pki import Role

__all__ = ["Node", "NodeConfig", "NodeState"]

log = logging.getLogger("sdquorum.node")

PROVISIONED, RECOVERY_PENDING, ACTIVATED = "PROVISIONED", "RECOVERY_PENDING", "ACTIVATED"
NodeState = str
MAX_KEY_NAME = 128
DEFAULT_SESSION_SECONDS = 600
MAX_SESSION_SECONDS = 24 * 3600


@dataclass(frozen=True)
class NodeConfig:
    node_id: str
    address: str
    data_dir: Path
    attestation_key: Ed25519PrivateKey
    attestation_cert_der: bytes
    default_session_seconds: int = DEFAULT_SESSION_SECONDS


class Node:
    def __init__(
        self,
        config: NodeConfig,
        store: NodeStore,
        *,
        clock: Callable[[], float] = time.time,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.config = config
        self.address = config.address
        self._store = store
        self._clock = clock
        self._rng = rng
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._session: RecoverySession | None = None
        self._domain: sdfile.DomainSecrets | None = None
        self._info: DomainInfo | None = None
        loaded = store.load_domain()
        state = store.state()
        if loaded is not None:
            self._domain, self._info = loaded
        if state is None:
            store.set_state(PROVISIONED)
        elif state == ACTIVATED and loaded is None:
            raise StateError(
                "the node database says ACTIVATED but holds no domain: restore the data directory"
            )

    # ------------------------------------------------------------------ queries

    def now(self) -> int:
        return int(self._clock())

    @property
    def state(self) -> NodeState:
        return self._store.state() or PROVISIONED

    @property
    def domain_info(self) -> DomainInfo | None:
        return self._info

    @property
    def session(self) -> RecoverySession | None:
        return self._session

    def key_count(self) -> int:
        return self._store.count_keys()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def change_token(self) -> asyncio.Event:
        """Take this before reading state; ``wait_change`` with it then misses no change."""
        return self._changed

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
            self._store.activate(secrets, info, ACTIVATED)
            self._domain, self._info = secrets, info
            log.info(
                "activated: domain %s, quorum %d of %d, by %s",
                secrets.domain_id.hex(),
                quorum,
                info.custodians,
                caller,
            )
            self._notify()
            return sd.to_bytes(), list(plan.warnings)

    # ------------------------------------------------------------------ recovery

    async def init_recovery(self, reason: str, ttl_seconds: int, caller: Role) -> RecoverySession:
        async with self._lock:
            if self.state == ACTIVATED:
                raise StateError("this node is already activated: recovery runs on a new, provisioned node")
            if self._session is not None and not self._session.tick(self.now()):
                raise StateError(
                    f"recovery session {self._session.session_id} is still running: wait for it to end or for its deadline"
                )
            if not reason.strip() or len(reason) > 500:
                raise UsageError("give a reason of 1..500 characters: custodians see it before approving")
            ttl = ttl_seconds or self.config.default_session_seconds
            if not 10 <= ttl <= MAX_SESSION_SECONDS:
                raise UsageError(f"the session deadline must be 10..{MAX_SESSION_SECONDS} seconds")
            now = self.now()
            self._session = RecoverySession(
                session_id=self._rng(16).hex(),
                node_id=self.config.node_id,
                node_address=self.address,
                initiator=str(caller),
                reason=reason.strip(),
                created_at=now,
                expires_at=now + ttl,
                rng=self._rng,
            )
            self._store.set_state(RECOVERY_PENDING)
            log.info("recovery session %s started by %s: %s", self._session.session_id, caller, reason)
            self._notify()
            return self._session

    def _session_by_id(self, session_id: str) -> RecoverySession:
        s = self._session
        if s is None or s.session_id != session_id:
            raise StateError(
                f"no recovery session {session_id!r} on this node: start one with 'sdctl recover'"
            )
        return s

    async def upload_sd_file(self, session_id: str, data: bytes) -> CeremonyStatus:
        async with self._lock:
            session = self._session_by_id(session_id)
            try:
                sd = sdfile.SecurityDomainFile.from_bytes(data)  # verifies the header signature first
                session.load_sd_file(sd, self.now(), self._sign_attestation)
            except SdquorumError as e:
                session.abort(f"the SD file was refused: {e}")  # a retry with the right file need not wait
                self._notify()
                raise
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
            return session.status()

    def _sign_attestation(self, statement: envelopes.ExchangeStatement) -> envelopes.Attestation:
        return envelopes.sign_attestation(
            statement, self.config.attestation_key, self.config.attestation_cert_der
        )

    def pending_requests(self, thumbprint: bytes) -> list[RecoveryRequest]:
        s = self._session
        if s is None or s.tick(self.now()):
            return []
        return s.requests_for(thumbprint)

    def mark_delivered(self, request: RecoveryRequest) -> None:
        s = self._session
        if s is not None and s.session_id == request.session_id:
            s.mark_delivered(request.request_id)
            self._notify()

    async def submit_release(self, request_id: str, release: bytes, caller: Role) -> None:
        async with self._lock:
            session = self._require_session()
            outcome = session.submit(request_id, release, self.now())
            if outcome.accepted:
                log.info(
                    "session %s: share of %s (x=%d) accepted from %s",
                    session.session_id,
                    outcome.name,
                    outcome.x,
                    caller,
                )
            else:
                log.warning(
                    "session %s: share of %s (x=%d) REJECTED from %s: %s",
                    session.session_id,
                    outcome.name,
                    outcome.x,
                    caller,
                    outcome.reason,
                )
            if session.state is SessionState.COMPLETED:
                self._apply_recovery(session)
            self._notify()
            if not outcome.accepted:
                raise VerificationError(outcome.reason)

    async def deny(self, request_id: str, reason: str, caller: Role) -> None:
        async with self._lock:
            session = self._require_session()
            p = session.deny(request_id, reason, self.now())
            log.warning(
                "session %s: %s (x=%d) denied the request via %s: %s",
                session.session_id,
                p.name,
                p.x,
                caller,
                reason,
            )
            self._notify()

    def _require_session(self) -> RecoverySession:
        if self._session is None:
            raise StateError("no recovery session is running")
        return self._session

    def _apply_recovery(self, session: RecoverySession) -> None:
        secrets, sd = session.result, session.sd_file
        if secrets is None or sd is None:  # pragma: no cover - COMPLETED implies both
            raise StateError("the session completed without a result")
        h = sd.header
        info = DomainInfo(h.domain_id, h.epoch, h.quorum, h.n)
        self._store.activate(secrets, info, ACTIVATED)
        self._domain, self._info = secrets, info
        log.info(
            "session %s completed: node activated with domain %s epoch %d",
            session.session_id,
            h.domain_id.hex(),
            h.epoch,
        )

    async def tick(self) -> None:
        """Apply session deadlines (called periodically by the server)."""
        s = self._session
        if s is not None and not s.finished and s.tick(self.now()):
            log.warning("session %s failed: %s", s.session_id, s.message)
            self._notify()

    async def watch(self, session_id: str) -> AsyncIterator[CeremonyStatus]:
        session = self._session_by_id(session_id)
        last: CeremonyStatus | None = None
        while True:
            token = self.change_token()
            session.tick(self.now())
            st = session.status()
            if st != last:
                yield st
                last = st
            if st.state in (SessionState.COMPLETED, SessionState.FAILED):
                return  # decided on the status just sent, so the final state is always sent
            await self.wait_change(token, timeout=1.0)

    # ------------------------------------------------------------------ data plane

    def _dek(self) -> bytes:
        if self.state != ACTIVATED or self._domain is None:
            raise StateError(
                "the node is not activated: download the security domain first (sdctl download), "
                "or recover it on a new node (sdctl recover)"
            )
        return self._domain.data_encryption_key

    async def create_key(self, name: str, kind: KeyType) -> StoredKey:
        self._dek()
        if not name or len(name) > MAX_KEY_NAME or not name.isprintable():
            raise UsageError(f"key names are 1..{MAX_KEY_NAME} printable characters")
        # Generation (RSA-3072 takes ~0.1 s) runs off the event loop; the database is only ever
        # touched from the loop's thread, so writes never interleave on the one connection.
        public, private = await asyncio.to_thread(keyops.generate, kind)
        dek = self._dek()
        created = self.now()
        self._store.put_key(dek, name, int(kind), public, private, created)
        return StoredKey(name, int(kind), public, created)

    def list_keys(self) -> list[StoredKey]:
        self._dek()
        return self._store.list_keys()

    def delete_key(self, name: str) -> None:
        self._dek()
        self._store.delete_key(name)

    def _key(self, name: str) -> tuple[StoredKey, bytes, KeyType]:
        info, private = self._store.get_key(self._dek(), name)
        return info, private, KeyType(info.key_type)

    def encrypt(self, name: str, plaintext: bytes, aad: bytes) -> bytes:
        _, private, kind = self._key(name)
        return keyops.encrypt(kind, private, plaintext, aad)

    def decrypt(self, name: str, ciphertext: bytes, aad: bytes) -> bytes:
        _, private, kind = self._key(name)
        return keyops.decrypt(kind, private, ciphertext, aad)

    def sign(self, name: str, message: bytes) -> bytes:
        _, private, kind = self._key(name)
        return keyops.sign(kind, private, message)

    def verify(self, name: str, message: bytes, signature: bytes) -> bool:
        info, _, kind = self._key(name)
        return keyops.verify(kind, info.public_der, message, signature)

    # ------------------------------------------------------------------ backup and restore

    def backup(self) -> bytes:
        dek = self._dek()
        if self._domain is None:  # pragma: no cover - _dek checked it
            raise StateError("no domain")
        return backup.seal_backup(
            self._domain,
            self._store.export_keys(dek),
            node_id=self.config.node_id,
            created_at=self.now(),
            rng=self._rng,
        )

    def restore(self, data: bytes) -> int:
        dek = self._dek()
        if self._domain is None:  # pragma: no cover - _dek checked it
            raise StateError("no domain")
        keys = backup.open_backup(data, self._domain)
        self._store.replace_keys(dek, keys)
        log.info("restored %d keys from a backup of domain %s", len(keys), self._domain.domain_id.hex())
        return len(keys)
