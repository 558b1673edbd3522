"""Each slot of a roster as the review sees it: current holder and location, last drill, key status.

I/O-free. Records apply by slot name and, for a loss that names its key, by SPKI SHA-256 (a key
recorded lost stays lost under any certificate); they are taken in time order. A drill counts only
for its slot's x and name, and only at or after the epoch was sealed. The rules that read these
facts are in :mod:`sdquorum.review.rules`.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from sdquorum.errors import MalformedError
from sdquorum.pki import spki_sha256
from sdquorum.review.model import (
    LOSS_KINDS,
    CustodianReview,
    CustodianStatus,
    CustodyRecord,
    DrillResult,
    RecordKind,
)
from sdquorum.sdfile import Slot

__all__ = ["custodian_review"]


def custodian_review(
    slot: Slot, ordered: Sequence[CustodyRecord], drills: Sequence[DrillResult], sealed_at: int
) -> CustodianReview:
    """``slot`` with its history: ``ordered`` holds every custody record in time order (stable)."""
    history = tuple(r for r in ordered if r.custodian == slot.name)
    holder, location = slot.name, ""
    for r in history:
        if r.kind == RecordKind.HANDOFF:
            holder = r.holder
        if r.location:
            location = r.location
    mine = [d for d in drills if d.x == slot.x and d.custodian == slot.name and d.time >= sealed_at]
    last_drill = max(reversed(mine), key=lambda d: d.time, default=None)  # the later-given one wins a tie
    losses = {r.kind for r in history if r.kind in LOSS_KINDS and r.time >= sealed_at}
    key = spki_sha256(slot.certificate_der)
    losses |= {r.kind for r in ordered if r.kind in LOSS_KINDS and r.key_sha256 and r.key_sha256 == key}
    status = (
        CustodianStatus.COMPROMISED
        if RecordKind.COMPROMISED in losses
        else CustodianStatus.LOST
        if RecordKind.LOST in losses
        else CustodianStatus.OK
    )
    key_bits, not_after = _certificate_facts(slot)
    return CustodianReview(
        x=slot.x,
        name=slot.name,
        holder=holder,
        location=location,
        key_bits=key_bits,
        cert_not_after=not_after,
        last_drill=last_drill,
        history=history,
        status=status,
    )


def _certificate_facts(slot: Slot) -> tuple[int, int]:
    try:
        cert = x509.load_der_x509_certificate(slot.certificate_der)
        key = cert.public_key()
    except ValueError as e:
        raise MalformedError(f"slot {slot.x} ({slot.name}) holds a certificate that does not parse") from e
    bits = key.key_size if isinstance(key, rsa.RSAPublicKey) else 0
    return bits, int(cert.not_valid_after_utc.timestamp())
