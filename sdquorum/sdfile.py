"""The security domain (SD) file, native format version 2 (version 1 is still read).

Layout (JSON, UTF-8)::

    {"format": "sdquorum-security-domain", "version": 2,
     "header": b64url(header bytes), "header_signature": b64url(Ed25519 signature),
     "payload": {"alg": "A256GCM", "nonce": b64url(12 bytes), "ciphertext": b64url(...)}}

Invariants:

* The header is canonical JSON carried as the exact bytes that were signed. It names the domain,
  epoch, quorum m, the n custodian slots (wrapping certificate, its SHA-256 thumbprint, and the
  RSA-OAEP-SHA256 encrypted share whose OAEP label binds domain, epoch and x), the Feldman
  commitments, the domain signing public key, the creating node and (version 2) ``payload_sha256``.
  The signature is Ed25519 by the domain signing key over ``HEADER_CONTEXT_V2 || header``
  (``HEADER_CONTEXT || header`` in version 1); the header's own version picks the context.
* Version 2 binds the payload in the signed header: ``payload_sha256 = SHA-256(nonce || ciphertext)``
  over the exact decoded bytes of the payload object (the nonce is always 12 bytes, so the
  concatenation is unambiguous). :meth:`SecurityDomainFile.from_bytes` checks the signature and then
  this hash (constant time) before anything else: one flipped payload byte is refused by anyone
  holding the file, before any custodian is asked.
* The shares split a uniformly random scalar s (Shamir over Z_l, see :mod:`sdquorum.shamir`);
  KEK = HKDF-SHA256(s, salt = domain_id || epoch, info = "sdquorum kek v1").
* The payload is AES-256-GCM under the KEK. Version 2: AAD = SHA-256 of the canonical JSON of the
  header *without* its ``payload_sha256`` field (:meth:`Header.payload_aad`); the hash of the whole
  header cannot be the AAD, since the header holds the hash of the ciphertext the AAD produces.
  The signed header then binds that ciphertext by its hash, so a payload still cannot be moved
  under another header. Version 1: AAD = SHA-256(header bytes).
* After reconstruction the opener checks s*B == A_0 before using s, and that the payload names the
  same domain and signing key as the header.
* New files (download, rotation) are version 2; version 1 files are read and opened as before.

Parsing is strict: unknown versions, unknown fields (at the top level, in the header, in a slot, in
the payload object and in the decrypted payload), missing or mistyped fields, a header whose version
differs from the file's, x outside 1..n, duplicate x, two slots over one key (compared by
:func:`sdquorum.pki.spki_sha256`, so a second certificate over the same key is a duplicate too), and
wrong lengths are all :class:`~sdquorum.errors.MalformedError`; a signature or payload hash that does
not verify is a :class:`~sdquorum.errors.VerificationError`. A slot is *addressed* by its
certificate's thumbprint (the wire format); a key's *identity* is its SubjectPublicKeyInfo.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
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

__all__ = [
    "FORMAT",
    "MAX_SD_FILE_BYTES",
    "VERSION",
    "DomainSecrets",
    "Header",
    "SecurityDomainFile",
    "SignedHeader",
    "Slot",
    "derive_kek",
    "new_domain_secrets",
    "open_domain",
    "payload_sha256",
    "seal_domain",
    "share_label",
]

FORMAT = "sdquorum-security-domain"
VERSION = 2  # what this build writes
READ_VERSIONS = (1, 2)  # what it reads
HEADER_TYPE = "sdquorum-sd-header"
PAYLOAD_TYPE = "sdquorum-sd-payload"
PAYLOAD_VERSION = 1  # the decrypted payload's own format, unchanged by file version 2
HEADER_CONTEXT = b"sdquorum sd header v1\x00"
HEADER_CONTEXT_V2 = b"sdquorum sd header v2\x00"
_FILE_KEYS = frozenset({"format", "version", "header", "header_signature", "payload"})
_PAYLOAD_OBJECT_KEYS = frozenset({"alg", "nonce", "ciphertext"})
_SLOT_KEYS = frozenset({"x", "name", "certificate", "x5t_256", "encrypted_share"})
_HEADER_KEYS_V1 = frozenset(
    {
        "type",
        "version",
        "domain_id",
        "epoch",
        "quorum",
        "slots",
        "commitments",
        "signing_public_key",
        "created_by",
        "created_at",
    }
)
_HEADER_KEYS = {1: _HEADER_KEYS_V1, 2: _HEADER_KEYS_V1 | {"payload_sha256"}}
_SECRETS_KEYS = frozenset(
    {"type", "version", "domain_id", "data_encryption_key", "signing_key", "backup_key", "admins", "keystore"}
)
KEK_INFO = b"sdquorum kek v1"
MAX_SD_FILE_BYTES = 256 * 1024 * 1024
MIN_CUSTODIANS, MAX_CUSTODIANS = 3, 10
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._@-]{0,63}$")


def share_label(domain_id: bytes, epoch: int, x: int) -> bytes:
    """OAEP label of slot x's encrypted share: binds it to one domain, epoch and slot."""
    return b"sdquorum share v1|" + domain_id.hex().encode() + f"|{epoch}|{x}".encode()


def derive_kek(secret: int, domain_id: bytes, epoch: int) -> bytes:
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=domain_id + epoch.to_bytes(4, "big"),
        info=KEK_INFO,
    )
    return hkdf.derive(secret.to_bytes(32, "little"))


@dataclass(frozen=True)
class Slot:
    x: int
    name: str
    certificate_der: bytes
    thumbprint: bytes
    encrypted_share: bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "x": self.x,
            "name": self.name,
            "certificate": b64e(self.certificate_der),
            "x5t_256": b64e(self.thumbprint),
            "encrypted_share": b64e(self.encrypted_share),
        }

    @classmethod
    def from_json(cls, obj: object) -> Slot:
        if not isinstance(obj, dict):
            raise MalformedError("SD header: a slot is not an object")
        _refuse_unknown(obj, _SLOT_KEYS, "SD header slot")
        x = f.integer(obj.get("x"), "SD file: slot x", 1, 255)
        name = obj.get("name")
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise MalformedError(f"SD header: slot {x} has an invalid name")
        cert = b64d(obj.get("certificate"), f"slot {x} certificate")
        thumb = b64d(obj.get("x5t_256"), f"slot {x} x5t_256")
        if hashlib.sha256(cert).digest() != thumb:
            raise MalformedError(f"SD header: slot {x} thumbprint does not match its certificate")
        enc = b64d(obj.get("encrypted_share"), f"slot {x} encrypted_share")
        if not 256 <= len(enc) <= 1024:
            raise MalformedError(f"SD header: slot {x} encrypted share has an impossible length")
        return cls(x=x, name=name, certificate_der=cert, thumbprint=thumb, encrypted_share=enc)


@dataclass(frozen=True)
class Header:
    domain_id: bytes
    epoch: int
    quorum: int
    slots: tuple[Slot, ...]
    commitments: shamir.Commitments
    signing_public_key: bytes
    created_by: str
    created_at: int
    version: int = VERSION
    payload_sha256: bytes = b""  # version 2: SHA-256(nonce || ciphertext); empty in version 1

    @property
    def n(self) -> int:
        return len(self.slots)

    def slot(self, x: int) -> Slot:
        for s in self.slots:
            if s.x == x:
                return s
        raise VerificationError(f"the security domain has no slot x={x}")

    def slot_by_thumbprint(self, thumbprint: bytes) -> Slot | None:
        for s in self.slots:
            if s.thumbprint == thumbprint:
                return s
        return None

    def to_bytes(self) -> bytes:
        fields = self._fields()
        if self.version >= 2:
            fields["payload_sha256"] = b64e(self.payload_sha256)
        return canonical_json(fields)

    def payload_aad(self) -> bytes:
        """Version 2's AAD: SHA-256 of the canonical header without ``payload_sha256`` (whose value
        depends on the ciphertext this AAD goes into)."""
        return hashlib.sha256(canonical_json(self._fields())).digest()

    def _fields(self) -> dict[str, Any]:
        return {
            "type": HEADER_TYPE,
            "version": self.version,
            "domain_id": self.domain_id.hex(),
            "epoch": self.epoch,
            "quorum": self.quorum,
            "slots": [s.to_json() for s in self.slots],
            "commitments": [b64e(p) for p in self.commitments.points],
            "signing_public_key": b64e(self.signing_public_key),
            "created_by": self.created_by,
            "created_at": self.created_at,
        }

    @classmethod
    def from_bytes(cls, data: bytes) -> Header:
        obj = parse_json_object(data, "SD header")
        version = obj.get("version")
        if obj.get("type") != HEADER_TYPE or not _is_version(version):
            raise MalformedError("SD header: unknown type or version (this build reads versions 1 and 2)")
        assert isinstance(version, int)  # for mypy: _is_version checked it
        _refuse_unknown(obj, _HEADER_KEYS[version], "SD header")
        domain_id = f.hex_bytes(obj.get("domain_id"), "SD file: domain_id", 16)
        epoch = f.integer(obj.get("epoch"), "SD file: epoch", 0, 2**32 - 1)
        raw_slots = obj.get("slots")
        if not isinstance(raw_slots, list) or not MIN_CUSTODIANS <= len(raw_slots) <= MAX_CUSTODIANS:
            raise MalformedError(f"SD header: needs {MIN_CUSTODIANS}..{MAX_CUSTODIANS} slots")
        slots = tuple(Slot.from_json(s) for s in raw_slots)
        n = len(slots)
        if sorted(s.x for s in slots) != list(range(1, n + 1)):
            raise MalformedError("SD header: slot x values must be exactly 1..n")
        if len({spki_sha256(s.certificate_der) for s in slots}) != n:
            raise MalformedError("SD header: two slots hold the same wrapping key")
        quorum = f.integer(obj.get("quorum"), "SD file: quorum", 2, n)
        raw_comm = obj.get("commitments")
        if not isinstance(raw_comm, list) or len(raw_comm) != quorum:
            raise MalformedError("SD header: the number of commitments must equal the quorum")
        commitments = shamir.Commitments.from_points([b64d(p, "commitment") for p in raw_comm])
        spk = b64d(obj.get("signing_public_key"), "signing_public_key")
        if len(spk) != 32:
            raise MalformedError("SD header: signing_public_key must be 32 bytes")
        created_by = obj.get("created_by")
        if not isinstance(created_by, str) or len(created_by) > 256:
            raise MalformedError("SD header: created_by must be a short string")
        created_at = f.integer(obj.get("created_at"), "SD file: created_at", 0, 2**63 - 1)
        payload_sha256 = b""
        if version >= 2:
            payload_sha256 = b64d(obj.get("payload_sha256"), "payload_sha256")
            if len(payload_sha256) != 32:
                raise MalformedError("SD header: payload_sha256 must be 32 bytes")
        return cls(
            domain_id, epoch, quorum, slots, commitments, spk, created_by, created_at, version, payload_sha256
        )


@dataclass(frozen=True)
class SignedHeader:
    """Header bytes exactly as signed, with the signature. ``header`` is parsed on construction."""

    header_bytes: bytes
    signature: bytes
    header: Header = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "header", Header.from_bytes(self.header_bytes))

    @property
    def sha256(self) -> bytes:
        return hashlib.sha256(self.header_bytes).digest()

    def verify(self, pinned_signing_key: bytes | None = None) -> Header:
        """Check the Ed25519 signature (and the pinned key, if any); return the header."""
        spk = self.header.signing_public_key
        if pinned_signing_key is not None and not hmac.compare_digest(spk, pinned_signing_key):
            raise VerificationError("the SD header is signed by a domain key other than the pinned one")
        context = HEADER_CONTEXT_V2 if self.header.version >= 2 else HEADER_CONTEXT
        try:
            Ed25519PublicKey.from_public_bytes(spk).verify(self.signature, context + self.header_bytes)
        except (InvalidSignature, ValueError) as e:
            raise VerificationError("the SD header signature does not verify: the file was altered") from e
        return self.header


@dataclass(frozen=True)
class SecurityDomainFile:
    signed_header: SignedHeader
    nonce: bytes
    ciphertext: bytes

    @property
    def header(self) -> Header:
        return self.signed_header.header

    @property
    def version(self) -> int:
        return self.header.version

    def to_bytes(self) -> bytes:
        return canonical_json(
            {
                "format": FORMAT,
                "version": self.version,
                "header": b64e(self.signed_header.header_bytes),
                "header_signature": b64e(self.signed_header.signature),
                "payload": {"alg": "A256GCM", "nonce": b64e(self.nonce), "ciphertext": b64e(self.ciphertext)},
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes, *, max_bytes: int = MAX_SD_FILE_BYTES) -> SecurityDomainFile:
        """Parse and verify the header signature; raises before anything else is asked."""
        if len(data) > max_bytes:
            raise MalformedError(f"SD file is larger than the {max_bytes}-byte limit")
        obj = parse_json_object(data, "SD file")
        if obj.get("format") != FORMAT:
            raise MalformedError("not an sdquorum security domain file (missing format marker)")
        version = obj.get("version")
        if not _is_version(version):
            raise MalformedError(
                f"SD file version {repr(version)[:20]} is not supported (this build reads 1 and 2)"
            )
        _refuse_unknown(obj, _FILE_KEYS, "SD file")
        payload = obj.get("payload")
        if not isinstance(payload, dict) or payload.get("alg") != "A256GCM":
            raise MalformedError("SD file: payload must be an A256GCM object")
        _refuse_unknown(payload, _PAYLOAD_OBJECT_KEYS, "SD file payload")
        nonce = b64d(payload.get("nonce"), "payload nonce")
        if len(nonce) != 12:
            raise MalformedError("SD file: payload nonce must be 12 bytes")
        ciphertext = b64d(payload.get("ciphertext"), "payload ciphertext")
        if len(ciphertext) < 16:
            raise MalformedError("SD file: payload ciphertext is truncated")
        signed = SignedHeader(
            b64d(obj.get("header"), "header"), b64d(obj.get("header_signature"), "header_signature")
        )
        if signed.header.version != version:
            raise MalformedError(
                f"SD file: the file says version {version} but its header version {signed.header.version}"
            )
        header = signed.verify()
        if header.version >= 2 and not hmac.compare_digest(
            header.payload_sha256, payload_sha256(nonce, ciphertext)
        ):
            raise VerificationError(
                "the SD payload does not match the hash in its signed header: the file was altered"
            )
        return cls(signed, nonce, ciphertext)


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
        _refuse_unknown(obj, _SECRETS_KEYS, "SD payload")
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


def payload_sha256(nonce: bytes, ciphertext: bytes) -> bytes:
    """What a version-2 header binds: SHA-256 of the payload's exact nonce (12 bytes) and ciphertext."""
    return hashlib.sha256(nonce + ciphertext).digest()


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
    return name if _NAME_RE.fullmatch(name) else f"custodian-{x}"


def _is_version(value: object) -> bool:
    return f.is_int(value) and value in READ_VERSIONS


def _refuse_unknown(obj: dict[str, Any], known: frozenset[str], what: str) -> None:
    unknown = sorted(set(obj) - known)
    if unknown:
        raise MalformedError(f"{what}: unknown field {unknown[0][:40]!r} (this build reads versions 1 and 2)")
