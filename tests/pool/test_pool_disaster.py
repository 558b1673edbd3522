"""The second disaster in a pool: every member is lost, etcd is intact. A new node recovers the
domain through the custodians (as a node standing alone does) and then has every key, from etcd,
with no backup restored. And a recovery on a pool member survives a burst of refused answers: they
are taken in transactions etcd accepts (hsm_node.answers.MAX_ANSWERS_PER_COMMIT).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest
from etcd_cluster import EtcdCluster, running_cluster
from harness import NAMES, Clock, Cluster, certs_of, load_attestation, pki_dir, tls

from hsm_node.node import Node, NodeConfig
from hsm_node.pool.etcd import Delete, EtcdClient, EtcdConfig, Put, Unchanged
from hsm_node.pool.store import PoolNodeStore
from hsm_node.server import serve
from sdquorum.errors import SdquorumError
from sdquorum.keys import SoftwareWrappingKey
from sdquorum.pki import Role
from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2 as pb

pytestmark = pytest.mark.slow
__all__ = ["pki_dir"]  # the harness fixture, used below


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    with running_cluster(tmp_path_factory.mktemp("etcd")) as c:
        yield c


@contextlib.asynccontextmanager
async def pool_node(
    etcd: EtcdCluster, pki: Path, data_dir: Path, node_id: str, pool_id: bytes = b"disaster", **store_kw: Any
) -> AsyncIterator[Cluster]:
    """A node served in this process whose store is the pool's (the harness's cluster, pooled)."""
    clock = Clock()
    key, cert_der = load_attestation(pki, node_id)
    store = PoolNodeStore(etcd.config(node_id), pool_id, data_dir, os.urandom(32), node_id, **store_kw)
    config = NodeConfig(node_id, "127.0.0.1:0", data_dir, key, cert_der)
    node = Node(config, store, clock=clock)
    server = await serve(node, "127.0.0.1:0", tls(pki, "node"))
    cluster = Cluster(pki, data_dir, node, server, clock)
    try:
        yield cluster
    finally:
        await cluster.stop_agents()
        cluster.custodians.stop()
        await server.stop(grace=0.1)
        store.close()


async def test_all_members_lost_etcd_intact_a_new_node_recovers_and_has_every_key(
    etcd: EtcdCluster, pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    async with pool_node(etcd, pki_dir, tmp_path / "a", "node-a") as a:
        sd = await a.download(certs_of(wrapping_keys[:5]), quorum=3)
        async with a.client("app") as c, c.errors():
            for name in ("pay", "payroll"):
                await c.keys.CreateKey(pb.CreateKeyRequest(name=name, type=pb.AES256_GCM))
            ct = (
                await c.keys.Encrypt(pb.EncryptRequest(name="pay", plaintext=b"hello", aad=b"x"))
            ).ciphertext
    # node-a and its disk are gone; node-b is new: it sees the pool, holds nothing of it
    async with pool_node(etcd, pki_dir, tmp_path / "b", "node-b") as b:
        assert b.node.state == "PROVISIONED"
        for name, key in zip(NAMES[:5], wrapping_keys[:5], strict=True):
            b.start_agent(name, key, tmp_path)
        await b.start_recovery(sd, reason="both datacentres lost")
        last = await b.wait_session()
        assert last.state == pb.COMPLETED, last.message
        assert b.node.state == "ACTIVATED"
        async with b.client("app") as c, c.errors():  # every key is back: no backup was restored
            assert (
                await c.keys.Decrypt(pb.DecryptRequest(name="pay", ciphertext=ct, aad=b"x"))
            ).plaintext == b"hello"
            listed = await c.keys.ListKeys(pb.ListKeysRequest())
        assert sorted(k.name for k in listed.keys) == ["pay", "payroll"]


class CountingClient(EtcdClient):
    """Records the operations and conditions of every transaction this member sends."""

    sizes: ClassVar[list[int]] = []

    def __init__(self, config: EtcdConfig) -> None:
        super().__init__(config)
        CountingClient.sizes = []

    async def commit(
        self, ops: Sequence[Put | Delete], *, unless_changed: Sequence[Unchanged] = ()
    ) -> int | None:
        CountingClient.sizes.append(len(ops) + len(unless_changed))
        return await super().commit(ops, unless_changed=unless_changed)


async def test_a_burst_of_refused_answers_does_not_end_a_recovery_on_a_pool_member(
    etcd: EtcdCluster, pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    """100 refused answers at once each write an audit entry (a create: 2 operations): in one
    transaction that is over etcd's 128 operations, the batch failed and the session ended (the
    previous code). Taken 32 at a time, each is refused alone and the custodians then recover."""
    async with pool_node(etcd, pki_dir, tmp_path / "a", "node-a", b"burst") as a:
        sd = await a.download(certs_of(wrapping_keys[:5]), quorum=3)
    async with pool_node(
        etcd, pki_dir, tmp_path / "b", "node-b", b"burst", client_factory=CountingClient
    ) as b:
        await b.start_recovery(sd, reason="a burst of junk answers")
        junk = [
            b.node.answers.submit_answer(f"junk-{i}", b"junk", Role("custodian", NAMES[0]), kind="recovery")
            for i in range(100)
        ]
        results = await asyncio.gather(*junk, return_exceptions=True)
        assert all(isinstance(r, SdquorumError) for r in results), {type(r) for r in results}
        for name, key in zip(NAMES[:3], wrapping_keys[:3], strict=True):
            b.start_agent(name, key, tmp_path)
        last = await b.wait_session()
        assert last.state == pb.COMPLETED, last.message
        assert b.node.state == "ACTIVATED"
        print(f"\nlargest transaction of the recovery: {max(CountingClient.sizes)} operations and conditions")
        assert max(CountingClient.sizes) <= 128
