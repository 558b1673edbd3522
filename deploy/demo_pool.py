"""``python deploy/demo.py --pool``: an HSM pool on localhost, a member killed under load, a member joined.

Every server is a real process: a 3-member etcd cluster (Debian's ``etcd-server``, mutual TLS,
authentication on: tests/pool/etcd_cluster.py starts it) and ``hsm-node`` members. Steps: node-a is
activated (an admin's download; the custodians keep the SD file); an admin allows node-b, which
joins with no custodian; a client given both members creates keys and encrypts under load while
node-a is SIGKILLed; an admin allows node-c, which joins; node-c then has every key whose creation
was acknowledged. The admin steps run ``sdctl`` in this process.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NODES = ("node-a", "node-b", "node-c")
STEPS = 6


class PoolDemo:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.pki = root / "pki"
        self.t0 = time.monotonic()
        self.step_no = 0
        self.nodes: dict[str, Any] = {}

    def step(self, text: str) -> None:
        self.step_no += 1
        print(f"\n[{self.step_no}/{STEPS}] {text}  (t={time.monotonic() - self.t0:.1f}s)", flush=True)

    async def sdctl(self, node: str, *args: str) -> None:
        await asyncio.to_thread(self._sdctl, node, *args)  # sdctl runs a loop of its own

    def _sdctl(self, node: str, *args: str) -> None:
        from sdctl.cli import main

        target = self.nodes[node].target
        argv = ["--node", target, "--cert", str(self.pki / "admin.pem"), "--key", str(self.pki / "admin.key")]
        rc = main(
            [*argv, "--ca", str(self.pki / "ca.pem"), *args], out=lambda s: print(f"      {s}", flush=True)
        )
        if rc != 0:
            raise SystemExit(f"demo: 'sdctl {' '.join(args)}' failed with exit code {rc}")

    def start_member(self, etcd: Any, node_id: str) -> None:
        from harness import NodeProcess

        pair = etcd.client(node_id)
        args = [
            "--pool-etcd", ",".join(etcd.endpoints), "--pool-etcd-cert", str(pair.cert),
            "--pool-etcd-key", str(pair.key), "--pool-etcd-ca", str(etcd.ca), "--pool-name", "demo",
            "--pool-attestation-root", str(self.pki / "attestation-root.pem"), "--crypto-workers", "0",
        ]  # fmt: skip
        node = NodeProcess(self.pki, self.root / node_id / "data", node_id=node_id, extra_args=args)
        node.start()
        self.nodes[node_id] = node
        print(
            f"      {node_id} serves on {node.target} (pid {node.proc.pid}), a member of pool 'demo'",
            flush=True,
        )

    async def wait_active(self, node_id: str) -> float:
        from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2 as pb

        start = time.monotonic()
        while True:
            async with self.nodes[node_id].client() as c, c.errors():
                if (await c.node.GetStatus(pb.GetStatusRequest())).state == pb.ACTIVATED:
                    return time.monotonic() - start
            await asyncio.sleep(0.05)

    async def run(self) -> None:
        sys.path[:0] = [str(ROOT)]  # the packages before tests/ (it has a tests/coordinator)
        sys.path += [str(ROOT / "tests"), str(ROOT / "tests" / "pool")]
        from datetime import UTC, datetime

        from cryptography.hazmat.primitives import serialization
        from etcd_cluster import EtcdCluster
        from harness import tls

        from sdctl.pkifiles import init_pki
        from sdquorum import pki
        from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2 as pb
        from sdquorum_rpc.client import NodeClient

        self.step("a throw-away PKI and a 3-member etcd cluster (mutual TLS, authentication on)")
        now = datetime.now(UTC).replace(microsecond=0)
        init_pki(self.pki, list(NODES), ["alice", "bob", "carol"], now)
        certs = []
        for name in ("alice", "bob", "carol"):
            _, cert_pem = pki.make_wrapping_key(name, now, bits=2048)
            (self.root / f"{name}-wrap.pem").write_bytes(cert_pem)
            certs.append(pki.load_cert(cert_pem).public_bytes(serialization.Encoding.DER))
        with EtcdCluster(self.root / "etcd", node_ids=NODES) as etcd:
            await asyncio.to_thread(etcd.start)
            await etcd.enable_auth()
            print(f"      etcd members at {', '.join(etcd.endpoints)}", flush=True)
            try:
                await self._members(etcd, certs, pb, NodeClient, tls)
            finally:
                for node in self.nodes.values():
                    node.kill()

    async def _members(self, etcd: Any, certs: list[bytes], pb: Any, client_cls: Any, tls: Any) -> None:
        self.step("node-a starts in the pool and is activated (custodians alice, bob, carol; 2 of 3)")
        self.start_member(etcd, "node-a")
        async with self.nodes["node-a"].client() as c, c.errors():
            sd = b"".join(
                [
                    ch.data
                    async for ch in c.admin.DownloadSecurityDomain(
                        pb.DownloadRequest(custodian_certificates=certs, quorum=2)
                    )
                ]
            )
        (self.root / "sd.json").write_bytes(sd)
        print(f"      SD file ({len(sd)} bytes) for the custodians; node-a ACTIVATED", flush=True)

        self.step("an admin allows node-b; node-b joins with no custodian")
        await self.sdctl("node-a", "pool", "allow", "node-b")
        self.start_member(etcd, "node-b")
        print(f"      node-b ACTIVATED {await self.wait_active('node-b'):.2f}s after its start", flush=True)

        self.step("load through a client given both members; node-a is SIGKILLed half-way")
        acked: list[str] = []
        refused = 0
        both = f"{self.nodes['node-a'].target},{self.nodes['node-b'].target}"
        async with client_cls(both, tls(self.pki, "admin")) as c:
            for i in range(200):
                if i == 100:
                    self.nodes["node-a"].kill()
                    print("      kill -9 node-a", flush=True)
                try:
                    await c.keys.CreateKey(pb.CreateKeyRequest(name=f"key-{i}", type=pb.AES256_GCM))
                except Exception:  # a create that met the dead member: reported, never repeated
                    refused += 1
                    continue
                acked.append(f"key-{i}")
                await c.keys.Encrypt(pb.EncryptRequest(name=f"key-{i}", plaintext=b"payload"))
        print(
            f"      {len(acked)} creates acknowledged, {refused} refused (UNAVAILABLE, not retried)",
            flush=True,
        )

        self.step("an admin allows node-c (on node-b); node-c joins")
        await self.sdctl("node-b", "pool", "allow", "node-c")
        self.start_member(etcd, "node-c")
        print(f"      node-c ACTIVATED {await self.wait_active('node-c'):.2f}s after its start", flush=True)
        await self.sdctl("node-c", "status")

        self.step("node-c has every acknowledged key, and uses each")
        async with self.nodes["node-c"].client() as c, c.errors():
            listed = {k.name for k in (await c.keys.ListKeys(pb.ListKeysRequest())).keys}
            for name in acked:
                await c.keys.Encrypt(pb.EncryptRequest(name=name, plaintext=b"payload"))
        lost = [k for k in acked if k not in listed]
        if lost:
            raise SystemExit(f"demo: {len(lost)} acknowledged keys are missing on node-c: {lost[:5]}")
        print(f"      all {len(acked)} acknowledged keys are on node-c: nothing lost", flush=True)


def run_pool_demo(root: Path, keep: bool) -> int:
    if shutil.which("etcd") is None:
        raise SystemExit(
            "demo --pool: no 'etcd' on PATH: run scripts/ensure-test-tools.sh as root (Debian's etcd-server)"
        )
    demo = PoolDemo(root)
    print(f"sdquorum pool demo; working directory {root}")
    asyncio.run(demo.run())
    print(f"\nPool demo complete in {time.monotonic() - demo.t0:.1f}s.", flush=True)
    if not keep:
        shutil.rmtree(root)
    return 0
