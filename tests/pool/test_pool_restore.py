"""A backup restore into a pool of any size (hsm_node.pool.keyset), on one real 3-member etcd cluster.

The cluster runs with ``--max-request-bytes`` of 256 KiB, so both of etcd's limits bind on a
restore of mixed AES and RSA-3072 keys: 128 operations per transaction (``--max-txn-ops``) and the
request size (128 RSA rows are about 400 KB). Before the staged restore, a restore of more than
about 120 keys into a pool was refused with UsageError.

Failures are injected through a real seam: the store's etcd client (``client_factory``) is a
subclass of :class:`EtcdClient` that fails the k-th transaction, or "dies" there (every later call
fails too, as if the process had lost etcd and then crashed).
"""

from __future__ import annotations

import asyncio
import gc
import os
import secrets
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from etcd_cluster import EtcdCluster, running_cluster

from hsm_node.keyops import KeyType
from hsm_node.pool.etcd import Delete, EtcdClient, EtcdConfig, Put, Unchanged
from hsm_node.pool.keyset import LAYOUT
from hsm_node.pool.store import PoolNodeStore, _row_bytes
from hsm_node.store import DomainInfo, MemoryNodeStore, StoredKey
from hsm_node.store.protocol import KeyRow
from hsm_node.store.sealing import KeySeal
from sdquorum import sdfile
from sdquorum.errors import OutcomeUnknownError, StateError, TransportError, UsageError

pytestmark = pytest.mark.slow

MAX_REQUEST_BYTES = 256 * 1024
SEALING_A, SEALING_B = os.urandom(32), os.urandom(32)
DEK = os.urandom(32)
AES, RSA = int(KeyType.AES256_GCM), int(KeyType.RSA3072)
_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=3072)
RSA_PRIVATE = _RSA_KEY.private_bytes(
    serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
)
RSA_PUBLIC = _RSA_KEY.public_key().public_bytes(
    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    with running_cluster(
        tmp_path_factory.mktemp("etcd"),
        extra=(
            "--max-request-bytes",
            str(MAX_REQUEST_BYTES),
        ),
    ) as c:
        yield c


class FlakyClient(EtcdClient):
    """An etcd client that fails the k-th transaction once armed (``die``: that one and every later
    call, as a member that lost etcd and crashed), and can hold a key-set flip until released."""

    def __init__(self, config: EtcdConfig) -> None:
        super().__init__(config)
        self.fail_at: int | None = None
        self.die = False
        self.dead = False
        self.commits = 0
        self.before_flip: Callable[[], None] | None = None
        self.flip_answer_lost = False  # the flip applies, its answer never arrives
        self.dead_after_flip = False  # ... and every later call fails (etcd lost right after it)
        self.revoke_fails = False

    def arm(self, k: int, *, die: bool = False) -> None:
        self.fail_at, self.die, self.commits = k, die, 0

    def _check(self) -> None:
        if self.dead:
            raise TransportError("injected: this member lost etcd")

    async def commit(
        self, ops: Sequence[Put | Delete], *, unless_changed: Sequence[Unchanged] = ()
    ) -> int | None:
        self._check()
        if self.before_flip is not None and any(
            isinstance(op, Put) and op.key.endswith(b"/keyset") for op in ops
        ):
            await asyncio.to_thread(self.before_flip)
        if self.flip_answer_lost and any(isinstance(op, Put) and op.key.endswith(b"/keyset") for op in ops):
            self.flip_answer_lost = False
            await super().commit(ops, unless_changed=unless_changed)
            self.dead = self.dead_after_flip
            raise TransportError("injected: the flip's answer was lost")
        self.commits += 1
        if self.fail_at is not None and self.commits == self.fail_at:
            self.fail_at = None
            self.dead = self.die
            raise TransportError(f"injected: transaction {self.commits} failed")
        return await super().commit(ops, unless_changed=unless_changed)

    async def revoke_lease(self, lease: int) -> None:
        self._check()
        if self.revoke_fails:
            raise TransportError("injected: revoke failed")
        await super().revoke_lease(lease)

    async def get(self, key: bytes) -> Any:
        self._check()
        return await super().get(key)

    async def keep_alive(self, lease: int) -> int:
        self._check()
        return await super().keep_alive(lease)


@pytest.fixture
def pool(cluster: EtcdCluster, tmp_path: Path) -> Iterator[tuple[bytes, Callable[..., PoolNodeStore]]]:
    """A new pool id and a function opening a member of it (node-a or node-b) with a FlakyClient."""
    pool_id = secrets.token_bytes(8)
    opened: list[PoolNodeStore] = []

    def open_(node: str, **kw: Any) -> PoolNodeStore:
        config = replace(cluster.config(node), max_request_bytes=MAX_REQUEST_BYTES)
        store = PoolNodeStore(
            config,
            pool_id,
            tmp_path / node,
            SEALING_A if node == "node-a" else SEALING_B,
            node,
            client_factory=FlakyClient,
            **kw,
        )
        opened.append(store)
        return store

    yield pool_id, open_
    for s in opened:
        s.close()


def _members(open_: Callable[..., PoolNodeStore], **kw: Any) -> tuple[PoolNodeStore, PoolNodeStore]:
    a, b = open_("node-a", **kw), open_("node-b", **kw)
    domain = sdfile.new_domain_secrets(os.urandom, admins=["admin"])
    info = DomainInfo(domain.domain_id, 1, 2, 3)
    for s in (a, b):
        s.domain.activate(domain, info, "ACTIVATED", b"signed-sd-file-epoch-1")
    return a, b


def _backup(prefix: str, n_aes: int, n_rsa: int, deleted: int = 0) -> tuple[bytes, int, dict[str, bytes]]:
    """A backup image of ``n_aes`` AES-256 and ``n_rsa`` RSA-3072 keys (the first ``deleted`` of
    them deleted), and every key's private material by name."""
    source = MemoryNodeStore(os.urandom(32), "node-s")
    private: dict[str, bytes] = {}
    for i in range(n_aes + n_rsa):
        name = f"{prefix}-{i:05d}-" + "x" * 20  # names of 32 characters, as ADR 0013 measured
        kind, material, public = (AES, os.urandom(32), b"") if i < n_aes else (RSA, RSA_PRIVATE, RSA_PUBLIC)
        source.keys.put_key(DEK, StoredKey(name, kind, public, 100 + i, "app"), material)
        private[name] = material
    for name in sorted(private)[:deleted]:
        source.keys.mark_deleted(name, 500)
    image, count = source.keys.export_key_rows(DEK)
    source.close()
    return image, count, private


def _names(store: PoolNodeStore) -> set[str]:
    return {k.name for k in store.keys.list_keys()} | {k.name for k in store.keys.list_keys(deleted=True)}


def _wait(check: Callable[[], bool], timeout: float = 10.0) -> None:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not seen within {timeout} s")
        time.sleep(0.01)


async def _rows(cluster: EtcdCluster, pool_id: bytes) -> list[bytes]:
    return list(await _values(cluster, pool_id))


async def _values(cluster: EtcdCluster, pool_id: bytes) -> dict[bytes, bytes]:
    async with EtcdClient(cluster.config("root")) as c:
        kvs, _ = await c.get_prefix(b"/sdquorum/" + pool_id.hex().encode() + b"/")
    return {kv.key: kv.value for kv in kvs}


def _no_garbage(cluster: EtcdCluster, pool_id: bytes, served: PoolNodeStore) -> None:
    """etcd holds exactly the served generation's key rows: no staged rows, no old set, no marker."""
    keys = asyncio.run(_rows(cluster, pool_id))
    gen = served.keys.keyset.current()
    prefix = served.keys.keyset.prefix(gen)
    key_rows = [k for k in keys if b"/keys/" in k]
    assert key_rows == [k for k in key_rows if k.startswith(prefix)], "rows of another generation are left"
    assert len(key_rows) == len(_names(served))
    assert not [k for k in keys if b"/restoring/" in k]


def _served_whole(store: PoolNodeStore, private: dict[str, bytes]) -> None:
    assert _names(store) == set(private)
    for name, material in private.items():
        assert store.keys.get_key(DEK, name)[1] == material


def test_the_test_cluster_refuses_a_transaction_over_its_byte_limit(pool: Any) -> None:
    """The limit binds: 128 RSA rows in one transaction (about 400 KB) are refused by etcd itself
    (the client told the default 1.5 MiB, so it sends it), and by the client's own check."""
    _, open_ = pool
    a = open_("node-a")
    row = b"r" * 3_124
    ops = [Put(a.view.sub("probe", str(i)), row) for i in range(120)]
    big = EtcdClient(replace(a.view.client.config, max_request_bytes=1_572_864))
    try:
        with pytest.raises(UsageError, match=r"too large|max-request-bytes"):
            a.view.run(big.commit(ops))
    finally:
        a.view.run(big.close())
    with pytest.raises(UsageError, match="over etcd's --max-request-bytes"):
        a.view.run(a.view.client.commit(ops))


def test_a_restore_of_1500_mixed_keys_is_served_whole_by_another_member_never_half(
    pool: Any, cluster: EtcdCluster
) -> None:
    pool_id, open_ = pool
    a, b = _members(open_)
    for i in range(5):
        b.keys.put_key(DEK, StoredKey(f"old-{i}", AES, b"", 1, "app"), b"old")
    old = _names(b)
    image, count, private = _backup("new", 1_200, 300, deleted=40)
    samples: list[frozenset[str]] = []
    done = threading.Event()

    def watch_b() -> None:  # what another member serves while the restore runs
        while not done.is_set():
            samples.append(frozenset(k.name for k in b.keys.list_keys()))  # one read: one snapshot

    watcher = threading.Thread(target=watch_b)
    watcher.start()
    try:
        t0 = time.monotonic()
        a.keys.import_key_rows(image, count)
        took = time.monotonic() - t0
        _wait(lambda: _names(b) == set(private))
    finally:
        done.set()
        watcher.join()
    print(f"\nrestore of {count} keys (1,200 AES, 300 RSA-3072) into a pool member: {took:.2f} s")
    live = frozenset(sorted(private)[40:])
    assert set(samples) <= {frozenset(old), live}, "b served a mixed or half set"
    assert len(samples) > 10
    _served_whole(b, private)
    assert len(b.keys.list_keys(deleted=True)) == 40
    assert a.keys.list_keys() == b.keys.list_keys()
    _, key = b.keys.get_key(DEK, "new-01234-" + "x" * 20)  # an RSA key, usable on b
    loaded = serialization.load_der_private_key(key, None)
    assert isinstance(loaded, rsa.RSAPrivateKey)
    loaded.public_key().verify(
        loaded.sign(b"m", padding.PKCS1v15(), hashes.SHA256()), b"m", padding.PKCS1v15(), hashes.SHA256()
    )
    _no_garbage(cluster, pool_id, b)
    b.keys.put_key(DEK, StoredKey("after", AES, b"", 1, "app"), b"after")  # writes go to the new set
    _wait(lambda: a.keys.find_key("after") is not None)


@pytest.mark.parametrize("k", [2, 5])
def test_a_restore_failing_mid_way_changes_nothing_and_a_rerun_succeeds(
    pool: Any, cluster: EtcdCluster, k: int
) -> None:
    """Transaction 1 is the marker, 2.. the staged chunks: the k-th fails (an etcd error)."""
    pool_id, open_ = pool
    a, b = _members(open_)
    first, n1, private1 = _backup("one", 200, 50)
    a.keys.import_key_rows(first, n1)
    image, count, private = _backup("two", 600, 200)
    a.view.client.arm(k)  # type: ignore[attr-defined]
    with pytest.raises(TransportError, match="injected"):
        a.keys.import_key_rows(image, count)
    for s in (a, b):
        _served_whole(s, private1)  # the old set, complete, on both members
    _wait(lambda: len(asyncio.run(_rows(cluster, pool_id))) < 800)  # the staged rows go
    _no_garbage(cluster, pool_id, b)
    a.keys.import_key_rows(image, count)
    _wait(lambda: _names(b) == set(private))
    _served_whole(b, private)
    _no_garbage(cluster, pool_id, a)


def test_a_member_that_dies_mid_restore_leaves_the_old_set_and_its_rows_go_at_the_next_start(
    pool: Any, cluster: EtcdCluster
) -> None:
    pool_id, open_ = pool
    a, b = _members(open_, restore_ttl=2)
    first, n1, private1 = _backup("one", 100, 20)
    a.keys.import_key_rows(first, n1)
    image, count, private = _backup("two", 600, 200)
    a.view.client.arm(4, die=True)  # type: ignore[attr-defined]
    with pytest.raises(TransportError, match="injected"):
        a.keys.import_key_rows(image, count)
    a.close()  # the member is gone: it removed nothing
    _served_whole(b, private1)
    left = asyncio.run(_rows(cluster, pool_id))
    assert [k for k in left if b"/restoring/" in k], "the crashed restore's marker is still there"
    _wait(lambda: not [k for k in asyncio.run(_rows(cluster, pool_id)) if b"/restoring/" in k])
    # its lease (2 s) has ended: nothing can flip to its rows any more
    _served_whole(b, private1)
    again = open_("node-a", restore_ttl=2)  # a member starts: it removes the dead generation
    _no_garbage(cluster, pool_id, again)
    _served_whole(again, private1)
    again.keys.import_key_rows(image, count)
    _wait(lambda: _names(b) == set(private))
    _served_whole(b, private)
    _no_garbage(cluster, pool_id, b)


def test_two_concurrent_restores_one_wins_and_the_pool_serves_exactly_its_backup(
    pool: Any, cluster: EtcdCluster
) -> None:
    pool_id, open_ = pool
    a, b = _members(open_)
    x, nx, private_x = _backup("x", 300, 60)
    y, ny, private_y = _backup("y", 300, 60)
    both_staged = threading.Barrier(2, timeout=60)
    for s in (a, b):  # both have staged every row before either flips
        s.view.client.before_flip = both_staged.wait  # type: ignore[attr-defined]
    outcome: dict[str, BaseException | None] = {}

    def restore(store: PoolNodeStore, who: str, image: bytes, n: int) -> None:
        try:
            store.keys.import_key_rows(image, n)
            outcome[who] = None
        except BaseException as e:
            outcome[who] = e

    threads = [
        threading.Thread(target=restore, args=(a, "x", x, nx)),
        threading.Thread(target=restore, args=(b, "y", y, ny)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lost = [w for w, e in outcome.items() if e is not None]
    assert len(lost) == 1, outcome
    error = outcome[lost[0]]
    assert isinstance(error, StateError) and "another restore into this pool finished first" in str(error)
    won = private_y if lost == ["x"] else private_x
    for s in (a, b):
        _wait(lambda s=s: _names(s) == set(won))  # type: ignore[misc]
        _served_whole(s, won)
    _no_garbage(cluster, pool_id, a)


def test_writes_racing_a_restore_before_its_flip_are_rolled_back_and_after_it_refused(pool: Any) -> None:
    """The flip is the linearization point: a create committed before it is rolled back with the
    rest of the old set; a create that read the key set before the flip and commits after is
    refused, nothing written; a create after it lands in the new set."""
    _, open_ = pool
    a, b = _members(open_)
    image, count, private = _backup("new", 300, 10)
    flip = threading.Event()
    a.view.client.before_flip = lambda: flip.wait(30)  # type: ignore[attr-defined]
    restorer = threading.Thread(target=a.keys.import_key_rows, args=(image, count))
    restorer.start()
    try:
        _wait(lambda: len(_rows_of(b)) > 300)  # staging is under way
        b.keys.put_key(DEK, StoredKey("during", AES, b"", 1, "app"), b"during")
        assert b.keys.find_key("during") is not None  # served from the old set until the flip
        assert not set(private) & _names(b)  # never a staged row
    finally:
        flip.set()
        restorer.join()
    _wait(lambda: _names(b) == set(private))
    assert a.keys.find_key("during") is None and b.keys.find_key("during") is None
    with pytest.raises(StateError, match="nothing was written"), b.batch():
        b.keys.put_key(DEK, StoredKey("late", AES, b"", 1, "app"), b"late")
        a.keys.import_key_rows(image, count)  # a restore flips between b's read and its commit
    _wait(lambda: a.keys.keyset.current() == b.keys.keyset.current())
    assert b.keys.find_key("late") is None and a.keys.find_key("late") is None
    b.keys.put_key(DEK, StoredKey("after", AES, b"", 1, "app"), b"after")
    assert "after" in _names(b)


def _rows_of(store: PoolNodeStore) -> list[bytes]:
    """Every key row this member's cache holds, of any generation."""
    return [kv.key for kv in store.view.committed(store.view.sub("keys") + b"/")]


def test_a_restore_cannot_be_part_of_a_batch(pool: Any) -> None:
    _, open_ = pool
    a, _b = _members(open_)
    image, count, _ = _backup("new", 3, 0)
    with pytest.raises(UsageError, match="cannot be part of a batch"), a.batch():
        a.keys.import_key_rows(image, count)
    assert _names(a) == set()


def _restored_once(pool: Any) -> tuple[PoolNodeStore, PoolNodeStore, bytes, int, dict[str, bytes]]:
    """Two members of a pool restored once (50 keys), and a second backup (120 keys) to restore."""
    _pool_id, open_ = pool
    a, b = _members(open_)
    first, n1, _ = _backup("one", 50, 5)
    a.keys.import_key_rows(first, n1)
    image, count, private = _backup("two", 120, 10)
    return a, b, image, count, private


def test_a_restore_whose_flip_applied_is_reported_done_even_if_its_answer_and_lease_revoke_are_lost(
    pool: Any, cluster: EtcdCluster
) -> None:
    """The flip applies but its answer is lost and the lease cannot be revoked: the pointer names the
    new generation, so the restore is done (the previous code reported it failed, unaudited)."""
    a, b, image, count, private = _restored_once(pool)
    client = a.view.client
    client.flip_answer_lost = client.revoke_fails = True  # type: ignore[attr-defined]
    a.keys.import_key_rows(image, count)  # done: no error
    client.revoke_fails = False  # type: ignore[attr-defined]
    _wait(lambda: _names(b) == set(private))
    _served_whole(a, private)
    _served_whole(b, private)


def test_a_restore_losing_etcd_right_after_its_flip_is_reported_with_an_unknown_outcome(
    pool: Any, cluster: EtcdCluster
) -> None:
    """etcd is lost right after the flip: the outcome cannot be known, so the restore raises
    OutcomeUnknownError (audited by Backups.restore), never a plain failure; the flip did apply."""
    a, b, image, count, private = _restored_once(pool)
    client = a.view.client
    client.flip_answer_lost = client.dead_after_flip = True  # type: ignore[attr-defined]
    with pytest.raises(OutcomeUnknownError, match="sdctl keys list"):
        a.keys.import_key_rows(image, count)
    _wait(lambda: _names(b) == set(private))
    _served_whole(b, private)


def _activated_with(
    cluster: EtcdCluster, tmp_path: Path, client: type[EtcdClient] = EtcdClient, max_txn_ops: int = 128
) -> tuple[PoolNodeStore, bytes]:
    """node-a of a new pool, its domain activated, speaking to etcd through ``client``; the pool id."""
    pool_id = secrets.token_bytes(8)
    config = replace(cluster.config("node-a"), max_request_bytes=MAX_REQUEST_BYTES, max_txn_ops=max_txn_ops)
    a = PoolNodeStore(config, pool_id, tmp_path / "a", SEALING_A, "node-a", client_factory=client)
    domain = sdfile.new_domain_secrets(os.urandom, admins=["admin"])
    a.domain.activate(domain, DomainInfo(domain.domain_id, 1, 2, 3), "ACTIVATED", b"sd-file")
    return a, pool_id


class _SlowCommits(EtcdClient):
    """The first staging commit fails at once; the others are in their threads, still running
    (a blocking commit handed over cannot be called back), and land ``delay`` s later."""

    delay, first_fails = 0.3, True

    def __init__(self, config: EtcdConfig) -> None:
        super().__init__(config)
        self.staged = 0

    async def commit(
        self, ops: Sequence[Put | Delete], *, unless_changed: Sequence[Unchanged] = ()
    ) -> int | None:
        if not any(isinstance(op, Put) and b"/keys/" in op.key for op in ops):
            return await super().commit(ops, unless_changed=unless_changed)
        self.staged += 1
        if self.staged == 1 and self.first_fails:
            await asyncio.sleep(0.05)  # the others are in their threads by now
            raise TransportError("injected: a staging commit failed")
        loop = asyncio.get_running_loop()
        delay = self.delay

        def blocking() -> int | None:
            time.sleep(delay)
            call = EtcdClient.commit(self, ops, unless_changed=unless_changed)
            return asyncio.run_coroutine_threadsafe(call, loop).result()

        return await asyncio.to_thread(blocking)


def test_a_failed_restore_leaves_no_staged_row_from_commits_still_in_flight(
    cluster: EtcdCluster, tmp_path: Path
) -> None:
    """A staging commit fails while others are in their threads: the restore waits for them before
    removing its rows, so none lands after the removal (the previous code left orphan rows)."""
    a, pool_id = _activated_with(cluster, tmp_path, _SlowCommits)
    try:
        image, count, _ = _backup("two", 600, 200)
        with pytest.raises(TransportError, match="injected"):
            a.keys.import_key_rows(image, count)
        time.sleep(1.0)  # any commit still in a thread would have landed by now
        staged = [k for k in asyncio.run(_rows(cluster, pool_id)) if b"/keys/" in k]
        assert staged == []
    finally:
        a.close()


class _OverBudget(_SlowCommits):
    """The first four staging commits run at once; the others wait 8.5 s for a thread (a saturated
    executor) before they run, so they land after the restore's time budget (7.5 s here)."""

    delay, first_fails = 8.5, False

    async def commit(
        self, ops: Sequence[Put | Delete], *, unless_changed: Sequence[Unchanged] = ()
    ) -> int | None:
        if self.staged < 4 and any(isinstance(op, Put) and b"/keys/" in op.key for op in ops):
            self.staged += 1
            return await EtcdClient.commit(self, ops, unless_changed=unless_changed)
        return await super().commit(ops, unless_changed=unless_changed)


def test_a_restore_out_of_time_leaves_no_staged_row_from_commits_still_in_flight(
    cluster: EtcdCluster, tmp_path: Path
) -> None:
    """The restore's time budget runs out while its staging commits are in flight: it waits for
    them before removing its rows (the previous code removed them at once and left the rows that
    landed after)."""
    pool_id = secrets.token_bytes(8)
    config = replace(
        cluster.config("node-a"), max_request_bytes=MAX_REQUEST_BYTES, attempt_timeout=0.5, call_timeout=0.5
    )
    a = PoolNodeStore(
        config, pool_id, tmp_path / "a", SEALING_A, "node-a", client_factory=_OverBudget, restore_ttl=2
    )
    try:
        domain = sdfile.new_domain_secrets(os.urandom, admins=["admin"])
        a.domain.activate(domain, DomainInfo(domain.domain_id, 1, 2, 3), "ACTIVATED", b"sd-file")
        image, count, _ = _backup("two", 600, 200)
        started = time.monotonic()
        with pytest.raises(TransportError, match="did not finish within"):
            a.keys.import_key_rows(image, count)
        chunks = a.view.client.staged  # type: ignore[attr-defined]
        assert 0.5 * (chunks + 4) + 2 < _OverBudget.delay * -(-chunks // 4), (
            chunks
        )  # the budget ran out first
        time.sleep(max(0.0, started + _OverBudget.delay + 2.0 - time.monotonic()))  # all landed by now
        staged = [k for k in asyncio.run(_rows(cluster, pool_id)) if b"/keys/" in k]
        assert staged == []
        assert a.keys.list_keys() == []  # and nothing was restored
    finally:
        a.close()


class _AppliedLate(EtcdClient):
    """The first staging commit times out at the client at once, while etcd applies it a second
    later (a request the client gave up on, still in the leader's log): after the failed restore
    revoked its lease and removed its rows. What that late commit returned is kept."""

    def __init__(self, config: EtcdConfig) -> None:
        super().__init__(config)
        self.late: list[int | None] = []

    async def commit(
        self, ops: Sequence[Put | Delete], *, unless_changed: Sequence[Unchanged] = ()
    ) -> int | None:
        if self.late or not any(isinstance(op, Put) and b"/keys/" in op.key for op in ops):
            return await super().commit(ops, unless_changed=unless_changed)
        self.late.append(-1)  # the one commit that lands late
        loop = asyncio.get_running_loop()

        def later() -> None:
            time.sleep(1.0)
            call = EtcdClient.commit(self, ops, unless_changed=unless_changed)
            self.late[0] = asyncio.run_coroutine_threadsafe(call, loop).result()

        threading.Thread(target=later, daemon=True).start()
        raise TransportError("injected: a staging commit timed out at the client")


def test_a_staging_commit_that_etcd_applies_after_the_failed_restore_writes_nothing(
    cluster: EtcdCluster, tmp_path: Path
) -> None:
    """Each staging transaction is conditioned on the restore's marker: applied after the lease
    was revoked (the marker gone) and the rows removed, it changes nothing. The previous code's
    unconditional commit left its rows until the next start or restore."""
    a, pool_id = _activated_with(cluster, tmp_path, _AppliedLate)
    try:
        image, count, _ = _backup("two", 100, 200)
        with pytest.raises(TransportError, match="injected"):
            a.keys.import_key_rows(image, count)
        client = a.view.client
        deadline = time.monotonic() + 10
        while client.late == [-1] and time.monotonic() < deadline:  # type: ignore[attr-defined]
            time.sleep(0.05)
        assert client.late == [None]  # type: ignore[attr-defined]  # it ran, and its condition failed
        assert [k for k in asyncio.run(_rows(cluster, pool_id)) if b"/keys/" in k] == []
        assert a.keys.list_keys() == []
    finally:
        a.close()


class _SentTwice(EtcdClient):
    """Every staging transaction is sent twice, as a retry after a first attempt that applied but
    whose answer was lost (an attempt timeout, an endpoint switch)."""

    async def commit(
        self, ops: Sequence[Put | Delete], *, unless_changed: Sequence[Unchanged] = ()
    ) -> int | None:
        if any(isinstance(op, Put) and b"/keys/" in op.key for op in ops):
            await super().commit(ops, unless_changed=unless_changed)
        return await super().commit(ops, unless_changed=unless_changed)


def test_a_staging_transaction_sent_again_after_it_applied_leaves_every_row_valid(
    cluster: EtcdCluster, tmp_path: Path
) -> None:
    """The second sending finds the transaction's fence row and changes nothing, and the commit
    reports the first one's result. The previous code applied it again: every restored row at
    version 2 under a tag for version 1, refused after the flip (the whole key list with it)."""
    a, _ = _activated_with(cluster, tmp_path, _SentTwice)
    try:
        image, count, private = _backup("twice", 300, 100, deleted=5)
        a.keys.import_key_rows(image, count)
        assert len(a.keys.list_keys()) == count - 5 and len(a.keys.list_keys(deleted=True)) == 5
        for name in sorted(private)[::37]:
            assert a.keys.get_key(DEK, name)[1] == private[name]
    finally:
        a.close()


class _ShardRemovalRefused(EtcdClient):
    """Every transaction that removes dead-set rows meets a concurrent writer (refused: sent again
    by the view, refused again, until it gives up)."""

    refused = 0

    async def commit(
        self, ops: Sequence[Put | Delete], *, unless_changed: Sequence[Unchanged] = ()
    ) -> int | None:
        if any(isinstance(op, Delete) and b"/dead/" in op.key for op in ops):
            _ShardRemovalRefused.refused += 1
            return None
        return await super().commit(ops, unless_changed=unless_changed)


def test_an_old_generations_dead_set_left_by_a_refused_removal_goes_at_the_next_start(
    cluster: EtcdCluster, tmp_path: Path
) -> None:
    """After a restore's flip the old generation's dead set is removed in transactions of their
    own (custody rows: with the next head); one that meets a conflict leaves it, and garbage
    collection finds the generation by its dead set too (the previous code looked for key rows
    only, and the shards stayed for good, hashed at every head check)."""
    a, pool_id = _activated_with(cluster, tmp_path, _ShardRemovalRefused)
    try:
        a.keys.put_key(DEK, StoredKey("old", AES, b"pub", 100, "app"), b"p")
        a.keys.mark_deleted("old", 500)  # its first row's tag: dead/0/<xx>
        image, count, _ = _backup("new", 20, 0)
        a.keys.import_key_rows(image, count)
        assert _ShardRemovalRefused.refused
        assert [k for k in asyncio.run(_rows(cluster, pool_id)) if b"/dead/0/" in k] != []  # left
    finally:
        a.close()
    config = replace(cluster.config("node-a"), max_request_bytes=MAX_REQUEST_BYTES)
    again = PoolNodeStore(config, pool_id, tmp_path / "a", SEALING_A, "node-a")  # its start collects
    try:
        assert [k for k in asyncio.run(_rows(cluster, pool_id)) if b"/dead/" in k] == []
        assert len(again.keys.list_keys()) == count
    finally:
        again.close()


def test_restores_under_the_smallest_transaction_limit_remove_a_large_dead_set(
    cluster: EtcdCluster, tmp_path: Path
) -> None:
    """With etcd's --max-txn-ops at the least the pool accepts (16), a dead set of more shards than
    that goes in transactions within it, and restore after restore succeeds (a fixed step of 100
    shards had refused every later restore before it sent anything)."""
    a, pool_id = _activated_with(cluster, tmp_path, max_txn_ops=16)
    try:
        for i in range(60):  # 60 first deletes: dozens of shards of generation 0
            a.keys.put_key(DEK, StoredKey(f"d{i}", AES, b"pub", 100, "app"), b"p")
            a.keys.mark_deleted(f"d{i}", 500)
        shards = [k for k in asyncio.run(_rows(cluster, pool_id)) if b"/dead/0/" in k]
        assert len(shards) > 16
        for round_ in ("one", "two"):
            image, count, _ = _backup(round_, 30, 0)
            a.keys.import_key_rows(image, count)
            assert len(a.keys.list_keys()) == count
        assert [k for k in asyncio.run(_rows(cluster, pool_id)) if b"/dead/0/" in k] == []
    finally:
        a.close()


def _earlier_pool(cluster: EtcdCluster, kind: str) -> tuple[bytes, bytes]:
    """A pool id whose rows an earlier development build wrote (no ``keys-layout`` row): key rows
    at ``keys/<quoted name>`` (before key-set generations), or an untagged header (before integrity
    tags); and its etcd prefix."""
    pool_id = secrets.token_bytes(8)
    prefix = b"/sdquorum/" + pool_id.hex().encode() + b"/"
    name = "legacy/one %"
    row = KeyRow(StoredKey(name, AES, b"", 100, "app"), KeySeal().seal(DEK, name, AES, "app", os.urandom(32)))
    rows = {
        "legacy-keys": {prefix + b"keys/" + urllib.parse.quote(name, safe="").encode(): _row_bytes(row)},
        "untagged-header": {prefix + b"header": b"signed-sd-file-epoch-1", prefix + b"epoch": b"1"},
    }[kind]

    async def write() -> None:
        async with EtcdClient(cluster.config("root")) as c:
            await c.commit([Put(k, v) for k, v in rows.items()])

    asyncio.run(write())
    return pool_id, prefix


def _open(cluster: EtcdCluster, pool_id: bytes, path: Path, node: str) -> PoolNodeStore:
    config = replace(cluster.config(node), max_request_bytes=MAX_REQUEST_BYTES)
    return PoolNodeStore(config, pool_id, path / node, SEALING_A if node == "node-a" else SEALING_B, node)


@pytest.mark.parametrize("kind", ["legacy-keys", "untagged-header"])
def test_a_pool_written_by_an_earlier_version_is_refused_at_start_and_nothing_is_changed(
    cluster: EtcdCluster, tmp_path: Path, kind: str
) -> None:
    """The previous code started on such a pool and served none of its legacy keys (their names
    could be taken again with other material). Now no member starts on it, and it converts
    nothing: untagged rows are what a stolen member certificate can write (ADR 0013)."""
    pool_id, _ = _earlier_pool(cluster, kind)
    before = asyncio.run(_values(cluster, pool_id))
    for node in ("node-a", "node-b"):
        with pytest.raises(StateError, match="written by an earlier sdquorum version"):
            _open(cluster, pool_id, tmp_path, node)
    assert asyncio.run(_values(cluster, pool_id)) == before


def test_a_pool_in_another_layout_refuses_the_start(cluster: EtcdCluster, tmp_path: Path) -> None:
    pool_id = secrets.token_bytes(8)
    prefix = b"/sdquorum/" + pool_id.hex().encode() + b"/"
    _open(cluster, pool_id, tmp_path, "node-a").close()
    assert asyncio.run(_values(cluster, pool_id))[prefix + b"keys-layout"] == LAYOUT

    async def put(key: bytes, value: bytes) -> None:
        async with EtcdClient(cluster.config("root")) as c:
            await c.commit([Put(key, value)])

    asyncio.run(put(prefix + b"keys-layout", b"2"))  # the previous layout: permissions to join untagged
    with pytest.raises(StateError, match="layout '2'"):
        _open(cluster, pool_id, tmp_path, "node-a")


class _OutrunByAnotherVersion(EtcdClient):
    """A member of another version writes the layout row (``2``) just before this member's own
    conditional write of it: the race the conditional write loses."""

    async def commit(
        self, ops: Sequence[Put | Delete], *, unless_changed: Sequence[Unchanged] = ()
    ) -> int | None:
        if any(isinstance(op, Put) and op.key.endswith(b"/keys-layout") for op in ops):
            await super().commit([Put(ops[0].key, b"2")])
        return await super().commit(ops, unless_changed=unless_changed)


def test_a_member_that_loses_the_layout_race_to_another_version_refuses_the_start(
    cluster: EtcdCluster, tmp_path: Path
) -> None:
    """The code before 6bef79e ignored the outcome of its conditional write and started on a pool
    of another layout."""
    pool_id = secrets.token_bytes(8)
    prefix = b"/sdquorum/" + pool_id.hex().encode() + b"/"
    config = replace(cluster.config("node-a"), max_request_bytes=MAX_REQUEST_BYTES)
    with pytest.raises(StateError, match="another sdquorum version"):
        PoolNodeStore(
            config, pool_id, tmp_path / "a", SEALING_A, "node-a", client_factory=_OutrunByAnotherVersion
        )
    assert asyncio.run(_values(cluster, pool_id))[prefix + b"keys-layout"] == b"2"


def test_two_members_starting_at_once_on_a_new_pool_both_start_and_it_has_one_layout_row(
    cluster: EtcdCluster, tmp_path: Path
) -> None:
    pool_id = secrets.token_bytes(8)
    opened: dict[str, PoolNodeStore | BaseException] = {}

    def start(node: str) -> None:
        try:
            opened[node] = _open(cluster, pool_id, tmp_path, node)
        except BaseException as e:
            opened[node] = e

    threads = [threading.Thread(target=start, args=(n,)) for n in ("node-a", "node-b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert all(isinstance(s, PoolNodeStore) for s in opened.values()), opened
        rows = asyncio.run(_values(cluster, pool_id))
        assert [v for k, v in rows.items() if k.endswith(b"/keys-layout")] == [LAYOUT]
    finally:
        for store in opened.values():
            if isinstance(store, PoolNodeStore):
                store.close()


def test_opening_and_closing_a_member_ten_times_leaves_no_thread_and_no_pending_task(
    cluster: EtcdCluster, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """close() awaits the watch's cancellation on its loop, so the watch's request stream ends and
    no grpc thread stays blocked on it (the previous code stopped the loop first: "Task was
    destroyed but it is pending!" and an etcd request thread left behind, sometimes)."""
    pool_id = secrets.token_bytes(8)
    before = {t.ident for t in threading.enumerate()}
    with caplog.at_level("ERROR", logger="asyncio"):
        for _ in range(10):
            store = _open(cluster, pool_id, tmp_path, "node-a")
            time.sleep(0.1)
            store.close()
            del store
        gc.collect()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            left = [t for t in threading.enumerate() if t.ident not in before and t.is_alive()]
            if not left:
                break
            time.sleep(0.1)
    assert [t.name for t in left] == []
    assert not [r for r in caplog.records if "pending" in r.getMessage()]
