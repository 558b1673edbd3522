"""Key generation and the data-plane operations, on private material held in memory.

Private material encodings: AES-256 raw 32 bytes; Ed25519 raw 32-byte seed; RSA PKCS#8 DER.
Ciphertexts: AES-256-GCM ``nonce(12) || ciphertext || tag``; RSA-OAEP-SHA256. Signatures:
Ed25519; RSA-PSS-SHA256 (salt = digest length).
"""

from __future__ import annotations

import enum
import os

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sdquorum.errors import UsageError, VerificationError
from sdquorum.keys import oaep_sha256, pss_sha256
from sdquorum_rpc.packed import Packed

__all__ = [
    "AES_GCM_OVERHEAD",
    "KeyType",
    "decrypt",
    "encrypt",
    "encrypt_batch",
    "generate",
    "sign",
    "sign_batch",
    "verify",
]

AES_GCM_OVERHEAD = 12 + 16  # nonce before the ciphertext, tag after it


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


def encrypt_batch(kind: KeyType, private: bytes, plaintexts: Packed, aad: bytes | Packed) -> Packed:
    """Every item under one key set up once; ``aad`` one AAD for every item, or one per item.

    AES-GCM nonces are 12 random bytes per item, drawn from the OS CSPRNG in one call for the whole
    batch (the same as one call per item: the draw is uniformly random, cut into independent
    nonces). The AES loop does the least Python work an item allows: it walks the packed buffer
    by its lengths, slicing as it goes, and makes no object per item but the slice, the nonce and
    the ciphertext; one join at the end. (A list of the items first, views or copies, or a
    generator, costs as much again as the AES-GCM call on 256-byte items.)
    """
    if kind is KeyType.AES256_GCM:
        seal = AESGCM(private).encrypt
        nonces = os.urandom(12 * len(plaintexts))
        data = plaintexts.data
        parts: list[bytes] = []
        add = parts.append
        start = at = 0
        if isinstance(aad, Packed):
            aads, aad_at = aad.data, 0
            for n, m in zip(plaintexts.lengths, aad.lengths, strict=True):
                nonce = nonces[at : at + 12]
                add(nonce)
                add(seal(nonce, data[start : start + n], aads[aad_at : aad_at + m]))
                start, at, aad_at = start + n, at + 12, aad_at + m
        else:
            for n in plaintexts.lengths:
                nonce = nonces[at : at + 12]
                add(nonce)
                add(seal(nonce, data[start : start + n], aad))
                start, at = start + n, at + 12
        return Packed(b"".join(parts), [n + AES_GCM_OVERHEAD for n in plaintexts.lengths])
    if kind is KeyType.RSA3072:
        if any(aad.lengths) if isinstance(aad, Packed) else aad:
            raise UsageError("RSA-OAEP takes no additional authenticated data: leave the AAD empty")
        public = _rsa(private).public_key()
        ciphertexts: list[bytes] = []
        for i, plaintext in enumerate(plaintexts.items()):
            try:
                ciphertexts.append(_rsa_encrypt(public, plaintext))
            except UsageError as e:
                raise UsageError(f"item {i}: {e}") from e
        return Packed.of(ciphertexts)
    raise UsageError(f"a {kind.name} key cannot encrypt: use an AES256_GCM or RSA3072 key")


def sign_batch(kind: KeyType, private: bytes, messages: Packed) -> Packed:
    """Every message signed by one key loaded once."""
    if kind is KeyType.ED25519:
        sign_one = ed25519.Ed25519PrivateKey.from_private_bytes(private).sign
        data, start = messages.data, 0
        out: list[bytes] = []
        for n in messages.lengths:
            out.append(sign_one(data[start : start + n]))
            start += n
        return Packed.of(out)
    if kind is KeyType.RSA3072:
        key, pss, sha256 = _rsa(private), pss_sha256(), hashes.SHA256()
        return Packed.of([key.sign(m, pss, sha256) for m in messages.items()])
    raise UsageError(f"a {kind.name} key cannot sign: use an ED25519 or RSA3072 key")


def encrypt(kind: KeyType, private: bytes, plaintext: bytes, aad: bytes) -> bytes:
    if kind is KeyType.AES256_GCM:
        nonce = os.urandom(12)
        return nonce + AESGCM(private).encrypt(nonce, plaintext, aad or None)
    if kind is KeyType.RSA3072:
        if aad:
            raise UsageError("RSA-OAEP takes no additional authenticated data: leave --aad empty")
        return _rsa_encrypt(_rsa(private).public_key(), plaintext)
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


def _rsa_encrypt(public: rsa.RSAPublicKey, plaintext: bytes) -> bytes:
    limit = public.key_size // 8 - 2 * 32 - 2  # OAEP with SHA-256
    if len(plaintext) > limit:
        raise UsageError(
            f"the plaintext is {len(plaintext)} bytes; RSA-OAEP-SHA256 with this key takes at most "
            f"{limit}: encrypt a data key with it, and the data with AES-GCM"
        )
    return public.encrypt(plaintext, oaep_sha256(b""))


def public_der(kind: KeyType, private: bytes) -> bytes:
    """The SubjectPublicKeyInfo DER of a stored private key (b"" for AES): derived, never read
    from the store's public column, which its row's seal does not cover."""
    if kind is KeyType.AES256_GCM:
        return b""
    if kind is KeyType.ED25519:
        return _spki(ed25519.Ed25519PrivateKey.from_private_bytes(private).public_key())
    if kind is KeyType.RSA3072:
        return _spki(_rsa(private).public_key())
    raise UsageError(f"unsupported key type {kind}")


def _rsa(private: bytes) -> rsa.RSAPrivateKey:
    # Stored material is authenticated: AES-256-GCM under the data encryption key (AAD binding name
    # and type), written only by generate() or by a backup of this domain, which the domain signing
    # key authenticates. So the full RSA key check (~115 ms for RSA-3072, on every call) is skipped:
    # it protects against malformed keys from untrusted sources, and these keys were made here.
    key = serialization.load_der_private_key(private, password=None, unsafe_skip_rsa_key_validation=True)
    if not isinstance(key, rsa.RSAPrivateKey):  # pragma: no cover - stored by generate()
        raise VerificationError("stored key material is not RSA")
    return key


def _spki(key: ed25519.Ed25519PublicKey | rsa.RSAPublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
