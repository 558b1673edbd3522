"""The data plane: keys, who may use them, and what they do. No network I/O; the gRPC servicers
in :mod:`hsm_node.server` call it.

Who may use a key. Every key has one owner, the role that may use it: the app that created it
(``app``, or ``app/<name>`` for a named app certificate), or ``admin`` for a key an admin created
for itself. An admin may create a key for an app (``owner``); that is the only way an admin's
decision gives an app a key. An app lists, uses, deletes and recovers only the keys it owns; a key
of another owner is refused as not its own (PERMISSION_DENIED, audited as a refusal). The admin
lists every key (live and deleted), deletes, recovers and purges any key, and uses only the keys it
owns: managing a key is not using it. Every unnamed ``app`` certificate is one owner; give apps
names to keep their keys apart.

Deletion is soft: a deleted key stays in the store, unusable and out of ListKeys, and an admin (or
its owner) can recover it for ``key_retention_days``; then the node purges it (at start, and at
most :data:`PURGE_CHECK_SECONDS` after the retention ends, by the node's clock). Only an admin
purges earlier. A deleted key's name stays taken until it is purged. Create, delete, recover and
purge are audited in the same transaction as the change, with who did it (role, certificate subject
and SPKI SHA-256 where the call came over mTLS).

Every call first asks :meth:`~hsm_node.state.Lifecycle.require_active`: the data plane is open only
while the node is ACTIVATED, and the data encryption key comes from that guard.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from hsm_node import keyops
from hsm_node.audit_log import Auditor
from hsm_node.cryptopool import CryptoPool, sign_batch_here
from hsm_node.keyops import KeyType
from hsm_node.state import Lifecycle
from hsm_node.store import NodeStore, StoredKey
from sdquorum.errors import (
    AlreadyExistsError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    SdquorumError,
    StateError,
    UsageError,
)
from sdquorum.pki import Role
from sdquorum_rpc.packed import Packed

__all__ = ["KeyCaller", "KeyManager", "KeyService", "check_key_name", "owner_for"]

T = TypeVar("T")
log = logging.getLogger("sdquorum.node")

MAX_KEY_NAME = 128
DEFAULT_KEY_RETENTION_DAYS = 90  # as the seed's managed HSM keeps a deleted key until purged
MAX_KEY_RETENTION_DAYS = 3650
PURGE_CHECK_SECONDS = 600  # how often the ticker looks for deleted keys past their retention
DAY = 86400


def check_key_name(name: str) -> str:
    """Key names are 1..MAX_KEY_NAME printable characters: checked before any lookup, so a name
    never travels further (into an error message, a log or the audit log) than that."""
    if not name or len(name) > MAX_KEY_NAME or not name.isprintable():
        raise UsageError(f"key names are 1..{MAX_KEY_NAME} printable characters")
    return name


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


def owner_for(role: Role, owner: str) -> str:
    """The owner a key of ``role``'s gets: itself, or (an admin only) ``owner``."""
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


def require_admin(role: Role, what: str) -> None:
    if role.kind != "admin":
        raise PermissionDeniedError(f"only an admin may {what}")


class KeyManager:
    """Create, list, delete, recover and purge keys (module docstring: who may)."""

    def __init__(
        self,
        store: NodeStore,
        lifecycle: Lifecycle,
        audit: Auditor,
        now: Callable[[], int],
        retention_days: int,
    ) -> None:
        self._store = store
        self._lifecycle = lifecycle
        self._audit = audit
        self._now = now
        self._retention_days = retention_days
        self.next_purge_check = 0

    async def create_key(
        self, name: str, kind: KeyType, caller: KeyCaller | Role, owner: str = ""
    ) -> StoredKey:
        """A new key owned by the caller, or (an admin only) by ``owner``: ``app`` or ``app/<name>``."""
        who = _caller(caller)
        self._lifecycle.require_active()
        check_key_name(name)
        owner = owner_for(who.role, owner)
        self._refuse_taken(name, who.role)
        # Generation (RSA-3072 takes ~0.1 s) runs off the event loop; the database is only ever
        # touched from the loop's thread, so writes never interleave on the one connection.
        public, private = await asyncio.to_thread(keyops.generate, kind)
        dek = self._lifecycle.require_active().data_encryption_key
        created = self._now()
        with self._store.batch():
            self._refuse_taken(name, who.role)  # made meanwhile, during the generation
            self._store.keys.put_key(dek, StoredKey(name, int(kind), public, created, owner), private)
            self._audit(
                "key-created", who.role, {"name": name, "type": kind.name, "owner": owner, **who.who()}
            )
        log.info("key %s (%s) created for %s by %s", name, kind.name, owner, who.role)
        return StoredKey(name, int(kind), public, created, owner)

    def _refuse_taken(self, name: str, role: Role) -> None:
        found = self._store.keys.find_key(name)
        if found is None:
            return
        if found.deleted_at is None or (role.kind != "admin" and found.owner != owner_for(role, "")):
            raise AlreadyExistsError(f"a key named {name!r} exists already: pick another name")
        raise AlreadyExistsError(
            f"a deleted key named {name!r} is kept until {_day(self._purge_at(found.deleted_at))}: "
            f"recover it (sdctl keys recover {name}) or purge it (sdctl keys purge {name} --yes) first"
        )

    def _purge_at(self, deleted_at: int) -> int:
        return deleted_at + self._retention_days * DAY

    def list_keys(self, caller: KeyCaller | Role) -> list[StoredKey]:
        """The live keys the caller may use; for an admin, every live key."""
        role = _caller(caller).role
        self._lifecycle.require_active()
        return self._store.keys.list_keys(owner=None if role.kind == "admin" else owner_for(role, ""))

    def list_deleted_keys(self, caller: KeyCaller | Role) -> list[StoredKey]:
        """The deleted keys still retained (admin only), each purged at :meth:`purge_time`."""
        require_admin(_caller(caller).role, "list deleted keys")
        self._lifecycle.require_active()
        self.purge_expired_keys()
        return self._store.keys.list_keys(deleted=True)

    def purge_time(self, key: StoredKey) -> int:
        return 0 if key.deleted_at is None else self._purge_at(key.deleted_at)

    def delete_key(self, name: str, caller: KeyCaller | Role) -> int:
        """Soft-delete a live key the caller manages; returns when it will be purged."""
        who = _caller(caller)
        self._lifecycle.require_active()
        now = self._now()
        purge_at = self._purge_at(now)

        def delete() -> StoredKey:  # decided and written in one transaction, made again on a conflict
            with self._store.batch():
                key = self._managed(name, who.role)
                if key.deleted_at is not None:
                    raise NotFoundError(
                        f"key {name!r} is deleted already: recover it (sdctl keys recover {name}) or purge it"
                    )
                self._store.keys.mark_deleted(name, now)
                self._audit(
                    "key-deleted",
                    who.role,
                    {"name": name, "owner": key.owner, "purge_at": purge_at, **who.who()},
                )
            return key

        key = _again_on_conflict(delete)
        log.info("key %s of %s deleted by %s (kept until %s)", name, key.owner, who.role, _day(purge_at))
        return purge_at

    def recover_key(self, name: str, caller: KeyCaller | Role) -> StoredKey:
        """Undelete a retained key the caller manages."""
        who = _caller(caller)
        self._lifecycle.require_active()
        self.purge_expired_keys()

        def recover() -> StoredKey:
            with self._store.batch():
                key = self._managed(name, who.role)
                if key.deleted_at is None:
                    raise StateError(f"key {name!r} is not deleted: nothing to recover")
                self._store.keys.mark_deleted(name, None)
                self._audit(
                    "key-recovered",
                    who.role,
                    {"name": name, "owner": key.owner, "deleted_at": key.deleted_at, **who.who()},
                )
            return key

        key = _again_on_conflict(recover)
        log.info("key %s of %s recovered by %s", name, key.owner, who.role)
        return StoredKey(key.name, key.key_type, key.public_der, key.created_at, key.owner)

    def purge_key(self, name: str, caller: KeyCaller | Role) -> None:
        """Remove a deleted key for good (admin only): it cannot be recovered afterwards."""
        who = _caller(caller)
        require_admin(who.role, "purge keys")
        self._lifecycle.require_active()
        key = self._store.keys.find_key(check_key_name(name), settled=True)
        if (
            key is None
            or key.deleted_at is None
            or not self._purge(key, who.role, {"reason": "purged by an admin", **who.who()})
        ):
            raise NotFoundError(
                f"no deleted key named {name!r}: delete it first (sdctl keys delete {name}); "
                "list deleted keys with 'sdctl keys deleted'"
            )

    def purge_expired_keys(self) -> list[str]:
        """Purge every deleted key whose retention has ended, by the node's clock (audited, by
        the node). Called at start, by the ticker and before a deleted key is listed or recovered."""
        if self._lifecycle.domain is None:
            return []
        now = self._now()
        self.next_purge_check = now + PURGE_CHECK_SECONDS
        expired = self._store.keys.deleted_before(now - self._retention_days * DAY)
        why = {"reason": f"retention of {self._retention_days} days ended", "by": "node"}
        return [k.name for k in expired if self._purge(k, "node", why)]

    def purge_expired_keys_now(self) -> None:
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

    def _purge(self, key: StoredKey, actor: Role | str, who: dict[str, str]) -> bool:
        """Purge ``key`` if it is still the same deletion (not recovered, purged or deleted again
        meanwhile, which another pool member may have done): whether it was purged."""

        def purge() -> bool:
            with self._store.batch():
                now = self._store.keys.find_key(key.name)
                if now is None or now.deleted_at != key.deleted_at or now.created_at != key.created_at:
                    return False
                self._store.keys.purge_key(key.name)
                self._audit(
                    "key-purged",
                    actor,
                    {"name": key.name, "owner": key.owner, "deleted_at": key.deleted_at, **who},
                )
            return True

        if not _again_on_conflict(purge):
            return False
        log.info("key %s of %s purged by %s", key.name, key.owner, actor)
        return True

    def _managed(self, name: str, role: Role) -> StoredKey:
        """The key ``name``, live or deleted, if ``role`` may manage it (its owner, or an admin)."""
        key = self._store.keys.find_key(check_key_name(name), settled=True)
        if key is None:
            raise NotFoundError(f"no key named {name!r}: list keys with 'sdctl keys list'")
        if role.kind != "admin" and key.owner != owner_for(role, ""):
            raise PermissionDeniedError(f"key {name!r} is not {role}'s: an app manages only its own keys")
        return key


def _again_on_conflict(change: Callable[[], T], tries: int = 3) -> T:
    """``change()``, made again when another pool member changed a row it decided on at the same
    moment (the same key; a refusal on the custody head alone the pool's view sends again itself):
    each try decides anew on what the store holds then (the key deleted already, say), and nothing
    of a refused try was written."""
    for left in range(tries - 1, 0, -1):
        try:
            return change()
        except ConflictError:
            log.debug("a key change met a concurrent pool write: made again (%d tries left)", left)
    return change()


class KeyService:
    """Use a key: its owner only (module docstring), the key opened once per call."""

    def __init__(
        self, store: NodeStore, lifecycle: Lifecycle, retention_days: int, pool: CryptoPool | None
    ) -> None:
        self._store = store
        self._lifecycle = lifecycle
        self._retention_days = retention_days
        self._pool = pool

    def _key(self, name: str, caller: KeyCaller | Role) -> tuple[StoredKey, bytes, KeyType]:
        """A live key its owner may use: anyone else is refused, an admin too (see the module)."""
        role = _caller(caller).role
        dek = self._lifecycle.require_active().data_encryption_key
        user = owner_for(role, "")

        def allow(key: StoredKey) -> None:
            if key.owner != user:
                raise PermissionDeniedError(
                    f"key {name!r} is not {role}'s to use: an admin can create a key for {role} "
                    f"(sdctl keys create NAME --owner {role})"
                )
            if key.deleted_at is not None:
                raise NotFoundError(
                    f"key {name!r} is deleted: an admin can recover it until "
                    f"{_day(key.deleted_at + self._retention_days * DAY)}"
                )

        info, private = self._store.keys.get_key(dek, check_key_name(name), allow)
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
        pool = self._pool
        if pool is not None and pool.wants(kind, plaintexts, private, aad):
            return await pool.encrypt_batch(kind, private, plaintexts, aad)
        return keyops.encrypt_batch(kind, private, plaintexts, aad)

    async def sign_batch_async(self, name: str, messages: Packed, caller: KeyCaller | Role) -> Packed:
        """:meth:`sign_batch` for the server: in a worker process of :attr:`crypto_pool` as
        :meth:`encrypt_batch_async`; otherwise :func:`~hsm_node.cryptopool.sign_batch_here` (an RSA
        batch in a thread)."""
        _, private, kind = self._key(name, caller)
        pool = self._pool
        if pool is not None and pool.wants(kind, messages, private):
            return await pool.sign_batch(kind, private, messages)
        return await sign_batch_here(kind, private, messages)

    def verify(self, name: str, message: bytes, signature: bytes, caller: KeyCaller | Role) -> bool:
        # Against the public key of the sealed private key, not the row's public column: the
        # column is not under the row's seal, so whoever can write the data directory could put
        # a key of theirs there and have their own signatures verify.
        _, private, kind = self._key(name, caller)
        return keyops.verify(kind, keyops.public_der(kind, private), message, signature)
