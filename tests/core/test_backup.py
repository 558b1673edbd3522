"""Backup files (sdquorum/backup.py): version 2 round trip, every altered region refused, another
domain refused by name, a strict header, and version 1 files still read."""

from __future__ import annotations

import hashlib
import os
import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from harness import backup_v1

from sdquorum import backup
from sdquorum.encoding import b64e, canonical_json
from sdquorum.errors import MalformedError, SdquorumError, VerificationError
from sdquorum.sdfile import DomainSecrets, new_domain_secrets

BODY = b"an SQLite image of the key rows " * 100


@pytest.fixture(scope="module")
def domain() -> DomainSecrets:
    return new_domain_secrets(os.urandom, admins=("admin",))


@pytest.fixture(scope="module")
def sealed(domain: DomainSecrets) -> bytes:
    return backup.seal_backup(
        domain, BODY, key_count=7, node_id="node-a", created_at=1_700_000_000, rng=os.urandom
    )


def _layout(data: bytes) -> tuple[int, int]:
    """(header start, ciphertext start) of a version 2 file."""
    start = len(backup.MAGIC) + 4
    (size,) = struct.unpack_from(">I", data, len(backup.MAGIC))
    return start, start + size + 12 + 64


def test_round_trip_returns_the_body_and_the_header(sealed: bytes, domain: DomainSecrets) -> None:
    opened = backup.open_backup(sealed, domain)
    assert opened.key_rows == BODY and opened.keys == ()
    assert opened.header == backup.BackupHeader(2, domain.domain_id.hex(), "node-a", 1_700_000_000, 7)
    assert backup.backup_domain_id(sealed) == domain.domain_id.hex()
    assert BODY not in sealed  # the body is encrypted


@pytest.mark.parametrize(
    "region", ["magic", "header length", "header", "nonce", "signature", "ciphertext start", "ciphertext end"]
)
def test_a_flipped_byte_in_any_region_is_refused(sealed: bytes, domain: DomainSecrets, region: str) -> None:
    header_at, ct_at = _layout(sealed)
    position = {
        "magic": 3,
        "header length": len(backup.MAGIC) + 3,
        "header": header_at + 5,
        "nonce": ct_at - 64 - 12 + 2,
        "signature": ct_at - 10,
        "ciphertext start": ct_at,
        "ciphertext end": len(sealed) - 1,
    }[region]
    altered = bytearray(sealed)
    altered[position] ^= 0x01
    with pytest.raises(SdquorumError):
        backup.open_backup(bytes(altered), domain)


@pytest.mark.parametrize("cut", [0, 10, len(backup.MAGIC) + 2, 60, 150])
def test_a_truncated_file_is_refused(sealed: bytes, domain: DomainSecrets, cut: int) -> None:
    with pytest.raises(MalformedError):
        backup.open_backup(sealed[:cut], domain)


def test_a_truncated_ciphertext_fails_the_signature(sealed: bytes, domain: DomainSecrets) -> None:
    with pytest.raises(VerificationError, match="altered"):
        backup.open_backup(sealed[:-1], domain)


def test_another_domains_backup_is_refused_by_name(sealed: bytes, domain: DomainSecrets) -> None:
    other = new_domain_secrets(os.urandom, admins=("admin",))
    with pytest.raises(VerificationError, match=f"belongs to domain {domain.domain_id.hex()}"):
        backup.open_backup(sealed, other)


def _signed_v2(domain: DomainSecrets, header: bytes, body: bytes = BODY) -> bytes:
    """A version 2 file with any header, correctly encrypted and signed by the domain."""
    nonce = os.urandom(12)
    ct = AESGCM(domain.backup_key).encrypt(nonce, body, hashlib.sha256(header).digest())
    sig = domain.sign(backup.BACKUP_CONTEXT_V2 + header + hashlib.sha256(nonce + ct).digest())
    return backup.MAGIC + struct.pack(">I", len(header)) + header + nonce + sig + ct


def _header(domain: DomainSecrets, **changes: object) -> dict[str, object]:
    h: dict[str, object] = {
        "format": "sdquorum-backup",
        "version": 2,
        "domain_id": domain.domain_id.hex(),
        "node_id": "node-a",
        "created_at": 1,
        "key_count": 1,
        "body": "sqlite3-key-rows",
    }
    h.update(changes)
    return {k: v for k, v in h.items() if v is not None}


@pytest.mark.parametrize(
    ("name", "changes", "canonical"),
    [
        ("an extra field", {"extra": 1}, True),
        ("a missing field", {"node_id": None}, True),
        ("another body kind", {"body": "json"}, True),
        ("version 3", {"version": 3}, True),
        ("a negative key count", {"key_count": -1}, True),
        ("a key count that is a string", {"key_count": "1"}, True),
        ("a boolean time", {"created_at": True}, True),
        ("non-canonical JSON (spaces)", {}, False),
    ],
)
def test_a_signed_file_with_a_malformed_header_is_refused(
    domain: DomainSecrets, name: str, changes: dict[str, object], canonical: bool
) -> None:
    obj = _header(domain, **changes)
    raw = canonical_json(obj) if canonical else canonical_json(obj).replace(b",", b", ")
    with pytest.raises(MalformedError):
        backup.open_backup(_signed_v2(domain, raw), domain)


def test_the_good_header_through_the_same_writer_opens(domain: DomainSecrets) -> None:
    """The control for the table above: the test writer makes files open_backup accepts."""
    opened = backup.open_backup(_signed_v2(domain, canonical_json(_header(domain))), domain)
    assert opened.key_rows == BODY and opened.header.key_count == 1


def test_an_oversized_header_length_is_refused_before_parsing(domain: DomainSecrets) -> None:
    data = backup.MAGIC + struct.pack(">I", backup.MAX_HEADER_BYTES + 1) + b"{" * 5000 + bytes(200)
    with pytest.raises(MalformedError, match="header length"):
        backup.open_backup(data, domain)


def test_bytes_that_are_no_backup_get_a_hint(domain: DomainSecrets) -> None:
    with pytest.raises(MalformedError, match="sdctl backup"):
        backup.open_backup(b"PK\x03\x04 a zip file", domain)


# ---------------------------------------------------------------------------- version 1 (read only)


def _v1(domain: DomainSecrets, items: list[dict[str, object]], key_count: int | None = None) -> bytes:
    return backup_v1(domain, canonical_json(items), len(items) if key_count is None else key_count)


ITEMS_V1: list[dict[str, object]] = [
    {"name": "aes", "type": 1, "public": b64e(b""), "private": b64e(b"\x11" * 32), "created_at": 3},
    {"name": "ed", "type": 2, "public": b64e(b"\x22" * 44), "private": b64e(b"\x33" * 32), "created_at": 4},
]


def test_a_version_1_backup_still_opens(domain: DomainSecrets) -> None:
    opened = backup.open_backup(_v1(domain, ITEMS_V1), domain)
    assert opened.key_rows is None and opened.header.version == 1 and opened.header.key_count == 2
    assert [(k.name, k.key_type, k.private, k.created_at) for k in opened.keys] == [
        ("aes", 1, b"\x11" * 32, 3),
        ("ed", 2, b"\x33" * 32, 4),
    ]
    assert backup.backup_domain_id(_v1(domain, ITEMS_V1)) == domain.domain_id.hex()


def test_a_version_1_backup_with_a_wrong_count_or_flipped_byte_is_refused(domain: DomainSecrets) -> None:
    with pytest.raises(MalformedError, match="count"):
        backup.open_backup(_v1(domain, ITEMS_V1, key_count=3), domain)
    data = bytearray(_v1(domain, ITEMS_V1))
    data[data.index(b'"ciphertext":"') + 20] ^= 0x01
    with pytest.raises(SdquorumError):
        backup.open_backup(bytes(data), domain)
