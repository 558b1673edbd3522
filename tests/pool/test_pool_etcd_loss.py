"""Two hsm-node members while etcd members go: one lost interrupts nothing; two lost (no quorum)
refuse writes with one clear line and, after ``pool.max_staleness``, reads too; all resume when
etcd is back.
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
from harness import NAMES, NodeProcess, certs_of

from sdctl.pkifiles import init_pki
from sdquorum.keys import SoftwareWrappingKey
from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2 as pb

pytestmark = pytest.mark.slow
NODES = ("node-a", "node-b")
STALENESS = 2.0


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdCluster]:
    with running_cluster(tmp_path / "etcd", node_ids=NODES) as c:
        yield c


def _member(etcd: EtcdCluster, pki: Path, tmp: Path, node_id: str) -> NodeProcess:
    pair = etcd.client(node_id)
    args = [
        "--pool-etcd", ",".join(etcd.endpoints), "--pool-etcd-cert", str(pair.cert),
        "--pool-etcd-key", str(pair.key), "--pool-etcd-ca", str(etcd.ca), "--pool-name", "loss",
        "--pool-attestation-root", str(pki / "attestation-root.pem"), "--crypto-workers", "0",
        "--pool-max-staleness", str(STALENESS),
    ]  # fmt: skip
    node = NodeProcess(pki, tmp / node_id / "data", node_id=node_id, extra_args=args)
    node.start()
    return node


async def _encrypt(node: NodeProcess) -> None:
    async with node.client() as c:
        await c.keys.Encrypt(pb.EncryptRequest(name="k", plaintext=b"x"), timeout=15)


async def _create(node: NodeProcess, name: str) -> None:
    async with node.client() as c:
        await c.keys.CreateKey(pb.CreateKeyRequest(name=name, type=pb.AES256_GCM), timeout=15)


async def test_losing_one_then_two_etcd_members_and_getting_them_back(
    etcd: EtcdCluster, tmp_path: Path, now: datetime, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    pki = tmp_path / "pki"
    init_pki(pki, list(NODES), NAMES, now)
    a = _member(etcd, pki, tmp_path, "node-a")
    b = None
    try:
        async with a.client() as c, c.errors():
            async for _ in c.admin.DownloadSecurityDomain(
                pb.DownloadRequest(custodian_certificates=certs_of(wrapping_keys[:3]), quorum=2)
            ):
                pass
            await c.keys.CreateKey(pb.CreateKeyRequest(name="k", type=pb.AES256_GCM))
            await c.admin.AllowPoolMember(pb.PoolMemberRequest(node_id="node-b"))
        b = _member(etcd, pki, tmp_path, "node-b")
        deadline = time.monotonic() + 20
        while True:
            try:
                await _encrypt(b)
                break
            except grpc.aio.AioRpcError:
                assert time.monotonic() < deadline, "node-b did not join"
                await asyncio.sleep(0.1)
        names = [m.name for m in etcd.members]
        etcd.stop(names[0])  # one etcd member lost: nothing is interrupted
        for node in (a, b):
            await _encrypt(node)
        await _create(a, "with-two-etcd")
        await _encrypt(b)
        etcd.stop(names[1])  # two lost: no quorum
        lost = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _create(a, "no-quorum")
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        detail = refused.value.details() or ""
        assert "etcd cluster did not confirm the write" in detail and "127.0.0.1" not in detail  # no endpoint
        print(f"\nno quorum: a create refused in {time.monotonic() - lost:.2f} s: {refused.value.details()}")
        while time.monotonic() - lost < STALENESS + 3:
            try:
                await _encrypt(b)
            except grpc.aio.AioRpcError as e:
                assert e.code() == grpc.StatusCode.UNAVAILABLE
                assert "has not heard from etcd" in (e.details() or "")
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("node-b still served reads long after max_staleness")
        print(f"node-b stopped serving {time.monotonic() - lost:.2f} s after the quorum went")
        etcd.restart(names[0])
        etcd.restart(names[1])
        await asyncio.to_thread(etcd.wait_healthy)
        back = time.monotonic()
        while True:
            try:
                await _encrypt(b)
                await _create(a, "after")
                break
            except grpc.aio.AioRpcError:
                assert time.monotonic() - back < 15, "the members did not resume"
                await asyncio.sleep(0.1)
        print(f"etcd back: both members serve again after {time.monotonic() - back:.2f} s")
    finally:
        for node in (a, b):
            if node is not None:
                node.kill()
