"""Byte encodings shared by every format: base64url without padding and canonical JSON.

Canonical JSON (sorted keys, no whitespace, UTF-8) is what gets signed; a signed object is always
carried as the exact bytes that were signed, so no verifier ever has to re-canonicalise.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from enum import StrEnum
from typing import Any

from sdquorum.errors import MalformedError

__all__ = ["MAX_JSON_DEPTH", "Word", "b64d", "b64e", "canonical_json", "parse_json", "parse_json_object"]


class Word(StrEnum):
    """An enum of words that appear on the wire and in files: a member is its word everywhere.

    ``str()``, ``format()``, JSON and ``repr()`` all give the word (``repr`` as a quoted string), so
    a message that names a value with ``{kind!r}`` reads the same whether it holds a member or the
    word a peer sent.
    """

    def __repr__(self) -> str:
        return repr(self.value)


_B64URL_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_B64URL_VALUE = {c: i for i, c in enumerate(_B64URL_ALPHABET)}
_URL_TO_STD = bytes.maketrans(b"-_+/", b"+/!!")
_STRAY_BITS = {2: 0x0F, 3: 0x03}  # bits of the last character that encode nothing, by len % 4


def b64e(data: bytes) -> str:
    """Base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64d(text: object, what: str = "value") -> bytes:
    """Decode base64url with or without padding; raise MalformedError naming ``what``.

    Exactly one text per value is accepted (after at most two ``=``): the base64url alphabet
    only, never a length that leaves one character over, and no stray bits in the last character.
    One strict pass in C and a look at the last character, since every header, release and audit
    entry decodes dozens of these.
    """
    if not isinstance(text, str):
        raise MalformedError(f"{what} must be a base64url string")
    body = text.rstrip("=")
    spare = len(body) % 4
    if len(text) - len(body) > 2 or spare == 1:
        raise MalformedError(f"{what} is not base64url")
    try:  # '+' and '/' become '!', which the strict decoder refuses like any other stranger
        std = body.encode("ascii").translate(_URL_TO_STD) + b"=" * (-spare % 4)
        data = binascii.a2b_base64(std, strict_mode=True)
    except (binascii.Error, ValueError) as e:  # ValueError: a character outside ASCII
        raise MalformedError(f"{what} is not base64url") from e
    if spare and _B64URL_VALUE[body[-1]] & _STRAY_BITS[spare]:
        raise MalformedError(f"{what} is not canonical base64url")
    return data


def canonical_json(obj: Any) -> bytes:
    """Deterministic JSON bytes of ``obj``: sorted keys, compact, UTF-8, no NaN."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
        "utf-8"
    )


def parse_json(text: str | bytes, what: str) -> Any:
    """Strict JSON: UTF-8, no NaN/Infinity, no number that overflows to infinity, no lone
    surrogate, at most :data:`MAX_JSON_DEPTH` levels of nesting (everything parsed can be written
    back as canonical JSON, at any stack depth). MalformedError otherwise.

    A lone surrogate reaches the parsed value only through a ``\\u`` escape or, in a text given as
    ``str``, as a character outside ASCII (UTF-8 decoding refuses encoded surrogates): only such a
    text is encoded back to check, so the envelopes, audit entries and headers parsed on every
    answer (base64, hex and ASCII words only) are parsed once, not encoded again."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
            may_hold_surrogates = "\\u" in text
        else:
            may_hold_surrogates = "\\u" in text or not text.isascii()
        obj = _STRICT.decode(text)
        if may_hold_surrogates:
            canonical_json(obj)  # refuses lone surrogates, which would break every later encode
    except (UnicodeError, ValueError, RecursionError) as e:
        raise MalformedError(f"{what} is not valid JSON") from e
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH and _depth(obj) > MAX_JSON_DEPTH:
        raise MalformedError(f"{what} nests deeper than {MAX_JSON_DEPTH} levels")
    return obj


def _depth(obj: Any) -> int:
    """How deep arrays and objects nest in ``obj`` (a scalar: 0), without recursion."""
    deepest, todo = 0, [(obj, 1)]
    while todo:
        value, level = todo.pop()
        items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
        if items is None:
            continue
        deepest = max(deepest, level)
        todo.extend((v, level + 1) for v in items if isinstance(v, dict | list))
    return deepest


def parse_json_object(data: bytes, what: str) -> dict[str, Any]:
    """Parse ``data`` as a JSON object; anything else is a MalformedError naming ``what``."""
    obj = parse_json(data, what)
    if not isinstance(obj, dict):
        raise MalformedError(f"{what} must be a JSON object")
    return obj


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


# one decoder for every parse (json.loads with these hooks would build one per call)
MAX_JSON_DEPTH = 64
"""Deepest nesting of arrays and objects that :func:`parse_json` accepts. Nothing sdquorum writes
nests deeper than a handful of levels; a deeper text is refused before any recursive walk (the
canonical encoder, a validator) could run out of stack on it."""

_STRICT = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)
