"""``sdctl``: the operator's command line for an sdquorum HSM node.

Connection settings: --config FILE (or SDCTL_CONFIG; sample deploy/config/sdctl.toml), then
SDCTL_NODE, SDCTL_CERT, SDCTL_KEY, SDCTL_CA, SDCTL_OUTPUT, then the flags --node, --cert, --key,
--ca, --output. Exit codes: 0 ok, 1 unexpected, 2 bad usage or input, 3 wrong node state
(also: a ceremony failed), 4 a verification failed (also: signature invalid), 5 network or TLS
(while a ceremony is watched: the node stayed unreachable through every reconnect; the session
may go on at the node: 'sdctl session status'), 6 permission denied, 130 interrupted (Ctrl-C:
a ceremony goes on at the node; the line printed says how to attach to it or cancel it).

Examples::

    sdctl pki init --out pki --node-id node-a --custodians alice,bob,carol,dave,erin
    sdctl --node 127.0.0.1:7443 status
    sdctl download --cert alice.wrap.pem --cert bob.wrap.pem --cert carol.wrap.pem --quorum 2 --out sd.json
    sdctl recover --sd-file sd.json --reason "datacentre A lost"
    sdctl session status
    sdctl session attach
    sdctl session cancel --reason "wrong SD file"
    sdctl backup --out keys.backup && sdctl restore keys.backup
    sdctl keys create payments --type aes256-gcm
    sdctl keys delete payments --yes && sdctl keys deleted && sdctl keys recover payments

Start-up: importing this module loads argparse and small settings modules only. Each command
imports what it needs when it runs (grpc and the wire messages for node commands, the review or
the Azure format for theirs), and nothing imports the agent, the node or prometheus_client
(tests/cli/test_cli_imports.py; ``python -m bench --only startup`` measures it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from sdctl.config import SETTINGS
from sdctl.pool import add_pool_command, describe_pool, pool_status, run_pool
from sdquorum import __version__
from sdquorum.errors import MalformedError, StateError, TransportError, UsageError, VerificationError
from sdquorum_rpc.cli import EXIT_CODES, run_main
from sdquorum_rpc.config import add_flags, load_settings
from sdquorum_rpc.files import PendingFile, read_input_file, write_private_file
from sdquorum_rpc.lazy import lazy_module

if TYPE_CHECKING:
    from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2 as pb
    from sdquorum_rpc.client import NodeClient
else:  # loaded at first use: 'sdctl --help' and 'sdctl pki' never load the wire messages
    pb = lazy_module("sdquorum_rpc._proto.sdquorum.v1.sdquorum_pb2")

__all__ = ["main"]

CHUNK = 1024 * 1024
KEY_TYPES = {"aes256-gcm": "AES256_GCM", "ed25519": "ED25519", "rsa3072": "RSA3072"}  # pb.KeyType names
STATUS_WORD = {  # pb.CustodianStatus names (by name: the parser is built without the wire messages)
    "NOT_CONNECTED": "not connected",
    "REQUESTED": "pending",
    "ACCEPTED": "accepted",
    "REJECTED": "REJECTED",
    "DENIED": "denied",
    "NOT_NEEDED": "not needed",
    "UNREACHABLE": "unreachable",
}
DRILL_WORD = {**STATUS_WORD, "ACCEPTED": "proved", "REJECTED": "failed"}


def _word(words: dict[str, str], status: int) -> str:
    return words.get(pb.CustodianStatus.Name(status), "?") if status in pb.CustodianStatus.values() else "?"


# Watching a ceremony through a dropped connection (a keepalive drop, a network blip): reconnect up
# to WATCH_RETRIES times, waiting WATCH_BACKOFF_FIRST s and doubling up to WATCH_BACKOFF_MAX s (about
# 75 s in all); a progress message resets the count. Exit 5 only when the node stays unreachable.
WATCH_RETRIES, WATCH_BACKOFF_FIRST, WATCH_BACKOFF_MAX = 8, 1.0, 15.0


class _Running(NamedTuple):
    """The ceremony this command started or watches, for the line printed on Ctrl-C."""

    session_id: str
    kind: str
    expires_at: int


def _parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(
        prog="sdctl", description=__doc__.split("\n")[0], epilog=__doc__, formatter_class=fmt
    )
    add_flags(p, SETTINGS)
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def cmd(name: str, help_: str, example: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_, epilog=f"example:\n  {example}", formatter_class=fmt)

    cmd("status", "show the node's state", "sdctl --node 127.0.0.1:7443 status")
    d = cmd(
        "download",
        "activate the node: create its security domain (once per node)",
        "sdctl download --cert a.pem --cert b.pem --cert c.pem --quorum 2 --out sd.json",
    )
    d.add_argument(
        "--cert",
        dest="custodian_certs",
        action="append",
        type=Path,
        required=True,
        help="a custodian's wrapping certificate (3..10 of them)",
    )
    d.add_argument(
        "--quorum", type=int, required=True, help="shares needed to recover (2..n, 3+ recommended)"
    )
    d.add_argument("--out", type=Path, required=True, help="where to write the SD file (must not exist)")
    r = cmd(
        "recover",
        "rebuild this (new) node from an SD file through the custodian agents",
        'sdctl recover --sd-file sd.json --reason "datacentre A lost"',
    )
    r.add_argument(
        "--sd-file",
        type=Path,
        required=True,
        help="the latest epoch's SD file; one the node refuses (altered, or a retired epoch) exits 4",
    )
    r.add_argument("--reason", required=True, help="shown to every custodian before approving")
    r.add_argument("--ttl", type=int, default=0, help="session deadline in seconds (default: node's, 600)")
    r.add_argument(
        "--offline-request", type=Path, metavar="DIR", help="also write a request file per custodian here"
    )
    se = cmd(
        "session",
        "see, watch or cancel the node's ceremony session (recovery, drill, rotation, Azure restore)",
        "sdctl session status\n  sdctl session attach\n  sdctl session cancel --reason 'wrong SD file'",
    )
    se.description = (
        "A ceremony runs at the node, not in sdctl: Ctrl-C in 'sdctl recover', 'drill' or 'rotate'\n"
        "stops only the watching. SESSION_ID defaults to the node's current (or last) session.\n"
        "'attach' shows the live progress until the session ends (exit 0 completed, 3 failed);\n"
        "'cancel' ends it FAILED with 'cancelled by <you>: <reason>' (audited)."
    )
    ses = se.add_subparsers(dest="session_command", required=True)
    for name, help_ in (
        ("status", "show the session: kind, state, deadline, each custodian"),
        ("attach", "watch the session's live progress until it ends"),
        ("cancel", "end the running session FAILED (audited, with your reason)"),
    ):
        sp = ses.add_parser(name, help=help_, epilog=f"example: sdctl session {name}", formatter_class=fmt)
        sp.add_argument("session_id", nargs="?", default="", metavar="SESSION_ID")
        if name == "cancel":
            sp.add_argument("--reason", required=True, help="why (goes into the audit log)")
    b = cmd(
        "backup", "export the key store, sealed under the security domain", "sdctl backup --out keys.backup"
    )
    b.add_argument("--out", type=Path, required=True)
    rs = cmd("restore", "replace the key store from a backup of this domain", "sdctl restore keys.backup")
    rs.add_argument("file", type=Path)

    k = cmd(
        "keys",
        "create, list, delete, recover or purge keys",
        "sdctl keys create payments --type aes256-gcm",
    )
    k.description = (
        "Every key has one owner, the role that may use it (admin, app or app/<name>). An app sees\n"
        "and manages only its own keys; an admin sees and manages every key, uses only its own, and\n"
        "can create a key for an app (--owner). A deleted key is kept, unusable, for the node's\n"
        "keys.retention_days (default 90) and can be recovered until then; an admin can purge it\n"
        "sooner. Every create, delete, recover and purge is audited."
    )
    ks = k.add_subparsers(dest="keys_command", required=True)
    kc = ks.add_parser(
        "create",
        help="create a key",
        epilog="example: sdctl keys create signer --type ed25519\n"
        "         sdctl keys create payments --type aes256-gcm --owner app/payments  (as admin)",
        formatter_class=fmt,
    )
    kc.add_argument("name")
    kc.add_argument("--type", choices=sorted(KEY_TYPES), required=True)
    kc.add_argument(
        "--owner",
        default="",
        help="admin only: the app that will own and use the key (app or app/<name>; default: you)",
    )
    ks.add_parser(
        "list", help="list the keys you may use (an admin: every key)", epilog="example: sdctl keys list"
    )
    for name, help_ in (
        ("delete", "delete a key: it is kept, unusable, and can be recovered until the retention ends"),
        ("purge", "admin only: remove a deleted key for good (it cannot be recovered afterwards)"),
    ):
        kd = ks.add_parser(name, help=help_, epilog=f"example: sdctl keys {name} old-key --yes")
        kd.add_argument("name")
        kd.add_argument("--yes", action="store_true", help="do not ask (required when not on a terminal)")
    kr = ks.add_parser("recover", help="recover a deleted key", epilog="example: sdctl keys recover old-key")
    kr.add_argument("name")
    ks.add_parser(
        "deleted",
        help="admin only: list deleted keys and when each is purged",
        epilog="example: sdctl keys deleted",
    )

    for name, help_ in (("encrypt", "encrypt a file"), ("decrypt", "decrypt a file")):
        e = cmd(name, help_, f"sdctl {name} payments --in data.bin --out data.{name}ed")
        e.add_argument("name")
        e.add_argument("--in", dest="infile", type=Path, required=True)
        e.add_argument("--out", type=Path, required=True)
        e.add_argument("--aad", default="", help="additional authenticated data (AES-GCM)")
    s = cmd("sign", "sign a file", "sdctl sign signer --in msg.txt --out msg.sig")
    s.add_argument("name")
    s.add_argument("--in", dest="infile", type=Path, required=True)
    s.add_argument("--out", type=Path, required=True)
    v = cmd(
        "verify",
        "verify a signature (exit 0 valid, 4 invalid)",
        "sdctl verify signer --in msg.txt --signature msg.sig",
    )
    v.add_argument("name")
    v.add_argument("--in", dest="infile", type=Path, required=True)
    v.add_argument("--signature", type=Path, required=True)

    dr = cmd(
        "drill",
        "every custodian proves it can still open its share (no share leaves)",
        "sdctl drill --reason 'Q3 drill'",
    )
    dr.add_argument("--reason", default="quarterly possession drill", help="shown to every custodian")
    dr.add_argument("--ttl", type=int, default=0, help="deadline in seconds (default: node's, 600)")
    dr.add_argument(
        "--offline-request", type=Path, metavar="DIR", help="also write a request file per custodian here"
    )
    ro = cmd(
        "rotate",
        "new custodians and/or quorum, approved by m current custodians",
        "sdctl rotate --cert a.pem --cert b.pem --cert f.pem --quorum 2 --reason 'carol left' --out sd-epoch2.json",
    )
    ro.add_argument(
        "--cert",
        dest="custodian_certs",
        action="append",
        type=Path,
        required=True,
        help="a new roster's wrapping certificate (3..10)",
    )
    ro.add_argument("--quorum", type=int, required=True, help="the new quorum (2..n, 3+ recommended)")
    ro.add_argument("--reason", required=True, help="shown to every approving custodian")
    ro.add_argument("--ttl", type=int, default=0, help="approval deadline in seconds (default: node's, 600)")
    ro.add_argument("--out", type=Path, required=True, help="where to write the new SD file (must not exist)")
    ro.add_argument(
        "--offline-request", type=Path, metavar="DIR", help="also write a request file per custodian here"
    )
    up = cmd(
        "upload-answer",
        "upload answer files made offline by 'custodian-agent respond'",
        "sdctl upload-answer alice-x1.answer.json",
    )
    up.add_argument("files", type=Path, nargs="+")
    sf = cmd(
        "sd-file",
        "fetch the current epoch's SD file (or the same domain as an Azure v2 file)",
        "sdctl sd-file --out sd-current.json\n  sdctl sd-file --format azure --out sd-azure.json",
    )
    sf.add_argument("--out", type=Path, required=True)
    sf.add_argument("--format", dest="sd_format", choices=["native", "azure"], default="native")
    az = cmd(
        "azure",
        "Azure Managed HSM security domains, restored without gathering the custodians' keys",
        "sdctl azure restore-blob --sd-file azure-sd.json --exchange-cert exchange.cer --out transfer.json",
    )
    azs = az.add_subparsers(dest="azure_command", required=True)
    rb = azs.add_parser(
        "restore-blob",
        help="run the custodians' ceremony for an Azure v2 SD file and write Azure's transfer file",
        formatter_class=fmt,
        epilog="example: sdctl azure restore-blob --sd-file azure-sd.json --exchange-cert exchange.cer --out transfer.json",
    )
    rb.add_argument("--sd-file", type=Path, required=True, help="the Azure security-domain file (version 2)")
    rb.add_argument(
        "--exchange-cert", type=Path, required=True, help="from 'az keyvault security-domain init-recovery'"
    )
    rb.add_argument(
        "--out", type=Path, required=True, help="where to write the transfer file (must not exist)"
    )
    rb.add_argument(
        "--reason", default="Azure Managed HSM security-domain restore", help="shown to every custodian"
    )
    rb.add_argument("--ttl", type=int, default=0)
    rb.add_argument(
        "--offline-request", type=Path, metavar="DIR", help="also write a request file per custodian here"
    )
    cu = cmd(
        "custody",
        "record or list custody events (hand-offs, locations, losses, reviews)",
        "sdctl custody record --custodian alice --event handoff --holder 'Bob Smith' --location 'Safe 2, Zurich'",
    )
    cus = cu.add_subparsers(dest="custody_command", required=True)
    cr = cus.add_parser(
        "record",
        help="record one custody event",
        formatter_class=fmt,
        epilog="example: sdctl custody record --custodian carol --event lost --note 'USB token lost in transit'",
    )
    cr.add_argument(
        "--event", choices=["handoff", "location", "lost", "compromised", "review"], required=True
    )
    cr.add_argument("--custodian", help="the custodian (slot name); not for 'review'")
    cr.add_argument("--holder", default="", help="the person now holding the key (handoff)")
    cr.add_argument("--location", default="", help="where the key is now kept")
    cr.add_argument("--note", default="")
    cus.add_parser("list", help="list custody records", epilog="example: sdctl custody list")
    add_pool_command(cmd)
    co = cmd(
        "compromise",
        "mark the domain compromised (stops drills and rotation)",
        "sdctl compromise --reason 'two keys lost'",
    )
    co.add_argument("--reason", required=True)
    rv = cmd(
        "review",
        "the quarterly review: custodians, drills, hand-offs, findings",
        "sdctl review --format html --out review.html",
    )
    rv.add_argument("--format", choices=["md", "html", "json"], default="md")
    rv.add_argument("--out", type=Path, help="write here instead of standard output")
    au = cmd(
        "audit",
        "export or verify the node's signed, hash-chained audit log",
        "sdctl audit export --out audit.jsonl && sdctl audit verify audit.jsonl",
    )
    aus = au.add_subparsers(dest="audit_command", required=True)
    ae = aus.add_parser(
        "export",
        help="export the audit log as JSON lines",
        epilog="example: sdctl audit export --out audit.jsonl",
    )
    ae.add_argument("--chain", choices=["domain", "provisioning"], default="domain")
    ae.add_argument("--out", type=Path)
    av = aus.add_parser(
        "verify",
        help="verify an exported audit log (offline)",
        epilog="example: sdctl audit verify audit.jsonl --attestation-root attestation-root.pem",
    )
    av.add_argument("file", type=Path)
    av.add_argument("--attestation-root", type=Path, help="check the node's certificate against this root")

    pk = cmd(
        "pki",
        "make certificates for a test or throw-away deployment",
        "sdctl pki init --out pki --node-id node-a --custodians alice,bob,carol",
    )
    pks = pk.add_subparsers(dest="pki_command", required=True)
    pi = pks.add_parser(
        "init",
        help="create CAs and every certificate",
        epilog="example: sdctl pki init --out pki --node-id node-a --custodians alice,bob,carol",
    )
    pi.add_argument("--out", type=Path, required=True)
    pi.add_argument(
        "--node-id", action="append", required=True, help="a node to issue an attestation certificate for"
    )
    pi.add_argument("--custodians", required=True, help="comma-separated custodian names")
    pi.add_argument("--ip", action="append", default=[], help="extra IP address for the node certificate")
    pi.add_argument("--dns", action="append", default=[], help="extra DNS name for the node certificate")
    pi.add_argument(
        "--etcd-member",
        action="append",
        default=[],
        metavar="NAME[=IP]",
        help="an HSM pool's etcd member: adds the etcd CA, this member's certificate, an etcd client "
        "certificate per --node-id and etcd's root client certificate",
    )
    pis = pks.add_parser(
        "issue",
        help="issue one more certificate from DIR's CAs",
        epilog="example: sdctl pki issue --dir pki --role custodian/frank\n         sdctl pki issue --dir pki --attestation node-c\n"
        "         sdctl pki issue --dir pki --etcd-node node-c",
    )
    pis.add_argument("--dir", type=Path, required=True)
    g = pis.add_mutually_exclusive_group(required=True)
    g.add_argument("--role", help="admin, app, app/<name>, node or custodian/<name>")
    g.add_argument("--attestation", metavar="NODE_ID", help="an attestation certificate for a node")
    g.add_argument("--etcd-node", metavar="NODE_ID", help="an HSM pool member's etcd client certificate")
    g.add_argument("--etcd-member", metavar="NAME[=IP]", help="one more etcd member's certificate")
    pis.add_argument("--ip", action="append", default=[])
    pis.add_argument("--dns", action="append", default=[])
    return p


class Ctl:
    def __init__(self, args: argparse.Namespace, out: Callable[[str], None] = print) -> None:
        self.args = args
        self.out = out
        self.json = args.output == "json"
        self.running: _Running | None = None  # the ceremony started or watched, for Ctrl-C

    def emit(self, text: str, obj: dict[str, Any]) -> None:
        self.out(json.dumps(obj, sort_keys=True) if self.json else text)

    def client(self) -> NodeClient:
        a = self.args
        missing = [f for f, v in (("--cert", a.cert), ("--key", a.key), ("--ca", a.ca)) if v is None]
        if missing:
            raise UsageError(
                f"give {', '.join(missing)} (or SDCTL_CERT/SDCTL_KEY/SDCTL_CA): your mTLS identity"
            )
        from sdquorum_rpc.client import NodeClient  # grpc: only for the commands that dial
        from sdquorum_rpc.tls import TlsFiles

        return NodeClient(a.node, TlsFiles(a.cert, a.key, a.ca))

    # ----------------------------------------------------------- node

    async def status(self) -> int:
        async with self.client() as c:
            with c.errors():
                st = await c.node.GetStatus(pb.GetStatusRequest())
                pool = await pool_status(c)
        obj = {
            "state": pb.NodeState.Name(st.state),
            "node_id": st.node_id,
            "domain_id": st.domain_id,
            "epoch": st.epoch,
            "quorum": st.quorum,
            "custodians": st.custodians,
            "active_session_id": st.active_session_id,
            "keys": st.key_count,
            "compromised": st.compromised,
            "session": (
                {
                    "session_id": st.active_session_id,
                    "kind": st.session_kind,
                    "state": pb.SessionState.Name(st.session_state),
                    "expires_at": st.session_expires_at_unix,
                }
                if st.active_session_id
                else None
            ),
            "advice": _advice(st),
        }
        text = f"node {st.node_id}: {obj['state']}"
        if st.domain_id:
            text += f", domain {st.domain_id} epoch {st.epoch}, quorum {st.quorum} of {st.custodians}, {st.key_count} keys"
        if st.compromised:
            text += ", MARKED COMPROMISED"
        if st.active_session_id:
            text += (
                f"\n  {st.session_kind} session {st.active_session_id} "
                f"{pb.SessionState.Name(st.session_state)}, deadline {_when(st.session_expires_at_unix)}"
            )
        text += describe_pool(pool, obj)
        text += f"\n  next: {obj['advice']}"
        self.emit(text, obj)
        return 0

    async def session(self) -> int:
        a = self.args
        async with self.client() as c, c.errors():
            p = await c.admin.GetSession(pb.WatchSessionRequest(session_id=a.session_id))
            if a.session_command == "status":
                self._session_summary(p)
                return 0
            if a.session_command == "cancel":
                if p.state in (pb.COMPLETED, pb.FAILED):
                    raise StateError(
                        f"{p.kind} session {p.session_id} has ended already "
                        f"({pb.SessionState.Name(p.state)}): nothing to cancel"
                    )
                p = await c.admin.CancelSession(
                    pb.CancelSessionRequest(session_id=p.session_id, reason=a.reason)
                )
                self.emit(f"{p.kind} session {p.session_id} cancelled: {p.message}", _progress_json(p))
                return 0
            self.running = _Running(p.session_id, p.kind, p.expires_at_unix)
            final = await self._watch(c, p.session_id)
        self._session_summary(final)
        if final.state != pb.COMPLETED:
            raise StateError(f"{final.kind} session {final.session_id} failed: {final.message}")
        return 0

    def _session_summary(self, p: pb.RecoveryProgress) -> None:
        if self.json:
            self.out(json.dumps(_progress_json(p), sort_keys=True))
            return
        ended = p.state in (pb.COMPLETED, pb.FAILED)
        self.out(
            f"{p.kind} session {p.session_id}: {pb.SessionState.Name(p.state)}"
            + (f" ({p.message})" if ended and p.message else f", deadline {_when(p.expires_at_unix)}")
        )
        words = DRILL_WORD if p.kind == "drill" else STATUS_WORD
        for cp in p.custodians:
            detail = f": {cp.detail}" if cp.detail else ""
            self.out(f"  {cp.name} (x={cp.x}): {_word(words, cp.status)}{detail}")

    async def download(self) -> int:
        a = self.args
        if a.out.exists():
            raise UsageError(f"{a.out} exists already: an SD file is never overwritten; choose another --out")
        certs = [read_input_file(p, "custodian certificate") for p in a.custodian_certs]
        client = self.client()  # TLS files checked before anything is created or asked
        # The node is activated only once: make sure the SD file can be written before asking.
        with PendingFile(a.out) as out:
            async with client as c:
                data = bytearray()
                warnings: list[str] = []
                with c.errors():
                    async for chunk in c.admin.DownloadSecurityDomain(
                        pb.DownloadRequest(custodian_certificates=certs, quorum=a.quorum)
                    ):
                        data += chunk.data
                        warnings.extend(chunk.warnings)
            out.write(bytes(data))
        for w in warnings:
            print(f"sdctl: warning: {w}", file=sys.stderr)
        self.emit(
            f"node activated; security domain written to {a.out} ({len(data)} bytes). Store it at each custodian's site.",
            {"sd_file": str(a.out), "bytes": len(data), "warnings": warnings},
        )
        return 0

    async def recover(self) -> int:
        a = self.args
        sd = read_input_file(a.sd_file, "SD file")
        _require_sd_file(sd, a.sd_file)
        _check_offline_dir(a.offline_request)
        async with self.client() as c:
            with c.errors():
                init = await c.admin.InitRecovery(pb.InitRecoveryRequest(reason=a.reason, ttl_seconds=a.ttl))
                self.running = _Running(init.session_id, "recovery", init.expires_at_unix)

                async def chunks() -> AsyncIterator[pb.SdFileChunk]:
                    for i in range(0, max(len(sd), 1), CHUNK):
                        yield pb.SdFileChunk(session_id=init.session_id, data=sd[i : i + CHUNK])

                first = await c.admin.UploadSecurityDomain(chunks())
                if not self.json:
                    self.out(
                        f"session {init.session_id}: domain {first.domain_id} epoch {first.epoch}, "
                        f"{first.required} of {len(first.custodians)} custodians needed"
                    )
                final = await self._follow(c, init.session_id, a.offline_request)
        if final.state == pb.COMPLETED:
            self.emit(f"recovered: {final.message}", _progress_json(final))
            return 0
        raise StateError(
            f"recovery failed: {final.message}; start a new session with 'sdctl recover' when the custodians are ready"
        )

    async def _follow(self, c: NodeClient, session_id: str, offline_dir: Path | None) -> pb.RecoveryProgress:
        """Write offline request files if asked, then show live progress until the session ends."""
        from sdquorum_rpc.convert import request_from_proto

        if offline_dir is not None:
            exported = await c.admin.ExportRequests(pb.ExportRequestsRequest(session_id=session_id))
            files = []  # every name is checked before any file is written
            for item in exported.requests:
                req = request_from_proto(item.request, custodian=item.custodian)
                files.append((item, req, _request_file(offline_dir, item.custodian, req.x)))
            for item, req, path in files:
                write_private_file(path, req.to_bytes(), mode=0o644)
                if not self.json:
                    self.out(f"  wrote {path} (fingerprint {req.fingerprint}) for {item.custodian}")
            if not self.json:
                self.out("  carry each file to its custodian; upload answers with 'sdctl upload-answer FILE'")
        return await self._watch(c, session_id)

    async def _watch(self, c: NodeClient, session_id: str) -> pb.RecoveryProgress:
        """Show live progress until the session ends. A dropped connection does not end the session
        (it runs at the node): reconnect with backoff, saying so on stderr (see WATCH_RETRIES)."""
        import asyncio

        final: pb.RecoveryProgress | None = None
        tries, delay = 0, WATCH_BACKOFF_FIRST
        while True:
            try:
                with c.errors():
                    async for prog in c.admin.WatchSession(pb.WatchSessionRequest(session_id=session_id)):
                        final = prog
                        tries, delay = 0, WATCH_BACKOFF_FIRST  # the node answered: a fresh budget
                        self._progress(prog)
                break
            except TransportError as e:
                if tries >= WATCH_RETRIES:
                    raise TransportError(
                        f"{e} (gave up watching session {session_id} after {tries} reconnects; the "
                        f"session may go on at the node: 'sdctl session status {session_id}')"
                    ) from e
                tries += 1
                print(
                    f"sdctl: lost the node while watching session {session_id} ({e}); the session goes "
                    f"on at the node: reconnecting in {delay:g} s (try {tries} of {WATCH_RETRIES})",
                    file=sys.stderr,
                    flush=True,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, WATCH_BACKOFF_MAX)
        if final is None:  # pragma: no cover - the node always sends the current state first
            raise StateError("the node sent no progress for the session")
        return final

    def _progress(self, p: pb.RecoveryProgress) -> None:
        if self.json:
            self.out(json.dumps(_progress_json(p), sort_keys=True))
            return
        left = max(0, p.expires_at_unix - int(time.time()))
        words = DRILL_WORD if p.kind == "drill" else STATUS_WORD
        noun = {"recovery": "shares", "drill": "proofs", "rotation": "approvals"}.get(p.kind, "answers")
        parts = [f"{c.name}: {_word(words, c.status)}" for c in p.custodians]
        self.out(f"  [{p.accepted}/{p.required} {noun}, {left}s left] " + " | ".join(parts))

    async def drill(self) -> int:
        a = self.args
        _check_offline_dir(a.offline_request)
        async with self.client() as c, c.errors():
            started = await c.admin.StartDrill(pb.StartDrillRequest(reason=a.reason, ttl_seconds=a.ttl))
            self.running = _Running(started.session_id, "drill", started.expires_at_unix)
            final = await self._follow(c, started.session_id, a.offline_request)
        report = {c.name: _word(DRILL_WORD, c.status) for c in final.custodians}
        if not self.json:
            for cp in final.custodians:
                detail = f": {cp.detail}" if cp.status != pb.ACCEPTED and cp.detail else ""
                self.out(f"  {cp.name} (x={cp.x}): {_word(DRILL_WORD, cp.status)}{detail}")
        self.emit(final.message, {"drill": report, "message": final.message})
        if any(word != "proved" for word in report.values()):
            raise VerificationError(
                f"not every custodian proved possession: {final.message}; see the report above"
            )
        return 0

    async def rotate(self) -> int:
        from sdquorum.sdfile import SecurityDomainFile

        a = self.args
        certs = [read_input_file(p, "custodian certificate") for p in a.custodian_certs]
        _check_offline_dir(a.offline_request)
        client = self.client()
        with PendingFile(a.out) as out:
            async with client as c, c.errors():
                started = await c.admin.ProposeRotation(
                    pb.RotationRequest(
                        custodian_certificates=certs, quorum=a.quorum, reason=a.reason, ttl_seconds=a.ttl
                    )
                )
                self.running = _Running(started.session_id, "rotation", started.expires_at_unix)
                final = await self._follow(c, started.session_id, a.offline_request)
                if final.state != pb.COMPLETED:
                    raise StateError(f"rotation not approved: {final.message}")
                data = b"".join(
                    [ch.data async for ch in c.admin.GetSecurityDomain(pb.GetSecurityDomainRequest())]
                )
            out.write(data)
        epoch = SecurityDomainFile.from_bytes(data).header.epoch
        self.emit(
            f"rotated to epoch {epoch}; new SD file written to {a.out}. Destroy every copy of the old SD file.",
            {"sd_file": str(a.out), "epoch": epoch},
        )
        return 0

    async def upload_answer(self) -> int:
        from sdquorum.offline import OfflineAnswer

        answers = [OfflineAnswer.from_bytes(read_input_file(p, "answer file")) for p in self.args.files]
        async with self.client() as c, c.errors():
            for path, ans in zip(self.args.files, answers, strict=True):
                await c.admin.SubmitOfflineResponse(
                    pb.OfflineResponse(request_id=ans.request_id, answer=ans.answer, denied=ans.denied)
                )
                self.emit(
                    f"uploaded {path}: {'denial' if ans.denied else ans.kind + ' answer'} accepted by the node",
                    {"file": str(path), "request_id": ans.request_id, "denied": ans.denied},
                )
        return 0

    async def sd_file(self) -> int:
        fmt = self.args.sd_format
        with PendingFile(self.args.out) as out:
            async with self.client() as c, c.errors():
                req = pb.GetSecurityDomainRequest(format=fmt)
                data = b"".join([ch.data async for ch in c.admin.GetSecurityDomain(req)])
            out.write(data)
        self.emit(
            f"wrote the current SD file ({fmt} format) to {self.args.out}",
            {"sd_file": str(self.args.out), "format": fmt},
        )
        return 0

    async def azure(self) -> int:
        from sdquorum.azure.sdfile import AzureSecurityDomain

        a = self.args
        sd = read_input_file(a.sd_file, "Azure SD file")
        try:
            AzureSecurityDomain.from_bytes(sd)  # refused here, before a session opens
        except MalformedError as e:
            raise UsageError(f"{a.sd_file} is not an Azure version-2 SD file: {e}") from e
        cert = read_input_file(a.exchange_cert, "exchange certificate")
        _check_offline_dir(a.offline_request)
        client = self.client()
        with PendingFile(a.out) as out:
            async with client as c, c.errors():
                started = await c.admin.StartAzureRestore(
                    pb.AzureRestoreRequest(
                        sd_file=sd, exchange_certificate=cert, reason=a.reason, ttl_seconds=a.ttl
                    )
                )
                self.running = _Running(started.session_id, "azure-recovery", started.expires_at_unix)
                final = await self._follow(c, started.session_id, a.offline_request)
                if final.state != pb.COMPLETED:
                    raise StateError(f"the Azure restore failed: {final.message}")
                data = b"".join(
                    [
                        ch.data
                        async for ch in c.admin.GetAzureTransferFile(
                            pb.WatchSessionRequest(session_id=started.session_id)
                        )
                    ]
                )
            out.write(data)
        self.emit(
            f"transfer file written to {a.out}: upload it with 'az keyvault security-domain upload --restore-blob "
            f"--sd-file {a.out}'; no private key left any custodian's machine",
            {"transfer_file": str(a.out)},
        )
        return 0

    async def custody(self) -> int:
        from sdquorum.review import CustodyRecord

        a = self.args
        async with self.client() as c, c.errors():
            if a.custody_command == "record":
                record = {
                    "kind": a.event,
                    "custodian": a.custodian,
                    "holder": a.holder,
                    "location": a.location,
                    "note": a.note,
                    "time": int(time.time()),
                }
                if a.event != "review" and not a.custodian:
                    raise UsageError(f"a {a.event} record needs --custodian NAME")
                CustodyRecord.from_json({**record, "actor": ""})  # check locally: one clear line
                await c.admin.AddCustodyRecord(pb.CustodyRecordRequest(record=json.dumps(record).encode()))
                self.emit(
                    f"recorded {a.event}" + (f" for {a.custodian}" if a.custodian else ""),
                    {"recorded": record},
                )
            else:
                st = await c.admin.GetCustodyState(pb.GetCustodyStateRequest())
                records = json.loads(st.records)
                if self.json:
                    self.out(json.dumps(records))
                for r in [] if self.json else records:
                    when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(r["time"]))
                    extra = ", ".join(f"{k}={r[k]}" for k in ("holder", "location", "note") if r.get(k))
                    self.out(
                        f"{when}  {r['kind']:<11} {r.get('custodian') or '-':<12} {extra}  (by {r.get('actor')})"
                    )
        return 0

    async def compromise(self) -> int:
        async with self.client() as c, c.errors():
            await c.admin.MarkCompromised(pb.CompromiseRequest(reason=self.args.reason))
        self.emit(
            "domain marked COMPROMISED: drills and rotation are stopped. Follow docs/runbooks/compromise.md: "
            "provision a new domain on a new HSM and re-encrypt your data under new keys.",
            {"compromised": True},
        )
        return 0

    async def review(self) -> int:
        from sdquorum.review import (
            CustodyRecord,
            DrillResult,
            RetiredEpoch,
            build_review,
            render_html,
            render_markdown,
            review_to_json,
        )
        from sdquorum.sdfile import SignedHeader

        a = self.args
        async with self.client() as c, c.errors():
            st = await c.admin.GetCustodyState(pb.GetCustodyStateRequest())
        header = SignedHeader(bytes(st.sd_header), bytes(st.sd_header_signature)).verify()
        rev = build_review(
            header,
            [CustodyRecord.from_json(r) for r in json.loads(st.records)],
            [DrillResult.from_json(d) for d in json.loads(st.drills)],
            [RetiredEpoch.from_json(r) for r in json.loads(st.retired)],
            compromised=st.compromised,
            node_id=st.node_id,
            now=int(time.time()),
        )
        fmt = a.format
        text = (
            render_html(rev)
            if fmt == "html"
            else render_markdown(rev)
            if fmt == "md"
            else json.dumps(review_to_json(rev), indent=2, sort_keys=True)
        )
        if a.out:
            write_private_file(a.out, text.encode(), mode=0o644)
            self.out(
                f"wrote the {fmt} review to {a.out}: {len(rev.findings)} findings, {rev.count('critical')} critical"
            )
        else:
            self.out(text)
        return 0

    async def audit(self) -> int:
        from datetime import UTC, datetime

        from sdquorum.audit import verify_export

        a = self.args
        if a.audit_command == "verify":
            lines = read_input_file(a.file, "audit export").decode(errors="replace").splitlines()
            root = read_input_file(a.attestation_root, "attestation root") if a.attestation_root else None
            log = verify_export(lines, root_pem=root, now=datetime.now(UTC))
            self.emit(
                f"audit export verified: {len(log.entries)} entries from node {log.node_id}, chain intact"
                + ("" if root else " (node certificate not checked against a root: give --attestation-root)"),
                {"verified": True, "entries": len(log.entries), "node_id": log.node_id},
            )
            return 0
        async with self.client() as c, c.errors():
            data = b"".join(
                [ch.data async for ch in c.admin.ExportAudit(pb.ExportAuditRequest(chain=a.chain))]
            )
        if a.out:
            write_private_file(a.out, data, mode=0o644)
            count = data.count(b"\n")
            self.emit(f"wrote {count} lines to {a.out}", {"out": str(a.out), "lines": count})
        else:
            self.out(data.decode().rstrip("\n"))
        return 0

    async def backup(self) -> int:
        a = self.args
        if a.out.exists():
            raise UsageError(f"{a.out} exists already: choose another --out")
        async with self.client() as c:
            data = bytearray()
            with c.errors():
                async for chunk in c.admin.Backup(pb.BackupRequest()):
                    data += chunk.data
        write_private_file(a.out, bytes(data), mode=0o600)
        self.emit(
            f"backup written to {a.out} ({len(data)} bytes)", {"backup": str(a.out), "bytes": len(data)}
        )
        return 0

    async def restore(self) -> int:
        data = read_input_file(self.args.file, "backup")

        async def chunks() -> AsyncIterator[pb.BackupChunk]:
            for i in range(0, max(len(data), 1), CHUNK):
                yield pb.BackupChunk(data=data[i : i + CHUNK])

        async with self.client() as c:
            with c.errors():
                res = await c.admin.Restore(chunks())
        self.emit(f"restored {res.keys_restored} keys", {"keys_restored": res.keys_restored})
        return 0

    # ----------------------------------------------------------- data plane

    async def keys(self) -> int:
        a = self.args
        if a.keys_command in ("delete", "purge"):
            self._confirm(a.keys_command, a.name)
        async with self.client() as c:
            with c.errors():
                if a.keys_command == "create":
                    k = await c.keys.CreateKey(
                        pb.CreateKeyRequest(name=a.name, type=KEY_TYPES[a.type], owner=a.owner)
                    )
                    self.emit(
                        f"created {pb.KeyType.Name(k.type)} key {k.name} for {k.owner}",
                        {"name": k.name, "type": pb.KeyType.Name(k.type), "owner": k.owner},
                    )
                elif a.keys_command in ("list", "deleted"):
                    req = pb.ListKeysRequest()
                    res = await (
                        c.keys.ListKeys(req) if a.keys_command == "list" else c.keys.ListDeletedKeys(req)
                    )
                    self._key_table(list(res.keys), deleted=a.keys_command == "deleted")
                elif a.keys_command == "delete":
                    d = await c.keys.DeleteKey(pb.DeleteKeyRequest(name=a.name))
                    self.emit(
                        f"deleted {a.name}: recoverable until {_when(d.purge_at_unix)} "
                        f"(sdctl keys recover {a.name}), then purged",
                        {"deleted": a.name, "purge_at": d.purge_at_unix},
                    )
                elif a.keys_command == "recover":
                    k = await c.keys.RecoverKey(pb.RecoverKeyRequest(name=a.name))
                    self.emit(
                        f"recovered {k.name} (owner {k.owner})", {"recovered": k.name, "owner": k.owner}
                    )
                else:
                    await c.keys.PurgeKey(pb.PurgeKeyRequest(name=a.name))
                    self.emit(f"purged {a.name}: it is gone for good", {"purged": a.name})
        return 0

    def _key_table(self, keys: list[pb.KeyInfo], deleted: bool) -> None:
        rows = [
            {
                "name": k.name,
                "type": pb.KeyType.Name(k.type),
                "owner": k.owner,
                **({"deleted_at": k.deleted_at_unix, "purge_at": k.purge_at_unix} if deleted else {}),
            }
            for k in keys
        ]
        if self.json:
            self.out(json.dumps(rows))
            return
        for k in keys:
            extra = (
                f"\tdeleted {_when(k.deleted_at_unix)}\tpurged {_when(k.purge_at_unix)}" if deleted else ""
            )
            self.out(f"{k.name}\t{pb.KeyType.Name(k.type)}\t{k.owner}{extra}")

    def _confirm(self, verb: str, name: str) -> None:
        """Destructive key commands need --yes, or the key's name typed back on a terminal."""
        if self.args.yes:
            return
        what = "it stays recoverable until the retention ends" if verb == "delete" else "it cannot be undone"
        if not sys.stdin.isatty():
            raise UsageError(f"add --yes to {verb} key {name} ({what})")
        answer = input(f"{verb} key {name}? {what}. Type its name to confirm: ")
        if answer.strip() != name:
            raise UsageError(f"not confirmed: key {name} was not {verb}d")

    async def crypt(self) -> int:
        a = self.args
        data = read_input_file(a.infile, "input")
        async with self.client() as c:
            with c.errors():
                if a.command == "encrypt":
                    out = (
                        await c.keys.Encrypt(
                            pb.EncryptRequest(name=a.name, plaintext=data, aad=a.aad.encode())
                        )
                    ).ciphertext
                elif a.command == "decrypt":
                    out = (
                        await c.keys.Decrypt(
                            pb.DecryptRequest(name=a.name, ciphertext=data, aad=a.aad.encode())
                        )
                    ).plaintext
                else:
                    out = (await c.keys.Sign(pb.SignRequest(name=a.name, message=data))).signature
        write_private_file(a.out, out, mode=0o600)
        self.emit(f"wrote {a.out} ({len(out)} bytes)", {"out": str(a.out), "bytes": len(out)})
        return 0

    async def verify(self) -> int:
        a = self.args
        msg, sig = read_input_file(a.infile, "input"), read_input_file(a.signature, "signature")
        async with self.client() as c:
            with c.errors():
                ok = (await c.keys.Verify(pb.VerifyRequest(name=a.name, message=msg, signature=sig))).valid
        if not ok:
            raise VerificationError(
                f"the signature in {a.signature} is NOT valid for {a.infile} under key {a.name}"
            )
        self.emit("signature valid", {"valid": True})
        return 0

    # ----------------------------------------------------------- pki

    def pki(self) -> int:
        from datetime import UTC, datetime

        from sdctl import pkifiles  # cryptography's certificate builder: only for this command

        a = self.args
        now = datetime.now(UTC)
        if a.pki_command == "init":
            names = [n.strip() for n in a.custodians.split(",") if n.strip()]
            files = pkifiles.init_pki(
                a.out, a.node_id, names, now, ips=a.ip, dns=a.dns, etcd_members=a.etcd_member
            )
            self.emit(f"wrote {len(files)} files to {a.out}", {"files": [str(f) for f in files]})
        elif a.role:
            stem = pkifiles.issue_role(a.dir, a.role, now, ips=a.ip, dns=a.dns)
            self.emit(f"wrote {stem}.pem and {stem}.key in {a.dir}", {"stem": stem})
        elif a.attestation:
            stem = pkifiles.issue_attestation(a.dir, a.attestation, now)
            self.emit(f"wrote {stem}.pem and {stem}.key in {a.dir}", {"stem": stem})
        else:
            stem = pkifiles.issue_etcd(a.dir, now, node_id=a.etcd_node, member=a.etcd_member)
            self.emit(f"wrote {stem}.pem and {stem}.key in {a.dir}", {"stem": stem})
        return 0

    def run(self) -> int:
        cmd = self.args.command
        if cmd == "pki":
            return self.pki()
        handlers = {
            "status": self.status,
            "download": self.download,
            "recover": self.recover,
            "backup": self.backup,
            "restore": self.restore,
            "keys": self.keys,
            "encrypt": self.crypt,
            "decrypt": self.crypt,
            "sign": self.crypt,
            "verify": self.verify,
            "drill": self.drill,
            "rotate": self.rotate,
            "upload-answer": self.upload_answer,
            "sd-file": self.sd_file,
            "custody": self.custody,
            "compromise": self.compromise,
            "pool": lambda: run_pool(self),
            "review": self.review,
            "audit": self.audit,
            "azure": self.azure,
            "session": self.session,
        }
        import asyncio

        try:
            return asyncio.run(handlers[cmd]())
        except KeyboardInterrupt:
            if self.running is None:
                raise
            print(self.interrupted_line(), file=sys.stderr, flush=True)
            return EXIT_CODES["interrupted"]

    def interrupted_line(self) -> str:
        """The one line Ctrl-C prints while a ceremony runs: it goes on, and how to attach or cancel."""
        r = self.running
        assert r is not None
        node = f"sdctl --node {self.args.node}"
        return (
            f"sdctl: interrupted: {r.kind} session {r.session_id} goes on at the node until "
            f"{_when(r.expires_at)}; watch it with '{node} session attach {r.session_id}' or cancel it "
            f"with '{node} session cancel {r.session_id} --reason \"...\"'"
        )


def _require_sd_file(data: bytes, path: Path) -> None:
    """Refuse, before a session opens, a file that is not an SD file at all (exit 2: the wrong file was
    picked). An SD file that fails a check (altered anywhere but its format marker) goes to the node,
    which is the one to refuse it: it audits the refusal ("sd-file-refused", with the reason) and ends
    the session it opened, and sdctl exits 4 (a verification failed)."""
    from sdquorum.sdfile import FORMAT, SecurityDomainFile

    if FORMAT.encode() in data[:4096] or FORMAT.encode() in data[-4096:]:
        return
    try:
        SecurityDomainFile.from_bytes(data)
    except MalformedError as e:
        raise UsageError(f"{path} is not an SD file: {e}") from e


def _advice(st: pb.NodeStatus) -> str:
    """What the node will accept next, in its state (each advised command is one it accepts)."""
    sid = st.active_session_id
    if sid:
        return (
            f"the {st.session_kind} session runs until {_when(st.session_expires_at_unix)}: watch it "
            f"(sdctl session attach {sid}) or cancel it (sdctl session cancel {sid} --reason ...)"
        )
    if st.state == pb.PROVISIONED:
        return (
            "activate it with a new domain (sdctl download --cert ... --quorum M --out sd.json) "
            "or recover a domain onto it (sdctl recover --sd-file sd.json --reason ...)"
        )
    if st.state == pb.RECOVERY_PENDING:  # a node of an older version, or one that could not write
        return "start the recovery again (sdctl recover --sd-file sd.json --reason ...)"
    if st.compromised:
        return (
            "drills, rotation and Azure restores are refused: provision a new domain on a new node "
            "(docs/runbooks/compromise.md)"
        )
    return "the data plane is open (sdctl keys list); drill with 'sdctl drill', rotate with 'sdctl rotate'"


def _when(t: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t)) if t else "-"


def _request_file(offline_dir: Path, custodian: str, x: int) -> Path:
    """Where the request file for ``custodian`` goes: in ``offline_dir`` and nowhere else. The
    name comes from the node: it is checked against the name pattern before any path is built,
    and the result must still sit directly in ``offline_dir``."""
    from sdquorum.offline import check_custodian_name

    name = f"{check_custodian_name(custodian)}-x{int(x)}.request.json"
    path = offline_dir / name
    if path.parent != offline_dir or path.name != name:  # pragma: no cover - the pattern already holds
        raise MalformedError(f"the node named a custodian {custodian[:64]!r} that is no file name")
    return path


def _check_offline_dir(path: Path | None) -> None:
    if path is not None and not path.is_dir():
        raise UsageError(f"--offline-request {path} is not a folder: create it first")


def _progress_json(p: pb.RecoveryProgress) -> dict[str, Any]:
    return {
        "session_id": p.session_id,
        "kind": p.kind,
        "state": pb.SessionState.Name(p.state),
        "required": p.required,
        "accepted": p.accepted,
        "expires_at": p.expires_at_unix,
        "message": p.message,
        "custodians": [
            {"x": c.x, "name": c.name, "status": pb.CustodianStatus.Name(c.status), "detail": c.detail}
            for c in p.custodians
        ],
    }


def main(argv: list[str] | None = None, out: Callable[[str], None] | None = None) -> int:
    args = _parser().parse_args(argv)

    def body() -> int:
        if args.config is None and os.environ.get("SDCTL_CONFIG"):
            args.config = Path(os.environ["SDCTL_CONFIG"])
        for dest, value in load_settings(SETTINGS, args).items():
            setattr(args, dest, value)
        if args.output not in ("text", "json"):
            raise UsageError(f"sdctl.output = {args.output!r}: use text or json")
        return Ctl(args, out or (lambda s: print(s, flush=True))).run()

    return run_main("sdctl", body, args.debug)


if __name__ == "__main__":
    raise SystemExit(main())
