"""Host-side RSA-OAEP-SHA256 decoding after a raw RSA private-key operation.

For PKCS#11 tokens that do the raw private-key operation (``CKM_RSA_X_509``) but not OAEP with
SHA-256 or with a label (SoftHSM2 2.6.1 among them), as host tools for PIV cards do: the token
computes em = c^d mod n, the host removes the OAEP encoding (RFC 8017 section 7.1.2, SHA-256 and
MGF1-SHA-256).

Invariants:

* One failure, one message: every way a decryption can fail (ciphertext of the wrong length or out
  of range, leading byte not 0, label hash mismatch, no 0x01 separator, a non-zero byte before it) is
  ``VerificationError("decryption failed")``. Which check failed is never told, so the decoder is no
  padding oracle (Manger's attack needs to know whether the leading byte was 0).
* No early exit on secret data: :func:`oaep_decode` unmasks the whole block, compares the label hash
  with ``hmac.compare_digest``, scans every byte of the padding with branch-free integer masks, and
  only then decides, once. The message is sliced out only after that decision. CPython gives no
  constant-time guarantee for integer arithmetic; this removes data-dependent branches and early
  exits, which is what can be done in Python.
* Public checks come first and may branch: k >= 2 * 32 + 2, len(em) == k, len(ciphertext) == k,
  1 < c < n - 1 (SP 800-56B rev. 2, 7.1.2.1: c = 0, 1 and n - 1 are refused before the private
  operation).
* :class:`RawRsaWrappingKey` implements the :class:`~sdquorum.keys.WrappingKey` protocol from two
  callables (raw private operation, RSA-PSS-SHA256 signing) and the certificate, so a token's key
  stands where a key file stands. The raw operation's own errors (a token error, say) are not
  decryption failures and pass through unchanged; the token adapter translates them.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric import rsa

from sdquorum.errors import UsageError, VerificationError
from sdquorum.fields import is_int
from sdquorum.keys import rsa_public_key_of

__all__ = ["DECRYPTION_FAILED", "HASH_BYTES", "RawRsaWrappingKey", "oaep_decode", "rsa_oaep_decrypt"]

HASH_BYTES = 32
DECRYPTION_FAILED = "decryption failed"
RawPrivateOp = Callable[[bytes], bytes]


def _mgf1_sha256(seed: bytes, length: int) -> bytes:
    out = b"".join(
        hashlib.sha256(seed + counter.to_bytes(4, "big")).digest()
        for counter in range(-(-length // HASH_BYTES))
    )
    return out[:length]


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def _is_zero(byte: int) -> int:
    """1 if ``byte`` (0..255) is 0, else 0, without a branch."""
    return ((byte - 1) >> 8) & 1


def oaep_decode(em: bytes, k: int, label: bytes) -> bytes:
    """EME-OAEP decoding (RFC 8017 7.1.2 step 3) of the k-byte block ``em`` with SHA-256 and ``label``."""
    if not isinstance(em, bytes) or not isinstance(label, bytes):
        raise UsageError("oaep_decode takes the encoded block and the label as bytes")
    if not is_int(k):
        raise UsageError("oaep_decode takes the modulus length k in bytes as an integer")
    if k < 2 * HASH_BYTES + 2 or len(em) != k:
        raise VerificationError(DECRYPTION_FAILED)
    label_hash = hashlib.sha256(label).digest()
    masked_seed, masked_db = em[1 : 1 + HASH_BYTES], em[1 + HASH_BYTES :]
    seed = _xor(masked_seed, _mgf1_sha256(masked_db, HASH_BYTES))
    db = _xor(masked_db, _mgf1_sha256(seed, k - HASH_BYTES - 1))
    good = _is_zero(em[0]) & int(hmac.compare_digest(db[:HASH_BYTES], label_hash))
    rest = db[HASH_BYTES:]
    found = 0  # 1 once the 0x01 separator has been seen
    bad = 0  # 1 if a byte other than 0x00 came before the separator
    index = 0  # position of the separator in rest
    for i, byte in enumerate(rest):
        is_zero = _is_zero(byte)
        is_one = _is_zero(byte ^ 1)
        looking = found ^ 1
        index |= i & -(looking & is_one)
        bad |= looking & (is_zero ^ 1) & (is_one ^ 1)
        found |= is_one
    good &= found & (bad ^ 1)
    if not good:
        raise VerificationError(DECRYPTION_FAILED)
    return rest[index + 1 :]


def rsa_oaep_decrypt(
    ciphertext: bytes, public_key: rsa.RSAPublicKey, raw_private_op: RawPrivateOp, label: bytes
) -> bytes:
    """RSAES-OAEP-DECRYPT (RFC 8017 7.1.2) with SHA-256, the private operation done by ``raw_private_op``.

    ``raw_private_op(c)`` gets the k-byte ciphertext and returns c^d mod n, as k bytes or with its
    leading zero bytes stripped (as some tokens return it).
    """
    if not isinstance(ciphertext, bytes):
        raise UsageError("the ciphertext must be bytes")
    n = public_key.public_numbers().n
    k = (n.bit_length() + 7) // 8
    if len(ciphertext) != k:
        raise VerificationError(DECRYPTION_FAILED)
    c = int.from_bytes(ciphertext, "big")
    if not 1 < c < n - 1:
        raise VerificationError(DECRYPTION_FAILED)
    em = raw_private_op(ciphertext)
    if not isinstance(em, bytes) or len(em) > k:
        raise VerificationError(DECRYPTION_FAILED)
    return oaep_decode(em.rjust(k, b"\x00"), k, label)


class RawRsaWrappingKey:
    """A :class:`~sdquorum.keys.WrappingKey` whose private half is reachable only through callables.

    ``raw_private_op(c) -> c^d mod n`` (for instance ``CKM_RSA_X_509`` in a PKCS#11 token) and
    ``sign(message) -> RSA-PSS-SHA256 signature`` (``CKM_SHA256_RSA_PKCS_PSS``, salt = 32 bytes).
    """

    def __init__(
        self, raw_private_op: RawPrivateOp, certificate_der: bytes, sign: Callable[[bytes], bytes]
    ) -> None:
        self._public_key = rsa_public_key_of(certificate_der)
        self._raw_private_op = raw_private_op
        self._sign = sign
        self._cert_der = certificate_der

    def certificate_der(self) -> bytes:
        return self._cert_der

    def decrypt(self, ciphertext: bytes, label: bytes) -> bytes:
        """RSA-OAEP-SHA256 decryption; ``VerificationError("decryption failed")`` on any failure."""
        return rsa_oaep_decrypt(ciphertext, self._public_key, self._raw_private_op, label)

    def sign(self, message: bytes) -> bytes:
        return self._sign(message)
