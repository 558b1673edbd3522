"""The node's persistent state: one SQLite database under the data directory.

What is on disk, and under which key:

* ``meta.state``: the node state name (not secret).
* ``meta.domain``: the domain secrets (SD payload), AES-256-GCM under the **node sealing key**
  (DESIGN.md, "Node storage": the emulation boundary, kept in a 0600 file outside the data
  directory), AAD binding the node id.
* ``meta.domain_info``: domain id, epoch, quorum, n (not secret); ``meta.sd_file``: the current
  epoch's SD file (encrypted to the custodians; not secret to the node's disk).
* ``audit``: the hash-chained audit log (:mod:`sdquorum.audit`), one chain for the node's
  provisioning and one for its domain, begun at activation. ``custody``, ``drills``, ``retired``:
  custody records, drill results and retired epochs (JSON; no secret). ``epochs``: per domain id,
  the highest epoch whose signed header this node has seen (only ever raised): a recovery upload of
  a lower epoch is refused.
* ``keys``: one row per key; private material AES-256-GCM under the domain's **data encryption
  key**, AAD binding the key's name, type and owner (:func:`key_aad`), so rows cannot be swapped
  and a row's owner cannot be changed on disk. ``owner`` is the role that may use the key
  (``admin``, ``app`` or ``app/<name>``); ``deleted_at`` is set while a deleted key is retained
  (soft deletion: the row stays, unusable, until it is recovered or purged). A database of an
  earlier version gains both columns on open: its rows are owned by ``app`` (whom every key served
  before) and live.

On disk: the data directory is 0700 and ours (a directory writable by group or others, or another
user's, is refused, naming the chmod to run; one earlier versions left 0755 is tightened), and
``node.db`` is made 0600 before SQLite opens it: SQLite makes ``node.db-wal`` and ``node.db-shm``
with the database file's mode, so they are 0600 too, whatever the umask. The sealing key file is
0600 in a directory writable only by its owner (this user or root).

Writes are transactions with ``synchronous=FULL``: a key whose creation was acknowledged survives a
crash. Activation (domain + state) is one transaction; a backup restore replaces the key table in
one transaction. :meth:`NodeStore.batch` groups several writes into one transaction (the node's
answers that arrive together, with the completion they cause): the caller acknowledges none of them
before the batch has committed.
"""

from __future__ import annotations

import hmac
import json
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hsm_node.keyops import KeyType
from sdquorum.backup import BackupKey
from sdquorum.errors import (
    AlreadyExistsError,
    MalformedError,
    NotFoundError,
    StorageError,
    UsageError,
    VerificationError,
)
from sdquorum.sdfile import DomainSecrets
from sdquorum_rpc.files import private_dir, tighten_files

__all__ = [
    "LEGACY_OWNER",
    "DomainInfo",
    "NodeStore",
    "StoredKey",
    "check_data_dir",
    "key_aad",
    "load_or_create_sealing_key",
]

SEALING_KEY_ENV = "SDQUORUM_NODE_SEALING_KEY"
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
LEGACY_OWNER = "app"  # owner of rows written before keys had owners (and of version 1 backups' keys)
_EXPORT, _IMPORT = "backup_out", "backup_in"  # the scratch databases a backup and a restore attach
_COPY_OUT = (
    "INSERT INTO backup_out.keys (name, type, public_der, sealed, created_at, owner, deleted_at) "
    "SELECT name, type, public_der, sealed, created_at, owner, deleted_at FROM main.keys ORDER BY name"
)
_COPY_IN = (
    "INSERT INTO main.keys (name, type, public_der, sealed, created_at, owner, deleted_at) "
    "SELECT name, type, public_der, sealed, created_at, owner, deleted_at FROM backup_in.keys"
)
_COPY_IN_LEGACY = (  # a backup taken before keys had owners: its rows default to owner 'app', live
    "INSERT INTO main.keys (name, type, public_der, sealed, created_at) "
    "SELECT name, type, public_der, sealed, created_at FROM backup_in.keys"
)
# Counts the rows and the rows unlike what put_key writes (a sealed key is nonce(12) || ct || tag(16)).
# The parameter is the JSON list of the key types.
_CHECK_IN = (
    "SELECT COUNT(*), TOTAL(length(name) = 0 OR type NOT IN (SELECT value FROM json_each(?)) "
    "OR length(sealed) < 28{owner}) FROM backup_in.keys"
)
_CHECK_OWNER = " OR (owner NOT IN ('admin', 'app') AND substr(owner, 1, 4) <> 'app/')"


def _image_schema(schema: str, legacy: bool = False) -> str:
    """The key table of a backup image (STRICT: SQLite itself refuses a value of another type).
    ``legacy``: the table of backups taken before keys had owners and soft deletion (still read)."""
    prefix = f"{schema}." if schema else ""
    extra = "" if legacy else ", owner TEXT NOT NULL, deleted_at INTEGER"
    return (
        f"CREATE TABLE {prefix}keys (name TEXT PRIMARY KEY NOT NULL, type INTEGER NOT NULL, "
        f"public_der BLOB NOT NULL, sealed BLOB NOT NULL, created_at INTEGER NOT NULL{extra}) "
        "WITHOUT ROWID, STRICT"
    )


def key_aad(name: str, key_type: int, owner: str) -> bytes:
    """The AAD of a key's sealed private material. Keys owned by ``app`` keep the AAD of rows
    written before keys had owners (``type|name``), so those rows and backups open unchanged; any
    other owner is bound as ``v2|type|owner|name``. The two forms cannot collide (one starts with
    a digit, the other with ``v``) and an owner holds no ``|``, so changing a row's owner on disk
    makes the row fail its integrity check."""
    if owner == LEGACY_OWNER:
        return f"{key_type}|{name}".encode()
    return f"v2|{key_type}|{owner}|{name}".encode()


def check_data_dir(data_dir: Path) -> Path:
    """The data directory, made 0700 if missing; UsageError if others can write to it (or it is
    another user's); tightened to 0700 if others can read it."""
    return private_dir(data_dir, "the data directory", "node.data_dir / --data-dir")


def load_or_create_sealing_key(path: Path) -> bytes:
    """The node sealing key: from $SDQUORUM_NODE_SEALING_KEY (hex), else the 0600 file, made on first start."""
    env = os.environ.get(SEALING_KEY_ENV)
    if env:
        try:
            key = bytes.fromhex(env)
        except ValueError as e:
            raise UsageError(f"${SEALING_KEY_ENV} must be 64 hex digits") from e
        if len(key) != 32:
            raise UsageError(f"${SEALING_KEY_ENV} must be 64 hex digits")
        return key
    private_dir(path.parent, "the sealing key's directory", "node.sealing_key_file", ours=False)
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        key = os.urandom(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, key)
            os.fsync(fd)
        finally:
            os.close(fd)
        return key
    except OSError as e:
        raise UsageError(f"cannot read the node sealing key {path}: {e.strerror}") from e
    if len(key) != 32:
        raise UsageError(f"the node sealing key {path} is not 32 bytes: restore it or start a new node")
    if path.stat().st_mode & 0o077:
        raise UsageError(f"the node sealing key {path} is readable by others: chmod 600 {path}")
    return key


@dataclass(frozen=True)
class DomainInfo:
    domain_id: bytes
    epoch: int
    quorum: int
    custodians: int

    def to_json(self) -> str:
        return json.dumps(
            {
                "domain_id": self.domain_id.hex(),
                "epoch": self.epoch,
                "quorum": self.quorum,
                "n": self.custodians,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> DomainInfo:
        o = json.loads(text)
        return cls(bytes.fromhex(o["domain_id"]), int(o["epoch"]), int(o["quorum"]), int(o["n"]))


@dataclass(frozen=True)
class StoredKey:
    name: str
    key_type: int
    public_der: bytes
    created_at: int
    owner: str = LEGACY_OWNER
    deleted_at: int | None = None  # set while a deleted key is retained


class NodeStore:
    def __init__(self, data_dir: Path, sealing_key: bytes, node_id: str) -> None:
        check_data_dir(data_dir)
        db = data_dir / "node.db"
        try:
            tighten_files(data_dir / f"node.db{suffix}" for suffix in ("", "-wal", "-shm", "-journal"))
            os.close(
                os.open(db, os.O_RDWR | os.O_CREAT, 0o600)
            )  # before SQLite: its -wal/-shm copy this mode
            self._db = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA trusted_schema=OFF")  # a restored image's schema runs no function
            self._db.executescript(_SCHEMA)
            self._add_key_columns()
        except (OSError, sqlite3.Error) as e:
            raise UsageError(f"cannot open the node database in {data_dir}: {e}") from e
        self._depth = 0  # transactions open: 0, or 1 + the savepoints inside a batch
        self._seal = AESGCM(sealing_key)
        self._aead_key = b""
        self._aead_obj = AESGCM(bytes(32))
        self._aad = b"sdquorum node domain v1|" + node_id.encode()

    def close(self) -> None:
        self._db.close()

    def _add_key_columns(self) -> None:
        """A database of an earlier version: its keys gain an owner (``app``) and are live."""
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(keys)")}
        if "owner" not in columns:
            self._db.execute(f"ALTER TABLE keys ADD COLUMN owner TEXT NOT NULL DEFAULT '{LEGACY_OWNER}'")
        if "deleted_at" not in columns:
            self._db.execute("ALTER TABLE keys ADD COLUMN deleted_at INTEGER")

    @contextmanager
    def batch(self) -> Iterator[None]:
        """One transaction, one commit (one fsync), for every write made inside: none of it is
        durable before the block ends, all of it is after. A write inside that fails undoes only
        itself (a savepoint); an exception out of the block undoes the whole batch."""
        with self._tx():
            yield

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        try:
            if self._depth:  # inside a batch: a savepoint, committed with the batch
                self._require_open_batch()
                self._db.execute("SAVEPOINT w")
                self._depth += 1
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK TO w")
                    self._db.execute("RELEASE w")
                    raise
                finally:
                    self._depth -= 1
                self._db.execute("RELEASE w")
                return
            self._db.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            finally:
                self._depth = 0
            self._require_open_batch()
            self._db.execute("COMMIT")
        except sqlite3.OperationalError as e:
            raise StorageError(
                f"the node cannot write its database ({e}): free space on its data volume or make it "
                "writable; nothing was changed"
            ) from e

    def _require_open_batch(self) -> None:
        """SQLite rolls a transaction back by itself on some errors (a full disk, an I/O error): the
        writes of a batch made before are gone then, and the batch must fail, not carry on in a
        new transaction (a savepoint outside a transaction starts one) and report success."""
        if not self._db.in_transaction:
            raise sqlite3.OperationalError("the transaction was rolled back by an earlier error")

    def _get(self, k: str) -> bytes | None:
        row = self._db.execute("SELECT v FROM meta WHERE k = ?", (k,)).fetchone()
        return None if row is None else bytes(row[0])

    # ------------------------------------------------------------ state and domain

    def state(self) -> str | None:
        v = self._get("state")
        return v.decode() if v else None

    def set_state(self, state: str) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO meta (k, v) VALUES ('state', ?)", (state.encode(),))

    def activate(self, secrets: DomainSecrets, info: DomainInfo, state: str, sd_file: bytes) -> None:
        nonce = os.urandom(12)
        sealed = nonce + self._seal.encrypt(nonce, secrets.to_bytes(), self._aad)
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO meta (k, v) VALUES ('sd_file', ?)", (sd_file,))
            db.execute("INSERT OR REPLACE INTO meta (k, v) VALUES ('domain', ?)", (sealed,))
            db.execute(
                "INSERT OR REPLACE INTO meta (k, v) VALUES ('domain_info', ?)", (info.to_json().encode(),)
            )
            db.execute("INSERT OR REPLACE INTO meta (k, v) VALUES ('state', ?)", (state.encode(),))

    def load_domain(self) -> tuple[DomainSecrets, DomainInfo] | None:
        sealed, info = self._get("domain"), self._get("domain_info")
        if sealed is None or info is None:
            return None
        try:
            plain = self._seal.decrypt(sealed[:12], sealed[12:], self._aad)
        except InvalidTag as e:
            raise VerificationError(
                "the node's sealed domain does not open with this sealing key: wrong key file or another node's data"
            ) from e
        return DomainSecrets.from_bytes(plain), DomainInfo.from_json(info.decode())

    def sd_file(self) -> bytes | None:
        return self._get("sd_file")

    def set_flag(self, name: str, value: str) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO meta (k, v) VALUES (?, ?)", (f"flag:{name}", value.encode()))

    def flag(self, name: str) -> str | None:
        v = self._get(f"flag:{name}")
        return v.decode() if v is not None else None

    def highest_epoch(self, domain_id: bytes) -> int | None:
        row = self._db.execute("SELECT epoch FROM epochs WHERE domain_id = ?", (domain_id.hex(),)).fetchone()
        return None if row is None else int(row[0])

    def note_epoch(self, domain_id: bytes, epoch: int) -> None:
        """Remember ``epoch`` of ``domain_id`` if it is higher than what is remembered."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO epochs (domain_id, epoch) VALUES (?, ?) "
                "ON CONFLICT(domain_id) DO UPDATE SET epoch = max(epoch, excluded.epoch)",
                (domain_id.hex(), epoch),
            )

    # ------------------------------------------------------------ audit and custody

    def append_audit(self, chain: str, seq: int, entry_json: str) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO audit (chain, seq, entry) VALUES (?, ?, ?)", (chain, seq, entry_json))

    def audit_entries(self, chain: str) -> list[str]:
        rows = self._db.execute("SELECT entry FROM audit WHERE chain = ? ORDER BY seq", (chain,)).fetchall()
        return [r[0] for r in rows]

    def last_audit(self, chain: str) -> str | None:
        row = self._db.execute(
            "SELECT entry FROM audit WHERE chain = ? ORDER BY seq DESC LIMIT 1", (chain,)
        ).fetchone()
        return None if row is None else str(row[0])

    def add_rows(self, table: str, column: str, values: Sequence[str]) -> None:
        if (table, column) not in (("custody", "record"), ("drills", "result")):
            raise UsageError(f"no table {table}.{column}")
        with self._tx() as db:
            db.executemany(f"INSERT INTO {table} ({column}) VALUES (?)", [(v,) for v in values])  # noqa: S608  # names checked above

    def rows(self, table: str, column: str) -> list[str]:
        if (table, column) not in (("custody", "record"), ("drills", "result"), ("retired", "record")):
            raise UsageError(f"no table {table}.{column}")
        return [r[0] for r in self._db.execute(f"SELECT {column} FROM {table} ORDER BY rowid")]  # noqa: S608  # names checked above

    def rotate(
        self, secrets: DomainSecrets, info: DomainInfo, sd_file: bytes, retired_epoch: int, retired_json: str
    ) -> None:
        """Move to a new epoch in one transaction: new SD file and info, the old epoch retired."""
        nonce = os.urandom(12)
        sealed = nonce + self._seal.encrypt(nonce, secrets.to_bytes(), self._aad)
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO meta (k, v) VALUES ('domain', ?)", (sealed,))
            db.execute(
                "INSERT OR REPLACE INTO meta (k, v) VALUES ('domain_info', ?)", (info.to_json().encode(),)
            )
            db.execute("INSERT OR REPLACE INTO meta (k, v) VALUES ('sd_file', ?)", (sd_file,))
            db.execute("INSERT INTO retired (epoch, record) VALUES (?, ?)", (retired_epoch, retired_json))

    # ------------------------------------------------------------ keys

    def _aead(self, dek: bytes) -> AESGCM:
        """One AESGCM per data encryption key (set up once, not per row)."""
        if not hmac.compare_digest(self._aead_key, dek):
            self._aead_obj, self._aead_key = AESGCM(dek), dek
        return self._aead_obj

    def _seal_key(self, dek: bytes, name: str, key_type: int, owner: str, private: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead(dek).encrypt(nonce, private, key_aad(name, key_type, owner))

    def _open_key(self, dek: bytes, key: StoredKey, sealed: bytes) -> bytes:
        try:
            return self._aead(dek).decrypt(
                sealed[:12], sealed[12:], key_aad(key.name, key.key_type, key.owner)
            )
        except InvalidTag as e:
            raise VerificationError(f"stored key {key.name!r} failed its integrity check") from e

    def put_key(
        self,
        dek: bytes,
        name: str,
        key_type: int,
        public_der: bytes,
        private: bytes,
        created_at: int,
        owner: str = LEGACY_OWNER,
    ) -> None:
        """Insert a live key; AlreadyExistsError if a row of that name exists, live or deleted
        (:meth:`find_key` tells which)."""
        sealed = self._seal_key(dek, name, key_type, owner, private)
        try:
            with self._tx() as db:
                db.execute(
                    "INSERT INTO keys (name, type, public_der, sealed, created_at, owner) VALUES (?, ?, ?, ?, ?, ?)",
                    (name, key_type, public_der, sealed, created_at, owner),
                )
        except sqlite3.IntegrityError as e:
            raise AlreadyExistsError(f"a key named {name!r} exists already: pick another name") from e

    def find_key(self, name: str) -> StoredKey | None:
        """The row named ``name``, live or deleted, without its private material."""
        row = self._db.execute(
            "SELECT name, type, public_der, created_at, owner, deleted_at FROM keys WHERE name = ?", (name,)
        ).fetchone()
        return None if row is None else _stored(row)

    def get_key(
        self, dek: bytes, name: str, allow: Callable[[StoredKey], None] | None = None
    ) -> tuple[StoredKey, bytes]:
        """A key and its private material, live or deleted. ``allow`` sees the row first and raises
        to refuse it: a refused key is never opened (one query either way)."""
        row = self._db.execute(
            "SELECT name, type, public_der, created_at, owner, deleted_at, sealed FROM keys WHERE name = ?",
            (name,),
        ).fetchone()
        if row is None:
            raise NotFoundError(f"no key named {name!r}: list keys with 'sdctl keys list'")
        info = _stored(row)
        if allow is not None:
            allow(info)
        return info, self._open_key(dek, info, bytes(row[6]))

    def list_keys(self, owner: str | None = None, deleted: bool = False) -> list[StoredKey]:
        """Live keys (``deleted``: the retained deleted keys instead), of ``owner`` or of everyone."""
        where = "deleted_at IS NOT NULL" if deleted else "deleted_at IS NULL"
        args: tuple[str, ...] = ()
        if owner is not None:
            where, args = where + " AND owner = ?", (owner,)
        rows = self._db.execute(
            f"SELECT name, type, public_der, created_at, owner, deleted_at FROM keys WHERE {where} ORDER BY name",  # noqa: S608  # constant clauses
            args,
        ).fetchall()
        return [_stored(r) for r in rows]

    def count_keys(self) -> int:
        """Live keys."""
        return int(self._db.execute("SELECT COUNT(*) FROM keys WHERE deleted_at IS NULL").fetchone()[0])

    def mark_deleted(self, name: str, deleted_at: int | None) -> None:
        """Soft-delete a live key (``deleted_at``: now) or recover a deleted one (None)."""
        was = "deleted_at IS NULL" if deleted_at is not None else "deleted_at IS NOT NULL"
        with self._tx() as db:
            cur = db.execute(f"UPDATE keys SET deleted_at = ? WHERE name = ? AND {was}", (deleted_at, name))  # noqa: S608  # constant clauses
            if cur.rowcount == 0:
                raise NotFoundError(
                    f"no {'live' if deleted_at is not None else 'deleted'} key named {name!r}"
                )

    def purge_key(self, name: str) -> None:
        """Remove a deleted key's row for good."""
        with self._tx() as db:
            if (
                db.execute("DELETE FROM keys WHERE name = ? AND deleted_at IS NOT NULL", (name,)).rowcount
                == 0
            ):
                raise NotFoundError(f"no deleted key named {name!r}")

    def deleted_before(self, time: int) -> list[StoredKey]:
        """The deleted keys whose deletion is at or before ``time`` (their retention has ended)."""
        rows = self._db.execute(
            "SELECT name, type, public_der, created_at, owner, deleted_at FROM keys "
            "WHERE deleted_at IS NOT NULL AND deleted_at <= ? ORDER BY deleted_at, name",
            (time,),
        ).fetchall()
        return [_stored(r) for r in rows]

    def export_key_rows(self, dek: bytes) -> tuple[bytes, int]:
        """(an SQLite image of the ``keys`` table, its row count) for a backup.

        The rows are copied as they are (private material still sealed under ``dek``) into an
        in-memory database, inside SQLite; the copy is then checked row by row (every sealed key
        must open under ``dek``), so a backup never carries a key that could not be restored.
        """
        self._attach_scratch(_EXPORT)
        try:
            self._db.execute(_image_schema(_EXPORT))
            self._db.execute(_COPY_OUT)
            count = 0
            aead = self._aead(dek)
            for name, kind, owner, sealed in self._db.execute(
                "SELECT name, type, owner, sealed FROM backup_out.keys"
            ):
                try:
                    aead.decrypt(sealed[:12], sealed[12:], key_aad(name, kind, owner))
                except InvalidTag as e:
                    raise VerificationError(
                        f"stored key {name!r} failed its integrity check: no backup was written; "
                        "delete that key or restore the data directory, then back up again"
                    ) from e
                count += 1
            image = self._db.serialize(name=_EXPORT)
        finally:
            self._db.execute(f"DETACH DATABASE {_EXPORT}")
        return image, count

    def import_key_rows(self, image: bytes, key_count: int) -> None:
        """Replace the ``keys`` table with the rows of an authenticated backup image, in one
        transaction. The image must hold exactly the backup schema (or the schema of backups taken
        before keys had owners, whose rows come back owned by ``app`` and live) and ``key_count``
        well-formed rows; anything else is refused and the table is left as it was. Deleted keys
        come back deleted, with their deletion time."""
        self._attach_scratch(_IMPORT)
        try:
            try:
                self._db.deserialize(image, name=_IMPORT)
                schema = self._db.execute(
                    "SELECT type, name, tbl_name, sql FROM backup_in.sqlite_schema"
                ).fetchall()
                if schema == [("table", "keys", "keys", _image_schema(""))]:
                    legacy = False
                elif schema == [("table", "keys", "keys", _image_schema("", legacy=True))]:
                    legacy = True
                else:
                    raise MalformedError("the backup's key table has another schema")
                check = _CHECK_IN.format(owner="" if legacy else _CHECK_OWNER)
                count, bad = self._db.execute(check, (json.dumps([int(t) for t in KeyType]),)).fetchone()
            except sqlite3.DatabaseError as e:
                raise MalformedError(f"the backup's key table is not readable: {e}") from e
            if bad or count != key_count:
                raise MalformedError(
                    f"the backup's key table holds {count} rows ({int(bad)} malformed), its header says {key_count}"
                )
            with self._tx() as db:
                db.execute("DELETE FROM main.keys")
                db.execute(_COPY_IN_LEGACY if legacy else _COPY_IN)
        finally:
            self._db.execute(f"DETACH DATABASE {_IMPORT}")

    def _attach_scratch(self, schema: str) -> None:
        """An empty in-memory database attached as ``schema`` (detached by the caller)."""
        try:
            self._db.execute(f"ATTACH DATABASE ':memory:' AS {schema}")
        except sqlite3.OperationalError as e:
            raise StorageError(f"the node cannot open a scratch database ({e}): try again") from e

    def replace_keys(self, dek: bytes, keys: Sequence[BackupKey]) -> None:
        """Replace the ``keys`` table with keys in the clear (a version 1 backup), sealing each
        (owned by ``app``, live: version 1 knew neither)."""
        rows = [
            (
                k.name,
                k.key_type,
                k.public_der,
                self._seal_key(dek, k.name, k.key_type, LEGACY_OWNER, k.private),
                k.created_at,
            )
            for k in keys
        ]
        with self._tx() as db:
            db.execute("DELETE FROM keys")
            db.executemany(
                "INSERT INTO keys (name, type, public_der, sealed, created_at) VALUES (?, ?, ?, ?, ?)",
                rows,
            )


def _stored(row: Any) -> StoredKey:
    """A StoredKey from a row (name, type, public_der, created_at, owner, deleted_at, ...)."""
    name, key_type, public_der, created_at, owner, deleted_at = row[:6]
    return StoredKey(
        name, key_type, bytes(public_der), created_at, owner, None if deleted_at is None else int(deleted_at)
    )
