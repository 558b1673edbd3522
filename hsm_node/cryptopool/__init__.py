"""Data-plane batches in worker processes, off the thread that runs the node's gRPC server.

Why processes: ``hsm-node`` serves gRPC from one asyncio thread, and that thread does the
transport's own work too (TLS, HTTP/2, copying messages). ``cryptography`` holds the GIL while it
seals a short AES-GCM item, so a batch of 1000 items kept that thread busy for about a millisecond
of each call's 2.5 and no other thread could help. A worker process has a GIL of its own: while it
seals one batch the server goes on receiving, parsing and answering the others (ADR 0008).

What a worker knows: only the job in hand. For each job the node writes the key material (already
opened from the key store, as for an in-process call), the items and their lengths into a shared
memory region of that worker's (``memfd_create``: anonymous memory, no file system name, mapped by
the node and that one worker only), rings the worker's doorbell (one byte on a pipe) and waits for
the answer's byte. The worker runs the very functions an in-process call runs
(:func:`hsm_node.keyops.encrypt_batch`, :func:`~hsm_node.keyops.sign_batch`) and writes the results
back. Once the job has ended the node wipes the key, the items and the results from the region
(the pages of a large job are given back to the system); the worker's own copies end with the job.
A worker never touches the key store, the data encryption key, TLS or a client: it can be told to
do nothing but seal or sign these items with this key.

Failure, all fail closed, none silent:

* A worker that dies (its doorbell pipe closes) fails the job in hand with
  :class:`~sdquorum.errors.TransportError` (UNAVAILABLE to the caller: nothing was returned, retry)
  and is replaced; callers waiting for a worker are woken to start the replacement.
* A job still running past its allowance (:data:`JOB_SECONDS` plus a per-item allowance many times
  the real cost) is a hung or starved worker: it is killed and the call fails with
  :class:`WorkerTimeout` (INTERNAL: retrying would hang again).
* Results that do not match the job (not one per item, lengths that do not add up), or a job the
  worker could not run, fail the call with :class:`WorkerFault` (INTERNAL), never with data.
* A call cancelled while its job runs leaves the worker busy until the job ends, so no later job
  can read its results.
* A worker that exits with an error before finishing its first job, or that cannot be created for
  a reason that will not change (a sandbox refusing ``memfd_create``), turns the pool off: the
  reason is logged once and every batch runs on the server's thread, as with
  ``node.crypto_workers = 0``. A passing failure (no file descriptor free, say) sends only that
  batch there.
* When the node stops, closing the pipes ends the workers (stragglers are killed after 2 s); a
  worker whose node dies sees the same end of file and exits.

Small batches stay on the server's thread (below :data:`MIN_POOLED_ITEMS` items the pipe round trip
costs more than it saves), except RSA batches, which are slow per item.

Where it lives: :mod:`._pool` (the pool and its fallbacks), :mod:`._process` (the node's side of
one worker), :mod:`._worker` (the worker process; ``python -P -m hsm_node.cryptopool`` runs it via
``__main__``), :mod:`._layout` (the shared region's layout and encoding) and :mod:`._memory`
(allocator and core-dump settings of both processes).
"""

from hsm_node.cryptopool._layout import Layout
from hsm_node.cryptopool._memory import reuse_large_buffers
from hsm_node.cryptopool._pool import JOB_SECONDS, MIN_POOLED_ITEMS, CryptoPool, sign_batch_here
from hsm_node.cryptopool._process import WorkerFault, WorkerTimeout

__all__ = [
    "JOB_SECONDS",
    "MIN_POOLED_ITEMS",
    "CryptoPool",
    "Layout",
    "WorkerFault",
    "WorkerTimeout",
    "reuse_large_buffers",
    "sign_batch_here",
]
