"""A256CBC-HS512 against Project Wycheproof's a256cbc_hs512_test.json: valid accepted, invalid refused."""

from __future__ import annotations

import json
from typing import Any

import pytest
from vectors_path import wycheproof

from sdquorum.azure import a256cbc
from sdquorum.errors import MalformedError, VerificationError

FILE = "a256cbc_hs512_test.json"


def _cases() -> list[Any]:
    data = json.loads(wycheproof(FILE).read_text())
    assert data["algorithm"] == "A256CBC-HS512"
    cases = []
    for group in data["testGroups"]:
        for t in group["tests"]:
            cases.append(pytest.param(t, id=f"tc{t['tcId']}-{t['result']}"))
    return cases


CASES = _cases()


def test_the_file_has_both_kinds() -> None:
    results = {c.values[0]["result"] for c in CASES}
    assert results == {"valid", "invalid"}


@pytest.mark.parametrize("t", CASES)
def test_wycheproof_vector(t: dict[str, Any]) -> None:
    key, iv, aad = bytes.fromhex(t["key"]), bytes.fromhex(t["iv"]), bytes.fromhex(t["aad"])
    msg, ct, tag = bytes.fromhex(t["msg"]), bytes.fromhex(t["ct"]), bytes.fromhex(t["tag"])
    if t["result"] == "valid":
        assert a256cbc.decrypt(key, iv, ct, tag, aad) == msg
        assert a256cbc.encrypt(key, iv, msg, aad) == (ct, tag)
    else:
        assert t["result"] == "invalid"
        with pytest.raises((VerificationError, MalformedError)):
            a256cbc.decrypt(key, iv, ct, tag, aad)
