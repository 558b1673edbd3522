"""``sdctl pki init|issue``: certificates for a test or throw-away deployment (no node, no network)."""

from __future__ import annotations

from pathlib import Path

from sdctl.commands import Command, arg
from sdctl.ctl import Ctl


def init(ctl: Ctl) -> int:
    from datetime import UTC, datetime

    from sdctl import pkifiles  # cryptography's certificate builder: only for this command

    a = ctl.args
    names = [n.strip() for n in a.custodians.split(",") if n.strip()]
    files = pkifiles.init_pki(
        a.out, a.node_id, names, datetime.now(UTC), ips=a.ip, dns=a.dns, etcd_members=a.etcd_member
    )
    ctl.emit(f"wrote {len(files)} files to {a.out}", {"files": [str(f) for f in files]})
    return 0


def issue(ctl: Ctl) -> int:
    from datetime import UTC, datetime

    from sdctl import pkifiles

    a = ctl.args
    now = datetime.now(UTC)
    if a.role:
        stem = pkifiles.issue_role(a.dir, a.role, now, ips=a.ip, dns=a.dns)
    elif a.attestation:
        stem = pkifiles.issue_attestation(a.dir, a.attestation, now)
    else:
        stem = pkifiles.issue_etcd(a.dir, now, node_id=a.etcd_node, member=a.etcd_member)
    ctl.emit(f"wrote {stem}.pem and {stem}.key in {a.dir}", {"stem": stem})
    return 0


IP = arg("--ip", action="append", default=[], help="extra IP address for the node certificate")
DNS = arg("--dns", action="append", default=[], help="extra DNS name for the node certificate")

COMMANDS = [
    Command(
        "pki",
        "make certificates for a test or throw-away deployment",
        sub=(
            Command(
                "init",
                "create CAs and every certificate",
                ("sdctl pki init --out pki --node-id node-a --custodians alice,bob,carol",),
                (
                    arg("--out", type=Path, required=True),
                    arg(
                        "--node-id",
                        action="append",
                        required=True,
                        help="a node to issue an attestation certificate for",
                    ),
                    arg("--custodians", required=True, help="comma-separated custodian names"),
                    IP,
                    DNS,
                    arg(
                        "--etcd-member",
                        action="append",
                        default=[],
                        metavar="NAME[=IP]",
                        help="an HSM pool's etcd member: adds the etcd CA, this member's certificate, an etcd "
                        "client certificate per --node-id and etcd's root client certificate",
                    ),
                ),
                run=init,
            ),
            Command(
                "issue",
                "issue one more certificate from DIR's CAs",
                (
                    "sdctl pki issue --dir pki --role custodian/frank",
                    "sdctl pki issue --dir pki --attestation node-c",
                ),
                (arg("--dir", type=Path, required=True), IP, DNS),
                run=issue,
                exclusive=(
                    arg("--role", help="admin, app, app/<name>, node or custodian/<name>"),
                    arg("--attestation", metavar="NODE_ID", help="an attestation certificate for a node"),
                    arg(
                        "--etcd-node", metavar="NODE_ID", help="an HSM pool member's etcd client certificate"
                    ),
                    arg("--etcd-member", metavar="NAME[=IP]", help="one more etcd member's certificate"),
                ),
            ),
        ),
    ),
]
