"""Large domains: backup and restore of a 100,000-key store against the raw cost (issue 6, part 4).

Set-up: an in-process node-a (no server) activated 3-of-5, then the key store is bulk-loaded by
this module (bench-only): rows written straight into the node's SQLite database with the SQL of
``SqliteNodeStore.keys.put_key`` (same sealing: AES-256-GCM under the domain's data encryption key, AAD
``"{type}|{name}"``) in one transaction. Material comes from ``hsm_node.keyops.generate``: AES-256
and Ed25519 each generated per key; RSA-3072 generated once for a few keys and reused under many
names (generation costs ~0.2 s per key; reuse changes no byte count).

Measured (median of the runs): ``Node.backup()`` (copy the key rows, still sealed under the data
encryption key, into an SQLite image; check every row opens; seal and sign the image: backup format
version 2, ADR 0007) and ``Node.restore(data)`` (verify and decrypt; check the image's schema and
rows; replace the key table from it in one transaction).

Baseline, measured in the same run on the same keys: a protobuf message holding the same fields
(name, type, public DER, private material, created_at; a message type built at run time) serialised
and AES-256-GCM encrypted (seal), then decrypted and parsed back to Python values (unseal).
A second, informational baseline adds the storage work any design must do here: read the rows and
open each one (backup), insert the sealed rows in one transaction from Python (restore).

Peak memory: a subprocess resets its high-water mark (``/proc/self/clear_refs``), runs one backup
(or restore), and reads ``VmHWM``; the delta over its RSS before the call is compared with
``4 x payload + 100 MB``, payload being the baseline's protobuf size (the key data itself).

Streaming: the same data directory is served by a real ``hsm-node`` process; ``sdctl backup`` and
``sdctl restore`` move the backup (larger than one 4 MiB gRPC message) in 1 MiB chunks.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

from bench._common import ROOT, BenchContext, Row, harness, median, run_async
from hsm_node import keyops
from hsm_node.keyops import KeyType
from hsm_node.node import Node, NodeConfig
from hsm_node.store import SqliteNodeStore, load_or_create_sealing_key
from hsm_node.store.image import read_image
from sdquorum.backup import BackupKey
from sdquorum.pki import Role

__all__ = ["run_large"]

MIB = 1024 * 1024
NODE_ID = "node-a"
_INSERT = "INSERT INTO keys (name, type, public_der, sealed, created_at) VALUES (?, ?, ?, ?, ?)"
_SCHEMA = (
    "CREATE TABLE keys (name TEXT PRIMARY KEY, type INTEGER NOT NULL, public_der BLOB NOT NULL, "
    "sealed BLOB NOT NULL, created_at INTEGER NOT NULL)"
)


# ---------------------------------------------------------------------------- baseline message


def _baseline_classes() -> tuple[type[Message], type[Message]]:
    """``Entry {name, type, public, private, created_at}`` and ``EntryList {repeated Entry keys}``."""
    f = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(
        name="sdquorum_bench_backup.proto", package="sdquorum.bench", syntax="proto3"
    )
    entry = fdp.message_type.add(name="Entry")
    for number, (name, kind) in enumerate(
        [
            ("name", f.TYPE_STRING),
            ("type", f.TYPE_INT32),
            ("public", f.TYPE_BYTES),
            ("private", f.TYPE_BYTES),
            ("created_at", f.TYPE_INT64),
        ],
        start=1,
    ):
        entry.field.add(name=name, number=number, type=kind, label=f.LABEL_OPTIONAL)
    listing = fdp.message_type.add(name="EntryList")
    listing.field.add(
        name="keys", number=1, type=f.TYPE_MESSAGE, label=f.LABEL_REPEATED, type_name=".sdquorum.bench.Entry"
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return (
        message_factory.GetMessageClass(pool.FindMessageTypeByName("sdquorum.bench.Entry")),
        message_factory.GetMessageClass(pool.FindMessageTypeByName("sdquorum.bench.EntryList")),
    )


def baseline_seal(keys: Sequence[BackupKey], key: bytes) -> tuple[bytes, int]:
    """Serialise the keys as protobuf and AES-256-GCM the bytes; (ciphertext, payload size)."""
    entry_cls, list_cls = _baseline_classes()
    msg: Any = list_cls(
        keys=[
            entry_cls(
                name=k.name, type=k.key_type, public=k.public_der, private=k.private, created_at=k.created_at
            )
            for k in keys
        ]
    )
    body = msg.SerializeToString()
    nonce = os.urandom(12)
    return nonce + AESGCM(key).encrypt(nonce, body, b"baseline"), len(body)


def baseline_unseal(data: bytes, key: bytes) -> list[tuple[str, int, bytes, bytes, int]]:
    _, list_cls = _baseline_classes()
    body = AESGCM(key).decrypt(data[:12], data[12:], b"baseline")
    msg: Any = list_cls.FromString(body)
    return [(e.name, e.type, e.public, e.private, e.created_at) for e in msg.keys]


# ---------------------------------------------------------------------------- the key store


@dataclass
class LoadedStore:
    data_dir: Path
    sealing_key_path: Path
    counts: dict[str, int]
    distinct_rsa: int
    load_seconds: float


def _config(ctx_pki: Path, data_dir: Path) -> NodeConfig:
    att_key, att_der = harness().load_attestation(ctx_pki, NODE_ID)
    return NodeConfig(
        node_id=NODE_ID,
        address="127.0.0.1:0",
        data_dir=data_dir,
        attestation_key=att_key,
        attestation_cert_der=att_der,
    )


def open_node(pki_dir: Path, data_dir: Path, sealing_key_path: Path) -> tuple[Node, SqliteNodeStore]:
    store = SqliteNodeStore(data_dir, load_or_create_sealing_key(sealing_key_path), NODE_ID)
    return Node(_config(pki_dir, data_dir), store), store


def build_store(ctx: BenchContext, total: int, rsa_names: int, rsa_distinct: int) -> LoadedStore:
    """Activate a node-a 3-of-5 and bulk-load ``total`` keys into its store in one transaction."""
    started = time.perf_counter()
    data_dir = ctx.tmp / "large" / NODE_ID
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    sealing_key_path = data_dir.with_name(data_dir.name + ".sealing-key")  # where hsm-node looks by default
    node, store = open_node(ctx.pki_dir, data_dir, sealing_key_path)
    try:
        run_async(node.activation.download(ctx.certs(5), 3, Role("admin", None)))
        loaded = store.domain.load_domain()
        if loaded is None:
            raise RuntimeError("the node did not activate")
        dek = loaded[0].data_encryption_key
    finally:
        store.close()
    rsa_material = [keyops.generate(KeyType.RSA3072) for _ in range(rsa_distinct)]
    rest = total - rsa_names
    n_ed = rest // 2
    n_aes = rest - n_ed
    aead = AESGCM(dek)
    created = int(time.time())

    def row(name: str, kind: KeyType, public: bytes, private: bytes) -> tuple[str, int, bytes, bytes, int]:
        nonce = os.urandom(
            12
        )  # as hsm_node.store.sealing.KeySeal: nonce || AES-256-GCM(dek, private, "type|name")
        sealed = nonce + aead.encrypt(nonce, private, f"{int(kind)}|{name}".encode())
        return name, int(kind), public, sealed, created

    rows = [
        row(f"aes-{i:06d}", KeyType.AES256_GCM, *keyops.generate(KeyType.AES256_GCM)) for i in range(n_aes)
    ]
    rows += [row(f"ed-{i:06d}", KeyType.ED25519, *keyops.generate(KeyType.ED25519)) for i in range(n_ed)]
    rows += [row(f"rsa-{i:06d}", KeyType.RSA3072, *rsa_material[i % rsa_distinct]) for i in range(rsa_names)]
    db = sqlite3.connect(data_dir / "node.db", isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        db.executemany(_INSERT, rows)
        db.execute("COMMIT")
    finally:
        db.close()
    return LoadedStore(
        data_dir,
        sealing_key_path,
        {"AES256_GCM": n_aes, "ED25519": n_ed, "RSA3072": rsa_names},
        rsa_distinct,
        time.perf_counter() - started,
    )


def _plain_keys(store: SqliteNodeStore, dek: bytes) -> list[BackupKey]:
    """Every key with its private material, for the baseline (which seals the keys themselves)."""
    aead = AESGCM(dek)
    return [
        BackupKey(
            name,
            kind,
            bytes(public),
            aead.decrypt(sealed[:12], sealed[12:], f"{kind}|{name}".encode()),
            created,
        )
        for name, kind, public, sealed, created in _rows(store, dek)
    ]


def _rows(store: SqliteNodeStore, dek: bytes) -> list[tuple[str, int, bytes, bytes, int]]:
    """(name, type, public_der, sealed, created_at) of every key row, through the store's seam."""
    return [
        (r.key.name, r.key.key_type, r.key.public_der, r.sealed, r.key.created_at)
        for r in read_image(*store.keys.export_key_rows(dek))
    ]


# ---------------------------------------------------------------------------- storage floor


def storage_read_floor(data_dir: Path, dek: bytes) -> float:
    """Read every key row and open its sealed material: what any backup of this store must do."""
    started = time.perf_counter()
    db = sqlite3.connect(data_dir / "node.db")
    aead = AESGCM(dek)
    try:
        for name, kind, _public, sealed, _created in db.execute(
            "SELECT name, type, public_der, sealed, created_at FROM keys ORDER BY name"
        ):
            aead.decrypt(sealed[:12], sealed[12:], f"{kind}|{name}".encode())
    finally:
        db.close()
    return time.perf_counter() - started


def storage_write_floor(scratch: Path, rows: Sequence[tuple[Any, ...]]) -> float:
    """Insert the store's rows (keys sealed as the store keeps them) into a fresh table in one
    transaction (WAL, synchronous=FULL, as the node), from Python tuples: what writing this many rows
    to SQLite costs, whatever the backup format."""
    scratch.mkdir(parents=True, exist_ok=True)
    path = scratch / f"floor-{os.urandom(4).hex()}.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(_SCHEMA)
    started = time.perf_counter()
    db.execute("BEGIN IMMEDIATE")
    db.executemany(_INSERT, rows)
    db.execute("COMMIT")
    elapsed = time.perf_counter() - started
    db.close()
    return elapsed


# ---------------------------------------------------------------------------- memory (subprocess)


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _memory_child(argv: Sequence[str]) -> None:
    """``python -m bench.large memory {backup,restore} PKI DATA_DIR SEALING_KEY [BACKUP_FILE]``."""
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["backup", "restore"])
    p.add_argument("pki", type=Path)
    p.add_argument("data_dir", type=Path)
    p.add_argument("sealing_key", type=Path)
    p.add_argument("backup_file", type=Path, nargs="?")
    a = p.parse_args(argv)
    node, store = open_node(a.pki, a.data_dir, a.sealing_key)
    data = a.backup_file.read_bytes() if a.what == "restore" else b""
    before_kb = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark to the current RSS
    started = time.perf_counter()
    if a.what == "backup":
        out = node.backups.backup()
        size = len(out)
    else:
        size = node.backups.restore(data)
    elapsed = time.perf_counter() - started
    peak_kb = _status_kb("VmHWM")
    store.close()
    print(
        json.dumps(
            {
                "before_kb": before_kb,
                "peak_kb": peak_kb,
                "elapsed": elapsed,
                "result": size,
                "input": len(data),
            }
        )
    )


def measure_memory(
    ctx: BenchContext, loaded: LoadedStore, what: str, backup_file: Path | None
) -> dict[str, Any]:
    argv = [
        sys.executable,
        "-m",
        "bench.large",
        "memory",
        what,
        str(ctx.pki_dir),
        str(loaded.data_dir),
        str(loaded.sealing_key_path),
    ]
    if backup_file is not None:
        argv.append(str(backup_file))
    out = subprocess.run(argv, cwd=ROOT, capture_output=True, check=True, timeout=600)
    result: dict[str, Any] = json.loads(out.stdout.decode().strip().splitlines()[-1])
    return result


# ---------------------------------------------------------------------------- sdctl over gRPC


def _sdctl(np: Any, ctx: BenchContext, *args: str) -> tuple[float, str]:
    exe = Path(sys.executable).with_name("sdctl")
    base = [str(exe)] if exe.exists() else [sys.executable, "-m", "sdctl.cli"]
    env = {
        **os.environ,
        "SDCTL_NODE": np.target,
        "SDCTL_CERT": str(ctx.pki_dir / "admin.pem"),
        "SDCTL_KEY": str(ctx.pki_dir / "admin.key"),
        "SDCTL_CA": str(ctx.pki_dir / "ca.pem"),
    }
    started = time.perf_counter()
    out = subprocess.run([*base, *args], cwd=ROOT, env=env, capture_output=True, timeout=600, check=False)
    elapsed = time.perf_counter() - started
    if out.returncode != 0:
        raise RuntimeError(f"sdctl {' '.join(args)} failed ({out.returncode}): {out.stderr.decode()[-500:]}")
    return elapsed, out.stdout.decode().strip()


def sdctl_round_trip(ctx: BenchContext, loaded: LoadedStore) -> dict[str, Any]:
    h = harness()
    np = h.NodeProcess(ctx.pki_dir, loaded.data_dir, node_id=NODE_ID, log_level="WARNING")
    np.start(timeout=60)
    try:
        status_s, _ = _sdctl(np, ctx, "status")
        out_file = ctx.tmp / "large" / f"sdctl-{os.urandom(4).hex()}.backup"
        backup_s, backup_msg = _sdctl(np, ctx, "backup", "--out", str(out_file))
        size = out_file.stat().st_size
        restore_s, restore_msg = _sdctl(np, ctx, "restore", str(out_file))
    finally:
        np.kill(15)  # SIGTERM: the node drains and closes its database
    return {
        "status_seconds": status_s,
        "backup_seconds": backup_s,
        "restore_seconds": restore_s,
        "backup_bytes": size,
        "chunks_of_1_mib": -(-size // MIB),
        "backup_message": backup_msg,
        "restore_message": restore_msg,
    }


# ---------------------------------------------------------------------------- the part


def run_large(ctx: BenchContext) -> list[Row]:
    total, rsa_names, rsa_distinct = (25_000, 30, 3) if ctx.quick else (100_000, 300, 30)
    runs = 1 if ctx.quick else 3
    loaded = build_store(ctx, total, rsa_names, rsa_distinct)
    node, store = open_node(ctx.pki_dir, loaded.data_dir, loaded.sealing_key_path)
    try:
        if node.store.keys.count_keys() != total:
            raise RuntimeError(f"bulk load wrote {node.store.keys.count_keys()} keys, not {total}")
        domain = store.domain.load_domain()
        if domain is None:
            raise RuntimeError("no domain")
        secrets = domain[0]
        dek = secrets.data_encryption_key
        backup_t, restore_t, phases = [], [], []
        data = b""
        for _ in range(runs):
            t0 = time.perf_counter()
            data = node.backups.backup()
            backup_t.append(time.perf_counter() - t0)
        for _ in range(runs):
            t0 = time.perf_counter()
            restored = node.backups.restore(data)
            restore_t.append(time.perf_counter() - t0)
            if restored != total:
                raise RuntimeError(f"restore returned {restored} keys, not {total}")
        # Where the time goes, with the same functions Node.backup/restore call.
        from sdquorum import backup as backup_mod

        t0 = time.perf_counter()
        image, count = store.keys.export_key_rows(dek)
        t1 = time.perf_counter()
        sealed = backup_mod.seal_backup(
            secrets, image, key_count=count, node_id=NODE_ID, created_at=0, rng=os.urandom
        )
        t2 = time.perf_counter()
        opened = backup_mod.open_backup(sealed, secrets)
        t3 = time.perf_counter()
        assert opened.key_rows is not None
        store.keys.import_key_rows(opened.key_rows, opened.header.key_count)
        t4 = time.perf_counter()
        phases.append(
            {
                "export_key_rows (copy rows to an SQLite image, check each opens)": t1 - t0,
                "seal_backup (AES-GCM + SHA-256 + sign)": t2 - t1,
                "open_backup (verify + AES-GCM)": t3 - t2,
                "import_key_rows (check the image, replace the table in 1 transaction)": t4 - t3,
            }
        )
        keys = _plain_keys(store, dek)
        stored_rows = _rows(store, dek)
        seal_t, unseal_t = [], []
        payload = 0
        ct = b""
        for _ in range(runs):
            t0 = time.perf_counter()
            ct, payload = baseline_seal(keys, secrets.backup_key)
            seal_t.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            back = baseline_unseal(ct, secrets.backup_key)
            unseal_t.append(time.perf_counter() - t0)
            if len(back) != total:
                raise RuntimeError("baseline round trip lost keys")
        read_floor = median([storage_read_floor(loaded.data_dir, dek) for _ in range(runs)])
        write_floor = median(
            [storage_write_floor(ctx.tmp / "large" / "scratch", stored_rows) for _ in range(runs)]
        )
        backup_file = ctx.tmp / "large" / "in-process.backup"
        backup_file.write_bytes(data)
    finally:
        store.close()
    mem_backup = measure_memory(ctx, loaded, "backup", None)
    mem_restore = measure_memory(ctx, loaded, "restore", backup_file)
    grpc = sdctl_round_trip(ctx, loaded)

    payload_mb = payload / 1e6
    mem_limit_mb = 4 * payload_mb + 100
    common = {
        "keys": loaded.counts,
        "rsa_distinct_materials": loaded.distinct_rsa,
        "payload_protobuf_bytes": payload,
        "backup_file_bytes": len(data),
        "bulk_load_seconds": round(loaded.load_seconds, 2),
        "phases_seconds": {k: round(v, 3) for k, v in phases[0].items()},
    }
    b_med, r_med = median(backup_t), median(restore_t)
    rows = [
        Row(
            "large",
            f"backup (Node.backup) of {total:,} keys vs protobuf+AES-GCM",
            b_med,
            median(seal_t),
            "s",
            target=3.0,
            details={**common, "backup_seconds_all": backup_t, "baseline_seal_seconds_all": seal_t},
        ),
        Row(
            "large",
            f"restore (Node.restore) of {total:,} keys vs AES-GCM+protobuf",
            r_med,
            median(unseal_t),
            "s",
            target=3.0,
            details={**common, "restore_seconds_all": restore_t, "baseline_unseal_seconds_all": unseal_t},
        ),
        Row(
            "large",
            "  backup vs raw + storage floor (read rows, open each)",
            b_med,
            median(seal_t) + read_floor,
            "s",
            details={"storage_read_floor_seconds": read_floor},
        ),
        Row(
            "large",
            "  restore vs raw + storage floor (insert the sealed rows in 1 tx)",
            r_med,
            median(unseal_t) + write_floor,
            "s",
            details={"storage_write_floor_seconds": write_floor},
        ),
    ]
    for what, mem in (("backup", mem_backup), ("restore", mem_restore)):
        delta_mb = (mem["peak_kb"] - mem["before_kb"]) / 1024
        rows.append(
            Row(
                "large",
                f"peak memory of one {what} (VmHWM - RSS before)",
                delta_mb,
                mem_limit_mb,
                "MB",
                target=1.0,
                target_text="<= 4x payload + 100 MB",
                details={**mem, "payload_mb": payload_mb, "limit_mb": mem_limit_mb},
            )
        )
    rows.append(
        Row(
            "large",
            f"sdctl backup over gRPC: {grpc['backup_bytes'] / MIB:.1f} MiB in {grpc['chunks_of_1_mib']} chunks",
            grpc["backup_seconds"],
            b_med,
            "s",
            check=grpc["backup_bytes"] > 4 * MIB,
            target_text="> 4 MiB streams",
            details=grpc,
        )
    )
    rows.append(
        Row(
            "large",
            f"sdctl restore over gRPC of the same file ({total:,} keys)",
            grpc["restore_seconds"],
            r_med,
            "s",
            check=f"restored {total} keys" in grpc["restore_message"],
            target_text="all keys restored",
            details={"sdctl_status_seconds (CLI start + connect)": grpc["status_seconds"]},
        )
    )
    return rows


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "memory":
        _memory_child(sys.argv[2:])
    else:
        raise SystemExit(
            "usage: python -m bench.large memory {backup,restore} PKI DATA_DIR SEALING_KEY [FILE]"
        )
