"""Key store backups, sealed under keys that exist only inside the security domain.

Version 2 (what :func:`seal_backup` writes) is binary::

    MAGIC (18 bytes) || be32(len(header)) || header || nonce (12) || signature (64) || ciphertext

* ``header``: canonical JSON ``{"format", "version", "domain_id", "node_id", "created_at",
  "key_count", "body"}``; ``body`` names what the plaintext is: ``"sqlite3-key-rows"``, an SQLite
  database image holding the node's ``keys`` rows exactly as its store keeps them (each key's
  private material still AES-256-GCM under the domain's data encryption key). Backup and restore so
  never open a key: no private key is in the clear while a backup is made or restored, and the work
  per key is a row copy inside SQLite (ADR 0007).
* ``ciphertext``: AES-256-GCM of the body under the domain's **backup key**, AAD = SHA-256(header).
* ``signature``: Ed25519 by the domain signing key over
  ``BACKUP_CONTEXT_V2 || header || SHA-256(nonce || ciphertext)``.

Order of checks in :func:`open_backup`: layout, header, domain, signature, decryption. Nothing is
decrypted before the signature verifies, and a backup of another domain is refused by name. What the
body holds is checked by its reader (the node's store) after it is authenticated.

Version 1 (JSON, base64, the keys in the clear inside the ciphertext) is still read, so a backup
taken before version 2 restores; it is no longer written.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sdquorum import shamir
from sdquorum.encoding import b64d, canonical_json, parse_json, parse_json_object
from sdquorum.errors import MalformedError, VerificationError
from sdquorum.fields import is_int
from sdquorum.sdfile import DomainSecrets

__all__ = [
    "BODY_KEY_ROWS",
    "BackupHeader",
    "BackupKey",
    "OpenedBackup",
    "backup_domain_id",
    "open_backup",
    "seal_backup",
]

FORMAT = "sdquorum-backup"
MAGIC = b"sdquorum-backup/2\n"
VERSION = 2
BODY_KEY_ROWS = "sqlite3-key-rows"
BACKUP_CONTEXT_V2 = b"sdquorum backup v2\x00"
MAX_HEADER_BYTES = 4096
_NONCE, _SIGNATURE = 12, 64
_HEADER_FIELDS = {"format", "version", "domain_id", "node_id", "created_at", "key_count", "body"}

# Version 1, read only.
VERSION_1 = 1
BACKUP_CONTEXT = b"sdquorum backup v1\x00"


@dataclass(frozen=True, repr=False)
class BackupKey:
    """One key of the key store, with its private material (only ever in memory or sealed)."""

    name: str
    key_type: int
    public_der: bytes
    private: bytes
    created_at: int

    def __repr__(self) -> str:
        return f"BackupKey(name={self.name!r}, key_type={self.key_type})"


@dataclass(frozen=True)
class BackupHeader:
    version: int
    domain_id: str
    node_id: str
    created_at: int
    key_count: int


@dataclass(frozen=True, repr=False)
class OpenedBackup:
    """An authenticated backup. Version 2: ``key_rows`` is the store image (keys still sealed under
    the data encryption key) and ``keys`` is empty; version 1: ``keys`` in the clear, no image."""

    header: BackupHeader
    key_rows: bytes | None
    keys: tuple[BackupKey, ...]

    def __repr__(self) -> str:
        return f"OpenedBackup(version={self.header.version}, keys={self.header.key_count})"


def seal_backup(
    secrets: DomainSecrets,
    key_rows: bytes,
    *,
    key_count: int,
    node_id: str,
    created_at: int,
    rng: shamir.Rng,
) -> bytes:
    """A version 2 backup of ``key_rows`` (the store's image of its ``keys`` table)."""
    header = canonical_json(
        {
            "format": FORMAT,
            "version": VERSION,
            "domain_id": secrets.domain_id.hex(),
            "node_id": node_id,
            "created_at": created_at,
            "key_count": key_count,
            "body": BODY_KEY_ROWS,
        }
    )
    nonce = rng(_NONCE)
    ciphertext = AESGCM(secrets.backup_key).encrypt(nonce, key_rows, hashlib.sha256(header).digest())
    signature = secrets.sign(BACKUP_CONTEXT_V2 + header + _digest(nonce, ciphertext))
    return b"".join([MAGIC, struct.pack(">I", len(header)), header, nonce, signature, ciphertext])


def _digest(nonce: bytes | memoryview, ciphertext: bytes | memoryview) -> bytes:
    h = hashlib.sha256(nonce)
    h.update(ciphertext)
    return h.digest()


@dataclass(frozen=True)
class _Parsed:
    header: BackupHeader
    header_bytes: bytes
    nonce: bytes
    signature: bytes
    ciphertext: memoryview | bytes


def _parse(data: bytes) -> _Parsed:
    if data.startswith(MAGIC):
        return _parse_v2(data)
    if data.lstrip()[:1] == b"{":
        return _parse_v1(data)
    raise MalformedError("not an sdquorum backup file: it should come from 'sdctl backup'")


def _parse_v2(data: bytes) -> _Parsed:
    view = memoryview(data)
    at = len(MAGIC)
    if len(data) < at + 4:
        raise MalformedError("backup file is truncated")
    (size,) = struct.unpack_from(">I", data, at)
    at += 4
    if size > MAX_HEADER_BYTES or len(data) < at + size + _NONCE + _SIGNATURE:
        raise MalformedError("backup file is truncated or its header length is wrong")
    header_bytes = bytes(view[at : at + size])
    at += size
    nonce = bytes(view[at : at + _NONCE])
    signature = bytes(view[at + _NONCE : at + _NONCE + _SIGNATURE])
    obj = parse_json_object(header_bytes, "backup header")
    if set(obj) != _HEADER_FIELDS or canonical_json(obj) != header_bytes:
        raise MalformedError("backup header must be canonical JSON with exactly its fields")
    if obj["format"] != FORMAT or obj["version"] != VERSION or obj["body"] != BODY_KEY_ROWS:
        raise MalformedError("backup header names another format, version or body")
    return _Parsed(_header(obj, VERSION), header_bytes, nonce, signature, view[at + _NONCE + _SIGNATURE :])


def _header(obj: dict[str, object], version: int) -> BackupHeader:
    domain_id, node_id = obj.get("domain_id"), obj.get("node_id")
    created_at, key_count = obj.get("created_at"), obj.get("key_count")
    if (
        not isinstance(domain_id, str)
        or not isinstance(node_id, str)
        or not is_int(created_at)
        or not is_int(key_count)
        or key_count < 0
    ):
        raise MalformedError("backup header fields have the wrong types")
    return BackupHeader(version, domain_id, node_id, created_at, key_count)


def _parse_v1(data: bytes) -> _Parsed:
    obj = parse_json_object(data, "backup file")
    if obj.get("format") != FORMAT or obj.get("version") != VERSION_1:
        raise MalformedError("not an sdquorum backup file (version 1)")
    header = b64d(obj.get("header"), "backup header")
    nonce = b64d(obj.get("nonce"), "backup nonce")
    ciphertext = b64d(obj.get("ciphertext"), "backup ciphertext")
    signature = b64d(obj.get("signature"), "backup signature")
    if len(nonce) != _NONCE or len(signature) != _SIGNATURE:
        raise MalformedError("backup file: nonce or signature has the wrong length")
    h = parse_json_object(header, "backup header")
    created = h.get("created_at")
    fields = {
        "domain_id": h.get("domain_id"),
        "node_id": h.get("node_id", ""),
        "created_at": created if is_int(created) else 0,
        "key_count": h.get("key_count"),
    }
    return _Parsed(_header(fields, VERSION_1), header, nonce, signature, ciphertext)


def backup_domain_id(data: bytes) -> str:
    """The domain a backup belongs to (hex), without verifying anything."""
    return _parse(data).header.domain_id


def open_backup(data: bytes, secrets: DomainSecrets) -> OpenedBackup:
    """Authenticate and decrypt a backup of ``secrets``' domain (version 2 or 1)."""
    p = _parse(data)
    if p.header.domain_id != secrets.domain_id.hex():
        raise VerificationError(
            f"the backup belongs to domain {p.header.domain_id}, not this node's {secrets.domain_id.hex()}"
        )
    context = BACKUP_CONTEXT_V2 if p.header.version == VERSION else BACKUP_CONTEXT
    try:
        Ed25519PublicKey.from_public_bytes(secrets.signing_public_key).verify(
            p.signature, context + p.header_bytes + _digest(p.nonce, p.ciphertext)
        )
    except InvalidSignature as e:
        raise VerificationError("the backup signature does not verify: the file was altered") from e
    try:
        body = AESGCM(secrets.backup_key).decrypt(
            p.nonce, p.ciphertext, hashlib.sha256(p.header_bytes).digest()
        )
    except InvalidTag as e:
        raise VerificationError("the backup does not decrypt: the file was altered") from e
    if p.header.version == VERSION:
        return OpenedBackup(p.header, body, ())
    keys = _keys_v1(body)
    if len(keys) != p.header.key_count:
        raise MalformedError("backup key count does not match its header")
    return OpenedBackup(p.header, None, tuple(keys))


def _keys_v1(body: bytes) -> Sequence[BackupKey]:
    items = parse_json(body, "backup body")
    if not isinstance(items, list):
        raise MalformedError("backup body must be a list")
    keys = []
    for it in items:
        if not isinstance(it, dict) or not isinstance(it.get("name"), str) or not is_int(it.get("type")):
            raise MalformedError("backup entry is malformed")
        created = it.get("created_at")
        keys.append(
            BackupKey(
                name=it["name"],
                key_type=it["type"],
                public_der=b64d(it.get("public"), "public key"),
                private=b64d(it.get("private"), "private key"),
                created_at=created if is_int(created) else 0,
            )
        )
    return keys
