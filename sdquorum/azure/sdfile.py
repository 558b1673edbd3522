"""Azure Managed HSM security-domain files (format version 2) and transfer files.

I/O-free: bytes and handles in, bytes and values out.

Security-domain file (JSON, UTF-8; base64url without padding throughout)::

    {"EncData": {"data": [{"compact_jwe": <dir JWE>, "tag": <str>}, ...], "kdf": "sp108_kdf"},
     "SharedKeys": {"enc_shares": [{"enc_key": <RSA-OAEP-256 JWE>, "x5t_256": b64url(SHA-256(cert DER))},
                                   ...],
                    "key_algorithm": "shamir_share", "required": m},
     "version": 2}

Transfer file (what the HSM takes after ``init-recovery``)::

    {"EncData": {...the same items, re-encrypted under a fresh master key...},
     "WrappedKey": {"enc_key": <RSA-OAEP-256 JWE of the new master key>, "x5t_256": <exchange cert>}}

Invariants:

* The 32-byte master key is split with :mod:`sdquorum.azure.gf257` (GF(257) per byte); share x is
  the 64-byte encoding of its 32 words, JWE-encrypted (:mod:`sdquorum.azure.jwe`) to one custodian's
  certificate and found by that certificate's ``x5t_256``.
* EncData item ``tag`` is encrypted with dir / A256CBC-HS512 under
  :func:`~sdquorum.azure.kdf.derive_item_key` (master, tag), and its JWE header kid is the tag.
* Parsing is strict (:class:`MalformedError`): exactly the members above (no others), version 2,
  the two algorithm names, 2 <= required <= n <= 126, 32-byte thumbprints, no thumbprint twice, a
  non-empty tag without NUL on every item, every JWE of the right shape for its place (an RSA1_5 or
  RSA-OAEP share refuses the whole file), and an item's kid equal to its tag.
* Ordering of a restore: each agent :func:`decrypt_share` (its own share only) and releases it; the
  coordinator :func:`combine_master_key` from ``required`` shares, :func:`decrypt_items` (the EncData
  MACs are the only integrity check of the combined key: a corrupt share shows up here), then
  :func:`make_transfer_file` re-encrypts every item under a fresh master key wrapped to the
  exchange certificate. Nothing here touches the wrapping private keys except through handles.
* The format carries no signature: the file is trusted only as far as its EncData MACs verify.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization

from sdquorum.azure import gf257, jwe
from sdquorum.azure.kdf import KDF_NAME, MASTER_KEY_BYTES, derive_item_key
from sdquorum.encoding import b64d, b64e, canonical_json
from sdquorum.errors import MalformedError, NotFoundError, UsageError, VerificationError
from sdquorum.fields import is_int, json_array, json_object
from sdquorum.keys import WrappingKey
from sdquorum.pki import load_cert, spki_sha256
from sdquorum.shamir import Rng

__all__ = [
    "KEY_ALGORITHM",
    "MASTER_KEY_BYTES",
    "MAX_AZURE_FILE_BYTES",
    "MAX_TAG_CHARS",
    "SHARE_BYTES",
    "VERSION",
    "WRAPPED_KEY_KID",
    "AzureSecurityDomain",
    "EncDatum",
    "EncShare",
    "Item",
    "TransferFile",
    "combine_master_key",
    "decrypt_items",
    "decrypt_share",
    "encrypt_items",
    "make_transfer_file",
    "open_transfer_file",
    "seal_azure_domain",
    "x5t_256",
]

VERSION = 2
KEY_ALGORITHM = "shamir_share"
SHARE_BYTES = 2 * MASTER_KEY_BYTES
"""A share of the 32-byte master key: 32 little-endian uint16 words."""
MAX_AZURE_FILE_BYTES = 64 * 1024 * 1024
MAX_TAG_CHARS = 1024
WRAPPED_KEY_KID = "not used"
"""The kid the Azure CLI's restore-blob writes in the transfer file's wrapped key: we write the same."""

Item = tuple[str, bytes]
"""An EncData item in the clear: (tag, plaintext)."""


def x5t_256(certificate: bytes) -> bytes:
    """SHA-256 of a certificate's DER encoding (given as DER or PEM): Azure's ``x5t_256``."""
    return hashlib.sha256(_der(certificate)).digest()


def _der(certificate: bytes) -> bytes:
    return load_cert(certificate).public_bytes(serialization.Encoding.DER)


def _members(obj: dict[str, Any], names: set[str], what: str) -> None:
    if set(obj) != names:
        raise MalformedError(f"{what} must have exactly the members {sorted(names)}, has {sorted(obj)}")


def _check_tag(tag: object, error: type[Exception]) -> str:
    if not isinstance(tag, str) or not tag or len(tag) > MAX_TAG_CHARS or "\x00" in tag:
        raise error(f"an EncData tag must be a string of 1..{MAX_TAG_CHARS} characters without NUL")
    return tag


@dataclass(frozen=True)
class EncDatum:
    """One EncData item: a dir / A256CBC-HS512 compact JWE whose kid is ``tag``."""

    compact_jwe: str
    tag: str

    def to_json(self) -> dict[str, str]:
        return {"compact_jwe": self.compact_jwe, "tag": self.tag}

    @classmethod
    def from_json(cls, obj: object, i: int) -> EncDatum:
        item = json_object(obj, f"EncData item {i}")
        _members(item, {"compact_jwe", "tag"}, f"EncData item {i}")
        tag = _check_tag(item["tag"], MalformedError)
        parsed = jwe.parse_compact(item["compact_jwe"])
        if parsed.alg != jwe.ALG_DIR:
            raise MalformedError(f"EncData item {i} must be a {jwe.ALG_DIR} JWE, not {parsed.alg}")
        if parsed.kid != tag:
            raise MalformedError(f"EncData item {i}: JWE kid does not equal the item's tag")
        return cls(compact_jwe=item["compact_jwe"], tag=tag)


@dataclass(frozen=True)
class EncShare:
    """One custodian's share: an RSA-OAEP-256 / A256CBC-HS512 JWE to the certificate ``x5t_256``."""

    enc_key: str
    x5t_256: bytes

    def to_json(self) -> dict[str, str]:
        return {"enc_key": self.enc_key, "x5t_256": b64e(self.x5t_256)}

    @classmethod
    def from_json(cls, obj: object, i: int) -> EncShare:
        item = json_object(obj, f"enc_shares[{i}]")
        _members(item, {"enc_key", "x5t_256"}, f"enc_shares[{i}]")
        thumbprint = b64d(item["x5t_256"], f"enc_shares[{i}] x5t_256")
        if len(thumbprint) != 32:
            raise MalformedError(f"enc_shares[{i}] x5t_256 must be a 32-byte SHA-256 thumbprint")
        _check_rsa_jwe(item["enc_key"], f"enc_shares[{i}] enc_key")
        return cls(enc_key=item["enc_key"], x5t_256=thumbprint)


def _check_rsa_jwe(token: object, what: str) -> None:
    parsed = jwe.parse_compact(token)
    if parsed.alg != jwe.ALG_RSA_OAEP_256:
        raise MalformedError(f"{what} must be an {jwe.ALG_RSA_OAEP_256} JWE, not {parsed.alg}")


def _enc_data_json(data: Sequence[EncDatum]) -> dict[str, Any]:
    return {"data": [d.to_json() for d in data], "kdf": KDF_NAME}


def _parse_enc_data(obj: object) -> tuple[EncDatum, ...]:
    enc_data = json_object(obj, "EncData")
    _members(enc_data, {"data", "kdf"}, "EncData")
    if enc_data["kdf"] != KDF_NAME:
        raise MalformedError(f"EncData kdf must be {KDF_NAME!r}")
    items = json_array(enc_data["data"], "EncData data")
    if not items:
        raise MalformedError("EncData holds no items")
    return tuple(EncDatum.from_json(item, i) for i, item in enumerate(items))


def _load(data: bytes, max_bytes: int, what: str) -> dict[str, Any]:
    if not isinstance(data, bytes):
        raise UsageError(f"{what} must be given as bytes")
    if len(data) > max_bytes:
        raise MalformedError(f"{what} is larger than {max_bytes} bytes")
    return jwe.parse_json_object_strict(data, what)


def _dump(obj: dict[str, Any]) -> bytes:
    return canonical_json(obj)


@dataclass(frozen=True)
class AzureSecurityDomain:
    """A parsed version-2 security-domain file."""

    data: tuple[EncDatum, ...]
    shares: tuple[EncShare, ...]
    required: int

    @property
    def n(self) -> int:
        return len(self.shares)

    def to_bytes(self) -> bytes:
        return _dump(
            {
                "EncData": _enc_data_json(self.data),
                "SharedKeys": {
                    "enc_shares": [s.to_json() for s in self.shares],
                    "key_algorithm": KEY_ALGORITHM,
                    "required": self.required,
                },
                "version": VERSION,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes, *, max_bytes: int = MAX_AZURE_FILE_BYTES) -> AzureSecurityDomain:
        obj = _load(data, max_bytes, "Azure security-domain file")
        _members(obj, {"EncData", "SharedKeys", "version"}, "Azure security-domain file")
        version = obj["version"]
        if not is_int(version) or version != VERSION:
            raise MalformedError(f"Azure security-domain file version must be {VERSION}, got {version!r}")
        items = _parse_enc_data(obj["EncData"])
        key_block = json_object(obj["SharedKeys"], "SharedKeys")
        _members(key_block, {"enc_shares", "key_algorithm", "required"}, "SharedKeys")
        if key_block["key_algorithm"] != KEY_ALGORITHM:
            raise MalformedError(f"SharedKeys key_algorithm must be {KEY_ALGORITHM!r}")
        shares = tuple(
            EncShare.from_json(s, i) for i, s in enumerate(json_array(key_block["enc_shares"], "enc_shares"))
        )
        required = key_block["required"]
        if not is_int(required):
            raise MalformedError("SharedKeys required must be an integer")
        if not 2 <= required <= len(shares) <= gf257.MAX_SHARES:
            raise MalformedError(
                f"need 2 <= required <= shares <= {gf257.MAX_SHARES}, got required={required}, shares={len(shares)}"
            )
        if len({s.x5t_256 for s in shares}) != len(shares):
            raise MalformedError("two shares are encrypted to the same certificate (x5t_256 twice)")
        return cls(data=items, shares=shares, required=required)

    def share_for(self, certificate: bytes) -> EncShare:
        """The share encrypted to ``certificate`` (DER or PEM), found by its ``x5t_256``."""
        thumbprint = x5t_256(certificate)
        for s in self.shares:
            if s.x5t_256 == thumbprint:
                return s
        raise NotFoundError(
            f"no share in this security domain is encrypted to certificate x5t_256={b64e(thumbprint)}"
        )


@dataclass(frozen=True)
class TransferFile:
    """The security-domain transfer file the HSM takes after ``init-recovery``."""

    data: tuple[EncDatum, ...]
    wrapped_key: str
    x5t_256: bytes

    def to_bytes(self) -> bytes:
        return _dump(
            {
                "EncData": _enc_data_json(self.data),
                "WrappedKey": {"enc_key": self.wrapped_key, "x5t_256": b64e(self.x5t_256)},
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes, *, max_bytes: int = MAX_AZURE_FILE_BYTES) -> TransferFile:
        obj = _load(data, max_bytes, "Azure transfer file")
        _members(obj, {"EncData", "WrappedKey"}, "Azure transfer file")
        items = _parse_enc_data(obj["EncData"])
        wrapped = json_object(obj["WrappedKey"], "WrappedKey")
        _members(wrapped, {"enc_key", "x5t_256"}, "WrappedKey")
        thumbprint = b64d(wrapped["x5t_256"], "WrappedKey x5t_256")
        if len(thumbprint) != 32:
            raise MalformedError("WrappedKey x5t_256 must be a 32-byte SHA-256 thumbprint")
        _check_rsa_jwe(wrapped["enc_key"], "WrappedKey enc_key")
        return cls(data=items, wrapped_key=wrapped["enc_key"], x5t_256=thumbprint)


def decrypt_share(sd: AzureSecurityDomain, key: WrappingKey) -> gf257.Share:
    """The custodian's own GF(257) share: found by its certificate's x5t_256, decrypted by its handle.

    NotFoundError if no share is encrypted to it; VerificationError if it does not decrypt;
    MalformedError if the plaintext is not a share of a 32-byte key with 1 <= x <= n.
    """
    enc_share = sd.share_for(key.certificate_der())
    plaintext = jwe.decrypt_with_key(enc_share.enc_key, key)
    if len(plaintext) != SHARE_BYTES:
        raise MalformedError(f"a decrypted Azure share must be {SHARE_BYTES} bytes, got {len(plaintext)}")
    share = gf257.Share.from_bytes(plaintext)
    if share.x > sd.n:
        raise MalformedError(f"decrypted Azure share has x={share.x}, but the file has only {sd.n} shares")
    return share


def combine_master_key(sd: AzureSecurityDomain, shares: Sequence[gf257.Share]) -> bytes:
    """The 32-byte master key from ``sd.required`` of ``shares`` (all checked; the first m used).

    A wrong share is caught only afterwards, when :func:`decrypt_items` fails its MACs.
    """
    for s in shares:
        if not is_int(s.x) or not 1 <= s.x <= sd.n:
            raise VerificationError(f"Azure share index x={s.x!r} is outside 1..{sd.n}")
        if len(s.ys) != MASTER_KEY_BYTES:
            raise VerificationError(f"Azure share x={s.x} does not share a {MASTER_KEY_BYTES}-byte key")
    return gf257.combine(shares, sd.required)


def decrypt_items(data: Sequence[EncDatum], master_key: bytes) -> list[Item]:
    """Every EncData item in the clear, in file order; VerificationError if any fails its MAC."""
    return [
        (d.tag, jwe.decrypt_direct(d.compact_jwe, derive_item_key(master_key, d.tag), d.tag)) for d in data
    ]


def encrypt_items(items: Sequence[Item], master_key: bytes, rng: Rng) -> tuple[EncDatum, ...]:
    """EncData items for ``items`` under ``master_key`` (sp108_kdf per tag, dir / A256CBC-HS512)."""
    if not items:
        raise UsageError("EncData needs at least one item")
    out = []
    for tag, plaintext in items:
        _check_tag(tag, UsageError)
        if not isinstance(plaintext, bytes):
            raise UsageError(f"EncData item {tag!r} must be bytes")
        out.append(EncDatum(jwe.encrypt_direct(plaintext, derive_item_key(master_key, tag), tag, rng), tag))
    return tuple(out)


def _master_key(rng: Rng) -> bytes:
    key = rng(MASTER_KEY_BYTES)
    if not isinstance(key, bytes) or len(key) != MASTER_KEY_BYTES:
        raise UsageError(
            f"rng must return exactly {MASTER_KEY_BYTES} bytes when asked for {MASTER_KEY_BYTES}"
        )
    return key


def make_transfer_file(items: Sequence[Item], exchange_cert_der: bytes, rng: Rng) -> TransferFile:
    """Every item re-encrypted under a fresh random master key wrapped to the exchange certificate
    (DER; PEM is accepted too), with that certificate's x5t_256."""
    master_key = _master_key(rng)
    return TransferFile(
        data=encrypt_items(items, master_key, rng),
        wrapped_key=jwe.encrypt_to_certificate(master_key, exchange_cert_der, rng, kid=WRAPPED_KEY_KID),
        x5t_256=x5t_256(exchange_cert_der),
    )


def open_transfer_file(tf: TransferFile, exchange_key: WrappingKey) -> list[Item]:
    """The items of a transfer file, opened with the exchange key's handle (what the HSM does)."""
    if tf.x5t_256 != x5t_256(exchange_key.certificate_der()):
        raise NotFoundError("the transfer file is wrapped to another exchange certificate")
    master_key = jwe.decrypt_with_key(tf.wrapped_key, exchange_key)
    if len(master_key) != MASTER_KEY_BYTES:
        raise VerificationError(
            f"the transfer file's wrapped key is not a {MASTER_KEY_BYTES}-byte master key"
        )
    return decrypt_items(tf.data, master_key)


def seal_azure_domain(
    items: Sequence[Item], certificates: Sequence[bytes], m: int, rng: Rng
) -> AzureSecurityDomain:
    """A version-2 file holding ``items`` under a fresh master key split m-of-n to ``certificates``.

    Share x = i + 1 goes to ``certificates[i]`` (DER or PEM, RSA >= 2048 bits, all distinct).
    """
    ders = [_der(c) for c in certificates]
    n = len(ders)
    if not is_int(m) or not 2 <= m <= n <= gf257.MAX_SHARES:
        raise UsageError(f"need 2 <= m <= n <= {gf257.MAX_SHARES} certificates, got m={m!r}, n={n}")
    thumbprints = [hashlib.sha256(d).digest() for d in ders]
    if len({spki_sha256(d) for d in ders}) != n:  # a key is its SPKI, whatever certificate carries it
        raise UsageError("a certificate is given twice: each custodian needs their own")
    master_key = _master_key(rng)
    data = encrypt_items(items, master_key, rng)
    shares = gf257.split(master_key, m, n, rng)
    enc_shares = tuple(
        EncShare(jwe.encrypt_to_certificate(share.to_bytes(), der, rng), thumbprint)
        for share, der, thumbprint in zip(shares, ders, thumbprints, strict=True)
    )
    return AzureSecurityDomain(data=data, shares=enc_shares, required=m)
