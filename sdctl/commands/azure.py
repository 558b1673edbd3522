"""``sdctl azure restore-blob``: an Azure Managed HSM security domain restored by the custodians'
ceremony, without gathering their keys; writes Azure's transfer file."""

from __future__ import annotations

from pathlib import Path

from sdctl.commands import Command, arg
from sdctl.ctl import OFFLINE_REQUEST_HELP, Ctl, Running, check_offline_dir, pb
from sdquorum.errors import MalformedError, StateError, UsageError
from sdquorum_rpc.files import PendingFile, read_input_file


async def restore_blob(ctl: Ctl) -> int:
    from sdquorum.azure.sdfile import AzureSecurityDomain

    a = ctl.args
    sd = read_input_file(a.sd_file, "Azure SD file")
    try:
        AzureSecurityDomain.from_bytes(sd)  # refused here, before a session opens
    except MalformedError as e:
        raise UsageError(f"{a.sd_file} is not an Azure version-2 SD file: {e}") from e
    cert = read_input_file(a.exchange_cert, "exchange certificate")
    check_offline_dir(a.offline_request)
    client = ctl.client()
    with PendingFile(a.out) as out:
        async with client as c, c.errors():
            session_id, expires_at = await c.start_azure_restore(sd, cert, a.reason, a.ttl)
            ctl.running = Running(session_id, "azure-recovery", expires_at)
            final = await ctl.follow(c, session_id, a.offline_request)
            if final.state != pb.COMPLETED:
                raise StateError(f"the Azure restore failed: {final.message}")
            data = await c.azure_transfer_file(session_id)
        out.write(data)
    ctl.emit(
        f"transfer file written to {a.out}: upload it with 'az keyvault security-domain upload --restore-blob "
        f"--sd-file {a.out}'; no private key left any custodian's machine",
        {"transfer_file": str(a.out)},
    )
    return 0


COMMANDS = [
    Command(
        "azure",
        "Azure Managed HSM security domains, restored without gathering the custodians' keys",
        sub=(
            Command(
                "restore-blob",
                "run the custodians' ceremony for an Azure v2 SD file and write Azure's transfer file",
                (
                    "sdctl azure restore-blob --sd-file azure-sd.json --exchange-cert exchange.cer --out transfer.json",
                ),
                (
                    arg(
                        "--sd-file",
                        type=Path,
                        required=True,
                        help="the Azure security-domain file (version 2)",
                    ),
                    arg(
                        "--exchange-cert",
                        type=Path,
                        required=True,
                        help="from 'az keyvault security-domain init-recovery'",
                    ),
                    arg(
                        "--out",
                        type=Path,
                        required=True,
                        help="where to write the transfer file (must not exist)",
                    ),
                    arg(
                        "--reason",
                        default="Azure Managed HSM security-domain restore",
                        help="shown to every custodian",
                    ),
                    arg("--ttl", type=int, default=0),
                    arg("--offline-request", type=Path, metavar="DIR", help=OFFLINE_REQUEST_HELP),
                ),
                run=restore_blob,
            ),
        ),
    ),
]
