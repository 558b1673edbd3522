"""``sdctl backup`` (the key store, sealed under the security domain) and ``sdctl restore`` (replace
the key store from such a backup: destructive, so confirmed first)."""

from __future__ import annotations

from pathlib import Path

from sdctl.commands import Command, arg
from sdctl.ctl import Ctl
from sdquorum.errors import UsageError
from sdquorum_rpc.files import read_input_file, write_private_file


async def backup(ctl: Ctl) -> int:
    a = ctl.args
    if a.out.exists():
        raise UsageError(f"{a.out} exists already: choose another --out")
    async with ctl.client() as c, c.errors():
        data = await c.backup()
    write_private_file(a.out, data, mode=0o600)
    ctl.emit(f"backup written to {a.out} ({len(data)} bytes)", {"backup": str(a.out), "bytes": len(data)})
    return 0


async def restore(ctl: Ctl) -> int:
    data = read_input_file(ctl.args.file, "backup")
    ctl.confirm(f"restore {ctl.args.file}", "every key on the node is replaced by the backup's keys")
    async with ctl.client() as c, c.errors():
        restored = await c.restore(data)
    ctl.emit(f"restored {restored} keys", {"keys_restored": restored})
    return 0


COMMANDS = [
    Command(
        "backup",
        "export the key store, sealed under the security domain",
        ("sdctl backup --out keys.backup",),
        (arg("--out", type=Path, required=True),),
        run=backup,
    ),
    Command(
        "restore",
        "replace the key store from a backup of this domain (asks first; --yes when not on a terminal)",
        ("sdctl restore keys.backup", "sdctl restore keys.backup --yes"),
        (arg("file", type=Path),),
        run=restore,
        destructive=True,
    ),
]
