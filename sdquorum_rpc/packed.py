"""Packed batches: many byte strings carried as one buffer and a list of their lengths.

The batch calls of the ``Keys`` service (``EncryptBatch``, ``SignBatch``) carry their items this way,
so neither side creates a protobuf message per item: for small items that per-item object work, not
the cryptography, was most of a batch's cost. Item i is ``data[sum(lengths[:i]) :
sum(lengths[:i + 1])]``; the lengths must add up to ``len(data)`` exactly, or the batch is refused
(never truncated, never padded).

:func:`checked` is used by both sides: the node on a request (a bad request is the caller's error,
``UsageError``), a client on a response (a bad response is the peer's, ``MalformedError``). Code
that runs per item (``hsm_node.keyops``) walks ``data`` and ``lengths`` itself, slicing as it goes:
one loop, no list of items built first. The request builders and result readers below are what
:class:`sdquorum_rpc.client.NodeClient`'s batch methods use; a load generator with its own stubs
uses them too.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sdquorum.errors import MalformedError, SdquorumError, UsageError
from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2 as pb

__all__ = [
    "Packed",
    "checked",
    "ciphertexts_of",
    "encrypt_batch_request",
    "sign_batch_request",
    "signatures_of",
]


@dataclass(frozen=True, slots=True)
class Packed:
    """Items back to back in ``data``, their lengths in order. Build with :meth:`of` or :func:`checked`."""

    data: bytes
    lengths: Sequence[int]

    @classmethod
    def of(cls, items: Iterable[bytes]) -> Packed:
        items = list(items)
        return cls(b"".join(items), [len(i) for i in items])

    def __len__(self) -> int:
        return len(self.lengths)

    def items(self) -> list[bytes]:
        out, start, data = [], 0, self.data
        for n in self.lengths:
            out.append(data[start : start + n])
            start += n
        return out


def checked(
    data: bytes, lengths: Sequence[int], what: str, error: type[SdquorumError] = UsageError
) -> Packed:
    """``data`` and ``lengths`` as a :class:`Packed`, if the lengths add up to ``len(data)`` exactly.

    ``what`` names the fields in the error: ``"plaintext"`` for ``plaintexts`` and
    ``plaintext_lengths``.
    """
    total = sum(lengths)
    if total != len(data):
        raise error(
            f"{what}_lengths add up to {total} bytes but {what}s holds {len(data)}: "
            f"give one length per item, in order, summing to the buffer's size"
        )
    return Packed(data, lengths)


def encrypt_batch_request(
    name: str, plaintexts: Sequence[bytes], aad: bytes | Sequence[bytes] = b""
) -> pb.EncryptBatchRequest:
    """One key for every item; ``aad`` the same for all items (bytes) or one per item (a sequence)."""
    pt = Packed.of(plaintexts)
    if isinstance(aad, bytes | bytearray | memoryview):
        return pb.EncryptBatchRequest(
            name=name, plaintexts=pt.data, plaintext_lengths=pt.lengths, aad=bytes(aad)
        )
    if len(aad) != len(plaintexts):
        raise UsageError(f"{len(aad)} AADs for {len(plaintexts)} plaintexts: give one per item")
    aads = Packed.of(aad)
    return pb.EncryptBatchRequest(
        name=name, plaintexts=pt.data, plaintext_lengths=pt.lengths, aads=aads.data, aad_lengths=aads.lengths
    )


def sign_batch_request(name: str, messages: Sequence[bytes]) -> pb.SignBatchRequest:
    m = Packed.of(messages)
    return pb.SignBatchRequest(name=name, messages=m.data, message_lengths=m.lengths)


def _results(data: bytes, lengths: Sequence[int], what: str, expected: int) -> list[bytes]:
    if len(lengths) != expected:
        raise MalformedError(f"the node answered {len(lengths)} {what}s for {expected} items")
    return checked(data, lengths, what, MalformedError).items()


def ciphertexts_of(response: pb.EncryptBatchResponse, expected: int) -> list[bytes]:
    """The ciphertexts, in request order; MalformedError unless there is exactly one per item."""
    return _results(response.ciphertexts, response.ciphertext_lengths, "ciphertext", expected)


def signatures_of(response: pb.SignBatchResponse, expected: int) -> list[bytes]:
    """The signatures, in request order; MalformedError unless there is exactly one per item."""
    return _results(response.signatures, response.signature_lengths, "signature", expected)
