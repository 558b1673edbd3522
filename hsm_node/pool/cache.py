"""A pool member's cache of the pool's etcd rows, by table (the view keeps it current:
:mod:`hsm_node.pool.view`).

Invariant: a read of one table (``members/``, ``joins/``, ``keys/``) looks at that table's rows
only. The member's loop reads the members and the join requests ten times a second
(:meth:`hsm_node.pool.service.PoolService.run`); with one dict of every row, each such read walked
all of them (17 ms a read at 100,000 key rows: a third of a core per member, on the loop that also
serves the data plane).
"""

from __future__ import annotations

from collections.abc import Iterable

from hsm_node.pool.etcd import KeyValue

__all__ = ["RowCache"]


class RowCache:
    """The pool's rows by table, the first path segment after the pool's prefix (``keys``,
    ``members``, ``joins``, ``audit``, ...): reading one table looks at that table's rows only, so
    a member's loop that reads the members and the join requests ten times a second costs the same
    with 100,000 keys as with none (one dict of every row made each such read walk all of them:
    17 ms a read at 100,000 rows, a third of a core for the loop alone)."""

    def __init__(self, prefix: bytes, kvs: Iterable[KeyValue] = ()) -> None:
        self._skip = len(prefix)
        self._tables: dict[bytes, dict[bytes, KeyValue]] = {}
        for kv in kvs:
            self.put(kv)

    def _table(self, key: bytes) -> bytes:
        return key[self._skip :].split(b"/", 1)[0]

    def get(self, key: bytes) -> KeyValue | None:
        table = self._tables.get(self._table(key))
        return None if table is None else table.get(key)

    def put(self, kv: KeyValue) -> None:
        self._tables.setdefault(self._table(kv.key), {})[kv.key] = kv

    def pop(self, key: bytes) -> None:
        table = self._tables.get(self._table(key))
        if table is not None:
            table.pop(key, None)

    def table(self, name: bytes) -> list[KeyValue]:
        """Every row of one table."""
        return list(self._tables.get(name, {}).values())

    def under(self, prefix: bytes) -> list[KeyValue]:
        """Every row whose key starts with ``prefix`` (which starts with the pool's prefix)."""
        rest = prefix[self._skip :]
        if b"/" in rest:  # within one table
            tables = [self._tables.get(rest.split(b"/", 1)[0], {})]
        else:  # a prefix of table names
            tables = [t for name, t in self._tables.items() if name.startswith(rest)]
        return [kv for t in tables for k, kv in t.items() if k.startswith(prefix)]
