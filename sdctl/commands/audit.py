"""``sdctl audit export`` (the node's signed, hash-chained audit log as JSON lines) and ``sdctl audit
verify`` (offline: the chain, the signatures and, with a root, the node's certificate)."""

from __future__ import annotations

from pathlib import Path

from sdctl.commands import Command, arg
from sdctl.ctl import Ctl
from sdquorum_rpc.files import read_input_file, write_private_file


async def export(ctl: Ctl) -> int:
    a = ctl.args
    async with ctl.client() as c, c.errors():
        data = await c.export_audit(a.chain)
    if a.out:
        write_private_file(a.out, data, mode=0o644)
        count = data.count(b"\n")
        ctl.emit(f"wrote {count} lines to {a.out}", {"out": str(a.out), "lines": count})
    else:
        ctl.out(data.decode().rstrip("\n"))  # JSON lines already
    return 0


def verify(ctl: Ctl) -> int:
    from datetime import UTC, datetime

    from sdquorum.audit import verify_export

    a = ctl.args
    lines = read_input_file(a.file, "audit export").decode(errors="replace").splitlines()
    root = read_input_file(a.attestation_root, "attestation root") if a.attestation_root else None
    log = verify_export(lines, root_pem=root, now=datetime.now(UTC))
    ctl.emit(
        f"audit export verified: {len(log.entries)} entries from node {log.node_id}, chain intact"
        + ("" if root else " (node certificate not checked against a root: give --attestation-root)"),
        {"verified": True, "entries": len(log.entries), "node_id": log.node_id},
    )
    return 0


COMMANDS = [
    Command(
        "audit",
        "export or verify the node's signed, hash-chained audit log",
        sub=(
            Command(
                "export",
                "export the audit log as JSON lines",
                ("sdctl audit export --out audit.jsonl", "sdctl audit export --chain provisioning"),
                (
                    arg("--chain", choices=["domain", "provisioning"], default="domain"),
                    arg("--out", type=Path),
                ),
                run=export,
            ),
            Command(
                "verify",
                "verify an exported audit log (offline)",
                ("sdctl audit verify audit.jsonl --attestation-root attestation-root.pem",),
                (
                    arg("file", type=Path),
                    arg(
                        "--attestation-root", type=Path, help="check the node's certificate against this root"
                    ),
                ),
                run=verify,
            ),
        ),
    ),
]
