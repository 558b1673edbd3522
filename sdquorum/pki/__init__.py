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

Modules: :mod:`._certs` (loading certificates, digests, roles), :mod:`._attestation` (checking an
attestation certificate) and :mod:`._issue` (issuing every kind of certificate above).
"""

from __future__ import annotations

from sdquorum.pki._attestation import verify_attestation_cert, verify_attestation_chain
from sdquorum.pki._certs import (
    ATTESTATION_EKU,
    CLOCK_SKEW,
    ROLE_KINDS,
    ROLE_URI_PREFIX,
    Role,
    load_cert,
    role_from_cert,
    spki_sha256,
    thumbprint_sha256,
)
from sdquorum.pki._issue import (
    IssuedCert,
    issue_attestation_cert,
    issue_tls_cert,
    make_attestation_root,
    make_ca,
    make_wrapping_key,
)

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
    "verify_attestation_cert",
    "verify_attestation_chain",
]
