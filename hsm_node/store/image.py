"""The key rows of a version 2 backup: an SQLite image of one STRICT table (ADR 0007).

This is a file format, not a store: every store writes and reads its backups through these two
functions, so a backup taken from one store restores into any other.

* :func:`write_image`: the rows as they rest (private material still sealed under the DEK).
* :func:`read_image`: the rows of an image, checked before anything is returned
  (:func:`check_image`): exactly the backup schema (or the schema of backups taken before keys had
  owners, whose rows come back owned by ``app`` and live), no other object beside it (a trigger, a
  view), ``key_count`` rows, each well formed (a name, a known key type, a known owner, a sealed
  key of at least 28 bytes). Anything else is MalformedError. The image is opened in a private
  in-memory database with ``trusted_schema=OFF``: its schema runs no function.

The SQLite store moves the same image without a Python object per row (100,000 keys: about 5x
faster, ``bench/large.py``): it attaches the image as a scratch schema of its own connection
(``trusted_schema=OFF`` too), checks it with the same :func:`check_image` and copies rows with
:func:`copy_columns`, inside SQLite.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence

from hsm_node.keyops import KeyType
from hsm_node.store.protocol import LEGACY_OWNER, KeyRow, StoredKey
from hsm_node.store.sealing import KeySeal
from sdquorum.backup import BackupKey
from sdquorum.errors import MalformedError, StorageError

__all__ = [
    "COLUMNS",
    "KeyRowImages",
    "check_image",
    "copy_columns",
    "image_schema",
    "read_image",
    "row_values",
    "write_image",
]

COLUMNS = "name, type, public_der, sealed, created_at, owner, deleted_at"  # of the image and the store
_LEGACY_COLUMNS = f"name, type, public_der, sealed, created_at, '{LEGACY_OWNER}', NULL"
# Counts the rows and the rows unlike what a store writes (a sealed key is nonce(12) || ct || tag(16)).
# The parameter is the JSON list of the key types.
_CHECK = (
    "SELECT COUNT(*), TOTAL(length(name) = 0 OR type NOT IN (SELECT value FROM json_each(?)) "
    "OR length(sealed) < 28{owner}) FROM {schema}.keys"
)
_CHECK_OWNER = " OR (owner NOT IN ('admin', 'app') AND substr(owner, 1, 4) <> 'app/')"


def image_schema(legacy: bool = False, schema: str = "") -> str:
    """The key table of a backup image (STRICT: SQLite itself refuses a value of another type).
    ``legacy``: the table of backups taken before keys had owners and soft deletion (still read).
    ``schema``: made in that attached schema (SQLite records the statement without it)."""
    extra = "" if legacy else ", owner TEXT NOT NULL, deleted_at INTEGER"
    table = f"{schema}.keys" if schema else "keys"
    return (
        f"CREATE TABLE {table} (name TEXT PRIMARY KEY NOT NULL, type INTEGER NOT NULL, "
        f"public_der BLOB NOT NULL, sealed BLOB NOT NULL, created_at INTEGER NOT NULL{extra}) "
        "WITHOUT ROWID, STRICT"
    )


def _scratch() -> sqlite3.Connection:
    try:
        db = sqlite3.connect(":memory:", isolation_level=None)
    except sqlite3.Error as e:
        raise StorageError(f"the node cannot open a scratch database ({e}): try again") from e
    db.execute("PRAGMA trusted_schema=OFF")
    return db


def row_values(row: KeyRow) -> tuple[str, int, bytes, bytes, int, str, int | None]:
    """A row's columns, in the order of the backup schema."""
    k = row.key
    return (k.name, k.key_type, k.public_der, row.sealed, k.created_at, k.owner, k.deleted_at)


def write_image(rows: Iterable[KeyRow]) -> bytes:
    """An image holding ``rows`` in name order."""
    db = _scratch()
    try:
        db.execute(image_schema())
        ordered = sorted(rows, key=lambda r: r.key.name)
        db.executemany(
            f"INSERT INTO keys ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",  # noqa: S608  # constant
            [row_values(r) for r in ordered],
        )
        return db.serialize()
    finally:
        db.close()


def check_image(db: sqlite3.Connection, key_count: int, schema: str = "main") -> bool:
    """Check the image in ``schema`` of ``db`` (module docstring); True if it has the table of
    backups taken before keys had owners. MalformedError if it is anything else."""
    try:
        found = db.execute(f"SELECT type, name, tbl_name, sql FROM {schema}.sqlite_schema").fetchall()  # noqa: S608  # our schema name
        if found == [("table", "keys", "keys", image_schema())]:
            legacy = False
        elif found == [("table", "keys", "keys", image_schema(legacy=True))]:
            legacy = True
        else:
            raise MalformedError("the backup's key table has another schema")
        # STRICT and NOT NULL hold only for rows SQLite wrote: a crafted image's records are
        # checked against its own schema first (a TEXT in a BLOB column, a NULL key, a bad page)
        if db.execute(f"PRAGMA {schema}.quick_check").fetchall() != [("ok",)]:
            raise MalformedError("the backup's key table holds records its schema does not allow")
        check = _CHECK.format(owner="" if legacy else _CHECK_OWNER, schema=schema)
        count, bad = db.execute(check, (json.dumps([int(t) for t in KeyType]),)).fetchone()
    except sqlite3.DatabaseError as e:
        raise MalformedError(f"the backup's key table is not readable: {e}") from e
    if bad or count != key_count:
        raise MalformedError(
            f"the backup's key table holds {count} rows ({int(bad)} malformed), its header says {key_count}"
        )
    return legacy


def copy_columns(legacy: bool) -> str:
    """What to select from a checked image's table for :data:`COLUMNS` (a legacy image's rows
    are owned by ``app`` and live)."""
    return _LEGACY_COLUMNS if legacy else COLUMNS


def read_image(image: bytes, key_count: int) -> list[KeyRow]:
    """The rows of an authenticated backup image, checked (module docstring)."""
    db = _scratch()
    try:
        try:
            db.deserialize(image)
        except sqlite3.DatabaseError as e:
            raise MalformedError(f"the backup's key table is not readable: {e}") from e
        legacy = check_image(db, key_count)
        try:
            rows = db.execute(f"SELECT {copy_columns(legacy)} FROM keys ORDER BY name").fetchall()  # noqa: S608  # constant
        except sqlite3.DatabaseError as e:
            raise MalformedError(f"the backup's key table is not readable: {e}") from e
    finally:
        db.close()
    return [
        KeyRow(StoredKey(name, kind, bytes(public), created, owner, deleted), bytes(sealed))
        for name, kind, public, sealed, created, owner, deleted in rows
    ]


class KeyRowImages:
    """Backups for a store that keeps its key rows as values (the in-memory and the pool's stores):
    the rows go out and come back through one image format, and a restore replaces every row at
    once. A subclass gives its seal, ``_key_rows()`` (every row, in name order) and
    ``_replace_rows()`` (all of them, atomically: one transaction, or the pool's staged restore)."""

    _key_seal: KeySeal

    def _key_rows(self) -> list[KeyRow]:
        raise NotImplementedError

    def _replace_rows(self, rows: Iterable[KeyRow]) -> None:
        raise NotImplementedError

    def export_key_rows(self, dek: bytes) -> tuple[bytes, int]:
        rows = self._key_rows()
        count = self._key_seal.check_all(
            dek, ((r.key.name, r.key.key_type, r.key.owner, r.sealed) for r in rows)
        )
        return write_image(rows), count

    def import_key_rows(self, image: bytes, key_count: int) -> None:
        self._replace_rows(read_image(image, key_count))

    def replace_keys(self, dek: bytes, keys: Sequence[BackupKey]) -> None:
        self._replace_rows(self._key_seal.seal_all(dek, keys))
