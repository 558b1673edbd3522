"""Activation policy: which custodian certificates and quorum a security domain may be sealed to.

Rules (from the source document and DESIGN.md):

* n, the number of custodians, is 3..10; the quorum m is 2..n. m = 2 is allowed with a warning
  (the source document asks for m >= 3).
* Every certificate holds an RSA key of at least 2048 bits (3072 recommended: warning below), is
  within its validity period, and no two certificates hold the same key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sdquorum.errors import MalformedError, UsageError
from sdquorum.pki import load_cert, spki_sha256

__all__ = ["MAX_CUSTODIANS", "MIN_CUSTODIANS", "MIN_RSA_BITS", "DownloadPlan", "validate_download"]

MIN_CUSTODIANS = 3
MAX_CUSTODIANS = 10
MIN_QUORUM = 2
MIN_RSA_BITS = 2048
RECOMMENDED_RSA_BITS = 3072
RECOMMENDED_QUORUM = 3


@dataclass(frozen=True)
class DownloadPlan:
    certificates_der: tuple[bytes, ...]
    quorum: int
    warnings: tuple[str, ...]


def validate_download(certificates: Sequence[bytes], quorum: int, now: datetime) -> DownloadPlan:
    """Check a download request; raise UsageError naming the first problem and its fix."""
    if now.tzinfo is None:
        raise UsageError("validate_download needs a timezone-aware time (datetime.now(UTC))")
    n = len(certificates)
    if not MIN_CUSTODIANS <= n <= MAX_CUSTODIANS:
        raise UsageError(
            f"{n} custodian certificates given: a security domain needs {MIN_CUSTODIANS} to {MAX_CUSTODIANS}"
        )
    if quorum < MIN_QUORUM:
        raise UsageError(f"quorum {quorum} is too small: use at least {MIN_QUORUM} (3 or more recommended)")
    if quorum > n:
        raise UsageError(f"quorum {quorum} is larger than the {n} custodians: use a quorum of 2..{n}")
    warnings: list[str] = []
    if quorum < RECOMMENDED_QUORUM:
        warnings.append(
            f"quorum {quorum} is below the recommended {RECOMMENDED_QUORUM}: two people can rebuild the HSM"
        )
    ders: list[bytes] = []
    seen: dict[bytes, int] = {}
    for i, data in enumerate(certificates, start=1):
        cert = _load(data, i)
        try:
            key = cert.public_key()
        except (ValueError, UnsupportedAlgorithm) as e:
            raise UsageError(
                f"certificate #{i} holds a public key that does not parse: ask the custodian for a new one"
            ) from e
        if not isinstance(key, rsa.RSAPublicKey):
            raise UsageError(
                f"certificate #{i} does not hold an RSA key: custodian keys must be RSA >= {MIN_RSA_BITS} bits"
            )
        if key.key_size < MIN_RSA_BITS:
            raise UsageError(
                f"certificate #{i} holds a {key.key_size}-bit key: use RSA of at least {MIN_RSA_BITS} bits"
            )
        if key.key_size < RECOMMENDED_RSA_BITS:
            warnings.append(
                f"certificate #{i} holds a {key.key_size}-bit key: {RECOMMENDED_RSA_BITS} bits recommended"
            )
        if now > cert.not_valid_after_utc:
            raise UsageError(
                f"certificate #{i} ({_cn(cert)}) expired on {cert.not_valid_after_utc:%Y-%m-%d}: ask the custodian for a new one"
            )
        if now < cert.not_valid_before_utc:
            raise UsageError(
                f"certificate #{i} ({_cn(cert)}) is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
            )
        spki = spki_sha256(data)
        if spki in seen:
            raise UsageError(
                f"certificates #{seen[spki]} and #{i} hold the same key: each custodian needs a key of their own"
            )
        seen[spki] = i
        ders.append(cert.public_bytes(serialization.Encoding.DER))
    return DownloadPlan(tuple(ders), quorum, tuple(warnings))


def _load(data: bytes, i: int) -> x509.Certificate:
    try:
        return load_cert(data)
    except MalformedError as e:
        raise UsageError(f"certificate #{i} is not a PEM or DER X.509 certificate: {e}") from e


def _cn(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "no subject"
