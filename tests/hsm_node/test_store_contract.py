"""The storage seam's contract (hsm_node/store/protocol.py), run over every store.

Each test states one invariant of :class:`~hsm_node.store.protocol.NodeStore` and runs over the
SQLite store, the in-memory store and the HSM pool's store (:mod:`hsm_node.pool.store`) against a
real 3-member etcd cluster (tests/pool/etcd_cluster.py; one per module, each store under a pool id
of its own).
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hsm_node.keyops import KeyType
from hsm_node.store import DomainInfo, MemoryNodeStore, NodeStore, SqliteNodeStore, StoredKey
from hsm_node.store.image import read_image
from sdquorum import sdfile
from sdquorum.backup import BackupKey
from sdquorum.errors import (
    AlreadyExistsError,
    MalformedError,
    NotFoundError,
    PermissionDeniedError,
    StorageError,
    VerificationError,
)
from sdquorum.review import CustodyRecord, DrillResult, RecordKind, RetiredEpoch

SEALING = bytes(range(32))
DEK = bytes(range(32, 64))
AES = int(KeyType.AES256_GCM)

StoreFactory = Callable[[bytes], NodeStore]


STORES: dict[str, Callable[[Path, bytes], NodeStore]] = {
    "sqlite": lambda tmp_path, sealing: SqliteNodeStore(tmp_path / "data", sealing, "node-x"),
    "memory": lambda _, sealing: MemoryNodeStore(sealing, "node-x"),
}
POOL = "etcd-pool"  # needs the etcd cluster: opened by the fixture below


@pytest.fixture(scope="module")
def etcd_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    sys.path.insert(0, str(Path(__file__).parents[1] / "pool"))
    from etcd_cluster import running_cluster

    with running_cluster(tmp_path_factory.mktemp("etcd"), node_ids=("node-x",)) as c:
        yield c


def _pool_store(cluster: object, tmp_path: Path, sealing: bytes) -> NodeStore:
    from hsm_node.pool.store import PoolNodeStore

    config = cluster.config("node-x")  # type: ignore[attr-defined]
    pool_id = secrets.token_bytes(8)  # every store a pool of its own on the shared cluster
    return PoolNodeStore(config, pool_id, tmp_path / f"pool-{pool_id.hex()}", sealing, "node-x")


@pytest.fixture(params=[*sorted(STORES), POOL])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    opened: list[NodeStore] = []
    cluster = request.getfixturevalue("etcd_cluster") if request.param == POOL else None

    def open_(sealing: bytes = SEALING) -> NodeStore:
        if cluster is not None:
            store = _pool_store(cluster, tmp_path, sealing)
        else:
            store = STORES[request.param](tmp_path, sealing)
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store: StoreFactory) -> NodeStore:
    return open_store(SEALING)


def _secrets() -> sdfile.DomainSecrets:
    return sdfile.new_domain_secrets(os.urandom, admins=["admin"])


def _put(store: NodeStore, name: str, owner: str = "app", private: bytes = b"secret") -> None:
    store.keys.put_key(DEK, StoredKey(name, AES, b"pub-" + name.encode(), 100, owner), private)


# ------------------------------------------------------------------ transactions


def test_a_batch_commits_once_a_failed_write_undoes_itself_an_exception_undoes_all(store: NodeStore) -> None:
    commits: list[str] = []
    store.on_commit = lambda: commits.append("COMMIT")
    with store.batch():
        _put(store, "k1", private=b"secret-1")
        store.records.append_audit("provisioning", 1, '{"n": 1}')
        with pytest.raises(AlreadyExistsError):
            _put(store, "k1", private=b"other")  # refused: only this write is undone
        with pytest.raises(AlreadyExistsError):
            store.records.append_audit("provisioning", 1, '{"n": "again"}')  # the same: one statement
        with pytest.raises(NotFoundError):
            store.keys.mark_deleted("k-missing", 5)
        _put(store, "k2", private=b"secret-2")
        store.records.append_audit("provisioning", 2, '{"n": 2}')
    assert commits == ["COMMIT"]
    assert [k.name for k in store.keys.list_keys()] == ["k1", "k2"]
    assert store.records.audit_entries("provisioning") == ['{"n": 1}', '{"n": 2}']
    assert store.keys.get_key(DEK, "k1")[1] == b"secret-1"
    with pytest.raises(RuntimeError), store.batch():
        _put(store, "k3")
        store.records.append_audit("provisioning", 3, '{"n": 3}')
        raise RuntimeError("the caller failed half-way")
    assert [k.name for k in store.keys.list_keys()] == ["k1", "k2"]
    assert store.records.audit_entries("provisioning") == ['{"n": 1}', '{"n": 2}']
    assert commits == ["COMMIT"]


def test_a_write_outside_a_batch_is_its_own_commit(store: NodeStore) -> None:
    commits: list[str] = []
    store.on_commit = lambda: commits.append("COMMIT")
    store.domain.set_state("PROVISIONED")
    _put(store, "k")
    assert commits == ["COMMIT", "COMMIT"]


def test_a_commit_that_fails_leaves_nothing(store: NodeStore) -> None:
    def full_disk() -> None:
        raise StorageError("the node cannot write its database (disk full): nothing was changed")

    store.on_commit = full_disk
    with pytest.raises(StorageError), store.batch():
        store.domain.set_state("ACTIVATED")
        _put(store, "k")
        store.records.append_audit("domain", 1, "{}")
    store.on_commit = None
    assert (
        store.domain.state() is None
        and store.keys.list_keys() == []
        and store.records.audit_entries("domain") == []
    )
    store.domain.set_state("PROVISIONED")  # the store works afterwards
    assert store.domain.state() == "PROVISIONED"


# ------------------------------------------------------------------ state, domain, epochs


def test_the_domain_round_trips_sealed_to_the_sealing_key(open_store: StoreFactory) -> None:
    store = open_store(SEALING)
    assert store.domain.load_domain() is None and store.domain.sd_file() is None
    secrets = _secrets()
    info = DomainInfo(secrets.domain_id, 1, 3, 5)
    store.domain.activate(secrets, info, "ACTIVATED", b"sd-file")
    assert store.domain.load_domain() == (secrets, info)
    assert store.domain.state() == "ACTIVATED" and store.domain.sd_file() == b"sd-file"


def test_a_rotation_moves_the_epoch_and_retires_the_old_one_together(store: NodeStore) -> None:
    secrets = _secrets()
    store.domain.activate(secrets, DomainInfo(secrets.domain_id, 1, 3, 5), "ACTIVATED", b"epoch-1")
    retired = RetiredEpoch(1, bytes(32), 200)
    store.domain.rotate(secrets, DomainInfo(secrets.domain_id, 2, 2, 4), b"epoch-2", retired)
    assert store.domain.sd_file() == b"epoch-2" and store.records.retired_epochs() == [retired]
    loaded = store.domain.load_domain()
    assert loaded is not None and loaded[1].epoch == 2
    with pytest.raises(AlreadyExistsError):  # an epoch is retired once
        store.domain.rotate(secrets, DomainInfo(secrets.domain_id, 3, 2, 4), b"epoch-3", retired)
    assert store.domain.sd_file() == b"epoch-2"


def test_the_highest_epoch_only_rises(store: NodeStore) -> None:
    assert store.domain.highest_epoch(b"d" * 16) is None
    store.domain.note_epoch(b"d" * 16, 3)
    store.domain.note_epoch(b"d" * 16, 2)
    store.domain.note_epoch(b"e" * 16, 1)
    assert store.domain.highest_epoch(b"d" * 16) == 3 and store.domain.highest_epoch(b"e" * 16) == 1


def test_flags_are_kept_by_name(store: NodeStore) -> None:
    assert store.domain.flag("compromised") is None
    store.domain.set_flag("compromised", "a laptop was stolen")
    assert store.domain.flag("compromised") == "a laptop was stolen" and store.domain.flag("other") is None


# ------------------------------------------------------------------ audit and custody


def test_audit_chains_are_kept_apart_in_order(store: NodeStore) -> None:
    for seq in (0, 1, 2):  # a chain's first entry is 0 (sdquorum.audit)
        store.records.append_audit("domain", seq, f'{{"seq": {seq}}}')
    store.records.append_audit("provisioning", 0, '{"p": 0}')
    assert store.records.audit_entries("domain") == ['{"seq": 0}', '{"seq": 1}', '{"seq": 2}']
    assert store.records.last_audit("domain") == '{"seq": 2}' and store.records.last_audit("nothing") is None
    with pytest.raises(AlreadyExistsError):
        store.records.append_audit("domain", 2, '{"again": 2}')  # an entry is never overwritten
    with pytest.raises(AlreadyExistsError):
        store.records.append_audit("domain", 0, '{"again": 0}')
    assert store.records.last_audit("domain") == '{"seq": 2}'


def test_custody_records_and_drill_results_come_back_typed_in_order(store: NodeStore) -> None:
    records = [
        CustodyRecord(10, RecordKind.HANDOFF, "alice", holder="bob"),
        CustodyRecord(11, RecordKind.LOST, "carol", note="left on a train"),
    ]
    for r in records:
        store.records.add_custody_record(r)
    results = [DrillResult(12, "alice", 1, "proved"), DrillResult(12, "bob", 2, "unreachable")]
    store.records.add_drill_results(results)
    assert store.records.custody_records() == records and store.records.drill_results() == results


# ------------------------------------------------------------------ keys


def test_a_key_is_sealed_to_the_dek_and_bound_to_its_name_type_and_owner(store: NodeStore) -> None:
    _put(store, "k", owner="app/billing", private=b"private")
    key, private = store.keys.get_key(DEK, "k")
    assert private == b"private"
    assert key == StoredKey("k", AES, b"pub-k", 100, "app/billing", None)
    with pytest.raises(VerificationError, match="'k' failed its integrity check"):
        store.keys.get_key(bytes(32), "k")


def test_a_key_name_is_taken_by_a_live_or_deleted_key(store: NodeStore) -> None:
    _put(store, "k")
    store.keys.mark_deleted("k", 500)
    with pytest.raises(AlreadyExistsError):
        _put(store, "k")
    found = store.keys.find_key("k")
    assert found is not None and found.deleted_at == 500


def test_a_refused_key_is_never_opened(store: NodeStore) -> None:
    _put(store, "k")
    seen: list[StoredKey] = []

    def refuse(key: StoredKey) -> None:
        seen.append(key)
        raise PermissionDeniedError("not yours")

    with pytest.raises(PermissionDeniedError):
        store.keys.get_key(bytes(32), "k", refuse)  # a wrong DEK: opening would fail differently
    assert [k.name for k in seen] == ["k"]
    with pytest.raises(NotFoundError):
        store.keys.get_key(DEK, "none")


def test_soft_deletion_recovery_and_purge(store: NodeStore) -> None:
    for name, owner in (("a", "app"), ("b", "admin"), ("c", "app"), ("d", "app")):
        _put(store, name, owner)
    store.keys.mark_deleted("c", 300)
    store.keys.mark_deleted("d", 200)
    assert [k.name for k in store.keys.list_keys()] == ["a", "b"]
    assert [k.name for k in store.keys.list_keys(owner="app")] == ["a"]
    assert [k.name for k in store.keys.list_keys(deleted=True)] == ["c", "d"]
    assert store.keys.count_keys() == 2
    assert [k.name for k in store.keys.deleted_before(300)] == ["d", "c"]  # by deletion time
    assert [k.name for k in store.keys.deleted_before(250)] == ["d"]
    with pytest.raises(NotFoundError):
        store.keys.mark_deleted("c", 400)  # deleted already
    with pytest.raises(NotFoundError):
        store.keys.purge_key("a")  # live: only a deleted key is purged
    store.keys.mark_deleted("c", None)
    store.keys.purge_key("d")
    assert store.keys.find_key("d") is None
    assert [k.name for k in store.keys.list_keys()] == ["a", "b", "c"]


def test_a_backup_image_round_trips_between_stores(store: NodeStore, tmp_path: Path) -> None:
    _put(store, "live", "app/x", b"one")
    _put(store, "gone", "admin", b"two")
    store.keys.mark_deleted("gone", 77)
    image, count = store.keys.export_key_rows(DEK)
    assert count == 2
    for other in (MemoryNodeStore(SEALING, "node-y"), SqliteNodeStore(tmp_path / "other", SEALING, "node-y")):
        _put(other, "replaced")
        other.keys.import_key_rows(image, count)
        assert other.keys.list_keys() == store.keys.list_keys()
        assert other.keys.list_keys(deleted=True) == store.keys.list_keys(deleted=True)
        assert other.keys.get_key(DEK, "gone")[1] == b"two"
        other.close()


def test_a_backup_never_carries_a_row_that_does_not_open(store: NodeStore) -> None:
    _put(store, "k")
    with pytest.raises(VerificationError, match="'k' failed its integrity check: no backup was written"):
        store.keys.export_key_rows(bytes(32))


def test_a_malformed_image_changes_nothing(store: NodeStore) -> None:
    _put(store, "k")
    image, count = store.keys.export_key_rows(DEK)
    with pytest.raises(MalformedError):
        store.keys.import_key_rows(image, count + 1)
    with pytest.raises(MalformedError):
        store.keys.import_key_rows(b"not an image" * 50, 0)
    assert [r.key.name for r in read_image(image, count)] == ["k"] == [k.name for k in store.keys.list_keys()]


def test_keys_in_the_clear_are_sealed_owned_by_app_and_live(store: NodeStore) -> None:
    _put(store, "old")
    store.keys.replace_keys(DEK, [BackupKey("v1", AES, b"pub", b"clear", 5)])
    assert store.keys.list_keys() == [StoredKey("v1", AES, b"pub", 5, "app", None)]
    assert store.keys.get_key(DEK, "v1")[1] == b"clear"
