"""A pool's staged restore: the whole key set replaced at once whatever its size (ADR 0013, "A
restore of any size"), over the generations of :mod:`hsm_node.pool.keyset`.

Invariants:

* A restore (:meth:`StagedRestore.run`): (1) removes garbage (:meth:`KeySet.collect_garbage`);
  (2) creates ``restoring/<gen>`` (a fresh random id) under a lease of ``ttl`` seconds, kept alive
  while it stages; (3) writes the rows under ``keys/<gen>/`` in transactions that respect both of
  etcd's limits (``max_txn_ops`` operations, ``max_request_bytes`` bytes, measured row by row), a
  few in flight, each conditioned on the marker and creating a fence row of its own under the
  lease (a transaction sent again after its first attempt applied changes nothing: its rows stay
  at the version 1 their tags are for); (4) flips: one transaction puts ``keyset = <gen>``
  and deletes the marker, conditioned on the pointer's revision read in (1) and on the marker's.
  **The flip is the restore's linearization point**: before it every member serves the old set,
  complete; after it the new one, complete (the watch delivers the staged rows before the flip's
  revision). Two restores at once: one flip applies, the other's condition fails (StateError) and
  its staged rows are removed. (5) It removes the old generation with ranged deletes of at most
  :data:`~hsm_node.pool.keyset.DELETE_CHUNK` keys each (one watch message each).
* A restore that fails before its flip first revokes its lease: the marker goes with it, so its
  flip can never apply later (one still in an etcd leader's log fails its marker condition); it
  then re-reads the pointer (its flip may have applied before the error) and removes its rows.
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
import json
import logging
import secrets
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from hsm_node.pool.etcd import Delete, Lease, Put, Unchanged
from hsm_node.pool.etcd._keyvalue import REQUEST_ENVELOPE
from hsm_node.pool.integrity import untagged
from hsm_node.pool.keyset import KeySet
from sdquorum.errors import OutcomeUnknownError, SdquorumError, StateError, TransportError, UsageError

__all__ = ["StagedRestore"]

log = logging.getLogger("hsm_node.pool.store")

IN_FLIGHT = 4  # staging transactions in flight at once
PUT_OVERHEAD = 16  # protobuf framing of one put in a transaction (tags and lengths), at most
COMPARE_OVERHEAD = 24  # the same for the one condition (the marker) each staging transaction carries
READ_BACK_OVERHEAD = 12  # the same for the read of each put's key a conditional commit carries


class StagedRestore:
    """One restore of a pool's key set (module docstring)."""

    def __init__(self, keys: KeySet) -> None:
        self._keys = keys
        self._v = keys.view

    def chunks(self, gen: str, rows: Sequence[tuple[str, bytes]]) -> list[list[Put]]:
        """``rows`` (name, encoded row) as puts under ``gen``, in transactions within etcd's limits."""
        config = self._v.client.config
        fence = len(self._fence(gen, 1 << 20))  # its put, its condition and its read back
        budget = (
            config.max_request_bytes
            - REQUEST_ENVELOPE
            - len(self._v.sub("restoring", gen))
            - COMPARE_OVERHEAD
            - (3 * fence + PUT_OVERHEAD + COMPARE_OVERHEAD + READ_BACK_OVERHEAD + 1)
        )
        out: list[list[Put]] = []
        chunk: list[Put] = []
        size = 0
        for name, value in rows:
            where = self._keys.key(gen, name)
            put = Put(
                where, self._v.guard.mac.seal(where, 1, value)
            )  # a new generation: every row at version 1
            cost = 2 * len(put.key) + len(put.value) + PUT_OVERHEAD + READ_BACK_OVERHEAD  # put, read back
            if cost > budget:
                raise UsageError(
                    f"key {name!r} is {cost} bytes as a pool row: over etcd's --max-request-bytes "
                    f"({config.max_request_bytes}); raise it on every etcd member and in the pool's settings"
                )
            if chunk and (len(chunk) >= config.max_txn_ops - 3 or size + cost > budget):
                out.append(chunk)
                chunk, size = [], 0
            chunk.append(put)
            size += cost
        if chunk:
            out.append(chunk)
        return out

    def _fence(self, gen: str, i: int) -> bytes:
        """The row a staging transaction creates with its rows (under the restore's lease): sent
        again after its first attempt applied, the transaction finds it and changes nothing."""
        return self._v.sub("staging", gen, str(i))

    def run(self, rows: Sequence[tuple[str, bytes]], on_commit: Callable[[], None] | None) -> None:
        """Replace the whole key set with ``rows`` (name, encoded row), atomically (module
        docstring); a restore that fails changes nothing the members serve.
        OutcomeUnknownError: etcd was lost when the flip would apply (module docstring)."""
        if self._v.transaction() is not None:
            raise UsageError("a restore into a pool cannot be part of a batch: run it on its own")
        self._keys.collect_garbage()
        old, revision, _, _ = self._keys.generations()
        gen = secrets.token_hex(8)
        chunks = self.chunks(gen, rows)
        if on_commit is not None:
            on_commit()  # may refuse (a full disk): nothing is sent
        client = self._v.client
        lease = self._v.run(client.grant_lease(self._keys.ttl))
        call_timeout = self._v.client.config.call_timeout
        budget = call_timeout * (len(chunks) + 4) + self._keys.ttl
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
                _, flipped = self._v.run(client.get_prefix(self._keys.pointer))
            if not self._v.wait_for(flipped):
                log.warning("pool: the watch has not reached the restore's revision %d yet", flipped)
            _, _, gens, _ = self._keys.generations()
            self._keys.delete_generation(old, gens.get(old, []))

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

        async def stage(i: int, chunk: list[Put]) -> None:
            nonlocal refreshed
            fence = self._fence(gen, i)
            ops, conds = [*chunk, Put(fence, b"", lease.id)], [Unchanged(marker, marked), Unchanged(fence, 0)]
            async with slots:
                sent.append(asyncio.ensure_future(client.commit(ops, unless_changed=conds)))
                if await asyncio.shield(sent[-1]) is None:  # a cancel stops the wait, not the commit
                    raise StateError(
                        "the restore's lease ended while it staged its rows: nothing was restored; run it again"
                    )
                if time.monotonic() - refreshed > self._keys.ttl / 3:
                    refreshed = time.monotonic()
                    await client.keep_alive(lease.id)

        try:
            async with asyncio.TaskGroup() as group:  # one failure cancels the rest
                for i, chunk in enumerate(chunks):
                    group.create_task(stage(i, chunk))
        except BaseExceptionGroup as e:  # the first failure, as the callers know it
            await _ended(sent)
            raise e.exceptions[0] from None
        except asyncio.CancelledError:  # the budget ran out, or the caller went: the same wait
            await _ended(sent)
            raise
        # the pointer is a custody row: the flip publishes the next custody head with it
        ops: list[Put | Delete] = [
            Put(self._keys.pointer, self._v.guard.sealed(self._keys.pointer, gen.encode())),
            Delete(marker),
        ]
        conds = [Unchanged(self._keys.pointer, revision), Unchanged(marker, marked)]
        head = None
        if self._v.guard.mac.keyed:
            head, head_revision = self._v.guard.next_head({self._keys.pointer: gen.encode()})
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
            pointer = self._v.run(client.get(self._keys.pointer))
        except SdquorumError as e:
            log.warning(
                "pool: a failed restore could not read the pool's key set (%s): its staged rows go once "
                "its lease ends (%d s) when a member starts or restores",
                e,
                self._keys.ttl,
            )
            return None
        if (
            pointer is not None and untagged(pointer.value) == gen.encode()
        ):  # our flip, unchecked: gen is ours
            return True
        if not fenced:
            return None  # its flip may still be in an etcd leader's log
        with _logged("a failed restore's staged rows (they go at the next start or restore)"):
            self._keys.delete_generation(
                gen, [kv.key for kv in self._v.committed(self._keys.prefix(gen), verify=False)]
            )
        return False

    def _refuse(self, revision: int) -> None:
        now = self._v.run(self._v.client.get(self._keys.pointer))
        if (0 if now is None else now.mod_revision) != revision:
            raise StateError(
                "another restore into this pool finished first: this backup was not restored (the pool "
                "serves the other backup's keys); check them with 'sdctl keys list' and restore again "
                "if this backup is the one to keep"
            )
        raise StateError(
            f"the restore outlived its etcd lease ({self._keys.ttl} s without a keep-alive): nothing was "
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
