"""Packed batches: many byte strings carried as one buffer and a list of their lengths.

The batch calls of the ``Keys`` service (``EncryptBatch``, ``SignBatch``) carry their items this way,
so neither side creates a protobuf message per item: for small items that per-item object work, not
the cryptography, was most of a batch's cost. Item i is ``data[sum(lengths[:i]) :
sum(lengths[:i + 1])]``; the lengths must add up to ``len(data)`` exactly, or the batch is refused
(never truncated, never padded).

:func:`split` is used by both sides: the node on a request (a bad request is the caller's error,
``UsageError``), a client on a response (a bad response is the peer's, ``MalformedError``).
The request builders and result readers below are what :class:`sdquorum_rpc.client.NodeClient`'s
batch methods use; a load generator with its own stubs uses them too.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import accumulate

from sdquorum.errors import MalformedError, SdquorumError, UsageError
from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2 as pb

__all__ = [
    "ciphertexts_of",
    "encrypt_batch_request",
    "pack",
    "sign_batch_request",
    "signatures_of",
    "split",
]


def pack(items: Iterable[bytes]) -> tuple[bytes, list[int]]:
    """(the items back to back, their lengths)."""
    items = list(items)
    return b"".join(items), [len(i) for i in items]


def split(
    data: bytes, lengths: Sequence[int], what: str, error: type[SdquorumError] = UsageError
) -> list[memoryview]:
    """The items of a packed buffer, as views into ``data`` (no copy).

    ``what`` names the fields in the error: ``"plaintext"`` for ``plaintexts`` and
    ``plaintext_lengths``. Raises ``error`` when the lengths do not add up to ``len(data)``.
    """
    ends = list(accumulate(lengths))
    total = ends[-1] if ends else 0
    if total != len(data):
        raise error(
            f"{what}_lengths add up to {total} bytes but {what}s holds {len(data)}: "
            f"give one length per item, in order, summing to the buffer's size"
        )
    view = memoryview(data)
    return [view[start:end] for start, end in zip([0, *ends], ends, strict=False)]


def encrypt_batch_request(
    name: str, plaintexts: Sequence[bytes], aad: bytes | Sequence[bytes] = b""
) -> pb.EncryptBatchRequest:
    """One key for every item; ``aad`` the same for all items (bytes) or one per item (a sequence)."""
    data, lengths = pack(plaintexts)
    if isinstance(aad, bytes | bytearray | memoryview):
        return pb.EncryptBatchRequest(name=name, plaintexts=data, plaintext_lengths=lengths, aad=bytes(aad))
    if len(aad) != len(plaintexts):
        raise UsageError(f"{len(aad)} AADs for {len(plaintexts)} plaintexts: give one per item")
    aads, aad_lengths = pack(aad)
    return pb.EncryptBatchRequest(
        name=name, plaintexts=data, plaintext_lengths=lengths, aads=aads, aad_lengths=aad_lengths
    )


def sign_batch_request(name: str, messages: Sequence[bytes]) -> pb.SignBatchRequest:
    data, lengths = pack(messages)
    return pb.SignBatchRequest(name=name, messages=data, message_lengths=lengths)


def _results(data: bytes, lengths: Sequence[int], what: str, expected: int) -> list[bytes]:
    if len(lengths) != expected:
        raise MalformedError(f"the node answered {len(lengths)} {what}s for {expected} items")
    return [bytes(v) for v in split(data, lengths, what, MalformedError)]


def ciphertexts_of(response: pb.EncryptBatchResponse, expected: int) -> list[bytes]:
    """The ciphertexts, in request order; MalformedError unless there is exactly one per item."""
    return _results(response.ciphertexts, response.ciphertext_lengths, "ciphertext", expected)


def signatures_of(response: pb.SignBatchResponse, expected: int) -> list[bytes]:
    """The signatures, in request order; MalformedError unless there is exactly one per item."""
    return _results(response.signatures, response.signature_lengths, "signature", expected)
