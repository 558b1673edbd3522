"""Custodian wrapping-key handles.

Code that needs a custodian's private key takes a :class:`WrappingKey` *handle*, never key bytes,
so a PKCS#11 token can stand where a passphrase-protected PEM file stands. The two operations are
RSA-OAEP-SHA256 decryption (with a label) of the custodian's share and RSA-PSS-SHA256 signing of
its release. Exporting a private key is never part of the handle.
"""

from __future__ import annotations

import functools
from typing import Protocol

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from sdquorum.errors import MalformedError, UsageError, VerificationError
from sdquorum.pki import load_cert

__all__ = [
    "SoftwareWrappingKey",
    "WrappingKey",
    "encrypt_oaep",
    "oaep_sha256",
    "pss_sha256",
    "rsa_public_key_of",
    "verify_pss",
]


def oaep_sha256(label: bytes) -> padding.OAEP:
    return padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=label)


def pss_sha256() -> padding.PSS:
    # Salt length = digest length: what PKCS#11 tokens (CKM_SHA256_RSA_PKCS_PSS) produce too.
    return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)


class WrappingKey(Protocol):
    """A custodian's RSA wrapping key, wherever the private half lives."""

    def certificate_der(self) -> bytes:
        """The custodian's wrapping certificate (DER)."""
        ...

    def decrypt(self, ciphertext: bytes, label: bytes) -> bytes:
        """RSA-OAEP-SHA256 decryption; raises VerificationError on any failure (one message)."""
        ...

    def sign(self, message: bytes) -> bytes:
        """RSA-PSS-SHA256 signature over ``message``."""
        ...


class SoftwareWrappingKey:
    """A wrapping key held in process memory (loaded from a passphrase-encrypted PKCS#8 file)."""

    def __init__(self, private_key: rsa.RSAPrivateKey, certificate_der: bytes) -> None:
        cert_key = rsa_public_key_of(certificate_der)
        if cert_key.public_numbers() != private_key.public_key().public_numbers():
            raise UsageError("the wrapping key does not match its certificate: use the pair made by keygen")
        self._key = private_key
        self._cert_der = certificate_der

    def certificate_der(self) -> bytes:
        return self._cert_der

    def decrypt(self, ciphertext: bytes, label: bytes) -> bytes:
        try:
            return self._key.decrypt(ciphertext, oaep_sha256(label))
        except ValueError as e:
            raise VerificationError("the share does not decrypt with this custodian's key") from e

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message, pss_sha256(), hashes.SHA256())


def rsa_public_key_of(cert_der_or_pem: bytes) -> rsa.RSAPublicKey:
    """The RSA public key of a certificate; MalformedError if it is not an RSA certificate.

    Parsed once per distinct certificate (the node checks every answer of a slot against the same
    one); the key object is immutable, and every signature and encryption still uses it anew."""
    if isinstance(cert_der_or_pem, bytes):
        return _rsa_public_key_cached(cert_der_or_pem)
    return _rsa_public_key(cert_der_or_pem)


@functools.lru_cache(maxsize=64)
def _rsa_public_key_cached(cert_der_or_pem: bytes) -> rsa.RSAPublicKey:
    return _rsa_public_key(cert_der_or_pem)


def _rsa_public_key(cert_der_or_pem: bytes) -> rsa.RSAPublicKey:
    cert = load_cert(cert_der_or_pem)
    try:
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm) as e:
        raise MalformedError("the certificate's public key does not parse") from e
    if not isinstance(key, rsa.RSAPublicKey):
        raise MalformedError("the certificate's key is not RSA")
    return key


def encrypt_oaep(cert_der: bytes, plaintext: bytes, label: bytes) -> bytes:
    return rsa_public_key_of(cert_der).encrypt(plaintext, oaep_sha256(label))


def verify_pss(cert_der: bytes, message: bytes, signature: bytes) -> bool:
    try:
        rsa_public_key_of(cert_der).verify(signature, message, pss_sha256(), hashes.SHA256())
    except (InvalidSignature, MalformedError):
        return False
    return True
