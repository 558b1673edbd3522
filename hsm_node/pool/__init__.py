"""The HSM pool: several hsm-node members sharing one security domain through etcd (issue 16).

Only the etcd client is here so far (:mod:`hsm_node.pool.etcd`); the pool's store implements the
node's storage seam on top of it.
"""

from hsm_node.pool.etcd import (
    MAX_TXN_OPS,
    CompactedError,
    Delete,
    EtcdClient,
    EtcdConfig,
    EventKind,
    KeyValue,
    Layout,
    Lease,
    LockHolder,
    MemberStatus,
    Put,
    Unchanged,
    WatchBatch,
    WatchEvent,
    prefix_end,
)

__all__ = [
    "MAX_TXN_OPS",
    "CompactedError",
    "Delete",
    "EtcdClient",
    "EtcdConfig",
    "EventKind",
    "KeyValue",
    "Layout",
    "Lease",
    "LockHolder",
    "MemberStatus",
    "Put",
    "Unchanged",
    "WatchBatch",
    "WatchEvent",
    "prefix_end",
]
