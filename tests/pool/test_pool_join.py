"""Joining a pool with no custodian, through etcd (hsm_node/pool/member.py), on a real etcd cluster.

Member node-a holds the domain (as after its activation ceremony); node-b, allowed by an admin,
joins and then uses node-a's keys; node-c, not allowed, gets nothing; node-b, removed, serves
nothing and, its etcd user deleted, can no longer write. The protocol's own refusals (another root,
another id, replay, expiry, another domain) are tests/core/test_pooljoin.py.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from etcd_cluster import EtcdCluster, running_cluster
from support import wait_for

from hsm_node.keyops import KeyType
from hsm_node.pool.etcd import Delete, EtcdClient
from hsm_node.pool.member import PoolMember, allow, remove
from hsm_node.pool.service import PoolService
from hsm_node.pool.store import PoolNodeStore
from hsm_node.store import DomainInfo, StoredKey
from sdquorum import etcd_pki, pki, sdfile
from sdquorum.errors import PermissionDeniedError, StateError
from sdquorum.review import RetiredEpoch
from tests.conftest import load_node_attestation

pytestmark = pytest.mark.slow
AES = int(KeyType.AES256_GCM)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    with running_cluster(tmp_path_factory.mktemp("etcd"), node_ids=("node-a", "node-b", "node-c")) as c:
        yield c


def _member(
    cluster: EtcdCluster, pool_id: bytes, tmp_path: Path, node_id: str, root: pki.IssuedCert, now: datetime
) -> PoolMember:
    store = PoolNodeStore(cluster.config(node_id), pool_id, tmp_path / node_id, os.urandom(32), node_id)
    att = load_node_attestation(pki.issue_attestation_cert(root, node_id, now))
    return PoolMember(
        store, node_id, att.key, att.certificate_der, root.cert_pem, clock=lambda: now.timestamp()
    )


async def test_an_allowed_node_joins_with_no_custodian_and_serves_the_pools_keys(
    cluster: EtcdCluster, tmp_path: Path, attestation_root: pki.IssuedCert, now: datetime
) -> None:
    pool_id = secrets.token_bytes(8)
    a, b, c = (
        _member(cluster, pool_id, tmp_path, n, attestation_root, now) for n in ("node-a", "node-b", "node-c")
    )
    try:
        domain = sdfile.new_domain_secrets(os.urandom, admins=["admin"])
        a.store.domain.activate(
            domain, DomainInfo(domain.domain_id, 1, 2, 3), "ACTIVATED", b"sd-file-epoch-1"
        )
        a.register()
        a.store.keys.put_key(
            domain.data_encryption_key, StoredKey("shared", AES, b"pub", 1, "app"), b"private"
        )
        allow(a.store, "node-b", "admin", int(now.timestamp()))
        server = asyncio.ensure_future(a.serve_joins(lambda: domain, interval=0.02))
        loop = asyncio.get_running_loop()
        start = loop.time()
        joined = await b.join(timeout=10)
        print(f"\njoin took {(loop.time() - start) * 1000:.0f} ms")
        assert joined == domain
        loaded = b.store.domain.load_domain()
        assert loaded is not None and loaded[0] == domain and b.store.domain.state() == "ACTIVATED"
        assert b.store.keys.get_key(loaded[0].data_encryption_key, "shared")[1] == b"private"
        # node-b's membership reaches node-a's view through its etcd watch: wait for it, not a race
        await wait_for(lambda: a.active_members() == {"node-a", "node-b"}, 10, what="node-a sees node-b")
        # node-c was never allowed: no member seals anything to it
        with pytest.raises(StateError, match="sdctl pool allow node-c"):
            await c.join(timeout=1.0)
        assert c.store.domain.load_domain() is None
        # nor when node-c, with an etcd certificate and its attestation key, writes its own
        # permission with etcd alone: the members refuse a permission no admin gave
        async with EtcdClient(cluster.config("node-c")) as own:
            await own.put(a.store.view.sub("allowed", "node-c"), b'{"by": "admin", "at": 1}')
        with pytest.raises(StateError, match="sdctl pool allow node-c"):
            await c.join(timeout=1.0)
        assert c.store.domain.load_domain() is None
        async with EtcdClient(cluster.config("root")) as root_client:  # put right for what follows
            put_right = await root_client.commit([Delete(a.store.view.sub("allowed", "node-c"))])
        assert put_right is not None and await asyncio.to_thread(a.store.view.wait_for, put_right)
        # the removed member serves nothing, and its etcd user gone, it cannot write
        remove(a.store, "node-b", "admin", int(now.timestamp()))
        await asyncio.sleep(0.2)
        with pytest.raises(PermissionDeniedError, match="removed from the pool"):
            b.check_standing()
        async with EtcdClient(cluster.config("root")) as root:
            await root.remove_member_user(etcd_pki.etcd_user("node-b"))
        with pytest.raises(PermissionDeniedError):
            b.store.keys.put_key(
                domain.data_encryption_key, StoredKey("from-removed", AES, b"pub", 1, "app"), b"x"
            )
        assert a.store.keys.find_key("from-removed") is None
        server.cancel()
    finally:
        for m in (a, b, c):
            m.store.close()


class _Life:
    """The node's lifecycle as the pool service sees it: reload reads the store."""

    def __init__(self, store: PoolNodeStore) -> None:
        self.store, self.reloads = store, 0
        self.reload()

    def reload(self) -> None:
        loaded = self.store.domain.load_domain()
        self.domain, self.info = (loaded[0], loaded[1]) if loaded else (None, None)
        self.reloads += 1


async def test_a_rotation_on_one_member_is_taken_by_the_others_and_ceremonies_lock_pool_wide(
    cluster: EtcdCluster, tmp_path: Path, attestation_root: pki.IssuedCert, now: datetime
) -> None:
    pool_id = secrets.token_bytes(8)
    a, b = (
        _member(cluster, pool_id, tmp_path, n, attestation_root, now) for n in ("node-a", "node-c")
    )  # node-b's etcd user is gone
    try:
        domain = sdfile.new_domain_secrets(os.urandom, admins=["admin"])
        for m in (a, b):  # both hold the domain (c as after a join)
            m.store.domain.activate(domain, DomainInfo(domain.domain_id, 1, 2, 3), "ACTIVATED", b"sd-epoch-1")
        life_b = _Life(b.store)
        service_b = PoolService("p", b, life_b, lambda *args: None, lambda: int(now.timestamp()))
        a.store.domain.rotate(
            domain, DomainInfo(domain.domain_id, 2, 2, 3), b"sd-epoch-2", RetiredEpoch(1, bytes(32), 5)
        )
        await asyncio.sleep(0.1)
        service_b.step()
        assert (
            life_b.info is not None and life_b.info.epoch == 2 and b.store.domain.sd_file() == b"sd-epoch-2"
        )
        # the ceremony lock: node-c's session holds it; node-a's is refused; freed when it ends
        b.store.pool.take_ceremony_lock("session-c", 30)
        with pytest.raises(StateError, match="running in this pool on node node-c"):
            a.store.pool.take_ceremony_lock("session-a", 30)
        b.store.pool.release_ceremony_lock("session-c")
        a.store.pool.take_ceremony_lock("session-a", 30)
        a.store.pool.release_ceremony_lock("session-a")
    finally:
        for m in (a, b):
            m.store.close()
