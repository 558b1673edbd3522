"""A pool's key set: key rows under a generation, a pointer naming the current one, and the staged
restore that replaces the whole set at once whatever its size (ADR 0013, "A restore of any size").

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
* A restore (:meth:`KeySet.replace`): (1) removes garbage (below); (2) creates
  ``restoring/<gen>`` (a fresh random id) under a lease of ``ttl`` seconds, kept alive while it
  stages; (3) writes the rows under ``keys/<gen>/`` in transactions that respect both of etcd's
  limits (``max_txn_ops`` operations, ``max_request_bytes`` bytes, measured row by row), a few in
  flight; (4) flips: one transaction puts ``keyset = <gen>`` and deletes the marker, conditioned on
  the pointer's revision read in (1) and on the marker's. **The flip is the restore's linearization
  point**: before it every member serves the old set, complete; after it the new one, complete
  (the watch delivers the staged rows before the flip's revision). Two restores at once: one flip
  applies, the other's condition fails (StateError) and its staged rows are removed. (5) It
  removes the old generation with ranged deletes of at most :data:`DELETE_CHUNK` keys each (one
  watch message each).
* A restore that fails before its flip first revokes its lease: the marker goes with it, so its
  flip can never apply later (one still in an etcd leader's log fails its marker condition); it
  then re-reads the pointer (its flip may have applied before the error) and removes its rows.
* Garbage: a generation that is neither current nor marked can never become current (a marker is
  created once, before any row of its generation, and a flip needs it), so any member removes such
  generations when it starts and before each restore. A restore that crashed leaves at most its own
  rows, until its lease ends (``ttl`` seconds) and a member starts or restores.
* Once a restore's flip has applied, what follows (lease, watch, removing the old generation) is
  best effort and never turns the done restore into a failure. A restore whose flip's outcome
  cannot be known (etcd lost at that moment: the lease could not be revoked, the pointer not read)
  raises :class:`OutcomeUnknownError`, never a plain failure, so the caller audits it. Staging
  commits already handed to a thread are awaited before a failed restore removes its rows, whatever
  ended it (a failed commit, its time budget, a cancel); and each staging transaction applies only
  while the marker stands as created, so one the client gave up on that etcd applies later (after
  the lease was revoked and the rows removed) fails its condition: no orphan row lands after the
  removal.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import secrets
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from hsm_node.pool.etcd import Delete, Lease, Put, Unchanged, prefix_end
from hsm_node.pool.etcd._keyvalue import REQUEST_ENVELOPE
from hsm_node.pool.integrity import untagged
from hsm_node.pool.view import EtcdView
from sdquorum.errors import OutcomeUnknownError, SdquorumError, StateError, TransportError, UsageError

if TYPE_CHECKING:
    from hsm_node.pool.view import _Tx

__all__ = ["DEFAULT_RESTORE_TTL", "DELETE_CHUNK", "INITIAL", "LAYOUT", "KeySet"]

log = logging.getLogger("hsm_node.pool.store")

# the pool layout this code reads and writes: key-set generations, tagged rows ("2"), and the
# permissions to join (allowed/) tagged and in the custody head ("3")
LAYOUT = b"3"
INITIAL = "0"  # the generation of a pool never restored (no pointer row)
DELETE_CHUNK = 1000  # keys one ranged delete removes at most: one watch message of ~100 KB
DEFAULT_RESTORE_TTL = 30  # seconds a restore's lease lives without a keep-alive
IN_FLIGHT = 4  # staging transactions in flight at once
PUT_OVERHEAD = 16  # protobuf framing of one put in a transaction (tags and lengths), at most
COMPARE_OVERHEAD = 24  # the same for the one condition (the marker) each staging transaction carries
READ_BACK_OVERHEAD = 12  # the same for the read of each put's key a conditional commit carries


class KeySet:
    """The generations of a pool's key rows (module docstring)."""

    def __init__(self, view: EtcdView, *, ttl: int = DEFAULT_RESTORE_TTL) -> None:
        if ttl < 2:
            raise UsageError("a restore's lease needs at least 2 seconds")
        self._v = view
        self._ttl = ttl
        self.pointer = view.sub("keyset")
        self._base = view.sub("keys") + b"/"
        self._marks = view.sub("restoring") + b"/"
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

    def _generations(self) -> tuple[str, int, dict[str, list[bytes]], set[str]]:
        """The current generation, the pointer's revision, every generation's keys, the markers."""
        with self._v.snapshot():
            ptr = next((kv for kv in self._v.committed(self.pointer) if kv.key == self.pointer), None)
            keys = [kv.key for kv in self._v.committed(self._base, verify=False)]
            marked = {
                kv.key[len(self._marks) :].decode() for kv in self._v.committed(self._marks, verify=False)
            }
        gens: dict[str, list[bytes]] = {}
        for k in keys:
            gen, slash, _ = k[len(self._base) :].partition(b"/")
            if slash:  # a generation's row (anything else under keys/ is no generation's: left alone)
                gens.setdefault(gen.decode(), []).append(k)
        current = INITIAL if ptr is None else ptr.value.decode()
        return current, (0 if ptr is None else ptr.mod_revision), gens, marked

    def collect_garbage(self) -> int:
        """Remove every generation neither current nor being staged; the number of rows removed."""
        current, _, gens, marked = self._generations()
        removed = 0
        for gen, keys in gens.items():
            if gen != current and gen not in marked:
                self._delete_generation(gen, keys)
                removed += len(keys)
        if removed:
            log.info("pool: removed %d key rows of dead key-set generations", removed)
        return removed

    def _delete_generation(self, gen: str, keys: Sequence[bytes]) -> None:
        """Ranged deletes of at most DELETE_CHUNK known keys each; the first starts at the
        generation's prefix and the last ends at its end, so rows not yet in this member's cache go
        too."""
        prefix = self.prefix(gen)
        bounds = [prefix, *keys[DELETE_CHUNK::DELETE_CHUNK], prefix_end(prefix)]
        client = self._v.client
        for start, end in itertools.pairwise(bounds):
            self._v.run(client.commit([Delete(start, end)]))

    # ------------------------------------------------------------------ the staged restore

    def chunks(self, gen: str, rows: Sequence[tuple[str, bytes]]) -> list[list[Put]]:
        """``rows`` (name, encoded row) as puts under ``gen``, in transactions within etcd's limits."""
        config = self._v.client.config
        budget = (
            config.max_request_bytes
            - REQUEST_ENVELOPE
            - len(self._v.sub("restoring", gen))
            - COMPARE_OVERHEAD
        )
        out: list[list[Put]] = []
        chunk: list[Put] = []
        size = 0
        for name, value in rows:
            where = self.key(gen, name)
            put = Put(
                where, self._v.guard.mac.seal(where, 1, value)
            )  # a new generation: every row at version 1
            cost = 2 * len(put.key) + len(put.value) + PUT_OVERHEAD + READ_BACK_OVERHEAD  # put, read back
            if cost > budget:
                raise UsageError(
                    f"key {name!r} is {cost} bytes as a pool row: over etcd's --max-request-bytes "
                    f"({config.max_request_bytes}); raise it on every etcd member and in the pool's settings"
                )
            if chunk and (len(chunk) >= config.max_txn_ops - 1 or size + cost > budget):
                out.append(chunk)
                chunk, size = [], 0
            chunk.append(put)
            size += cost
        if chunk:
            out.append(chunk)
        return out

    def replace(self, rows: Sequence[tuple[str, bytes]], on_commit: Callable[[], None] | None) -> None:
        """Replace the whole key set with ``rows`` (name, encoded row), atomically (module
        docstring); a restore that fails changes nothing the members serve.
        OutcomeUnknownError: etcd was lost when the flip would apply (module docstring)."""
        if self._v.transaction() is not None:
            raise UsageError("a restore into a pool cannot be part of a batch: run it on its own")
        self.collect_garbage()
        old, revision, _, _ = self._generations()
        gen = secrets.token_hex(8)
        chunks = self.chunks(gen, rows)
        if on_commit is not None:
            on_commit()  # may refuse (a full disk): nothing is sent
        client = self._v.client
        lease = self._v.run(client.grant_lease(self._ttl))
        call_timeout = self._v.client.config.call_timeout
        budget = call_timeout * (len(chunks) + 4) + self._ttl
        sent: list[bool] = []  # the flip was sent (it may apply whatever the answer)
        try:
            # the budget runs out inside, then the commits in flight end (each within its call
            # timeout once it runs) before this returns: wait for that too
            flipped = self._v.run(
                _within(budget, self._stage_and_flip(gen, lease, chunks, revision, sent)),
                budget + call_timeout * (len(chunks) + 2),
            )
        except Exception as e:
            settled = self._settle(gen, lease)
            if settled is None and sent:
                raise OutcomeUnknownError(
                    f"etcd was lost while the restore was finishing ({e}): it may or may not have "
                    "taken effect; check with 'sdctl keys list' once etcd is back"
                ) from e
            if not settled:
                raise  # no flip was sent, or it cannot apply: nothing was restored
            flipped = None  # the flip applied before the error reached us
        else:
            if flipped is None:  # the flip was refused: it never applies
                self._settle(gen, lease)
                self._refuse(revision)
        # the flip applied: the restore is done; nothing below may turn it into a failure
        self._after_flip(gen, old, lease, flipped)
        log.info(
            "pool: key set %s replaced %s (%d rows in %d transactions)", gen, old, len(rows), len(chunks)
        )

    def _after_flip(self, gen: str, old: str, lease: Lease, flipped: int | None) -> None:
        """Best effort once the flip applied: free the lease, wait for the watch, remove the old
        generation; an error is logged (what is left over is named), never raised."""
        client = self._v.client
        with _logged("the restore's lease (it ends by itself)"):
            self._v.run(client.revoke_lease(lease.id))
        with _logged(f"the previous key set {old} (it goes at the next start or restore)"):
            if flipped is None:
                _, flipped = self._v.run(client.get_prefix(self.pointer))
            if not self._v.wait_for(flipped):
                log.warning("pool: the watch has not reached the restore's revision %d yet", flipped)
            _, _, gens, _ = self._generations()
            self._delete_generation(old, gens.get(old, []))

    async def _stage_and_flip(
        self,
        gen: str,
        lease: Lease,
        chunks: list[list[Put]],
        revision: int,
        flip_sent: list[bool],
    ) -> int | None:
        client = self._v.client
        marker = self._v.sub("restoring", gen)
        token = json.dumps({"node": self._v.node_id, "nonce": secrets.token_hex(8)}).encode()
        marked = await client.commit([Put(marker, token, lease.id)], unless_changed=[Unchanged(marker, 0)])
        if marked is None:
            raise StateError("a restore's generation id was taken: nothing was restored; run it again")
        slots = asyncio.Semaphore(IN_FLIGHT)
        refreshed = time.monotonic()
        sent: list[asyncio.Task[int | None]] = []  # commits handed over: each runs to its end

        async def stage(chunk: list[Put]) -> None:
            nonlocal refreshed
            async with slots:
                sent.append(
                    asyncio.ensure_future(client.commit(chunk, unless_changed=[Unchanged(marker, marked)]))
                )
                if await asyncio.shield(sent[-1]) is None:  # a cancel stops the wait, not the commit
                    raise StateError(
                        "the restore's lease ended while it staged its rows: nothing was restored; run it again"
                    )
                if time.monotonic() - refreshed > self._ttl / 3:
                    refreshed = time.monotonic()
                    await client.keep_alive(lease.id)

        try:
            async with asyncio.TaskGroup() as group:  # one failure cancels the rest
                for chunk in chunks:
                    group.create_task(stage(chunk))
        except BaseExceptionGroup as e:  # the first failure, as the callers know it
            await _ended(sent)
            raise e.exceptions[0] from None
        except asyncio.CancelledError:  # the budget ran out, or the caller went: the same wait
            await _ended(sent)
            raise
        # the pointer is a custody row: the flip publishes the next custody head with it
        ops: list[Put | Delete] = [
            Put(self.pointer, self._v.guard.sealed(self.pointer, gen.encode())),
            Delete(marker),
        ]
        conds = [Unchanged(self.pointer, revision), Unchanged(marker, marked)]
        head = None
        if self._v.guard.mac.keyed:
            head, head_revision = self._v.guard.next_head({self.pointer: gen.encode()})
            ops.append(
                Put(self._v.guard.head_key, self._v.guard.sealed(self._v.guard.head_key, head.to_bytes()))
            )
            conds.append(Unchanged(self._v.guard.head_key, head_revision))
        flip_sent.append(True)
        flipped = await client.commit(ops, unless_changed=conds)
        if flipped is not None and head is not None:
            self._v.guard.keep_head(head)
        return flipped

    def _settle(self, gen: str, lease: Lease) -> bool | None:
        """After a restore failed or lost: fence its flip (revoke the lease), then True if the flip
        applied all the same, else remove the staged rows and return False; None if that cannot be
        known (the lease could not be revoked, so the flip may still apply, or etcd is out of reach)."""
        client = self._v.client
        fenced = True
        try:
            self._v.run(client.revoke_lease(lease.id))
        except SdquorumError as e:
            log.warning("pool: a failed restore could not revoke its lease: %s", e)
            fenced = False
        try:
            pointer = self._v.run(client.get(self.pointer))
        except SdquorumError as e:
            log.warning(
                "pool: a failed restore could not read the pool's key set (%s): its staged rows go once "
                "its lease ends (%d s) when a member starts or restores",
                e,
                self._ttl,
            )
            return None
        if (
            pointer is not None and untagged(pointer.value) == gen.encode()
        ):  # our flip, unchecked: gen is ours
            return True
        if not fenced:
            return None  # its flip may still be in an etcd leader's log
        with _logged("a failed restore's staged rows (they go at the next start or restore)"):
            self._delete_generation(gen, [kv.key for kv in self._v.committed(self.prefix(gen), verify=False)])
        return False

    def _refuse(self, revision: int) -> None:
        now = self._v.run(self._v.client.get(self.pointer))
        if (0 if now is None else now.mod_revision) != revision:
            raise StateError(
                "another restore into this pool finished first: this backup was not restored (the pool "
                "serves the other backup's keys); check them with 'sdctl keys list' and restore again "
                "if this backup is the one to keep"
            )
        raise StateError(
            f"the restore outlived its etcd lease ({self._ttl} s without a keep-alive): nothing was "
            "restored; check the etcd cluster and run it again"
        )


async def _within(budget: float, restore: Coroutine[Any, Any, int | None]) -> int | None:
    """The staging and flip of a restore within ``budget`` seconds. Whatever ends it early (a
    failed commit, the budget, a cancel), it ends only once every staging commit it sent has
    ended (:func:`_ended`), so that none lands after the caller removed the staged rows."""
    try:
        async with asyncio.timeout(budget):
            return await restore
    except TimeoutError:
        raise TransportError(
            f"the restore did not finish within {budget:g} s: check the etcd cluster "
            "(docs/runbooks/pool.md); nothing was restored unless its flip was sent"
        ) from None


async def _ended(commits: list[asyncio.Task[int | None]]) -> None:
    """Wait until every commit handed over has ended (each within its call timeout), however this
    wait is cancelled: no staged row lands after a failed restore removes them."""
    waiting = asyncio.ensure_future(asyncio.gather(*commits, return_exceptions=True))
    while not waiting.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(waiting)


class _logged:
    """A best-effort step: an SdquorumError is logged (what is left over is named), not raised."""

    def __init__(self, what: str) -> None:
        self._what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, error: BaseException | None, tb: object) -> bool:
        if isinstance(error, SdquorumError):
            log.warning("pool: could not remove %s: %s", self._what, error)
            return True
        return False
