"""This pool member's own file, ``<data_dir>/pool-member.json`` (0600, in a 0700 directory): its node
state and its domain secrets sealed under the node sealing key. Written whole and durably
(temporary file, fsync, rename, fsync of the directory); a damaged file is StorageError naming the fix.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sdquorum.errors import StorageError

__all__ = ["MemberFile", "read_local", "write_local"]


def read_local(path: Path) -> dict[str, Any]:
    """This member's own file: its state and its sealed domain secrets."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {"state": None, "domains": {}}
    except OSError as e:
        raise StorageError(f"cannot read {path}: {e.strerror}") from e
    try:
        o = json.loads(text)
        if not isinstance(o, dict) or not isinstance(o.get("domains"), dict):
            raise ValueError("not a pool member file")
    except ValueError as e:
        raise StorageError(f"{path} is damaged ({e}): restore it from this node's backup") from e
    return o


def write_local(path: Path, data: dict[str, Any]) -> dict[str, Any]:
    """Replace the file durably (temporary file, fsync, rename, fsync of the directory)."""
    tmp = path.with_suffix(".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as e:
        raise StorageError(
            f"the pool holds the change but this member could not write {path} ({e.strerror}): "
            "free space on its data volume, then restart it"
        ) from e
    return data


class MemberFile:
    """This member's file, read once and rewritten whole by one writer at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = read_local(path)
        self._lock = threading.Lock()

    def update(self, change: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        """Rewrite the file with ``change(current contents)``."""
        with self._lock:
            self.data = write_local(self.path, change(self.data))
