"""Cluster health, compaction and authentication set-up: what etcd's ``root`` user does.

Invariants: a status request goes to one named member, without failover (a health check asks that
member); users are created without a password, so only a certificate with their CN logs in; the
members' role may read and write only the pool's prefix. Adding a member's user and deleting it
can be repeated: a user that exists already (add) or is gone already (delete) is reported, not an
error, so a call retried after its first attempt committed, or a command run again, ends in the
same state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from aetcd import rpc  # etcd's v3 API (generated, kept current by aetcd's maintainers)

from hsm_node.pool.etcd._connection import HASLEADER, Connection
from hsm_node.pool.etcd._errors import code_of, details_of, rpc_detail
from hsm_node.pool.etcd._layout import ROOT, prefix_end
from hsm_node.pool.etcd._values import MemberStatus
from sdquorum.errors import TransportError

__all__ = ["ClusterAdmin"]

_NO_USER = "user name not found"  # etcd's details (etcdserver/api/v3rpc/rpctypes)
_USER_EXISTS = "user name already exists"


class ClusterAdmin(Connection):
    """Member status, compaction and etcd users and roles (as ``root``)."""

    async def status(self, endpoint: str) -> MemberStatus:
        """What ``endpoint`` says of itself (one member, no failover: for health checks)."""
        try:
            r = await self.blocking(
                rpc.MaintenanceStub(self._channel(endpoint)).Status,
                rpc.StatusRequest(),
                self.config.attempt_timeout,
            )
        except grpc.RpcError as e:
            raise TransportError(
                f"etcd member {endpoint} did not answer a status request ({rpc_detail(e)})"
            ) from e
        return MemberStatus(
            member_id=int(r.header.member_id),
            leader=int(r.leader),
            raft_term=int(r.raftTerm),
            raft_applied_index=int(r.raftAppliedIndex),
            db_size=int(r.dbSize),
            db_size_in_use=int(r.dbSizeInUse),
            version=str(r.version),
        )

    async def compact(self, revision: int) -> None:
        """As etcd ``root``: drop the history before ``revision`` (watches from before it then end
        with :class:`CompactedError`)."""

        def attempt(ch: grpc.Channel, t: float) -> Any:
            req = rpc.CompactionRequest(revision=revision, physical=True)
            return rpc.KVStub(ch).Compact(req, timeout=t, metadata=HASLEADER)

        await self._call("compaction", attempt)

    async def bootstrap_auth(self, member_role: str, users: Sequence[str], prefix: bytes = ROOT) -> None:
        """As etcd ``root``: create ``member_role`` with read-write on ``prefix``, one user per name
        in ``users`` (certificate CN; no password: only a certificate logs in) holding that role,
        the ``root`` user, and turn authentication on. Run once on a new cluster."""
        await self._auth("RoleAdd", rpc.AuthRoleAddRequest(name=member_role))
        perm = rpc.Permission(permType=rpc.Permission.READWRITE, key=prefix, range_end=prefix_end(prefix))
        await self._auth(
            "RoleGrantPermission", rpc.AuthRoleGrantPermissionRequest(name=member_role, perm=perm)
        )
        for user in ("root", *users):
            opts = rpc.UserAddOptions(no_password=True)
            await self._auth("UserAdd", rpc.AuthUserAddRequest(name=user, options=opts))
        await self._auth("UserGrantRole", rpc.AuthUserGrantRoleRequest(user="root", role="root"))
        for user in users:
            await self._auth("UserGrantRole", rpc.AuthUserGrantRoleRequest(user=user, role=member_role))
        await self._auth("AuthEnable", rpc.AuthEnableRequest())

    async def add_member_user(self, user: str, member_role: str) -> bool:
        """As etcd ``root``: let one more member certificate (CN ``user``) write the pool. True if
        the user was created, False if it existed already (it holds ``member_role`` either way)."""
        created = await self._auth(
            "UserAdd",
            rpc.AuthUserAddRequest(name=user, options=rpc.UserAddOptions(no_password=True)),
            unless=_USER_EXISTS,
        )
        await self._auth("UserGrantRole", rpc.AuthUserGrantRoleRequest(user=user, role=member_role))
        return created

    async def remove_member_user(self, user: str) -> bool:
        """As etcd ``root``: the member certificate with CN ``user`` can no longer read or write.
        True if the user was deleted, False if there was none (deleted before, or never added)."""
        return await self._auth("UserDelete", rpc.AuthUserDeleteRequest(name=user), unless=_NO_USER)

    async def _auth(self, method: str, request: Any, unless: str = "") -> bool:
        """Run one auth request; False (not an error) when etcd refuses it with ``unless`` in its
        detail: the state the request asks for holds already."""

        def attempt(ch: grpc.Channel, t: float) -> Any:
            try:
                return getattr(rpc.AuthStub(ch), method)(request, timeout=t, metadata=HASLEADER)
            except grpc.RpcError as e:
                if unless and code_of(e) == grpc.StatusCode.FAILED_PRECONDITION and unless in details_of(e):
                    return None
                raise

        return await self._call(f"auth {method}", attempt) is not None
