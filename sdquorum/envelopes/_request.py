"""What an agent checks of a request before it touches its private key (step 2 of a recovery).

Invariants:

* :func:`check_request` returns a :class:`CheckedRequest` only when every check passed, in this
  order: attestation (chain, signature, node, time), purpose, rotation proposal hash, SD header hash,
  header signature, pinned domain keys, allowed domains, domain and epoch, the agent's memory of the
  domain (:func:`check_remembered`), and the slot's thumbprint being this agent's. Nothing is
  decrypted before.
* A remembered domain is served only under the key the agent pinned for it, and never at an epoch
  below the highest it has seen; digests are compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from sdquorum.envelopes._attestation import Attestation, CeremonyKind, ExchangeStatement, verify_attestation
from sdquorum.errors import VerificationError
from sdquorum.sdfile import Header, SignedHeader


@dataclass(frozen=True)
class CustodianPolicy:
    """What an agent accepts, from its configuration."""

    attestation_root_pem: bytes
    allowed_domains: frozenset[bytes] = frozenset()  # empty = any domain signed by a pinned key
    pinned_signing_keys: frozenset[bytes] = frozenset()
    azure_restore: bool = False  # agent.azure_restore: serve Azure restores (an external destination)


@dataclass(frozen=True)
class RememberedDomain:
    """What an agent remembers of one domain: the signing key it pinned and the highest epoch seen."""

    signing_public_key: bytes
    epoch: int


def check_remembered(header: Header, remembered: Mapping[bytes, RememberedDomain]) -> None:
    """Refuse a header of a remembered domain signed by another key, or of a retired (lower) epoch.

    A domain not remembered passes: the caller then remembers it (first use)."""
    seen = remembered.get(header.domain_id)
    if seen is None:
        return
    domain = header.domain_id.hex()
    if not hmac.compare_digest(header.signing_public_key, seen.signing_public_key):
        raise VerificationError(
            f"the SD header of domain {domain} is signed by a key other than the domain key this agent "
            "pinned: the file was re-signed"
        )
    if header.epoch < seen.epoch:
        raise VerificationError(
            f"epoch {header.epoch} of domain {domain} was retired: this agent has seen epoch {seen.epoch}"
        )


@dataclass(frozen=True)
class CheckedRequest:
    """A request that passed every check an agent makes before decrypting anything."""

    statement: ExchangeStatement
    attestation_sha256: bytes
    header: Header
    x: int


def check_request(
    attestation: Attestation,
    signed_header: SignedHeader,
    x: int,
    my_thumbprint: bytes,
    policy: CustodianPolicy,
    now: datetime,
    *,
    purpose: str = CeremonyKind.RECOVERY,
    proposal: bytes = b"",
    remembered: Mapping[bytes, RememberedDomain] | None = None,
) -> CheckedRequest:
    """Every check an agent makes before it touches its private key (DESIGN.md, Recovery).

    ``purpose`` is what the request says it is; the signed statement must say the same. For a
    rotation, ``proposal`` is the roster shown to the custodian and must hash to the attested value.
    ``remembered`` is the agent's memory of domains (:func:`check_remembered`).
    """
    st = verify_attestation(attestation, policy.attestation_root_pem, now)
    if st.purpose != purpose:
        raise VerificationError(f"the request says {purpose!r} but its attestation says {st.purpose!r}")
    if purpose == CeremonyKind.ROTATION and not hmac.compare_digest(
        hashlib.sha256(proposal).digest(), st.proposal_sha256
    ):
        raise VerificationError("the rotation proposal shown differs from the one the node attested")
    if not hmac.compare_digest(st.sd_header_sha256, signed_header.sha256):
        raise VerificationError("the attestation names a different SD file than the one sent")
    header = signed_header.verify()
    if policy.pinned_signing_keys and header.signing_public_key not in policy.pinned_signing_keys:
        raise VerificationError("the SD file is signed by a domain key this agent has not pinned")
    if policy.allowed_domains and header.domain_id not in policy.allowed_domains:
        raise VerificationError(
            f"domain {header.domain_id.hex()} is not allowed by this agent's configuration"
        )
    if st.domain_id != header.domain_id or st.epoch != header.epoch:
        raise VerificationError("the attestation names another domain or epoch than the SD file")
    check_remembered(header, remembered or {})
    slot = header.slot(x)
    if not hmac.compare_digest(slot.thumbprint, my_thumbprint):
        raise VerificationError(f"slot {x} belongs to another custodian's certificate, not this agent's")
    return CheckedRequest(st, attestation.sha256, header, x)
