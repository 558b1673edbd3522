"""Reading certificates: loading, the two digests that name a certificate and a key, and roles.

Invariants:

* :func:`load_cert` accepts exactly one certificate (PEM or DER) and parses its names and
  extensions at once, so malformed bytes are a :class:`~sdquorum.errors.MalformedError` here and
  nowhere later; :func:`extension` does the same for an extension that does not parse.
* A certificate is addressed by :func:`thumbprint_sha256` (its DER, Azure's ``x5t_256``); a key's
  identity is :func:`spki_sha256` (its SubjectPublicKeyInfo), the same across re-issued
  certificates.
* A peer's role is exactly one ``sdquorum://role/`` URI SAN (:func:`role_from_cert`); zero, several
  or an unparsable one is a :class:`~sdquorum.errors.VerificationError`.
* Times are timezone-aware (:func:`require_aware`); no clock is read here.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from sdquorum.errors import MalformedError, UsageError, VerificationError

ROLE_URI_PREFIX = "sdquorum://role/"
ROLE_KINDS = frozenset({"admin", "app", "custodian", "node"})

# Placeholder OID under an unassigned private-enterprise arc (99999); replace with a registered
# arc before any deployment outside the demo.
ATTESTATION_EKU = x509.ObjectIdentifier("1.3.6.1.4.1.99999.1.1")
CLOCK_SKEW = timedelta(minutes=5)
_CUSTODIAN_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_E = TypeVar("_E", bound=x509.ExtensionType)


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

    A pure function of the bytes, remembered for the last :data:`_SPKI_CACHE` certificates: a
    header's duplicate-key check digests every slot's certificate each time a header is parsed
    (each request an agent answers), and parsing them was a tenth of an agent's answer. Bytes that
    are no certificate are refused every time (an exception is never remembered).
    """
    if not isinstance(cert_pem_or_der, bytes | bytearray):
        raise MalformedError("certificate must be bytes (PEM or DER)")
    data = bytes(cert_pem_or_der)
    if len(data) > _SPKI_CACHED_BYTES:  # never remembered: a padded PEM must not pin memory
        return _spki_of(data)
    return _spki_sha256(data)


_SPKI_CACHE = 256  # certificates: more than the slots of a few headers (n <= 64 each)
_SPKI_CACHED_BYTES = 16 * 1024  # larger than any certificate sdquorum issues or reads


def _spki_of(data: bytes) -> bytes:
    cert = load_cert(data)
    try:
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm) as e:  # a key that does not parse: no identity
        raise MalformedError("the certificate's public key does not parse") from e
    spki = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).digest()


_spki_sha256 = functools.lru_cache(maxsize=_SPKI_CACHE)(_spki_of)


def role_from_cert(cert_pem_or_der: bytes) -> Role:
    """The role in the certificate's single ``sdquorum://role/`` URI SAN.

    VerificationError if there is none, more than one, or it does not parse as a role.
    """
    cert = load_cert(cert_pem_or_der)
    san = extension(cert, x509.SubjectAlternativeName)
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


def require_aware(when: datetime, what: str) -> None:
    if when.tzinfo is None or when.utcoffset() is None:
        raise UsageError(f"{what} must be a timezone-aware datetime: pass datetime.now(timezone.utc)")


def extension(cert: x509.Certificate, ext_type: type[_E]) -> _E | None:
    """The value of ``cert``'s extension of ``ext_type``, None if absent; MalformedError if unparsable."""
    try:
        return cert.extensions.get_extension_for_class(ext_type).value
    except x509.ExtensionNotFound:
        return None
    except ValueError as e:
        raise MalformedError(
            f"certificate {cert.subject.rfc4514_string()} has malformed extensions: {e}"
        ) from e


def check_validity(cert: x509.Certificate, now: datetime, what: str) -> None:
    if now < cert.not_valid_before_utc:
        raise VerificationError(f"{what} is not valid until {cert.not_valid_before_utc.isoformat()}")
    if now > cert.not_valid_after_utc:
        raise VerificationError(f"{what} expired at {cert.not_valid_after_utc.isoformat()}")
