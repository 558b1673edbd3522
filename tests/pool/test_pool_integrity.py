"""The pool's shared state cannot be altered undetected with only one member's etcd certificate
(hsm_node.pool.integrity; ADR 0013, "Integrity of the shared state").

Two members' stores (node-a, node-b) of one pool hold one domain; the attacker is ``etcdctl`` with
node-b's etcd client certificate: :class:`EtcdClient` straight on the cluster, never the store. Each
alteration is detected on the next read that depends on the row, refused with one line that names
the row and says the pool's state in etcd was altered outside sdquorum, and logged once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from etcd_cluster import EtcdCluster, running_cluster

from hsm_node.keyops import KeyType
from hsm_node.pool.etcd import Delete, EtcdClient, KeyValue
from hsm_node.pool.integrity import MAC_INFO, TamperedError
from hsm_node.pool.member import allow, remove
from hsm_node.pool.store import LOCAL_FILE, PoolNodeStore
from hsm_node.state import Lifecycle
from hsm_node.store import DomainInfo, StoredKey
from sdquorum import sdfile
from sdquorum.errors import StateError
from sdquorum.review import CustodyRecord, RecordKind, RetiredEpoch

pytestmark = pytest.mark.slow

SEALING_A, SEALING_B = os.urandom(32), os.urandom(32)
DEK = os.urandom(32)  # the keys' DEK in these store-level tests (the row key comes from the domain's)
AES = int(KeyType.AES256_GCM)
ALTERED = "altered outside sdquorum"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    with running_cluster(tmp_path_factory.mktemp("etcd")) as c:
        yield c


class Pool:
    """Two members of one new pool holding one domain, and the attacker's etcd client."""

    def __init__(self, cluster: EtcdCluster, tmp_path: Path) -> None:
        self.cluster = cluster
        self.tmp_path = tmp_path
        self.pool_id = secrets.token_bytes(8)
        self.prefix = b"/sdquorum/" + self.pool_id.hex().encode() + b"/"
        self.a = self.open("node-a", SEALING_A)
        self.b = self.open("node-b", SEALING_B)
        self.domain = sdfile.new_domain_secrets(os.urandom, admins=["admin"])
        info = DomainInfo(self.domain.domain_id, 1, 2, 3)
        self.a.domain.activate(self.domain, info, "ACTIVATED", b"signed-sd-file-epoch-1")
        self.first = self.rows()  # the pool's first custody state, every row at version 1
        self.a.domain.note_epoch(self.domain.domain_id, 1)
        self.settle()  # node-b decides on what node-a wrote (else: "changed at the same time", try again)
        self.b.domain.activate(self.domain, info, "ACTIVATED", b"signed-sd-file-epoch-1")

    def open(self, node: str, sealing: bytes) -> PoolNodeStore:
        return PoolNodeStore(self.cluster.config(node), self.pool_id, self.tmp_path / node, sealing, node)

    def close(self) -> None:
        self.a.close()
        self.b.close()

    def attack(self, *steps: tuple[str, bytes | None]) -> None:
        """As ``etcdctl`` with node-b's certificate: put (or delete, None) each row, in order."""

        async def go() -> None:
            async with EtcdClient(self.cluster.config("node-b")) as c:
                for row, value in steps:
                    key = self.prefix + row.encode()
                    if value is None:
                        await c.commit([Delete(key)])
                    else:
                        await c.put(key, value)

        asyncio.run(go())
        self.settle()

    def raw(self, row: str) -> KeyValue | None:
        async def go() -> KeyValue | None:
            async with EtcdClient(self.cluster.config("node-b")) as c:
                return await c.get(self.prefix + row.encode())

        return asyncio.run(go())

    def rows(self) -> dict[str, bytes]:
        """Every row of the pool as stored, by name under the pool's prefix."""

        async def go() -> list[KeyValue]:
            async with EtcdClient(self.cluster.config("root")) as c:
                kvs, _ = await c.get_prefix(self.prefix)
            return kvs

        return {kv.key[len(self.prefix) :].decode(): kv.value for kv in asyncio.run(go())}

    def dump(self) -> bytes:
        return b"\n".join(k.encode() + b"=" + v for k, v in self.rows().items())

    def settle(self) -> None:
        """Both members' caches have caught up with etcd."""
        for s in (self.a, self.b):
            _, revision = s.view.run(s.view.client.get_prefix(self.prefix + b"epoch"))
            assert s.view.wait_for(revision)


@pytest.fixture
def pool(cluster: EtcdCluster, tmp_path: Path) -> Iterator[Pool]:
    p = Pool(cluster, tmp_path)
    yield p
    p.close()


def _refused(read: Callable[[], object], *rows: str) -> str:
    """``read`` fails closed with the one line naming one of ``rows``."""
    with pytest.raises(TamperedError) as e:
        read()
    line = str(e.value)
    assert "\n" not in line and ALTERED in line and any(repr(row) in line for row in rows), line
    return line


def test_deleting_the_compromise_flag_is_detected_and_ceremonies_stay_refused(pool: Pool) -> None:
    pool.a.domain.set_flag("compromised", "admin: the HSM room was entered")
    pool.settle()
    assert Lifecycle(pool.b).compromised
    pool.attack(("flags/compromised", None))
    for s in (pool.a, pool.b):
        _refused(lambda s=s: s.domain.flag("compromised"), "head")  # type: ignore[misc]
        with pytest.raises(TamperedError):  # what a drill, rotation or restore asks first
            Lifecycle(s).compromised  # noqa: B018
    with pytest.raises(TamperedError):  # nor does a custody write launder it into a new head
        pool.a.domain.set_flag("former-custodians", "x")


def test_editing_a_custody_record_is_detected(pool: Pool) -> None:
    record = CustodyRecord(
        1_700_000_000, RecordKind.LOST, "custodian-2", note="token lost on the train", actor="admin"
    )
    pool.a.records.add_custody_record(record)
    pool.settle()
    assert pool.b.records.custody_records() == [record]
    name = next(row for row in pool.rows() if row.startswith("custody/"))
    kv = pool.raw(name)
    assert kv is not None
    # the loss moved to another custodian's slot
    pool.attack((name, kv.value.replace(b'"custodian-2"', b'"custodian-3"')))
    _refused(pool.b.records.custody_records, name)
    pool.attack((name, None))  # deleting it instead: the head no longer matches
    _refused(pool.b.records.custody_records, "head")


def test_lowering_the_highest_epoch_seen_is_detected(pool: Pool) -> None:
    did = pool.domain.domain_id
    pool.a.domain.note_epoch(did, 7)
    pool.settle()
    assert pool.b.domain.highest_epoch(did) == 7
    pool.attack((f"seen/{did.hex()}", b"1"))
    _refused(lambda: pool.b.domain.highest_epoch(did), f"seen/{did.hex()}")


def test_putting_back_an_older_header_epoch_and_info_is_detected(pool: Pool) -> None:
    old = {row: pool.raw(row) for row in ("header", "epoch", "info")}
    info2 = DomainInfo(pool.domain.domain_id, 2, 2, 3)
    pool.a.domain.rotate(
        pool.domain, info2, b"signed-sd-file-epoch-2", RetiredEpoch(1, bytes(32), 1_700_000_000)
    )
    pool.settle()
    assert pool.b.domain.sd_file() == b"signed-sd-file-epoch-2"
    pool.attack(*[(row, kv.value) for row, kv in old.items() if kv is not None])
    for s in (pool.a, pool.b):
        _refused(s.domain.sd_file, "header", "epoch", "info")
        with pytest.raises(TamperedError):
            s.domain.load_domain()
        with pytest.raises(TamperedError):
            s.pool.pool_info()


def test_replaying_an_older_maced_row_is_detected(pool: Pool) -> None:
    pool.a.domain.set_flag("former-custodians", "one")
    first = pool.raw("flags/former-custodians")
    pool.a.domain.set_flag("former-custodians", "one,two")
    assert first is not None
    pool.attack(("flags/former-custodians", first.value))  # the exact bytes sdquorum wrote, earlier
    _refused(lambda: pool.b.domain.flag("former-custodians"), "flags/former-custodians")


def test_rolling_the_whole_custody_state_back_is_refused_by_the_members_memory(pool: Pool) -> None:
    """Every custody row and the head as they were first written (each MAC valid at version 1, the
    digest consistent): only the highest head each member verified tells it is a rollback."""
    pool.a.domain.set_flag("compromised", "admin: suspected")
    pool.settle()
    assert pool.b.domain.flag("compromised") is not None
    custody = ("header", "epoch", "info", "seen", "flags", "head")
    now = [row for row in pool.rows() if row.split("/")[0] in custody]
    steps: list[tuple[str, bytes | None]] = [(row, None) for row in now]
    steps += list(pool.first.items())  # recreated: version 1 again, the first MACs valid
    pool.attack(*steps)
    for s in (pool.a, pool.b):
        line = _refused(lambda s=s: s.domain.flag("compromised"), "head")  # type: ignore[misc]
        assert "rollback" in line


def test_deleting_the_custody_head_is_detected(pool: Pool) -> None:
    pool.attack(("head", None))
    _refused(lambda: pool.b.domain.flag("compromised"), "head")


def test_moving_a_key_row_to_another_name_is_detected_and_that_key_is_not_served(pool: Pool) -> None:
    for name in ("payroll", "spare"):
        pool.a.keys.put_key(DEK, StoredKey(name, AES, b"pub", 100, "app"), name.encode())
    pool.settle()
    kv = pool.raw("keys/0/payroll")
    assert kv is not None
    pool.attack(("keys/0/spare", kv.value))  # spare now holds payroll's row
    _refused(lambda: pool.b.keys.get_key(DEK, "spare"), "keys/0/spare")
    _refused(lambda: pool.b.keys.find_key("spare"), "keys/0/spare")
    assert pool.b.keys.get_key(DEK, "payroll")[1] == b"payroll"  # the rows left alone still serve


def test_undeleting_a_soft_deleted_key_is_detected(pool: Pool) -> None:
    pool.a.keys.put_key(DEK, StoredKey("old", AES, b"pub", 100, "app"), b"old-private")
    live = pool.raw("keys/0/old")
    pool.a.keys.mark_deleted("old", 500)
    deleted = pool.raw("keys/0/old")
    assert live is not None and deleted is not None
    o = json.loads(deleted.value[: deleted.value.index(b"\x00sdqmac1")])
    assert o["deleted_at"] == 500
    pool.attack(("keys/0/old", deleted.value.replace(b'"deleted_at":500', b'"deleted_at":null')))
    _refused(lambda: pool.b.keys.get_key(DEK, "old"), "keys/0/old")
    pool.attack(("keys/0/old", live.value))  # the row as sdquorum wrote it before the delete
    _refused(lambda: pool.b.keys.get_key(DEK, "old"), "keys/0/old")
    _refused(lambda: pool.b.keys.list_keys(), "keys/0/old")


def test_a_permission_to_join_put_with_etcd_alone_is_refused(pool: Pool) -> None:
    """A join needs an admin's permission: with a member's etcd certificate alone, an attacker who
    also holds some node's attestation key must not give it one (the members would seal the domain
    to it). The granting member reads the permissions checked (serve_joins_once)."""
    allow(pool.a, "node-c", "admin", 1_700_000_000)
    pool.settle()
    assert set(pool.b.pool.pool_rows("allowed")) == {"node-c"}
    pool.attack(("allowed/node-x", b'{"by": "admin", "at": 1700000000}'))
    for s in (pool.a, pool.b):
        _refused(lambda s=s: s.pool.pool_rows("allowed"), "allowed/node-x", "head")  # type: ignore[misc]


def test_putting_back_a_removed_nodes_permission_is_refused(pool: Pool) -> None:
    allow(pool.a, "node-x", "admin", 1_700_000_000)
    granted = pool.raw("allowed/node-x")
    remove(pool.a, "node-x", "admin", 1_700_000_100)
    pool.settle()
    assert granted is not None and pool.b.pool.pool_rows("allowed") == {}
    pool.attack(("allowed/node-x", granted.value))  # the bytes sdquorum wrote, its MAC valid at version 1
    _refused(lambda: pool.b.pool.pool_rows("allowed"), "head")


def test_a_node_without_the_domain_can_neither_allow_nor_remove(pool: Pool) -> None:
    """Its rows would carry no tag and no head, which every member refuses: refused first, in words."""
    # a new member (its etcd certificate node-b's: this cluster issued none for node-c) before it joined
    c = PoolNodeStore(
        pool.cluster.config("node-b"), pool.pool_id, pool.tmp_path / "node-c", os.urandom(32), "node-c"
    )
    try:
        before = pool.rows()
        for change in (allow, remove):
            with pytest.raises(StateError, match="does not hold the pool's domain yet"):
                change(c, "node-x", "admin", 1_700_000_000)
        assert pool.rows() == before
    finally:
        c.close()


def test_a_tampered_row_is_logged_once_and_no_row_key_reaches_etcd_or_the_log(
    pool: Pool, caplog: pytest.LogCaptureFixture
) -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    caplog.set_level(logging.DEBUG)
    pool.a.domain.set_flag("compromised", "admin: suspected")
    pool.a.keys.put_key(DEK, StoredKey("k", AES, b"pub", 100, "app"), b"p")
    pool.attack(("flags/compromised", b"no"))
    for _ in range(5):
        with pytest.raises(TamperedError):
            pool.b.domain.flag("compromised")
    logged = [
        r for r in caplog.records if ALTERED in r.getMessage() and "flags/compromised" in r.getMessage()
    ]
    assert len([r for r in logged if r.name == "hsm_node.pool.store"]) == 1
    row_key = HKDF(hashes.SHA256(), 32, pool.domain.domain_id, MAC_INFO).derive(
        pool.domain.data_encryption_key
    )
    everything = pool.dump() + caplog.text.encode()
    for local in ("node-a", "node-b"):
        everything += (pool.tmp_path / local / LOCAL_FILE).read_bytes()
    for secret in (row_key, pool.domain.data_encryption_key):
        assert secret not in everything and secret.hex().encode() not in everything


def test_a_row_found_altered_is_audited_once_by_the_members_loop(pool: Pool) -> None:
    from types import SimpleNamespace

    from hsm_node.pool.service import PoolService

    audited: list[tuple[str, object, dict[str, object]]] = []
    service = PoolService(
        "p",
        SimpleNamespace(store=pool.b),
        Lifecycle(pool.b),
        lambda *e: audited.append(e),
        lambda: 0,  # type: ignore[arg-type]
    )
    pool.a.domain.note_epoch(pool.domain.domain_id, 4)
    pool.attack((f"seen/{pool.domain.domain_id.hex()}", b"1"))
    for _ in range(3):
        with pytest.raises(TamperedError):
            pool.b.domain.highest_epoch(pool.domain.domain_id)
        service.audit_alterations()
    assert audited == [("pool-state-altered", "node", {"row": f"seen/{pool.domain.domain_id.hex()}"})]


# ------------------------------------------------------------------ a deleted key's row put back


def _key_history(pool: Pool, name: str) -> list[bytes]:
    """A key created, soft-deleted, recovered and soft-deleted again on node-a: each value stored."""
    pool.a.keys.put_key(DEK, StoredKey(name, AES, b"pub", 100, "app"), name.encode())
    history = []
    for step in (lambda: None, lambda: pool.a.keys.mark_deleted(name, 500)):
        step()
        kv = pool.raw(f"keys/0/{name}")
        assert kv is not None
        history.append(kv.value)
    pool.a.keys.mark_deleted(name, None)
    pool.a.keys.mark_deleted(name, 600)
    pool.settle()
    return history  # version 1 (live), version 2 (deleted at 500)


def _not_served(pool: Pool, name: str) -> None:
    for member in (pool.a, pool.b):
        _refused(lambda m=member: m.keys.get_key(DEK, name), f"keys/0/{name}")  # type: ignore[misc]
        _refused(lambda m=member: m.keys.list_keys(), f"keys/0/{name}")  # type: ignore[misc]


def test_a_soft_deleted_keys_first_row_put_back_after_a_delete_is_refused(pool: Pool) -> None:
    """Deleting the row and putting its first (live) value back makes a valid version 1 again: the
    previous code served the key as never deleted. Its tag is in the generation's dead set now."""
    live, _ = _key_history(pool, "old")
    pool.attack(("keys/0/old", None), ("keys/0/old", live))
    _not_served(pool, "old")


def test_a_purged_keys_row_put_back_is_refused(pool: Pool) -> None:
    live, deleted = _key_history(pool, "gone")
    pool.a.keys.purge_key("gone")
    pool.settle()
    assert pool.raw("keys/0/gone") is None
    for value in (live, deleted):
        pool.attack(("keys/0/gone", None), ("keys/0/gone", value))
        _not_served(pool, "gone")


def test_a_later_row_put_back_at_its_version_by_puts_after_a_delete_is_refused(pool: Pool) -> None:
    """Delete the row, put anything, then the value sdquorum stored at version 2: the version
    matches again, the row's create_revision does not (a tag bound to version alone accepted it)."""
    _, deleted = _key_history(pool, "pumped")
    pool.attack(("keys/0/pumped", None), ("keys/0/pumped", b"x"), ("keys/0/pumped", deleted))
    assert pool.raw("keys/0/pumped").version == 2  # type: ignore[union-attr]
    _not_served(pool, "pumped")


def test_removing_a_dead_set_entry_to_put_a_row_back_is_refused(pool: Pool) -> None:
    live, _ = _key_history(pool, "twice")
    shards = [name for name in pool.rows() if name.startswith("dead/0/")]
    assert len(shards) == 1
    pool.attack((shards[0], None), ("keys/0/twice", None), ("keys/0/twice", live))
    _refused(lambda: pool.b.keys.get_key(DEK, "twice"), shards[0], "head")


def test_a_deleted_name_is_used_again_and_readers_never_see_a_false_alarm(pool: Pool) -> None:
    """The dead set refuses only a superseded row put back: a new key under a purged name serves,
    and a reader on the other member while keys are deleted, recovered and purged sees each key
    either live or deleted, never an alteration."""
    import threading

    names = [f"k{i}" for i in range(20)]
    for name in names:
        pool.a.keys.put_key(DEK, StoredKey(name, AES, b"pub", 100, "app"), name.encode())
    pool.settle()
    seen: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                for name in names:
                    pool.b.keys.find_key(name)
                pool.b.keys.list_keys(deleted=True)
            except BaseException as e:  # every failure is the test's finding
                seen.append(e)
                return

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for name in names:
            pool.a.keys.mark_deleted(name, 500)
            pool.a.keys.mark_deleted(name, None)
            pool.a.keys.mark_deleted(name, 600)
            pool.a.keys.purge_key(name)
            pool.a.keys.put_key(DEK, StoredKey(name, AES, b"pub", 200, "app"), b"again")
    finally:
        stop.set()
        reader.join()
    assert seen == []
    pool.settle()
    for member in (pool.a, pool.b):
        assert [k.name for k in member.keys.list_keys()] == sorted(names)
        assert member.keys.get_key(DEK, "k7")[1] == b"again"
