"""``sdctl status``: the node's state."""

from __future__ import annotations

from sdctl.commands import Command
from sdctl.ctl import Ctl, pb


async def status(ctl: Ctl) -> int:
    async with ctl.client() as c, c.errors():
        st = await c.status()
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
    ctl.emit(text, obj)
    return 0


COMMANDS = [
    Command(
        "status",
        "show the node's state",
        ("sdctl --node 127.0.0.1:7443 status", "sdctl status --output json"),
        run=status,
    )
]
