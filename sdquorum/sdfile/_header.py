"""The SD header: the signed, canonical description of a domain's epoch and its custodian slots.

Invariants:

* A header is carried as the exact bytes that were signed (:class:`SignedHeader`); its version picks
  the signature context (:data:`HEADER_CONTEXT_V2`, or :data:`HEADER_CONTEXT` for version 1), and
  :meth:`SignedHeader.verify` checks the Ed25519 signature (and a pinned key, in constant time)
  before returning the header.
* Parsing is strict (:meth:`Header.from_bytes`, :meth:`Slot.from_json`): no unknown member
  (:func:`refuse_unknown`), :data:`MIN_CUSTODIANS`..:data:`MAX_CUSTODIANS` slots with x exactly
  1..n, each thumbprint the SHA-256 of its certificate, no two slots over one key (by
  :func:`sdquorum.pki.spki_sha256`), one commitment per quorum member, and in version 2 a 32-byte
  ``payload_sha256``.
* Slot x's encrypted share is bound to its domain, epoch and slot by its OAEP label
  (:func:`share_label`).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from sdquorum import fields as f
from sdquorum import shamir
from sdquorum.encoding import b64d, b64e, canonical_json, parse_json_object
from sdquorum.errors import MalformedError, VerificationError
from sdquorum.pki import spki_sha256

VERSION = 2  # what this build writes
READ_VERSIONS = (1, 2)  # what it reads
HEADER_TYPE = "sdquorum-sd-header"
HEADER_CONTEXT = b"sdquorum sd header v1\x00"
HEADER_CONTEXT_V2 = b"sdquorum sd header v2\x00"
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
MIN_CUSTODIANS, MAX_CUSTODIANS = 3, 10
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._@-]{0,63}$")


def share_label(domain_id: bytes, epoch: int, x: int) -> bytes:
    """OAEP label of slot x's encrypted share: binds it to one domain, epoch and slot."""
    return b"sdquorum share v1|" + domain_id.hex().encode() + f"|{epoch}|{x}".encode()


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
        refuse_unknown(obj, _SLOT_KEYS, "SD header slot")
        x = f.integer(obj.get("x"), "SD file: slot x", 1, 255)
        name = obj.get("name")
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
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
        if obj.get("type") != HEADER_TYPE or not is_version(version):
            raise MalformedError("SD header: unknown type or version (this build reads versions 1 and 2)")
        assert isinstance(version, int)  # for mypy: is_version checked it
        refuse_unknown(obj, _HEADER_KEYS[version], "SD header")
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


def is_version(value: object) -> bool:
    return f.is_int(value) and value in READ_VERSIONS


def refuse_unknown(obj: dict[str, Any], known: frozenset[str], what: str) -> None:
    unknown = sorted(set(obj) - known)
    if unknown:
        raise MalformedError(f"{what}: unknown field {unknown[0][:40]!r} (this build reads versions 1 and 2)")
