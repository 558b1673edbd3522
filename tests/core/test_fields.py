"""sdquorum.fields: the one definition of a JSON integer, string, hex and base64url field.

Every reader checks its fields through these functions, so a JSON ``true`` (Python's ``True``, an
``int`` subclass) is never taken for the integer 1, and each error names the field.
"""

from __future__ import annotations

import pytest

from sdquorum import fields
from sdquorum.azure import kdf
from sdquorum.encoding import b64e
from sdquorum.errors import MalformedError, UsageError


@pytest.mark.parametrize(
    ("value", "accepted"),
    [
        (0, True),
        (-1, True),
        (2**70, True),
        (True, False),
        (False, False),
        (1.0, False),
        ("1", False),
        (None, False),
    ],
)
def test_is_int_refuses_bools_floats_and_strings(value: object, accepted: bool) -> None:
    assert fields.is_int(value) is accepted


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ("integer", "SD file: slot x must be an integer in 1..255"),
        ("non_negative", "epoch must be a non-negative integer"),
        ("string", "node_id must be a string of at most 1024 characters"),
        ("hex_length", "domain_id must be 16 bytes of hex"),
        ("hex_case", "domain_id must be lowercase hex"),
        ("b64_length", "proof must be 64 bytes"),
        ("object", "SharedKeys must be a JSON object"),
        ("array", "enc_shares must be a JSON array"),
    ],
)
def test_each_validator_names_the_field(call: str, message: str) -> None:
    calls = {
        "integer": lambda: fields.integer(True, "SD file: slot x", 1, 255),
        "non_negative": lambda: fields.non_negative(-1, "epoch"),
        "string": lambda: fields.string("x" * 1025, "node_id", max_len=1024),
        "hex_length": lambda: fields.hex_bytes("ab", "domain_id", 16),
        "hex_case": lambda: fields.hex_bytes("AB" * 16, "domain_id", 16),
        "b64_length": lambda: fields.b64_bytes(b64e(bytes(63)), "proof", 64),
        "object": lambda: fields.json_object([], "SharedKeys"),
        "array": lambda: fields.json_array({}, "enc_shares"),
    }
    with pytest.raises(MalformedError) as e:
        calls[call]()
    assert str(e.value) == message


def test_bounds_are_inclusive_and_the_error_class_is_the_callers() -> None:
    assert fields.integer(255, "x", 1, 255) == 255
    assert fields.integer(-1, "audit field", -1, None, expected="a non-negative integer") == -1
    assert fields.non_negative(2**63 - 1, "t") == 2**63 - 1
    with pytest.raises(MalformedError, match=r"^t must be a non-negative integer$"):
        fields.non_negative(2**63, "t")
    with pytest.raises(UsageError, match=r"^drill x must be a slot number in 1\.\.255$"):
        fields.integer(0, "drill x", 1, 255, expected="a slot number in 1..255", error=UsageError)


def test_members_names_missing_and_unknown_fields() -> None:
    with pytest.raises(MalformedError, match=r"^drill result lacks outcome, x$"):
        fields.members({"time": 1}, "drill result", {"time", "x", "outcome"}, set())
    with pytest.raises(MalformedError, match=r"^drill result has unknown fields: extra$"):
        fields.members({"time": 1, "extra": 0}, "drill result", {"time"}, set())


def test_kdf_length_true_is_not_one_byte() -> None:
    """sp800_108_hmac_sha512 took length=True as 1 and returned one byte (isinstance(True, int))."""
    with pytest.raises(UsageError, match=r"output length must be 1\.\.1024 bytes"):
        kdf.sp800_108_hmac_sha512(bytes(32), b"label", b"context", True)
