"""Two pool members' stores (hsm_node.pool.store) on one real 3-member etcd cluster.

The seam's contract itself runs in tests/hsm_node/test_store_contract.py; here is what only a pool
has: rows written on one member seen on another within a measured bound, concurrent creates and
audit appends of one name with exactly one winner, rotations that race, a member of another domain
refused, nothing secret in etcd, and a member that loses etcd stopping to serve after
``max_staleness`` and resuming when etcd is back. The test that stops etcd members comes last.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from etcd_cluster import EtcdCluster, running_cluster

from hsm_node.cli import _open_store
from hsm_node.config import NodeSettings
from hsm_node.keyops import KeyType
from hsm_node.pool.etcd import EtcdClient, WatchBatch
from hsm_node.pool.store import LOCAL_FILE, PoolNodeStore
from hsm_node.store import DomainInfo, StoredKey
from sdquorum import sdfile
from sdquorum.errors import AlreadyExistsError, ConflictError, StateError, TransportError, UsageError
from sdquorum.review import RetiredEpoch

pytestmark = pytest.mark.slow

SEALING_A, SEALING_B = os.urandom(32), os.urandom(32)
DEK = os.urandom(32)
AES = int(KeyType.AES256_GCM)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    with running_cluster(tmp_path_factory.mktemp("etcd")) as c:
        yield c


Members = Callable[..., tuple[PoolNodeStore, PoolNodeStore]]


@pytest.fixture
def members(cluster: EtcdCluster, tmp_path: Path) -> Iterator[Members]:
    """Two members (node-a, node-b) of one new pool, each with its own disk and sealing key."""
    opened: list[PoolNodeStore] = []

    def open_(**kw: float) -> tuple[PoolNodeStore, PoolNodeStore]:
        pool_id = secrets.token_bytes(8)
        pair = tuple(
            PoolNodeStore(
                cluster.config(node, **{k: v for k, v in kw.items() if k != "max_staleness"}),
                pool_id,
                tmp_path / node,
                sealing,
                node,
                max_staleness=kw.get("max_staleness", 5.0),
            )
            for node, sealing in (("node-a", SEALING_A), ("node-b", SEALING_B))
        )
        opened.extend(pair)
        return pair[0], pair[1]

    yield open_
    for s in opened:
        s.close()


def _activate(a: PoolNodeStore, b: PoolNodeStore) -> sdfile.DomainSecrets:
    """node-a makes the domain; node-b holds the same secrets (as a join leaves it)."""
    domain = sdfile.new_domain_secrets(os.urandom, admins=["admin"])
    info = DomainInfo(domain.domain_id, 1, 2, 3)
    a.domain.activate(domain, info, "ACTIVATED", b"signed-sd-file-epoch-1")
    b.domain.activate(domain, info, "ACTIVATED", b"signed-sd-file-epoch-1")
    return domain


def _wait(check: Callable[[], bool], timeout: float = 5.0) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not seen within {timeout} s")
        time.sleep(0.002)
    return time.monotonic() - start


def test_a_key_created_on_one_member_is_usable_on_the_other_within_a_bound(members: Members) -> None:
    a, b = members()
    _activate(a, b)
    delays = []
    for i in range(20):
        a.keys.put_key(DEK, StoredKey(f"k{i}", AES, b"pub", 100, "app"), f"private-{i}".encode())
        delays.append(_wait(lambda i=i: b.keys.find_key(f"k{i}") is not None))  # type: ignore[misc]
    assert b.keys.get_key(DEK, "k7")[1] == b"private-7"
    delays.sort()
    print(
        f"\ncreate-to-visible on another member: median {delays[10] * 1000:.1f} ms, max {delays[-1] * 1000:.1f} ms"
    )
    assert delays[-1] < 1.0
    b.keys.mark_deleted("k3", 500)  # a deletion on b is seen on a just as fast
    _wait(lambda: a.keys.list_keys(deleted=True) != [])
    assert [k.name for k in a.keys.list_keys(deleted=True)] == ["k3"]


class _LateWatch(EtcdClient):
    """A member whose watch delivers each batch 0.3 s late (a slow link, a busy member)."""

    async def watch_prefix(self, prefix: bytes, start_revision: int) -> AsyncIterator[WatchBatch]:
        async for batch in super().watch_prefix(prefix, start_revision):
            await asyncio.sleep(0.3)
            yield batch


def test_a_key_acknowledged_on_one_member_is_found_at_once_on_another_whose_watch_lags(
    cluster: EtcdCluster, tmp_path: Path
) -> None:
    """A client that fails over between its create (node-a) and its use (node-b) finds the key:
    node-b catches up with etcd before it answers "no such key" (the previous code answered from
    its lagging cache: NOT_FOUND for an acknowledged key, seen in the pool demo under load)."""
    pool_id = secrets.token_bytes(8)
    a = PoolNodeStore(cluster.config("node-a"), pool_id, tmp_path / "a", SEALING_A, "node-a")
    b = PoolNodeStore(
        cluster.config("node-b"), pool_id, tmp_path / "b", SEALING_B, "node-b", client_factory=_LateWatch
    )
    try:
        _activate(a, b)
        for i in range(5):
            a.keys.put_key(DEK, StoredKey(f"k{i}", AES, b"pub", 100, "app"), f"private-{i}".encode())
            assert b.keys.get_key(DEK, f"k{i}")[1] == f"private-{i}".encode()
        assert b.keys.find_key("never-made") is None  # a real miss is still a miss
    finally:
        a.close()
        b.close()


def test_reading_the_members_and_joins_costs_the_same_with_thousands_of_keys(members: Members) -> None:
    """Each member's loop reads the members and the join requests ten times a second, on the loop
    that serves the data plane: those reads must not walk every key row (they did: 17 ms a read at
    100,000 keys, a third of a core per member)."""
    a, b = members()
    _activate(a, b)

    def cost() -> float:  # the least time of 30 tries of 20 loop passes' reads: the noise floor
        best = float("inf")
        for _ in range(30):
            t0 = time.perf_counter()
            for _ in range(20):
                b.pool.pool_rows("members"), b.pool.pool_rows("joins")
            best = min(best, time.perf_counter() - t0)
        return best

    few = cost()
    for start in range(0, 3000, 60):  # 60 creates and their 60 conditions: under etcd's 128 a txn
        with a.batch():
            for i in range(start, start + 60):
                a.keys.put_key(DEK, StoredKey(f"bulk-{i}", AES, b"pub", 100, "app"), b"private")
    _wait(lambda: b.keys.find_key("bulk-2999") is not None)
    many = cost()
    print(
        f"\nmembers + joins read, 20 passes: {few * 1000:.2f} ms with 0 keys, {many * 1000:.2f} ms with 3,000"
    )
    assert many < 3 * few + 0.0005


def _wakeups(thread_name: str) -> int:
    """How many times the threads called ``thread_name`` of this process went to sleep and were
    woken so far (voluntary switches: a preemption by a busy neighbour is not a wake-up)."""
    total = 0
    for t in threading.enumerate():
        if t.name == thread_name and t.native_id is not None:
            status = Path(f"/proc/self/task/{t.native_id}/status").read_text()
            total += sum(
                int(line.split()[1]) for line in status.splitlines() if line.startswith("voluntary_ctxt")
            )
    return total


async def test_a_members_etcd_thread_sleeps_while_the_node_serves_calls(members: Members) -> None:
    """A member serves gRPC on its main loop and keeps etcd on a thread of its own: that thread must
    not wake for the calls served. With a grpc.aio etcd client both loops shared grpc.aio's one
    poller and the etcd thread woke for every event and forwarded it: a quarter more CPU per
    Encrypt on a member than on a node without a pool (ADR 0013). The thread's own work (a freshness
    read a second, watch batches) is measured in an idle window of the same length in the same run,
    so a slow or busy machine moves both counts alike."""
    import grpc
    import grpc.aio

    members()  # two members, each with its etcd thread
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("t.T", {"Echo": grpc.unary_unary_rpc_method_handler(_echo)}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    calls = 1000
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            echo = ch.unary_unary("/t.T/Echo")
            await echo(b"warm")
            await asyncio.sleep(0.5)  # the members' start-up reads and watches settle
            before, t0 = _wakeups("pool-etcd"), time.monotonic()
            for _ in range(calls // 10):
                await asyncio.gather(*(echo(b"x") for _ in range(10)))
            woken, took = _wakeups("pool-etcd") - before, time.monotonic() - t0
            before = _wakeups("pool-etcd")
            await asyncio.sleep(took)
            idle = _wakeups("pool-etcd") - before
    finally:
        await server.stop(0)
    print(f"\n{calls} calls served in {took:.2f} s: the etcd thread woke {woken} times ({idle} idle)")
    # Woken for every call's events, it wakes more than once a call. Its own work waits for the GIL
    # while the main loop is busy, and each wait is a wake-up: up to 54 here on a loaded machine,
    # 396 over the idle window with allocation tracing slowing every call down sevenfold.
    assert woken - idle < calls // 2


async def _echo(request: bytes, context: object) -> bytes:
    return request


def test_concurrent_creates_of_one_name_on_two_members_exactly_one_wins(members: Members) -> None:
    a, b = members()
    _activate(a, b)
    names = [f"race-{i}" for i in range(15)]
    won: dict[str, list[str]] = {n: [] for n in names}
    lost: dict[str, list[str]] = {n: [] for n in names}
    go = threading.Barrier(2)

    def create_all(store: PoolNodeStore, who: str) -> None:
        go.wait()
        for n in names:
            try:
                store.keys.put_key(DEK, StoredKey(n, AES, b"pub", 1, "app"), who.encode())
                won[n].append(who)
            except AlreadyExistsError:
                lost[n].append(who)

    threads = [threading.Thread(target=create_all, args=(s, w)) for s, w in ((a, "a"), (b, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for n in names:
        assert len(won[n]) == 1 and len(lost[n]) == 1, (n, won[n], lost[n])
        _wait(lambda n=n: b.keys.find_key(n) is not None and a.keys.find_key(n) is not None)  # type: ignore[misc]
        # the winner's private material is what both members open
        assert a.keys.get_key(DEK, n)[1] == b.keys.get_key(DEK, n)[1] == won[n][0].encode()


def test_members_audit_at_once_each_to_its_own_chain_which_outlives_it(
    members: Members, cluster: EtcdCluster, tmp_path: Path
) -> None:
    a, b = members()
    failures: list[str] = []
    go = threading.Barrier(2)

    def append(store: PoolNodeStore, who: str) -> None:
        go.wait()
        for seq in range(1, 11):
            try:
                store.records.append_audit("domain", seq, f'{{"seq": {seq}, "by": "{who}"}}')
            except AlreadyExistsError as e:
                failures.append(str(e))

    threads = [threading.Thread(target=append, args=(s, w)) for s, w in ((a, "a"), (b, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []  # a shared chain refused about half of these (they raced for each seq)
    assert a.records.audit_entries("domain") == [f'{{"seq": {i}, "by": "a"}}' for i in range(1, 11)]
    assert b.records.audit_entries("domain") == [f'{{"seq": {i}, "by": "b"}}' for i in range(1, 11)]
    with pytest.raises(AlreadyExistsError):
        a.records.append_audit("domain", 5, "{}")  # an entry is never overwritten
    # node-a's chain outlives node-a: a new store of node-a (an empty disk) reads it from etcd
    pool_id = bytes.fromhex(a.view.layout.prefix.removeprefix(b"/sdquorum/").rstrip(b"/").decode())
    again = PoolNodeStore(
        cluster.config("node-a"),
        pool_id,
        tmp_path / "again",
        SEALING_A,
        "node-a",
    )
    try:
        assert again.records.audit_entries("domain") == a.records.audit_entries("domain")
    finally:
        again.close()


def test_a_rotation_is_seen_by_every_member_and_two_rotations_of_one_epoch_one_wins(members: Members) -> None:
    a, b = members()
    domain = _activate(a, b)
    results: list[str] = []
    go = threading.Barrier(2)

    def rotate(store: PoolNodeStore, who: str) -> None:
        go.wait()
        try:
            store.domain.rotate(
                domain,
                DomainInfo(domain.domain_id, 2, 2, 3),
                f"epoch-2-by-{who}".encode(),
                RetiredEpoch(1, bytes(32), 9),
            )
            results.append(who)
        except (AlreadyExistsError, StateError):
            results.append("refused")

    threads = [threading.Thread(target=rotate, args=(s, w)) for s, w in ((a, "a"), (b, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and results.count("refused") == 1
    winner = next(r for r in results if r != "refused")
    for s in (a, b):
        _wait(lambda s=s: s.domain.sd_file() == f"epoch-2-by-{winner}".encode())  # type: ignore[misc]
        loaded = s.domain.load_domain()
        assert loaded is not None and loaded[1].epoch == 2 and loaded[0] == domain
        assert [r.epoch for r in s.records.retired_epochs()] == [1]


def test_a_grant_applies_only_while_the_nodes_permission_stands(members: Members) -> None:
    """A member seals the domain to a joiner only in a transaction that finds the joiner's
    permission as the member read it: with none, or one an admin withdrew on another member just
    before (seen by this member's cache yet or not), nothing is granted and the request stays."""
    a, b = members()
    _activate(a, b)
    request, sha = b"node-c's signed request", hashlib.sha256(b"node-c's signed request").digest()
    a.pool.put_pool_row("joins", "node-c", request)
    with pytest.raises(StateError, match="not allowed to join"):
        a.pool.grant_join("node-c", request, sha, b"grant")
    a.pool.put_pool_row("allowed", "node-c", b'{"by": "admin"}')
    _wait(lambda: b.pool.pool_row("allowed", "node-c") is not None)
    b.pool.delete_pool_row("allowed", "node-c")  # the admin's removal, on the other member
    with pytest.raises(StateError):
        a.pool.grant_join("node-c", request, sha, b"grant")
    assert a.pool.pool_row("grants", "node-c") is None and a.pool.served() == []
    assert a.pool.pool_row("joins", "node-c") == request
    a.pool.put_pool_row("allowed", "node-c", b'{"by": "admin"}')  # allowed again: now it is granted
    a.pool.grant_join("node-c", request, sha, b"grant")
    assert a.pool.pool_row("grants", "node-c") == b"grant" and a.pool.served() == [sha]


def test_a_decision_read_inside_a_batch_holds_at_its_commit(members: Members) -> None:
    """A key change decides on the row it reads inside its batch (the owner, deleted or not): that
    read is a condition of the transaction. Another member purging the key and making one of the
    same name for another owner in between voids it (ConflictError, nothing written; the data plane
    decides again). The previous code sent the write with the later row as its condition: an app
    could delete another app's key."""
    a, b = members()
    _activate(a, b)
    a.keys.put_key(DEK, StoredKey("k", AES, b"pub", 100, "app/alice"), b"alice")
    _wait(lambda: b.keys.find_key("k") is not None)
    with pytest.raises(ConflictError), a.batch():
        assert a.keys.find_key("k", settled=True).owner == "app/alice"  # type: ignore[union-attr]
        b.keys.mark_deleted("k", 500)  # meanwhile, on the other member
        b.keys.purge_key("k")
        b.keys.put_key(DEK, StoredKey("k", AES, b"pub", 900, "app/bob"), b"bob")
        _wait(lambda: (a.keys.find_key("k") or StoredKey("", 0, b"", 0, "")).owner == "app/bob")
        a.keys.mark_deleted("k", 600)
    assert b.keys.find_key("k") == StoredKey("k", AES, b"pub", 900, "app/bob")  # bob's key untouched


class _OtherMemberFirst(EtcdClient):
    """Before this member's first custody write is sent, ``first`` runs (another member's write
    lands in between, while this member's watch is held up: its cache is behind at the commit)."""

    first: Callable[[], None] | None = None

    async def commit(self, ops: Any, *, unless_changed: Any = ()) -> int | None:
        step, _OtherMemberFirst.first = _OtherMemberFirst.first, None
        if step is not None and any(b"/seen/" in op.key for op in ops):
            step()
        return await super().commit(ops, unless_changed=unless_changed)


def test_a_custody_write_is_not_refused_for_a_key_deleted_elsewhere_meanwhile(
    cluster: EtcdCluster, tmp_path: Path
) -> None:
    """A key's first delete on node-b moves the custody head (its dead set) between node-a's
    reading and its commit of a custody row: node-a's transaction is refused on the head alone, the
    rows it decided on unchanged, so it is sent again on the new head and applies (the previous
    code refused it: "changed the same rows at the same time", a ceremony ended on it)."""
    pool_id = secrets.token_bytes(8)
    a = PoolNodeStore(
        cluster.config("node-a"),
        pool_id,
        tmp_path / "a",
        SEALING_A,
        "node-a",
        client_factory=_OtherMemberFirst,
    )
    b = PoolNodeStore(cluster.config("node-b"), pool_id, tmp_path / "b", SEALING_B, "node-b")
    try:
        domain = _activate(a, b)
        b.keys.put_key(DEK, StoredKey("k", AES, b"pub", 100, "app"), b"p")
        _OtherMemberFirst.first = lambda: b.keys.mark_deleted("k", 500)
        a.domain.note_epoch(domain.domain_id, 2)
        assert _OtherMemberFirst.first is None  # it ran: the head moved under node-a's write
        assert b.keys.find_key("k").deleted_at == 500  # type: ignore[union-attr]
        _wait(lambda: b.domain.highest_epoch(domain.domain_id) == 2)
    finally:
        a.close()
        b.close()


def test_a_node_of_another_domain_cannot_take_the_pool(members: Members) -> None:
    a, b = members()
    _activate(a, b)
    other = sdfile.new_domain_secrets(os.urandom, admins=["admin"])
    with pytest.raises(StateError, match="another security domain"):
        b.domain.activate(other, DomainInfo(other.domain_id, 1, 2, 3), "ACTIVATED", b"other-sd")
    assert a.domain.sd_file() == b"signed-sd-file-epoch-1"


def test_a_joined_member_without_the_secrets_has_no_domain(members: Members, tmp_path: Path) -> None:
    a, b = members()
    domain = sdfile.new_domain_secrets(os.urandom, admins=["admin"])
    a.domain.activate(domain, DomainInfo(domain.domain_id, 1, 2, 3), "ACTIVATED", b"sd")
    _wait(lambda: b.domain.sd_file() == b"sd")
    assert (
        b.domain.load_domain() is None and b.domain.state() is None
    )  # it sees the pool, holds nothing of it


async def _dump(cluster: EtcdCluster) -> list[bytes]:
    async with EtcdClient(cluster.config("root")) as c:
        kvs, _ = await c.get_prefix(b"/sdquorum/")
    return [kv.key + b"=" + kv.value for kv in kvs]


def test_etcd_never_holds_a_secret_in_the_clear(
    members: Members, cluster: EtcdCluster, tmp_path: Path
) -> None:
    a, b = members()
    domain = _activate(a, b)
    private = secrets.token_bytes(32)
    a.keys.put_key(DEK, StoredKey("secret-key", AES, b"pub", 1, "app"), private)
    everything = b"\n".join(asyncio.run(_dump(cluster)))
    for secret in (
        private,
        DEK,
        SEALING_A,
        SEALING_B,
        domain.data_encryption_key,
        domain.signing_key,
        domain.backup_key,
    ):
        assert secret not in everything and secret.hex().encode() not in everything
    assert (
        domain.data_encryption_key.hex() not in (tmp_path / "node-a" / LOCAL_FILE).read_text()
    )  # sealed on disk too
    assert (tmp_path / "node-a" / LOCAL_FILE).stat().st_mode & 0o077 == 0


def _settings(tmp_path: Path, **env: str) -> NodeSettings:
    base = {
        "SDQUORUM_NODE_ID": "node-a",
        "SDQUORUM_NODE_DATA_DIR": str(tmp_path / "data"),
        "SDQUORUM_NODE_TLS_CERT": "t.pem",
        "SDQUORUM_NODE_TLS_KEY": "t.key",
        "SDQUORUM_NODE_TLS_CA": "ca.pem",
        "SDQUORUM_NODE_ATTESTATION_CERT": "a.pem",
        "SDQUORUM_NODE_ATTESTATION_KEY": "a.key",
    }
    return NodeSettings.load(argparse.Namespace(config=None), environ={**base, **env})


def test_pool_settings_are_checked_with_one_line_errors(tmp_path: Path) -> None:
    assert _settings(tmp_path).pool_etcd is None  # no pool: a node standing alone
    with pytest.raises(UsageError, match="--pool-etcd-key, --pool-etcd-ca, --pool-attestation-root is not"):
        _settings(tmp_path, SDQUORUM_NODE_POOL_ETCD="127.0.0.1:2379", SDQUORUM_NODE_POOL_ETCD_CERT="c.pem")
    with pytest.raises(UsageError, match=r"pool\.max_staleness"):
        _settings(tmp_path, SDQUORUM_NODE_POOL_MAX_STALENESS="soon")
    with pytest.raises(UsageError, match=r"pool\.etcd_endpoints"):
        _settings(
            tmp_path,
            SDQUORUM_NODE_POOL_ETCD="etcd-0",
            SDQUORUM_NODE_POOL_ETCD_CERT="c",
            SDQUORUM_NODE_POOL_ETCD_KEY="k",
            SDQUORUM_NODE_POOL_ETCD_CA="ca",
            SDQUORUM_NODE_POOL_ATTESTATION_ROOT="root",
        )


def test_hsm_node_run_with_pool_settings_opens_a_pool_member(cluster: EtcdCluster, tmp_path: Path) -> None:
    pair = cluster.client("node-a")
    cfg = _settings(
        tmp_path,
        SDQUORUM_NODE_POOL_ETCD=",".join(cluster.endpoints),
        SDQUORUM_NODE_POOL_ETCD_CERT=str(pair.cert),
        SDQUORUM_NODE_POOL_ETCD_KEY=str(pair.key),
        SDQUORUM_NODE_POOL_ETCD_CA=str(cluster.ca),
        SDQUORUM_NODE_POOL_ATTESTATION_ROOT=str(cluster.ca),
        SDQUORUM_NODE_POOL_NAME=f"p-{secrets.token_hex(4)}",
        SDQUORUM_NODE_POOL_MAX_STALENESS="3",
    )
    store = _open_store(cfg, SEALING_A)
    try:
        assert isinstance(store, PoolNodeStore)
        store.keys.put_key(DEK, StoredKey("via-settings", AES, b"pub", 1, "app"), b"p")
        assert store.keys.get_key(DEK, "via-settings")[1] == b"p"
    finally:
        store.close()


@pytest.mark.parametrize("user", ["node-b", "root"])
def test_a_node_run_with_another_users_etcd_certificate_is_refused(
    cluster: EtcdCluster, tmp_path: Path, user: str
) -> None:
    """A node id's etcd user is the one `sdctl pool remove` deletes: a node run with another
    member's (or root's) pair would keep writing after its removal, so it does not start."""
    pair = cluster.client(user)
    cfg = _settings(
        tmp_path,
        SDQUORUM_NODE_POOL_ETCD=",".join(cluster.endpoints),
        SDQUORUM_NODE_POOL_ETCD_CERT=str(pair.cert),
        SDQUORUM_NODE_POOL_ETCD_KEY=str(pair.key),
        SDQUORUM_NODE_POOL_ETCD_CA=str(cluster.ca),
        SDQUORUM_NODE_POOL_ATTESTATION_ROOT=str(cluster.ca),
    )
    expected = "node.node-b" if user == "node-b" else "root"
    with pytest.raises(UsageError, match=rf"is etcd user '{expected}', not 'node.node-a' of this node"):
        _open_store(cfg, SEALING_A)


def test_losing_etcd_stops_serving_after_max_staleness_and_all_resume(
    members: Members, cluster: EtcdCluster
) -> None:
    a, b = members(max_staleness=2.0, attempt_timeout=0.5, call_timeout=1.5, progress_interval=0.3)
    _activate(a, b)
    a.keys.put_key(DEK, StoredKey("before", AES, b"pub", 1, "app"), b"p")
    _wait(lambda: b.keys.find_key("before") is not None)
    names = [m.name for m in cluster.members]
    cluster.stop(names[0])  # one etcd member lost: nothing is interrupted
    a.keys.put_key(DEK, StoredKey("with-two", AES, b"pub", 1, "app"), b"p")
    _wait(lambda: b.keys.find_key("with-two") is not None)
    cluster.stop(names[1])  # two lost: no quorum
    lost = time.monotonic()
    with pytest.raises(TransportError):
        a.keys.put_key(DEK, StoredKey("no-quorum", AES, b"pub", 1, "app"), b"p")
    _wait(lambda: _refuses(b), timeout=10.0)
    stale = time.monotonic() - lost
    print(f"\nno quorum: member refused reads {stale:.2f} s after the loss (max_staleness 2 s)")
    assert 1.0 <= stale <= 2.0 + 1.0  # within max_staleness of the last proof, plus a heartbeat
    with pytest.raises(TransportError, match=r"pool\.max_staleness"):
        b.keys.get_key(DEK, "before")
    cluster.restart(names[0])
    cluster.restart(names[1])
    cluster.wait_healthy()
    back = _wait(lambda: not _refuses(a) and not _refuses(b), timeout=15.0)
    print(f"etcd back: members serving again after {back:.2f} s")
    a.keys.put_key(DEK, StoredKey("after", AES, b"pub", 1, "app"), b"p")
    _wait(lambda: b.keys.find_key("after") is not None)
    assert b.keys.get_key(DEK, "before")[1] == b"p"


def _refuses(store: PoolNodeStore) -> bool:
    try:
        store.keys.find_key("before")
    except TransportError:
        return True
    return False


def test_a_closed_member_starts_no_task_on_its_stopped_loop(members: Members) -> None:
    """A call made while or after a member closes is refused at once: a task started on the loop
    being stopped would outlive it (its pending reads surfaced later as "Event loop is closed")."""
    a, _ = members()
    a.close()
    with pytest.raises(StateError, match="closed"):
        a.view.run(asyncio.sleep(0))
    with pytest.raises(StateError, match="closed"):
        a.keys.find_key("k")
