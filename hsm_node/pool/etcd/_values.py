"""The values the etcd client takes and returns: its configuration, rows, watch events and the
operations of a transaction. Plain frozen data, no I/O.

Invariants: an :class:`EtcdConfig` that exists is usable (at least one ``host:port`` endpoint and
``0 < attempt_timeout <= call_timeout``), checked on construction with a message naming the fix;
the client key is never in its ``repr``. A transaction holds at most ``max_txn_ops`` operations
and conditions together and is at most ``max_request_bytes`` long (etcd's ``--max-txn-ops`` and
``--max-request-bytes``, defaults :data:`MAX_TXN_OPS` and :data:`MAX_REQUEST_BYTES`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from sdquorum.errors import UsageError
from sdquorum.etcd_pki import ETCD_CLUSTER_NAME

MAX_TXN_OPS = 128  # etcd's --max-txn-ops default: operations plus conditions in one transaction
MAX_REQUEST_BYTES = 1_572_864  # etcd's --max-request-bytes default (1.5 MiB): one request's size


@dataclass(frozen=True)
class EtcdConfig:
    """How to reach the cluster: endpoints ``host:port``, the etcd CA and this member's client pair."""

    endpoints: tuple[str, ...]
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes = field(repr=False)  # this member's etcd client key: never in a log line
    server_name: str = ETCD_CLUSTER_NAME  # the TLS name every member's certificate carries
    attempt_timeout: float = 1.0  # seconds for one request to one member
    call_timeout: float = 4.0  # seconds for a call across every member before TransportError
    progress_interval: float = 1.0  # a quiet watch asks for a progress notice this often (seconds)
    max_txn_ops: int = MAX_TXN_OPS  # the cluster's --max-txn-ops (the same on every etcd member)
    max_request_bytes: int = MAX_REQUEST_BYTES  # the cluster's --max-request-bytes

    def __post_init__(self) -> None:
        if not self.endpoints:
            raise UsageError("pool.etcd_endpoints is empty: give at least one host:port of the etcd cluster")
        for e in self.endpoints:
            host, sep, port = e.rpartition(":")
            if not sep or not host or not port.isdigit() or "/" in e:
                raise UsageError(f"etcd endpoint {e!r} is not host:port: write it like 10.0.0.5:2379")
        if not 0 < self.attempt_timeout <= self.call_timeout or self.progress_interval <= 0:
            raise UsageError(
                "pool etcd timeouts: need 0 < attempt_timeout <= call_timeout and progress_interval > 0"
            )
        if self.max_txn_ops < 16 or self.max_request_bytes < 64 * 1024:  # a key's first delete: 9
            raise UsageError(
                "pool etcd limits: max_txn_ops is at least 16 and max_request_bytes at least 65536 "
                "(set them to the cluster's --max-txn-ops and --max-request-bytes)"
            )


@dataclass(frozen=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int


class EventKind(Enum):
    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True)
class WatchEvent:
    kind: EventKind
    key: bytes
    value: bytes  # empty for DELETE
    mod_revision: int
    create_revision: int = 0  # as etcd reports them (0 for DELETE)
    version: int = 0


@dataclass(frozen=True)
class WatchBatch:
    """Events of one or more revisions, in order; ``revision`` is the cluster revision they reach.
    An empty batch is a progress notice: nothing changed up to ``revision``."""

    revision: int
    events: tuple[WatchEvent, ...]


@dataclass(frozen=True)
class Put:
    """In :meth:`EtcdClient.commit`: write ``value`` at ``key``."""

    key: bytes
    value: bytes
    lease: int = 0


@dataclass(frozen=True)
class Delete:
    """In :meth:`EtcdClient.commit`: remove ``key``, or with ``range_end`` every key in
    ``[key, range_end)`` (one operation however many keys it removes)."""

    key: bytes
    range_end: bytes = b""


@dataclass(frozen=True)
class Unchanged:
    """In :meth:`EtcdClient.commit`: ``key`` was last modified at ``mod_revision`` (0: absent)."""

    key: bytes
    mod_revision: int


@dataclass(frozen=True)
class MemberStatus:
    member_id: int  # this member's id
    leader: int  # the leader's member id as this member sees it; 0: none
    raft_term: int
    raft_applied_index: int  # how far this member has applied the log
    db_size: int  # bytes of the database file
    db_size_in_use: int  # bytes of it holding data (the rest is free pages)
    version: str


@dataclass(frozen=True)
class Lease:
    id: int
    ttl: int  # seconds granted (etcd may round up to its minimum)


@dataclass(frozen=True)
class LockHolder:
    """Who holds a lock: the token they wrote and the lease it lives under."""

    token: bytes
    lease: int
