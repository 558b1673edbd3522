"""The SQLite store's connection: ``node.db`` opened safely, its schema, and its transactions.

Invariants (:class:`Connection`):

* The data directory is 0700 and ours (:func:`check_data_dir`); ``node.db`` is made 0600 before
  SQLite opens it, so its ``-wal`` and ``-shm`` files are 0600 too. ``trusted_schema=OFF``: no
  schema (an attached backup image's included) runs a function.
* Writes are transactions with ``synchronous=FULL``. A batch is one ``BEGIN IMMEDIATE ... COMMIT``,
  each write inside it a savepoint, or a single statement, which SQLite backs out alone when it
  fails (:meth:`Connection.write`); a transaction SQLite rolled back by itself fails the batch.
* A scratch schema (:meth:`Connection.scratch`) is attached only outside a batch and always
  detached after its block.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from hsm_node.store.protocol import LEGACY_OWNER
from sdquorum.errors import AlreadyExistsError, StorageError, UsageError
from sdquorum_rpc.files import private_dir, tighten_files

__all__ = ["Connection", "check_data_dir"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS audit (
    chain TEXT NOT NULL,
    seq INTEGER NOT NULL,
    entry TEXT NOT NULL,
    PRIMARY KEY (chain, seq)
);
CREATE TABLE IF NOT EXISTS custody (id INTEGER PRIMARY KEY AUTOINCREMENT, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS drills (id INTEGER PRIMARY KEY AUTOINCREMENT, result TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS retired (epoch INTEGER PRIMARY KEY, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS epochs (domain_id TEXT PRIMARY KEY, epoch INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS keys (
    name TEXT PRIMARY KEY,
    type INTEGER NOT NULL,
    public_der BLOB NOT NULL,
    sealed BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    owner TEXT NOT NULL DEFAULT 'app',
    deleted_at INTEGER
);
"""


def check_data_dir(data_dir: Path) -> Path:
    """The data directory, made 0700 if missing; UsageError if others can write to it (or it is
    another user's); tightened to 0700 if others can read it."""
    return private_dir(data_dir, "the data directory", "node.data_dir / --data-dir")


@contextmanager
def _translated() -> Iterator[None]:
    """SQLite's errors as the store's: a row written twice, or a database that cannot be written."""
    try:
        yield
    except sqlite3.IntegrityError as e:  # a unique row written twice (an audit entry, a retired epoch)
        raise AlreadyExistsError(
            f"the node's database holds that row already ({e}): nothing was changed"
        ) from e
    except sqlite3.OperationalError as e:
        raise StorageError(
            f"the node cannot write its database ({e}): free space on its data volume or make it "
            "writable; nothing was changed"
        ) from e


class Connection:
    """The database connection and its transactions (a batch; a savepoint per write inside it)."""

    def __init__(self, data_dir: Path) -> None:
        check_data_dir(data_dir)
        db = data_dir / "node.db"
        try:
            tighten_files(data_dir / f"node.db{suffix}" for suffix in ("", "-wal", "-shm", "-journal"))
            os.close(
                os.open(db, os.O_RDWR | os.O_CREAT, 0o600)
            )  # before SQLite: its -wal/-shm copy this mode
            self.db = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("PRAGMA trusted_schema=OFF")
            self.db.executescript(_SCHEMA)
            self._add_key_columns()
        except (OSError, sqlite3.Error) as e:
            raise UsageError(f"cannot open the node database in {data_dir}: {e}") from e
        self._depth = 0  # transactions open: 0, or 1 + the savepoints inside a batch
        self.on_commit: Callable[[], None] | None = None

    def close(self) -> None:
        self.db.close()

    def _add_key_columns(self) -> None:
        """A database of an earlier version: its keys gain an owner (``app``) and are live."""
        columns = {r[1] for r in self.db.execute("PRAGMA table_info(keys)")}
        if "owner" not in columns:
            self.db.execute(f"ALTER TABLE keys ADD COLUMN owner TEXT NOT NULL DEFAULT '{LEGACY_OWNER}'")
        if "deleted_at" not in columns:
            self.db.execute("ALTER TABLE keys ADD COLUMN deleted_at INTEGER")

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        with _translated():
            if self._depth:  # inside a batch: a savepoint, committed with the batch
                with self._savepoint():
                    yield self.db
                return
            self.db.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield self.db
                self._require_open_batch()
                if self.on_commit is not None:
                    self.on_commit()
            except BaseException:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise
            finally:
                self._depth = 0
            self.db.execute("COMMIT")

    def write(self, sql: str, params: Sequence[object]) -> sqlite3.Cursor:
        """One statement as a write of its own: its own transaction, or inside a batch the
        statement alone, with no savepoint: a statement that fails changes nothing (SQLite backs
        out what it did before failing, and keeps the batch's earlier writes)."""
        if not self._depth:
            with self.tx() as db:
                return db.execute(sql, params)
        with _translated():
            self._require_open_batch()
            return self.db.execute(sql, params)

    @contextmanager
    def _savepoint(self) -> Iterator[None]:
        self._require_open_batch()
        self.db.execute("SAVEPOINT w")
        self._depth += 1
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK TO w")
            self.db.execute("RELEASE w")
            raise
        finally:
            self._depth -= 1
        self.db.execute("RELEASE w")

    @contextmanager
    def scratch(self, schema: str) -> Iterator[sqlite3.Connection]:
        """An empty in-memory database attached as ``schema`` for the block (a backup image on its
        way out or in; this connection runs no schema function: ``trusted_schema=OFF``). Not inside
        a batch: SQLite attaches no database inside a transaction."""
        if self._depth:
            raise UsageError("a backup or a restore cannot be part of a batch: run it on its own")
        try:
            self.db.execute(f"ATTACH DATABASE ':memory:' AS {schema}")
        except sqlite3.OperationalError as e:
            raise StorageError(f"the node cannot open a scratch database ({e}): try again") from e
        try:
            yield self.db
        finally:
            self.db.execute(f"DETACH DATABASE {schema}")

    def _require_open_batch(self) -> None:
        """SQLite rolls a transaction back by itself on some errors (a full disk, an I/O error): the
        writes of a batch made before are gone then, and the batch must fail, not carry on in a
        new transaction (a savepoint outside a transaction starts one) and report success."""
        if not self.db.in_transaction:
            raise sqlite3.OperationalError("the transaction was rolled back by an earlier error")

    def get(self, k: str) -> bytes | None:
        row = self.db.execute("SELECT v FROM meta WHERE k = ?", (k,)).fetchone()
        return None if row is None else bytes(row[0])

    def texts(self, query: str) -> list[str]:
        return [str(r[0]) for r in self.db.execute(query)]
