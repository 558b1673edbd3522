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


class PendingFile:
    """Reserve ``path`` (created exclusively, 0600) before work whose result must not be lost;
    :meth:`write` fills it; leaving the block without writing removes it."""

    def __init__(self, path: Path, mode: int = 0o600) -> None:
        self.path = path
        self.mode = mode
        self._fd: int | None = None
        self._written = False

    def __enter__(self) -> PendingFile:
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, self.mode)
        except FileExistsError as e:
            raise UsageError(f"{self.path} exists already: move it away or choose another path") from e
        except OSError as e:
            raise UsageError(f"cannot create {self.path}: {e.strerror}") from e
        return self

    def write(self, data: bytes) -> None:
        if self._fd is None:
            raise UsageError("PendingFile.write outside its with-block")
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            os.fsync(self._fd)
        except OSError as e:
            raise UsageError(f"cannot write {self.path}: {e.strerror}") from e
        self._written = True

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if not self._written:
            self.path.unlink(missing_ok=True)


def read_input_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as e:
        raise UsageError(f"{what} {path} does not exist: check the path") from e
    except OSError as e:
        raise UsageError(f"cannot read {what} {path}: {e.strerror}") from e
