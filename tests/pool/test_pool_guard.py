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
from hsm_node.pool.etcd import KeyValue
from hsm_node.pool.guard import RowGuard
from hsm_node.pool.integrity import Head, TamperedError, digest
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

    def put(self, key: bytes, value: bytes, version: int = 1) -> None:
        """A row as sdquorum writes it: tagged for ``version``."""
        with self.lock:
            self.revision += 1
            stored = self.guard.mac.seal(key, version, value)
            self.cache.put(KeyValue(key, stored, self.revision, self.revision, version, 0))
            self.guard.changed()

    def delete(self, key: bytes) -> None:
        with self.lock:
            self.revision += 1
            self.cache.pop(key)
            self.guard.changed()

    def publish_head(self, counter: int) -> None:
        """The head over the custody rows in the cache now (as a keyed write puts it)."""
        with self.lock:
            rows = [
                (kv.key, self.guard.mac.open(kv.key, kv.version, kv.value))
                for kv in self.cache.table(b"allowed")
            ]
        self.put(PREFIX + b"head", Head(counter, digest(rows)).to_bytes())

    def allowed(self) -> list[bytes]:
        return [kv.key for kv in self.guard.read_checked(ALLOWED, lambda: self.cache.under(ALLOWED))]


def test_a_permission_put_back_between_the_heads_check_and_the_read_is_never_read() -> None:
    """A removed node's permission, put back with its original bytes (a valid tag: version 1 again)
    just after the head was found verified (memoised) and before the rows are read, is refused; the
    previous code read it as allowed (node-c was sealed the domain if the timing landed)."""
    m = _Member()
    m.put(ALLOWED + b"node-a", b'{"by": "admin"}')
    m.publish_head(1)
    assert m.allowed() == [ALLOWED + b"node-a"]
    m.lock.after_release = lambda: m.put(ALLOWED + b"node-c", b'{"by": "admin"}')  # lands mid-check
    with pytest.raises(TamperedError, match="does not match the custody rows"):
        m.allowed()


def test_a_row_put_and_deleted_again_between_checks_is_read_only_once_verified() -> None:
    """The attacker's row comes and goes within one check: the read goes round again and sees the
    state the head matches, without the row and without a false alarm."""
    m = _Member()
    m.put(ALLOWED + b"node-a", b'{"by": "admin"}')
    m.publish_head(1)

    def comes_and_goes() -> None:
        m.put(ALLOWED + b"node-c", b'{"by": "admin"}')
        m.lock.after_release = lambda: m.delete(ALLOWED + b"node-c")  # gone by the next check

    m.lock.after_release = comes_and_goes
    assert m.allowed() == [ALLOWED + b"node-a"]


def test_a_legitimate_change_during_the_check_is_read_once_its_head_verifies() -> None:
    """An admin's permission written by a member (row and next head, one transaction) that arrives
    mid-check is read once the new head is verified: the guard does not stop on honest changes."""
    m = _Member()
    m.put(ALLOWED + b"node-a", b'{"by": "admin"}')
    m.publish_head(1)

    def allow_b() -> None:
        m.put(ALLOWED + b"node-b", b'{"by": "admin"}')
        m.publish_head(2)

    m.lock.after_release = allow_b
    assert sorted(m.allowed()) == [ALLOWED + b"node-a", ALLOWED + b"node-b"]
    assert m.file["heads"][PREFIX.decode()]["counter"] == 2
