"""A256CBC-HS512 (RFC 7518 section 5.2.5): the content encryption of Azure security-domain JWEs.

Written on ``cryptography`` primitives (AES-256-CBC, PKCS#7, HMAC-SHA512, ``constant_time``) rather
than taken from a JOSE library: see :mod:`sdquorum.azure.jwe` for why the JOSE libraries were not used.

Invariants:

* The 64-byte key K splits as MAC_KEY = K[0:32], ENC_KEY = K[32:64] (RFC 7518 5.2.2.1).
* IV: exactly 16 bytes. Tag: exactly 32 bytes, the first half of
  HMAC-SHA512(MAC_KEY, AAD || IV || ciphertext || AL), AL = bit length of AAD as 64-bit big-endian.
  A tag of any other length is refused before any MAC is computed (never a truncated compare).
* Ordering on decryption: lengths (public), then the tag compared in constant time over all 32 bytes,
  and only after the tag verifies, CBC decryption and PKCS#7 unpadding. No padding check ever runs on
  unauthenticated ciphertext, so there is no padding oracle.
* Errors: a wrong key length from the caller is a :class:`UsageError`; IV, tag or ciphertext of an
  impossible length are :class:`MalformedError`; a tag that does not verify (or padding that is
  wrong under a verified tag) is :class:`VerificationError`.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import constant_time, hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.padding import PKCS7

from sdquorum.errors import MalformedError, UsageError, VerificationError

__all__ = ["BLOCK_BYTES", "IV_BYTES", "KEY_BYTES", "TAG_BYTES", "decrypt", "encrypt"]

KEY_BYTES = 64
"""MAC key (first 32 bytes) then AES-256 key (last 32 bytes)."""
IV_BYTES = 16
TAG_BYTES = 32
BLOCK_BYTES = 16
_HALF = KEY_BYTES // 2


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise UsageError(f"an A256CBC-HS512 key is {KEY_BYTES} bytes")


def _tag(mac_key: bytes, aad: bytes, iv: bytes, ciphertext: bytes) -> bytes:
    mac = hmac.HMAC(mac_key, hashes.SHA512())
    mac.update(aad)
    mac.update(iv)
    mac.update(ciphertext)
    mac.update((len(aad) * 8).to_bytes(8, "big"))
    return mac.finalize()[:TAG_BYTES]


def encrypt(key: bytes, iv: bytes, plaintext: bytes, aad: bytes) -> tuple[bytes, bytes]:
    """``(ciphertext, tag)`` of ``plaintext`` under ``key`` with ``iv`` (16 fresh random bytes)."""
    _check_key(key)
    if not isinstance(iv, bytes) or len(iv) != IV_BYTES:
        raise UsageError(f"an A256CBC-HS512 IV is {IV_BYTES} bytes")
    padder = PKCS7(BLOCK_BYTES * 8).padder()
    padded = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key[_HALF:]), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padded) + encryptor.finalize()
    return ciphertext, _tag(key[:_HALF], aad, iv, ciphertext)


def decrypt(key: bytes, iv: bytes, ciphertext: bytes, tag: bytes, aad: bytes) -> bytes:
    """The plaintext, after the full 32-byte tag verifies; see the module invariants for errors."""
    _check_key(key)
    if len(iv) != IV_BYTES:
        raise MalformedError(f"A256CBC-HS512 IV must be {IV_BYTES} bytes, got {len(iv)}")
    if len(tag) != TAG_BYTES:
        raise MalformedError(f"A256CBC-HS512 tag must be {TAG_BYTES} bytes, got {len(tag)}")
    if not ciphertext or len(ciphertext) % BLOCK_BYTES:
        raise MalformedError("A256CBC-HS512 ciphertext must be a non-empty whole number of AES blocks")
    if not constant_time.bytes_eq(_tag(key[:_HALF], aad, iv, ciphertext), tag):
        raise VerificationError("A256CBC-HS512 tag does not verify")
    decryptor = Cipher(algorithms.AES(key[_HALF:]), modes.CBC(iv)).decryptor()
    padded = decryptor.update(ciphertext) + decryptor.finalize()
    unpadder = PKCS7(BLOCK_BYTES * 8).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError as e:  # only reachable with the key: the tag verified
        raise VerificationError("A256CBC-HS512 padding is invalid under a verified tag") from e
