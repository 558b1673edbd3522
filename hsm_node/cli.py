"""``hsm-node run``: start an emulated HSM node.

Example::

    hsm-node run --node-id node-a --listen 127.0.0.1:7443 --data-dir /var/lib/sdquorum/node-a \\
        --tls-cert node.pem --tls-key node.key --ca ca.pem \\
        --attestation-cert node-a.att.pem --attestation-key node-a.att.key
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hsm_node.node import Node, NodeConfig
from hsm_node.server import serve
from hsm_node.store import NodeStore, load_or_create_sealing_key
from sdquorum.errors import UsageError
from sdquorum_rpc.cli import run_main, setup_logging
from sdquorum_rpc.tls import TlsFiles

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hsm-node",
        description="Emulated HSM node: key store, data plane, and the coordinator of security-domain ceremonies.",
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser(
        "run",
        help="serve the node's gRPC API over mTLS",
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument("--node-id", required=True, help="this node's name, as in its attestation certificate")
    r.add_argument("--listen", default="127.0.0.1:7443", help="host:port to bind (port 0 picks a free one)")
    r.add_argument("--address", help="address agents are told in the attestation (default: --listen)")
    r.add_argument("--data-dir", type=Path, required=True, help="where the node keeps its database")
    r.add_argument(
        "--sealing-key-file",
        type=Path,
        help="node sealing key (default: DATA_DIR.sealing-key, beside the data directory)",
    )
    r.add_argument("--tls-cert", type=Path, required=True)
    r.add_argument("--tls-key", type=Path, required=True)
    r.add_argument("--ca", type=Path, required=True, help="transport CA that signs every client certificate")
    r.add_argument("--attestation-cert", type=Path, required=True)
    r.add_argument("--attestation-key", type=Path, required=True)
    r.add_argument("--port-file", type=Path, help="write the bound port here once serving")
    r.add_argument("--session-seconds", type=int, default=600, help="default recovery session deadline")
    r.add_argument("--log-level", default="INFO")
    return p


def _load_attestation(cert_path: Path, key_path: Path) -> tuple[Ed25519PrivateKey, bytes]:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError) as e:
        raise UsageError(
            f"cannot load the attestation certificate or key ({e}): check --attestation-cert/--attestation-key"
        ) from e
    if not isinstance(key, Ed25519PrivateKey):
        raise UsageError("the attestation key must be Ed25519 (make it with 'sdctl pki init')")
    return key, cert.public_bytes(serialization.Encoding.DER)


async def _run(args: argparse.Namespace) -> int:
    att_key, att_der = _load_attestation(args.attestation_cert, args.attestation_key)
    data_dir: Path = args.data_dir
    seal_path = args.sealing_key_file or data_dir.with_name(data_dir.name + ".sealing-key")
    store = NodeStore(data_dir, load_or_create_sealing_key(seal_path), args.node_id)
    config = NodeConfig(
        node_id=args.node_id,
        address=args.address or args.listen,
        data_dir=data_dir,
        attestation_key=att_key,
        attestation_cert_der=att_der,
        default_session_seconds=args.session_seconds,
    )
    node = Node(config, store)
    server = await serve(
        node, args.listen, TlsFiles(args.tls_cert, args.tls_key, args.ca, ("--tls-cert", "--tls-key", "--ca"))
    )
    if not args.address:
        node.address = f"{args.listen.rsplit(':', 1)[0]}:{server.port}"
    if args.port_file:
        tmp = Path(str(args.port_file) + ".tmp")
        tmp.write_text(str(server.port))
        tmp.replace(args.port_file)
    print(f"hsm-node {args.node_id}: serving on port {server.port}, state {node.state}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=2.0)
    store.close()
    print(f"hsm-node {args.node_id}: stopped", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(getattr(args, "log_level", "INFO"))
    return run_main("hsm-node", lambda: asyncio.run(_run(args)), args.debug)


if __name__ == "__main__":
    raise SystemExit(main())
