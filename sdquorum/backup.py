"""Key store backups, sealed under keys that exist only inside the security domain.

Layout (JSON)::

    {"format": "sdquorum-backup", "version": 1, "header": b64url(header bytes),
     "nonce": b64url(12), "ciphertext": b64url(...), "signature": b64url(Ed25519)}

The header (canonical JSON) names the domain, the creating node, the time and the key count. The
key list is AES-256-GCM under the domain's backup key with AAD = SHA-256(header); the signature is
by the domain signing key over ``BACKUP_CONTEXT || header || SHA-256(nonce || ciphertext)``. So a
backup is useless without its domain, cannot be restored into another domain, and any altered byte
is refused before anything is decrypted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sdquorum import shamir
from sdquorum.encoding import b64d, b64e, canonical_json, parse_json, parse_json_object
from sdquorum.errors import MalformedError, VerificationError
from sdquorum.sdfile import DomainSecrets

__all__ = ["BackupKey", "backup_domain_id", "open_backup", "seal_backup"]

FORMAT = "sdquorum-backup"
VERSION = 1
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


def seal_backup(
    secrets: DomainSecrets, keys: Sequence[BackupKey], *, node_id: str, created_at: int, rng: shamir.Rng
) -> bytes:
    header = canonical_json(
        {
            "domain_id": secrets.domain_id.hex(),
            "node_id": node_id,
            "created_at": created_at,
            "key_count": len(keys),
        }
    )
    body = canonical_json(
        [
            {
                "name": k.name,
                "type": k.key_type,
                "public": b64e(k.public_der),
                "private": b64e(k.private),
                "created_at": k.created_at,
            }
            for k in keys
        ]
    )
    nonce = rng(12)
    ciphertext = AESGCM(secrets.backup_key).encrypt(nonce, body, hashlib.sha256(header).digest())
    signature = secrets.sign(BACKUP_CONTEXT + header + hashlib.sha256(nonce + ciphertext).digest())
    return canonical_json(
        {
            "format": FORMAT,
            "version": VERSION,
            "header": b64e(header),
            "nonce": b64e(nonce),
            "ciphertext": b64e(ciphertext),
            "signature": b64e(signature),
        }
    )


def _parse(data: bytes) -> tuple[bytes, dict[str, object], bytes, bytes, bytes]:
    obj = parse_json_object(data, "backup file")
    if obj.get("format") != FORMAT or obj.get("version") != VERSION:
        raise MalformedError("not an sdquorum backup file (version 1)")
    header = b64d(obj.get("header"), "backup header")
    nonce = b64d(obj.get("nonce"), "backup nonce")
    ciphertext = b64d(obj.get("ciphertext"), "backup ciphertext")
    signature = b64d(obj.get("signature"), "backup signature")
    if len(nonce) != 12 or len(signature) != 64:
        raise MalformedError("backup file: nonce or signature has the wrong length")
    return header, parse_json_object(header, "backup header"), nonce, ciphertext, signature


def backup_domain_id(data: bytes) -> str:
    """The domain a backup belongs to (hex), without verifying anything."""
    _, h, *_ = _parse(data)
    d = h.get("domain_id")
    if not isinstance(d, str):
        raise MalformedError("backup header has no domain_id")
    return d


def open_backup(data: bytes, secrets: DomainSecrets) -> list[BackupKey]:
    header, h, nonce, ciphertext, signature = _parse(data)
    if h.get("domain_id") != secrets.domain_id.hex():
        raise VerificationError(
            f"the backup belongs to domain {h.get('domain_id')}, not this node's {secrets.domain_id.hex()}"
        )
    try:
        Ed25519PublicKey.from_public_bytes(secrets.signing_public_key).verify(
            signature, BACKUP_CONTEXT + header + hashlib.sha256(nonce + ciphertext).digest()
        )
    except InvalidSignature as e:
        raise VerificationError("the backup signature does not verify: the file was altered") from e
    try:
        body = AESGCM(secrets.backup_key).decrypt(nonce, ciphertext, hashlib.sha256(header).digest())
    except InvalidTag as e:
        raise VerificationError("the backup does not decrypt: the file was altered") from e
    items = parse_json(body, "backup body")
    if not isinstance(items, list):
        raise MalformedError("backup body must be a list")
    keys = []
    for it in items:
        if (
            not isinstance(it, dict)
            or not isinstance(it.get("name"), str)
            or not isinstance(it.get("type"), int)
        ):
            raise MalformedError("backup entry is malformed")
        created = it.get("created_at")
        keys.append(
            BackupKey(
                name=it["name"],
                key_type=it["type"],
                public_der=b64d(it.get("public"), "public key"),
                private=b64d(it.get("private"), "private key"),
                created_at=created if isinstance(created, int) else 0,
            )
        )
    if len(keys) != h.get("key_count"):
        raise MalformedError("backup key count does not match its header")
    return keys
