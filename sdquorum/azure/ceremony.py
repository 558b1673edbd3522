"""The custodian's side of a distributed Azure restore: the checks before decryption, and the release.

An Azure v2 file names each share only by the SHA-256 thumbprint of its wrapping certificate. The
node attests a session whose statement binds SHA-256 of the whole Azure file (``sd_header_sha256``),
a pseudo domain id (its first 16 bytes), epoch 0 and the Azure exchange certificate the transfer
file will be wrapped to (``destination_certificate``). That certificate is an EXTERNAL key: the node
cannot attest it, and whoever holds its private key opens the restored domain. So:

* an agent serves Azure restores only when its configuration opts in (``agent.azure_restore``,
  :attr:`CustodianPolicy.azure_restore`, default off);
* it shows its custodian that certificate (subject, SHA-256 of its SubjectPublicKeyInfo and of its
  DER: :func:`exchange_certificate_summary`) from the signed statement, the one the coordinator wraps
  the transfer file to, so no node can show one certificate and wrap to another;
* it refuses a file that holds an sdquorum domain exported for Azure (an EncData item tagged
  :data:`AZURE_PAYLOAD_TAG`; the tag is authenticated: renamed, the item no longer opens): a native
  domain's shares go only into a native recovery, whose result stays inside an attested node.

Then the agent checks the attestation, that the file it was sent is that file, and that the
requested slot's ``x5t_256`` is its own certificate's; it decrypts only its own share (through its
key handle: a file or a PKCS#11 token), checks that the share's x is its slot (a share's x is fixed
by its slot in the file, never by an answer), and releases it exactly as a native share, sealed to
the attested exchange key and signed with its wrapping key. Its certificate travels with the
release, since the file does not carry it; the node accepts it only if its thumbprint is the slot's,
and the share only if its x is that slot's.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime

import nacl.public
from cryptography.hazmat.primitives.asymmetric import rsa

from sdquorum import pki
from sdquorum.azure import gf257, jwe
from sdquorum.azure.sdfile import AzureSecurityDomain, Item, decrypt_share
from sdquorum.encoding import b64d, b64e, canonical_json, parse_json_object
from sdquorum.envelopes import (
    Attestation,
    CeremonyKind,
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
from sdquorum.sdfile import PAYLOAD_TYPE

__all__ = [
    "AZURE_PAYLOAD_TAG",
    "AZURE_PURPOSE",
    "AzureAnswer",
    "CheckedAzureRequest",
    "ExchangeCertificate",
    "azure_domain_id",
    "check_azure_request",
    "exchange_certificate_summary",
    "holds_sdquorum_domain",
    "open_azure_answer",
    "release_azure_share",
]

AZURE_PURPOSE = CeremonyKind.AZURE_RECOVERY
ANSWER_TYPE = "sdquorum-azure-release-v1"
AZURE_PAYLOAD_TAG = "sdquorum-payload-v1"
"""The one EncData item of a native domain exported for Azure (``sdctl sd-file --format azure``)."""
OPT_IN_HINT = (
    "set agent.azure_restore = true in the agent's configuration (or --azure-restore, or "
    "SDQUORUM_AGENT_AZURE_RESTORE=1; for 'custodian-agent respond': --azure-restore) to serve them"
)


@dataclass(frozen=True)
class ExchangeCertificate:
    """What a custodian is shown of the Azure exchange certificate: an external, unattested key."""

    subject: str
    spki_sha256: bytes  # the key's identity (the same under any certificate)
    sha256: bytes  # SHA-256 of the certificate's DER (its x5t_256)


def exchange_certificate_summary(certificate_der: bytes) -> ExchangeCertificate:
    """The exchange certificate's subject and digests; MalformedError unless it holds an RSA key of
    at least 2048 bits (what the transfer file can be wrapped to: checked before anyone is asked)."""
    cert = pki.load_cert(certificate_der)
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey) or key.key_size < jwe.MIN_RSA_BITS:
        raise MalformedError(
            f"the Azure exchange certificate must hold an RSA key of {jwe.MIN_RSA_BITS}+ bits"
        )
    return ExchangeCertificate(
        subject=cert.subject.rfc4514_string()[:200],
        spki_sha256=pki.spki_sha256(certificate_der),
        sha256=pki.thumbprint_sha256(certificate_der),
    )


def holds_sdquorum_domain(sd: AzureSecurityDomain, items: list[Item] | None = None) -> str:
    """Why ``sd`` holds an sdquorum security domain ("" if it does not): an item tagged
    :data:`AZURE_PAYLOAD_TAG`, or (given the opened ``items``) a plaintext holding an SD payload."""
    if any(d.tag == AZURE_PAYLOAD_TAG for d in sd.data):
        return (
            f"it has an EncData item tagged {AZURE_PAYLOAD_TAG!r} (written by 'sdctl sd-file --format azure')"
        )
    for tag, plaintext in items or []:
        if PAYLOAD_TYPE.encode() in plaintext:
            return f"its EncData item {tag[:40]!r} holds an sdquorum SD payload"
    return ""


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
    if not policy.azure_restore:
        raise VerificationError(
            "this agent does not serve Azure restores (agent.azure_restore is off): an Azure restore "
            f"re-encrypts the domain to an external key no node attests; {OPT_IN_HINT}"
        )
    st = verify_attestation(attestation, policy.attestation_root_pem, now)
    if st.purpose != AZURE_PURPOSE:
        raise VerificationError(f"the request is an Azure restore but its attestation says {st.purpose!r}")
    exchange_certificate_summary(st.destination_certificate)  # the statement binds an RSA certificate
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
    why = holds_sdquorum_domain(sd)
    if why:
        raise VerificationError(
            f"the Azure file holds an sdquorum security domain ({why}): its shares are released only "
            "into a native recovery on an attested node, never to an external Azure key"
        )
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
    if share.x != checked.slot:
        raise VerificationError(
            f"the share encrypted to this agent in slot {checked.slot} carries x={share.x}: "
            "a share's x must be its slot"
        )
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
    """Check an Azure release for ``slot`` (certificate thumbprint, signature, bindings), open it, and
    check its x is ``slot``: an answer never chooses which x its share stands for. The custodian
    signed it, so a wrong x is a VerificationError (its slot is rejected and named)."""
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
    try:
        share = gf257.Share.from_bytes(raw)
    except MalformedError as e:  # signed by the slot's key: its custodian's failure
        raise VerificationError(f"the signed release of Azure slot {slot} seals no valid share ({e})") from e
    if share.x != slot:
        raise VerificationError(f"the share of slot {slot} carries x={share.x}: a share's x is its slot")
    return share
