"""Shamir secret sharing over GF(257), byte by byte, as Azure Managed HSM security domains use it.

I/O-free: bytes in, bytes out; randomness is an injected ``rng(n) -> n bytes``.

Invariants (format version 2):

* Each secret byte s_i is the constant term of its own polynomial f_i of degree <= m-1 over GF(257),
  whose other m-1 coefficients are drawn uniformly from 0..256 (zero included: restricting them would
  make m-1 shares say something about the secret). Share x holds y_i = f_i(x) for every byte i.
* A share is L little-endian uint16 words, word i = ``(x << 9) | y_i``: x in the top 7 bits, y_i in
  the low 9 bits. Every word of one share carries the same x.
* x = 1..n with 2 <= m <= n <= :data:`MAX_SHARES` (126, the Azure CLI's limit; x must fit 7 bits).
  x = 0 would be the secret itself and is never a share.
* Parsing (:meth:`Share.from_bytes`) refuses, as :class:`MalformedError`: an empty or odd-length
  share, words with different x, x = 0 or x > 126, and y > 256 (9 bits hold up to 511).
* :func:`combine` interpolates at 0 (Lagrange) from the first m shares given, after checking every
  share given: x = 0, x out of range, duplicate x, unequal lengths and y > 256 are
  :class:`VerificationError` naming the x. A result of 256 for some byte cannot come from a byte
  secret: it means a share is corrupt, and is a :class:`VerificationError` too. Nothing here can tell
  *which* share is bad; the EncData MACs after combining are the integrity check.
* ``Share.__repr__`` omits the y values. Arithmetic uses Python integers, which are not constant-time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sdquorum.errors import MalformedError, UsageError, VerificationError
from sdquorum.fields import is_int
from sdquorum.shamir import Rng

__all__ = ["MAX_SHARES", "PRIME", "Share", "combine", "lies_on", "share_at", "split"]

PRIME = 257
MAX_SHARES = 126
"""Largest n: x is 7 bits in a share word, and the Azure CLI refuses more than 126 shares."""
_Y_BITS = 9
_Y_MASK = (1 << _Y_BITS) - 1
_REDRAW_LIMIT = 64


@dataclass(frozen=True)
class Share:
    """Share x of a byte string: ``ys[i]`` is the share of secret byte i, each in 0..256."""

    x: int
    ys: tuple[int, ...] = field(repr=False)

    def to_bytes(self) -> bytes:
        """L little-endian uint16 words ``(x << 9) | y``."""
        _check_share(self, UsageError)
        return b"".join(((self.x << _Y_BITS) | y).to_bytes(2, "little") for y in self.ys)

    @classmethod
    def from_bytes(cls, data: bytes) -> Share:
        if not isinstance(data, bytes) or not data or len(data) % 2:
            raise MalformedError("an Azure share must be a non-empty whole number of 16-bit words")
        words = [int.from_bytes(data[i : i + 2], "little") for i in range(0, len(data), 2)]
        xs = {w >> _Y_BITS for w in words}
        if len(xs) != 1:
            raise MalformedError("an Azure share's words carry different x values")
        share = cls(x=xs.pop(), ys=tuple(w & _Y_MASK for w in words))
        _check_share(share, MalformedError)
        return share


def _check_share(share: Share, error: type[Exception]) -> None:
    x = share.x
    if not is_int(x) or not 1 <= x <= MAX_SHARES:
        raise error(
            f"Azure share index x={x!r} is not allowed: x must be 1..{MAX_SHARES} (x=0 is the secret)"
        )
    if not isinstance(share.ys, tuple) or not share.ys:
        raise error(f"Azure share x={x} holds no values")
    for y in share.ys:
        if not is_int(y) or not 0 <= y < PRIME:
            raise error(f"Azure share x={x} holds a value outside GF(257) (y > 256)")


def _random_element(rng: Rng) -> int:
    """A uniform element of GF(257): two bytes, redrawn only at 65535 (257 * 255 values kept)."""
    for _ in range(_REDRAW_LIMIT):
        raw = rng(2)
        if not isinstance(raw, bytes) or len(raw) != 2:
            raise UsageError("rng must return exactly 2 bytes when asked for 2")
        value = int.from_bytes(raw, "big")
        if value < PRIME * 255:
            return value % PRIME
    raise UsageError("rng keeps returning 0xffff; it is not a random source")


def split(secret: bytes, m: int, n: int, rng: Rng) -> tuple[Share, ...]:
    """Shares x = 1..n of ``secret``, any m of which reconstruct it."""
    if not isinstance(secret, bytes) or not secret:
        raise UsageError("the secret to split must be non-empty bytes")
    for v in (m, n):
        if not is_int(v):
            raise UsageError(f"need integers 2 <= m <= n <= {MAX_SHARES}, got m={m!r}, n={n!r}")
    if not 2 <= m <= n <= MAX_SHARES:
        raise UsageError(f"need 2 <= m <= n <= {MAX_SHARES}, got m={m}, n={n}")
    columns: list[list[int]] = [[] for _ in range(n)]
    for byte in secret:
        coefficients = [byte] + [_random_element(rng) for _ in range(m - 1)]
        for x in range(1, n + 1):
            y = 0
            for c in reversed(coefficients):  # Horner
                y = (y * x + c) % PRIME
            columns[x - 1].append(y)
    return tuple(Share(x=x, ys=tuple(col)) for x, col in zip(range(1, n + 1), columns, strict=True))


def combine(shares: Sequence[Share], m: int) -> bytes:
    """The secret, interpolated at 0 from the first m of ``shares`` (all of them checked first)."""
    if not is_int(m) or not 2 <= m <= MAX_SHARES:
        raise UsageError(f"threshold m must be an integer 2..{MAX_SHARES}, got {m!r}")
    if len(shares) < m:
        raise VerificationError(f"{len(shares)} Azure shares given, {m} needed")
    for s in shares:
        _check_share(s, VerificationError)
    seen: set[int] = set()
    length = len(shares[0].ys)
    for s in shares:
        if s.x in seen:
            raise VerificationError(f"Azure share index x={s.x} appears twice")
        seen.add(s.x)
        if len(s.ys) != length:
            raise VerificationError(f"Azure share x={s.x} has {len(s.ys)} values, another has {length}")
    out = bytearray()
    for value in _interpolate(shares[:m], 0):
        if value > 0xFF:
            raise VerificationError(
                "the Azure shares combine to a value that is not a byte: a share is corrupt"
            )
        out.append(value)
    return bytes(out)


def lies_on(share: Share, shares: Sequence[Share]) -> bool:
    """True iff ``share`` is the evaluation at its x of the polynomials through ``shares`` (m shares
    of distinct x, already checked, e.g. the ones that opened a file): an honest share always is."""
    return len(share.ys) == len(shares[0].ys) and _interpolate(shares, share.x) == share.ys


def share_at(shares: Sequence[Share], x: int) -> Share:
    """The share at ``x`` of the polynomials through ``shares`` (m shares of distinct x, already
    checked): what an honest holder of x has."""
    if not is_int(x) or not 1 <= x <= MAX_SHARES:
        raise UsageError(f"x must be 1..{MAX_SHARES}")
    return Share(x, _interpolate(shares, x))


def _interpolate(used: Sequence[Share], x: int) -> tuple[int, ...]:
    """Each byte's polynomial through ``used`` (distinct x), evaluated at ``x`` (Lagrange)."""
    xs = [s.x for s in used]
    weights = []
    for j, xj in enumerate(xs):
        num, den = 1, 1
        for i, xi in enumerate(xs):
            if i != j:
                num = num * (x - xi) % PRIME
                den = den * (xj - xi) % PRIME
        weights.append(num * pow(den, PRIME - 2, PRIME) % PRIME)
    length = len(used[0].ys)
    return tuple(sum(w * s.ys[i] for w, s in zip(weights, used, strict=True)) % PRIME for i in range(length))
