"""A pool member's store: :class:`~hsm_node.store.protocol.NodeStore` over the pool's etcd cluster.

What is shared lives in etcd under the pool's prefix (:class:`~hsm_node.pool.etcd.Layout`; keys
below are relative to it); what belongs to this member stays on its own disk:

* etcd: ``header`` (the current SD file: signed header, encrypted to the custodians), ``epoch``
  (decimal) and ``info`` (:class:`DomainInfo` JSON), written together in one transaction;
  ``keys/<quoted name>`` one key row each (the private material sealed under the domain's DEK
  exactly as the other stores seal it: etcd never sees a key in the clear); ``audit/<chain>/<seq>``
  one audit entry each (the domain chain is shared; ``provisioning@<node id>`` is each member's
  own provisioning chain); ``custody/<id>``, ``drills/<id>``, ``retired/<epoch>``: custody records,
  drill results and retired epochs (JSON, no secret); ``flags/<name>`` the compromise flag and the
  former custodians; ``seen/<domain id hex>`` the highest epoch seen of a domain.
* this member's disk, ``<data_dir>/pool-member.json`` (0600, in a 0700 directory): the node state
  and the domain secrets sealed under the **node sealing key** (AAD: the node id). The domain
  secrets never go to etcd, sealed or not.

Invariants:

* Every write, and every batch, is one etcd transaction (:meth:`EtcdClient.commit`): it applies only
  if every row it read to decide is still at the revision it read, so two members creating one
  key name, appending one audit sequence number or retiring one epoch: exactly one wins, the other
  gets AlreadyExistsError (a row another member changed meanwhile: StateError, nothing written). A
  write inside a batch that raises undoes only itself; an exception out of the batch, or a raise
  from ``on_commit`` (run before the transaction is sent), sends nothing.
* Reads come from this member's cache of the prefix, loaded once and kept current by an etcd watch
  (reloaded if etcd compacted the history it needed). A write returns only once the cache has
  reached the revision it made, so this member reads its own writes at once.
* The cache is known current at time T when a linearizable read sent at T (it needs etcd's
  quorum) answered revision R and the watch has brought the cache to R; a heartbeat makes that
  read every ``min(1 s, max_staleness / 4)``. A member whose cache was last known current more
  than ``max_staleness`` seconds ago refuses every read with TransportError (UNAVAILABLE) saying so,
  until etcd answers again: no member serves a deleted key, or a key of a compromised domain, for
  longer than that bound. A member whose etcd user was removed (``sdctl pool remove``) refuses
  everything from then on.
* A batch holds at most :data:`~hsm_node.pool.etcd.MAX_TXN_OPS` rows and conditions (etcd's
  ``--max-txn-ops``): larger ones (restoring a backup of more keys) are refused with UsageError
  before anything is sent.
* The local file is written after the etcd transaction committed (write to a temporary file,
  fsync, rename): if that write fails, StorageError says the pool holds the change and this member
  does not.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import secrets as pysecrets
import threading
import time
import urllib.parse
from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from hsm_node.pool.etcd import (
    CompactedError,
    Delete,
    EtcdClient,
    EtcdConfig,
    EventKind,
    KeyValue,
    Layout,
    Put,
    Unchanged,
    WatchBatch,
)
from hsm_node.store.image import read_image, write_image
from hsm_node.store.protocol import LEGACY_OWNER, DomainInfo, KeyRow, StoredKey
from hsm_node.store.sealing import DomainSeal, KeySeal
from sdquorum.backup import BackupKey
from sdquorum.errors import (
    AlreadyExistsError,
    NotFoundError,
    PermissionDeniedError,
    SdquorumError,
    StateError,
    StorageError,
    TransportError,
)
from sdquorum.review import CustodyRecord, DrillResult, RetiredEpoch
from sdquorum.sdfile import DomainSecrets
from sdquorum_rpc.files import private_dir

__all__ = ["DEFAULT_MAX_STALENESS", "LOCAL_FILE", "PoolNodeStore"]

log = logging.getLogger(__name__)
_T = TypeVar("_T")
DEFAULT_MAX_STALENESS = 5.0  # seconds a member serves without hearing from etcd (pool.max_staleness)
LOCAL_FILE = "pool-member.json"
_CONFLICT = "another pool member changed the same rows at the same time: nothing was written; try again"


@dataclass
class _Tx:
    """The writes of one transaction, and what they were decided on."""

    writes: dict[bytes, bytes | None] = field(default_factory=dict)  # None: delete
    read: dict[bytes, int] = field(default_factory=dict)  # key -> mod revision read (0: absent)
    taken: dict[bytes, str] = field(default_factory=dict)  # a row this write creates -> "exists" message
    local: dict[str, Any] = field(default_factory=dict)  # this member's file: fields to set

    def copy(self) -> _Tx:
        return _Tx(dict(self.writes), dict(self.read), dict(self.taken), dict(self.local))


class PoolNodeStore:
    """:class:`~hsm_node.store.protocol.NodeStore` for a pool member (module docstring)."""

    def __init__(
        self,
        config: EtcdConfig,
        pool_id: bytes,
        data_dir: Path,
        sealing_key: bytes,
        node_id: str,
        *,
        max_staleness: float = DEFAULT_MAX_STALENESS,
        start_timeout: float = 15.0,
    ) -> None:
        if max_staleness <= 0:
            raise StateError("pool.max_staleness must be more than 0 seconds")
        self._layout = Layout(pool_id)
        self._node_id = node_id
        self._prefix = self._layout.prefix
        self._config = config
        self._max_staleness = max_staleness
        self._domain_seal = DomainSeal(sealing_key, node_id)
        self._key_seal = KeySeal()
        self._file = private_dir(data_dir, "the data directory", "node.data_dir / --data-dir") / LOCAL_FILE
        self._local: dict[str, Any] = self._read_local()
        self.on_commit: Callable[[], None] | None = None
        # the cache (guarded by _lock; written by the loop thread only)
        self._lock = threading.Lock()
        self._cache: dict[bytes, KeyValue] = {}
        self._revision = 0
        self._contact = 0.0  # time.monotonic() of the last answer from etcd
        self._removed = False
        self._tx: _Tx | None = None
        self._tx_thread = 0  # the thread whose transaction _tx is (others read committed rows only)
        self._writer = threading.RLock()  # one transaction at a time in this process
        # the loop that speaks to etcd
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="pool-etcd", daemon=True)
        self._thread.start()
        self._client = EtcdClient(config)
        self._caught_up: asyncio.Condition | None = None
        self._closed = False
        try:
            self._run(self._load(), start_timeout)
        except BaseException:
            self.close()
            raise
        self._follower: Future[None] = asyncio.run_coroutine_threadsafe(self._follow(), self._loop)
        self._beat: Future[None] = asyncio.run_coroutine_threadsafe(self._heartbeat(), self._loop)

    # ------------------------------------------------------------------ the loop thread

    def _run(self, coro: Coroutine[Any, Any, _T], timeout: float | None = None) -> _T:
        wait = timeout if timeout is not None else self._config.call_timeout * 2 + self._max_staleness
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result(wait)
        except FutureTimeout:
            fut.cancel()
            raise TransportError(
                f"the pool's etcd did not answer within {wait:g} s: check the etcd cluster "
                "(docs/runbooks/pool.md)"
            ) from None

    async def _load(self) -> None:
        """The whole prefix as one snapshot, replacing the cache."""
        if self._caught_up is None:
            self._caught_up = asyncio.Condition()
        kvs, revision = await self._client.get_prefix(self._prefix)
        with self._lock:
            self._cache = {kv.key: kv for kv in kvs}
            self._revision = revision
            self._contact = time.monotonic()
        async with self._caught_up:
            self._caught_up.notify_all()

    def _apply(self, batch: WatchBatch) -> None:
        with self._lock:
            for ev in batch.events:
                if ev.kind is EventKind.DELETE:
                    self._cache.pop(ev.key, None)
                else:
                    old = self._cache.get(ev.key)
                    created = old.create_revision if old is not None else ev.mod_revision
                    version = old.version + 1 if old is not None else 1
                    self._cache[ev.key] = KeyValue(ev.key, ev.value, created, ev.mod_revision, version, 0)
            self._revision = max(self._revision, batch.revision)

    async def _follow(self) -> None:
        """Keep the cache current for as long as the store is open."""
        assert self._caught_up is not None
        while not self._closed:
            try:
                async for batch in self._client.watch_prefix(self._prefix, self._revision + 1):
                    self._apply(batch)
                    async with self._caught_up:
                        self._caught_up.notify_all()
            except CompactedError:
                log.warning("pool: etcd compacted the history this member's watch needed: reloading")
                with contextlib.suppress(SdquorumError):
                    await self._load()
                await asyncio.sleep(0.2)
            except PermissionDeniedError as e:
                log.error("pool: etcd refuses this member (%s): it serves nothing more", e)
                self._removed = True
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the watch never ends by itself; anything else: start again
                log.warning("pool: the etcd watch failed (%s): following again", e)
                await asyncio.sleep(0.2)

    async def _heartbeat(self) -> None:
        """Prove, often, that the cache is current: a linearizable read (it needs etcd's quorum)
        tells the cluster's revision at the time it was sent; once the watch has brought the cache
        to that revision, the cache was current then. Watch events and progress notices prove
        nothing alone (a member cut off from its quorum still answers them for a while)."""
        interval = min(1.0, self._max_staleness / 4)
        while not self._closed:
            sent = time.monotonic()
            try:
                _, revision = await self._client.get_prefix(self._layout.epoch())
                if await self._wait_revision(revision, self._max_staleness):
                    with self._lock:
                        self._contact = max(self._contact, sent)
            except PermissionDeniedError as e:
                log.error("pool: etcd refuses this member (%s): it serves nothing more", e)
                self._removed = True
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.debug("pool: etcd did not answer the freshness read: %s", e)
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - sent)))

    async def _wait_revision(self, revision: int, timeout: float) -> bool:
        assert self._caught_up is not None
        async with self._caught_up:
            try:
                await asyncio.wait_for(self._caught_up.wait_for(lambda: self._revision >= revision), timeout)
            except TimeoutError:
                return False
        return True

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in (getattr(self, "_follower", None), getattr(self, "_beat", None)):
            if task is not None:
                task.cancel()
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._client.close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()

    # ------------------------------------------------------------------ freshness and reads

    def mark_removed(self) -> None:
        """This member was removed from the pool: refuse everything from now on."""
        self._removed = True

    def staleness(self) -> float:
        """Seconds since etcd last answered this member."""
        return time.monotonic() - self._contact

    def _fresh(self) -> None:
        if self._removed:
            raise PermissionDeniedError(
                "this node was removed from the pool (etcd refuses its certificate): it serves nothing; "
                "ask an admin to allow it again and rejoin"
            )
        if self._closed:
            raise StateError("the pool store is closed")
        age = self.staleness()
        if age > self._max_staleness:
            raise TransportError(
                f"this pool member has not heard from etcd for {age:.1f} s (pool.max_staleness is "
                f"{self._max_staleness:g} s), so it serves nothing until etcd answers again: check the "
                "etcd cluster and this member's network (docs/runbooks/pool.md)"
            )

    def _mine(self) -> _Tx | None:
        """This thread's open transaction, if any."""
        return self._tx if self._tx_thread == threading.get_ident() else None

    def _get(self, key: bytes) -> bytes | None:
        """A value as this transaction sees it (its own writes first, then the cache)."""
        tx = self._mine()
        if tx is not None and key in tx.writes:
            return tx.writes[key]
        self._fresh()
        with self._lock:
            kv = self._cache.get(key)
        return None if kv is None else kv.value

    def _scan(self, prefix: bytes) -> list[tuple[bytes, bytes]]:
        """Every (key, value) under ``prefix`` as this transaction sees it, in creation order."""
        self._fresh()
        with self._lock:
            kvs = [kv for k, kv in self._cache.items() if k.startswith(prefix)]
        kvs.sort(key=lambda kv: (kv.create_revision, kv.key))
        rows = [(kv.key, kv.value) for kv in kvs]
        tx = self._mine()
        if tx is None:
            return rows
        present = {k for k, _ in rows}
        out: list[tuple[bytes, bytes]] = []
        for k, v in rows:
            w = tx.writes.get(k, v)
            if w is not None:
                out.append((k, w))
        out += [
            (k, v)
            for k, v in tx.writes.items()
            if v is not None and k.startswith(prefix) and k not in present
        ]
        return out

    # ------------------------------------------------------------------ transactions

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Every write inside is one etcd transaction (module docstring)."""
        with self._write():
            yield

    @contextmanager
    def _write(self) -> Iterator[_Tx]:
        """A transaction (or, inside one, a savepoint): sent when the outermost block ends."""
        with self._writer:
            outer = self._tx
            if outer is not None:  # a write inside a batch: undone alone if it raises
                saved = outer.copy()
                try:
                    yield outer
                except BaseException:
                    self._tx = saved
                    raise
                return
            self._fresh()
            tx = _Tx()
            self._tx, self._tx_thread = tx, threading.get_ident()
            try:
                yield tx
                done = self._tx or tx  # a savepoint that failed inside put its copy back
                if self.on_commit is not None:
                    self.on_commit()
                self._commit(done)
            finally:
                self._tx, self._tx_thread = None, 0

    def _read_for_write(self, tx: _Tx, key: bytes) -> bytes | None:
        """The value the write decides on; the transaction applies only if it is still so."""
        if key in tx.writes:
            return tx.writes[key]
        self._fresh()
        with self._lock:
            kv = self._cache.get(key)
        tx.read.setdefault(key, 0 if kv is None else kv.mod_revision)
        return None if kv is None else kv.value

    def _create(self, tx: _Tx, key: bytes, value: bytes, exists: str) -> None:
        if self._read_for_write(tx, key) is not None:
            raise AlreadyExistsError(exists)
        tx.writes[key] = value
        tx.taken[key] = exists

    def _commit(self, tx: _Tx) -> None:
        if tx.writes:
            ops = [Put(k, v) if v is not None else Delete(k) for k, v in tx.writes.items()]
            conds = [Unchanged(k, r) for k, r in tx.read.items()]
            revision = self._run(self._client.commit(ops, unless_changed=conds))
            if revision is None:
                self._refuse_conflict(tx)
            else:
                self._contact = max(self._contact, time.monotonic())
                if not self._run(self._wait_revision(revision, self._max_staleness)):
                    log.warning("pool: the watch has not reached revision %d yet", revision)
        if tx.local:
            self._write_local({**self._local, **tx.local})

    def _refuse_conflict(self, tx: _Tx) -> None:
        """Nothing was written: say which row another member took first, if one was."""
        for key, message in tx.taken.items():
            now = self._run(self._client.get(key))
            if now is not None:
                raise AlreadyExistsError(message)
        raise StateError(_CONFLICT)

    # ------------------------------------------------------------------ this member's file

    def _read_local(self) -> dict[str, Any]:
        try:
            text = self._file.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {"state": None, "domains": {}}
        except OSError as e:
            raise StorageError(f"cannot read {self._file}: {e.strerror}") from e
        try:
            o = json.loads(text)
            if not isinstance(o, dict) or not isinstance(o.get("domains"), dict):
                raise ValueError("not a pool member file")
        except ValueError as e:
            raise StorageError(f"{self._file} is damaged ({e}): restore it from this node's backup") from e
        return o

    def _write_local(self, data: dict[str, Any]) -> None:
        tmp = self._file.with_suffix(".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._file)
            dfd = os.open(self._file.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as e:
            raise StorageError(
                f"the pool holds the change but this member could not write {self._file} ({e.strerror}): "
                "free space on its data volume, then restart it"
            ) from e
        self._local = data

    def _local_view(self) -> dict[str, Any]:
        tx = self._mine()
        return {**self._local, **tx.local} if tx is not None else self._local

    # ------------------------------------------------------------ state, domain and epochs

    def state(self) -> str | None:
        v = self._local_view().get("state")
        return str(v) if v else None

    def set_state(self, state: str) -> None:
        with self._write() as tx:
            tx.local["state"] = state

    def _domains_with(self, tx: _Tx, secrets: DomainSecrets) -> dict[str, str]:
        domains = dict(self._local_view().get("domains", {}))
        domains[secrets.domain_id.hex()] = self._domain_seal.seal(secrets).hex()
        return domains

    def _check_domain(self, tx: _Tx, domain_id: bytes) -> None:
        current = self._read_for_write(tx, self._layout.prefix + b"info")
        if current is not None and DomainInfo.from_json(current.decode()).domain_id != domain_id:
            raise StateError(
                "this pool serves another security domain: a node of another domain cannot join it "
                "(check pool.id and the pool's etcd endpoints)"
            )

    def _put_domain(self, tx: _Tx, info: DomainInfo, sd_file: bytes) -> None:
        self._read_for_write(tx, self._layout.header())
        tx.writes[self._layout.header()] = sd_file
        tx.writes[self._layout.epoch()] = str(info.epoch).encode()
        tx.writes[self._layout.prefix + b"info"] = info.to_json().encode()

    def activate(self, secrets: DomainSecrets, info: DomainInfo, state: str, sd_file: bytes) -> None:
        with self._write() as tx:
            self._check_domain(tx, secrets.domain_id)
            self._put_domain(tx, info, sd_file)
            tx.local["domains"] = self._domains_with(tx, secrets)
            tx.local["state"] = state

    def load_domain(self) -> tuple[DomainSecrets, DomainInfo] | None:
        raw = self._get(self._layout.prefix + b"info")
        if raw is None:
            return None
        info = DomainInfo.from_json(raw.decode())
        sealed = self._local_view().get("domains", {}).get(info.domain_id.hex())
        if sealed is None:
            return None  # the pool has a domain; this member does not hold it (yet): it joins first
        return self._domain_seal.open(bytes.fromhex(sealed)), info

    def sd_file(self) -> bytes | None:
        return self._get(self._layout.header())

    def rotate(self, secrets: DomainSecrets, info: DomainInfo, sd_file: bytes, retired: RetiredEpoch) -> None:
        with self._write() as tx:
            self._check_domain(tx, secrets.domain_id)
            self._create(
                tx,
                self._sub("retired", str(retired.epoch)),
                _json(retired),
                f"epoch {retired.epoch} was retired already",
            )
            self._put_domain(tx, info, sd_file)
            tx.local["domains"] = self._domains_with(tx, secrets)

    def set_flag(self, name: str, value: str) -> None:
        with self._write() as tx:
            tx.writes[self._sub("flags", name)] = value.encode()

    def flag(self, name: str) -> str | None:
        v = self._get(self._sub("flags", name))
        return v.decode() if v is not None else None

    def highest_epoch(self, domain_id: bytes) -> int | None:
        v = self._get(self._sub("seen", domain_id.hex()))
        return int(v) if v is not None else None

    def note_epoch(self, domain_id: bytes, epoch: int) -> None:
        key = self._sub("seen", domain_id.hex())
        with self._write() as tx:
            v = self._read_for_write(tx, key)
            if v is None or int(v) < epoch:
                tx.writes[key] = str(epoch).encode()

    # ------------------------------------------------------------ audit and custody

    def _sub(self, *parts: str) -> bytes:
        return self._prefix + "/".join(urllib.parse.quote(p, safe="") for p in parts).encode()

    def _chain(self, chain: str) -> str:
        """The domain's chain is the pool's; each member's provisioning chain is its own."""
        return f"{chain}@{self._node_id}" if chain == "provisioning" else chain

    def append_audit(self, chain: str, seq: int, entry_json: str) -> None:
        with self._write() as tx:
            self._create(
                tx,
                self._sub("audit", self._chain(chain), f"{seq:020d}"),
                entry_json.encode(),
                f"audit entry {seq} of chain {chain!r} exists already",
            )

    def audit_entries(self, chain: str) -> list[str]:
        rows = self._scan(self._sub("audit", self._chain(chain)) + b"/")
        return [v.decode() for _, v in sorted(rows)]

    def last_audit(self, chain: str) -> str | None:
        entries = self.audit_entries(chain)
        return entries[-1] if entries else None

    def _append(self, table: str, values: Iterable[bytes]) -> None:
        with self._write() as tx:
            # rows of one transaction share a revision: their index keeps them in order
            for i, v in enumerate(values):
                row_id = f"{i:06d}-{pysecrets.token_hex(8)}"
                self._create(tx, self._sub(table, row_id), v, f"a {table} row collided")

    def add_custody_record(self, record: CustodyRecord) -> None:
        self._append("custody", [_json(record)])

    def custody_records(self) -> list[CustodyRecord]:
        return [CustodyRecord.from_json(json.loads(v)) for _, v in self._scan(self._sub("custody") + b"/")]

    def add_drill_results(self, results: Sequence[DrillResult]) -> None:
        self._append("drills", [_json(r) for r in results])

    def drill_results(self) -> list[DrillResult]:
        return [DrillResult.from_json(json.loads(v)) for _, v in self._scan(self._sub("drills") + b"/")]

    def retired_epochs(self) -> list[RetiredEpoch]:
        return [RetiredEpoch.from_json(json.loads(v)) for _, v in self._scan(self._sub("retired") + b"/")]

    # ------------------------------------------------------------ keys

    def _key(self, name: str) -> bytes:
        return self._sub("keys", name)

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
        sealed = self._key_seal.seal(dek, name, key_type, owner, private)
        row = KeyRow(StoredKey(name, key_type, public_der, created_at, owner), sealed)
        with self._write() as tx:
            self._create(
                tx,
                self._key(name),
                _row_bytes(row),
                f"a key named {name!r} exists already: pick another name",
            )

    def _row(self, name: str) -> KeyRow | None:
        v = self._get(self._key(name))
        return None if v is None else _row_from(v)

    def find_key(self, name: str) -> StoredKey | None:
        row = self._row(name)
        return None if row is None else row.key

    def get_key(
        self, dek: bytes, name: str, allow: Callable[[StoredKey], None] | None = None
    ) -> tuple[StoredKey, bytes]:
        row = self._row(name)
        if row is None:
            raise NotFoundError(f"no key named {name!r}: list keys with 'sdctl keys list'")
        if allow is not None:
            allow(row.key)
        return row.key, self._key_seal.open(dek, row.key, row.sealed)

    def _rows(self) -> list[KeyRow]:
        rows = [_row_from(v) for _, v in self._scan(self._sub("keys") + b"/")]
        return sorted(rows, key=lambda r: r.key.name)

    def list_keys(self, owner: str | None = None, deleted: bool = False) -> list[StoredKey]:
        return [
            r.key
            for r in self._rows()
            if (r.key.deleted_at is not None) == deleted and owner in (None, r.key.owner)
        ]

    def count_keys(self) -> int:
        return len(self.list_keys())

    def mark_deleted(self, name: str, deleted_at: int | None) -> None:
        with self._write() as tx:
            v = self._read_for_write(tx, self._key(name))
            row = None if v is None else _row_from(v)
            if row is None or (row.key.deleted_at is None) != (deleted_at is not None):
                raise NotFoundError(
                    f"no {'live' if deleted_at is not None else 'deleted'} key named {name!r}"
                )
            key = StoredKey(
                row.key.name,
                row.key.key_type,
                row.key.public_der,
                row.key.created_at,
                row.key.owner,
                deleted_at,
            )
            tx.writes[self._key(name)] = _row_bytes(KeyRow(key, row.sealed))

    def purge_key(self, name: str) -> None:
        with self._write() as tx:
            v = self._read_for_write(tx, self._key(name))
            if v is None or _row_from(v).key.deleted_at is None:
                raise NotFoundError(f"no deleted key named {name!r}")
            tx.writes[self._key(name)] = None

    def deleted_before(self, time: int) -> list[StoredKey]:
        due = [r.key for r in self._rows() if r.key.deleted_at is not None and r.key.deleted_at <= time]
        return sorted(due, key=lambda k: (k.deleted_at, k.name))

    def export_key_rows(self, dek: bytes) -> tuple[bytes, int]:
        rows = self._rows()
        count = self._key_seal.check_all(dek, rows)
        return write_image(rows), count

    def import_key_rows(self, image: bytes, key_count: int) -> None:
        self._replace_rows(read_image(image, key_count))

    def replace_keys(self, dek: bytes, keys: Sequence[BackupKey]) -> None:
        self._replace_rows(self._key_seal.seal_all(dek, keys))

    def _replace_rows(self, rows: Iterable[KeyRow]) -> None:
        with self._write() as tx:
            for key, _ in self._scan(self._sub("keys") + b"/"):
                self._read_for_write(tx, key)
                tx.writes[key] = None
            for r in rows:
                tx.writes[self._key(r.key.name)] = _row_bytes(r)

    # ------------------------------------------------------------ the pool's own rows (not the seam)
    # allowed/<node_id>: an admin's permission to join; members/<node_id>: a member (attestation
    # certificate, state); joins/<node_id>: a pending join request; grants/<node_id>: its answer;
    # served/<request sha256 hex>: a request answered once (a replay finds it taken).

    def pool_info(self) -> DomainInfo | None:
        """The pool's domain id, epoch, quorum and n, as published with its header."""
        raw = self._get(self._layout.prefix + b"info")
        return None if raw is None else DomainInfo.from_json(raw.decode())

    def pool_rows(self, table: str) -> dict[str, bytes]:
        """Every row of one of the pool's tables, by node id."""
        start = self._sub(table) + b"/"
        return {urllib.parse.unquote(k[len(start) :].decode()): v for k, v in self._scan(start)}

    def pool_row(self, table: str, node_id: str) -> bytes | None:
        return self._get(self._sub(table, node_id))

    def put_pool_row(self, table: str, node_id: str, value: bytes) -> None:
        with self._write() as tx:
            tx.writes[self._sub(table, node_id)] = value

    def delete_pool_row(self, table: str, node_id: str) -> None:
        with self._write() as tx:
            if self._read_for_write(tx, self._sub(table, node_id)) is not None:
                tx.writes[self._sub(table, node_id)] = None

    def grant_join(self, node_id: str, request: bytes, request_sha256: bytes, grant: bytes) -> None:
        """Answer ``node_id``'s pending ``request`` with ``grant``, once: one transaction marks the
        request served (AlreadyExistsError if it was), puts the grant, removes the request."""
        with self._write() as tx:
            if self._read_for_write(tx, self._sub("joins", node_id)) != request:
                raise StateError(f"the join request of {node_id!r} changed or is gone: nothing was granted")
            self._create(
                tx, self._sub("served", request_sha256.hex()), b"1", "this join request was served already"
            )
            tx.writes[self._sub("grants", node_id)] = grant
            tx.writes[self._sub("joins", node_id)] = None

    def served(self) -> list[bytes]:
        start = self._sub("served") + b"/"
        return [bytes.fromhex(k[len(start) :].decode()) for k, _ in self._scan(start)]

    def hold_domain(self, secrets: DomainSecrets, state: str) -> None:
        """A joined member: keep the pool's domain secrets on this member's disk (sealed under the
        node sealing key) and take ``state``; nothing is written to etcd."""
        raw = self._get(self._layout.prefix + b"info")
        if raw is None or DomainInfo.from_json(raw.decode()).domain_id != secrets.domain_id:
            raise StateError("these domain secrets are not the pool's domain: nothing was kept")
        with self._write() as tx:
            tx.local["domains"] = self._domains_with(tx, secrets)
            tx.local["state"] = state


# ------------------------------------------------------------------ row encoding


def _json(value: Any) -> bytes:
    return json.dumps(value.to_json(), sort_keys=True).encode()


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def _row_bytes(row: KeyRow) -> bytes:
    k = row.key
    return json.dumps(
        {
            "name": k.name,
            "type": k.key_type,
            "public": _b64(k.public_der),
            "created_at": k.created_at,
            "owner": k.owner,
            "deleted_at": k.deleted_at,
            "sealed": _b64(row.sealed),
        },
        separators=(",", ":"),
    ).encode()


def _row_from(value: bytes) -> KeyRow:
    o = json.loads(value)
    key = StoredKey(
        str(o["name"]),
        int(o["type"]),
        base64.b64decode(o["public"]),
        int(o["created_at"]),
        str(o["owner"]),
        None if o["deleted_at"] is None else int(o["deleted_at"]),
    )
    return KeyRow(key, base64.b64decode(o["sealed"]))
