"""Backup and restore on a node (Node.backup / Node.restore over its SQLite store).

A version 2 backup carries the key rows as the store keeps them, each key still sealed under the
data encryption key: no private key is in the clear while a backup is made or restored. Cases: a
round trip where every restored key still works; a version 1 file still restores; authentic files
whose key table is wrong are refused and change nothing; a damaged row stops the backup, naming it.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from harness import Cluster, backup_v1, certs_of, keys_in_backup, running_cluster

from hsm_node.keyops import KeyType
from hsm_node.store.image import read_image
from sdquorum import backup
from sdquorum.encoding import b64e, canonical_json
from sdquorum.errors import MalformedError, VerificationError
from sdquorum.keys import SoftwareWrappingKey
from sdquorum.pki import Role
from sdquorum.sdfile import DomainSecrets

APP, ADMIN = Role("app"), Role("admin")
KEYS = [
    ("aes-1", KeyType.AES256_GCM),
    ("aes-2", KeyType.AES256_GCM),
    ("ed", KeyType.ED25519),
    ("rsa", KeyType.RSA3072),
]
IMAGE_SCHEMA = (
    "CREATE TABLE keys (name TEXT PRIMARY KEY NOT NULL, type INTEGER NOT NULL, public_der BLOB NOT NULL, "
    "sealed BLOB NOT NULL, created_at INTEGER NOT NULL) WITHOUT ROWID, STRICT"
)


@pytest.fixture
async def node(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey]
) -> AsyncIterator[Cluster]:
    async with running_cluster(pki_dir, tmp_path / "a") as a:
        await a.download(certs_of(wrapping_keys[:3]), quorum=2)
        for name, kind in KEYS:
            await a.node.keys.create_key(name, kind, APP)
        yield a


def _domain(c: Cluster) -> DomainSecrets:
    assert c.node.lifecycle.domain is not None
    return c.node.lifecycle.domain


def _names(c: Cluster) -> list[str]:
    return [k.name for k in c.node.keys.list_keys(ADMIN)]


async def test_restore_brings_back_exactly_the_backed_up_keys_and_they_work(node: Cluster) -> None:
    signature = node.node.key_ops.sign("ed", b"message", APP)
    ciphertext = node.node.key_ops.encrypt("aes-1", b"plaintext", b"aad", APP)
    rsa_signature = node.node.key_ops.sign("rsa", b"message", APP)
    data = node.node.backups.backup()
    node.node.keys.delete_key("aes-2", ADMIN)
    await node.node.keys.create_key("made-later", KeyType.AES256_GCM, APP)
    assert node.node.backups.restore(data) == len(KEYS)
    assert _names(node) == sorted(name for name, _ in KEYS)
    assert node.node.key_ops.verify("ed", b"message", signature, APP)
    assert node.node.key_ops.verify("rsa", b"message", rsa_signature, APP)
    assert node.node.key_ops.decrypt("aes-1", ciphertext, b"aad", APP) == b"plaintext"
    assert (
        node.node.key_ops.decrypt("aes-2", node.node.key_ops.encrypt("aes-2", b"x", b"", APP), b"", APP)
        == b"x"
    )


async def test_the_backup_body_holds_no_private_key_in_the_clear(node: Cluster) -> None:
    data = node.node.backups.backup()
    opened = backup.open_backup(data, _domain(node))
    assert opened.key_rows is not None and opened.header.key_count == len(KEYS)
    privates = keys_in_backup(data, _domain(node))
    assert sorted(privates) == sorted(name for name, _ in KEYS)
    for name, private in privates.items():
        assert private not in opened.key_rows, f"{name}'s private key is in the clear in the backup body"
        assert private not in data


async def test_a_version_1_backup_restores_and_its_keys_work(node: Cluster) -> None:
    domain = _domain(node)
    key = AESGCM.generate_key(bit_length=256)
    items = [{"name": "old-aes", "type": 1, "public": b64e(b""), "private": b64e(key), "created_at": 9}]
    v1 = backup_v1(domain, canonical_json(items), 1)
    assert node.node.backups.restore(v1) == 1
    assert _names(node) == ["old-aes"]
    sealed = node.node.key_ops.encrypt("old-aes", b"p", b"", APP)
    assert AESGCM(key).decrypt(sealed[:12], sealed[12:], None) == b"p"


def _image(rows: list[tuple[object, ...]], schema: str = IMAGE_SCHEMA, extra: str = "") -> bytes:
    db = sqlite3.connect(":memory:")
    db.execute(schema)
    if extra:
        db.execute(extra)
    db.executemany("INSERT INTO keys VALUES (?, ?, ?, ?, ?)", rows)
    image = db.serialize()
    db.close()
    return image


def _rows_of(c: Cluster) -> list[tuple[object, ...]]:
    """(name, type, public_der, sealed, created_at) of every key row, read through the store's seam
    (the rows of a backup image of it)."""
    rows = read_image(*c.node.store.keys.export_key_rows(_domain(c).data_encryption_key))
    return [(r.key.name, r.key.key_type, r.key.public_der, r.sealed, r.key.created_at) for r in rows]


@pytest.mark.parametrize(
    ("case", "make", "count_delta"),
    [
        ("the header counts one key more", lambda rows: _image(rows), 1),
        ("a row of an unknown key type", lambda rows: _image([*rows, ("x", 9, b"", os.urandom(40), 1)]), 1),
        ("a sealed key too short to be one", lambda rows: _image([*rows, ("x", 1, b"", b"short", 1)]), 1),
        ("an empty key name", lambda rows: _image([*rows, ("", 1, b"", os.urandom(40), 1)]), 1),
        (
            "a table without STRICT",
            lambda rows: _image(rows, IMAGE_SCHEMA.removesuffix(", STRICT")),
            0,
        ),
        (
            "a trigger beside the table",
            lambda rows: _image(
                rows, extra="CREATE TRIGGER t AFTER INSERT ON keys BEGIN DELETE FROM keys; END"
            ),
            0,
        ),
        ("bytes that are no SQLite image", lambda rows: b"not a database" * 100, 0),
    ],
)
async def test_an_authentic_backup_with_a_wrong_key_table_is_refused_and_changes_nothing(
    node: Cluster, case: str, make: Callable[[list[tuple[object, ...]]], bytes], count_delta: int
) -> None:
    rows = _rows_of(node)
    image = make(rows)
    data = backup.seal_backup(
        _domain(node),
        image,
        key_count=len(rows) + count_delta,
        node_id="node-a",
        created_at=1,
        rng=os.urandom,
    )
    with pytest.raises(MalformedError):
        node.node.backups.restore(data)
    assert _rows_of(node) == rows, f"{case}: the key table changed"
    # The control: the same rows in a well-formed image restore.
    good = backup.seal_backup(
        _domain(node), _image(rows), key_count=len(rows), node_id="n", created_at=1, rng=os.urandom
    )
    assert node.node.backups.restore(good) == len(rows)


async def test_a_damaged_row_stops_the_backup_and_is_named(node: Cluster) -> None:
    db = sqlite3.connect(node.data_dir / "node.db", isolation_level=None)  # tampering on disk
    (sealed,) = db.execute("SELECT sealed FROM keys WHERE name = 'ed'").fetchone()
    damaged = bytearray(sealed)
    damaged[-1] ^= 0x01
    db.execute("UPDATE keys SET sealed = ? WHERE name = 'ed'", (bytes(damaged),))
    with pytest.raises(VerificationError, match="'ed' failed its integrity check"):
        node.node.backups.backup()
    # No scratch database is left attached: the next backup (after the fix) works.
    db.execute("UPDATE keys SET sealed = ? WHERE name = 'ed'", (sealed,))
    db.close()
    assert backup.open_backup(node.node.backups.backup(), _domain(node)).header.key_count == len(
        _rows_of(node)
    )
    assert backup.open_backup(node.node.backups.backup(), _domain(node)).header.key_count == len(KEYS)


async def test_a_backup_of_an_empty_store_restores_to_an_empty_store(node: Cluster) -> None:
    for name, _ in KEYS:  # deleted keys are retained (and backed up) until purged
        node.node.keys.delete_key(name, ADMIN)
        node.node.keys.purge_key(name, ADMIN)
    empty = node.node.backups.backup()
    await node.node.keys.create_key("k", KeyType.ED25519, APP)
    assert node.node.backups.restore(empty) == 0
    assert _names(node) == []


async def test_a_backup_and_a_restore_are_each_audited_with_who_and_how_many(node: Cluster) -> None:
    """A restore rolls the key store back to the backup's day (deleted keys come back): the audit
    log records it, with the backup's origin, and records every backup taken."""
    import json

    data = node.node.backups.backup(Role("admin"))
    node.node.backups.restore(data, Role("admin"))
    entries = [json.loads(e) for e in node.node.store.records.audit_entries("domain")]
    exported = [e for e in entries if e["event"] == "backup-exported"]
    restored = [e for e in entries if e["event"] == "key-store-restored"]
    assert [(e["actor"], e["details"]["keys"]) for e in exported] == [("admin", len(KEYS))]
    assert [(e["actor"], e["details"]["keys"]) for e in restored] == [("admin", len(KEYS))]
    assert restored[0]["details"]["backup_node"] == node.node.config.node_id
