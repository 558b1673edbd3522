"""How the node's secrets rest, whichever store holds them.

* The domain secrets (SD payload): AES-256-GCM under the **node sealing key** (DESIGN.md, "Node
  storage": the emulation boundary, a 0600 file outside the data directory, or
  ``$SDQUORUM_NODE_SEALING_KEY``), AAD binding the node id: ``nonce(12) || ciphertext || tag(16)``.
* A key's private material: AES-256-GCM under the domain's **data encryption key**, AAD
  :func:`key_aad` (name, type and owner), so rows cannot be swapped and a row's owner cannot be
  changed at rest. Same layout; a sealed key is therefore at least 28 bytes.

A value that does not open raises VerificationError naming what failed; no other bytes come back.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterable
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hsm_node.store.protocol import LEGACY_OWNER, KeyRow, StoredKey
from sdquorum.backup import BackupKey
from sdquorum.errors import UsageError, VerificationError
from sdquorum.sdfile import DomainSecrets
from sdquorum_rpc.files import private_dir

__all__ = [
    "SEALING_KEY_ENV",
    "DomainSeal",
    "KeySeal",
    "key_aad",
    "load_or_create_sealing_key",
]

SEALING_KEY_ENV = "SDQUORUM_NODE_SEALING_KEY"
_NONCE = 12


def key_aad(name: str, key_type: int, owner: str) -> bytes:
    """The AAD of a key's sealed private material. Keys owned by ``app`` keep the AAD of rows
    written before keys had owners (``type|name``), so those rows and backups open unchanged; any
    other owner is bound as ``v2|type|owner|name``. The two forms cannot collide (one starts with
    a digit, the other with ``v``) and an owner holds no ``|``, so changing a row's owner on disk
    makes the row fail its integrity check."""
    if owner == LEGACY_OWNER:
        return f"{key_type}|{name}".encode()
    return f"v2|{key_type}|{owner}|{name}".encode()


def load_or_create_sealing_key(path: Path) -> bytes:
    """The node sealing key: from $SDQUORUM_NODE_SEALING_KEY (hex), else the 0600 file, made on first start."""
    env = os.environ.get(SEALING_KEY_ENV)
    if env:
        try:
            key = bytes.fromhex(env)
        except ValueError as e:
            raise UsageError(f"${SEALING_KEY_ENV} must be 64 hex digits") from e
        if len(key) != 32:
            raise UsageError(f"${SEALING_KEY_ENV} must be 64 hex digits")
        return key
    private_dir(path.parent, "the sealing key's directory", "node.sealing_key_file", ours=False)
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        key = os.urandom(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, key)
            os.fsync(fd)
        finally:
            os.close(fd)
        return key
    except OSError as e:
        raise UsageError(f"cannot read the node sealing key {path}: {e.strerror}") from e
    if len(key) != 32:
        raise UsageError(f"the node sealing key {path} is not 32 bytes: restore it or start a new node")
    if path.stat().st_mode & 0o077:
        raise UsageError(f"the node sealing key {path} is readable by others: chmod 600 {path}")
    return key


class DomainSeal:
    """The domain secrets sealed under the node sealing key, bound to the node id."""

    def __init__(self, sealing_key: bytes, node_id: str) -> None:
        self._aead = AESGCM(sealing_key)
        self._aad = b"sdquorum node domain v1|" + node_id.encode()

    def seal(self, secrets: DomainSecrets) -> bytes:
        nonce = os.urandom(_NONCE)
        return nonce + self._aead.encrypt(nonce, secrets.to_bytes(), self._aad)

    def open(self, sealed: bytes) -> DomainSecrets:
        try:
            plain = self._aead.decrypt(sealed[:_NONCE], sealed[_NONCE:], self._aad)
        except InvalidTag as e:
            raise VerificationError(
                "the node's sealed domain does not open with this sealing key: wrong key file or another node's data"
            ) from e
        return DomainSecrets.from_bytes(plain)


class KeySeal:
    """Private key material sealed under a data encryption key (one AESGCM per DEK, set up once)."""

    def __init__(self) -> None:
        self._dek = b""
        self._aead = AESGCM(bytes(32))

    def _for(self, dek: bytes) -> AESGCM:
        if not hmac.compare_digest(self._dek, dek):
            self._aead, self._dek = AESGCM(dek), dek
        return self._aead

    def seal(self, dek: bytes, name: str, key_type: int, owner: str, private: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        return nonce + self._for(dek).encrypt(nonce, private, key_aad(name, key_type, owner))

    def open(self, dek: bytes, key: StoredKey, sealed: bytes) -> bytes:
        try:
            return self._for(dek).decrypt(
                sealed[:_NONCE], sealed[_NONCE:], key_aad(key.name, key.key_type, key.owner)
            )
        except InvalidTag as e:
            raise VerificationError(f"stored key {key.name!r} failed its integrity check") from e

    def seal_all(self, dek: bytes, keys: Iterable[BackupKey]) -> list[KeyRow]:
        """Keys in the clear (a version 1 backup) as rows: owned by ``app`` and live, as version 1
        knew neither owners nor deletion."""
        return [
            KeyRow(
                StoredKey(k.name, k.key_type, k.public_der, k.created_at),
                self.seal(dek, k.name, k.key_type, LEGACY_OWNER, k.private),
            )
            for k in keys
        ]

    def check_all(self, dek: bytes, rows: Iterable[tuple[str, int, str, bytes]]) -> int:
        """How many ``rows`` (name, type, owner, sealed) there are, each opened under ``dek``
        first: a backup never carries a key that could not be restored."""
        aead, count = self._for(dek), 0
        for name, key_type, owner, sealed in rows:
            try:
                aead.decrypt(sealed[:_NONCE], sealed[_NONCE:], key_aad(name, key_type, owner))
            except InvalidTag as e:
                raise VerificationError(
                    f"stored key {name!r} failed its integrity check: no backup was written; "
                    "delete that key or restore the data directory, then back up again"
                ) from e
            count += 1
        return count
