"""``sdctl pool allow|remove NODE_ID`` (an HSM pool: let a node join with no custodian, or end a
member; both audited by the node) and the pool part of ``sdctl status``."""

from __future__ import annotations

from typing import Any

from sdctl.commands import Command, arg
from sdctl.ctl import Ctl


async def allow(ctl: Ctl) -> int:
    from sdquorum_rpc.pool_admin import allow_pool_member

    node_id = ctl.args.node_id
    async with ctl.client() as c, c.errors():
        await allow_pool_member(c, node_id)
    ctl.emit(
        f"{node_id} may join the pool: start it with the pool's --pool-etcd settings; a member seals the "
        "domain to it (no custodian needed)",
        {"allowed": node_id},
    )
    return 0


async def remove(ctl: Ctl) -> int:
    from sdquorum_rpc.pool_admin import remove_pool_member

    node_id = ctl.args.node_id
    async with ctl.client() as c, c.errors():
        await remove_pool_member(c, node_id)
    ctl.emit(
        f"{node_id} removed from the pool: the members refuse it and it serves nothing. Now delete its etcd "
        f"user so it can no longer write: etcdctl --cert root.pem --key root.key --cacert ca.pem user delete "
        f"node.{node_id} (docs/runbooks/pool.md)",
        {"removed": node_id},
    )
    return 0


async def pool_status(c: Any) -> Any:
    """The node's PoolStatus, or None (a node standing alone, or a caller who is no admin)."""
    import grpc.aio

    from sdquorum_rpc import pool_admin

    try:
        return await pool_admin.pool_status(c)
    except grpc.aio.AioRpcError:
        return None


def describe_pool(st: Any, obj: dict[str, Any]) -> str:
    """The status text's pool line (empty without a pool); adds ``pool`` to the JSON ``obj``."""
    if st is None:
        return ""
    members, allowed = list(st.members), list(st.allowed)
    obj["pool"] = {
        "name": st.name,
        "members": members,
        "allowed": allowed,
        "staleness_seconds": round(st.staleness_seconds, 3),
    }
    return (
        f"\n  pool {st.name}: members {', '.join(members) or '-'}; allowed to join "
        f"{', '.join(allowed) or '-'}; etcd view {st.staleness_seconds:.1f} s old"
    )


_NODE_ID = arg("node_id", metavar="NODE_ID")

COMMANDS = [
    Command(
        "pool",
        "an HSM pool: let a node join (no custodian needed), or end a member",
        ("sdctl --node node-a:7443 pool allow node-c",),
        sub=(
            Command(
                "allow",
                "let NODE_ID join the pool: a member seals the domain to it (audited)",
                ("sdctl pool allow node-c",),
                (_NODE_ID,),
                run=allow,
            ),
            Command(
                "remove",
                "end a member: the others refuse it and it serves nothing (audited)",
                ("sdctl pool remove node-c",),
                (_NODE_ID,),
                run=remove,
            ),
        ),
    )
]
