"""The production store: one SQLite database, ``node.db``, under the data directory.

It implements :class:`~hsm_node.store.protocol.NodeStore` (the seam's invariants are stated
there); how secrets are sealed is :mod:`hsm_node.store.sealing`, the backup image
:mod:`hsm_node.store.image`. What is in the database:

* ``meta.state``: the node state name (not secret). ``meta.domain``: the sealed domain secrets.
  ``meta.domain_info``: domain id, epoch, quorum, n (not secret); ``meta.sd_file``: the current
  epoch's SD file (encrypted to the custodians; not secret to the node's disk). ``meta.flag:*``:
  the compromise flag and the former custodians.
* ``audit``: the hash-chained audit log (:mod:`sdquorum.audit`), one chain for the node's
  provisioning and one for its domain, begun at activation. ``custody``, ``drills``, ``retired``:
  custody records, drill results and retired epochs (JSON; no secret). ``epochs``: per domain id,
  the highest epoch whose signed header this node has seen (only ever raised).
* ``keys``: one row per key, private material sealed; ``owner`` is the role that may use the key
  (``admin``, ``app`` or ``app/<name>``); ``deleted_at`` is set while a deleted key is retained. A
  database of an earlier version gains both columns on open: its rows are owned by ``app`` (whom
  every key served before) and live.

How the database is opened (modes on disk, ``synchronous=FULL``, batches as one transaction with
a savepoint per write, a transaction SQLite rolled back by itself failing its batch) is
:mod:`hsm_node.store.sqlite_db`. A backup image moves through a scratch schema attached to the
same connection, never one Python object per row (:mod:`hsm_node.store.image`).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hsm_node.store.image import (
    COLUMNS,
    check_image,
    copy_columns,
    image_schema,
    row_values,
)
from hsm_node.store.protocol import DomainInfo, KeyRow, StoredKey
from hsm_node.store.sealing import DomainSeal, KeySeal
from hsm_node.store.sqlite_db import Connection
from sdquorum.backup import BackupKey
from sdquorum.errors import AlreadyExistsError, MalformedError, NotFoundError
from sdquorum.review import CustodyRecord, DrillResult, RetiredEpoch
from sdquorum.sdfile import DomainSecrets

__all__ = ["SqliteNodeStore"]

_KEY_COLUMNS = "name, type, public_der, created_at, owner, deleted_at"
_SET_META = "INSERT OR REPLACE INTO meta (k, v) VALUES (?, ?)"
_EXPORT, _IMPORT = "backup_out", "backup_in"  # the scratch schemas of a backup and a restore
_COPY_OUT = f"INSERT INTO {_EXPORT}.keys ({COLUMNS}) SELECT {COLUMNS} FROM main.keys ORDER BY name"  # noqa: S608  # constant
_CHECK_OUT = f"SELECT name, type, owner, sealed FROM {_EXPORT}.keys"  # noqa: S608  # constant
_COPY_IN = f"INSERT INTO main.keys ({COLUMNS}) SELECT {{columns}} FROM {_IMPORT}.keys"  # noqa: S608  # constant


def _json(value: Any) -> str:
    return json.dumps(value.to_json(), sort_keys=True)


class _SqliteDomain:
    """:class:`~hsm_node.store.protocol.DomainStore` in the ``meta`` and ``epochs`` tables."""

    def __init__(self, connection: Connection, seal: DomainSeal) -> None:
        self._c = connection
        self._domain_seal = seal

    def state(self) -> str | None:
        v = self._c.get("state")
        return v.decode() if v else None

    def set_state(self, state: str) -> None:
        self._c.write(_SET_META, ("state", state.encode()))

    def activate(self, secrets: DomainSecrets, info: DomainInfo, state: str, sd_file: bytes) -> None:
        sealed = self._domain_seal.seal(secrets)
        with self._c.tx() as db:
            db.execute(_SET_META, ("sd_file", sd_file))
            db.execute(_SET_META, ("domain", sealed))
            db.execute(_SET_META, ("domain_info", info.to_json().encode()))
            db.execute(_SET_META, ("state", state.encode()))

    def load_domain(self) -> tuple[DomainSecrets, DomainInfo] | None:
        sealed, info = self._c.get("domain"), self._c.get("domain_info")
        if sealed is None or info is None:
            return None
        return self._domain_seal.open(sealed), DomainInfo.from_json(info.decode())

    def sd_file(self) -> bytes | None:
        return self._c.get("sd_file")

    def rotate(self, secrets: DomainSecrets, info: DomainInfo, sd_file: bytes, retired: RetiredEpoch) -> None:
        sealed = self._domain_seal.seal(secrets)
        with self._c.tx() as db:
            db.execute(_SET_META, ("domain", sealed))
            db.execute(_SET_META, ("domain_info", info.to_json().encode()))
            db.execute(_SET_META, ("sd_file", sd_file))
            db.execute("INSERT INTO retired (epoch, record) VALUES (?, ?)", (retired.epoch, _json(retired)))

    def set_flag(self, name: str, value: str) -> None:
        self._c.write(_SET_META, (f"flag:{name}", value.encode()))

    def flag(self, name: str) -> str | None:
        v = self._c.get(f"flag:{name}")
        return v.decode() if v is not None else None

    def highest_epoch(self, domain_id: bytes) -> int | None:
        row = self._c.db.execute(
            "SELECT epoch FROM epochs WHERE domain_id = ?", (domain_id.hex(),)
        ).fetchone()
        return None if row is None else int(row[0])

    def note_epoch(self, domain_id: bytes, epoch: int) -> None:
        self._c.write(
            "INSERT INTO epochs (domain_id, epoch) VALUES (?, ?) "
            "ON CONFLICT(domain_id) DO UPDATE SET epoch = max(epoch, excluded.epoch)",
            (domain_id.hex(), epoch),
        )


class _SqliteRecords:
    """:class:`~hsm_node.store.protocol.RecordStore` in the ``audit``, ``custody``, ``drills`` and
    ``retired`` tables."""

    def __init__(self, connection: Connection) -> None:
        self._c = connection

    def append_audit(self, chain: str, seq: int, entry_json: str) -> None:
        self._c.write("INSERT INTO audit (chain, seq, entry) VALUES (?, ?, ?)", (chain, seq, entry_json))

    def audit_entries(self, chain: str) -> list[str]:
        rows = self._c.db.execute("SELECT entry FROM audit WHERE chain = ? ORDER BY seq", (chain,)).fetchall()
        return [r[0] for r in rows]

    def last_audit(self, chain: str) -> str | None:
        row = self._c.db.execute(
            "SELECT entry FROM audit WHERE chain = ? ORDER BY seq DESC LIMIT 1", (chain,)
        ).fetchone()
        return None if row is None else str(row[0])

    def add_custody_record(self, record: CustodyRecord) -> None:
        self._c.write("INSERT INTO custody (record) VALUES (?)", (_json(record),))

    def custody_records(self) -> list[CustodyRecord]:
        texts = self._c.texts("SELECT record FROM custody ORDER BY rowid")
        return [CustodyRecord.from_json(json.loads(t)) for t in texts]

    def add_drill_results(self, results: Sequence[DrillResult]) -> None:
        with self._c.tx() as db:
            db.executemany("INSERT INTO drills (result) VALUES (?)", [(_json(r),) for r in results])

    def drill_results(self) -> list[DrillResult]:
        return [
            DrillResult.from_json(json.loads(t))
            for t in self._c.texts("SELECT result FROM drills ORDER BY rowid")
        ]

    def retired_epochs(self) -> list[RetiredEpoch]:
        texts = self._c.texts("SELECT record FROM retired ORDER BY rowid")
        return [RetiredEpoch.from_json(json.loads(t)) for t in texts]


class _SqliteKeys:
    """:class:`~hsm_node.store.protocol.KeyStore` in the ``keys`` table."""

    def __init__(self, connection: Connection, seal: KeySeal) -> None:
        self._c = connection
        self._key_seal = seal

    def put_key(self, dek: bytes, key: StoredKey, private: bytes) -> None:
        """Insert a live key; AlreadyExistsError if a row of that name exists, live or deleted
        (:meth:`find_key` tells which)."""
        sealed = self._key_seal.seal(dek, key.name, key.key_type, key.owner, private)
        try:
            self._c.write(
                "INSERT INTO keys (name, type, public_der, sealed, created_at, owner) VALUES (?, ?, ?, ?, ?, ?)",
                (key.name, key.key_type, key.public_der, sealed, key.created_at, key.owner),
            )
        except AlreadyExistsError as e:
            raise AlreadyExistsError(f"a key named {key.name!r} exists already: pick another name") from e

    def find_key(self, name: str, *, settled: bool = False) -> StoredKey | None:
        """The row named ``name``, live or deleted, without its private material (one copy: every
        read is settled)."""
        row = self._c.db.execute(f"SELECT {_KEY_COLUMNS} FROM keys WHERE name = ?", (name,)).fetchone()  # noqa: S608  # constant
        return None if row is None else _stored(row)

    def get_key(
        self, dek: bytes, name: str, allow: Callable[[StoredKey], None] | None = None
    ) -> tuple[StoredKey, bytes]:
        """A key and its private material, live or deleted. ``allow`` sees the row first and raises
        to refuse it: a refused key is never opened (one query either way)."""
        row = self._c.db.execute(
            f"SELECT {_KEY_COLUMNS}, sealed FROM keys WHERE name = ?",  # noqa: S608  # constant
            (name,),
        ).fetchone()
        if row is None:
            raise NotFoundError(f"no key named {name!r}: list keys with 'sdctl keys list'")
        info = _stored(row)
        if allow is not None:
            allow(info)
        return info, self._key_seal.open(dek, info, bytes(row[6]))

    def list_keys(self, owner: str | None = None, deleted: bool = False) -> list[StoredKey]:
        """Live keys (``deleted``: the retained deleted keys instead), of ``owner`` or of everyone."""
        where = "deleted_at IS NOT NULL" if deleted else "deleted_at IS NULL"
        args: tuple[str, ...] = ()
        if owner is not None:
            where, args = where + " AND owner = ?", (owner,)
        rows = self._c.db.execute(
            f"SELECT {_KEY_COLUMNS} FROM keys WHERE {where} ORDER BY name",  # noqa: S608  # constant clauses
            args,
        ).fetchall()
        return [_stored(r) for r in rows]

    def count_keys(self) -> int:
        """Live keys."""
        return int(self._c.db.execute("SELECT COUNT(*) FROM keys WHERE deleted_at IS NULL").fetchone()[0])

    def mark_deleted(self, name: str, deleted_at: int | None) -> None:
        """Soft-delete a live key (``deleted_at``: now) or recover a deleted one (None)."""
        was = "deleted_at IS NULL" if deleted_at is not None else "deleted_at IS NOT NULL"
        cur = self._c.write(f"UPDATE keys SET deleted_at = ? WHERE name = ? AND {was}", (deleted_at, name))  # noqa: S608  # constant clauses
        if cur.rowcount == 0:
            raise NotFoundError(f"no {'live' if deleted_at is not None else 'deleted'} key named {name!r}")

    def purge_key(self, name: str) -> None:
        """Remove a deleted key's row for good."""
        cur = self._c.write("DELETE FROM keys WHERE name = ? AND deleted_at IS NOT NULL", (name,))
        if cur.rowcount == 0:
            raise NotFoundError(f"no deleted key named {name!r}")

    def deleted_before(self, time: int) -> list[StoredKey]:
        """The deleted keys whose deletion is at or before ``time`` (their retention has ended)."""
        rows = self._c.db.execute(
            f"SELECT {_KEY_COLUMNS} FROM keys "  # noqa: S608  # constant
            "WHERE deleted_at IS NOT NULL AND deleted_at <= ? ORDER BY deleted_at, name",
            (time,),
        ).fetchall()
        return [_stored(r) for r in rows]

    def export_key_rows(self, dek: bytes) -> tuple[bytes, int]:
        """(the backup image of every key row, its row count); every row is opened under ``dek``
        first, so a backup never carries a key that could not be restored. The rows are copied into
        the image inside SQLite (:mod:`hsm_node.store.image`), never one Python object each."""
        with self._c.scratch(_EXPORT) as db:
            db.execute(image_schema(schema=_EXPORT))
            db.execute(_COPY_OUT)
            rows = db.execute(_CHECK_OUT)
            try:
                count = self._key_seal.check_all(dek, rows)
            finally:
                rows.close()  # an open read keeps the scratch schema from being detached
            return db.serialize(name=_EXPORT), count

    def import_key_rows(self, image: bytes, key_count: int) -> None:
        """Replace the key rows with those of an authenticated backup image (checked by
        :func:`~hsm_node.store.image.check_image`: a refused image leaves the table as it was), in
        one transaction, copied inside SQLite. Deleted keys come back deleted, with their deletion
        time."""
        with self._c.scratch(_IMPORT) as db:
            try:
                db.deserialize(image, name=_IMPORT)
            except sqlite3.DatabaseError as e:
                raise MalformedError(f"the backup's key table is not readable: {e}") from e
            legacy = check_image(db, key_count, _IMPORT)
            with self._c.tx():
                db.execute("DELETE FROM main.keys")
                db.execute(_COPY_IN.format(columns=copy_columns(legacy)))

    def replace_keys(self, dek: bytes, keys: Sequence[BackupKey]) -> None:
        """Replace the key rows with keys in the clear (a version 1 backup), sealing each (owned by
        ``app``, live: version 1 knew neither)."""
        self._replace_rows(self._key_seal.seal_all(dek, keys))

    def _replace_rows(self, rows: Iterable[KeyRow]) -> None:
        values = [row_values(r) for r in rows]
        with self._c.tx() as db:
            db.execute("DELETE FROM keys")
            db.executemany(
                "INSERT INTO keys (name, type, public_der, sealed, created_at, owner, deleted_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                values,
            )


class SqliteNodeStore:
    """:class:`~hsm_node.store.protocol.NodeStore` in ``<data_dir>/node.db``."""

    def __init__(self, data_dir: Path, sealing_key: bytes, node_id: str) -> None:
        self._c = Connection(data_dir)
        self.domain = _SqliteDomain(self._c, DomainSeal(sealing_key, node_id))
        self.records = _SqliteRecords(self._c)
        self.keys = _SqliteKeys(self._c, KeySeal())

    @property
    def on_commit(self) -> Callable[[], None] | None:
        return self._c.on_commit

    @on_commit.setter
    def on_commit(self, hook: Callable[[], None] | None) -> None:
        self._c.on_commit = hook

    def close(self) -> None:
        self._c.close()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """One transaction, one commit (one fsync), for every write made inside: none of it is
        durable before the block ends, all of it is after. A write inside that fails undoes only
        itself (a savepoint); an exception out of the block undoes the whole batch."""
        with self._c.tx():
            yield


def _stored(row: Any) -> StoredKey:
    """A StoredKey from a row (name, type, public_der, created_at, owner, deleted_at, ...)."""
    name, key_type, public_der, created_at, owner, deleted_at = row[:6]
    return StoredKey(
        name, key_type, bytes(public_der), created_at, owner, None if deleted_at is None else int(deleted_at)
    )
