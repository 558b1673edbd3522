"""``sdctl session status|attach|cancel``: the node's ceremony session (recovery, drill, rotation,
Azure restore), which runs at the node and not in sdctl: Ctrl-C in 'sdctl recover', 'drill' or
'rotate' stops only the watching. SESSION_ID defaults to the node's current (or last) session."""

from __future__ import annotations

import json

from sdctl.commands import Command, arg
from sdctl.ctl import DRILL_WORD, STATUS_WORD, Ctl, Running, pb, progress_json, when, word
from sdquorum.errors import StateError


async def status(ctl: Ctl) -> int:
    async with ctl.client() as c, c.errors():
        summary(ctl, await c.get_session(ctl.args.session_id))
    return 0


async def attach(ctl: Ctl) -> int:
    async with ctl.client() as c, c.errors():
        p = await c.get_session(ctl.args.session_id)
        ctl.running = Running(p.session_id, p.kind, p.expires_at_unix)
        final = await ctl.follow(c, p.session_id, None)
    summary(ctl, final)
    if final.state != pb.COMPLETED:
        raise StateError(f"{final.kind} session {final.session_id} failed: {final.message}")
    return 0


async def cancel(ctl: Ctl) -> int:
    async with ctl.client() as c, c.errors():
        p = await c.get_session(ctl.args.session_id)
        if p.state in (pb.COMPLETED, pb.FAILED):
            raise StateError(
                f"{p.kind} session {p.session_id} has ended already "
                f"({pb.SessionState.Name(p.state)}): nothing to cancel"
            )
        p = await c.cancel_session(p.session_id, ctl.args.reason)
    ctl.emit(f"{p.kind} session {p.session_id} cancelled: {p.message}", progress_json(p))
    return 0


def summary(ctl: Ctl, p: pb.RecoveryProgress) -> None:
    """The session in a few lines: kind, state, deadline (or how it ended), each custodian."""
    if ctl.json:
        ctl.out(json.dumps(progress_json(p), sort_keys=True))
        return
    ended = p.state in (pb.COMPLETED, pb.FAILED)
    ctl.out(
        f"{p.kind} session {p.session_id}: {pb.SessionState.Name(p.state)}"
        + (f" ({p.message})" if ended and p.message else f", deadline {when(p.expires_at_unix)}")
    )
    words = DRILL_WORD if p.kind == "drill" else STATUS_WORD
    for cp in p.custodians:
        detail = f": {cp.detail}" if cp.detail else ""
        ctl.out(f"  {cp.name} (x={cp.x}): {word(words, cp.status)}{detail}")


SESSION_ID = arg(
    "session_id",
    nargs="?",
    default="",
    metavar="SESSION_ID",
    help="default: the node's current (or last) session",
)

COMMANDS = [
    Command(
        "session",
        "see, watch or cancel the node's ceremony session (recovery, drill, rotation, Azure restore)",
        description=(
            "A ceremony runs at the node, not in sdctl: Ctrl-C in 'sdctl recover', 'drill' or 'rotate'\n"
            "stops only the watching. SESSION_ID defaults to the node's current (or last) session.\n"
            "'attach' shows the live progress until the session ends (exit 0 completed, 3 failed);\n"
            "'cancel' ends it FAILED with 'cancelled by <you>: <reason>' (audited)."
        ),
        sub=(
            Command(
                "status",
                "show the node's ceremony session: kind, state, deadline, each custodian",
                ("sdctl session status", "sdctl session status 3f2a9c01 --output json"),
                (SESSION_ID,),
                run=status,
            ),
            Command(
                "attach",
                "watch the session's live progress until it ends (exit 0 completed, 3 failed)",
                ("sdctl session attach", "sdctl session attach 3f2a9c01"),
                (SESSION_ID,),
                run=attach,
            ),
            Command(
                "cancel",
                "end the running session FAILED (audited, with your reason)",
                (
                    "sdctl session cancel --reason 'wrong SD file'",
                    "sdctl session cancel 3f2a9c01 --reason 'custodians not reachable today'",
                ),
                (SESSION_ID, arg("--reason", required=True, help="why (goes into the audit log)")),
                run=cancel,
            ),
        ),
    ),
]
