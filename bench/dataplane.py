"""Data-plane throughput over gRPC against the same operation in process (issue 6, part 5).

The node runs as its own process (``hsm-node run`` started by ``tests/harness.py``'s
``NodeProcess``), so the load generator and the server do not share one interpreter: on a 2-core
machine the server gets one core, the clients the other. The node is activated (3-of-5), then an
AES-256-GCM key and an Ed25519 key are created.

Load: 32 asyncio tasks in this process, each with its own gRPC channel (its own HTTP/2 connection
over mTLS, role ``app``; ``grpc.use_local_subchannel_pool`` stops the channels sharing one
connection), each calling in a closed loop for a fixed time after a warm-up. Measured: completed
operations per second (a batch of 100 counts 100). Messages and plaintexts are 256 bytes, AAD 9.

Baseline, same run, this process, one thread: the same operation with ``cryptography`` on a key
object loaded once: ``Ed25519PrivateKey.sign(message)``; ``AESGCM.encrypt(urandom(12), plaintext,
aad)``. Diagnostics (no target): ``Node.sign_batch`` / ``Node.encrypt_batch`` called in process
(no gRPC), which separates the node's per-item cost from the transport's; and the server's and
clients' CPU use during each gRPC run (from /proc), which says which side was the bottleneck.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bench._common import ROOT, BenchContext, Row, harness, run_async
from hsm_node.keyops import KeyType
from hsm_node.node import Node, NodeConfig
from hsm_node.store import NodeStore
from sdquorum.pki import Role
from sdquorum_rpc import packed
from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2 as pb
from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2_grpc as pbg
from sdquorum_rpc.client import NodeClient
from sdquorum_rpc.tls import channel_credentials, channel_options

__all__ = ["run_dataplane"]

CLIENTS = 32
BATCH = 100
PAYLOAD = bytes(range(256))
AAD = b"bench-aad"
AES, ED = "bench-aes", "bench-ed"


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def in_process_rate(op: Callable[[], object], seconds: float) -> float:
    """Operations per second of ``op`` in a closed loop on this thread."""
    for _ in range(200):
        op()
    count, started = 0, time.perf_counter()
    deadline = started + seconds
    while True:
        for _ in range(100):
            op()
        count += 100
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - started)


def baselines(seconds: float) -> dict[str, float]:
    ed = Ed25519PrivateKey.generate()
    aes = AESGCM(AESGCM.generate_key(bit_length=256))
    return {
        "sign": in_process_rate(lambda: ed.sign(PAYLOAD), seconds),
        "encrypt": in_process_rate(lambda: aes.encrypt(os.urandom(12), PAYLOAD, AAD), seconds),
    }


async def node_inprocess_rates(ctx: BenchContext, seconds: float) -> dict[str, float]:
    """``Node.sign_batch`` / ``encrypt_batch`` of packed items, in process: the node's own per-item cost."""
    h = harness()
    data_dir = ctx.tmp / "dataplane" / "inproc"
    att_key, att_der = h.load_attestation(ctx.pki_dir, "node-a")
    store = NodeStore(data_dir, os.urandom(32), "node-a")
    try:
        node = Node(NodeConfig("node-a", "127.0.0.1:0", data_dir, att_key, att_der), store)
        await node.download(ctx.certs(5), 3, Role("admin", None))
        await node.create_key(AES, KeyType.AES256_GCM)
        await node.create_key(ED, KeyType.ED25519)
        messages = packed.sign_batch_request(ED, [PAYLOAD] * BATCH)
        plaintexts = packed.encrypt_batch_request(AES, [PAYLOAD] * BATCH, AAD)

        def sign_batch() -> object:
            return node.sign_batch(ED, packed.checked(messages.messages, messages.message_lengths, "message"))

        def encrypt_batch() -> object:
            items = packed.checked(plaintexts.plaintexts, plaintexts.plaintext_lengths, "plaintext")
            return node.encrypt_batch(AES, items, AAD)

        return {
            "sign_batch": BATCH * in_process_rate(sign_batch, seconds / 2),
            "encrypt_batch": BATCH * in_process_rate(encrypt_batch, seconds / 2),
            "sign_single": in_process_rate(lambda: node.sign(ED, PAYLOAD), seconds / 2),
            "encrypt_single": in_process_rate(lambda: node.encrypt(AES, PAYLOAD, AAD), seconds / 2),
        }
    finally:
        store.close()


async def _load(
    channels: list[grpc.aio.Channel],
    make_call: Callable[[Any], Awaitable[Any]],
    per_call: int,
    seconds: float,
    warmup: float,
    server_pid: int,
) -> dict[str, float]:
    stubs = [pbg.KeysStub(ch) for ch in channels]  # type: ignore[no-untyped-call]  # generated, untyped
    counts = [0] * len(stubs)
    measuring = False
    stop_at = 0.0

    async def client(i: int) -> None:
        stub = stubs[i]
        while True:
            await make_call(stub)
            if measuring:
                counts[i] += per_call
            if stop_at and time.perf_counter() >= stop_at:
                return

    warm_end = time.perf_counter() + warmup
    tasks = [asyncio.create_task(client(i)) for i in range(len(stubs))]
    await asyncio.sleep(max(0.0, warm_end - time.perf_counter()))
    measuring = True
    started = time.perf_counter()
    cpu_server0, cpu_client0 = _cpu_seconds(server_pid), time.process_time()
    stop_at = started + seconds
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - started
    cpu_server, cpu_client = _cpu_seconds(server_pid) - cpu_server0, time.process_time() - cpu_client0
    return {
        "ops_per_second": sum(counts) / elapsed,
        "seconds": elapsed,
        "operations": sum(counts),
        "server_cpu_utilisation": cpu_server / elapsed,
        "client_cpu_utilisation": cpu_client / elapsed,
    }


async def _drive(ctx: BenchContext, target: str, pid: int, seconds: float) -> dict[str, dict[str, float]]:
    """The four loads (Sign, SignBatch, Encrypt, EncryptBatch) against one server, one after another."""
    h = harness()
    creds = channel_credentials(h.tls(ctx.pki_dir, "app"))
    options = [*channel_options(), ("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.secure_channel(target, creds, options=options) for _ in range(CLIENTS)]
    try:
        await asyncio.gather(*(ch.channel_ready() for ch in channels))
        sign = pb.SignRequest(name=ED, message=PAYLOAD)
        enc = pb.EncryptRequest(name=AES, plaintext=PAYLOAD, aad=AAD)
        items = [PAYLOAD] * BATCH

        async def sign_batch(stub: Any) -> list[bytes]:  # a new packed request per call, as a client
            response = await stub.SignBatch(packed.sign_batch_request(ED, items))
            return packed.signatures_of(response, BATCH)

        async def encrypt_batch(stub: Any) -> list[bytes]:
            response = await stub.EncryptBatch(packed.encrypt_batch_request(AES, items, AAD))
            return packed.ciphertexts_of(response, BATCH)

        warm = 0.3 if ctx.quick else 0.7
        out: dict[str, dict[str, float]] = {}
        for label, call, per in (
            ("sign", lambda s: s.Sign(sign), 1),
            ("sign_batch", sign_batch, BATCH),
            ("encrypt", lambda s: s.Encrypt(enc), 1),
            ("encrypt_batch", encrypt_batch, BATCH),
        ):
            out[label] = await _load(channels, call, per, seconds, warm, pid)
        return out
    finally:
        for ch in channels:
            await ch.close(None)


async def _node_runs(ctx: BenchContext, seconds: float) -> dict[str, dict[str, float]]:
    """``hsm-node run`` in its own process, activated, with one AES and one Ed25519 key."""
    h = harness()
    np = h.NodeProcess(ctx.pki_dir, ctx.tmp / "dataplane" / "node-a", node_id="node-a", log_level="WARNING")
    np.start(timeout=60)
    try:
        if np.proc is None:
            raise RuntimeError("the node process did not start")
        async with NodeClient(np.target, h.tls(ctx.pki_dir, "admin")) as admin, admin.errors():
            async for _ in admin.admin.DownloadSecurityDomain(
                pb.DownloadRequest(custodian_certificates=ctx.certs(5), quorum=3)
            ):
                pass
            await admin.keys.CreateKey(pb.CreateKeyRequest(name=AES, type=pb.AES256_GCM))
            await admin.keys.CreateKey(pb.CreateKeyRequest(name=ED, type=pb.ED25519))
        return await _drive(ctx, np.target, np.proc.pid, seconds)
    finally:
        np.kill(15)


async def _bare_runs(ctx: BenchContext, seconds: float) -> dict[str, dict[str, float]]:
    """The same loads against :mod:`bench._bare_server`: gRPC + mTLS + the crypto, nothing else."""
    port_file = ctx.tmp / "dataplane" / "bare.port"
    port_file.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench._bare_server",
            "--pki",
            str(ctx.pki_dir),
            "--port-file",
            str(port_file),
        ],
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the bare gRPC server did not start")
            await asyncio.sleep(0.05)
        return await _drive(ctx, f"127.0.0.1:{int(port_file.read_text())}", proc.pid, seconds)
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def run_dataplane(ctx: BenchContext) -> list[Row]:
    seconds = 1.0 if ctx.quick else 3.0
    base = baselines(seconds)
    node_rates = run_async(node_inprocess_rates(ctx, seconds))
    runs = run_async(_node_runs(ctx, seconds))
    bare = run_async(_bare_runs(ctx, seconds))
    common = {"clients": CLIENTS, "batch": BATCH, "payload_bytes": len(PAYLOAD), "seconds_per_run": seconds}
    node_mode = "node in its own process (tests/harness.py NodeProcess: hsm-node run)"
    rows = []
    for op, algo in (("sign", "Ed25519 Sign"), ("encrypt", "AES-256-GCM Encrypt")):
        unary, batch = runs[op], runs[f"{op}_batch"]
        rows.append(
            Row(
                "dataplane",
                f"{algo}, unary, {CLIENTS} clients, gRPC vs in-process",
                unary["ops_per_second"],
                base[op],
                "ops/s",
                lower_is_better=False,
                details={**common, **unary, "node": node_mode, "bare_grpc_floor": bare[op]},
            )
        )
        rows.append(
            Row(
                "dataplane",
                f"{algo}Batch x{BATCH}, {CLIENTS} clients, gRPC vs in-process",
                batch["ops_per_second"],
                base[op],
                "ops/s",
                target=0.5,
                lower_is_better=False,
                details={**common, **batch, "node": node_mode},
            )
        )
        rows.append(
            Row(
                "dataplane",
                f"  {algo}Batch x{BATCH}: node vs bare gRPC server (same TLS, crypto only)",
                batch["ops_per_second"],
                bare[f"{op}_batch"]["ops_per_second"],
                "ops/s",
                lower_is_better=False,
                details={"bare": bare[f"{op}_batch"], "bare_unary": bare[op]},
            )
        )
        rows.append(
            Row(
                "dataplane",
                f"  Node.{op}_batch x{BATCH} in process (no gRPC) vs in-process",
                node_rates[f"{op}_batch"],
                base[op],
                "ops/s",
                lower_is_better=False,
                details={f"node_{op}_single_ops_per_second": node_rates[f"{op}_single"]},
            )
        )
    return rows
