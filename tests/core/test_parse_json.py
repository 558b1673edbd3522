"""Strict JSON: ``parse_json`` gives the verdict and value of its plain definition.

``parse_json`` encodes a parsed value back (to refuse a lone surrogate) only when the text may hold
one: a ``\\u`` escape, or a character outside ASCII in a text given as ``str``. These tests hold it
to the definition written out the slow way: parse with the strict hooks, then encode back always.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sdquorum.encoding import MAX_JSON_DEPTH, canonical_json, parse_json
from sdquorum.errors import MalformedError


def reference(text: str | bytes) -> tuple[bool, Any]:
    """(accepted, value) by the definition: UTF-8, no NaN/Infinity, finite numbers, and a value
    that encodes back as canonical JSON."""

    def refuse(name: str) -> Any:
        raise ValueError(name)

    def finite(t: str) -> float:
        if not math.isfinite(v := float(t)):
            raise ValueError(t)
        return v

    try:
        s = text.decode("utf-8") if isinstance(text, bytes) else text
        value = json.loads(s, parse_constant=refuse, parse_float=finite)
        canonical_json(value)
    except (UnicodeError, ValueError, RecursionError):
        return False, None
    return True, value


def verdict(text: str | bytes) -> tuple[bool, Any]:
    try:
        return True, parse_json(text, "test")
    except MalformedError:
        return False, None


CASES = [
    (b'{"a":"\\ud800"}', False),  # a lone surrogate by escape
    ('{"a":"\ud800"}', False),  # a lone surrogate as a character of a str
    (b'{"a":"\\ud83d\\ude00"}', True),  # a pair: one character
    (b'{"a":"\\u00e9"}', True),
    ('{"a":"\u00e9"}', True),
    (b'{"a":"\\\\ud800"}', True),  # an escaped backslash, then the letters "ud800"
    (b"[NaN]", False),
    (b"[1e999]", False),
    ("\ufeff{}".encode(), False),  # a UTF-8 byte-order mark
    (b'{"a":"\xff"}', False),  # not UTF-8
    (b'{"sig":"AAAA","x":1}', True),
]


@pytest.mark.parametrize(("text", "accepted"), CASES)
def test_cases(text: str | bytes, accepted: bool) -> None:
    assert verdict(text)[0] is accepted
    assert verdict(text) == reference(text)


_pieces = st.sampled_from(
    ['"', "\\", "u", "d800", "dc00", "\\ud83d", "\\ude00", "\\u00e9", "é", "\ud800", "NaN", "1e999", "1.5"]
)
_json_ish = st.lists(st.one_of(_pieces, st.text(max_size=4)), max_size=8).map("".join)


@settings(max_examples=400, deadline=None)
@given(_json_ish, st.booleans())
def test_same_verdict_as_the_definition(inner: str, as_bytes: bool) -> None:
    for text in (f'{{"k":"{inner}"}}', f"[{inner}]", inner):
        if as_bytes:
            try:
                data: str | bytes = text.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate has no UTF-8 bytes
                continue
        else:
            data = text
        assert verdict(data) == reference(data), repr(data)


@pytest.mark.parametrize("opening", ["[", '{"a":'])
def test_nesting_deeper_than_the_limit_is_refused_however_deep(opening: str) -> None:
    """Deep nesting that Python's decoder still accepts (it stops near 1,000 levels) would reach a
    recursive walk later, deeper in a stack, and fail there with RecursionError: an internal error
    instead of a refusal. Refused here, at the limit and at any depth beyond it."""
    closing = "]" if opening == "[" else "}"

    def nested(levels: int) -> str:
        return opening * levels + "1" + closing * levels

    assert parse_json(nested(MAX_JSON_DEPTH), "test") is not None
    for levels in (MAX_JSON_DEPTH + 1, 500, 900):
        with pytest.raises(MalformedError, match="nests deeper"):
            parse_json(nested(levels), "test")
        with pytest.raises(MalformedError, match="nests deeper"):
            parse_json(nested(levels).encode(), "test")
    with pytest.raises(MalformedError):  # beyond the decoder's own limit: not valid JSON at all
        parse_json(nested(100_000), "test")


def test_many_shallow_brackets_are_not_depth() -> None:
    wide = "[" + ",".join(["[[1]]"] * 1000) + "]"
    assert len(parse_json(wide, "test")) == 1000
