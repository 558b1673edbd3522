""":class:`EtcdClient`: one member's connection to the pool's etcd cluster, made of the parts the
sibling modules hold (key-value and transactions, leases and the lock, watches, cluster
administration), all over one :class:`~._connection.Connection` and its retry loop.

Invariant: every request of every part goes through that one retry loop and that one error
translation (:mod:`._errors`), so each keeps the guarantees stated there.
"""

from __future__ import annotations

from hsm_node.pool.etcd._admin import ClusterAdmin
from hsm_node.pool.etcd._leases import Leases
from hsm_node.pool.etcd._watch import Watches

__all__ = ["EtcdClient"]


class EtcdClient(Leases, Watches, ClusterAdmin):
    """One member's connection to the etcd cluster. Use ``async with`` or call :meth:`close`."""
