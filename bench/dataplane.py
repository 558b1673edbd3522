"""Data-plane throughput over gRPC against the same operation in process (issue 6, part 5).

The node runs as its own process (``hsm-node run`` started by ``tests/harness.py``'s
``NodeProcess``), so the load generator and the server do not share one interpreter. It runs with
its default settings, so batches of 64 items or more go to its two crypto worker processes
(:mod:`hsm_node.cryptopool`); the server's CPU figures include them. All of it, and the clients,
share the machine's cores. The node is activated (3-of-5), then an AES-256-GCM key and an Ed25519
key are created.

Load: 32 asyncio tasks in this process, each with its own gRPC channel (its own HTTP/2 connection
over mTLS, role ``app``; ``grpc.use_local_subchannel_pool`` stops the channels sharing one
connection), each calling in a closed loop. Measured: operations completed inside a fixed window
that opens after a warm-up, divided by the window (a batch of 1000 counts 1000 when it completes
in the window; calls still running when it closes are not counted, so a long call cannot inflate
the rate). Messages and plaintexts are 256 bytes, AAD 9.

What each client does per call is what a real client does: a batch client packs its items into a
new request every call (``sdquorum_rpc.packed``, as ``NodeClient.encrypt_batch`` does) and cuts the
response into one ``bytes`` per item, checking the lengths; that work runs in this process and
counts. A unary client sends one request object built once (a real client builds one per call, but
its cost is noise next to a call's). Items are the same 256 bytes every time: neither side caches
anything by content, so it does not matter.

Batch size: the target rows use 1000 items, the node's default ``node.max_batch_items``. With
grpc-python a call costs the server ~0.3-0.5 ms of CPU before any item (the bare server's unary
runs, in the unary rows' details, show it): at 0.5x of AES-GCM's in-process rate 100 items leave ~0.24 ms for everything, less than
one empty call, so a batch of 100 cannot reach 0.5x on any server in this stack. The 100-item
rows stay, as diagnostics, to show that cost.

Baseline, same run, this process, one thread: the same operation with ``cryptography`` on a key
object loaded once: ``Ed25519PrivateKey.sign(message)``; ``AESGCM.encrypt(urandom(12), plaintext,
aad)``; measured before, between and after the gRPC runs, the median taken. Diagnostics (no
target): ``Node.sign_batch`` / ``Node.encrypt_batch`` called in process on packed items (no gRPC),
which separates the node's per-item cost from the transport's; the same loads against a bare gRPC
server (``bench/_bare_server.py``, everything on its one thread); the 1000-item loads against a
second node started with ``--crypto-workers 0`` (batches on the server's thread, as the bare server
does them), the two nodes taking turns with a baseline sample before each turn, which shows what
the workers bring; and the server's and clients' CPU use during each
gRPC run (from /proc), which says which side was the bottleneck.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bench._common import ROOT, BenchContext, Row, harness, median, run_async
from hsm_node.keyops import KeyType
from hsm_node.node import Node, NodeConfig
from hsm_node.store import SqliteNodeStore
from sdquorum.pki import Role
from sdquorum_rpc import packed
from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2 as pb
from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2_grpc as pbg
from sdquorum_rpc.client import NodeClient
from sdquorum_rpc.tls import channel_credentials, channel_options

APP = Role("app")  # the owner of the benchmark's keys: the app certificate the load clients use

__all__ = ["run_dataplane"]

CLIENTS = 32
BATCH = 1000  # the node's default node.max_batch_items
SMALL_BATCH = 100
PAYLOAD = bytes(range(256))
AAD = b"bench-aad"
AES, ED = "bench-aes", "bench-ed"


def _cpu_seconds(pid: int) -> float:
    """CPU used by ``pid`` and its running children (the node's crypto workers)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:  # it has just exited
        return 0.0
    total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    return total + sum(_cpu_seconds(int(c)) for c in children)


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
    store = SqliteNodeStore(data_dir, os.urandom(32), "node-a")
    try:
        node = Node(NodeConfig("node-a", "127.0.0.1:0", data_dir, att_key, att_der), store)
        await node.activation.download(ctx.certs(5), 3, Role("admin", None))
        await node.keys.create_key(AES, KeyType.AES256_GCM, APP)
        await node.keys.create_key(ED, KeyType.ED25519, APP)
        messages = packed.sign_batch_request(ED, [PAYLOAD] * BATCH)
        plaintexts = packed.encrypt_batch_request(AES, [PAYLOAD] * BATCH, AAD)

        def sign_batch() -> object:
            return node.key_ops.sign_batch(
                ED, packed.checked(messages.messages, messages.message_lengths, "message"), APP
            )

        def encrypt_batch() -> object:
            items = packed.checked(plaintexts.plaintexts, plaintexts.plaintext_lengths, "plaintext")
            return node.key_ops.encrypt_batch(AES, items, AAD, APP)

        return {
            "sign_batch": BATCH * in_process_rate(sign_batch, seconds / 2),
            "encrypt_batch": BATCH * in_process_rate(encrypt_batch, seconds / 2),
            "sign_single": in_process_rate(lambda: node.key_ops.sign(ED, PAYLOAD, APP), seconds / 2),
            "encrypt_single": in_process_rate(
                lambda: node.key_ops.encrypt(AES, PAYLOAD, AAD, APP), seconds / 2
            ),
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
    """Operations completed inside the window ``[warm-up end, + seconds]``, per second."""
    stubs = [pbg.KeysStub(ch) for ch in channels]  # type: ignore[no-untyped-call]  # generated, untyped
    counts = [0] * len(stubs)
    window = [float("inf"), float("inf")]  # opens and closes on the clock; set below

    async def client(i: int) -> None:
        stub = stubs[i]
        while True:
            await make_call(stub)
            done = time.perf_counter()
            if window[0] <= done <= window[1]:
                counts[i] += per_call
            elif done > window[1]:
                return

    tasks = [asyncio.create_task(client(i)) for i in range(len(stubs))]
    await asyncio.sleep(warmup)
    started = time.perf_counter()
    cpu_server0, cpu_client0 = _cpu_seconds(server_pid), time.process_time()
    window[:] = [started, started + seconds]
    await asyncio.sleep(seconds)
    elapsed = time.perf_counter() - started
    cpu_server, cpu_client = _cpu_seconds(server_pid) - cpu_server0, time.process_time() - cpu_client0
    await asyncio.gather(*tasks)
    calls = sum(counts) / per_call
    return {
        "ops_per_second": sum(counts) / seconds,
        "seconds": seconds,
        "operations": sum(counts),
        "server_cpu_utilisation": cpu_server / elapsed,
        "client_cpu_utilisation": cpu_client / elapsed,
        "server_cpu_us_per_call": cpu_server / calls * 1e6 if calls else float("nan"),
        "client_cpu_us_per_call": cpu_client / calls * 1e6 if calls else float("nan"),
    }


def _sign_batch(n: int) -> Callable[[Any], Awaitable[list[bytes]]]:
    """A SignBatch client: a new packed request per call, the response cut into signatures."""
    items = [PAYLOAD] * n

    async def call(stub: Any) -> list[bytes]:
        return packed.signatures_of(await stub.SignBatch(packed.sign_batch_request(ED, items)), n)

    return call


def _encrypt_batch(n: int) -> Callable[[Any], Awaitable[list[bytes]]]:
    """An EncryptBatch client: a new packed request per call, the response cut into ciphertexts."""
    items = [PAYLOAD] * n

    async def call(stub: Any) -> list[bytes]:
        return packed.ciphertexts_of(
            await stub.EncryptBatch(packed.encrypt_batch_request(AES, items, AAD)), n
        )

    return call


@contextlib.asynccontextmanager
async def _clients(ctx: BenchContext, target: str) -> AsyncIterator[list[grpc.aio.Channel]]:
    """:data:`CLIENTS` channels to ``target``, each its own mTLS connection (role ``app``), ready."""
    h = harness()
    creds = channel_credentials(h.tls(ctx.pki_dir, "app"))
    options = [*channel_options(), ("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.secure_channel(target, creds, options=options) for _ in range(CLIENTS)]
    try:
        await asyncio.gather(*(ch.channel_ready() for ch in channels))
        yield channels
    finally:
        for ch in channels:
            await ch.close(None)


Load = tuple[str, Callable[[Any], Awaitable[Any]], int]


def _loads(batch_sizes: Sequence[int], unary: bool) -> list[Load]:
    """(label, call, operations per call): the unary calls if ``unary``, then SignBatch and
    EncryptBatch of each size."""
    sign = pb.SignRequest(name=ED, message=PAYLOAD)
    enc = pb.EncryptRequest(name=AES, plaintext=PAYLOAD, aad=AAD)
    loads: list[Load] = []
    if unary:
        loads += [("sign", lambda s: s.Sign(sign), 1), ("encrypt", lambda s: s.Encrypt(enc), 1)]
    for n in batch_sizes:
        loads += [(f"sign_batch_{n}", _sign_batch(n), n), (f"encrypt_batch_{n}", _encrypt_batch(n), n)]
    return loads


async def _drive(
    ctx: BenchContext, channels: list[grpc.aio.Channel], pid: int, seconds: float, loads: list[Load]
) -> dict[str, dict[str, float]]:
    """Each load against one server (``pid``), one after another."""
    warm = 0.3 if ctx.quick else 0.7
    return {label: await _load(channels, call, per, seconds, warm, pid) for label, call, per in loads}


@contextlib.asynccontextmanager
async def _node(ctx: BenchContext, crypto_workers: int | None) -> AsyncIterator[tuple[str, int]]:
    """``hsm-node run`` in its own process (its default crypto workers, or ``crypto_workers``),
    activated, with one AES and one Ed25519 key: its target and pid."""
    h = harness()
    extra = () if crypto_workers is None else ("--crypto-workers", str(crypto_workers))
    np = h.NodeProcess(
        ctx.pki_dir,
        ctx.tmp / "dataplane" / f"node-a-{crypto_workers}",
        node_id="node-a",
        log_level="WARNING",
        extra_args=extra,
    )
    np.start(timeout=60)
    try:
        if np.proc is None:
            raise RuntimeError("the node process did not start")
        async with NodeClient(np.target, h.tls(ctx.pki_dir, "admin")) as admin, admin.errors():
            async for _ in admin.admin.DownloadSecurityDomain(
                pb.DownloadRequest(custodian_certificates=ctx.certs(5), quorum=3)
            ):
                pass
            await admin.keys.CreateKey(pb.CreateKeyRequest(name=AES, type=pb.AES256_GCM, owner="app"))
            await admin.keys.CreateKey(pb.CreateKeyRequest(name=ED, type=pb.ED25519, owner="app"))
        yield np.target, np.proc.pid
    finally:
        np.kill(15)


@dataclass
class NodeRuns:
    once: dict[str, dict[str, float]]  # the default node: unary and 100-item loads
    workers: dict[str, list[dict[str, float]]]  # 1000-item loads, default node, one per repetition
    none: dict[str, list[dict[str, float]]]  # the same loads, node with --crypto-workers 0
    baselines: list[dict[str, float]]  # one in-process sample before each repetition


async def _node_runs(ctx: BenchContext, seconds: float, reps: int) -> NodeRuns:
    """Two nodes up at once, the default and one without crypto workers. The unary and 100-item
    loads run once against the default; the 1000-item loads alternate between the two, ``reps``
    times, with an in-process baseline sample before each repetition: this machine's speed drifts
    by a third within minutes, and alternating puts both nodes and the baseline in the same drift."""
    async with (
        _node(ctx, None) as (target, pid),
        _node(ctx, 0) as (target0, pid0),
        _clients(ctx, target) as channels,
        _clients(ctx, target0) as channels0,
    ):
        runs = NodeRuns(await _drive(ctx, channels, pid, seconds, _loads((SMALL_BATCH,), True)), {}, {}, [])
        batches = _loads((BATCH,), False)
        for _ in range(reps):
            runs.baselines.append(baselines(seconds / 2))
            for into, chans, p in ((runs.workers, channels, pid), (runs.none, channels0, pid0)):
                for label, out in (await _drive(ctx, chans, p, seconds, batches)).items():
                    into.setdefault(label, []).append(out)
    return runs


def _median_run(runs: list[dict[str, float]]) -> dict[str, Any]:
    """The repetition with the median throughput (its own CPU figures with it), and every rate."""
    ordered = sorted(runs, key=lambda r: r["ops_per_second"])
    return {
        **ordered[len(ordered) // 2],
        "ops_per_second_each_repetition": [r["ops_per_second"] for r in runs],
    }


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
        async with _clients(ctx, f"127.0.0.1:{int(port_file.read_text())}") as channels:
            return await _drive(ctx, channels, proc.pid, seconds, _loads((SMALL_BATCH, BATCH), True))
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def run_dataplane(ctx: BenchContext) -> list[Row]:
    seconds = 1.0 if ctx.quick else 3.0
    # The baseline is sampled before and after everything and before each repetition of the
    # 1000-item loads, and the median used: a machine whose speed changes during the part moves it
    # as much as the measured side.
    samples = [baselines(seconds / 2)]
    node_rates = run_async(node_inprocess_rates(ctx, seconds))
    nodes = run_async(_node_runs(ctx, seconds, reps=1 if ctx.quick else 3))
    samples += nodes.baselines
    bare = run_async(_bare_runs(ctx, seconds))
    samples.append(baselines(seconds / 2))
    base = {op: median([s[op] for s in samples]) for op in samples[0]}
    common = {
        "clients": CLIENTS,
        "batch": BATCH,
        "payload_bytes": len(PAYLOAD),
        "seconds_per_run": seconds,
        "baseline_samples_ops_per_second": samples,
    }
    node_mode = "node in its own process (tests/harness.py NodeProcess: hsm-node run)"

    def row(
        name: str, measured: float, baseline: float, details: dict[str, Any], target: float | None = None
    ) -> Row:
        """A throughput row: higher is better, ``target`` a floor on the ratio."""
        return Row(
            "dataplane", name, measured, baseline, "ops/s", target, lower_is_better=False, details=details
        )

    rows = []
    for op, algo in (("sign", "Ed25519 Sign"), ("encrypt", "AES-256-GCM Encrypt")):
        unary, small = nodes.once[op], nodes.once[f"{op}_batch_{SMALL_BATCH}"]
        batch = _median_run(nodes.workers[f"{op}_batch_{BATCH}"])
        no_workers = _median_run(nodes.none[f"{op}_batch_{BATCH}"])
        bare_batch = bare[f"{op}_batch_{BATCH}"]
        rows += [
            row(
                f"{algo}, unary, {CLIENTS} clients, gRPC vs in-process",
                unary["ops_per_second"],
                base[op],
                {**common, **unary, "node": node_mode, "bare": bare[op]},
            ),
            row(
                f"{algo}Batch x{BATCH}, {CLIENTS} clients, gRPC vs in-process",
                batch["ops_per_second"],
                base[op],
                {**common, **batch, "node": node_mode},
                target=0.5,
            ),
            row(
                f"  {algo}Batch x{SMALL_BATCH} (per-call cost over fewer items) vs in-process",
                small["ops_per_second"],
                base[op],
                {**common, **small, "batch": SMALL_BATCH, "bare": bare[f"{op}_batch_{SMALL_BATCH}"]},
            ),
            row(
                f"  {algo}Batch x{BATCH}: node vs bare gRPC server (same TLS, crypto only)",
                batch["ops_per_second"],
                bare_batch["ops_per_second"],
                {"bare": bare_batch, "bare_unary": bare[op]},
            ),
            row(
                f"  {algo}Batch x{BATCH}: crypto workers (default 2) vs none (on the server's thread)",
                batch["ops_per_second"],
                no_workers["ops_per_second"],
                {"crypto_workers_0": no_workers},
            ),
            row(
                f"  Node.{op}_batch x{BATCH} in process (no gRPC) vs in-process",
                node_rates[f"{op}_batch"],
                base[op],
                {f"node_{op}_single_ops_per_second": node_rates[f"{op}_single"]},
            ),
        ]
    return rows
