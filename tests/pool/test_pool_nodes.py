"""Three hsm-node processes in one pool on a real 3-member etcd cluster (issue 16's "Must show").

node-a is activated (the domain made by an admin's download); an admin allows node-b, which joins
with no custodian and then serves node-a's keys; a drill on node-b stops node-a starting a second
ceremony; node-c, never allowed, stays PROVISIONED; a key
deleted on one member is refused by the other; node-a is SIGKILLed and node-b goes on serving every
acknowledged key, a client given both fails over for idempotent calls only; node-b is removed and then serves nothing. Members report the pool in GetStatus.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import grpc
import pytest
from etcd_cluster import EtcdCluster, running_cluster
from harness import NAMES, NodeProcess, certs_of, tls

from sdctl.pkifiles import init_pki
from sdquorum.keys import SoftwareWrappingKey
from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2 as pb
from sdquorum_rpc.client import NodeClient

pytestmark = pytest.mark.slow
NODES = ("node-a", "node-b", "node-c")


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    with running_cluster(tmp_path_factory.mktemp("etcd"), node_ids=NODES) as c:
        yield c


@pytest.fixture(scope="module")
def pool_pki(tmp_path_factory: pytest.TempPathFactory, now: datetime) -> Path:
    d = tmp_path_factory.mktemp("pki") / "pki"
    init_pki(d, list(NODES), NAMES, now)
    return d


def _member(etcd: EtcdCluster, pki: Path, tmp: Path, node_id: str, pool: str) -> NodeProcess:
    pair = etcd.client(node_id)
    args = [
        "--pool-etcd", ",".join(etcd.endpoints), "--pool-etcd-cert", str(pair.cert),
        "--pool-etcd-key", str(pair.key), "--pool-etcd-ca", str(etcd.ca), "--pool-name", pool,
        "--pool-attestation-root", str(pki / "attestation-root.pem"), "--crypto-workers", "0",
    ]  # fmt: skip
    node = NodeProcess(pki, tmp / node_id / "data", node_id=node_id, extra_args=args)
    node.start()
    return node


async def _status(node: NodeProcess) -> pb.NodeStatus:
    async with node.client() as c, c.errors():
        return await c.node.GetStatus(pb.GetStatusRequest())


async def _until(check, timeout: float = 20.0) -> float:  # type: ignore[no-untyped-def]
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > timeout:
            raise AssertionError("not within the time allowed")
        await asyncio.sleep(0.05)
    return time.monotonic() - start


async def _encrypt(node: NodeProcess, name: str) -> bytes:
    async with node.client() as c, c.errors():
        r = await c.keys.Encrypt(pb.EncryptRequest(name=name, plaintext=b"hello " + name.encode()))
    return bytes(r.ciphertext)


async def _decrypt(node: NodeProcess, name: str, ct: bytes) -> bytes:
    async with node.client() as c, c.errors():
        return bytes((await c.keys.Decrypt(pb.DecryptRequest(name=name, ciphertext=ct))).plaintext)


async def test_a_pool_of_three_processes_join_share_keys_and_survive_a_sigkill(
    etcd: EtcdCluster, pool_pki: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    procs = []
    try:
        a = _member(etcd, pool_pki, tmp_path, "node-a", "e2e")
        procs.append(a)
        async with a.client() as c, c.errors():
            async for _ in c.admin.DownloadSecurityDomain(
                pb.DownloadRequest(custodian_certificates=certs_of(wrapping_keys[:3]), quorum=2)
            ):
                pass
            for i in range(5):
                await c.keys.CreateKey(pb.CreateKeyRequest(name=f"k{i}", type=pb.AES256_GCM))
            await c.admin.AllowPoolMember(pb.PoolMemberRequest(node_id="node-b"))
        b = _member(etcd, pool_pki, tmp_path, "node-b", "e2e")
        procs.append(b)
        c_node = _member(etcd, pool_pki, tmp_path, "node-c", "e2e")  # never allowed
        procs.append(c_node)

        async def b_active() -> bool:
            return (await _status(b)).state == pb.ACTIVATED

        joined = await _until(b_active)
        print(f"\nnode-b joined and serves {joined:.2f} s after its start")
        assert (await _status(b)).key_count == 5
        async with b.client() as cb, cb.errors():
            ps = await cb.admin.GetPoolStatus(pb.GetStatusRequest())
        assert ps.name == "e2e" and set(ps.members) == {"node-a", "node-b"} and ps.staleness_seconds < 5
        # a key made on node-a works on node-b, and the other way round
        assert await _decrypt(b, "k1", await _encrypt(a, "k1")) == b"hello k1"
        async with b.client() as cb, cb.errors():
            await cb.keys.CreateKey(pb.CreateKeyRequest(name="from-b", type=pb.AES256_GCM))
        assert await _decrypt(a, "from-b", await _encrypt(b, "from-b")) == b"hello from-b"

        # keys created at once on both members: every create succeeds (each audits to its own chain)
        async def create_on(node: NodeProcess, name: str) -> None:
            async with node.client() as cn, cn.errors():
                await cn.keys.CreateKey(pb.CreateKeyRequest(name=name, type=pb.AES256_GCM))

        await asyncio.gather(*(create_on(a if i % 2 else b, f"burst-{i}") for i in range(20)))
        assert (await _status(a)).key_count == 26
        # one ceremony at a time pool-wide: a drill runs on node-b, so node-a refuses to start one
        async with b.client() as cb, cb.errors():
            await cb.admin.StartDrill(pb.StartDrillRequest(reason="quarterly drill", ttl_seconds=60))
        async with a.client() as ca:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await ca.admin.StartDrill(pb.StartDrillRequest(reason="a second drill", ttl_seconds=60))
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "a ceremony is running in this pool on node node-b" in (refused.value.details() or "")
        # a key deleted on one member is refused by the other at once
        async with a.client() as ca, ca.errors():
            await ca.keys.DeleteKey(pb.DeleteKeyRequest(name="k4"))
        with pytest.raises(Exception, match="k4"):
            await _encrypt(b, "k4")
        # node-c was never allowed: it stays PROVISIONED
        assert (await _status(c_node)).state == pb.PROVISIONED
        # SIGKILL node-a: node-b serves every acknowledged key
        a.kill()
        for name in ("k0", "k1", "k2", "k3", "from-b"):
            assert await _decrypt(b, name, await _encrypt(b, name)) == b"hello " + name.encode()
        # a client given both members fails over for what is idempotent, and only for that
        both = NodeClient(f"{a.target},{b.target}", tls(pool_pki, "admin"))
        async with both:
            with pytest.raises(grpc.aio.AioRpcError) as down:  # CreateKey's turn is node-a: not retried
                await both.keys.CreateKey(pb.CreateKeyRequest(name="maybe", type=pb.AES256_GCM))
            assert down.value.code() == grpc.StatusCode.UNAVAILABLE
            for _ in range(4):  # round-robin: every other call starts at the dead node-a
                ct = (await both.keys.Encrypt(pb.EncryptRequest(name="k2", plaintext=b"x"))).ciphertext
                assert (
                    await both.keys.Decrypt(pb.DecryptRequest(name="k2", ciphertext=ct))
                ).plaintext == b"x"
        assert (await _status(b)).key_count == 25  # k0-k3, from-b, 20 bursts: "maybe" was not created
        # node-b removed (by an admin on node-c? it is not a member: node-b removes itself here)
        async with b.client() as cb, cb.errors():
            await cb.admin.RemovePoolMember(pb.PoolMemberRequest(node_id="node-b"))

        async def b_refuses() -> bool:
            try:
                await _encrypt(b, "k0")
            except grpc.aio.AioRpcError:
                return True
            except Exception:
                return True
            return False

        await _until(b_refuses, timeout=5)
    finally:
        for p in procs:
            p.kill()
