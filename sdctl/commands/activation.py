"""``sdctl download`` (activate a node: create its security domain) and ``sdctl sd-file`` (fetch the
current epoch's SD file). An SD file is written through ``PendingFile``: never over an existing
file, and only once the node has answered."""

from __future__ import annotations

import sys
from pathlib import Path

from sdctl.commands import Command, arg, roster_certs
from sdctl.ctl import Ctl
from sdquorum.errors import UsageError
from sdquorum_rpc.files import PendingFile, read_input_file


async def download(ctl: Ctl) -> int:
    a = ctl.args
    if a.out.exists():
        raise UsageError(f"{a.out} exists already: an SD file is never overwritten; choose another --out")
    certs = [read_input_file(p, "custodian certificate") for p in a.custodian_certs]
    client = ctl.client()  # TLS files checked before anything is created or asked
    # The node is activated only once: make sure the SD file can be written before asking.
    with PendingFile(a.out) as out:
        async with client as c, c.errors():
            data, warnings = await c.download(certs, a.quorum)
        out.write(data)
    for w in warnings:
        print(f"sdctl: warning: {w}", file=sys.stderr)
    ctl.emit(
        f"node activated; security domain written to {a.out} ({len(data)} bytes). Store it at each custodian's site.",
        {"sd_file": str(a.out), "bytes": len(data), "warnings": warnings},
    )
    return 0


async def sd_file(ctl: Ctl) -> int:
    fmt = ctl.args.sd_format
    with PendingFile(ctl.args.out) as out:
        async with ctl.client() as c, c.errors():
            data = await c.security_domain(fmt)
        out.write(data)
    ctl.emit(
        f"wrote the current SD file ({fmt} format) to {ctl.args.out}",
        {"sd_file": str(ctl.args.out), "format": fmt},
    )
    return 0


COMMANDS = [
    Command(
        "download",
        "activate the node: create its security domain (once per node)",
        ("sdctl download --cert a.pem --cert b.pem --cert c.pem --quorum 2 --out sd.json",),
        (
            roster_certs("a custodian's wrapping certificate (3..10 of them)"),
            arg("--quorum", type=int, required=True, help="shares needed to recover (2..n, 3+ recommended)"),
            arg("--out", type=Path, required=True, help="where to write the SD file (must not exist)"),
        ),
        run=download,
    ),
    Command(
        "sd-file",
        "fetch the current epoch's SD file (or the same domain as an Azure v2 file)",
        ("sdctl sd-file --out sd-current.json", "sdctl sd-file --format azure --out sd-azure.json"),
        (
            arg("--out", type=Path, required=True),
            arg("--format", dest="sd_format", choices=["native", "azure"], default="native"),
        ),
        run=sd_file,
    ),
]
