"""Throw-away PKI for the demo, the tests and ``sdctl pki``: TLS roles, attestation, wrapping keys.

Three independent trust roots, never mixed (DESIGN.md, "Trust and identities"):

* **TLS CA** (ECDSA P-256): issues mTLS certificates. A peer's role is carried as exactly one URI
  SAN ``sdquorum://role/<role>`` (``admin``, ``app``, ``node``, ``custodian/<name>``) and read back
  with :func:`role_from_cert`. Only ``node`` certificates may serve (EKU serverAuth and clientAuth);
  every other role gets clientAuth only. The CN repeats the role for people reading logs; code
  decides on the URI SAN.
* **Attestation root** (Ed25519): stands in for the HSM vendor's root. It issues each node's
  attestation certificate (EKU :data:`ATTESTATION_EKU`). Agents accept an exchange key only if the
  signing key's certificate passes :func:`verify_attestation_chain` against the root they were given.
* **Wrapping keys** (RSA >= 2048 bits): one self-signed certificate per custodian. A share is
  addressed by :func:`thumbprint_sha256` of that certificate's DER (Azure's ``x5t_256``).

Invariants:

* No I/O and no clock: callers pass ``now`` (timezone-aware). Every certificate's ``notBefore`` is
  backdated by :data:`CLOCK_SKEW` to tolerate small clock differences between machines.
* A leaf never outlives its issuer: its ``notAfter`` is clamped to the issuer's.
* Private keys leave this module only as unencrypted PKCS#8 PEM in :class:`IssuedCert` (tests and the
  demo) or as key objects; storing them (0600, passphrase) is the caller's job.
* Every failed check raises :class:`~sdquorum.errors.VerificationError` naming the check; bytes that
  do not parse raise :class:`~sdquorum.errors.MalformedError`; bad arguments raise
  :class:`~sdquorum.errors.UsageError`.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sdquorum.errors import MalformedError, UsageError, VerificationError

__all__ = [
    "ATTESTATION_EKU",
    "CLOCK_SKEW",
    "ROLE_KINDS",
    "ROLE_URI_PREFIX",
    "IssuedCert",
    "Role",
    "issue_attestation_cert",
    "issue_tls_cert",
    "load_cert",
    "make_attestation_root",
    "make_ca",
    "make_wrapping_key",
    "role_from_cert",
    "spki_sha256",
    "thumbprint_sha256",
    "verify_attestation_chain",
]

ROLE_URI_PREFIX = "sdquorum://role/"
ROLE_KINDS = frozenset({"admin", "app", "custodian", "node"})

# Placeholder OID under an unassigned private-enterprise arc (99999); replace with a registered
# arc before any deployment outside the demo.
ATTESTATION_EKU = x509.ObjectIdentifier("1.3.6.1.4.1.99999.1.1")

CLOCK_SKEW = timedelta(minutes=5)

_CUSTODIAN_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_CN_MAX = 64  # ub-common-name (RFC 5280)
_MIN_RSA_BITS = 2048

_E = TypeVar("_E", bound=x509.ExtensionType)


# --- roles -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Role:
    """A peer's role: ``admin``, ``app``, ``app/<name>``, ``node`` or ``custodian/<name>``.

    An app may carry a name (``app/<name>``, the custodian name pattern): each named app is a key
    owner of its own on the data plane (hsm_node.node, "Who may use a key"); ``app`` alone is one
    owner shared by every unnamed app certificate."""

    kind: str
    name: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ROLE_KINDS:
            raise UsageError(f"unknown role kind {self.kind!r}: use one of {', '.join(sorted(ROLE_KINDS))}")
        if self.kind == "custodian":
            if self.name is None or not _CUSTODIAN_NAME.fullmatch(self.name):
                raise UsageError(
                    f"custodian name {self.name!r} is invalid: use 1-64 characters of a-z 0-9 . _ - "
                    "starting with a letter or digit"
                )
        elif self.kind == "app" and self.name is not None:
            if not _CUSTODIAN_NAME.fullmatch(self.name):
                raise UsageError(
                    f"app name {self.name!r} is invalid: use 1-64 characters of a-z 0-9 . _ - "
                    "starting with a letter or digit"
                )
        elif self.name is not None:
            raise UsageError(f"role {self.kind!r} takes no name: write {self.kind!r} alone")

    @classmethod
    def parse(cls, text: str) -> Role:
        """Parse ``"admin"``, ``"app"``, ``"app/<name>"``, ``"node"`` or ``"custodian/<name>"``;
        UsageError otherwise."""
        kind, sep, name = text.partition("/")
        if kind == "custodian" and not sep:
            raise UsageError("role 'custodian' needs a name: write custodian/<name>")
        if sep and kind not in ("custodian", "app"):
            raise UsageError(f"role {text!r} is invalid: only custodian and app roles take a name")
        return cls(kind, name if sep else None)

    def uri(self) -> str:
        """The URI SAN that carries this role, e.g. ``sdquorum://role/custodian/alice``."""
        return ROLE_URI_PREFIX + str(self)

    def __str__(self) -> str:
        return self.kind if self.name is None else f"{self.kind}/{self.name}"


# --- certificates ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IssuedCert:
    """A certificate and its private key, both PEM. ``key_pem`` is unencrypted PKCS#8 (tests/demo)."""

    cert_pem: bytes
    key_pem: bytes


def load_cert(cert_pem_or_der: bytes) -> x509.Certificate:
    """Load one X.509 certificate from PEM or DER; MalformedError otherwise."""
    if not isinstance(cert_pem_or_der, bytes | bytearray):
        raise MalformedError("certificate must be bytes (PEM or DER)")
    data = bytes(cert_pem_or_der)
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            if data.count(b"-----BEGIN") != 1:
                raise MalformedError("expected exactly one PEM certificate, found several blocks")
            cert = x509.load_pem_x509_certificate(data)
        else:
            cert = x509.load_der_x509_certificate(data)
        # cryptography parses these lazily; parse them now so a bad one is refused here, once.
        _ = (cert.subject.rfc4514_string(), cert.issuer.rfc4514_string(), list(cert.extensions))
    except (
        ValueError,
        TypeError,
        x509.InvalidVersion,
        x509.DuplicateExtension,
        x509.UnsupportedGeneralNameType,  # an x400Address or EDIPartyName name (atheris found it)
    ) as e:
        raise MalformedError(f"not an X.509 certificate in PEM or DER: {e}") from e
    return cert


def thumbprint_sha256(cert_pem_or_der: bytes) -> bytes:
    """SHA-256 of the certificate's DER encoding (Azure's ``x5t_256``), 32 bytes."""
    der = load_cert(cert_pem_or_der).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).digest()


def spki_sha256(cert_pem_or_der: bytes) -> bytes:
    """SHA-256 of the certificate's SubjectPublicKeyInfo (DER), 32 bytes: a key's identity.

    Two certificates over one key (a re-issued or freshly self-signed one) have different
    thumbprints but the same SPKI digest. Every check of *who* holds a key (lost or compromised
    keys, duplicates in a header or roster, NEW KEY marks) compares this, never certificate bytes.
    """
    cert = load_cert(cert_pem_or_der)
    try:
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm) as e:  # a key that does not parse: no identity
        raise MalformedError("the certificate's public key does not parse") from e
    spki = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).digest()


def role_from_cert(cert_pem_or_der: bytes) -> Role:
    """The role in the certificate's single ``sdquorum://role/`` URI SAN.

    VerificationError if there is none, more than one, or it does not parse as a role.
    """
    cert = load_cert(cert_pem_or_der)
    san = _extension(cert, x509.SubjectAlternativeName)
    uris = [] if san is None else san.get_values_for_type(x509.UniformResourceIdentifier)
    roles = [u for u in uris if u.startswith(ROLE_URI_PREFIX)]
    if not roles:
        raise VerificationError(f"certificate carries no {ROLE_URI_PREFIX} URI SAN: reissue it with a role")
    if len(roles) > 1:
        raise VerificationError(f"certificate carries {len(roles)} role URI SANs: exactly one is allowed")
    try:
        return Role.parse(roles[0][len(ROLE_URI_PREFIX) :])
    except UsageError as e:
        raise VerificationError(f"certificate role URI {roles[0]!r} is invalid: {e}") from e


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
    _require_aware(now, "now")
    if not_before is None:
        not_before = now - CLOCK_SKEW
    _require_aware(not_before, "not_before")
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

    ca_cert, ca_key = _load_issuer(ca, "TLS CA")
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise UsageError("the TLS CA key is not an ECDSA key: make it with make_ca")
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        _leaf_builder(ca_cert, key.public_key(), cn, now, not_before, days)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
    )
    cert = builder.sign(ca_key, hashes.SHA256())
    return IssuedCert(cert.public_bytes(serialization.Encoding.PEM), _pkcs8(key))


def make_attestation_root(common_name: str, now: datetime, days: int = 3650) -> IssuedCert:
    """A self-signed Ed25519 CA standing in for the HSM vendor's attestation root."""
    key = ed25519.Ed25519PrivateKey.generate()
    return _self_signed_ca(key, common_name, now, days)


def issue_attestation_cert(root: IssuedCert, node_id: str, now: datetime, days: int = 397) -> IssuedCert:
    """A node's Ed25519 attestation certificate (CN ``node_id``, EKU :data:`ATTESTATION_EKU`)."""
    _require_aware(now, "now")
    root_cert, root_key = _load_issuer(root, "attestation root")
    if not isinstance(root_key, ed25519.Ed25519PrivateKey):
        raise UsageError("the attestation root key is not Ed25519: make it with make_attestation_root")
    key = ed25519.Ed25519PrivateKey.generate()
    builder = _leaf_builder(root_cert, key.public_key(), node_id, now, now - CLOCK_SKEW, days).add_extension(
        x509.ExtendedKeyUsage([ATTESTATION_EKU]), critical=False
    )
    cert = builder.sign(root_key, None)
    return IssuedCert(cert.public_bytes(serialization.Encoding.PEM), _pkcs8(key))


@functools.lru_cache(maxsize=8)
def _load_trusted(cert_pem_or_der: bytes) -> x509.Certificate:
    """A trust anchor from configuration, parsed once per distinct bytes (an agent checks every
    request against the same root); every check on it still runs at each use."""
    return load_cert(cert_pem_or_der)


def verify_attestation_chain(leaf_pem: bytes, root_pem: bytes, now: datetime) -> Ed25519PublicKey:
    """Check a node's attestation certificate against the attestation root; return its Ed25519 key
    (see :func:`verify_attestation_cert`)."""
    return verify_attestation_cert(leaf_pem, root_pem, now)[0]


def verify_attestation_cert(leaf_pem: bytes, root_pem: bytes, now: datetime) -> tuple[Ed25519PublicKey, str]:
    """Check a node's attestation certificate against the attestation root; return its Ed25519 key
    and the node id it certifies (its subject CN, the only one: a node's statements must name it).

    Checks, in order: the root is a CA; the leaf is directly issued by the root; both are within
    their validity at ``now``; the leaf is not a CA, may sign, carries :data:`ATTESTATION_EKU` and
    holds an Ed25519 key. Raises VerificationError naming the first check that failed.
    """
    _require_aware(now, "now")
    leaf = load_cert(leaf_pem)
    root = _load_trusted(root_pem) if isinstance(root_pem, bytes) else load_cert(root_pem)

    root_bc = _extension(root, x509.BasicConstraints)
    if root_bc is None or not root_bc.ca:
        raise VerificationError("attestation root is not a CA certificate")
    root_ku = _extension(root, x509.KeyUsage)
    if root_ku is not None and not root_ku.key_cert_sign:
        raise VerificationError("attestation root may not sign certificates (KeyUsage lacks keyCertSign)")

    try:
        leaf.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature) as e:
        raise VerificationError("attestation certificate is not signed by the attestation root") from e

    _check_validity(root, now, "attestation root")
    _check_validity(leaf, now, "attestation certificate")

    leaf_bc = _extension(leaf, x509.BasicConstraints)
    if leaf_bc is not None and leaf_bc.ca:
        raise VerificationError("attestation certificate is a CA certificate: a node key must be a leaf")
    leaf_ku = _extension(leaf, x509.KeyUsage)
    if leaf_ku is not None and not leaf_ku.digital_signature:
        raise VerificationError("attestation certificate may not sign (KeyUsage lacks digitalSignature)")
    eku = _extension(leaf, x509.ExtendedKeyUsage)
    if eku is None or ATTESTATION_EKU not in eku:
        raise VerificationError(
            f"attestation certificate lacks the attestation EKU {ATTESTATION_EKU.dotted_string}"
        )
    public_key = leaf.public_key()
    if not isinstance(public_key, Ed25519PublicKey):
        raise VerificationError("attestation certificate key is not Ed25519")
    names = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1 or not isinstance(names[0].value, str) or not names[0].value:
        raise VerificationError("attestation certificate must name its node in exactly one subject CN")
    return public_key, names[0].value


def make_wrapping_key(
    common_name: str, now: datetime, bits: int = 3072, days: int = 3650
) -> tuple[RSAPrivateKey, bytes]:
    """A custodian's RSA wrapping key pair and its self-signed certificate PEM (as ``openssl req -x509``).

    ``bits`` must be at least 2048 (3072 is the default the design recommends).
    """
    _require_aware(now, "now")
    if bits < _MIN_RSA_BITS:
        raise UsageError(
            f"wrapping key of {bits} bits is too small: use at least {_MIN_RSA_BITS} (3072 advised)"
        )
    _require_days(days)
    name = _name(common_name)
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    public_key = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            _key_usage(digital_signature=True, key_encipherment=True),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    cert = builder.sign(key, hashes.SHA256())
    return key, cert.public_bytes(serialization.Encoding.PEM)


# --- helpers -----------------------------------------------------------------------------------------

_CaKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def _require_aware(when: datetime, what: str) -> None:
    if when.tzinfo is None or when.utcoffset() is None:
        raise UsageError(f"{what} must be a timezone-aware datetime: pass datetime.now(timezone.utc)")


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


def _pkcs8(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _self_signed_ca(key: _CaKey, common_name: str, now: datetime, days: int) -> IssuedCert:
    _require_aware(now, "now")
    _require_days(days)
    name = _name(common_name)
    public_key = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    algorithm = hashes.SHA256() if isinstance(key, ec.EllipticCurvePrivateKey) else None
    cert = builder.sign(key, algorithm)
    return IssuedCert(cert.public_bytes(serialization.Encoding.PEM), _pkcs8(key))


def _load_issuer(issuer: IssuedCert, what: str) -> tuple[x509.Certificate, _CaKey]:
    """The issuer's certificate and key, checked to be a CA whose key matches its certificate."""
    try:
        cert = load_cert(issuer.cert_pem)
        key = serialization.load_pem_private_key(issuer.key_pem, password=None)
    except (MalformedError, ValueError, TypeError) as e:
        raise UsageError(f"the {what} certificate or key does not load: {e}") from e
    bc = _extension(cert, x509.BasicConstraints)
    if bc is None or not bc.ca:
        raise UsageError(f"the {what} certificate is not a CA: make it with the matching make_* function")
    if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise UsageError(f"the {what} key is neither ECDSA nor Ed25519")
    raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*raw) != cert.public_key().public_bytes(*raw):
        raise UsageError(f"the {what} key does not match its certificate")
    return cert, key


def _leaf_builder(
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
    issuer_ski = _extension(issuer, x509.SubjectKeyIdentifier)
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


def _extension(cert: x509.Certificate, ext_type: type[_E]) -> _E | None:
    """The value of ``cert``'s extension of ``ext_type``, None if absent; MalformedError if unparsable."""
    try:
        return cert.extensions.get_extension_for_class(ext_type).value
    except x509.ExtensionNotFound:
        return None
    except ValueError as e:
        raise MalformedError(
            f"certificate {cert.subject.rfc4514_string()} has malformed extensions: {e}"
        ) from e


def _check_validity(cert: x509.Certificate, now: datetime, what: str) -> None:
    if now < cert.not_valid_before_utc:
        raise VerificationError(f"{what} is not valid until {cert.not_valid_before_utc.isoformat()}")
    if now > cert.not_valid_after_utc:
        raise VerificationError(f"{what} expired at {cert.not_valid_after_utc.isoformat()}")
