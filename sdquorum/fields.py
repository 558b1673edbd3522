"""Validators for fields read from JSON: one definition of "an integer", "a string", "hex", "base64url".

I/O-free. Every reader of a JSON document (envelopes, SD files, proposals, audit logs, offline files,
reviews, Azure files) checks its fields through these functions, so the rules are the same everywhere:

* An integer is an ``int`` that is not a ``bool`` (JSON ``true`` parses to ``True``, which Python
  counts as the integer 1; a check that forgets this accepts ``true`` for x = 1) and lies in the
  stated inclusive bounds. Floats are never integers, even ``1.0``.
* A string is a ``str``, at most ``max_len`` characters when a limit is given.
* Hex is lowercase, exactly two digits per byte of the stated length: one text per value.
* Base64url is decoded by :func:`sdquorum.encoding.b64d` (canonical, padding optional).

Each function names the field in its error (``what``: the caller's words, e.g. ``"SD file: epoch"``)
and raises :class:`~sdquorum.errors.MalformedError` unless the caller passes another error class
(``UsageError`` for values a local caller constructs).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from typing import Any, TypeGuard, TypeVar

from sdquorum.encoding import b64d
from sdquorum.errors import MalformedError, SdquorumError, UsageError

__all__ = [
    "HEX",
    "MAX_INT63",
    "b64_bytes",
    "construct",
    "hex_bytes",
    "integer",
    "is_int",
    "json_array",
    "json_object",
    "members",
    "non_negative",
    "string",
]

HEX = re.compile(r"[0-9a-f]*")
MAX_INT63 = 2**63 - 1
_T = TypeVar("_T")


def is_int(value: object) -> TypeGuard[int]:
    """True for an ``int`` that is not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def integer(
    value: object,
    what: str,
    lo: int,
    hi: int | None,
    *,
    expected: str | None = None,
    error: type[SdquorumError] = MalformedError,
) -> int:
    """``value`` as an integer in ``lo..hi`` (``hi`` None: no upper bound), else ``error``.

    The message is ``"{what} must be {expected}"``; ``expected`` defaults to ``"an integer in lo..hi"``.
    """
    if not is_int(value) or value < lo or (hi is not None and value > hi):
        raise error(f"{what} must be {expected or f'an integer in {lo}..{hi}'}")
    return value


def non_negative(
    value: object, what: str, *, hi: int | None = MAX_INT63, error: type[SdquorumError] = MalformedError
) -> int:
    """``value`` as an integer in ``0..hi``: "{what} must be a non-negative integer"."""
    return integer(value, what, 0, hi, expected="a non-negative integer", error=error)


def string(
    value: object, what: str, *, max_len: int | None = None, error: type[SdquorumError] = MalformedError
) -> str:
    """``value`` as a string of at most ``max_len`` characters (no limit when None)."""
    if max_len is None:
        if not isinstance(value, str):
            raise error(f"{what} must be a string")
    elif not isinstance(value, str) or len(value) > max_len:
        raise error(f"{what} must be a string of at most {max_len} characters")
    return value


def hex_bytes(value: object, what: str, length: int) -> bytes:
    """``value``: exactly ``length`` bytes as lowercase hex."""
    if not isinstance(value, str) or len(value) != 2 * length:
        raise MalformedError(f"{what} must be {length} bytes of hex")
    if not HEX.fullmatch(value):
        raise MalformedError(f"{what} must be lowercase hex")
    return bytes.fromhex(value)


def b64_bytes(value: object, what: str, length: int | None) -> bytes:
    """``value``: base64url of exactly ``length`` bytes (any length when None)."""
    data = b64d(value, what)
    if length is not None and len(data) != length:
        raise MalformedError(f"{what} must be {length} bytes")
    return data


def json_object(value: object, what: str) -> dict[str, Any]:
    """``value`` as a JSON object (a dict)."""
    if not isinstance(value, dict):
        raise MalformedError(f"{what} must be a JSON object")
    return value


def json_array(value: object, what: str) -> list[Any]:
    """``value`` as a JSON array (a list)."""
    if not isinstance(value, list):
        raise MalformedError(f"{what} must be a JSON array")
    return value


def members(obj: object, what: str, required: Collection[str], optional: Collection[str]) -> dict[str, Any]:
    """``obj`` as a JSON object with every ``required`` member and no member outside both sets."""
    fields = json_object(obj, what)
    missing = sorted(set(required) - fields.keys())
    if missing:
        raise MalformedError(f"{what} lacks {', '.join(missing)}")
    unknown = sorted(str(k) for k in fields.keys() - set(required) - set(optional))
    if unknown:
        raise MalformedError(f"{what} has unknown fields: {', '.join(unknown)}")
    return fields


def construct(what: str, make: Callable[[], _T]) -> _T:
    """``make()``, its UsageError (a value out of bounds) turned into MalformedError naming ``what``."""
    try:
        return make()
    except UsageError as e:
        raise MalformedError(f"{what}: {e}") from e
