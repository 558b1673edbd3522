"""``hsm-node`` settings: ``[node]``, ``[keys]``, ``[tls]``, ``[attestation]``, ``[observability]``,
``[pool]`` in TOML; ``SDQUORUM_NODE_*`` in the environment; flags of ``hsm-node run``. Sample:
deploy/config/node.toml. With ``pool.etcd_endpoints`` set the node is a member of an HSM pool
(docs/adr/0013-pool-on-etcd.md) and then needs the three etcd TLS files too."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sdquorum.errors import UsageError
from sdquorum_rpc.config import Setting, check_host_port, load_settings, log_settings

__all__ = ["SETTINGS", "NodeSettings"]

E = "SDQUORUM_NODE_"
SETTINGS = [
    Setting(
        "node.id",
        "--node-id",
        E + "ID",
        required=True,
        help="this node's name, as in its attestation certificate",
    ),
    Setting(
        "node.listen",
        "--listen",
        E + "LISTEN",
        default="127.0.0.1:7443",
        help="host:port to bind (port 0: any free port)",
    ),
    Setting(
        "node.address",
        "--address",
        E + "ADDRESS",
        help="address agents are told in the attestation (default: --listen)",
    ),
    Setting(
        "node.data_dir",
        "--data-dir",
        E + "DATA_DIR",
        Path,
        required=True,
        help="where the node keeps its database",
    ),
    Setting(
        "node.sealing_key_file",
        "--sealing-key-file",
        E + "SEALING_KEY_FILE",
        Path,
        help="node sealing key file (default: DATA_DIR.sealing-key)",
    ),
    Setting(
        "node.session_seconds",
        "--session-seconds",
        E + "SESSION_SECONDS",
        int,
        600,
        help="default ceremony deadline in seconds",
    ),
    Setting(
        "node.max_message_bytes",
        "--max-message-bytes",
        E + "MAX_MESSAGE_BYTES",
        int,
        4 * 1024 * 1024,
        help="largest gRPC message accepted",
    ),
    Setting(
        "node.max_batch_items",
        "--max-batch-items",
        E + "MAX_BATCH_ITEMS",
        int,
        1000,
        help="most items in one EncryptBatch or SignBatch call",
    ),
    Setting(
        "node.crypto_workers",
        "--crypto-workers",
        E + "CRYPTO_WORKERS",
        int,
        2,
        help="worker processes for large EncryptBatch/SignBatch calls (0: on the server's thread)",
    ),
    Setting(
        "node.port_file", "--port-file", E + "PORT_FILE", Path, help="write the bound port here once serving"
    ),
    Setting(
        "keys.retention_days",
        "--key-retention-days",
        E + "KEY_RETENTION_DAYS",
        int,
        90,
        help="days a deleted key stays recoverable before the node purges it (1..3650)",
    ),
    Setting(
        "tls.cert", "--tls-cert", E + "TLS_CERT", Path, required=True, help="the node's TLS certificate (PEM)"
    ),
    Setting("tls.key", "--tls-key", E + "TLS_KEY", Path, required=True, help="its private key (PEM, 0600)"),
    Setting(
        "tls.ca",
        "--ca",
        E + "TLS_CA",
        Path,
        required=True,
        help="transport CA that signs every client certificate",
    ),
    Setting(
        "attestation.cert",
        "--attestation-cert",
        E + "ATTESTATION_CERT",
        Path,
        required=True,
        help="the node's attestation certificate",
    ),
    Setting(
        "attestation.key",
        "--attestation-key",
        E + "ATTESTATION_KEY",
        Path,
        required=True,
        help="its Ed25519 private key",
    ),
    *log_settings(E),
    Setting(
        "observability.metrics_listen",
        "--metrics-listen",
        E + "METRICS_LISTEN",
        help="host:port for Prometheus /metrics (off if unset)",
    ),
    Setting(
        "pool.etcd_endpoints",
        "--pool-etcd",
        E + "POOL_ETCD",
        help="etcd endpoints host:port,host:port,... of the HSM pool (unset: a node standing alone)",
    ),
    Setting(
        "pool.etcd_cert",
        "--pool-etcd-cert",
        E + "POOL_ETCD_CERT",
        Path,
        help="this member's etcd client certificate (sdctl pki issue --etcd-node)",
    ),
    Setting(
        "pool.etcd_key", "--pool-etcd-key", E + "POOL_ETCD_KEY", Path, help="its private key (PEM, 0600)"
    ),
    Setting("pool.etcd_ca", "--pool-etcd-ca", E + "POOL_ETCD_CA", Path, help="the etcd cluster's CA"),
    Setting(
        "pool.attestation_root",
        "--pool-attestation-root",
        E + "POOL_ATTESTATION_ROOT",
        Path,
        help="the attestation root a joining node's and a granting member's certificates must chain to",
    ),
    Setting(
        "pool.name",
        "--pool-name",
        E + "POOL_NAME",
        default="sdquorum",
        help="the pool's name: its rows in etcd are under /sdquorum/<hex of it>/",
    ),
    Setting(
        "pool.max_staleness",
        "--pool-max-staleness",
        E + "POOL_MAX_STALENESS",
        default="5",
        help="seconds a member serves without proof its etcd view is current, then UNAVAILABLE",
    ),
    Setting(
        "observability.drain_seconds",
        "--drain-seconds",
        E + "DRAIN_SECONDS",
        int,
        5,
        help="on SIGTERM, time given to calls in flight",
    ),
]
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True)
class NodeSettings:
    node_id: str
    listen: str
    address: str | None
    data_dir: Path
    sealing_key_file: Path | None
    session_seconds: int
    max_message_bytes: int
    max_batch_items: int
    crypto_workers: int
    port_file: Path | None
    key_retention_days: int
    tls_cert: Path
    tls_key: Path
    ca: Path
    attestation_cert: Path
    attestation_key: Path
    log_level: str
    log_format: str
    metrics_listen: str | None
    drain_seconds: int
    pool_etcd: str | None = None
    pool_etcd_cert: Path | None = None
    pool_etcd_key: Path | None = None
    pool_etcd_ca: Path | None = None
    pool_attestation_root: Path | None = None
    pool_name: str = "sdquorum"
    pool_max_staleness: str = "5"

    def __post_init__(self) -> None:
        if (
            not self.node_id
            or len(self.node_id) > 64
            or not self.node_id.replace("-", "").replace("_", "").isalnum()
        ):
            raise UsageError(f"node.id = {self.node_id!r}: use 1..64 letters, digits, - or _ (e.g. node-a)")
        check_host_port(self.listen, "node.listen")
        if self.address is not None:
            check_host_port(self.address, "node.address")
        if self.metrics_listen is not None:
            check_host_port(self.metrics_listen, "observability.metrics_listen")
        if not 10 <= self.session_seconds <= 24 * 3600:
            raise UsageError(f"node.session_seconds = {self.session_seconds}: use 10..86400")
        if not 64 * 1024 <= self.max_message_bytes <= 64 * 1024 * 1024:
            raise UsageError(f"node.max_message_bytes = {self.max_message_bytes}: use 65536..67108864")
        if not 1 <= self.max_batch_items <= 100_000:
            raise UsageError(f"node.max_batch_items = {self.max_batch_items}: use 1..100000")
        if not 0 <= self.crypto_workers <= 64:
            raise UsageError(f"node.crypto_workers = {self.crypto_workers}: use 0 (off) or 1..64")
        if not 1 <= self.key_retention_days <= 3650:
            raise UsageError(f"keys.retention_days = {self.key_retention_days}: use 1..3650 (days)")
        if self.log_level.upper() not in LOG_LEVELS:
            raise UsageError(
                f"observability.log_level = {self.log_level!r}: use one of {', '.join(LOG_LEVELS)}"
            )
        if self.log_format not in ("text", "json"):
            raise UsageError(f"observability.log_format = {self.log_format!r}: use text or json")
        if not 0 <= self.drain_seconds <= 300:
            raise UsageError(f"observability.drain_seconds = {self.drain_seconds}: use 0..300")
        self._check_pool()

    def _check_pool(self) -> None:
        try:
            staleness = float(self.pool_max_staleness)
        except ValueError:
            staleness = -1.0
        if not 0.5 <= staleness <= 300:
            raise UsageError(f"pool.max_staleness = {self.pool_max_staleness!r}: use 0.5..300 (seconds)")
        if (
            not self.pool_name
            or len(self.pool_name) > 64
            or not self.pool_name.replace("-", "").replace("_", "").isalnum()
        ):
            raise UsageError(f"pool.name = {self.pool_name!r}: use 1..64 letters, digits, - or _")
        if self.pool_etcd is None:
            return
        for e in self.pool_endpoints:
            check_host_port(e, "pool.etcd_endpoints")
        missing = [
            flag
            for flag, v in (
                ("--pool-etcd-cert", self.pool_etcd_cert),
                ("--pool-etcd-key", self.pool_etcd_key),
                ("--pool-etcd-ca", self.pool_etcd_ca),
                ("--pool-attestation-root", self.pool_attestation_root),
            )
            if v is None
        ]
        if missing:
            raise UsageError(
                f"pool.etcd_endpoints is set but {', '.join(missing)} is not: a pool member talks to etcd "
                "over mutual TLS only (issue its pair with 'sdctl pki issue --etcd-node') and checks joins "
                "under the attestation root"
            )

    @property
    def pool_endpoints(self) -> tuple[str, ...]:
        return tuple(e.strip() for e in (self.pool_etcd or "").split(",") if e.strip())

    @property
    def max_staleness(self) -> float:
        return float(self.pool_max_staleness)

    @property
    def sealing_key_path(self) -> Path:
        return self.sealing_key_file or self.data_dir.with_name(self.data_dir.name + ".sealing-key")

    @classmethod
    def load(cls, args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> NodeSettings:
        return cls(**load_settings(SETTINGS, args, environ))
