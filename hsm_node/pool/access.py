"""A pool member's access to etcd, given and ended with etcd's ``root`` certificate: the etcd half
of ``sdctl pool allow`` and ``sdctl pool remove`` (the node's half, the audited custody decision,
is :meth:`~hsm_node.pool.service.PoolService.allow` / ``remove``).

etcd lets a client certificate in by its CN alone: a member's certificate (CN ``node.<id>``) reads
and writes every row of the pool as long as etcd has a user of that name holding the members' role.
So marking ``members/<id>`` removed stops the honest member and makes the others refuse it, but only
deleting its etcd user stops its certificate writing the pool's rows.

Invariants:

* Only etcd's ``root`` certificate is used here: :func:`require_root` refuses any other (a member's
  certificate, CN ``node.<id>``) before anything is sent, and etcd itself refuses a non-root user
  (PermissionDeniedError), so neither a node certificate nor an admin's transport certificate (another
  CA: no TLS at all) can add or delete a member's etcd user.
* Both steps can be repeated and report what they found: a user that exists already, or is gone
  already, is not an error; a lock whose lease has gone is not an error.
* Ending a member deletes its user first, then revokes the leases of the ceremony locks it holds:
  with the user gone it can take no new lease, and the pool need not wait for the lock's deadline.
"""

from __future__ import annotations

from dataclasses import dataclass

from hsm_node.pool.etcd import EtcdClient, Layout
from hsm_node.pool.rows import lock_holder
from sdquorum import etcd_pki
from sdquorum.errors import PermissionDeniedError, UsageError

__all__ = ["MEMBER_ROLE", "EndedAccess", "end_member_access", "grant_member_access", "require_root"]

MEMBER_ROLE = "sdquorum-member"  # the etcd role that reads and writes /sdquorum/ (docs/runbooks/pool-etcd.md)


@dataclass(frozen=True)
class EndedAccess:
    """What ending a member's etcd access did."""

    user: str
    user_deleted: bool  # False: there was no such user any more
    leases_revoked: int  # ceremony locks it held, freed now


def require_root(cert_pem: bytes, where: str) -> None:
    """PermissionDeniedError unless ``cert_pem`` is an etcd client certificate of the ``root`` user."""
    user = etcd_pki.etcd_user_of(cert_pem)
    if user != etcd_pki.ETCD_ROOT_USER:
        raise PermissionDeniedError(
            f"the etcd certificate {where} is etcd user {user!r}, not root: give etcd's root client "
            "certificate (etcd-root.pem from 'sdctl pki init --etcd-member ...')"
        )


def require_member(cert_pem: bytes, node_id: str, where: str) -> None:
    """UsageError unless ``cert_pem`` is the etcd client certificate of member ``node_id``
    (``node.<node_id>``): a node run with another member's, a shared or root's certificate would
    keep writing the pool after ``sdctl pool remove NODE_ID`` deletes its own user."""
    user = etcd_pki.etcd_user_of(cert_pem)
    if user != etcd_pki.etcd_user(node_id):
        raise UsageError(
            f"the pool's etcd certificate {where} is etcd user {user!r}, not {etcd_pki.etcd_user(node_id)!r} "
            f"of this node ({node_id}): give this node's own pair ('sdctl pki issue --dir pki --etcd-node {node_id}')"
        )


async def grant_member_access(client: EtcdClient, node_id: str) -> bool:
    """As ``root``: create ``node.<node_id>`` holding the members' role. True if it was created,
    False if it existed already (it holds the role either way)."""
    return await client.add_member_user(etcd_pki.etcd_user(node_id), MEMBER_ROLE)


async def end_member_access(client: EtcdClient, node_id: str) -> EndedAccess:
    """As ``root``: delete ``node.<node_id>`` (its certificate then reads and writes nothing), then
    revoke the lease of every ceremony lock it holds in any pool."""
    user = etcd_pki.etcd_user(node_id)
    deleted = await client.remove_member_user(user)
    revoked = 0
    for lease in await client.leases():
        for key in await client.lease_keys(lease):
            if not _is_ceremony_lock(key):
                continue
            kv = await client.get(key)
            held = lock_holder(kv.value) if kv is not None and kv.lease == lease else None
            if held is not None and held[0] == node_id:
                await client.revoke_lease(lease)
                revoked += 1
    return EndedAccess(user, deleted, revoked)


def _is_ceremony_lock(key: bytes) -> bool:
    """Whether ``key`` is some pool's ``lock/ceremony`` (:meth:`Layout.ceremony_lock`)."""
    parts = key.split(b"/")
    if len(parts) != 5:
        return False
    try:
        return Layout(bytes.fromhex(parts[2].decode("ascii"))).ceremony_lock() == key
    except (ValueError, UsageError):
        return False
