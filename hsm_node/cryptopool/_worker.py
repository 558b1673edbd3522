"""The worker process: ``python -P -m hsm_node.cryptopool FD JOBS DONE MAX_BYTES MAX_ITEMS``.

It maps the region the node created, then for each byte on the jobs pipe runs the one job in it
(:func:`_answer_job`) and rings the done pipe. Invariants: it reads nothing but its region and its
pipes (no key store, no network), keeps nothing from one job to the next, checks every count in the
job header against its :class:`~hsm_node.cryptopool._layout.Layout` before reading, and exits when
the node closes the jobs pipe. ``-P`` and ``cwd="/"`` make sure it is the installed code.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import signal

from hsm_node import keyops
from hsm_node.cryptopool._layout import (
    _JOB,
    _KEY_CAPACITY,
    _RESULT,
    _RESULT_AT,
    AAD_PER_ITEM,
    ENCRYPT,
    FAILED,
    OK,
    SIGN,
    USAGE,
    VERIFICATION,
    Layout,
    _from_u32,
    _u32,
)
from hsm_node.cryptopool._memory import _no_core_dumps, reuse_large_buffers
from hsm_node.keyops import KeyType
from sdquorum.errors import UsageError, VerificationError
from sdquorum_rpc.packed import Packed


def _answer_job(region: mmap.mmap, layout: Layout) -> None:
    """Run the job in the region and write its results, or its error, back. Everything it read
    (key, items, results) is a local of this call: gone when it returns."""
    try:
        op, kind_value, aad_mode, key_len, n, data_len, aad_len = _JOB.unpack_from(region, 0)
        if key_len > _KEY_CAPACITY or n > layout.max_items or data_len + aad_len > layout.max_message_bytes:
            raise ValueError("job out of bounds")
        kind = KeyType(kind_value)
        key = region[layout.key_at : layout.key_at + key_len]
        items = Packed(
            region[layout.data_at : layout.data_at + data_len],
            _from_u32(region[layout.lengths_at : layout.lengths_at + 4 * n]),
        )
        at = layout.data_at + data_len
        aad_data = region[at : at + aad_len]
        aad: bytes | Packed = aad_data
        if aad_mode == AAD_PER_ITEM:
            aad = Packed(aad_data, _from_u32(region[layout.aad_lengths_at : layout.aad_lengths_at + 4 * n]))
        if op == ENCRYPT:
            out = keyops.encrypt_batch(kind, key, items, aad)
        elif op == SIGN:
            out = keyops.sign_batch(kind, key, items)
        else:
            raise ValueError("unknown operation")
        if len(out.data) > layout.most_result_bytes or len(out) > layout.max_items:
            raise ValueError("result out of bounds")
        region[layout.result_at : layout.result_at + len(out.data)] = out.data
        at = layout.result_lengths_at
        region[at : at + 4 * len(out)] = _u32(out.lengths)
        _RESULT.pack_into(region, _RESULT_AT, OK, len(out.data), len(out))
    except (UsageError, VerificationError) as e:
        message = str(e).encode()[:4096]
        region[layout.result_at : layout.result_at + len(message)] = message
        status = USAGE if isinstance(e, UsageError) else VERIFICATION
        _RESULT.pack_into(region, _RESULT_AT, status, len(message), 0)
    except Exception as e:  # the node logs that the call failed, naming the cause's type (its log,
        # in the node's format: the worker writes no line of its own)
        name = type(e).__name__.encode()[:200]
        region[layout.result_at : layout.result_at + len(name)] = name
        _RESULT.pack_into(region, _RESULT_AT, FAILED, len(name), 0)


def main(argv: list[str]) -> int:
    fd, jobs, done, max_message_bytes, max_items = (int(a) for a in argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C drains the node, which then ends the workers
    _no_core_dumps()
    reuse_large_buffers()
    layout = Layout(max_message_bytes, max_items)
    region = mmap.mmap(fd, layout.size)
    with contextlib.suppress(BrokenPipeError):
        while os.read(jobs, 1):  # until the node closes the doorbell pipe
            _answer_job(region, layout)
            os.write(done, b"\x01")
    return 0
