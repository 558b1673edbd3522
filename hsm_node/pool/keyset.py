"""A pool's key set: key rows under a generation, a pointer naming the current one, so that a
restore (:mod:`hsm_node.pool.restore`) replaces the whole set at once whatever its size (ADR 0013,
"A restore of any size").

Rows (relative to the pool's prefix):

* ``keyset``: the id of the current generation (absent: generation ``0``, a pool never restored);
* ``keys/<generation>/<quoted name>``: the key rows of one generation;
* ``restoring/<generation>``: a restore staging that generation, under an etcd lease;
* ``keys-layout``: the pool's layout (:data:`LAYOUT`: key-set generations, rows under integrity
  tags), written by the first member that starts on a new pool.

Invariants:

* Layout (:meth:`KeySet.open`, at every member's start, before it serves): a ``keys-layout`` row
  other than :data:`LAYOUT` refuses the start. No layout row on a pool that already holds a header
  or key rows at ``keys/<quoted name>`` (no generation) means a pool written by an earlier
  development version (rows without generations or integrity tags): refused too, nothing changed.
  This version never converts such rows: an untagged row is exactly what an attacker holding a
  member's etcd certificate could write, so trusting them once would let them in (ADR 0013,
  "Upgrading a pool"). A new pool gets its layout row from its first member (conditioned on its
  absence, so members starting at once agree).

* A read of keys takes the generation the pointer names and its rows in one cache snapshot
  (:meth:`EtcdView.snapshot`; the watch applies each revision whole): a member never mixes
  generations and never serves a generation being staged.
* Every key write (create, delete, recover, purge) reads the pointer in its transaction, so it
  applies only if the pointer has not moved since: a write racing a restore either commits in the
  old set before the flip (and the restore rolls it back, as it rolls back everything since the
  backup) or is refused after it (StateError, nothing written).
* Garbage: a generation that is neither current nor marked can never become current (a marker is
  created once, before any row of its generation, and a flip needs it), so any member removes such
  generations when it starts and before each restore. A restore that crashed leaves at most its own
  rows, until its lease ends (``ttl`` seconds) and a member starts or restores.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from hsm_node.pool.etcd import Delete, Put, Unchanged, prefix_end
from hsm_node.pool.view import EtcdView
from sdquorum.errors import SdquorumError, StateError, UsageError

if TYPE_CHECKING:
    from hsm_node.pool.view import _Tx

__all__ = ["DEFAULT_RESTORE_TTL", "DELETE_CHUNK", "INITIAL", "LAYOUT", "KeySet"]

log = logging.getLogger("hsm_node.pool.store")

# the pool layout this code reads and writes: key-set generations, tagged rows ("2"), the
# permissions to join (allowed/) tagged and in the custody head ("3"), tags bound to the row's
# create_revision from version 2 on and the dead sets of key rows' first values ("4")
LAYOUT = b"4"
INITIAL = "0"  # the generation of a pool never restored (no pointer row)
DELETE_CHUNK = 1000  # keys one ranged delete removes at most: one watch message of ~100 KB
DELETE_SHARDS = 100  # dead-set shards one transaction removes (with the head: under etcd's 128 ops)
DEFAULT_RESTORE_TTL = 30  # seconds a restore's lease lives without a keep-alive


class KeySet:
    """The generations of a pool's key rows (module docstring)."""

    def __init__(self, view: EtcdView, *, ttl: int = DEFAULT_RESTORE_TTL) -> None:
        if ttl < 2:
            raise UsageError("a restore's lease needs at least 2 seconds")
        self._v = self.view = view
        self.ttl = ttl
        self.pointer = view.sub("keyset")
        self._base = view.sub("keys") + b"/"
        self._marks = view.sub("restoring") + b"/"
        self._dead = view.sub("dead") + b"/"
        self.layout = view.sub("keys-layout")

    # ------------------------------------------------------------------ layout and migration

    def open(self) -> None:
        """At a member's start, before it serves: check the pool's layout (module docstring);
        StateError (the member must not start) if this version cannot serve the pool as it is."""
        with self._v.snapshot():
            layout = self._v.get(self.layout)
            earlier = self._v.committed(self._v.layout.header(), verify=False) or [
                kv
                for kv in self._v.committed(self._base, verify=False)
                if b"/" not in kv.key[len(self._base) :]
            ]
        if layout is not None and layout != LAYOUT:
            raise StateError(
                f"this pool is in layout {layout.decode(errors='replace')!r}, this member reads "
                f"{LAYOUT.decode()!r}: run every member of the pool at the pool's sdquorum version"
            )
        if layout is None and earlier:
            raise StateError(
                "this pool was written by an earlier sdquorum version (no keys-layout row: rows without "
                "key-set generations or integrity tags), which this member neither reads nor converts; "
                "nothing was changed. Keep the pool on its version, or move its keys to a new pool "
                "through a backup (docs/runbooks/pool.md, 'Upgrade the pool's members')"
            )
        if layout is None:  # a new pool: the first member to start writes it (the others find it)
            written = self._v.run(
                self._v.client.commit([Put(self.layout, LAYOUT)], unless_changed=[Unchanged(self.layout, 0)])
            )
            if written is None:  # another member wrote it first: it must be this layout too
                found = self._v.run(self._v.client.get(self.layout))
                if found is None or found.value != LAYOUT:
                    raise StateError(
                        "this pool's layout was written by a member of another sdquorum version while this "
                        "one started: run every member of the pool at the pool's sdquorum version"
                    )

    # ------------------------------------------------------------------ reading and writing keys

    def prefix(self, gen: str) -> bytes:
        return self._v.sub("keys", gen) + b"/"

    def key(self, gen: str, name: str) -> bytes:
        return self._v.sub("keys", gen, name)

    def current(self) -> str:
        """The generation served now (inside :meth:`EtcdView.snapshot` with the reads it guides)."""
        v = self._v.get(self.pointer)
        return INITIAL if v is None else v.decode()

    def current_for_write(self, tx: _Tx) -> str:
        """The generation a write goes to; the write applies only if it is still the current one."""
        v = self._v.read_for_write(tx, self.pointer)
        return INITIAL if v is None else v.decode()

    # ------------------------------------------------------------------ garbage

    def generations(self) -> tuple[str, int, dict[str, list[bytes]], set[str]]:
        """The current generation, the pointer's revision, every generation's keys, the markers."""
        with self._v.snapshot():
            ptr = next((kv for kv in self._v.committed(self.pointer) if kv.key == self.pointer), None)
            keys = [kv.key for kv in self._v.committed(self._base, verify=False)]
            dead = [kv.key for kv in self._v.committed(self._dead, verify=False)]
            marked = {
                kv.key[len(self._marks) :].decode() for kv in self._v.committed(self._marks, verify=False)
            }
        gens: dict[str, list[bytes]] = {}
        for k in dead:  # a generation whose dead set outlived its rows (its removal was refused)
            gens.setdefault(k[len(self._dead) :].partition(b"/")[0].decode(), [])
        for k in keys:
            gen, slash, _ = k[len(self._base) :].partition(b"/")
            if slash:  # a generation's row (anything else under keys/ is no generation's: left alone)
                gens.setdefault(gen.decode(), []).append(k)
        current = INITIAL if ptr is None else ptr.value.decode()
        return current, (0 if ptr is None else ptr.mod_revision), gens, marked

    def collect_garbage(self) -> int:
        """Remove every generation neither current nor being staged; the number of rows removed."""
        current, _, gens, marked = self.generations()
        removed = 0
        for gen, keys in gens.items():
            if gen != current and gen not in marked:
                self.delete_generation(gen, keys)
                removed += len(keys)
        if removed:
            log.info("pool: removed %d key rows of dead key-set generations", removed)
        return removed

    def delete_generation(self, gen: str, keys: Sequence[bytes]) -> None:
        """Ranged deletes of at most DELETE_CHUNK known keys each; the first starts at the
        generation's prefix and the last ends at its end, so rows not yet in this member's cache go
        too."""
        prefix = self.prefix(gen)
        bounds = [prefix, *keys[DELETE_CHUNK::DELETE_CHUNK], prefix_end(prefix)]
        client = self._v.client
        for start, end in itertools.pairwise(bounds):
            self._v.run(client.commit([Delete(start, end)]))
        if self._v.guard.mac.keyed:  # its dead set: custody rows, so removed with the next head
            shards = [kv.key for kv in self._v.committed(self._v.sub("dead", gen) + b"/", verify=False)]
            step = min(DELETE_SHARDS, self._v.client.config.max_txn_ops - 2)  # and the head's put, condition
            try:
                for i in range(0, len(shards), step):
                    with self._v.write() as tx:
                        tx.writes.update(dict.fromkeys(shards[i : i + step], None))
            except SdquorumError as e:  # a conflict, say: best effort, the next start or restore tries again
                log.warning("pool: could not remove the dead set of key-set generation %s: %s", gen, e)
