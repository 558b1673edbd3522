"""Files the processes write: created exclusively, private ones 0600 from the first byte, fsynced.

The long-running processes (``hsm-node run``, ``custodian-agent run``) hold :func:`private_umask`
for their life, so every file and directory they make is 0600/0700 whatever umask they were started
with, and keep their state in
directories checked by :func:`private_dir`: owned by this user (or root) and writable by nobody else.
A directory writable by group or others is refused (another user could have replaced a file in it,
so its content is not trusted); one of ours that is only readable by others (0755, as earlier
versions left it) is tightened to 0700, with a warning, and so are the files we made in it.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

from sdquorum.errors import UsageError

__all__ = [
    "private_dir",
    "private_umask",
    "read_input_file",
    "replace_private_file",
    "tighten_files",
    "write_private_file",
]


def _warn(msg: str, *args: object) -> None:
    """Log a tightened mode; logging is imported here, not by every command line that reads a file."""
    import logging

    logging.getLogger("sdquorum.files").warning(msg, *args)


PRIVATE_UMASK = 0o077


@contextlib.contextmanager
def private_umask() -> Iterator[None]:
    """Inside the block this process makes files 0600 and directories 0700 (at most), whatever
    the umask it was started with (022 makes them 0644/0755). A ``run`` command holds it for the
    process's life; the umask before it comes back at the end (for a caller that runs ``main``
    in its own process, as the tests do)."""
    before = os.umask(PRIVATE_UMASK)
    try:
        yield
    finally:
        os.umask(before)


def private_dir(path: Path, what: str, flag: str, *, ours: bool = True) -> Path:
    """``path``, made 0700 (with any missing parent) if it does not exist, and checked.

    UsageError (one line, naming ``what``, ``flag`` and the command to run) if it is not a
    directory, is owned by another user than this one or root, or is writable by group or others.
    ``ours``: a directory only this process writes to (a data or state directory); if others may
    read it, it is tightened to 0700. Otherwise (the directory holding a key file, which may be
    shared) it is only checked.
    """
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for p in reversed(missing):
        try:
            p.mkdir(mode=0o700)
            os.chmod(p, 0o700)  # mkdir's mode passes through the umask; chmod's does not
        except FileExistsError:
            pass
        except OSError as e:
            raise UsageError(f"cannot create {what} {p} ({flag}): {e.strerror}") from e
    try:
        st = os.stat(path)
    except OSError as e:
        raise UsageError(f"cannot read {what} {path} ({flag}): {e.strerror}") from e
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{what} {path} ({flag}) is not a directory: give a directory")
    me = os.geteuid()
    if st.st_uid not in (me, 0):
        raise UsageError(
            f"{what} {path} ({flag}) belongs to uid {st.st_uid}, not to this user (uid {me}): "
            f"run 'chown {me} {path}' or give a directory of your own"
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022:
        raise UsageError(
            f"{what} {path} ({flag}) is writable by group or others (mode {mode:04o}): check its files, "
            f"then run 'chmod 700 {path}'"
        )
    if ours and mode & 0o077 and st.st_uid == me:
        os.chmod(path, 0o700)
        _warn("%s %s was mode %04o: tightened to 0700", what, path, mode)
    return path


def tighten_files(paths: Iterable[Path]) -> None:
    """Make each existing file of ours 0600 (earlier versions left them 0644 under umask 022)."""
    for p in paths:
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            continue
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISREG(st.st_mode) and mode & 0o077:
            os.chmod(p, 0o600)
            _warn("%s was mode %04o: tightened to 0600", p, mode)


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


def replace_private_file(path: Path, data: bytes) -> None:
    """Put ``data`` at ``path`` whole (written aside 0600, fsynced, renamed over it): a reader
    sees the old content or the new one, and the file is 0600 whatever the umask. OSError on failure."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)  # a leftover of a crash: O_EXCL below makes a new one, 0600
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except OSError:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)


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
