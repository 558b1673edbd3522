"""Where each row of a domain lives in etcd: :class:`Layout` builds the keys, :func:`prefix_end`
the end of a prefix range.

Key layout (every key of one pool, and so of its one domain, under one prefix: the hex of the
pool's name, ``pool.name`` in the members' settings)::

    /sdquorum/<pool name hex>/header              the signed SD header (bytes of the SD file header)
    /sdquorum/<pool name hex>/epoch               the current epoch (decimal)
    /sdquorum/<pool name hex>/keys/<name>         one key row, sealed under the domain DEK (the
                                                  pool's store nests rows under a key-set
                                                  generation, keys/<gen>/<name>, and adds
                                                  keyset and restoring/<gen>: hsm_node.pool.keyset)
    /sdquorum/<pool name hex>/custody/<id>        custody records and the compromise flag
    /sdquorum/<pool name hex>/members/<node_id>   a member: attestation certificate and state
    /sdquorum/<pool name hex>/allowed/<node_id>   an admin's permission for a node to join
    /sdquorum/<pool name hex>/audit/<chain>/<seq> audit entries, <seq> zero-padded to 20 digits
    /sdquorum/<pool name hex>/lock/ceremony       the pool-wide ceremony lock (held under a lease)

Invariant: every name is one path segment of 1-128 characters of ``A-Z a-z 0-9 . _ @ -`` starting
with a letter or digit; :class:`Layout` refuses anything else, so no name steps out of its place
(no ``/``, no ``..``, no empty segment) and no pool's keys fall under another's prefix.
"""

from __future__ import annotations

import re

from sdquorum.errors import UsageError

__all__ = ["ROOT", "Layout", "prefix_end"]

_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}")
ROOT = b"/sdquorum/"


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key after every key starting with ``prefix`` (etcd's range_end for a prefix)."""
    b = bytearray(prefix)
    while b:
        if b[-1] < 0xFF:
            b[-1] += 1
            return bytes(b)
        b.pop()
    return b"\x00"  # every key


class Layout:
    """The keys of one pool (see the module docstring). Each name is one path segment."""

    def __init__(self, pool_id: bytes) -> None:
        if not 1 <= len(pool_id) <= 64:
            raise UsageError("a pool id (the pool's name, encoded) is 1 to 64 bytes")
        self.prefix = ROOT + pool_id.hex().encode() + b"/"

    def _under(self, *parts: str) -> bytes:
        for p in parts:
            if not _SEGMENT.fullmatch(p):
                raise UsageError(
                    f"{p!r} cannot be an etcd key segment: use 1-128 characters of A-Z a-z 0-9 . _ @ - "
                    "starting with a letter or digit"
                )
        return self.prefix + "/".join(parts).encode()

    def header(self) -> bytes:
        return self.prefix + b"header"

    def epoch(self) -> bytes:
        return self.prefix + b"epoch"

    def key(self, name: str) -> bytes:
        return self._under("keys", name)

    def keys(self) -> bytes:
        return self.prefix + b"keys/"

    def custody(self, record_id: str) -> bytes:
        return self._under("custody", record_id)

    def member(self, node_id: str) -> bytes:
        return self._under("members", node_id)

    def allowed(self, node_id: str) -> bytes:
        return self._under("allowed", node_id)

    def audit(self, chain: str, seq: int) -> bytes:
        if not 0 <= seq < 10**20:
            raise UsageError(f"audit sequence {seq} is out of range")
        return self._under("audit", chain, f"{seq:020d}")

    def ceremony_lock(self) -> bytes:
        return self.prefix + b"lock/ceremony"
