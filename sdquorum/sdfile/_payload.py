"""The SD payload (the domain's secrets) and the two operations on it: seal and open.

Invariants:

* :func:`seal_domain` splits a fresh uniformly random scalar among the custodians' certificates
  (distinct keys, :data:`MIN_CUSTODIANS`..:data:`MAX_CUSTODIANS` of them), encrypts each share to
  its certificate under its :func:`share_label`, and seals the payload with AES-256-GCM under
  KEK = HKDF-SHA256(s, domain_id || epoch, :data:`KEK_INFO`) and the header's
  :meth:`Header.payload_aad`; the signed header binds the ciphertext by its hash. New files are
  version 2.
* :func:`open_domain` uses a reconstructed secret only if s*B equals the first commitment (constant
  time), and returns the payload only if it names the header's domain and signing key.
* :class:`DomainSecrets` never prints key material; its parsing is strict (known members, 32-byte
  keys).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass, replace

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import NameOID
from nacl.bindings import crypto_scalarmult_ed25519_base_noclamp

from sdquorum import fields as f
from sdquorum import shamir
from sdquorum.encoding import b64d, b64e, canonical_json, parse_json_object
from sdquorum.errors import MalformedError, UsageError, VerificationError
from sdquorum.keys import encrypt_oaep
from sdquorum.pki import spki_sha256
from sdquorum.sdfile._file import SecurityDomainFile, payload_sha256
from sdquorum.sdfile._header import (
    HEADER_CONTEXT_V2,
    MAX_CUSTODIANS,
    MIN_CUSTODIANS,
    NAME_RE,
    Header,
    SignedHeader,
    Slot,
    refuse_unknown,
    share_label,
)

PAYLOAD_TYPE = "sdquorum-sd-payload"
PAYLOAD_VERSION = 1  # the decrypted payload's own format, unchanged by file version 2
_SECRETS_KEYS = frozenset(
    {"type", "version", "domain_id", "data_encryption_key", "signing_key", "backup_key", "admins", "keystore"}
)
KEK_INFO = b"sdquorum kek v1"


def derive_kek(secret: int, domain_id: bytes, epoch: int) -> bytes:
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=domain_id + epoch.to_bytes(4, "big"),
        info=KEK_INFO,
    )
    return hkdf.derive(secret.to_bytes(32, "little"))


@dataclass(frozen=True, repr=False)
class DomainSecrets:
    """The SD payload: what only a reconstructed quorum (or the node holding the domain) may see."""

    domain_id: bytes
    data_encryption_key: bytes
    signing_key: bytes  # Ed25519 seed of the domain signing key
    backup_key: bytes
    admins: tuple[str, ...] = ()
    keystore: bytes = b""  # key store snapshot at the time of sealing (node-defined encoding)

    def __repr__(self) -> str:  # never print key material
        return f"DomainSecrets(domain_id={self.domain_id.hex()})"

    @property
    def signing_public_key(self) -> bytes:
        return (
            Ed25519PrivateKey.from_private_bytes(self.signing_key)
            .public_key()
            .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        )

    def sign(self, message: bytes) -> bytes:
        return Ed25519PrivateKey.from_private_bytes(self.signing_key).sign(message)

    def to_bytes(self) -> bytes:
        return canonical_json(
            {
                "type": PAYLOAD_TYPE,
                "version": PAYLOAD_VERSION,
                "domain_id": self.domain_id.hex(),
                "data_encryption_key": b64e(self.data_encryption_key),
                "signing_key": b64e(self.signing_key),
                "backup_key": b64e(self.backup_key),
                "admins": list(self.admins),
                "keystore": b64e(self.keystore),
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> DomainSecrets:
        obj = parse_json_object(data, "SD payload")
        if obj.get("type") != PAYLOAD_TYPE or obj.get("version") != PAYLOAD_VERSION:
            raise MalformedError("SD payload: unknown type or version")
        refuse_unknown(obj, _SECRETS_KEYS, "SD payload")
        admins = obj.get("admins")
        if not isinstance(admins, list) or not all(isinstance(a, str) for a in admins):
            raise MalformedError("SD payload: admins must be a list of strings")
        secrets = cls(
            domain_id=f.hex_bytes(obj.get("domain_id"), "SD file: domain_id", 16),
            data_encryption_key=b64d(obj.get("data_encryption_key"), "data_encryption_key"),
            signing_key=b64d(obj.get("signing_key"), "signing_key"),
            backup_key=b64d(obj.get("backup_key"), "backup_key"),
            admins=tuple(admins),
            keystore=b64d(obj.get("keystore"), "keystore"),
        )
        if not (
            len(secrets.data_encryption_key) == len(secrets.signing_key) == len(secrets.backup_key) == 32
        ):
            raise MalformedError("SD payload: every key must be 32 bytes")
        return secrets


def new_domain_secrets(rng: shamir.Rng, admins: Sequence[str] = ()) -> DomainSecrets:
    return DomainSecrets(
        domain_id=rng(16),
        data_encryption_key=rng(32),
        signing_key=rng(32),
        backup_key=rng(32),
        admins=tuple(admins),
    )


def seal_domain(
    secrets: DomainSecrets,
    certificates_der: Sequence[bytes],
    quorum: int,
    *,
    epoch: int,
    created_by: str,
    created_at: int,
    rng: shamir.Rng,
) -> SecurityDomainFile:
    """Split a fresh secret among the certificates' holders and seal ``secrets`` under its KEK.

    The caller validates the certificates first (:func:`sdquorum.policy.validate_download`).
    """
    n = len(certificates_der)
    if not MIN_CUSTODIANS <= n <= MAX_CUSTODIANS:
        raise UsageError(f"a security domain needs {MIN_CUSTODIANS}..{MAX_CUSTODIANS} custodians, got {n}")
    if len({spki_sha256(c) for c in certificates_der}) != n:
        raise UsageError("two certificates hold the same key: each custodian needs a key of their own")
    secret = shamir.random_scalar(rng)
    shares, commitments = shamir.split(secret, quorum, n, rng)
    slots = []
    for share, cert in zip(shares, certificates_der, strict=True):
        label = share_label(secrets.domain_id, epoch, share.x)
        slots.append(
            Slot(
                x=share.x,
                name=_slot_name(cert, share.x),
                certificate_der=cert,
                thumbprint=hashlib.sha256(cert).digest(),
                encrypted_share=encrypt_oaep(cert, share.to_bytes(), label),
            )
        )
    header = Header(
        domain_id=secrets.domain_id,
        epoch=epoch,
        quorum=quorum,
        slots=tuple(slots),
        commitments=commitments,
        signing_public_key=secrets.signing_public_key,
        created_by=created_by,
        created_at=created_at,
    )
    nonce = rng(12)
    kek = derive_kek(secret, secrets.domain_id, epoch)
    ciphertext = AESGCM(kek).encrypt(nonce, secrets.to_bytes(), header.payload_aad())
    header_bytes = replace(header, payload_sha256=payload_sha256(nonce, ciphertext)).to_bytes()
    signed = SignedHeader(header_bytes, secrets.sign(HEADER_CONTEXT_V2 + header_bytes))
    return SecurityDomainFile(signed, nonce, ciphertext)


def open_domain(sd: SecurityDomainFile, secret: int) -> DomainSecrets:
    """Decrypt the payload with the reconstructed secret; every binding is checked."""
    header = sd.header
    if not _matches_commitment(secret, header.commitments.public_secret()):
        raise VerificationError("the reconstructed secret does not match the commitments")
    kek = derive_kek(secret, header.domain_id, header.epoch)
    aad = header.payload_aad() if header.version >= 2 else sd.signed_header.sha256
    try:
        plaintext = AESGCM(kek).decrypt(sd.nonce, sd.ciphertext, aad)
    except InvalidTag as e:
        raise VerificationError("the SD payload does not decrypt: the file was altered") from e
    secrets = DomainSecrets.from_bytes(plaintext)
    if secrets.domain_id != header.domain_id or secrets.signing_public_key != header.signing_public_key:
        raise VerificationError("the SD payload belongs to another domain than its header")
    return secrets


def _matches_commitment(secret: int, a0: bytes) -> bool:
    """s*B == A_0, in constant time; a zero or out-of-range secret never matches."""
    if not 0 < secret < shamir.L:
        return False
    try:
        point = crypto_scalarmult_ed25519_base_noclamp(secret.to_bytes(32, "little"))
    except RuntimeError:
        return False
    return hmac.compare_digest(point, a0)


def _slot_name(cert_der: bytes, x: int) -> str:
    try:
        cns = x509.load_der_x509_certificate(cert_der).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except ValueError:
        cns = []
    name = str(cns[0].value) if cns else ""
    return name if NAME_RE.fullmatch(name) else f"custodian-{x}"
