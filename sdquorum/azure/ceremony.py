"""The custodian's side of a distributed Azure restore: the checks before decryption, and the release.

An Azure v2 file names each share only by the SHA-256 thumbprint of its wrapping certificate. The
node attests a session whose statement binds SHA-256 of the whole Azure file (``sd_header_sha256``),
a pseudo domain id (its first 16 bytes) and epoch 0; the agent checks the attestation, that the file
it was sent is that file, and that the requested slot's ``x5t_256`` is its own certificate's; then it
decrypts only its own share (through its key handle: a file or a PKCS#11 token), and releases it
exactly as a native share, sealed to the attested exchange key and signed with its wrapping key. Its
certificate travels with the release, since the file does not carry it; the node accepts it only if
its thumbprint is the slot's.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime

import nacl.public

from sdquorum.azure import gf257
from sdquorum.azure.sdfile import AzureSecurityDomain, decrypt_share
from sdquorum.encoding import b64d, b64e, canonical_json, parse_json_object
from sdquorum.envelopes import (
    Attestation,
    CustodianPolicy,
    ExchangeStatement,
    Release,
    SlotKey,
    open_sealed_share,
    seal_release,
    verify_attestation,
)
from sdquorum.errors import MalformedError, UnauthenticatedError, VerificationError
from sdquorum.keys import WrappingKey

__all__ = [
    "AZURE_PURPOSE",
    "AzureAnswer",
    "CheckedAzureRequest",
    "azure_domain_id",
    "check_azure_request",
    "open_azure_answer",
    "release_azure_share",
]

AZURE_PURPOSE = "azure-recovery"
ANSWER_TYPE = "sdquorum-azure-release-v1"


def azure_domain_id(sd_bytes: bytes) -> bytes:
    """Azure files carry no domain id: sdquorum names one by the file's hash."""
    return hashlib.sha256(sd_bytes).digest()[:16]


@dataclass(frozen=True)
class CheckedAzureRequest:
    statement: ExchangeStatement
    attestation_sha256: bytes
    sd: AzureSecurityDomain
    slot: int


def check_azure_request(
    attestation: Attestation,
    sd_bytes: bytes,
    slot: int,
    my_thumbprint: bytes,
    policy: CustodianPolicy,
    now: datetime,
) -> CheckedAzureRequest:
    st = verify_attestation(attestation, policy.attestation_root_pem, now)
    if st.purpose != AZURE_PURPOSE:
        raise VerificationError(f"the request is an Azure restore but its attestation says {st.purpose!r}")
    if not hmac.compare_digest(st.sd_header_sha256, hashlib.sha256(sd_bytes).digest()):
        raise VerificationError("the attestation names another Azure file than the one sent")
    if st.domain_id != azure_domain_id(sd_bytes) or st.epoch != 0:
        raise VerificationError("the attestation's domain does not match the Azure file")
    if policy.allowed_domains and st.domain_id not in policy.allowed_domains:
        raise VerificationError(
            f"Azure domain {st.domain_id.hex()} is not allowed by this agent's configuration"
        )
    if policy.pinned_signing_keys and st.domain_id not in policy.allowed_domains:
        # An Azure file is signed by no domain key, so a pin can never be met: an agent that pins
        # serves an Azure domain only when its configuration names that domain outright.
        raise VerificationError(
            f"this agent pins domain signing keys and Azure domain {st.domain_id.hex()} has none: "
            "allow that domain by its id to serve it"
        )
    sd = AzureSecurityDomain.from_bytes(sd_bytes)
    if not 1 <= slot <= sd.n:
        raise VerificationError(f"the Azure file has no slot {slot}")
    if not hmac.compare_digest(sd.shares[slot - 1].x5t_256, my_thumbprint):
        raise VerificationError(
            f"Azure slot {slot} belongs to another custodian's certificate, not this agent's"
        )
    return CheckedAzureRequest(st, attestation.sha256, sd, slot)


@dataclass(frozen=True)
class AzureAnswer:
    release: Release
    certificate_der: bytes

    def to_bytes(self) -> bytes:
        return canonical_json(
            {
                "type": ANSWER_TYPE,
                "release": b64e(self.release.to_bytes()),
                "certificate": b64e(self.certificate_der),
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> AzureAnswer:
        obj = parse_json_object(data, "Azure release")
        if obj.get("type") != ANSWER_TYPE:
            raise MalformedError("not an sdquorum Azure release")
        return cls(
            Release.from_bytes(b64d(obj.get("release"), "release")),
            b64d(obj.get("certificate"), "certificate"),
        )


def release_azure_share(checked: CheckedAzureRequest, key: WrappingKey) -> AzureAnswer:
    """Decrypt this custodian's own share and release it sealed to the attested exchange key."""
    share = decrypt_share(checked.sd, key)
    release = seal_release(checked.statement, checked.attestation_sha256, checked.slot, share.to_bytes(), key)
    return AzureAnswer(release, key.certificate_der())


def open_azure_answer(
    answer: AzureAnswer,
    *,
    sd: AzureSecurityDomain,
    sd_bytes: bytes,
    slot: int,
    session_id: str,
    attestation_sha256: bytes,
    exchange_key: nacl.public.PrivateKey,
) -> gf257.Share:
    """Check an Azure release for ``slot`` (certificate thumbprint, signature, bindings) and open it."""
    if not hmac.compare_digest(hashlib.sha256(answer.certificate_der).digest(), sd.shares[slot - 1].x5t_256):
        raise UnauthenticatedError(
            f"the release's certificate is not the one Azure slot {slot} is encrypted to"
        )
    raw = open_sealed_share(
        answer.release,
        slot=SlotKey(slot, answer.certificate_der, azure_domain_id(sd_bytes), 0),
        session_id=session_id,
        attestation_sha256=attestation_sha256,
        exchange_key=exchange_key,
    )
    return gf257.Share.from_bytes(raw)
