"""Files the processes write: created exclusively, private ones 0600 from the first byte, fsynced."""

from __future__ import annotations

import os
from pathlib import Path

from sdquorum.errors import UsageError

__all__ = ["read_input_file", "write_private_file"]


def write_private_file(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Create ``path`` exclusively with ``mode`` and write ``data`` durably; never overwrites."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError as e:
        raise UsageError(f"{path} exists already: move it away or choose another path") from e
    except OSError as e:
        raise UsageError(f"cannot create {path}: {e.strerror}") from e
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except OSError as e:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise UsageError(f"cannot write {path}: {e.strerror}; nothing was kept") from e
    os.close(fd)


def read_input_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as e:
        raise UsageError(f"{what} {path} does not exist: check the path") from e
    except OSError as e:
        raise UsageError(f"cannot read {what} {path}: {e.strerror}") from e
