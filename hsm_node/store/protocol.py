"""The storage seam: everything the node keeps, as typed values, behind one Protocol.

The node's services depend on :class:`NodeStore` only; :class:`~hsm_node.store.sqlite.SqliteNodeStore`
(one SQLite file, the production store) and :class:`~hsm_node.store.memory.MemoryNodeStore` (a
dictionary, for tests and as the reference of the contract) implement it, and the contract suite
(``tests/hsm_node/test_store_contract.py``) runs over both. A store on a pool of HSMs (the next
issue's etcd-backed store) is one more class.

Invariants every implementation keeps (the contract suite checks each):

* No SQL, no SQLite type and no table or column name crosses the seam: values are the types
  below, the domain's (:class:`~sdquorum.sdfile.DomainSecrets`, the review records) and bytes.
* Secrets never rest in the clear: the domain secrets are sealed under the node sealing key (AAD:
  the node id), a key's private material under the domain's data encryption key (AAD:
  :func:`~hsm_node.store.sealing.key_aad`); a row that does not open raises VerificationError
  naming it, never returns other bytes.
* :meth:`NodeStore.batch` is atomic: every write inside commits together or not at all; a write
  inside that raises undoes only itself; an exception out of the block undoes the whole batch. A
  write outside a batch is its own transaction. ``on_commit`` (when set) runs before each commit
  and a raise from it fails that commit (StorageError), as a full disk would.
* The highest epoch seen per domain only ever rises; audit entries are append-only per chain.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from sdquorum.backup import BackupKey
from sdquorum.review import CustodyRecord, DrillResult, RetiredEpoch
from sdquorum.sdfile import DomainSecrets

__all__ = [
    "LEGACY_OWNER",
    "DomainInfo",
    "DomainStore",
    "KeyRow",
    "KeyStore",
    "NodeStore",
    "RecordStore",
    "StoredKey",
]

LEGACY_OWNER = "app"  # owner of rows written before keys had owners (and of version 1 backups' keys)


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


@dataclass(frozen=True)
class KeyRow:
    """A key as it rests: its description and its private material sealed under the DEK."""

    key: StoredKey
    sealed: bytes


class DomainStore(Protocol):
    """The node state, the sealed domain with its SD file, flags and the epochs seen."""

    def state(self) -> str | None: ...
    def set_state(self, state: str) -> None: ...
    def activate(self, secrets: DomainSecrets, info: DomainInfo, state: str, sd_file: bytes) -> None: ...
    def load_domain(self) -> tuple[DomainSecrets, DomainInfo] | None: ...
    def sd_file(self) -> bytes | None: ...
    def rotate(self, secrets: DomainSecrets, info: DomainInfo, sd_file: bytes, retired: RetiredEpoch) -> None:
        """The new epoch's SD file and info, the old epoch retired: one transaction."""
        ...

    def set_flag(self, name: str, value: str) -> None: ...
    def flag(self, name: str) -> str | None: ...
    def highest_epoch(self, domain_id: bytes) -> int | None: ...
    def note_epoch(self, domain_id: bytes, epoch: int) -> None:
        """Remember ``epoch`` of ``domain_id`` if it is higher than what is remembered."""
        ...


class RecordStore(Protocol):
    """Append-only records: audit chains, custody records, drill results, retired epochs."""

    def append_audit(self, chain: str, seq: int, entry_json: str) -> None:
        """AlreadyExistsError if ``chain`` holds entry ``seq`` already."""
        ...

    def audit_entries(self, chain: str) -> list[str]: ...
    def last_audit(self, chain: str) -> str | None: ...
    def add_custody_record(self, record: CustodyRecord) -> None: ...
    def custody_records(self) -> list[CustodyRecord]: ...
    def add_drill_results(self, results: Sequence[DrillResult]) -> None: ...
    def drill_results(self) -> list[DrillResult]: ...
    def retired_epochs(self) -> list[RetiredEpoch]: ...


class KeyStore(Protocol):
    """The key rows, private material sealed under the data encryption key ``dek``."""

    def put_key(self, dek: bytes, key: StoredKey, private: bytes) -> None:
        """Insert ``key`` live, its ``private`` material sealed; AlreadyExistsError if a row of that
        name exists, live or deleted."""
        ...

    def find_key(self, name: str, *, settled: bool = False) -> StoredKey | None:
        """The row named ``name``, live or deleted, without its private material. ``settled``: a
        miss is confirmed with the authoritative copy first (a pool member catches up with etcd, so
        a key another member acknowledged a moment ago is found); a create's own check needs not."""
        ...

    def get_key(
        self, dek: bytes, name: str, allow: Callable[[StoredKey], None] | None = None
    ) -> tuple[StoredKey, bytes]:
        """A key and its private material; ``allow`` sees the row first and raises to refuse it
        (a refused key is never opened); NotFoundError if there is none."""
        ...

    def list_keys(self, owner: str | None = None, deleted: bool = False) -> list[StoredKey]: ...
    def count_keys(self) -> int: ...
    def mark_deleted(self, name: str, deleted_at: int | None) -> None: ...
    def purge_key(self, name: str) -> None: ...
    def deleted_before(self, time: int) -> list[StoredKey]: ...
    def export_key_rows(self, dek: bytes) -> tuple[bytes, int]:
        """(the backup image of every key row, its row count): every row opens under ``dek``."""
        ...

    def import_key_rows(self, image: bytes, key_count: int) -> None:
        """Replace every key row with those of a backup image (checked first), atomically: one
        transaction (a pool: staged rows and one flip, :mod:`hsm_node.pool.keyset`); a refused or
        failed restore changes nothing. Not inside a batch."""
        ...

    def replace_keys(self, dek: bytes, keys: Sequence[BackupKey]) -> None:
        """Replace every key row with keys in the clear (a version 1 backup), sealing each."""
        ...


class NodeStore(Protocol):
    """What the node keeps (module docstring for the invariants): three parts over one transaction
    scope, so that a batch spans all three."""

    @property
    def domain(self) -> DomainStore: ...
    @property
    def records(self) -> RecordStore: ...
    @property
    def keys(self) -> KeyStore: ...

    on_commit: Callable[[], None] | None

    def close(self) -> None: ...
    def batch(self) -> AbstractContextManager[None]:
        """One atomic transaction for every write made inside, in any of the three parts."""
        ...
