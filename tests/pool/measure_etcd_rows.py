"""Measure what one sealed key row costs in etcd (the numbers in docs/adr/0013-pool-on-etcd.md).

    .venv/bin/python tests/pool/measure_etcd_rows.py [--rows 20000] [--type RSA3072]

Starts a 3-member cluster (:mod:`etcd_cluster`), writes ``--rows`` key rows sealed exactly as the
node seals them (AES-256-GCM under a data encryption key, AAD ``type|name``; the private material
from :func:`hsm_node.keyops.generate`), each row the node's fields (name, type, public DER, sealed,
created_at) length-prefixed, and prints the row size and etcd's database size in use per row.
Not a test: a measurement to re-run when the row format changes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[2])]

from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402
from etcd_cluster import EtcdCluster  # noqa: E402

from hsm_node.keyops import KeyType, generate  # noqa: E402
from hsm_node.pool.etcd import EtcdClient, Layout  # noqa: E402


def row(dek: AESGCM, name: str, kind: KeyType, public_der: bytes, private: bytes) -> bytes:
    nonce = os.urandom(12)
    sealed = nonce + dek.encrypt(nonce, private, f"{int(kind)}|{name}".encode())
    fields = [name.encode(), bytes([int(kind)]), public_der, sealed, struct.pack(">q", int(time.time()))]
    return b"".join(struct.pack(">I", len(f)) + f for f in fields)


async def measure(cluster: EtcdCluster, rows: int, kind: KeyType) -> None:
    layout = Layout(os.urandom(16))
    dek = AESGCM(AESGCM.generate_key(bit_length=256))
    public_der, private = generate(kind)  # one key's material, sealed afresh per row (fresh nonce)
    async with EtcdClient(cluster.config("root", call_timeout=30, attempt_timeout=10)) as c:
        endpoint = cluster.endpoints[0]
        s0 = await c.status(endpoint)
        before = (s0.db_size, s0.db_size_in_use)
        sample = row(dek, "k" + "0" * 31, kind, public_der, private)
        sem = asyncio.Semaphore(64)
        t0 = time.monotonic()

        async def put(i: int) -> None:
            name = f"k{i:031d}"  # a 32-character key name
            async with sem:
                await c.put(layout.key(name), row(dek, name, kind, public_der, private))

        await asyncio.gather(*(put(i) for i in range(rows)))
        took = time.monotonic() - t0
        s1 = await c.status(endpoint)
        after = (s1.db_size, s1.db_size_in_use)
    etcd_key = len(layout.key("k" + "0" * 31))
    in_use = (after[1] - before[1]) / rows
    print(f"key type {kind.name}: row {len(sample)} B, etcd key {etcd_key} B")
    print(f"{rows} rows in {took:.1f} s ({rows / took:.0f} puts/s)")
    print(f"etcd db size in use: +{(after[1] - before[1]) / 2**20:.1f} MiB = {in_use:.0f} B/row")
    print(f"db file: {before[0] / 2**20:.1f} -> {after[0] / 2**20:.1f} MiB")
    print(f"100,000 rows: about {in_use * 100_000 / 2**20:.0f} MiB of the 2 GiB default quota")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--type", default="RSA3072", choices=[k.name for k in KeyType])
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d, EtcdCluster(Path(d)) as cluster:
        cluster.start()
        asyncio.run(measure(cluster, a.rows, KeyType[a.type]))


if __name__ == "__main__":
    main()
