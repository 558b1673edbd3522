"""``hsm-node run``: start an emulated HSM node.

Examples::

    hsm-node run --config /etc/sdquorum/node.toml
    hsm-node run --node-id node-a --listen 127.0.0.1:7443 --data-dir /var/lib/sdquorum/node-a \\
        --tls-cert node.pem --tls-key node.key --ca ca.pem \\
        --attestation-cert node-a.att.pem --attestation-key node-a.att.key

Settings come from the TOML file, then SDQUORUM_NODE_* variables, then flags (sample:
deploy/config/node.toml). SIGTERM drains: health turns NOT_SERVING, new calls are refused, calls
in flight get --drain-seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from hsm_node.config import SETTINGS, NodeSettings
from hsm_node.cryptopool import CryptoPool, reuse_large_buffers
from hsm_node.node import Node, NodeConfig
from hsm_node.server import serve
from hsm_node.store import NodeStore, SqliteNodeStore, check_data_dir, load_or_create_sealing_key
from sdquorum import __version__
from sdquorum.errors import UsageError
from sdquorum_rpc.cli import run_main
from sdquorum_rpc.config import add_flags
from sdquorum_rpc.files import private_umask
from sdquorum_rpc.observability import NodeMetrics, announce, setup_logging
from sdquorum_rpc.tls import TlsFiles

__all__ = ["main"]

log = logging.getLogger("sdquorum.node")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hsm-node",
        description="Emulated HSM node: key store, data plane, and the coordinator of security-domain ceremonies.",
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser(
        "run",
        help="serve the node's gRPC API over mTLS",
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_flags(r, SETTINGS)
    c = sub.add_parser(
        "completion",
        help="print the shell completion script (bash or zsh)",
        epilog="examples:\n  source <(hsm-node completion bash)\n"
        "  echo 'source <(hsm-node completion zsh)' >> ~/.zshrc",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument("shell", choices=["bash", "zsh"])
    return p


def _load_attestation(cert_path: Path, key_path: Path, node_id: str) -> tuple[Ed25519PrivateKey, bytes]:
    """The attestation key and certificate, checked to belong together and to certify ``node_id``:
    agents refuse an attestation whose node differs from its certificate's CN."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError) as e:
        raise UsageError(
            f"cannot load the attestation certificate or key ({e}): check --attestation-cert/--attestation-key"
        ) from e
    if not isinstance(key, Ed25519PrivateKey):
        raise UsageError("the attestation key must be Ed25519 (make it with 'sdctl pki init')")
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    if key.public_key().public_bytes(*raw) != cert.public_key().public_bytes(*raw):
        raise UsageError("the attestation key is not the key of the attestation certificate: give the pair")
    names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if names != [node_id]:
        raise UsageError(
            f"the attestation certificate certifies {', '.join(map(str, names)) or 'no node'}, not node.id "
            f"{node_id!r}: set node.id to its CN, or give this node's own certificate"
        )
    return key, cert.public_bytes(serialization.Encoding.DER)


def _open_store(cfg: NodeSettings, sealing_key: bytes) -> NodeStore:
    """The node's own SQLite database, or, with pool.etcd_endpoints, the pool's store."""
    if not cfg.pool_etcd:
        return SqliteNodeStore(cfg.data_dir, sealing_key, cfg.node_id)
    from hsm_node.pool.etcd import EtcdConfig  # grpc stubs of etcd: only a pool member loads them
    from hsm_node.pool.store import PoolNodeStore

    assert cfg.pool_etcd_cert and cfg.pool_etcd_key and cfg.pool_etcd_ca  # checked by NodeSettings
    try:
        etcd = EtcdConfig(
            endpoints=cfg.pool_endpoints,
            ca_pem=cfg.pool_etcd_ca.read_bytes(),
            cert_pem=cfg.pool_etcd_cert.read_bytes(),
            key_pem=cfg.pool_etcd_key.read_bytes(),
        )
    except OSError as e:
        raise UsageError(
            f"cannot read the pool's etcd TLS files ({e.strerror}: {e.filename}): check "
            "--pool-etcd-cert/--pool-etcd-key/--pool-etcd-ca"
        ) from e
    from hsm_node.pool.access import require_member

    require_member(etcd.cert_pem, cfg.node_id, str(cfg.pool_etcd_cert))
    store = PoolNodeStore(
        etcd, cfg.pool_name.encode(), cfg.data_dir, sealing_key, cfg.node_id, max_staleness=cfg.max_staleness
    )
    log.info("pool member of %s through etcd %s", cfg.pool_name, ",".join(cfg.pool_endpoints))
    return store


def _start_pool(
    cfg: NodeSettings, node: Node, store: NodeStore, att_key: Ed25519PrivateKey, att_der: bytes
) -> asyncio.Future[None] | None:
    """A pool member: the pool service on ``node.pool`` and its loop (join, serve joins, follow)."""
    from hsm_node.pool.member import PoolMember
    from hsm_node.pool.service import PoolService
    from hsm_node.pool.store import PoolNodeStore

    if not isinstance(store, PoolNodeStore):
        return None
    assert cfg.pool_attestation_root is not None  # checked by NodeSettings
    try:
        root = cfg.pool_attestation_root.read_bytes()
    except OSError as e:
        raise UsageError(
            f"cannot read --pool-attestation-root {cfg.pool_attestation_root}: {e.strerror}"
        ) from e
    member = PoolMember(store, cfg.node_id, att_key, att_der, root)
    member.check_standing()  # a removed member does not start
    service = PoolService(cfg.pool_name, member, node.lifecycle, node.audit_log, node.now)
    node.ceremonies.pool_lock = store.pool.take_ceremony_lock  # one ceremony at a time pool-wide
    node.ceremonies.pool_unlock = store.pool.release_ceremony_lock
    node.pool = service
    return asyncio.ensure_future(service.run())


async def _run(cfg: NodeSettings) -> int:
    reuse_large_buffers()  # data-plane batches: large buffers without page faults on every call
    att_key, att_der = _load_attestation(cfg.attestation_cert, cfg.attestation_key, cfg.node_id)
    check_data_dir(cfg.data_dir)  # before the sealing key is made: a refused start leaves nothing
    store = _open_store(cfg, load_or_create_sealing_key(cfg.sealing_key_path))
    config = NodeConfig(
        node_id=cfg.node_id,
        address=cfg.address or cfg.listen,
        data_dir=cfg.data_dir,
        attestation_key=att_key,
        attestation_cert_der=att_der,
        default_session_seconds=cfg.session_seconds,
        key_retention_days=cfg.key_retention_days,
    )
    tls = TlsFiles(cfg.tls_cert, cfg.tls_key, cfg.ca, ("--tls-cert", "--tls-key", "--ca"))
    metrics = NodeMetrics()
    pool = (
        CryptoPool(cfg.crypto_workers, cfg.max_message_bytes, cfg.max_batch_items)
        if cfg.crypto_workers
        else None
    )
    node = Node(config, store, metrics=metrics, crypto_pool=pool)
    pool_task = _start_pool(cfg, node, store, att_key, att_der)
    if cfg.metrics_listen:  # bound first: a refused port stops start-up before anything serves
        mport = metrics.serve(cfg.metrics_listen, cfg.tls_cert, cfg.tls_key, cfg.ca)
        log.info(
            "metrics on https://%s:%d/metrics (client certificate required)",
            cfg.metrics_listen.rsplit(":", 1)[0],
            mport,
        )
    server = await serve(node, cfg.listen, tls, cfg.max_message_bytes, cfg.max_batch_items)
    metrics.observe(lambda: server.snapshot)
    if not cfg.address:
        node.address = f"{cfg.listen.rsplit(':', 1)[0]}:{server.port}"
    if cfg.port_file:
        tmp = Path(str(cfg.port_file) + ".tmp")
        tmp.write_text(str(server.port))
        tmp.replace(cfg.port_file)
    announce("sdquorum.node", f"hsm-node {cfg.node_id}: serving on port {server.port}, state {node.state}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("draining: no new calls; %d s for calls in flight", cfg.drain_seconds)
    await server.stop(grace=cfg.drain_seconds)
    if pool_task is not None:
        pool_task.cancel()
    if pool is not None:
        await pool.close()
    metrics.close()
    store.close()
    announce("sdquorum.node", f"hsm-node {cfg.node_id}: stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "completion":
        from sdquorum_rpc.completion import completion_script

        print(completion_script(_parser(), args.shell), end="")
        return 0

    def body() -> int:
        with private_umask():  # database, WAL, sealing key, port file: 0600; directories 0700
            cfg = NodeSettings.load(args)
            setup_logging(cfg.log_level, cfg.log_format)
            return asyncio.run(_run(cfg))

    return run_main("hsm-node", body, args.debug)


if __name__ == "__main__":
    raise SystemExit(main())
