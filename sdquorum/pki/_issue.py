"""Issuing certificates: the mTLS CA and role certificates, the attestation root and node
certificates, and custodians' self-signed wrapping keys.

Invariants:

* Every ``notBefore`` is backdated by :data:`CLOCK_SKEW`; a leaf never outlives its issuer (its
  ``notAfter`` is clamped to the issuer's, :func:`leaf_builder`), and an issuer not valid at
  ``now`` issues nothing.
* An issuer is used only when its certificate is a CA and its key matches it (:func:`load_issuer`).
* Only ``node`` TLS certificates may serve (serverAuth and clientAuth); every other role gets
  clientAuth only. Wrapping keys are RSA of at least 2048 bits.
* Private keys leave only as unencrypted PKCS#8 PEM in :class:`IssuedCert` (:func:`pkcs8_pem`) or as
  key objects; bad arguments raise :class:`~sdquorum.errors.UsageError`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sdquorum.errors import MalformedError, UsageError
from sdquorum.pki._certs import ATTESTATION_EKU, CLOCK_SKEW, Role, extension, load_cert, require_aware

_CN_MAX = 64  # ub-common-name (RFC 5280)
_MIN_RSA_BITS = 2048


@dataclass(frozen=True)
class IssuedCert:
    """A certificate and its private key, both PEM. ``key_pem`` is unencrypted PKCS#8 (tests/demo)."""

    cert_pem: bytes
    key_pem: bytes


def make_ca(common_name: str, now: datetime, days: int = 3650) -> IssuedCert:
    """A self-signed ECDSA P-256 CA for mTLS certificates (path length 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    return _self_signed_ca(key, common_name, now, days)


def issue_tls_cert(
    ca: IssuedCert,
    role: Role,
    now: datetime,
    *,
    dns_names: Sequence[str] = ("localhost",),
    ip_addresses: Sequence[str] = ("127.0.0.1", "::1"),
    days: int = 397,
    not_before: datetime | None = None,
) -> IssuedCert:
    """An ECDSA P-256 mTLS certificate for ``role`` issued by ``ca``.

    CN is ``str(role)``; SAN holds ``role.uri()``, the DNS names and the IP addresses. EKU is
    serverAuth + clientAuth for ``node``, clientAuth for every other role.
    """
    require_aware(now, "now")
    if not_before is None:
        not_before = now - CLOCK_SKEW
    require_aware(not_before, "not_before")
    cn = str(role)
    if len(cn) > _CN_MAX:
        raise UsageError(
            f"role {cn!r} is longer than {_CN_MAX} characters and cannot be a certificate CN: "
            "use a shorter custodian name"
        )
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(role.uri())]
    for dns in dns_names:
        if not dns or not dns.isascii():
            raise UsageError(f"DNS name {dns!r} is invalid: give a non-empty ASCII (A-label) name")
        sans.append(x509.DNSName(dns))
    for ip in ip_addresses:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError as e:
            raise UsageError(f"IP address {ip!r} is invalid: give a literal IPv4 or IPv6 address") from e
    ekus = (
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        if role.kind == "node"
        else [ExtendedKeyUsageOID.CLIENT_AUTH]
    )

    ca_cert, ca_key = load_issuer(ca, "TLS CA")
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise UsageError("the TLS CA key is not an ECDSA key: make it with make_ca")
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        leaf_builder(ca_cert, key.public_key(), cn, now, not_before, days)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
    )
    cert = builder.sign(ca_key, hashes.SHA256())
    return IssuedCert(cert.public_bytes(serialization.Encoding.PEM), pkcs8_pem(key))


def make_attestation_root(common_name: str, now: datetime, days: int = 3650) -> IssuedCert:
    """A self-signed Ed25519 CA standing in for the HSM vendor's attestation root."""
    key = ed25519.Ed25519PrivateKey.generate()
    return _self_signed_ca(key, common_name, now, days)


def issue_attestation_cert(root: IssuedCert, node_id: str, now: datetime, days: int = 397) -> IssuedCert:
    """A node's Ed25519 attestation certificate (CN ``node_id``, EKU :data:`ATTESTATION_EKU`)."""
    require_aware(now, "now")
    root_cert, root_key = load_issuer(root, "attestation root")
    if not isinstance(root_key, ed25519.Ed25519PrivateKey):
        raise UsageError("the attestation root key is not Ed25519: make it with make_attestation_root")
    key = ed25519.Ed25519PrivateKey.generate()
    builder = leaf_builder(root_cert, key.public_key(), node_id, now, now - CLOCK_SKEW, days).add_extension(
        x509.ExtendedKeyUsage([ATTESTATION_EKU]), critical=False
    )
    cert = builder.sign(root_key, None)
    return IssuedCert(cert.public_bytes(serialization.Encoding.PEM), pkcs8_pem(key))


def make_wrapping_key(
    common_name: str, now: datetime, bits: int = 3072, days: int = 3650
) -> tuple[RSAPrivateKey, bytes]:
    """A custodian's RSA wrapping key pair and its self-signed certificate PEM (as ``openssl req -x509``).

    ``bits`` must be at least 2048 (3072 is the default the design recommends).
    """
    require_aware(now, "now")
    if bits < _MIN_RSA_BITS:
        raise UsageError(
            f"wrapping key of {bits} bits is too small: use at least {_MIN_RSA_BITS} (3072 advised)"
        )
    _require_days(days)
    name = _name(common_name)
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    builder = _self_signed_builder(
        name,
        key.public_key(),
        now,
        days,
        x509.BasicConstraints(ca=False, path_length=None),
        _key_usage(digital_signature=True, key_encipherment=True),
    )
    cert = builder.sign(key, hashes.SHA256())
    return key, cert.public_bytes(serialization.Encoding.PEM)


_CaKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def _require_days(days: int) -> None:
    if days < 1:
        raise UsageError(f"validity of {days} days is invalid: give at least 1 day")


def _name(common_name: str) -> x509.Name:
    if not 1 <= len(common_name) <= _CN_MAX:
        raise UsageError(f"common name {common_name!r} must be 1 to {_CN_MAX} characters")
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_usage(
    *,
    digital_signature: bool = False,
    key_encipherment: bool = False,
    key_cert_sign: bool = False,
    crl_sign: bool = False,
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def pkcs8_pem(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _self_signed_ca(key: _CaKey, common_name: str, now: datetime, days: int) -> IssuedCert:
    require_aware(now, "now")
    _require_days(days)
    name = _name(common_name)
    builder = _self_signed_builder(
        name,
        key.public_key(),
        now,
        days,
        x509.BasicConstraints(ca=True, path_length=0),
        _key_usage(key_cert_sign=True, crl_sign=True),
    )
    algorithm = hashes.SHA256() if isinstance(key, ec.EllipticCurvePrivateKey) else None
    cert = builder.sign(key, algorithm)
    return IssuedCert(cert.public_bytes(serialization.Encoding.PEM), pkcs8_pem(key))


def _self_signed_builder(
    name: x509.Name,
    public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey,
    now: datetime,
    days: int,
    constraints: x509.BasicConstraints,
    usage: x509.KeyUsage,
) -> x509.CertificateBuilder:
    """A self-signed certificate (subject = issuer = ``name``) valid from ``now`` backdated by
    :data:`CLOCK_SKEW` for ``days``, with its BasicConstraints, KeyUsage (both critical) and SKI."""
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(constraints, critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def load_issuer(issuer: IssuedCert, what: str) -> tuple[x509.Certificate, _CaKey]:
    """The issuer's certificate and key, checked to be a CA whose key matches its certificate."""
    try:
        cert = load_cert(issuer.cert_pem)
        key = serialization.load_pem_private_key(issuer.key_pem, password=None)
    except (MalformedError, ValueError, TypeError) as e:
        raise UsageError(f"the {what} certificate or key does not load: {e}") from e
    bc = extension(cert, x509.BasicConstraints)
    if bc is None or not bc.ca:
        raise UsageError(f"the {what} certificate is not a CA: make it with the matching make_* function")
    if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise UsageError(f"the {what} key is neither ECDSA nor Ed25519")
    raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*raw) != cert.public_key().public_bytes(*raw):
        raise UsageError(f"the {what} key does not match its certificate")
    return cert, key


def leaf_builder(
    issuer: x509.Certificate,
    public_key: ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey,
    common_name: str,
    now: datetime,
    not_before: datetime,
    days: int,
) -> x509.CertificateBuilder:
    """Subject, validity (clamped to the issuer's), BasicConstraints, KeyUsage, SKI and AKI of a leaf."""
    _require_days(days)
    if not issuer.not_valid_before_utc <= now <= issuer.not_valid_after_utc:
        raise UsageError(
            f"the issuing CA {issuer.subject.rfc4514_string()} is not valid at {now.isoformat()}: "
            "make a new CA"
        )
    not_after = min(now + timedelta(days=days), issuer.not_valid_after_utc)
    if not_before >= not_after:
        raise UsageError(
            f"not_before {not_before.isoformat()} is not before notAfter {not_after.isoformat()}"
        )
    issuer_ski = extension(issuer, x509.SubjectKeyIdentifier)
    aki = (
        x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski)
        if issuer_ski is not None
        else x509.AuthorityKeyIdentifier.from_issuer_public_key(_issuer_public_key(issuer))
    )
    return (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(issuer.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(aki, critical=False)
    )


def _issuer_public_key(issuer: x509.Certificate) -> ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey:
    key = issuer.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        raise UsageError("the issuing CA key is neither ECDSA nor Ed25519")
    return key
