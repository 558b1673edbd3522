"""The HSM pool's admin calls (issue 16), beside :class:`~sdquorum_rpc.admin.AdminClient`: plain
values in, the wire's response messages out, errors translated where the caller says
(``with c.errors():``)."""

from __future__ import annotations

from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2 as pb
from sdquorum_rpc.client import NodeClient

__all__ = ["allow_pool_member", "pool_status", "remove_pool_member"]


async def allow_pool_member(c: NodeClient, node_id: str) -> None:
    await c.admin.AllowPoolMember(pb.PoolMemberRequest(node_id=node_id))


async def remove_pool_member(c: NodeClient, node_id: str) -> None:
    await c.admin.RemovePoolMember(pb.PoolMemberRequest(node_id=node_id))


async def pool_status(c: NodeClient) -> pb.PoolStatus:
    res: pb.PoolStatus = await c.admin.GetPoolStatus(pb.GetStatusRequest())
    return res
