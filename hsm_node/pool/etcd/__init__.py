"""A thin, typed asyncio client for the pool's etcd cluster (docs/adr/0013-pool-on-etcd.md).

etcd is the pool's only replication: this package adds no consensus of its own. It speaks etcd's v3
gRPC API through the generated stubs that the ``aetcd`` package maintains (``aetcd.rpc``), over
channels of its own, because ``aetcd.Client`` 1.0 opens one plaintext channel to one host: a pool
needs mutual TLS and several endpoints.

This module is the public surface; the parts live in ``_``-prefixed modules, each stating its
invariants: ``_values`` the configuration, rows and transaction operations; ``_layout`` the key
layout of a domain (:class:`Layout`); ``_connection`` the channels and the one retry loop (failover,
deadlines, ``hasleader``); ``_errors`` the translation of etcd's answers; ``_keyvalue`` reads,
writes and transactions; ``_leases`` leases and the ceremony lock; ``_watch`` watches;
``_admin`` status, compaction and authentication set-up; ``_client`` :class:`EtcdClient`, all of
them together.

Invariants (each kept by the module named):

* Every call carries etcd's ``hasleader`` metadata, so a member cut off from its quorum refuses at
  once ("no leader") instead of serving a stale read or queueing a write; each attempt has its own
  deadline (``attempt_timeout``) and the whole call an overall one (``call_timeout``). When no member
  answers within it the call raises :class:`~sdquorum.errors.TransportError` with one line naming
  the endpoints and what to check: never a hang, never a partial answer (``_connection``).
* Reads are linearizable (etcd's default); nothing here uses serializable reads (``_keyvalue``).
* A failed attempt is retried on the next endpoint. Writes stay correct under that retry because
  every conditional write checks, when its condition fails, whether the key already holds exactly
  the bytes it meant to write (sealed rows and lock tokens carry random bytes, so nobody else writes
  the same bytes): a create whose first attempt committed before the connection broke is reported
  won, not lost (``_keyvalue``).
* A watch resumes after a broken stream from the revision after the last one it delivered, on any
  endpoint, so no event is lost or delivered twice; if etcd compacted that revision away it raises
  :class:`CompactedError` and the caller reloads (``_watch``).
* Errors are translated once: unreachable or no quorum -> TransportError; etcd's permission
  denied -> PermissionDeniedError; request too large or out of range -> UsageError; database quota
  exceeded -> StorageError. The etcd detail goes into the message for the local log, never to a
  remote peer (``_errors``).
* A write that ends in TransportError may still be applied later (it can sit in a leader's log when
  the quorum goes): callers re-read before they decide, and the conditional writes above recognise
  their own bytes when they are retried.
"""

from hsm_node.pool.etcd._client import EtcdClient
from hsm_node.pool.etcd._errors import CompactedError
from hsm_node.pool.etcd._layout import Layout, prefix_end
from hsm_node.pool.etcd._values import (
    MAX_TXN_OPS,
    Delete,
    EtcdConfig,
    EventKind,
    KeyValue,
    Lease,
    LockHolder,
    MemberStatus,
    Put,
    Unchanged,
    WatchBatch,
    WatchEvent,
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
