"""The pool's integrity guard over its cache, in process (no etcd): a custody row is never read
from a cache state that the custody head was not verified against, however the watch's changes
interleave with the check (hsm_node/pool/guard.py)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, cast

import pytest

from hsm_node.pool.cache import RowCache
from hsm_node.pool.etcd import Delete, KeyValue
from hsm_node.pool.guard import RowGuard
from hsm_node.pool.integrity import TamperedError
from sdquorum.sdfile import new_domain_secrets

PREFIX = b"/sdquorum/706f6f6c/"
ALLOWED = PREFIX + b"allowed/"


class _Lock:
    """The view's cache lock, with a step run once just after a release: where a watch batch can
    land between two holds of the lock."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.after_release: Callable[[], None] | None = None

    def __enter__(self) -> _Lock:
        self._lock.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()
        step, self.after_release = self.after_release, None
        if step is not None:
            step()


class _Member:
    """A guard over a cache the test changes the way the view's watch does: under the cache lock,
    then the guard told (``changed``)."""

    def __init__(self) -> None:
        self.lock = _Lock()
        self.cache = RowCache(PREFIX)
        self.file: dict[str, Any] = {}
        self.guard = RowGuard(
            PREFIX, cast(threading.RLock, self.lock), lambda: self.cache, self._local, self._update
        )
        self.guard.use_domain(new_domain_secrets(os.urandom))
        self.revision = 0

    def _local(self) -> dict[str, Any]:
        return self.file

    def _update(self, change: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        self.file = change(self.file)

    def store(self, key: bytes, stored: bytes) -> None:
        """``stored`` put at ``key`` as etcd would, seen by the watch (one revision)."""
        with self.lock:
            self.revision += 1
            old = self.cache.get(key)
            created, version = (self.revision, 1) if old is None else (old.create_revision, old.version + 1)
            self.cache.put(KeyValue(key, stored, created, self.revision, version, 0))
            self.guard.changed()

    def write(self, writes: dict[bytes, bytes | None]) -> None:
        """A member's transaction: the guard tags it and adds the dead set and the head; applied
        whole (one revision), as the watch delivers it."""
        ops, _, _ = self.guard.prepare(writes, {})
        with self.lock:
            self.revision += 1
            for op in ops:
                old = self.cache.get(op.key)
                if isinstance(op, Delete):
                    self.cache.pop(op.key)
                elif old is None:
                    self.cache.put(KeyValue(op.key, op.value, self.revision, self.revision, 1, 0))
                else:
                    kv = KeyValue(op.key, op.value, old.create_revision, self.revision, old.version + 1, 0)
                    self.cache.put(kv)
            self.guard.changed()

    def delete(self, key: bytes) -> None:
        with self.lock:
            self.revision += 1
            self.cache.pop(key)
            self.guard.changed()

    def allowed(self) -> list[bytes]:
        return [kv.key for kv in self.guard.read_checked(ALLOWED, lambda: self.cache.under(ALLOWED))]


def test_a_permission_put_back_between_the_heads_check_and_the_read_is_never_read() -> None:
    """A removed node's permission, put back with its original bytes (a valid tag: version 1 again)
    just after the head was found verified (memoised) and before the rows are read, is refused; the
    previous code read it as allowed (node-c was sealed the domain if the timing landed)."""
    m = _Member()
    m.write({ALLOWED + b"node-a": b'{"by": "admin"}'})
    assert m.allowed() == [ALLOWED + b"node-a"]
    replayed = m.guard.mac.seal(ALLOWED + b"node-c", 1, b'{"by": "admin"}')  # its first bytes
    m.lock.after_release = lambda: m.store(ALLOWED + b"node-c", replayed)  # lands mid-check
    with pytest.raises(TamperedError, match="does not match the custody rows"):
        m.allowed()


def test_a_row_put_and_deleted_again_between_checks_is_read_only_once_verified() -> None:
    """The attacker's row comes and goes within one check: the read goes round again and sees the
    state the head matches, without the row and without a false alarm."""
    m = _Member()
    m.write({ALLOWED + b"node-a": b'{"by": "admin"}'})

    def comes_and_goes() -> None:
        m.store(ALLOWED + b"node-c", m.guard.mac.seal(ALLOWED + b"node-c", 1, b'{"by": "admin"}'))
        m.lock.after_release = lambda: m.delete(ALLOWED + b"node-c")  # gone by the next check

    m.lock.after_release = comes_and_goes
    assert m.allowed() == [ALLOWED + b"node-a"]


def test_a_legitimate_change_during_the_check_is_read_once_its_head_verifies() -> None:
    """An admin's permission written by a member (row and next head, one transaction) that arrives
    mid-check is read once the new head is verified: the guard does not stop on honest changes."""
    m = _Member()
    m.write({ALLOWED + b"node-a": b'{"by": "admin"}'})

    def allow_b() -> None:
        m.write({ALLOWED + b"node-b": b'{"by": "admin"}'})

    m.lock.after_release = allow_b
    assert sorted(m.allowed()) == [ALLOWED + b"node-a", ALLOWED + b"node-b"]
    assert m.file["heads"][PREFIX.decode()]["counter"] == 2


KEY = PREFIX + b"keys/0/payroll"


def test_a_read_from_before_a_keys_delete_is_no_alarm_and_its_first_row_put_back_is_refused() -> None:
    """A reader that took a key's first row from the cache before a soft delete buried its tag
    opens it without alarm (the cache has moved on: a read from before the write); the same bytes
    put back after a delete are refused."""
    m = _Member()
    m.write({KEY: b"live"})
    first = m.cache.get(KEY)
    assert first is not None and m.guard.open(first) == b"live"
    m.write({KEY: b"deleted at 500"})  # the soft delete: version 2, the first row's tag buried
    assert m.guard.open(first) == b"live"  # a read from before the delete
    m.delete(KEY)
    m.store(KEY, first.value)
    back = m.cache.get(KEY)
    assert back is not None and back.version == 1
    with pytest.raises(TamperedError, match="earlier row, put back"):
        m.guard.open(back)


def test_a_later_row_of_a_key_put_back_at_its_version_is_refused() -> None:
    m = _Member()
    m.write({KEY: b"live"})
    m.write({KEY: b"deleted at 500"})
    second = m.cache.get(KEY)
    assert second is not None and second.version == 2
    m.delete(KEY)
    m.store(KEY, b"anything")
    m.store(KEY, second.value)  # version 2 again, in a row created later
    with pytest.raises(TamperedError, match="failed its integrity check"):
        m.guard.open(m.cache.get(KEY))  # type: ignore[arg-type]
