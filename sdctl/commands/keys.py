"""The data plane: ``sdctl keys create|list|delete|recover|deleted|purge`` and ``sdctl
encrypt|decrypt|sign|verify``. ``keys delete`` and ``keys purge`` are destructive: the key's name
typed back on a terminal, or ``--yes``."""

from __future__ import annotations

import json
from pathlib import Path

from sdctl.commands import Command, arg
from sdctl.ctl import Ctl, pb, when
from sdquorum.errors import VerificationError
from sdquorum_rpc.files import read_input_file, write_private_file

KEY_TYPES = {"aes256-gcm": "AES256_GCM", "ed25519": "ED25519", "rsa3072": "RSA3072"}  # pb.KeyType names

OWNERSHIP = (
    "Every key has one owner, the role that may use it (admin, app or app/<name>). An app sees\n"
    "and manages only its own keys; an admin sees and manages every key, uses only its own, and\n"
    "can create a key for an app (--owner). A deleted key is kept, unusable, for the node's\n"
    "keys.retention_days (default 90) and can be recovered until then; an admin can purge it\n"
    "sooner. Every create, delete, recover and purge is audited."
)


async def create(ctl: Ctl) -> int:
    a = ctl.args
    async with ctl.client() as c, c.errors():
        k = await c.create_key(a.name, KEY_TYPES[a.type], a.owner)
    kind = pb.KeyType.Name(k.type)
    ctl.emit(f"created {kind} key {k.name} for {k.owner}", {"name": k.name, "type": kind, "owner": k.owner})
    return 0


async def list_keys(ctl: Ctl) -> int:
    deleted = ctl.args.keys_command == "deleted"
    async with ctl.client() as c, c.errors():
        keys = await c.list_keys(deleted=deleted)
    if ctl.json:
        rows = [
            {
                "name": k.name,
                "type": pb.KeyType.Name(k.type),
                "owner": k.owner,
                **({"deleted_at": k.deleted_at_unix, "purge_at": k.purge_at_unix} if deleted else {}),
            }
            for k in keys
        ]
        ctl.out(json.dumps(rows))
        return 0
    for k in keys:
        extra = f"\tdeleted {when(k.deleted_at_unix)}\tpurged {when(k.purge_at_unix)}" if deleted else ""
        ctl.out(f"{k.name}\t{pb.KeyType.Name(k.type)}\t{k.owner}{extra}")
    return 0


async def delete(ctl: Ctl) -> int:
    name = ctl.args.name
    ctl.confirm(f"delete key {name}", "it stays recoverable until the retention ends", answer=name)
    async with ctl.client() as c, c.errors():
        purge_at = await c.delete_key(name)
    ctl.emit(
        f"deleted {name}: recoverable until {when(purge_at)} (sdctl keys recover {name}), then purged",
        {"deleted": name, "purge_at": purge_at},
    )
    return 0


async def recover(ctl: Ctl) -> int:
    async with ctl.client() as c, c.errors():
        k = await c.recover_key(ctl.args.name)
    ctl.emit(f"recovered {k.name} (owner {k.owner})", {"recovered": k.name, "owner": k.owner})
    return 0


async def purge(ctl: Ctl) -> int:
    name = ctl.args.name
    ctl.confirm(f"purge key {name}", "it cannot be undone", answer=name)
    async with ctl.client() as c, c.errors():
        await c.purge_key(name)
    ctl.emit(f"purged {name}: it is gone for good", {"purged": name})
    return 0


async def crypt(ctl: Ctl) -> int:
    a = ctl.args
    data = read_input_file(a.infile, "input")
    async with ctl.client() as c, c.errors():
        if a.command == "encrypt":
            out = await c.encrypt(a.name, data, a.aad.encode())
        elif a.command == "decrypt":
            out = await c.decrypt(a.name, data, a.aad.encode())
        else:
            out = await c.sign(a.name, data)
    write_private_file(a.out, out, mode=0o600)
    ctl.emit(f"wrote {a.out} ({len(out)} bytes)", {"out": str(a.out), "bytes": len(out)})
    return 0


async def verify(ctl: Ctl) -> int:
    a = ctl.args
    msg, sig = read_input_file(a.infile, "input"), read_input_file(a.signature, "signature")
    async with ctl.client() as c, c.errors():
        ok = await c.verify(a.name, msg, sig)
    if not ok:
        raise VerificationError(
            f"the signature in {a.signature} is NOT valid for {a.infile} under key {a.name}"
        )
    ctl.emit("signature valid", {"valid": True})
    return 0


NAME = arg("name")
IN = arg("--in", dest="infile", type=Path, required=True)
OUT = arg("--out", type=Path, required=True)
AAD = arg("--aad", default="", help="additional authenticated data (AES-GCM)")

COMMANDS = [
    Command(
        "keys",
        "create, list, delete, recover or purge keys",
        description=OWNERSHIP,
        sub=(
            Command(
                "create",
                "create a key",
                (
                    "sdctl keys create signer --type ed25519",
                    "sdctl keys create payments --type aes256-gcm --owner app/payments",
                ),
                (
                    NAME,
                    arg("--type", choices=sorted(KEY_TYPES), required=True),
                    arg(
                        "--owner",
                        default="",
                        help="admin only: the app that will own and use the key (app or app/<name>; default: you)",
                    ),
                ),
                run=create,
            ),
            Command(
                "list",
                "list the keys you may use (an admin: every key)",
                ("sdctl keys list", "sdctl keys list --output json"),
                run=list_keys,
            ),
            Command(
                "delete",
                "delete a key: it is kept, unusable, and can be recovered until the retention ends",
                ("sdctl keys delete old-key", "sdctl keys delete old-key --yes"),
                (NAME,),
                run=delete,
                destructive=True,
            ),
            Command(
                "recover", "recover a deleted key", ("sdctl keys recover old-key",), (NAME,), run=recover
            ),
            Command(
                "deleted",
                "admin only: list deleted keys and when each is purged",
                ("sdctl keys deleted",),
                run=list_keys,
            ),
            Command(
                "purge",
                "admin only: remove a deleted key for good (it cannot be recovered afterwards)",
                ("sdctl keys purge old-key --yes",),
                (NAME,),
                run=purge,
                destructive=True,
            ),
        ),
    ),
    Command(
        "encrypt",
        "encrypt a file",
        ("sdctl encrypt payments --in data.bin --out data.encrypted",),
        (NAME, IN, OUT, AAD),
        run=crypt,
    ),
    Command(
        "decrypt",
        "decrypt a file",
        ("sdctl decrypt payments --in data.encrypted --out data.bin",),
        (NAME, IN, OUT, AAD),
        run=crypt,
    ),
    Command(
        "sign", "sign a file", ("sdctl sign signer --in msg.txt --out msg.sig",), (NAME, IN, OUT), run=crypt
    ),
    Command(
        "verify",
        "verify a signature (exit 0 valid, 4 invalid)",
        ("sdctl verify signer --in msg.txt --signature msg.sig",),
        (NAME, IN, arg("--signature", type=Path, required=True)),
        run=verify,
    ),
]
