"""The HSM pool (issue 16): a real 3-member etcd cluster on loopback, pool stores and hsm-node members.

Rows, each a ratio of two numbers measured in this run:

* key creation through a pool member's store (one etcd transaction, 3 etcd members fsyncing) vs a
  single node's SQLite store (one fsync);
* how long a key created on one member takes to be visible on another, vs the create itself;
* data-plane throughput (Encrypt, 16 concurrent callers, each its own client) through 3 member
  processes (the failover client round-robins) vs 1, on the same cores (target >= 0.9x): turns of
  1 and 3 members in the order 1 3 3 1 1 3 ... after a warm-up, the row is the pair with the median
  ratio, every turn's rate and CPU per call (members, clients) in the details;
* a SIGKILL of one member while 8 failover clients (given every member, the default retry interval)
  call in closed loops: the longest time any client goes without an answer from the kill on, vs the
  retry interval (target <= 2x, and no call may fail: Encrypt is idempotent);
* a new member by a join (no custodian) vs by a recovery ceremony (3 of 5 agents approving at once);
* a backup restore of 10,000 and 100,000 AES-256 keys (2,000 in quick mode) into a pool member
  (staged in transactions within etcd's limits, then flipped: hsm_node.pool.restore) vs into a
  single node's SQLite store, the same backup, each restore in a process of its own so its peak
  RSS is its own (bench/_restore_worker.py).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench._common import ROOT, BenchContext, Row, harness, median

NODES = ("node-a", "node-b", "node-c")
WORKERS = 16
KILL_CLIENTS = 8


def _etcd_cluster() -> Any:
    pool_tests = str(ROOT / "tests" / "pool")
    if pool_tests not in sys.path:
        sys.path.insert(0, pool_tests)
    import etcd_cluster

    return etcd_cluster


def _store_rows(etcd: Any, ctx: BenchContext) -> list[Row]:
    from hsm_node.keyops import KeyType
    from hsm_node.pool.store import PoolNodeStore
    from hsm_node.store import DomainInfo, SqliteNodeStore, StoredKey
    from sdquorum.sdfile import new_domain_secrets

    n = 40 if ctx.quick else 200
    dek, aes = os.urandom(32), int(KeyType.AES256_GCM)
    a = PoolNodeStore(etcd.config("node-a"), b"bench", ctx.tmp / "pool-a", os.urandom(32), "node-a")
    b = PoolNodeStore(etcd.config("node-b"), b"bench", ctx.tmp / "pool-b", os.urandom(32), "node-b")
    single = SqliteNodeStore(ctx.tmp / "single", os.urandom(32), "node-s")
    try:
        domain = new_domain_secrets(os.urandom, admins=["admin"])
        for member in (a, b):  # members hold the domain, as in production: every key row MAC'd, checked
            member.domain.activate(domain, DomainInfo(domain.domain_id, 1, 2, 3), "ACTIVATED", b"sd-file")

        def per_key(store: Any, prefix: str) -> float:
            t0 = time.perf_counter()
            for i in range(n):
                store.keys.put_key(dek, StoredKey(f"{prefix}{i}", aes, b"pub", 1, "app"), os.urandom(32))
            return (time.perf_counter() - t0) / n

        pool_s, single_s = per_key(a, "p"), per_key(single, "s")
        t0 = time.perf_counter()
        for i in range(n):  # a soft delete buries the row's first tag: a dead-set shard and the head
            a.keys.mark_deleted(f"p{i}", 1)
        delete_s = (time.perf_counter() - t0) / n
        creates, visible = [], []
        for i in range(n // 4):
            t0 = time.perf_counter()
            a.keys.put_key(dek, StoredKey(f"v{i}", aes, b"pub", 1, "app"), b"x")
            t1 = time.perf_counter()
            while b.keys.find_key(f"v{i}") is None:
                time.sleep(0.0002)
            creates.append(t1 - t0)
            visible.append(time.perf_counter() - t1)
    finally:
        for s in (a, b, single):
            s.close()
    return [
        Row(
            "pool",
            "key creation: pool member (one etcd transaction) vs single node (SQLite)",
            pool_s,
            single_s,
            "s",
            details={"keys": n, "pool_ms": round(pool_s * 1000, 2), "single_ms": round(single_s * 1000, 2)},
        ),
        Row(
            "pool",
            "key soft delete (its dead-set entry and the custody head in the transaction) vs key creation, pool member",
            delete_s,
            pool_s,
            "s",
            details={"keys": n, "delete_ms": round(delete_s * 1000, 2), "create_ms": round(pool_s * 1000, 2)},
        ),
        Row(
            "pool",
            "create on one member to visible on another (watch) vs the create itself",
            median(visible),
            median(creates),
            "s",
            details={
                "visible_median_ms": round(median(visible) * 1000, 3),
                "visible_max_ms": round(max(visible) * 1000, 3),
                "create_median_ms": round(median(creates) * 1000, 3),
            },
        ),
    ]


async def _rate(clients: list[Any], seconds: float) -> float:
    """Encrypt calls per second, each client a closed loop; a call still running when the window
    closes does not count."""
    from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2 as pb

    request = pb.EncryptRequest(name="k", plaintext=b"x" * 64)
    done = 0
    stop = time.monotonic() + seconds

    async def worker(c: Any) -> None:
        nonlocal done
        while time.monotonic() < stop:
            await c.keys.Encrypt(request)
            if time.monotonic() <= stop:
                done += 1

    await asyncio.gather(*(worker(c) for c in clients))
    return done / seconds


def _cpu(pids: list[int]) -> tuple[float, float]:
    """CPU seconds used so far by the member processes, and by this process (the clients) alone."""
    from bench.dataplane import _cpu_seconds

    return sum(_cpu_seconds(p) for p in pids), time.process_time()


async def _throughput_row(procs: list[Any], pki: Path, ctx: BenchContext) -> Row:
    """Turns of 1 member and of 3, in the order 1 3 3 1 1 3 ... (each pair sees the same drift of
    this shared machine); the row is the pair with the median ratio, every turn in the details."""
    from sdquorum_rpc.client import NodeClient

    h = harness()
    creds = h.tls(pki, "admin")
    pairs, seconds = (3, 1.0) if ctx.quick else (7, 2.0)
    one = [NodeClient(procs[0].target, creds) for _ in range(WORKERS)]
    three = [NodeClient(",".join(p.target for p in procs), creds) for _ in range(WORKERS)]
    pids = [p.proc.pid for p in procs]
    turns: dict[int, list[dict[str, float]]] = {1: [], 3: []}
    try:
        await _rate(one, 0.5)  # warm-up: connections, caches, the members' first calls
        await _rate(three, 0.5)
        for i in range(pairs):
            for members in (1, 3) if i % 2 == 0 else (3, 1):
                server0, client0 = _cpu(pids)
                rate = await _rate(one if members == 1 else three, seconds)
                server1, client1 = _cpu(pids)
                calls = rate * seconds
                turns[members].append(
                    {
                        "ops": round(rate),
                        "members_cpu_us_per_call": round((server1 - server0) / calls * 1e6),
                        "clients_cpu_us_per_call": round((client1 - client0) / calls * 1e6),
                    }
                )
    finally:
        for c in (*one, *three):
            await c.close()
    ratios = [t3["ops"] / t1["ops"] for t1, t3 in zip(turns[1], turns[3], strict=True)]
    mid = sorted(range(pairs), key=ratios.__getitem__)[pairs // 2]
    return Row(
        "pool",
        f"data-plane throughput, Encrypt x{WORKERS} callers: 3 members vs 1 (same cores, median of {pairs} pairs)",
        turns[3][mid]["ops"],
        turns[1][mid]["ops"],
        "ops/s",
        target=0.9,
        lower_is_better=False,
        details={
            "pair_ratios": [round(r, 3) for r in ratios],
            "spread": [round(min(ratios), 3), round(max(ratios), 3)],
            "one_member_turns": turns[1],
            "three_member_turns": turns[3],
            "seconds_per_turn": seconds,
        },
    )


async def _sigkill_row(procs: list[Any], pki: Path, ctx: BenchContext) -> Row:
    """KILL_CLIENTS failover clients (given all members, default retry interval) call in closed
    loops; one member is SIGKILLed; each client's longest time without an answer from the kill on,
    the largest of them vs the retry interval."""
    from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2 as pb
    from sdquorum_rpc.client import NodeClient

    h = harness()
    clients = [
        NodeClient(",".join(p.target for p in procs), h.tls(pki, "admin")) for _ in range(KILL_CLIENTS)
    ]
    interval = clients[0].members.retry_interval
    request = pb.EncryptRequest(name="k", plaintext=b"x")
    answers: list[list[float]] = [[] for _ in clients]
    failed: list[str] = []
    running = True

    async def worker(i: int, c: Any) -> None:
        while running:
            try:
                await c.keys.Encrypt(request)
            except Exception as e:  # counted: an idempotent call must fail over, not fail
                failed.append(type(e).__name__)
            else:
                answers[i].append(time.perf_counter())

    tasks = [asyncio.ensure_future(worker(i, c)) for i, c in enumerate(clients)]
    try:
        await asyncio.sleep(1.0)
        killed = time.perf_counter()
        await asyncio.to_thread(procs[1].kill)
        await asyncio.sleep(max(2.0, 2.5 * interval))
    finally:
        running = False
        await asyncio.gather(*tasks)
        for c in clients:
            await c.close()
    before = [[b - a for a, b in itertools.pairwise(t) if b < killed] for t in answers]
    after = [
        max(b - max(a, killed) for a, b in zip([killed, *t], t, strict=False) if b > killed) for t in answers
    ]
    return Row(
        "pool",
        f"SIGKILL of a member under load ({KILL_CLIENTS} failover clients): longest time without an answer vs the retry interval",
        max(after),
        interval,
        "s",
        target=2.0,
        details={
            "longest_gap_after_kill_ms": [round(g * 1000, 1) for g in after],
            "longest_gap_before_kill_ms": round(max(max(g, default=0.0) for g in before) * 1000, 1),
            "calls_failed": len(failed),
            "calls_answered": sum(len(t) for t in answers),
            "retry_interval_s": interval,
        },
        check=not failed,
        target_text="<= 2x, no call failed",
    )


async def _process_rows(etcd: Any, ctx: BenchContext) -> list[Row]:
    from sdctl.pkifiles import init_pki
    from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2 as pb

    h = harness()
    pki = ctx.tmp / "pool-pki"
    init_pki(pki, list(NODES), ["alice", "bob", "carol"], ctx.now)
    procs = []
    try:
        for node_id in NODES:
            pair = etcd.client(node_id)
            args = [
                "--pool-etcd", ",".join(etcd.endpoints), "--pool-etcd-cert", str(pair.cert),
                "--pool-etcd-key", str(pair.key), "--pool-etcd-ca", str(etcd.ca), "--pool-name", "bench-nodes",
                "--pool-attestation-root", str(pki / "attestation-root.pem"), "--crypto-workers", "0",
                "--log-level", "ERROR",
            ]  # fmt: skip
            p = h.NodeProcess(
                pki, ctx.tmp / "pool-nodes" / node_id / "data", node_id=node_id, extra_args=args
            )
            p.start()
            procs.append(p)
            if node_id == "node-a":
                async with p.client() as c, c.errors():
                    async for _ in c.admin.DownloadSecurityDomain(
                        pb.DownloadRequest(custodian_certificates=ctx.certs(3), quorum=2)
                    ):
                        pass
                    await c.keys.CreateKey(pb.CreateKeyRequest(name="k", type=pb.AES256_GCM))
                    for other in NODES[1:]:
                        await c.admin.AllowPoolMember(pb.PoolMemberRequest(node_id=other))
        join_started = time.monotonic()
        for p in procs[1:]:
            while True:
                async with p.client() as c, c.errors():
                    if (await c.node.GetStatus(pb.GetStatusRequest())).state == pb.ACTIVATED:
                        break
                await asyncio.sleep(0.02)
        join_s = time.monotonic() - join_started
        rows = [await _throughput_row(procs, pki, ctx), await _sigkill_row(procs, pki, ctx)]
    finally:
        for p in procs:
            p.kill()
    rows[1].details["join_two_members_s"] = round(join_s, 3)
    return rows


async def _join_vs_recovery(etcd: Any, ctx: BenchContext) -> Row:
    """A join (no custodian; in this process) vs a recovery ceremony (3 of 5 agents in this process
    approving as soon as asked, no network delay), each onto a new node."""
    from hsm_node.pool.member import PoolMember, allow
    from hsm_node.pool.store import PoolNodeStore
    from hsm_node.store import DomainInfo
    from sdquorum import sdfile
    from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2 as pb

    h = harness()
    root = (ctx.pki_dir / "attestation-root.pem").read_bytes()
    members = []
    for node_id in ("node-a", "node-b"):
        key, der = h.load_attestation(ctx.pki_dir, node_id)
        store = PoolNodeStore(
            etcd.config(node_id), b"bench-join", ctx.tmp / f"join-{node_id}", os.urandom(32), node_id
        )
        members.append(PoolMember(store, node_id, key, der, root))
    a, b = members
    try:
        domain = sdfile.new_domain_secrets(os.urandom, admins=["admin"])
        a.store.domain.activate(domain, DomainInfo(domain.domain_id, 1, 3, 5), "ACTIVATED", b"sd-file")
        a.register()
        allow(a.store, "node-b", "admin", int(time.time()))
        seen_by = time.monotonic() + 10  # node-b learns of the pool through its watch: wait for it
        while b.store.pool.pool_row("allowed", "node-b") is None and time.monotonic() < seen_by:
            await asyncio.sleep(0.002)
        server = asyncio.ensure_future(a.serve_joins(lambda: domain, interval=0.01))
        t0 = time.perf_counter()
        await b.join(timeout=30, poll=0.005)
        join_s = time.perf_counter() - t0
        server.cancel()
    finally:
        for m in members:
            m.store.close()
    async with h.running_cluster(ctx.pki_dir, ctx.tmp / "rec-a") as ca:
        sd = await ca.download(ctx.certs(5), quorum=3)
    async with h.running_cluster(ctx.pki_dir, ctx.tmp / "rec-b", node_id="node-b") as cb:
        for name, key in zip(h.NAMES[:5], ctx.keys[:5], strict=True):
            cb.start_agent(name, key, ctx.tmp / "rec-agents")
        await asyncio.sleep(0.5)  # the agents connect
        t0 = time.perf_counter()
        await cb.start_recovery(sd, reason="bench: join vs recovery")
        last = await cb.wait_session()
        recovery_s = time.perf_counter() - t0
        if last.state != pb.COMPLETED:
            raise RuntimeError(f"the recovery did not complete: {last.message}")
    return Row(
        "pool",
        "a new member: join (no custodian) vs recovery ceremony (3 of 5 agents, in process)",
        join_s,
        recovery_s,
        "s",
        details={"join_ms": round(join_s * 1000, 1), "recovery_ms": round(recovery_s * 1000, 1)},
    )


def _restore_image(n: int) -> tuple[bytes, int]:
    """A backup image of ``n`` AES-256 keys (names of 32 characters, as ADR 0013 measured)."""
    from hsm_node.keyops import KeyType
    from hsm_node.store import KeyRow, StoredKey
    from hsm_node.store.image import write_image
    from hsm_node.store.sealing import KeySeal

    seal, dek, aes = KeySeal(), os.urandom(32), int(KeyType.AES256_GCM)
    rows = []
    for i in range(n):
        name = f"k{i:07d}-" + "x" * 23
        rows.append(
            KeyRow(StoredKey(name, aes, b"", 1, "app"), seal.seal(dek, name, aes, "app", os.urandom(32)))
        )
    return write_image(rows), n


def _restore_in_process(args: dict[str, Any]) -> dict[str, Any]:
    out = subprocess.run(  # our own interpreter and module
        [sys.executable, "-m", "bench._restore_worker", json.dumps(args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=1800,
    )
    if out.returncode != 0:
        raise RuntimeError(f"the restore worker failed: {out.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    if result["served"] != args["count"]:
        raise RuntimeError(f"the restore served {result['served']} keys, not {args['count']}")
    return result


def _restore_rows(etcd: Any, ctx: BenchContext) -> list[Row]:
    rows = []
    pair = etcd.client("node-a")
    for n in (2_000,) if ctx.quick else (10_000, 100_000):
        image, count = _restore_image(n)
        path = ctx.tmp / f"restore-{n}.img"
        path.write_bytes(image)
        common = {"image": str(path), "count": count}
        pool = _restore_in_process(
            {
                **common,
                "store": "pool",
                "data_dir": str(ctx.tmp / f"restore-pool-{n}"),
                "pool_id": os.urandom(8).hex(),
                "endpoints": etcd.endpoints,
                "ca": str(etcd.ca),
                "cert": str(pair.cert),
                "key": str(pair.key),
            }
        )
        single = _restore_in_process(
            {**common, "store": "sqlite", "data_dir": str(ctx.tmp / f"restore-sqlite-{n}")}
        )
        rows.append(
            Row(
                "pool",
                f"backup restore of {n:,} AES-256 keys: pool member (staged, 3 etcd members) vs single node (SQLite)",
                pool["seconds"],
                single["seconds"],
                "s",
                details={
                    "keys": n,
                    "image_mb": round(len(image) / 2**20, 1),
                    "pool_s": round(pool["seconds"], 2),
                    "single_s": round(single["seconds"], 2),
                    "pool_peak_rss_mb": round(pool["peak_rss_mb"]),
                    "pool_open_rss_mb": round(pool["open_rss_mb"]),
                    "single_peak_rss_mb": round(single["peak_rss_mb"]),
                    "single_open_rss_mb": round(single["open_rss_mb"]),
                },
            )
        )
    return rows


async def run_pool(ctx: BenchContext) -> list[Row]:
    ec = _etcd_cluster()
    with ec.EtcdCluster(ctx.tmp / "pool-etcd", node_ids=NODES) as etcd:
        await asyncio.to_thread(etcd.start)  # it runs a loop of its own
        await etcd.enable_auth()
        rows = await asyncio.to_thread(_store_rows, etcd, ctx)
        rows += await _process_rows(etcd, ctx)
        rows.append(await _join_vs_recovery(etcd, ctx))
        rows += await asyncio.to_thread(_restore_rows, etcd, ctx)
    return rows
