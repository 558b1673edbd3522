"""The checks of a TLS endpoint's PEM files that need the cryptography library (imported only by
:meth:`sdquorum_rpc.tls.TlsFiles.check`): a client pays for them only when its dial fails."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from sdquorum.errors import UsageError

__all__ = ["check_files"]


def check_files(
    cert: bytes,
    key: bytes,
    ca: bytes,
    cert_path: Path,
    key_path: Path,
    ca_path: Path,
    flags: tuple[str, str, str],
    now: datetime,
) -> None:
    fc, fk, fa = flags
    try:
        leaf = x509.load_pem_x509_certificate(cert)
    except ValueError as e:
        raise UsageError(f"the TLS certificate {cert_path} ({fc}) is not a PEM certificate") from e
    try:
        cas = x509.load_pem_x509_certificates(ca)
    except ValueError as e:
        raise UsageError(f"the CA certificate {ca_path} ({fa}) is not a PEM certificate") from e
    _check_validity(leaf, f"the TLS certificate {cert_path} ({fc})", now)
    chain = x509.load_pem_x509_certificates(cert)[1:]  # intermediates sent with the leaf, if any
    if not any(_issued_by(leaf, issuer) for issuer in (*cas, *chain)):
        raise UsageError(
            f"the TLS certificate {cert_path} ({fc}) is not issued by the CA in {ca_path} ({fa}): "
            "give the transport CA that signed it (the one the peer's certificate chains to)"
        )
    try:
        private = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError) as e:
        raise UsageError(
            f"the TLS private key {key_path} ({fk}) is not an unencrypted PEM private key"
        ) from e
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if private.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
        raise UsageError(
            f"the TLS private key {key_path} ({fk}) does not belong to the certificate {cert_path} ({fc})"
        )


def _check_validity(cert: x509.Certificate, what: str, now: datetime) -> None:
    """An expired or not-yet-valid certificate is named before any dial (the peer would only close
    the connection, which reads like a network fault)."""
    if now < cert.not_valid_before_utc:
        raise UsageError(
            f"{what} is not valid yet (from {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC): check this "
            "machine's clock or use a current certificate"
        )
    if now > cert.not_valid_after_utc:
        raise UsageError(
            f"{what} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC: renew it (sdctl pki, or "
            "your CA) and restart"
        )


def _issued_by(leaf: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        leaf.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
