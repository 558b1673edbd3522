"""The ``node`` part: the node's critical path per answer against the crypto an answer needs.

At real sites each custodian's agent has its own machine, so what the node does serially for each
answer is what makes a recovery's time grow with n. Measured in one run:

* **node work per answer**: ``node.answers.submit_answer`` for m prepared releases, one after
  another, no network (session checks, the coordinator's checks, the audit entry signed and
  committed, and at the m-th the completion: domain sealed and stored, node ACTIVATED), divided by
  m (:func:`bench.recovery.measure_node_host`, the same measurement the ``flat`` part reports in
  total).
* **crypto floor per answer**: what an answer needs on the node and nothing else: one RSA-PSS-SHA256
  verification (the release's signature, key already loaded), one sealed-box open (X25519, the
  share sealed to the session's exchange key), one VSS check against the precomputed public share
  (one base-point multiplication), one Ed25519 signature (the answer's audit entry), each the
  median of many repetitions with the same key sizes as the run's custodians and node, measured
  between the node's runs (the same drift of a shared machine for both).

Both ways answers reach a node are measured, taking turns: **one after another** (each answer
awaited before the next is sent: one commit each) and **together** (the m calls made at once, as
m agents answering in the same moment reach the node: one batch, one commit; the commits each run
made are in the details). Target for both: the node's work per answer at most 2x its crypto floor.
Reported beside the first, without a target: the same work against the floor plus one durable
commit of the node's store (an audit entry appended alone: ``synchronous=FULL``, one fsync),
measured in the same run. The node acknowledges no answer before its audit entry is durable
(``hsm_node/answers.py``), so an answer that arrives alone pays one commit; answers that arrive
together share one.

Two rows without a target give what each answer *adds*: the node's time for m answers less its
time for a smaller quorum of the same n, divided by the difference. The completion (domain
opened, sealed, stored, node ACTIVATED: once per recovery, whatever m) falls out, as it did when
the issue derived its "about 1.4 ms per answer" from 14.9 ms for 10 answers and 5.3 ms for 3. The
one-after-another row is set against the floor plus one durable commit, which each such answer
pays (the node acknowledges no answer before its audit entry is durable).

A diagnostic row sends the m releases at once over gRPC instead, each on its custodian's own mTLS
connection from a process of its own (``bench/_release_sender.py``), to an in-process node-b:
the time from the send to the last acknowledgement per answer, against the arriving-together
time, and the commits the node made (answers share one only when they reach ``submit_answer`` in
the same turn of the node's event loop).

The details also give the node's CPU time per answer (this thread's, over the same span): it
leaves out the fsync waits and the turns other processes take on a shared machine, which the
measured time, like a real node's, includes.

The node logs while it is measured as ``hsm-node run`` does by default (each answer a line at INFO,
text format), into /dev/null (:func:`logging_as_the_node_does`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator

import nacl.public
from cryptography.hazmat.primitives import hashes

from bench._common import NAMES, ROOT, BenchContext, Row, harness, median
from bench.recovery import make_sd_file, measure_node_host
from hsm_node.store import SqliteNodeStore
from sdquorum import envelopes, shamir
from sdquorum.keys import pss_sha256, rsa_public_key_of
from sdquorum_rpc.observability import setup_logging

__all__ = ["measure_answer_floor", "run_node"]

TARGET = 2.0
_RELEASE_BYTES = 900  # about the size of a signed release statement
_SEALED_BYTES = 200  # about the size of a sealed share's plaintext
_AUDIT_BYTES = 450  # about the size of an answer's audit entry


def _median_time(work: Callable[[], object], reps: int) -> float:
    times: list[float] = []
    for _ in range(reps):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return median(times)


def measure_answer_floor(ctx: BenchContext, reps: int) -> dict[str, float]:
    """Seconds per answer of each primitive an answer needs on the node (module docstring)."""
    key = ctx.keys[0]
    message = os.urandom(_RELEASE_BYTES)
    signature = key.sign(message)
    public = rsa_public_key_of(key.certificate_der())
    exchange = nacl.public.PrivateKey.generate()
    sealed = nacl.public.SealedBox(exchange.public_key).encrypt(os.urandom(_SEALED_BYTES))
    opener = nacl.public.SealedBox(exchange)
    (share, *_), commitments = shamir.split(shamir.random_scalar(os.urandom), 2, 3, os.urandom)
    public_share = commitments.public_share(share.x)
    att_key, _ = harness().load_attestation(ctx.pki_dir, "node-b")
    entry = os.urandom(_AUDIT_BYTES)
    return {
        "rsa_pss_verify": _median_time(
            lambda: public.verify(signature, message, pss_sha256(), hashes.SHA256()), reps
        ),
        "sealed_box_open": _median_time(lambda: opener.decrypt(sealed), reps),
        "vss_check": _median_time(lambda: shamir.matches_public_share(share, public_share), reps),
        "audit_signature": _median_time(lambda: att_key.sign(entry), reps),
    }


def measure_commit(ctx: BenchContext, reps: int) -> float:
    """Seconds of one durable commit of the SQLite store: one audit entry appended on its own."""
    store = SqliteNodeStore(ctx.tmp / f"commit-{os.urandom(4).hex()}", os.urandom(32), "node-b")
    try:
        seq = iter(range(1, reps + 2))
        entry = "x" * _AUDIT_BYTES
        return _median_time(lambda: store.records.append_audit("bench", next(seq), entry), reps)
    finally:
        store.close()


async def measure_over_grpc(ctx: BenchContext, sd_bytes: bytes, m: int, n: int) -> tuple[float, int]:
    """m releases sent at once over mTLS from a process of its own (``bench/_release_sender.py``)
    to an in-process node-b: (seconds from the send to the last acknowledgement, commits the node
    made meanwhile)."""
    h = harness()
    data_dir = ctx.tmp / f"grpc-{m}of{n}-{os.urandom(4).hex()}"
    async with h.running_cluster(ctx.pki_dir, data_dir, node_id="node-b") as b:
        await b.start_recovery(sd_bytes, reason="bench: releases over gRPC", ttl=600)
        await asyncio.sleep(0.05)  # the node prepares the public shares while requests travel
        releases = []
        for name, key in list(zip(NAMES, ctx.keys, strict=False))[:m]:
            request_id, checked = h.checked_for(b, key, ctx.pki_dir)
            release = envelopes.make_release(checked, envelopes.decrypt_share(checked, key), key)
            releases.append([name, request_id, base64.b64encode(release.to_bytes()).decode()])
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench._release_sender",
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        stdin, stdout = child.stdin, child.stdout
        if stdin is None or stdout is None:  # pragma: no cover - both are pipes
            raise RuntimeError("the release sender has no pipes")

        async def ask(line: dict[str, object]) -> None:
            stdin.write(json.dumps(line).encode() + b"\n")
            await stdin.drain()
            reply = json.loads(await stdout.readline() or b'{"ok": false, "error": "it ended"}')
            if not reply.get("ok"):
                raise RuntimeError(f"the release sender failed: {reply.get('error')}")

        try:
            await ask({"target": b.target, "pki": str(ctx.pki_dir), "releases": releases})
            committed: list[None] = []
            b.node.store.on_commit = functools.partial(committed.append, None)
            started = time.perf_counter()
            await ask({"op": "send"})
            elapsed = time.perf_counter() - started
            b.node.store.on_commit = None
        finally:
            stdin.close()
            await child.wait()
        if b.node.state != "ACTIVATED":
            raise RuntimeError("the node did not activate from the releases sent over gRPC")
        return elapsed, len(committed)


@contextlib.contextmanager
def logging_as_the_node_does() -> Iterator[None]:
    """The node's own logging while it is measured: ``hsm-node run`` logs each answer at INFO, its
    default level, in its text format on stderr (``setup_logging``, as its CLI calls it); here the
    same lines go to /dev/null, so making and writing them is in the measured time while the
    table stays quiet."""
    root, node_logger = logging.getLogger(), logging.getLogger("sdquorum")
    handlers, level, node_level = root.handlers[:], root.level, node_logger.level
    with open(os.devnull, "w") as sink:
        root.handlers.clear()
        stderr, sys.stderr = sys.stderr, sink
        try:
            setup_logging("INFO")  # its handler writes to the sys.stderr of this moment: the sink
        finally:
            sys.stderr = stderr
        node_logger.setLevel(logging.NOTSET)
        try:
            yield
        finally:
            root.handlers[:] = handlers
            root.setLevel(level)
            node_logger.setLevel(node_level)


async def run_node(ctx: BenchContext) -> list[Row]:
    m = n = 4 if ctx.quick else 10
    few = (
        2 if ctx.quick else 3
    )  # the smaller quorum of the marginal rows, same n (two answers apart at least)
    sd, sd_few = await make_sd_file(ctx, m, n), await make_sd_file(ctx, few, n)
    reps = 3 if ctx.quick else 7
    # the two arrivals, and the two quorums, take turns, so that all see the same drift of this
    # shared machine
    alone: list[float] = []
    together: list[float] = []
    alone_few: list[float] = []
    together_few: list[float] = []
    commits_alone: list[int] = []
    commits_together: list[int] = []
    cpu_alone: list[float] = []
    cpu_together: list[float] = []
    floors: list[dict[str, float]] = []  # the floor too, between the runs: the same drift
    with logging_as_the_node_does():
        for _ in range(reps):
            alone.append(
                await measure_node_host(ctx, sd, m, n, reps=1, commits=commits_alone, cpu=cpu_alone) / m
            )
            together.append(
                await measure_node_host(
                    ctx, sd, m, n, reps=1, together=True, commits=commits_together, cpu=cpu_together
                )
                / m
            )
            alone_few.append(await measure_node_host(ctx, sd_few, few, n, reps=1))
            together_few.append(await measure_node_host(ctx, sd_few, few, n, reps=1, together=True))
            floors.append(measure_answer_floor(ctx, reps=20 if ctx.quick else 60))
        over_grpc = [await measure_over_grpc(ctx, sd, m, n) for _ in range(reps)]
    per_answer, per_answer_together = median(alone), median(together)
    # each answer beyond the first few: what grows with the quorum, the completion (once per
    # recovery) left out, as the issue derived its "about 1.4 ms per answer"
    # paired by turn (measured one after the other, so under the same drift), then the median
    marginal = median([a * m - b for a, b in zip(alone, alone_few, strict=True)]) / (m - few)
    marginal_together = median([a * m - b for a, b in zip(together, together_few, strict=True)]) / (m - few)
    per_answer_grpc = median([t for t, _ in over_grpc]) / m
    parts = {k: median([f[k] for f in floors]) for k in floors[0]}
    floor = median([sum(f.values()) for f in floors])
    commit = measure_commit(ctx, reps=50 if ctx.quick else 200)
    marginal_what = (
        f"the node's time for {m} answers less its time for {few} (the same n), divided by {m - few}: "
        "what each answer adds, the completion (once per recovery) left out"
    )
    return [
        Row(
            "node",
            f"node's work per answer ({m}-of-{n}, submit_answer, no network) vs its crypto floor",
            per_answer,
            floor,
            "s",
            target=TARGET,
            details={
                "node_per_answer_ms": round(per_answer * 1000, 3),
                "runs_ms": [round(t * 1000, 3) for t in alone],
                "cpu_per_answer_ms": round(median(cpu_alone) / m * 1000, 3),
                "commits_per_run": commits_alone,
                "floor_per_answer_ms": {k: round(v * 1000, 4) for k, v in parts.items()},
                "floor_total_ms": round(floor * 1000, 3),
                "what": "answers one after another (one commit each); the m-th also completes the "
                "recovery (domain sealed and stored), which is in the node's time and not in the floor",
            },
        ),
        Row(
            "node",
            "  the same vs its crypto floor plus one durable commit (no target)",
            per_answer,
            floor + commit,
            "s",
            details={
                "commit_ms": round(commit * 1000, 3),
                "floor_plus_commit_ms": round((floor + commit) * 1000, 3),
            },
        ),
        Row(
            "node",
            f"node's work per answer, {m} answers arriving together (one batch) vs its crypto floor",
            per_answer_together,
            floor,
            "s",
            target=TARGET,
            details={
                "node_per_answer_ms": round(per_answer_together * 1000, 3),
                "runs_ms": [round(t * 1000, 3) for t in together],
                "cpu_per_answer_ms": round(median(cpu_together) / m * 1000, 3),
                "commits_per_run": commits_together,
                "what": f"the {m} submit_answer calls made at once (asyncio.gather), as {m} agents "
                "answering in the same moment reach the node: one batch, one commit; the completion "
                "is in the node's time and not in the floor",
            },
        ),
        Row(
            "node",
            f"  each answer beyond {few}, one after another, vs its crypto floor plus one durable commit",
            marginal,
            floor + commit,
            "s",
            details={
                "marginal_ms": round(marginal * 1000, 3),
                "vs_crypto_floor": round(marginal / floor, 2),
                f"runs_{few}_answers_ms": [round(t * 1000, 3) for t in alone_few],
                "what": marginal_what + "; one commit each",
            },
        ),
        Row(
            "node",
            f"  each answer beyond {few}, arriving together, vs its crypto floor",
            marginal_together,
            floor,
            "s",
            details={
                "marginal_ms": round(marginal_together * 1000, 3),
                f"runs_{few}_answers_ms": [round(t * 1000, 3) for t in together_few],
                "what": marginal_what + "; one commit per run",
            },
        ),
        Row(
            "node",
            f"  {m} releases sent at once over gRPC (another process) vs arriving together in process",
            per_answer_grpc,
            per_answer_together,
            "s",
            details={
                "runs_ms": [round(t * 1000, 3) for t, _ in over_grpc],
                "commits_per_run": [c for _, c in over_grpc],
                "what": f"{m} SubmitRelease calls, each on its custodian's own mTLS connection, sent "
                "together; from the send to the last acknowledgement, divided by m. They share a "
                "commit only when they reach submit_answer in the same turn of the node's loop",
            },
        ),
    ]
