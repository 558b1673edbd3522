"""A store in memory: :class:`~hsm_node.store.protocol.NodeStore` over dictionaries.

The reference of the seam's contract (the contract suite runs over it and over the SQLite store)
and the store of the node's in-process tests. It seals exactly as the SQLite store does
(:mod:`hsm_node.store.sealing`), so secrets are never kept in the clear here either, and writes its
backups through :mod:`hsm_node.store.image`, so a backup moves between the two.

A transaction is a copy of the tables: a batch works on it and replaces the tables with it when it
commits; a write inside a batch works on a copy of the batch's copy (a savepoint). Nothing is
durable: the store lives as long as the process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

from hsm_node.store.image import KeyRowImages
from hsm_node.store.protocol import DomainInfo, KeyRow, StoredKey
from hsm_node.store.sealing import DomainSeal, KeySeal
from sdquorum.errors import AlreadyExistsError, NotFoundError
from sdquorum.review import CustodyRecord, DrillResult, RetiredEpoch
from sdquorum.sdfile import DomainSecrets

__all__ = ["MemoryNodeStore"]


@dataclass
class _Tables:
    meta: dict[str, bytes] = field(default_factory=dict)
    audit: dict[str, dict[int, str]] = field(default_factory=dict)  # chain -> seq -> entry
    custody: list[CustodyRecord] = field(default_factory=list)
    drills: list[DrillResult] = field(default_factory=list)
    retired: dict[int, RetiredEpoch] = field(default_factory=dict)
    epochs: dict[bytes, int] = field(default_factory=dict)
    keys: dict[str, KeyRow] = field(default_factory=dict)

    def copy(self) -> _Tables:
        """A copy whose containers are new (the values in them are immutable, so shared)."""
        return _Tables(
            dict(self.meta),
            {chain: dict(entries) for chain, entries in self.audit.items()},
            list(self.custody),
            list(self.drills),
            dict(self.retired),
            dict(self.epochs),
            dict(self.keys),
        )


class _Transactions:
    """The tables and the transactions over them (module docstring)."""

    def __init__(self) -> None:
        self.tables = _Tables()
        self.depth = 0  # transactions open: the batch and the write inside it
        self.on_commit: Callable[[], None] | None = None

    @contextmanager
    def tx(self) -> Iterator[_Tables]:
        """A copy of the tables to write to; kept if the block ends, dropped if it raises."""
        before = self.tables
        self.tables = before.copy()
        self.depth += 1
        try:
            yield self.tables
            if self.depth == 1 and self.on_commit is not None:
                self.on_commit()
        except BaseException:
            self.tables = before
            raise
        finally:
            self.depth -= 1


class _MemoryDomain:
    def __init__(self, transactions: _Transactions, seal: DomainSeal) -> None:
        self._t = transactions
        self._domain_seal = seal

    def state(self) -> str | None:
        v = self._t.tables.meta.get("state")
        return v.decode() if v else None

    def set_state(self, state: str) -> None:
        with self._t.tx() as t:
            t.meta["state"] = state.encode()

    def activate(self, secrets: DomainSecrets, info: DomainInfo, state: str, sd_file: bytes) -> None:
        sealed = self._domain_seal.seal(secrets)
        with self._t.tx() as t:
            t.meta.update(sd_file=sd_file, domain=sealed, domain_info=info.to_json().encode())
            t.meta["state"] = state.encode()

    def load_domain(self) -> tuple[DomainSecrets, DomainInfo] | None:
        sealed, info = self._t.tables.meta.get("domain"), self._t.tables.meta.get("domain_info")
        if sealed is None or info is None:
            return None
        return self._domain_seal.open(sealed), DomainInfo.from_json(info.decode())

    def sd_file(self) -> bytes | None:
        return self._t.tables.meta.get("sd_file")

    def rotate(self, secrets: DomainSecrets, info: DomainInfo, sd_file: bytes, retired: RetiredEpoch) -> None:
        sealed = self._domain_seal.seal(secrets)
        with self._t.tx() as t:
            if retired.epoch in t.retired:
                raise AlreadyExistsError(f"epoch {retired.epoch} was retired already")
            t.meta.update(sd_file=sd_file, domain=sealed, domain_info=info.to_json().encode())
            t.retired[retired.epoch] = retired

    def set_flag(self, name: str, value: str) -> None:
        with self._t.tx() as t:
            t.meta[f"flag:{name}"] = value.encode()

    def flag(self, name: str) -> str | None:
        v = self._t.tables.meta.get(f"flag:{name}")
        return v.decode() if v is not None else None

    def highest_epoch(self, domain_id: bytes) -> int | None:
        return self._t.tables.epochs.get(domain_id)

    def note_epoch(self, domain_id: bytes, epoch: int) -> None:
        with self._t.tx() as t:
            t.epochs[domain_id] = max(epoch, t.epochs.get(domain_id, epoch))


class _MemoryRecords:
    def __init__(self, transactions: _Transactions) -> None:
        self._t = transactions

    def append_audit(self, chain: str, seq: int, entry_json: str) -> None:
        with self._t.tx() as t:
            entries = t.audit.setdefault(chain, {})
            if seq in entries:
                raise AlreadyExistsError(f"audit entry {seq} of chain {chain!r} exists already")
            entries[seq] = entry_json

    def audit_entries(self, chain: str) -> list[str]:
        entries = self._t.tables.audit.get(chain, {})
        return [entries[seq] for seq in sorted(entries)]

    def last_audit(self, chain: str) -> str | None:
        entries = self._t.tables.audit.get(chain)
        return entries[max(entries)] if entries else None

    def add_custody_record(self, record: CustodyRecord) -> None:
        with self._t.tx() as t:
            t.custody.append(record)

    def custody_records(self) -> list[CustodyRecord]:
        return list(self._t.tables.custody)

    def add_drill_results(self, results: Sequence[DrillResult]) -> None:
        with self._t.tx() as t:
            t.drills.extend(results)

    def drill_results(self) -> list[DrillResult]:
        return list(self._t.tables.drills)

    def retired_epochs(self) -> list[RetiredEpoch]:
        return list(self._t.tables.retired.values())


class _MemoryKeys(KeyRowImages):
    def __init__(self, transactions: _Transactions, seal: KeySeal) -> None:
        self._t = transactions
        self._key_seal = seal

    def put_key(self, dek: bytes, key: StoredKey, private: bytes) -> None:
        sealed = self._key_seal.seal(dek, key.name, key.key_type, key.owner, private)
        with self._t.tx() as t:
            if key.name in t.keys:
                raise AlreadyExistsError(f"a key named {key.name!r} exists already: pick another name")
            t.keys[key.name] = KeyRow(replace(key, deleted_at=None), sealed)

    def find_key(self, name: str, *, settled: bool = False) -> StoredKey | None:
        row = self._t.tables.keys.get(name)
        return None if row is None else row.key

    def get_key(
        self, dek: bytes, name: str, allow: Callable[[StoredKey], None] | None = None
    ) -> tuple[StoredKey, bytes]:
        row = self._t.tables.keys.get(name)
        if row is None:
            raise NotFoundError(f"no key named {name!r}: list keys with 'sdctl keys list'")
        if allow is not None:
            allow(row.key)
        return row.key, self._key_seal.open(dek, row.key, row.sealed)

    def list_keys(self, owner: str | None = None, deleted: bool = False) -> list[StoredKey]:
        return [
            r.key
            for _, r in sorted(self._t.tables.keys.items())
            if (r.key.deleted_at is not None) == deleted and owner in (None, r.key.owner)
        ]

    def count_keys(self) -> int:
        return len(self.list_keys())

    def mark_deleted(self, name: str, deleted_at: int | None) -> None:
        with self._t.tx() as t:
            row = t.keys.get(name)
            if row is None or (row.key.deleted_at is None) != (deleted_at is not None):
                raise NotFoundError(
                    f"no {'live' if deleted_at is not None else 'deleted'} key named {name!r}"
                )
            t.keys[name] = replace(row, key=replace(row.key, deleted_at=deleted_at))

    def purge_key(self, name: str) -> None:
        with self._t.tx() as t:
            row = t.keys.get(name)
            if row is None or row.key.deleted_at is None:
                raise NotFoundError(f"no deleted key named {name!r}")
            del t.keys[name]

    def deleted_before(self, time: int) -> list[StoredKey]:
        due = [
            r.key
            for r in self._t.tables.keys.values()
            if r.key.deleted_at is not None and r.key.deleted_at <= time
        ]
        return sorted(due, key=lambda k: (k.deleted_at, k.name))

    def _key_rows(self) -> list[KeyRow]:
        return [r for _, r in sorted(self._t.tables.keys.items())]

    def _replace_rows(self, rows: Iterable[KeyRow]) -> None:
        with self._t.tx() as t:
            t.keys = {r.key.name: r for r in rows}


class MemoryNodeStore:
    """:class:`~hsm_node.store.protocol.NodeStore` in this process's memory."""

    def __init__(self, sealing_key: bytes, node_id: str) -> None:
        self._t = _Transactions()
        self.domain = _MemoryDomain(self._t, DomainSeal(sealing_key, node_id))
        self.records = _MemoryRecords(self._t)
        self.keys = _MemoryKeys(self._t, KeySeal())

    @property
    def on_commit(self) -> Callable[[], None] | None:
        return self._t.on_commit

    @on_commit.setter
    def on_commit(self, hook: Callable[[], None] | None) -> None:
        self._t.on_commit = hook

    def close(self) -> None:
        """Nothing to release."""

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Every write inside commits together (module docstring)."""
        with self._t.tx():
            yield
