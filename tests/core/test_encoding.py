"""base64url decoding: exactly one accepted text per value (and at most two '=' after it).

``b64d`` decodes in one strict pass and looks at the last character for stray bits; these tests
hold it to the plain definition (alphabet, length, re-encoding gives the same text), written out
here the slow, obvious way.
"""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sdquorum.encoding import b64d, b64e
from sdquorum.errors import MalformedError

URL_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def reference(text: object) -> bytes | None:
    """The definition: base64url characters, then at most two '=', and the canonical encoding."""
    if not isinstance(text, str):
        return None
    body = text.rstrip("=")
    if len(text) - len(body) > 2 or any(c not in URL_ALPHABET for c in body) or len(body) % 4 == 1:
        return None
    data = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    return data if base64.urlsafe_b64encode(data).rstrip(b"=").decode() == body else None


def decoded(text: object) -> bytes | None:
    try:
        return b64d(text, "field")
    except MalformedError:
        return None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", b""),
        ("QQ", b"A"),
        ("QQ=", b"A"),
        ("QQ==", b"A"),
        ("QUJD", b"ABC"),
        ("-_8", b"\xfb\xff"),
        ("QR", None),  # stray bits in the last character: a second text for b"A"
        ("QUI", b"AB"),
        ("QUJ", None),  # stray bits again (len % 4 == 3)
        ("QQ===", None),  # three '='
        ("Q", None),  # one character over a multiple of four encodes nothing whole
        ("+/8", None),  # the standard alphabet's characters are not base64url
        ("QQ Q", None),
        ("QUJD\n", None),
        ("Q=Q=", None),
        ("é", None),
        ("\ud800", None),
        (b"QQ", None),  # bytes, not text
        (None, None),
    ],
)
def test_cases(text: object, expected: bytes | None) -> None:
    assert reference(text) == expected  # the table states the definition correctly
    assert decoded(text) == expected


@given(st.text(alphabet=URL_ALPHABET + "=+/ \n.é", max_size=24))
@settings(max_examples=3000, deadline=None)
def test_same_verdict_as_the_definition(text: str) -> None:
    assert decoded(text) == reference(text)


@given(st.binary(max_size=64), st.integers(0, 2))
@settings(max_examples=500, deadline=None)
def test_every_value_round_trips(data: bytes, pad: int) -> None:
    text = b64e(data)
    assert b64d(text) == data
    assert b64d(text + "=" * pad) == data


def test_the_error_names_the_field() -> None:
    with pytest.raises(MalformedError, match="slot 3 certificate is not base64url"):
        b64d("Q", "slot 3 certificate")
    with pytest.raises(MalformedError, match="slot 3 certificate is not canonical base64url"):
        b64d("QR", "slot 3 certificate")
    with pytest.raises(MalformedError, match="slot 3 certificate must be a base64url string"):
        b64d(3, "slot 3 certificate")
