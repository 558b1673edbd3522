"""``sdctl pool allow|remove NODE_ID`` and the pool part of ``sdctl status`` (an HSM pool member).

Importing this module loads argparse only (as sdctl/cli.py); the wire messages are imported when a
command runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

__all__ = ["add_pool_command", "describe_pool", "pool_status", "run_pool"]


def add_pool_command(cmd: Callable[[str, str, str], argparse.ArgumentParser]) -> None:
    po = cmd(
        "pool", "an HSM pool: let a node join, or end a member", "sdctl --node node-a:7443 pool allow node-c"
    )
    pos = po.add_subparsers(dest="pool_command", required=True)
    for name, help_ in (
        ("allow", "let NODE_ID join the pool (a member seals the domain to it: no custodian needed)"),
        ("remove", "end a member: the others refuse it and it serves nothing"),
    ):
        pp = pos.add_parser(name, help=help_, epilog=f"example: sdctl pool {name} node-c")
        pp.add_argument("node_id", metavar="NODE_ID")


async def run_pool(ctl: Any) -> int:
    from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2 as pb

    a = ctl.args
    async with ctl.client() as c, c.errors():
        if a.pool_command == "allow":
            await c.admin.AllowPoolMember(pb.PoolMemberRequest(node_id=a.node_id))
            ctl.emit(
                f"{a.node_id} may join the pool: start it with the pool's --pool-etcd settings; a member seals "
                "the domain to it (no custodian needed)",
                {"allowed": a.node_id},
            )
            return 0
        await c.admin.RemovePoolMember(pb.PoolMemberRequest(node_id=a.node_id))
    ctl.emit(
        f"{a.node_id} removed from the pool: the members refuse it and it serves nothing. Now delete its etcd "
        f"user so it can no longer write: etcdctl --cert root.pem --key root.key --cacert ca.pem user delete "
        f"node.{a.node_id} (docs/runbooks/pool.md)",
        {"removed": a.node_id},
    )
    return 0


async def pool_status(c: Any) -> Any:
    """The node's PoolStatus, or None (a node standing alone, or a caller who is no admin)."""
    import grpc.aio

    from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2 as pb

    try:
        return await c.admin.GetPoolStatus(pb.GetStatusRequest())
    except grpc.aio.AioRpcError:
        return None


def describe_pool(st: Any, obj: dict[str, Any]) -> str:
    """The status line's pool part (empty without a pool); adds ``pool`` to the JSON ``obj``."""
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
        f"\npool {st.name}: members {', '.join(members) or '-'}; allowed to join {', '.join(allowed) or '-'}; "
        f"etcd view {st.staleness_seconds:.1f} s old"
    )
