"""Process-wide memory settings of the node and its workers: glibc's large-buffer reuse and no core dumps.

Invariant: each call changes only this process's allocator or limits, and fails soft where the
platform (no glibc, a seccomp filter) refuses it: the process is then as it was, never less safe.
"""

from __future__ import annotations

import contextlib
import ctypes
import resource

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters (malloc.h)


def reuse_large_buffers(mmap_below: int = 32 * 1024 * 1024, keep_free: int = 64 * 1024 * 1024) -> bool:
    """Let glibc's malloc serve the data plane's large buffers (a batch's items and results, a few
    hundred KB each, several per call) from memory it already holds. By default a buffer over
    ~128 KB is mapped fresh from the kernel and unmapped on free, and the heap's free top is handed
    back as soon as it exceeds twice that, so every call paid page faults for every buffer: about
    half the CPU of a 1000-item AES batch. Buffers below ``mmap_below`` now come from the heap, and
    up to ``keep_free`` bytes of freed heap stay mapped. False where there is no glibc (nothing
    changes there)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, mmap_below)) and bool(mallopt(M_TRIM_THRESHOLD, keep_free))


def _no_core_dumps() -> None:
    """A crash must not write key material to disk. The systemd unit (LimitCORE=0) does this for the
    node and so for its workers already; its seccomp filter refuses the call (EPERM), hence the
    suppress: the worker is then exactly as covered as the node itself."""
    with contextlib.suppress(OSError, ValueError):
        if resource.getrlimit(resource.RLIMIT_CORE) != (0, 0):
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
