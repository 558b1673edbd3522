"""The pool's admin RPCs, mixed into the node's admin servicer (hsm_node/server.py).

``AllowPoolMember`` / ``RemovePoolMember`` (audited by :class:`~hsm_node.pool.service.PoolService`)
and ``GetPoolStatus``. A node standing alone answers each with FAILED_PRECONDITION and one line
saying how to make it a pool member. Roles and error mapping: :func:`sdquorum_rpc.errors.rpc`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sdquorum.errors import StateError
from sdquorum.pki import Role
from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2 as pb
from sdquorum_rpc.errors import rpc
from sdquorum_rpc.tls import Ctx

if TYPE_CHECKING:
    from hsm_node.node import Node
    from hsm_node.pool.service import PoolService

__all__ = ["PoolAdminRpcs"]


class PoolAdminRpcs:
    node: Node

    def _pool(self) -> PoolService:
        pool: Any = self.node.pool
        if pool is None:
            raise StateError(
                "this node is not a member of an HSM pool: start it with --pool-etcd (docs/runbooks/pool.md)"
            )
        service: PoolService = pool
        return service

    @rpc("admin")
    async def AllowPoolMember(self, request: pb.PoolMemberRequest, context: Ctx, role: Role) -> pb.Ack:
        self._pool().allow(request.node_id, role)
        return pb.Ack()

    @rpc("admin")
    async def RemovePoolMember(self, request: pb.PoolMemberRequest, context: Ctx, role: Role) -> pb.Ack:
        self._pool().remove(request.node_id, role)
        return pb.Ack()

    @rpc("admin")
    async def GetPoolStatus(self, request: pb.GetStatusRequest, context: Ctx, role: Role) -> pb.PoolStatus:
        st = self._pool().status()
        return pb.PoolStatus(
            name=st.name, members=st.members, allowed=st.allowed, staleness_seconds=st.staleness
        )
