"""Checking a node's attestation certificate against the attestation root the agents trust.

Invariants:

* :func:`verify_attestation_cert` returns a key only after every check passed, in order: the root
  is a CA that may sign certificates; the leaf is directly issued by it; both are valid at ``now``;
  the leaf is not a CA, may sign, carries :data:`ATTESTATION_EKU`, holds an Ed25519 key and names
  its node in exactly one subject CN. The first failed check raises a VerificationError naming it.
* A trust anchor is parsed once per distinct bytes (:func:`_load_trusted`); its checks still run at
  every use.
"""

from __future__ import annotations

import functools
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.x509.oid import NameOID

from sdquorum.errors import VerificationError
from sdquorum.pki._certs import ATTESTATION_EKU, check_validity, extension, load_cert, require_aware


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
    require_aware(now, "now")
    leaf = load_cert(leaf_pem)
    root = _load_trusted(root_pem) if isinstance(root_pem, bytes) else load_cert(root_pem)

    root_bc = extension(root, x509.BasicConstraints)
    if root_bc is None or not root_bc.ca:
        raise VerificationError("attestation root is not a CA certificate")
    root_ku = extension(root, x509.KeyUsage)
    if root_ku is not None and not root_ku.key_cert_sign:
        raise VerificationError("attestation root may not sign certificates (KeyUsage lacks keyCertSign)")

    try:
        leaf.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature) as e:
        raise VerificationError("attestation certificate is not signed by the attestation root") from e

    check_validity(root, now, "attestation root")
    check_validity(leaf, now, "attestation certificate")

    leaf_bc = extension(leaf, x509.BasicConstraints)
    if leaf_bc is not None and leaf_bc.ca:
        raise VerificationError("attestation certificate is a CA certificate: a node key must be a leaf")
    leaf_ku = extension(leaf, x509.KeyUsage)
    if leaf_ku is not None and not leaf_ku.digital_signature:
        raise VerificationError("attestation certificate may not sign (KeyUsage lacks digitalSignature)")
    eku = extension(leaf, x509.ExtendedKeyUsage)
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
