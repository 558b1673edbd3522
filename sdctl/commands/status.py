"""``sdctl status``: the node's state, its ceremony session if one runs, whether the domain is marked
compromised, and a ``next:`` line advising only commands the node accepts in that state."""

from __future__ import annotations

from sdctl.commands import Command
from sdctl.ctl import Ctl, pb, when


async def status(ctl: Ctl) -> int:
    from sdctl.commands.pool import describe_pool, pool_status

    async with ctl.client() as c, c.errors():
        st = await c.status()
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
        "advice": advice(st),
    }
    text = f"node {st.node_id}: {obj['state']}"
    if st.domain_id:
        text += f", domain {st.domain_id} epoch {st.epoch}, quorum {st.quorum} of {st.custodians}, {st.key_count} keys"
    if st.compromised:
        text += ", MARKED COMPROMISED"
    if st.active_session_id:
        text += (
            f"\n  {st.session_kind} session {st.active_session_id} "
            f"{pb.SessionState.Name(st.session_state)}, deadline {when(st.session_expires_at_unix)}"
        )
    text += describe_pool(pool, obj)
    text += f"\n  next: {obj['advice']}"
    ctl.emit(text, obj)
    return 0


def advice(st: pb.NodeStatus) -> str:
    """What the node will accept next, in its state (each advised command is one it accepts)."""
    sid = st.active_session_id
    if sid:
        return (
            f"the {st.session_kind} session runs until {when(st.session_expires_at_unix)}: watch it "
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


COMMANDS = [
    Command(
        "status",
        "show the node's state, its running session and what to do next",
        ("sdctl --node 127.0.0.1:7443 status", "sdctl status --output json"),
        run=status,
    )
]
