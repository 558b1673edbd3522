"""``sdctl drill`` (every custodian proves possession; no share leaves) and ``sdctl rotate`` (a new
roster and/or quorum, approved by m current custodians)."""

from __future__ import annotations

from pathlib import Path

from sdctl.commands import Command, arg, roster_certs
from sdctl.ctl import DRILL_WORD, OFFLINE_REQUEST_HELP, Ctl, Running, check_offline_dir, pb, word
from sdquorum.errors import StateError, VerificationError
from sdquorum_rpc.files import PendingFile, read_input_file


async def drill(ctl: Ctl) -> int:
    a = ctl.args
    check_offline_dir(a.offline_request)
    async with ctl.client() as c, c.errors():
        session_id, expires_at = await c.start_drill(a.reason, a.ttl)
        ctl.running = Running(session_id, "drill", expires_at)
        final = await ctl.follow(c, session_id, a.offline_request)
    report = {c.name: word(DRILL_WORD, c.status) for c in final.custodians}
    for cp in final.custodians:
        detail = f": {cp.detail}" if cp.status != pb.ACCEPTED and cp.detail else ""
        ctl.say(f"  {cp.name} (x={cp.x}): {word(DRILL_WORD, cp.status)}{detail}")
    ctl.emit(final.message, {"drill": report, "message": final.message})
    if any(w != "proved" for w in report.values()):
        raise VerificationError(
            f"not every custodian proved possession: {final.message}; see the report above"
        )
    return 0


async def rotate(ctl: Ctl) -> int:
    from sdquorum.sdfile import SecurityDomainFile

    a = ctl.args
    certs = [read_input_file(p, "custodian certificate") for p in a.custodian_certs]
    check_offline_dir(a.offline_request)
    client = ctl.client()
    with PendingFile(a.out) as out:
        async with client as c, c.errors():
            session_id, expires_at = await c.propose_rotation(certs, a.quorum, a.reason, a.ttl)
            ctl.running = Running(session_id, "rotation", expires_at)
            final = await ctl.follow(c, session_id, a.offline_request)
            if final.state != pb.COMPLETED:
                raise StateError(f"rotation not approved: {final.message}")
            data = await c.security_domain()
        out.write(data)
    epoch = SecurityDomainFile.from_bytes(data).header.epoch
    ctl.emit(
        f"rotated to epoch {epoch}; new SD file written to {a.out}. Destroy every copy of the old SD file.",
        {"sd_file": str(a.out), "epoch": epoch},
    )
    return 0


COMMANDS = [
    Command(
        "drill",
        "every custodian proves it can still open its share (no share leaves)",
        ("sdctl drill --reason 'Q3 drill'", "sdctl drill --offline-request requests/"),
        (
            arg("--reason", default="quarterly possession drill", help="shown to every custodian"),
            arg("--ttl", type=int, default=0, help="deadline in seconds (default: node's, 600)"),
            arg("--offline-request", type=Path, metavar="DIR", help=OFFLINE_REQUEST_HELP),
        ),
        run=drill,
    ),
    Command(
        "rotate",
        "new custodians and/or quorum, approved by m current custodians",
        (
            "sdctl rotate --cert a.pem --cert b.pem --cert f.pem --quorum 2 --reason 'carol left' --out sd-epoch2.json",
        ),
        (
            roster_certs("a new roster's wrapping certificate (3..10)"),
            arg("--quorum", type=int, required=True, help="the new quorum (2..n, 3+ recommended)"),
            arg("--reason", required=True, help="shown to every approving custodian"),
            arg("--ttl", type=int, default=0, help="approval deadline in seconds (default: node's, 600)"),
            arg("--out", type=Path, required=True, help="where to write the new SD file (must not exist)"),
            arg("--offline-request", type=Path, metavar="DIR", help=OFFLINE_REQUEST_HELP),
        ),
        run=rotate,
    ),
]
