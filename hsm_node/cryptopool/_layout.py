"""Where a job and its answer sit in a worker's shared region, and how the two sides encode them.

The node and its worker map the same ``memfd_create`` region; this module is all either side knows
of its shape. Invariants: every area starts on a page (:class:`Layout`), so a large one can be
handed back to the system whole; a job never exceeds the region (:meth:`Layout.fits` is checked by
the node, and again by the worker before it reads); lengths are native ``uint32`` arrays
(:func:`_u32`); a result header (:data:`_RESULT` at :data:`_RESULT_AT`) carries one of the status
codes below. :func:`_clear` wipes a used area: key and items always, results by releasing pages.
"""

from __future__ import annotations

import mmap
import struct
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

from sdquorum.errors import SdquorumError, UsageError, VerificationError
from sdquorum_rpc.packed import Packed

WIPE_IN_PLACE_BYTES = 1024 * 1024  # used areas larger than this are released, not zeroed
_ZEROS = memoryview(bytes(WIPE_IN_PLACE_BYTES))

ENCRYPT, SIGN = 1, 2
AAD_ONE, AAD_PER_ITEM = 0, 1
OK, USAGE, VERIFICATION, FAILED = 0, 1, 2, 3
_ERRORS: dict[int, type[SdquorumError]] = {USAGE: UsageError, VERIFICATION: VerificationError}
_JOB = struct.Struct("<BBB5xIIII")  # op, key type, AAD mode; key, item, data and AAD byte counts
_RESULT = struct.Struct("<III")  # status, result bytes (or error message bytes), result items
_RESULT_AT = 32
_KEY_CAPACITY = 16 * 1024  # an RSA-3072 PKCS#8 key is ~1.8 KB
_MOST_RESULT_OVERHEAD = 512  # bytes a result item may exceed its input: RSA-3072 gives 384 for any input
_PAGE = mmap.PAGESIZE


def _page_up(n: int) -> int:
    return -(-n // _PAGE) * _PAGE


@dataclass(frozen=True, slots=True)
class Layout:
    """Where each part of a job sits in a worker's region, for messages of at most
    ``max_message_bytes`` and batches of at most ``max_items``. Every area starts on a page, so a
    large one can be handed back to the system whole."""

    max_message_bytes: int
    max_items: int

    key_at = _PAGE  # the first page holds the job and result headers

    @property
    def lengths_at(self) -> int:
        return _page_up(self.key_at + _KEY_CAPACITY)

    @property
    def aad_lengths_at(self) -> int:
        return _page_up(self.lengths_at + 4 * self.max_items)

    @property
    def result_lengths_at(self) -> int:
        return _page_up(self.aad_lengths_at + 4 * self.max_items)

    @property
    def data_at(self) -> int:
        """The items, then the per-item AADs (or the one AAD): both came in one message."""
        return _page_up(self.result_lengths_at + 4 * self.max_items)

    @property
    def result_at(self) -> int:
        return _page_up(self.data_at + self.max_message_bytes)

    @property
    def most_result_bytes(self) -> int:
        return self.max_message_bytes + _MOST_RESULT_OVERHEAD * self.max_items

    @property
    def size(self) -> int:
        return _page_up(self.result_at + self.most_result_bytes)

    def fits(self, key: bytes, items: Packed, aad: bytes | Packed) -> bool:
        return (
            len(key) <= _KEY_CAPACITY
            and len(items) <= self.max_items
            and len(items.data) + _aad_bytes(aad) <= self.max_message_bytes
        )


def _aad_bytes(aad: bytes | Packed) -> int:
    return len(aad.data) if isinstance(aad, Packed) else len(aad)


def _u32(values: Sequence[int]) -> bytes:
    return array("I", values).tobytes()


def _from_u32(data: bytes) -> list[int]:
    a = array("I")
    a.frombytes(data)
    return a.tolist()


def _clear(r: mmap.mmap, at: int, n: int, *, secret: bool) -> None:
    """Hand a large area's pages back (zeroing them); zero a small one only if it is ``secret``."""
    if n > WIPE_IN_PLACE_BYTES:
        try:
            r.madvise(mmap.MADV_REMOVE, at, _page_up(n))
            return
        except (AttributeError, OSError):  # no hole punching here: zero it instead
            pass
    if secret:
        for start in range(at, at + n, WIPE_IN_PLACE_BYTES):
            end = min(start + WIPE_IN_PLACE_BYTES, at + n)
            r[start:end] = _ZEROS[: end - start]
