"""The HSM pool: several hsm-node members sharing one security domain through etcd (issue 16).

:mod:`hsm_node.pool.etcd` is the typed etcd client; :mod:`hsm_node.pool.store` implements the
node's storage seam on top of it (``hsm-node run --pool-etcd ...`` opens it). ``PoolNodeStore`` is
imported from its module, not from here: a node standing alone never loads etcd's stubs.
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
