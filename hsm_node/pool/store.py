"""A pool member's store: :class:`~hsm_node.store.protocol.NodeStore` over the pool's etcd cluster.

What is shared lives in etcd under the pool's prefix (:class:`~hsm_node.pool.etcd.Layout`; keys
below are relative to it); what belongs to this member stays on its own disk:

* etcd: ``header`` (the current SD file: signed header, encrypted to the custodians), ``epoch``
  (decimal) and ``info`` (:class:`DomainInfo` JSON), written together in one transaction;
  ``keys/<generation>/<quoted name>`` one key row each (the private material sealed under the
  domain's DEK exactly as the other stores seal it: etcd never sees a key in the clear), under the
  generation the ``keyset`` row names; ``restoring/<generation>`` a restore being staged (the key
  set and its staged restore of any size: :mod:`hsm_node.pool.keyset`); ``audit/<chain>/<seq>``
  one audit entry each, in each member's own chains (``domain@<node id>``,
  ``provisioning@<node id>``: members audit at once without racing for a sequence number; every
  chain outlives its member); ``custody/<id>``, ``drills/<id>``, ``retired/<epoch>``: custody records, drill results and
  retired epochs (JSON, no secret); ``flags/<name>`` the compromise flag and the former
  custodians; ``seen/<domain id hex>`` the highest epoch seen of a domain; ``head`` the custody
  head; the pool's own rows (:mod:`hsm_node.pool.rows`). Every key, custody and domain row carries
  a MAC under a key derived from the DEK, and the custody rows are covered by the head
  (:mod:`hsm_node.pool.integrity`): a row altered outside sdquorum is never used.
* this member's disk, ``<data_dir>/pool-member.json`` (0600, in a 0700 directory): the node state
  and the domain secrets sealed under the **node sealing key** (AAD: the node id). The domain
  secrets never go to etcd, sealed or not; a member that sees the pool's header but holds no
  secrets has no domain (it joins first).

Transactions, the cache and freshness: :mod:`hsm_node.pool.view` (its docstring states them).
"""

from __future__ import annotations

import base64
import json
import logging
import secrets as pysecrets
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from hsm_node.pool.etcd import EtcdClient, EtcdConfig
from hsm_node.pool.keyset import DEFAULT_RESTORE_TTL, KeySet
from hsm_node.pool.restore import StagedRestore
from hsm_node.pool.rows import PoolRows
from hsm_node.pool.view import DEFAULT_MAX_STALENESS, LOCAL_FILE, EtcdView, caught_up
from hsm_node.store.image import KeyRowImages
from hsm_node.store.protocol import DomainInfo, KeyRow, StoredKey
from hsm_node.store.sealing import DomainSeal, KeySeal
from sdquorum.errors import NotFoundError, SdquorumError, StateError
from sdquorum.review import CustodyRecord, DrillResult, RetiredEpoch
from sdquorum.sdfile import DomainSecrets

__all__ = ["DEFAULT_MAX_STALENESS", "LOCAL_FILE", "PoolNodeStore"]

log = logging.getLogger("hsm_node.pool.store")


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
        restore_ttl: int = DEFAULT_RESTORE_TTL,
        client_factory: Callable[[EtcdConfig], EtcdClient] = EtcdClient,
    ) -> None:
        self.view = EtcdView(
            config,
            pool_id,
            data_dir,
            node_id,
            max_staleness=max_staleness,
            start_timeout=start_timeout,
            client_factory=client_factory,
        )
        self.domain = _PoolDomain(self.view, DomainSeal(sealing_key, node_id))
        self.records = _PoolRecords(self.view)
        self.keys = _PoolKeys(self.view, KeySeal(), KeySet(self.view, ttl=restore_ttl))
        self.pool = PoolRows(self.view, self.domain)
        try:  # the pool's layout: a member never serves a pool written by another version
            self.keys.keyset.open()
        except BaseException:
            self.view.close()
            raise
        try:  # the row key, if this member holds the pool's domain (hsm_node.pool.integrity)
            self.domain.load_domain()
        except SdquorumError as e:  # reads of what failed are refused; the node says so when it loads
            log.error("pool: this member's domain could not be loaded at start: %s", e)
        try:  # what a crashed restore left (hsm_node.pool.keyset): best effort, the next restore retries
            self.keys.keyset.collect_garbage()
        except SdquorumError as e:
            log.warning("pool: could not remove the rows of dead key-set generations at start: %s", e)

    @property
    def on_commit(self) -> Callable[[], None] | None:
        return self.view.on_commit

    @on_commit.setter
    def on_commit(self, hook: Callable[[], None] | None) -> None:
        self.view.on_commit = hook

    def close(self) -> None:
        self.view.close()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Every write inside, in any part, is one etcd transaction (a restore is not a write of a
        batch: it is staged, :mod:`hsm_node.pool.keyset`)."""
        with self.view.write():
            yield


class _PoolDomain:
    def __init__(self, view: EtcdView, seal: DomainSeal) -> None:
        self._v = view
        self._domain_seal = seal

    def state(self) -> str | None:
        v = self._v.local_view().get("state")
        return str(v) if v else None

    def set_state(self, state: str) -> None:
        with self._v.write() as tx:
            tx.local["state"] = state

    def domains_with(self, secrets: DomainSecrets) -> dict[str, str]:
        domains = dict(self._v.local_view().get("domains", {}))
        domains[secrets.domain_id.hex()] = self._domain_seal.seal(secrets).hex()
        return domains

    def _check_domain(self, tx: Any, domain_id: bytes) -> None:
        current = self._v.read_for_write(tx, self._v.layout.prefix + b"info")
        if current is not None and DomainInfo.from_json(current.decode()).domain_id != domain_id:
            raise StateError(
                "this pool serves another security domain: a node of another domain cannot join it "
                "(check pool.id and the pool's etcd endpoints)"
            )

    def _put_domain(self, tx: Any, info: DomainInfo, sd_file: bytes) -> None:
        self._v.read_for_write(tx, self._v.layout.header())
        tx.writes[self._v.layout.header()] = sd_file
        tx.writes[self._v.layout.epoch()] = str(info.epoch).encode()
        tx.writes[self._v.layout.prefix + b"info"] = info.to_json().encode()

    def activate(self, secrets: DomainSecrets, info: DomainInfo, state: str, sd_file: bytes) -> None:
        with self._v.write() as tx:
            self._check_domain(tx, secrets.domain_id)
            self._v.guard.use_domain(secrets)
            self._put_domain(tx, info, sd_file)
            tx.local["domains"] = self.domains_with(secrets)
            tx.local["state"] = state

    def load_domain(self) -> tuple[DomainSecrets, DomainInfo] | None:
        raw = self._v.get(self._v.layout.prefix + b"info")
        if raw is None:
            return None
        info = DomainInfo.from_json(raw.decode())
        sealed = self._v.local_view().get("domains", {}).get(info.domain_id.hex())
        if sealed is None:
            return None  # the pool has a domain; this member does not hold it (yet): it joins first
        secrets = self._domain_seal.open(bytes.fromhex(sealed))
        self._v.guard.use_domain(secrets)
        raw = self._v.get(self._v.layout.prefix + b"info")  # now checked: the row key is known
        if raw is None or DomainInfo.from_json(raw.decode()) != info:
            raise StateError("the pool's domain info changed while it was read: try again")
        return secrets, info

    def sd_file(self) -> bytes | None:
        return self._v.get(self._v.layout.header())

    def rotate(self, secrets: DomainSecrets, info: DomainInfo, sd_file: bytes, retired: RetiredEpoch) -> None:
        with self._v.write() as tx:
            self._check_domain(tx, secrets.domain_id)
            self._v.guard.use_domain(secrets)
            self._v.create(
                tx,
                self._v.sub("retired", str(retired.epoch)),
                _json(retired),
                f"epoch {retired.epoch} was retired already",
            )
            self._put_domain(tx, info, sd_file)
            tx.local["domains"] = self.domains_with(secrets)

    def set_flag(self, name: str, value: str) -> None:
        with self._v.write() as tx:
            tx.writes[self._v.sub("flags", name)] = value.encode()

    def flag(self, name: str) -> str | None:
        v = self._v.get(self._v.sub("flags", name))
        return v.decode() if v is not None else None

    def highest_epoch(self, domain_id: bytes) -> int | None:
        v = self._v.get(self._v.sub("seen", domain_id.hex()))
        return int(v) if v is not None else None

    def note_epoch(self, domain_id: bytes, epoch: int) -> None:
        key = self._v.sub("seen", domain_id.hex())
        with self._v.write() as tx:
            v = self._v.read_for_write(tx, key)
            if v is None or int(v) < epoch:
                tx.writes[key] = str(epoch).encode()


class _PoolRecords:
    def __init__(self, view: EtcdView) -> None:
        self._v = view

    def _chain(self, chain: str) -> str:
        """Each member keeps its own chains (``<chain>@<node id>``), all in etcd: members append at
        once without racing for a sequence number, and a member's chain outlives the member."""
        return f"{chain}@{self._v.node_id}"

    def append_audit(self, chain: str, seq: int, entry_json: str) -> None:
        with self._v.write() as tx:
            self._v.create(
                tx,
                self._v.sub("audit", self._chain(chain), f"{seq:020d}"),
                entry_json.encode(),
                f"audit entry {seq} of chain {chain!r} exists already",
            )

    def audit_entries(self, chain: str) -> list[str]:
        rows = self._v.scan(self._v.sub("audit", self._chain(chain)) + b"/")
        return [v.decode() for _, v in sorted(rows)]

    def last_audit(self, chain: str) -> str | None:
        entries = self.audit_entries(chain)
        return entries[-1] if entries else None

    def _append(self, table: str, values: Iterable[bytes]) -> None:
        with self._v.write() as tx:
            # rows of one transaction share a revision: their index keeps them in order
            for i, v in enumerate(values):
                row_id = f"{i:06d}-{pysecrets.token_hex(8)}"
                self._v.create(tx, self._v.sub(table, row_id), v, f"a {table} row collided")

    def add_custody_record(self, record: CustodyRecord) -> None:
        self._append("custody", [_json(record)])

    def custody_records(self) -> list[CustodyRecord]:
        return [
            CustodyRecord.from_json(json.loads(v)) for _, v in self._v.scan(self._v.sub("custody") + b"/")
        ]

    def add_drill_results(self, results: Sequence[DrillResult]) -> None:
        self._append("drills", [_json(r) for r in results])

    def drill_results(self) -> list[DrillResult]:
        return [DrillResult.from_json(json.loads(v)) for _, v in self._v.scan(self._v.sub("drills") + b"/")]

    def retired_epochs(self) -> list[RetiredEpoch]:
        return [RetiredEpoch.from_json(json.loads(v)) for _, v in self._v.scan(self._v.sub("retired") + b"/")]


class _PoolKeys(KeyRowImages):
    """Key rows under the key set's current generation (:mod:`hsm_node.pool.keyset`)."""

    def __init__(self, view: EtcdView, seal: KeySeal, keyset: KeySet) -> None:
        self._v = view
        self._key_seal = seal
        self.keyset = keyset

    def put_key(self, dek: bytes, key: StoredKey, private: bytes) -> None:
        sealed = self._key_seal.seal(dek, key.name, key.key_type, key.owner, private)
        row = KeyRow(replace(key, deleted_at=None), sealed)
        with self._v.write() as tx:
            gen = self.keyset.current_for_write(tx)
            self._v.create(
                tx,
                self.keyset.key(gen, key.name),
                _row_bytes(row),
                f"a key named {key.name!r} exists already: pick another name",
            )

    def _row(self, name: str, settled: bool) -> KeyRow | None:
        """The key's row; ``settled``: on a miss, looked up again once the cache has caught up with
        etcd, so a key another member acknowledged a moment ago is found here too (a client that
        failed over between its create and its use)."""
        for attempt in range(2):
            tx = self._v.transaction()
            if tx is not None:  # a decision inside a transaction: what it read is its condition
                v = self._v.read_for_write(tx, self.keyset.key(self.keyset.current_for_write(tx), name))
            else:
                with self._v.snapshot():
                    v = self._v.get(self.keyset.key(self.keyset.current(), name))
            if v is not None:
                return _row_from(v)
            if attempt or not settled or not caught_up(self._v):
                break
        return None

    def find_key(self, name: str, *, settled: bool = False) -> StoredKey | None:
        row = self._row(name, settled)
        return None if row is None else row.key

    def get_key(
        self, dek: bytes, name: str, allow: Callable[[StoredKey], None] | None = None
    ) -> tuple[StoredKey, bytes]:
        row = self._row(name, settled=True)
        if row is None:
            raise NotFoundError(f"no key named {name!r}: list keys with 'sdctl keys list'")
        if allow is not None:
            allow(row.key)
        return row.key, self._key_seal.open(dek, row.key, row.sealed)

    def _rows(self) -> list[KeyRow]:
        with self._v.snapshot():
            found = self._v.scan(self.keyset.prefix(self.keyset.current()))
        return sorted((_row_from(v) for _, v in found), key=lambda r: r.key.name)

    def list_keys(self, owner: str | None = None, deleted: bool = False) -> list[StoredKey]:
        return [
            r.key
            for r in self._rows()
            if (r.key.deleted_at is not None) == deleted and owner in (None, r.key.owner)
        ]

    def count_keys(self) -> int:
        return len(self.list_keys())

    def mark_deleted(self, name: str, deleted_at: int | None) -> None:
        with self._v.write() as tx:
            where = self.keyset.key(self.keyset.current_for_write(tx), name)
            v = self._v.read_for_write(tx, where)
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
            tx.writes[where] = _row_bytes(KeyRow(key, row.sealed))

    def purge_key(self, name: str) -> None:
        with self._v.write() as tx:
            where = self.keyset.key(self.keyset.current_for_write(tx), name)
            v = self._v.read_for_write(tx, where)
            if v is None or _row_from(v).key.deleted_at is None:
                raise NotFoundError(f"no deleted key named {name!r}")
            tx.writes[where] = None

    def deleted_before(self, time: int) -> list[StoredKey]:
        due = [r.key for r in self._rows() if r.key.deleted_at is not None and r.key.deleted_at <= time]
        return sorted(due, key=lambda k: (k.deleted_at, k.name))

    def _key_rows(self) -> list[KeyRow]:
        return self._rows()

    def _replace_rows(self, rows: Iterable[KeyRow]) -> None:
        """A staged restore of any size, atomic at its flip (:mod:`hsm_node.pool.restore`)."""
        StagedRestore(self.keyset).run([(r.key.name, _row_bytes(r)) for r in rows], self._v.on_commit)


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
