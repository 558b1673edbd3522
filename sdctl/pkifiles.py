"""``sdctl pki``: write a throw-away or test PKI to a directory.

Layout of ``DIR`` after ``sdctl pki init``::

    ca.pem, ca.key                       transport CA (mTLS)
    node.pem, node.key                   node TLS certificate (role node; localhost, 127.0.0.1, --ip ...)
    admin.pem, admin.key                 operator (role admin)
    app.pem, app.key                     application (role app)
    custodian-<name>.pem/.key            one per custodian agent (role custodian/<name>)
    attestation-root.pem, .key           attestation root (stands in for the HSM vendor's)
    attestation-<node-id>.pem/.key       each node's attestation certificate

Private keys are written 0600 and never overwritten. For production, keep the CA keys offline
(see docs/); bring-your-own-PKI works as long as role URI SANs are present.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from sdquorum import pki
from sdquorum.errors import UsageError
from sdquorum_rpc.files import write_private_file

__all__ = ["init_pki", "issue_attestation", "issue_role"]


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
) -> list[Path]:
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
    return sorted(out.iterdir())


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
