"""Key generation and the data-plane operations, on private material held in memory.

Private material encodings: AES-256 raw 32 bytes; Ed25519 raw 32-byte seed; RSA PKCS#8 DER.
Ciphertexts: AES-256-GCM ``nonce(12) || ciphertext || tag``; RSA-OAEP-SHA256. Signatures:
Ed25519; RSA-PSS-SHA256 (salt = digest length).
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sdquorum.errors import UsageError, VerificationError
from sdquorum.keys import oaep_sha256, pss_sha256

__all__ = ["KeyType", "decrypt", "encrypt", "generate", "sign", "verify"]


class KeyType(enum.IntEnum):
    """Values equal the wire enum ``sdquorum.v1.KeyType``."""

    AES256_GCM = 1
    ED25519 = 2
    RSA3072 = 3


def generate(kind: KeyType) -> tuple[bytes, bytes]:
    """(public SubjectPublicKeyInfo DER or b"", private material)."""
    if kind is KeyType.AES256_GCM:
        return b"", AESGCM.generate_key(bit_length=256)
    if kind is KeyType.ED25519:
        ed = ed25519.Ed25519PrivateKey.generate()
        return _spki(ed.public_key()), ed.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
    if kind is KeyType.RSA3072:
        rk = rsa.generate_private_key(public_exponent=65537, key_size=3072)
        return _spki(rk.public_key()), rk.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    raise UsageError(f"unsupported key type {kind}")


def encryptor(kind: KeyType, private: bytes) -> Callable[[bytes, bytes], bytes]:
    """encrypt(plaintext, aad) with the key set up once: what a batch uses for its many items."""
    if kind is KeyType.AES256_GCM:
        aes = AESGCM(private)

        def aes_encrypt(plaintext: bytes, aad: bytes) -> bytes:
            nonce = os.urandom(12)
            return nonce + aes.encrypt(nonce, plaintext, aad or None)

        return aes_encrypt
    return lambda plaintext, aad: encrypt(kind, private, plaintext, aad)


def signer(kind: KeyType, private: bytes) -> Callable[[bytes], bytes]:
    """sign(message) with the key loaded once: what a batch uses for its many items."""
    if kind is KeyType.ED25519:
        return ed25519.Ed25519PrivateKey.from_private_bytes(private).sign
    if kind is KeyType.RSA3072:
        key = _rsa(private)
        return lambda message: key.sign(message, pss_sha256(), hashes.SHA256())
    return lambda message: sign(kind, private, message)


def encrypt(kind: KeyType, private: bytes, plaintext: bytes, aad: bytes) -> bytes:
    if kind is KeyType.AES256_GCM:
        nonce = os.urandom(12)
        return nonce + AESGCM(private).encrypt(nonce, plaintext, aad or None)
    if kind is KeyType.RSA3072:
        if aad:
            raise UsageError("RSA-OAEP takes no additional authenticated data: leave --aad empty")
        return _rsa(private).public_key().encrypt(plaintext, oaep_sha256(b""))
    raise UsageError(f"a {kind.name} key cannot encrypt: use an AES256_GCM or RSA3072 key")


def decrypt(kind: KeyType, private: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    try:
        if kind is KeyType.AES256_GCM:
            if len(ciphertext) < 28:
                raise VerificationError("the ciphertext is too short")
            return AESGCM(private).decrypt(ciphertext[:12], ciphertext[12:], aad or None)
        if kind is KeyType.RSA3072:
            return _rsa(private).decrypt(ciphertext, oaep_sha256(b""))
    except (InvalidTag, ValueError) as e:
        raise VerificationError("decryption failed: wrong key, wrong AAD or altered ciphertext") from e
    raise UsageError(f"a {kind.name} key cannot decrypt: use an AES256_GCM or RSA3072 key")


def sign(kind: KeyType, private: bytes, message: bytes) -> bytes:
    if kind is KeyType.ED25519:
        return ed25519.Ed25519PrivateKey.from_private_bytes(private).sign(message)
    if kind is KeyType.RSA3072:
        return _rsa(private).sign(message, pss_sha256(), hashes.SHA256())
    raise UsageError(f"a {kind.name} key cannot sign: use an ED25519 or RSA3072 key")


def verify(kind: KeyType, public_der: bytes, message: bytes, signature: bytes) -> bool:
    key = serialization.load_der_public_key(public_der) if public_der else None
    try:
        if kind is KeyType.ED25519 and isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, message)
            return True
        if kind is KeyType.RSA3072 and isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, message, pss_sha256(), hashes.SHA256())
            return True
    except InvalidSignature:
        return False
    raise UsageError(f"a {kind.name} key cannot verify signatures: use an ED25519 or RSA3072 key")


def _rsa(private: bytes) -> rsa.RSAPrivateKey:
    key = serialization.load_der_private_key(private, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):  # pragma: no cover - stored by generate()
        raise VerificationError("stored key material is not RSA")
    return key


def _spki(key: ed25519.Ed25519PublicKey | rsa.RSAPublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
