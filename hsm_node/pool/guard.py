"""The view's integrity guard: row MACs and the custody head checked on the view's cache
(:mod:`hsm_node.pool.integrity` states the scheme; :mod:`hsm_node.pool.view` calls this on every
write it sends and every row it reads).

Invariants: a row of a MAC'd table is returned only after its tag verified (keyless: the member
holds no domain and cannot check); custody rows are returned only after the head was checked against
them and against the highest head this member kept, once per change of those rows (memoised on a
stamp the view bumps under its cache lock), and read from the very cache state that check saw; a failure is logged once per row and revision and queued
once for the audit (:class:`~hsm_node.pool.service.PoolService`); a new head is only ever built on a
checked state.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import threading
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

from hsm_node.pool.cache import RowCache
from hsm_node.pool.etcd import Delete, KeyValue, Put, Unchanged
from hsm_node.pool.integrity import (
    HEAD,
    HEADED,
    Head,
    RowMac,
    TamperedError,
    dead_entries,
    dead_entry,
    digest,
    with_dead,
)
from sdquorum.sdfile import DomainSecrets

__all__ = ["RowGuard"]

T = TypeVar("T")

log = logging.getLogger("hsm_node.pool.store")


class RowGuard:
    """Row MACs and the custody head over one view's cache (module docstring)."""

    def __init__(
        self,
        prefix: bytes,
        lock: threading.RLock,
        cache: Callable[[], RowCache],
        local: Callable[[], dict[str, Any]],
        update_local: Callable[[Callable[[dict[str, Any]], dict[str, Any]]], None],
    ) -> None:
        self.prefix = prefix
        self.mac = RowMac(prefix)
        self.head_key = prefix + HEAD
        self._lock = lock  # the view's cache lock
        self._cache = cache
        self._local = local
        self._update_local = update_local
        self._headed_changes = 0  # bumped by every change to a custody row or the head (cache lock)
        self._head_checked = -1  # the value of _headed_changes the head was last verified at
        self._checked_head: Head | None = None
        self._reported: set[tuple[bytes, int]] = set()  # rows already logged as altered
        self._alterations: list[str] = []  # rows found altered, not yet audited (PoolService)
        self._dead: dict[bytes, tuple[KeyValue, frozenset[bytes]]] = {}  # a shard's entries, by cached row
        self._opened: dict[bytes, tuple[KeyValue, bytes]] = {}  # custody rows whose tag was checked

    def prepare(
        self, writes: dict[bytes, bytes | None], read: dict[bytes, int]
    ) -> tuple[list[Put | Delete], list[Unchanged], Head | None]:
        """A transaction's operations and conditions: rows tagged, and the next custody head (put,
        conditioned on the head's revision) if it changes a custody row; and that head."""
        writes, read = dict(writes), dict(read)
        head = None
        if self.mac.keyed:
            self._bury(writes, read)
        if self.mac.keyed and any(self.mac.headed(k) for k in writes):
            head, read[self.head_key] = self.next_head(writes)
            writes[self.head_key] = head.to_bytes()
        ops: list[Put | Delete] = [
            Put(k, self.sealed(k, v)) if v is not None else Delete(k) for k, v in writes.items()
        ]
        return ops, [Unchanged(k, r) for k, r in read.items()], head

    def _bury(self, writes: dict[bytes, bytes | None], read: dict[bytes, int]) -> None:
        """Add to ``writes`` the dead-set shards that take the tags of the key rows ``writes``
        moves off version 1 (updated or deleted), each shard conditioned on its revision."""
        buried: dict[bytes, list[bytes]] = {}
        with self._lock:
            rows = [kv for k in writes if (kv := self._cache().get(k)) is not None and kv.version == 1]
        for kv in rows:
            found = dead_entry(self.prefix, kv.key, kv.value)
            if found is not None:
                buried.setdefault(found[0], []).append(found[1])
        for shard, entries in buried.items():
            current = self.read_checked(shard, self._row(shard))
            writes[shard] = with_dead(None if current is None else self.open(current), entries)
            read.setdefault(shard, 0 if current is None else current.mod_revision)

    def reads_hold(self, read: dict[bytes, int]) -> bool:
        """Whether every row a refused transaction decided on is still as it read it (revision; 0:
        absent): the refusal then came from a row this guard derives (the head, a dead set), which
        :meth:`prepare` builds anew from the cache (a key's first delete elsewhere moved the head)."""
        with self._lock:
            return all((kv.mod_revision if (kv := self._cache().get(k)) else 0) == r for k, r in read.items())

    def _row(self, key: bytes) -> Callable[[], KeyValue | None]:
        return lambda: self._cache().get(key)

    def read_checked(self, key: bytes, read: Callable[[], T]) -> T:
        """``read()`` of the cache (``key`` or rows under it), under the cache lock, once the head
        that covers them, if one does, was verified against exactly the cache ``read`` sees. The
        check and the read are not one hold of the lock (the check may write this member's file),
        so a change the watch brings between them sends it round again: a row put and deleted again
        and again is never read unverified between two checks."""
        covered = self.mac.headed(key)
        while True:
            if covered:
                self.check_head()
            with self._lock:
                if not (covered and self.mac.keyed) or self._head_checked == self._headed_changes:
                    return read()

    def watched(self, key: bytes) -> bool:
        """Whether a change of ``key`` invalidates the checked head."""
        return key == self.head_key or self.mac.headed(key)

    def changed(self) -> None:
        """A custody row or the head changed in the cache (called under the cache lock)."""
        self._headed_changes += 1

    def keep_head(self, head: Head) -> None:
        """Remember ``head`` (this member published or verified it) in this member's file."""
        kept = self._kept_head()
        if kept is None or head.counter > kept.counter:
            self._update_local(lambda now: self.with_head(now, head))

    def with_head(self, local: dict[str, Any], head: Head | None) -> dict[str, Any]:
        """This member's file contents with ``head`` kept (unless it keeps a higher one)."""
        if head is None:
            return local
        o = local.get("heads", {}).get(self.prefix.decode())
        if o is not None and int(o["counter"]) >= head.counter:
            return local
        heads = {
            **local.get("heads", {}),
            self.prefix.decode(): {"counter": head.counter, "digest": head.digest.hex()},
        }
        return {**local, "heads": heads}

    def use_domain(self, secrets: DomainSecrets) -> None:
        """Check and write MAC'd rows with this domain's row key from now on."""
        self.mac.use(secrets)
        with self._lock:
            self._head_checked = -1
            self._opened, self._dead = {}, {}  # checked under another key, if any: never trusted

    def open(self, kv: KeyValue) -> bytes:
        """A cached row's value, its tag checked and stripped (TamperedError, logged once); a key
        row's first value also checked against its generation's dead set."""
        try:
            value = self.mac.open(kv.key, kv.version, kv.value, kv.create_revision)
            if kv.version == 1 and self.mac.keyed:
                self._alive(kv)
            return value
        except TamperedError as e:
            self._report(e, kv.key, kv.mod_revision)
            raise

    def _alive(self, kv: KeyValue) -> None:
        """TamperedError if ``kv`` (a key row's first value) was superseded and put back. Its tag
        found dead while the cache has moved on from ``kv`` is a read from before the write that
        buried it, not an alteration."""
        found = dead_entry(self.prefix, kv.key, kv.value)
        if found is None:
            return
        shard, entry = found
        raw = self.read_checked(shard, self._row(shard))
        if raw is None:
            return
        memo = self._dead.get(shard)
        if memo is None or memo[0] is not raw:  # parsed once per cached row, as _headed_rows opens
            try:
                memo = raw, dead_entries(self.open(raw))
            except ValueError:
                self._tampered(self.mac.row_name(shard), "is not a dead set", raw.mod_revision)
            self._dead[shard] = memo
        if entry in memo[1]:
            with self._lock:
                now = self._cache().get(kv.key)
            if now is not None and now.mod_revision == kv.mod_revision:
                raise TamperedError(
                    self.mac.row_name(kv.key), "is a deleted or changed key's earlier row, put back"
                )

    def _report(self, e: TamperedError, key: bytes, revision: int) -> None:
        if (key, revision) in self._reported:
            return
        self._reported.add((key, revision))
        log.error("pool: %s", e)
        self._alterations.append(e.row)

    def next_alteration(self) -> str | None:
        """The oldest row found altered and not yet audited (:meth:`alteration_audited` after)."""
        return self._alterations[0] if self._alterations else None

    def alteration_audited(self) -> None:
        self._alterations.pop(0)

    def sealed(self, key: bytes, value: bytes) -> bytes:
        """``value`` as a write stores it at ``key`` (tagged for the version the write makes)."""
        with self._lock:
            kv = self._cache().get(key)
        if kv is None:
            return self.mac.seal(key, 1, value)
        return self.mac.seal(key, kv.version + 1, value, kv.create_revision)

    def _headed_rows(self) -> tuple[dict[bytes, bytes], KeyValue | None]:
        """Every custody row opened, and the head row. A row's tag is checked once per cached row
        (the cache makes a new KeyValue for every change): a head check after one change opens one
        row, not every custody row again (each first delete of a key changes the head)."""
        with self._lock:
            kvs = sorted((kv for t in HEADED for kv in self._cache().table(t)), key=lambda kv: kv.key)
            head = self._cache().get(self.head_key)
            opened, self._opened = self._opened, {}
            for kv in kvs:
                known = opened.get(kv.key)
                self._opened[kv.key] = known if known is not None and known[0] is kv else (kv, self.open(kv))
        return {kv.key: self._opened[kv.key][1] for kv in kvs}, head

    def _kept_head(self) -> Head | None:
        o = self._local().get("heads", {}).get(self.prefix.decode())
        return None if o is None else Head(int(o["counter"]), bytes.fromhex(o["digest"]))

    def warm(self) -> None:
        """Check the head now if a change came since it was last checked (TamperedError is left to
        the reads that depend on it): before a reader takes the cache lock, since a check after a
        change writes this member's file. Unlocked: a stale answer only means the reader checks."""
        if self.mac.keyed and self._head_checked != self._headed_changes:
            with contextlib.suppress(TamperedError):
                self.check_head()

    def check_head(self) -> Head | None:
        """The custody head, checked against the custody rows and against the highest head this
        member verified (TamperedError if either fails); None in a pool without custody rows yet or
        on a member without the domain (it cannot check)."""
        if not self.mac.keyed:
            return None
        with self._lock:
            stamp = self._headed_changes
            if self._head_checked == stamp:
                return self._checked_head
            rows, head_kv = self._headed_rows()
        kept = self._kept_head()
        if head_kv is None:
            if rows or kept is not None:
                self._tampered("head", "is missing", 0)
            with self._lock:
                if self._headed_changes == stamp:
                    self._head_checked, self._checked_head = stamp, None
            return None
        try:
            head = Head.from_bytes(self.open(head_kv))
        except ValueError:
            self._tampered("head", "is not a custody head", head_kv.mod_revision)
        if not hmac.compare_digest(head.digest, digest(rows.items())):
            self._tampered(
                "head",
                "does not match the custody rows (one was deleted, added or put back)",
                head_kv.mod_revision,
            )
        if kept is not None and (
            head.counter < kept.counter or (head.counter == kept.counter and head.digest != kept.digest)
        ):
            self._tampered(
                "head",
                f"is at counter {head.counter}, behind the {kept.counter} this member verified (a rollback)",
                head_kv.mod_revision,
            )
        self.keep_head(head)
        with self._lock:
            if self._headed_changes == stamp:
                self._head_checked, self._checked_head = stamp, head
        return head

    def _tampered(self, row: str, why: str, revision: int) -> NoReturn:
        e = TamperedError(row, why)
        self._report(e, self.prefix + row.encode(), revision)
        raise e

    def next_head(self, writes: dict[bytes, bytes | None]) -> tuple[Head, int]:
        """The head a write of ``writes`` (custody rows among them) publishes, and the head's
        revision it is conditioned on. The current state is checked first: a write never builds
        on rows altered outside sdquorum. Only on a member that holds the domain."""
        current = self.check_head()
        with self._lock:
            rows, head_kv = self._headed_rows()
        for k, v in writes.items():
            if self.mac.headed(k):
                if v is None:
                    rows.pop(k, None)
                else:
                    rows[k] = v
        counter = (current.counter if current is not None else 0) + 1
        return Head(counter, digest(rows.items())), (0 if head_kv is None else head_kv.mod_revision)
