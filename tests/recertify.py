"""A fresh self-signed certificate over an existing wrapping key (imported as ``recertify``).

Issue 13, class 3: a key recorded lost came back under a new certificate over the same RSA key.
A key's identity is its SubjectPublicKeyInfo; the tests use this to show every identity check
sees through a new certificate.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from sdquorum.keys import SoftwareWrappingKey

__all__ = ["fresh_certificate", "private_key_of", "self_signed"]


def private_key_of(key: SoftwareWrappingKey) -> rsa.RSAPrivateKey:
    private = key._key  # the test plays the key's holder
    assert isinstance(private, rsa.RSAPrivateKey)
    return private


def fresh_certificate(key: SoftwareWrappingKey, common_name: str, now: datetime) -> bytes:
    """DER of a new self-signed certificate, CN=``common_name``, over ``key``'s public key."""
    return self_signed(private_key_of(key), common_name, now)


def self_signed(private: rsa.RSAPrivateKey, common_name: str, now: datetime) -> bytes:
    """DER of a new self-signed certificate, CN=``common_name`` (taken as given), over ``private``."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=365))
        .sign(private, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)
