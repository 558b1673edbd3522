"""Integrity of the pool's shared state in etcd: row MACs and the custody head (ADR 0013, "Integrity
of the shared state"). I/O-free: the view's guard (:mod:`hsm_node.pool.guard`) calls it on every
write the view sends and every row it reads from its cache.

Any pool member's etcd certificate may write any row under the pool's prefix, so etcd's own access
control cannot tell a member's store from ``etcdctl`` run with a stolen member certificate. What the
latter lacks is the domain secrets. So:

* **Row MAC.** Every row of a :data:`MACED` table (custody and domain decisions, an admin's
  permissions to join, and every key row)
  is stored as ``value || MAGIC || tag``, tag = HMAC-SHA256 under ``K = HKDF-SHA256(DEK, salt =
  domain id, info = MAC_INFO)`` (never the DEK itself; K never leaves the member's memory) over the
  row's full etcd key (so a row cannot be moved to another name, generation or pool), the row's
  etcd ``version`` after the write (a row's older value put back lands at another version), from
  version 2 on its ``create_revision`` (deleting a row and putting it again, as often as it takes
  to reach an older value's version, makes a new one) and the value. A row of such a table that is
  untagged or whose tag does not verify is never used: :class:`TamperedError`.
* **Dead key rows.** A key row's first value (version 1) cannot be bound to its create_revision
  (etcd assigns it when the write applies), so deleting the row and putting that value back would
  be a valid fresh create: an un-deleted or un-purged key. Every write that moves a key row off
  version 1 (a soft delete, a recovery, a purge) therefore adds that value's tag to the dead set of
  its key-set generation (:data:`DEAD`, sharded by the tag's first byte, in the custody head, so
  no entry can be removed), and a key row at version 1 whose tag is dead is refused.
* **Custody head.** A MAC alone does not stop deleting a row (the compromise flag) or putting back
  a whole older row. The ``head`` row (MAC'd) holds a counter and the SHA-256 over every row of the
  :data:`HEADED` tables (key, value); every write that changes one of them puts the next head in
  the same etcd transaction, conditioned on the head's revision. A member verifies the digest
  against the rows before it uses any of them, and keeps the highest head it verified on its own
  disk: a lower counter, or the same counter with another digest, is a rollback.
* A member that holds no domain (a joiner) has no K: it reads MAC'd rows without checking them
  (the public header, epoch and info; the join protocol's signatures cover what it acts on) and
  writes them untagged and without a head (the node writes none before it holds the domain: the
  data plane and custody need ACTIVATED), so every member that holds the domain refuses them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sdquorum.errors import StateError
from sdquorum.sdfile import DomainSecrets

__all__ = [
    "DEAD",
    "HEADED",
    "KEYS",
    "MACED",
    "Head",
    "RowMac",
    "TamperedError",
    "dead_entries",
    "dead_entry",
    "table_of",
    "untagged",
    "with_dead",
]

MAC_INFO = b"sdquorum pool row mac v1"
MAGIC = b"\x00sdqmac1"  # 8 bytes before the 32-byte tag
TAG_LEN = 32
HEAD = b"head"
# custody and domain decisions, and an admin's permissions to join: MAC'd and in the head's digest
HEADED = frozenset(
    {
        b"header",
        b"epoch",
        b"info",
        b"keyset",
        b"custody",
        b"drills",
        b"retired",
        b"flags",
        b"seen",
        b"allowed",
        b"dead",
    }
)
DEAD = b"dead"  # dead/<generation>/<tag's first byte, 2 hex>: the tags of key rows' superseded first values
KEYS = b"keys"
# MAC'd: the above, the head itself and every key row (too many for the head; bound by version)
MACED = HEADED | {HEAD, KEYS}
ALTERED = "the pool's state in etcd was altered outside sdquorum"


class TamperedError(StateError):
    """A row failed its integrity check: what depends on it is refused (module docstring)."""

    def __init__(self, row: str, why: str) -> None:
        self.row = row
        super().__init__(
            f"pool row {row!r} {why}: {ALTERED}; nothing that depends on it is done. Stop the pool's "
            "custody work, find who holds a member's etcd certificate, and restore the rows (docs/runbooks/pool.md)"
        )


def untagged(stored: bytes) -> bytes:
    """A stored row's value without its tag, unchecked (``stored`` itself if it has none)."""
    if len(stored) >= TAG_LEN + len(MAGIC) and stored[-TAG_LEN - len(MAGIC) : -TAG_LEN] == MAGIC:
        return stored[: -TAG_LEN - len(MAGIC)]
    return stored


ENTRY_LEN = 16  # bytes of a dead tag kept: 2^-128 for a live row's tag to collide with one


def dead_entry(prefix: bytes, key: bytes, stored: bytes) -> tuple[bytes, bytes] | None:
    """For a tagged key row (``keys/<gen>/<name>`` under ``prefix``): the dead-set shard its tag
    goes to and the entry; None for any other row."""
    parts = key[len(prefix) :].split(b"/", 2)
    if len(parts) != 3 or parts[0] != KEYS or untagged(stored) is stored:
        return None
    tag = stored[-TAG_LEN:]
    return prefix + DEAD + b"/" + parts[1] + b"/" + tag[:1].hex().encode(), tag[:ENTRY_LEN]


def dead_entries(shard: bytes | None) -> frozenset[bytes]:
    """The entries of a dead-set shard's value (sorted entries, one after another)."""
    if not shard:
        return frozenset()
    if len(shard) % ENTRY_LEN:
        raise ValueError("a dead-set shard is whole entries")
    return frozenset(shard[i : i + ENTRY_LEN] for i in range(0, len(shard), ENTRY_LEN))


def with_dead(shard: bytes | None, entries: Iterable[bytes]) -> bytes:
    """A dead-set shard's value with ``entries`` added."""
    return b"".join(sorted(dead_entries(shard) | set(entries)))


def table_of(prefix: bytes, key: bytes) -> bytes:
    """The table of a row: the first path segment after the pool's prefix."""
    return key[len(prefix) :].split(b"/", 1)[0]


@dataclass(frozen=True)
class Head:
    counter: int
    digest: bytes

    def to_bytes(self) -> bytes:
        return json.dumps({"counter": self.counter, "digest": self.digest.hex()}, sort_keys=True).encode()

    @staticmethod
    def from_bytes(raw: bytes) -> Head:
        o = json.loads(raw)
        counter = o["counter"]
        if not isinstance(counter, int) or isinstance(counter, bool) or counter < 1:
            raise ValueError("bad counter")
        return Head(counter, bytes.fromhex(o["digest"]))


class RowMac:
    """The pool's row MACs for one pool prefix; keyless until the member holds the domain."""

    def __init__(self, prefix: bytes) -> None:
        self._prefix = prefix
        self._key: bytes | None = None

    @property
    def keyed(self) -> bool:
        return self._key is not None

    def use(self, secrets: DomainSecrets) -> None:
        """Derive K from the domain's DEK (module docstring)."""
        self._key = HKDF(hashes.SHA256(), 32, secrets.domain_id, MAC_INFO).derive(secrets.data_encryption_key)

    def forget(self) -> None:
        self._key = None

    def maced(self, key: bytes) -> bool:
        return table_of(self._prefix, key) in MACED

    def headed(self, key: bytes) -> bool:
        return table_of(self._prefix, key) in HEADED

    def _tag(self, key: bytes, version: int, created: int, value: bytes) -> bytes:
        assert self._key is not None
        bound = version.to_bytes(8, "big") + (created.to_bytes(8, "big") if version > 1 else b"")
        msg = len(key).to_bytes(4, "big") + key + bound + value
        return hmac.new(self._key, msg, hashlib.sha256).digest()

    def seal(self, key: bytes, version: int, value: bytes, created: int = 0) -> bytes:
        """``value`` as stored at ``key`` (at etcd ``version`` after the write; from version 2 on,
        in the row etcd created at revision ``created``)."""
        if not self.maced(key) or self._key is None:
            return value  # keyless: untagged, so every member that holds the domain refuses it
        return value + MAGIC + self._tag(key, version, created, value)

    def open(self, key: bytes, version: int, stored: bytes, created: int = 0) -> bytes:
        """The value of a stored row; TamperedError if its tag is missing or wrong (keyless: unchecked)."""
        if not self.maced(key):
            return stored
        value = untagged(stored)
        tagged = value is not stored
        if self._key is None:
            return value
        if not tagged:
            raise TamperedError(self.row_name(key), "carries no integrity tag")
        if not hmac.compare_digest(stored[-TAG_LEN:], self._tag(key, version, created, value)):
            raise TamperedError(self.row_name(key), "failed its integrity check")
        return value

    def row_name(self, key: bytes) -> str:
        return key[len(self._prefix) :].decode("utf-8", "replace")


def digest(rows: Iterable[tuple[bytes, bytes]]) -> bytes:
    """SHA-256 over (key, value) pairs, sorted by key, each length-prefixed."""
    h = hashlib.sha256(b"sdquorum pool custody head v1\x00")
    for k, v in sorted(rows):
        h.update(len(k).to_bytes(4, "big") + k + len(v).to_bytes(8, "big") + v)
    return h.digest()
