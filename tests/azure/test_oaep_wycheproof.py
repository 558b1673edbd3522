"""The host-side OAEP decoder against every SHA-256 / MGF1-SHA-256 RSA-OAEP vector of Project Wycheproof.

Each group's private key is loaded from ``privateKeyPkcs8``; the raw private operation (c^d mod n, by
CRT from the key's private numbers) plays the token's ``CKM_RSA_X_509``, and
:func:`sdquorum.oaep.rsa_oaep_decrypt` does the length and range checks and the OAEP decoding.
"valid" must decode to ``msg``, "invalid" must raise ``VerificationError("decryption failed")``,
"acceptable" may do either.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from vectors_path import wycheproof

from sdquorum.errors import VerificationError
from sdquorum.oaep import DECRYPTION_FAILED, rsa_oaep_decrypt

FILES = (
    "rsa_oaep_2048_sha256_mgf1sha256_test.json",
    "rsa_oaep_3072_sha256_mgf1sha256_test.json",
    "rsa_oaep_misc_test.json",
)


def _cases() -> list[Any]:
    cases = []
    for name in FILES:
        data = json.loads(wycheproof(name).read_text())
        for group in data["testGroups"]:
            if (group["sha"], group["mgf"], group["mgfSha"]) != ("SHA-256", "MGF1", "SHA-256"):
                continue
            for t in group["tests"]:
                label = f"{name.removesuffix('_test.json')}-{group['keySize']}-tc{t['tcId']}-{t['result']}"
                cases.append(pytest.param(group["privateKeyPkcs8"], t, id=label))
    return cases


CASES = _cases()


@functools.cache
def _key(pkcs8_hex: str) -> rsa.RSAPrivateKey:
    # The vectors' keys are known-good; OpenSSL's full check of the 8192-bit one alone takes seconds.
    key = serialization.load_der_private_key(
        bytes.fromhex(pkcs8_hex), password=None, unsafe_skip_rsa_key_validation=True
    )
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


def raw_private_op(key: rsa.RSAPrivateKey) -> Callable[[bytes], bytes]:
    """c -> c^d mod n as k bytes, computed with the CRT from the private numbers (as a token would)."""
    numbers = key.private_numbers()
    k = (numbers.public_numbers.n.bit_length() + 7) // 8

    def op(ciphertext: bytes) -> bytes:
        c = int.from_bytes(ciphertext, "big")
        m1 = pow(c, numbers.dmp1, numbers.p)
        m2 = pow(c, numbers.dmq1, numbers.q)
        h = numbers.iqmp * (m1 - m2) % numbers.p
        return (m2 + h * numbers.q).to_bytes(k, "big")

    return op


def test_every_sha256_group_is_selected() -> None:
    """Each file contributes, and all three results appear: a renamed field would not go unnoticed."""
    per_file = Counter(c.id.split("-")[0] for c in CASES)
    assert set(per_file) == {name.removesuffix("_test.json") for name in FILES}
    results = Counter(c.values[1]["result"] for c in CASES)
    assert set(results) == {"valid", "invalid", "acceptable"}


def test_crt_raw_op_is_the_textbook_one() -> None:
    key = _key(CASES[0].values[0])
    numbers = key.private_numbers()
    n, d = numbers.public_numbers.n, numbers.d
    c = 0x1234567890ABCDEF
    k = (n.bit_length() + 7) // 8
    assert raw_private_op(key)(c.to_bytes(k, "big")) == pow(c, d, n).to_bytes(k, "big")


@pytest.mark.parametrize(("pkcs8_hex", "t"), CASES)
def test_wycheproof_vector(pkcs8_hex: str, t: dict[str, Any]) -> None:
    key = _key(pkcs8_hex)
    ct, label, msg = bytes.fromhex(t["ct"]), bytes.fromhex(t["label"]), bytes.fromhex(t["msg"])
    op = raw_private_op(key)
    if t["result"] == "valid":
        assert rsa_oaep_decrypt(ct, key.public_key(), op, label) == msg
    elif t["result"] == "invalid":
        with pytest.raises(VerificationError) as e:
            rsa_oaep_decrypt(ct, key.public_key(), op, label)
        assert type(e.value) is VerificationError and str(e.value) == DECRYPTION_FAILED
    else:
        assert t["result"] == "acceptable"
        try:
            assert rsa_oaep_decrypt(ct, key.public_key(), op, label) == msg
        except VerificationError as e:
            assert str(e) == DECRYPTION_FAILED
