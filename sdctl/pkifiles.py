"""``sdctl pki``: write a throw-away or test PKI to a directory.

Layout of ``DIR`` after ``sdctl pki init``::

    ca.pem, ca.key                       transport CA (mTLS)
    node.pem, node.key                   node TLS certificate (role node; localhost, 127.0.0.1, --ip ...)
    admin.pem, admin.key                 operator (role admin)
    app.pem, app.key                     application (role app)
    custodian-<name>.pem/.key            one per custodian agent (role custodian/<name>)
    attestation-root.pem, .key           attestation root (stands in for the HSM vendor's)
    attestation-<node-id>.pem/.key       each node's attestation certificate

With ``--etcd-member NAME[=IP]`` (repeatable; an HSM pool, docs/adr/0013-pool-on-etcd.md) also::

    etcd-ca.pem, etcd-ca.key             the etcd cluster's own CA (never the transport CA)
    etcd-member-<name>.pem/.key          one per etcd member: its client and peer ports
    etcd-node-<node-id>.pem/.key         one per --node-id: a pool member's etcd client (user node.<id>)
    etcd-root.pem/.key                   etcd's root user: bootstrap and removing members (keep offline)

Private keys are written 0600 and never overwritten. For production, keep the CA keys offline
(see docs/); bring-your-own-PKI works as long as role URI SANs are present.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from sdquorum import etcd_pki, pki
from sdquorum.errors import UsageError
from sdquorum_rpc.files import write_private_file

__all__ = ["init_pki", "issue_attestation", "issue_etcd", "issue_role", "parse_etcd_member"]


def _write_pair(out: Path, stem: str, issued: pki.IssuedCert) -> None:
    write_private_file(out / f"{stem}.key", issued.key_pem)
    write_private_file(out / f"{stem}.pem", issued.cert_pem, mode=0o644)


def _load_pair(out: Path, stem: str) -> pki.IssuedCert:
    try:
        return pki.IssuedCert((out / f"{stem}.pem").read_bytes(), (out / f"{stem}.key").read_bytes())
    except OSError as e:
        raise UsageError(f"cannot read {stem}.pem/.key in {out}: run 'sdctl pki init' first") from e


def init_pki(
    out: Path,
    node_ids: Sequence[str],
    custodians: Sequence[str],
    now: datetime,
    ips: Sequence[str] = (),
    dns: Sequence[str] = (),
    etcd_members: Sequence[str] = (),
) -> list[Path]:
    members = [parse_etcd_member(m) for m in etcd_members]
    if members:  # every name checked before the first file is written
        for node_id in node_ids:
            etcd_pki.etcd_user(node_id)
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{out} is not empty: choose a new directory for a new PKI")
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca = pki.make_ca("sdquorum transport CA", now)
    _write_pair(out, "ca", ca)
    _write_pair(
        out,
        "node",
        pki.issue_tls_cert(
            ca,
            pki.Role("node", None),
            now,
            dns_names=("localhost", *dns),
            ip_addresses=("127.0.0.1", "::1", *ips),
        ),
    )
    for role in ("admin", "app"):
        _write_pair(out, role, pki.issue_tls_cert(ca, pki.Role(role, None), now))
    for name in custodians:
        _write_pair(out, f"custodian-{name}", pki.issue_tls_cert(ca, pki.Role("custodian", name), now))
    root = pki.make_attestation_root("sdquorum attestation root", now)
    _write_pair(out, "attestation-root", root)
    for node_id in node_ids:
        _write_pair(out, f"attestation-{node_id}", pki.issue_attestation_cert(root, node_id, now))
    if members:
        etcd_ca = etcd_pki.make_etcd_ca(now)
        _write_pair(out, "etcd-ca", etcd_ca)
        for name, ip in members:
            issued = etcd_pki.issue_etcd_member_cert(etcd_ca, name, now, ip_addresses=(ip,) if ip else ())
            _write_pair(out, f"etcd-member-{name}", issued)
        for node_id in node_ids:
            issued = etcd_pki.issue_etcd_client_cert(etcd_ca, etcd_pki.etcd_user(node_id), now)
            _write_pair(out, f"etcd-node-{node_id}", issued)
        _write_pair(out, "etcd-root", etcd_pki.issue_etcd_client_cert(etcd_ca, etcd_pki.ETCD_ROOT_USER, now))
    return sorted(out.iterdir())


def parse_etcd_member(text: str) -> tuple[str, str | None]:
    """``NAME`` or ``NAME=IP`` of ``--etcd-member``: the member's name and its extra address."""
    name, sep, ip = text.partition("=")
    if sep and not ip:
        raise UsageError(f"--etcd-member {text!r}: write NAME or NAME=IP")
    if ip:
        try:
            ipaddress.ip_address(ip)
        except ValueError as e:
            raise UsageError(f"--etcd-member {text!r}: {ip!r} is not a literal IP address") from e
    return etcd_pki.check_member_name(name), ip or None


def issue_etcd(out: Path, now: datetime, *, node_id: str | None = None, member: str | None = None) -> str:
    """One more etcd certificate from DIR's etcd CA: a joining node's client, or a new member's."""
    if not (out / "etcd-ca.pem").exists():
        raise UsageError(f"{out} has no etcd CA: make one with 'sdctl pki init ... --etcd-member NAME'")
    ca = _load_pair(out, "etcd-ca")
    if node_id is not None:
        stem = f"etcd-node-{node_id}"
        _write_pair(out, stem, etcd_pki.issue_etcd_client_cert(ca, etcd_pki.etcd_user(node_id), now))
        return stem
    if member is None:
        raise UsageError(
            "say which etcd certificate to issue: --etcd-node NODE_ID or --etcd-member NAME[=IP]"
        )
    name, ip = parse_etcd_member(member)
    stem = f"etcd-member-{name}"
    _write_pair(out, stem, etcd_pki.issue_etcd_member_cert(ca, name, now, ip_addresses=(ip,) if ip else ()))
    return stem


def issue_role(out: Path, role: str, now: datetime, ips: Sequence[str] = (), dns: Sequence[str] = ()) -> str:
    r = pki.Role.parse(role)
    stem = "node-" + "-".join([*ips, *dns]) if r.kind == "node" else str(r).replace("/", "-")
    ca = _load_pair(out, "ca")
    _write_pair(
        out,
        stem,
        pki.issue_tls_cert(
            ca, r, now, dns_names=("localhost", *dns), ip_addresses=("127.0.0.1", "::1", *ips)
        ),
    )
    return stem


def issue_attestation(out: Path, node_id: str, now: datetime) -> str:
    root = _load_pair(out, "attestation-root")
    stem = f"attestation-{node_id}"
    _write_pair(out, stem, pki.issue_attestation_cert(root, node_id, now))
    return stem
