"""``sdctl``: the operator's command line for an sdquorum HSM node.

Connection flags (or environment): --node (SDCTL_NODE), --cert (SDCTL_CERT), --key (SDCTL_KEY),
--ca (SDCTL_CA). Exit codes: 0 ok, 1 unexpected, 2 bad usage or input, 3 wrong node state,
4 a verification failed (also: signature invalid), 5 network or TLS, 6 permission denied.

Examples::

    sdctl pki init --out pki --node-id node-a --custodians alice,bob,carol,dave,erin
    sdctl --node 127.0.0.1:7443 status
    sdctl download --cert alice.wrap.pem --cert bob.wrap.pem --cert carol.wrap.pem --quorum 2 --out sd.json
    sdctl recover --sd-file sd.json --reason "datacentre A lost"
    sdctl backup --out keys.backup && sdctl restore keys.backup
    sdctl keys create payments --type aes256-gcm
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sdctl import pkifiles
from sdquorum.errors import MalformedError, StateError, UsageError, VerificationError
from sdquorum.sdfile import SecurityDomainFile
from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2 as pb
from sdquorum_rpc.cli import run_main
from sdquorum_rpc.client import NodeClient
from sdquorum_rpc.files import PendingFile, read_input_file, write_private_file
from sdquorum_rpc.tls import TlsFiles

__all__ = ["main"]

CHUNK = 1024 * 1024
KEY_TYPES = {"aes256-gcm": pb.AES256_GCM, "ed25519": pb.ED25519, "rsa3072": pb.RSA3072}
STATUS_WORD = {
    pb.NOT_CONNECTED: "not connected",
    pb.REQUESTED: "pending",
    pb.ACCEPTED: "accepted",
    pb.REJECTED: "REJECTED",
    pb.DENIED: "denied",
    pb.NOT_NEEDED: "not needed",
}


def _parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(
        prog="sdctl", description=__doc__.split("\n")[0], epilog=__doc__, formatter_class=fmt
    )
    env = os.environ.get
    p.add_argument("--node", default=env("SDCTL_NODE", "127.0.0.1:7443"), help="node host:port")
    p.add_argument("--cert", type=Path, default=env("SDCTL_CERT"), help="your mTLS client certificate")
    p.add_argument("--key", type=Path, default=env("SDCTL_KEY"), help="its private key")
    p.add_argument("--ca", type=Path, default=env("SDCTL_CA"), help="the transport CA")
    p.add_argument("--output", choices=["text", "json"], default="text")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
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
    r.add_argument("--sd-file", type=Path, required=True)
    r.add_argument("--reason", required=True, help="shown to every custodian before approving")
    r.add_argument("--ttl", type=int, default=0, help="session deadline in seconds (default: node's, 600)")
    b = cmd(
        "backup", "export the key store, sealed under the security domain", "sdctl backup --out keys.backup"
    )
    b.add_argument("--out", type=Path, required=True)
    rs = cmd("restore", "replace the key store from a backup of this domain", "sdctl restore keys.backup")
    rs.add_argument("file", type=Path)

    k = cmd("keys", "create, list or delete keys", "sdctl keys create payments --type aes256-gcm")
    ks = k.add_subparsers(dest="keys_command", required=True)
    kc = ks.add_parser(
        "create", help="create a key", epilog="example: sdctl keys create signer --type ed25519"
    )
    kc.add_argument("name")
    kc.add_argument("--type", choices=sorted(KEY_TYPES), required=True)
    ks.add_parser("list", help="list keys", epilog="example: sdctl keys list")
    kd = ks.add_parser("delete", help="delete a key", epilog="example: sdctl keys delete old-key")
    kd.add_argument("name")

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
    pis = pks.add_parser(
        "issue",
        help="issue one more certificate from DIR's CAs",
        epilog="example: sdctl pki issue --dir pki --role custodian/frank\n         sdctl pki issue --dir pki --attestation node-c",
    )
    pis.add_argument("--dir", type=Path, required=True)
    g = pis.add_mutually_exclusive_group(required=True)
    g.add_argument("--role", help="admin, app, node or custodian/<name>")
    g.add_argument("--attestation", metavar="NODE_ID", help="an attestation certificate for a node")
    pis.add_argument("--ip", action="append", default=[])
    pis.add_argument("--dns", action="append", default=[])
    return p


class Ctl:
    def __init__(self, args: argparse.Namespace, out: Callable[[str], None] = print) -> None:
        self.args = args
        self.out = out
        self.json = args.output == "json"

    def emit(self, text: str, obj: dict[str, Any]) -> None:
        self.out(json.dumps(obj, sort_keys=True) if self.json else text)

    def client(self) -> NodeClient:
        a = self.args
        missing = [f for f, v in (("--cert", a.cert), ("--key", a.key), ("--ca", a.ca)) if v is None]
        if missing:
            raise UsageError(
                f"give {', '.join(missing)} (or SDCTL_CERT/SDCTL_KEY/SDCTL_CA): your mTLS identity"
            )
        return NodeClient(a.node, TlsFiles(a.cert, a.key, a.ca))

    # ----------------------------------------------------------- node

    async def status(self) -> int:
        async with self.client() as c:
            with c.errors():
                st = await c.node.GetStatus(pb.GetStatusRequest())
        obj = {
            "state": pb.NodeState.Name(st.state),
            "node_id": st.node_id,
            "domain_id": st.domain_id,
            "epoch": st.epoch,
            "quorum": st.quorum,
            "custodians": st.custodians,
            "active_session_id": st.active_session_id,
            "keys": st.key_count,
        }
        text = f"node {st.node_id}: {obj['state']}"
        if st.domain_id:
            text += f", domain {st.domain_id} epoch {st.epoch}, quorum {st.quorum} of {st.custodians}, {st.key_count} keys"
        if st.active_session_id:
            text += f", recovery session {st.active_session_id} running"
        self.emit(text, obj)
        return 0

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
        try:  # a wrong or altered file is refused before a session opens
            SecurityDomainFile.from_bytes(sd)
        except MalformedError as e:
            raise UsageError(f"{a.sd_file} is not a usable SD file: {e}") from e
        async with self.client() as c:
            with c.errors():
                init = await c.admin.InitRecovery(pb.InitRecoveryRequest(reason=a.reason, ttl_seconds=a.ttl))

                async def chunks() -> AsyncIterator[pb.SdFileChunk]:
                    for i in range(0, max(len(sd), 1), CHUNK):
                        yield pb.SdFileChunk(session_id=init.session_id, data=sd[i : i + CHUNK])

                first = await c.admin.UploadSecurityDomain(chunks())
                if not self.json:
                    self.out(
                        f"session {init.session_id}: domain {first.domain_id} epoch {first.epoch}, "
                        f"{first.required} of {len(first.custodians)} custodians needed"
                    )
                final = first
                async for prog in c.admin.WatchSession(pb.WatchSessionRequest(session_id=init.session_id)):
                    final = prog
                    self._progress(prog)
        if final.state == pb.COMPLETED:
            self.emit(f"recovered: {final.message}", _progress_json(final))
            return 0
        if self.json:
            self.out(json.dumps(_progress_json(final), sort_keys=True))
        raise StateError(
            f"recovery failed: {final.message}; start a new session with 'sdctl recover' when the custodians are ready"
        )

    def _progress(self, p: pb.RecoveryProgress) -> None:
        if self.json:
            self.out(json.dumps(_progress_json(p), sort_keys=True))
            return
        left = max(0, p.expires_at_unix - int(time.time()))
        parts = [f"{c.name}: {STATUS_WORD.get(c.status, '?')}" for c in p.custodians]
        self.out(f"  [{p.accepted}/{p.required} shares, {left}s left] " + " | ".join(parts))

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
        async with self.client() as c:
            with c.errors():
                if a.keys_command == "create":
                    k = await c.keys.CreateKey(pb.CreateKeyRequest(name=a.name, type=KEY_TYPES[a.type]))
                    self.emit(
                        f"created {pb.KeyType.Name(k.type)} key {k.name}",
                        {"name": k.name, "type": pb.KeyType.Name(k.type)},
                    )
                elif a.keys_command == "list":
                    res = await c.keys.ListKeys(pb.ListKeysRequest())
                    if self.json:
                        self.out(
                            json.dumps([{"name": k.name, "type": pb.KeyType.Name(k.type)} for k in res.keys])
                        )
                    else:
                        for k in res.keys:
                            self.out(f"{k.name}\t{pb.KeyType.Name(k.type)}")
                else:
                    await c.keys.DeleteKey(pb.DeleteKeyRequest(name=a.name))
                    self.emit(f"deleted {a.name}", {"deleted": a.name})
        return 0

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
        a = self.args
        now = datetime.now(UTC)
        if a.pki_command == "init":
            names = [n.strip() for n in a.custodians.split(",") if n.strip()]
            files = pkifiles.init_pki(a.out, a.node_id, names, now, ips=a.ip, dns=a.dns)
            self.emit(f"wrote {len(files)} files to {a.out}", {"files": [str(f) for f in files]})
        elif a.role:
            stem = pkifiles.issue_role(a.dir, a.role, now, ips=a.ip, dns=a.dns)
            self.emit(f"wrote {stem}.pem and {stem}.key in {a.dir}", {"stem": stem})
        else:
            stem = pkifiles.issue_attestation(a.dir, a.attestation, now)
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
        }
        return asyncio.run(handlers[cmd]())


def _progress_json(p: pb.RecoveryProgress) -> dict[str, Any]:
    return {
        "session_id": p.session_id,
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
    return run_main("sdctl", lambda: Ctl(args, out or (lambda s: print(s, flush=True))).run(), args.debug)


if __name__ == "__main__":
    raise SystemExit(main())
