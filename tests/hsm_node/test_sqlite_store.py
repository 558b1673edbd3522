"""What only the SQLite store does (the rest of its behaviour is the contract's:
test_store_contract.py): a transaction SQLite rolled back by itself fails the batch; a backup image
moves through a scratch schema of the store's own connection, never inside a batch, and leaves
none attached whatever happens."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from hsm_node.store import SqliteNodeStore
from hsm_node.store.image import image_schema
from hsm_node.store.protocol import StoredKey
from sdquorum.errors import MalformedError, StorageError, UsageError, VerificationError

DEK = bytes(range(32))


def test_a_batch_whose_transaction_sqlite_rolled_back_fails_instead_of_committing_the_rest(
    tmp_path: Path,
) -> None:
    # On a full disk or an I/O error SQLite may roll the whole transaction back by itself; the node
    # carries on with the batch's other answers after one answer's error, so the store must notice.
    store = SqliteNodeStore(tmp_path / "d", bytes(32), "node-x")
    try:
        with pytest.raises(StorageError), store.batch():
            store.records.append_audit("provisioning", 1, '{"n": 1}')
            store._c.db.execute("ROLLBACK")  # what SQLite does by itself on SQLITE_FULL, say
            with pytest.raises(StorageError, match="rolled back"):
                store.records.append_audit("provisioning", 2, '{"n": 2}')
            # the caller goes on, as the node does with the next answer of the batch
        assert store.records.audit_entries("provisioning") == []  # nothing was half-committed
        store.records.append_audit("provisioning", 1, '{"n": 1}')  # and the store works afterwards
        assert store.records.audit_entries("provisioning") == ['{"n": 1}']
    finally:
        store.close()


def _attached(store: SqliteNodeStore) -> list[str]:
    return [row[1] for row in store._c.db.execute("PRAGMA database_list")]


@pytest.fixture
def keyed(tmp_path: Path) -> Iterator[SqliteNodeStore]:
    """A store holding keys k0, k1 and k2."""
    store = SqliteNodeStore(tmp_path / "d", bytes(32), "node-x")
    for i in range(3):
        store.keys.put_key(DEK, StoredKey(f"k{i}", 1, b"", 1, "app"), b"k" * 32)
    yield store
    store.close()


KEYS = ["k0", "k1", "k2"]


def test_a_backup_or_restore_inside_a_batch_is_refused_and_changes_nothing(keyed: SqliteNodeStore) -> None:
    # SQLite attaches no database inside a transaction: refused in words, not as a storage error.
    image, count = keyed.keys.export_key_rows(DEK)
    with pytest.raises(UsageError, match="cannot be part of a batch"), keyed.batch():
        keyed.keys.put_key(DEK, StoredKey("in-batch", 1, b"", 1, "app"), b"b" * 32)
        keyed.keys.export_key_rows(DEK)
    with pytest.raises(UsageError, match="cannot be part of a batch"), keyed.batch():
        keyed.keys.import_key_rows(image, count)
    assert [k.name for k in keyed.keys.list_keys()] == KEYS
    assert _attached(keyed) == ["main"]


@pytest.mark.parametrize("how", ["a row that does not open", "an image refused", "bytes that are no image"])
def test_no_scratch_schema_is_left_attached_after_a_failed_backup_or_restore(
    keyed: SqliteNodeStore, how: str
) -> None:
    image, count = keyed.keys.export_key_rows(DEK)
    if how == "a row that does not open":
        with pytest.raises(VerificationError, match="'k0' failed its integrity check"):
            keyed.keys.export_key_rows(bytes(32))
    else:
        data, n = (image, count + 1) if how == "an image refused" else (b"no image" * 100, count)
        with pytest.raises(MalformedError):
            keyed.keys.import_key_rows(data, n)
    assert _attached(keyed) == ["main"]
    keyed.keys.import_key_rows(*keyed.keys.export_key_rows(DEK))  # both work afterwards
    assert [k.name for k in keyed.keys.list_keys()] == KEYS


@pytest.mark.parametrize("column", ["public_der", "sealed", "name"])
def test_an_image_whose_records_break_its_own_strict_schema_is_refused_and_changes_nothing(
    keyed: SqliteNodeStore, column: str
) -> None:
    # STRICT holds only for rows SQLite writes: an image made with another table and its schema
    # text swapped for the backup's carries TEXT (or a BLOB) where the schema says otherwise.
    loose = sqlite3.connect(":memory:")
    loose.execute(image_schema().replace(", STRICT", "").replace("NOT NULL", ""))
    row = {"name": "x", "type": 1, "public_der": b"", "sealed": b"s" * 40, "created_at": 1, "owner": "app"}
    row[column] = b"bytes, not text" if column == "name" else "text, not bytes"
    loose.execute("INSERT INTO keys VALUES (?, ?, ?, ?, ?, ?, NULL)", tuple(row.values()))
    loose.execute("PRAGMA writable_schema=ON")
    loose.execute("UPDATE sqlite_schema SET sql = ? WHERE name = 'keys'", (image_schema(),))
    image = loose.serialize()
    loose.close()
    with pytest.raises(MalformedError):
        keyed.keys.import_key_rows(image, 1)
    assert [k.name for k in keyed.keys.list_keys()] == KEYS
    assert _attached(keyed) == ["main"]
