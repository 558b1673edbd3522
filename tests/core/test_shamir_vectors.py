"""sdquorum.shamir against tests/vectors/shamir_v1.json, and the JSON against its generator."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from sdquorum import shamir
from sdquorum.errors import MalformedError, VerificationError
from sdquorum.shamir import Commitments, SchnorrProof, Share

VECTORS_DIR = Path(__file__).resolve().parents[1] / "vectors"
VECTORS_FILE = VECTORS_DIR / "shamir_v1.json"


def _load_generator() -> ModuleType:
    path = VECTORS_DIR / "gen_shamir_vectors.py"
    spec = importlib.util.spec_from_file_location("gen_shamir_vectors", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


GEN = _load_generator()
VECTORS: dict[str, Any] = json.loads(VECTORS_FILE.read_text(encoding="utf-8"))
SPLIT_CASES = {case["name"]: case for case in VECTORS["split_cases"]}


def _ids(cases: list[dict[str, Any]]) -> list[str]:
    return [case["name"] for case in cases]


def _shares(items: list[dict[str, Any]]) -> list[Share]:
    # Built directly, not through from_bytes: these include x = 0 and x < 0 on purpose.
    return [Share(x=item["x"], y=int.from_bytes(bytes.fromhex(item["y"]), "little")) for item in items]


def _commitments(case: dict[str, Any]) -> Commitments:
    return Commitments.from_points([bytes.fromhex(p) for p in case["commitments"]])


def _scalar(hex_le: str) -> int:
    return int.from_bytes(bytes.fromhex(hex_le), "little")


def test_generator_reproduces_the_committed_file() -> None:
    assert GEN.render(GEN.build_vectors()) == VECTORS_FILE.read_text(encoding="utf-8"), (
        "tests/vectors/shamir_v1.json is stale: run python tests/vectors/gen_shamir_vectors.py"
    )


def test_constants_match() -> None:
    assert int(VECTORS["group_order"]) == shamir.L == GEN.L
    assert VECTORS["version"] == 1


@pytest.mark.parametrize("case", VECTORS["split_cases"], ids=_ids(VECTORS["split_cases"]))
def test_split_matches_vector(case: dict[str, Any]) -> None:
    m, n = case["m"], case["n"]
    rng = GEN.Drbg(bytes.fromhex(case["seed"]))
    secret = shamir.random_scalar(rng)
    assert secret == _scalar(case["secret"]) == _scalar(case["coefficients"][0])
    shares, commitments = shamir.split(secret, m, n, rng)
    assert [(s.x, s.to_bytes().hex()) for s in shares] == [(s["x"], s["y"]) for s in case["shares"]]
    assert [p.hex() for p in commitments.to_list()] == case["commitments"]
    assert [commitments.public_share(x).hex() for x in range(1, n + 1)] == case["public_shares"]


@pytest.mark.parametrize("case", VECTORS["split_cases"], ids=_ids(VECTORS["split_cases"]))
def test_vector_shares_verify_and_reconstruct(case: dict[str, Any]) -> None:
    m, n = case["m"], case["n"]
    secret = _scalar(case["secret"])
    shares = [Share.from_bytes(s["x"], bytes.fromhex(s["y"])) for s in case["shares"]]
    commitments = _commitments(case)
    assert commitments.public_secret().hex() == case["commitments"][0]
    assert shamir.verify_all(shares, commitments, n) == ()
    assert shamir.combine(shares[:m], m, n) == secret
    assert shamir.combine(shares[-m:], m, n) == secret
    assert shamir.combine(shares[: m - 1], m - 1, n) != secret


@pytest.mark.parametrize("case", VECTORS["tampered_cases"], ids=_ids(VECTORS["tampered_cases"]))
def test_tampered_share_is_named(case: dict[str, Any]) -> None:
    base = SPLIT_CASES[case["case"]]
    shares = _shares(case["shares"])
    assert shamir.verify_all(shares, _commitments(base), base["n"]) == tuple(case["fails"])


@pytest.mark.parametrize("case", VECTORS["bad_index_cases"], ids=_ids(VECTORS["bad_index_cases"]))
def test_bad_index_is_refused_and_named(case: dict[str, Any]) -> None:
    base = SPLIT_CASES[case["case"]]
    m, n = base["m"], base["n"]
    shares = _shares(case["shares"])
    for call in (lambda: shamir.check_xs([s.x for s in shares], n), lambda: shamir.combine(shares, m, n)):
        with pytest.raises(VerificationError) as err:
            call()
        match = re.search(r"x=(-?\d+)", str(err.value))
        assert match is not None and int(match.group(1)) == case["names_x"]
    commitments = _commitments(base)
    for s in shares:
        if not 1 <= s.x <= n:
            assert not shamir.verify_share(s, commitments, n)


@pytest.mark.parametrize("case", VECTORS["malformed_shares"], ids=_ids(VECTORS["malformed_shares"]))
def test_malformed_share_is_rejected(case: dict[str, Any]) -> None:
    with pytest.raises(MalformedError):
        Share.from_bytes(case["x"], bytes.fromhex(case["data"]))


@pytest.mark.parametrize("case", VECTORS["malformed_commitments"], ids=_ids(VECTORS["malformed_commitments"]))
def test_malformed_commitments_are_rejected(case: dict[str, Any]) -> None:
    with pytest.raises(MalformedError):
        Commitments.from_points([bytes.fromhex(p) for p in case["points"]])


@pytest.mark.parametrize("case", VECTORS["schnorr_cases"], ids=_ids(VECTORS["schnorr_cases"]))
def test_schnorr_matches_vector(case: dict[str, Any]) -> None:
    rng = GEN.Drbg(bytes.fromhex(case["seed"]))
    y = shamir.random_scalar(rng)
    assert y == _scalar(case["y"])
    context = bytes.fromhex(case["context"])
    public = bytes.fromhex(case["public_point"])
    proof = shamir.prove_share(Share(x=case["x"], y=y), context, rng)
    assert proof.to_bytes().hex() == case["proof"]
    parsed = SchnorrProof.from_bytes(bytes.fromhex(case["proof"]))
    assert shamir.verify_share_proof(parsed, public, context)
    assert not shamir.verify_share_proof(parsed, public, bytes.fromhex(case["other_context"]))
    assert not shamir.verify_share_proof(parsed, bytes.fromhex(case["other_public_point"]), context)
    tampered = SchnorrProof.from_bytes(bytes.fromhex(case["tampered_proof"]))
    assert not shamir.verify_share_proof(tampered, public, context)
    if "noncanonical_proof" in case:
        with pytest.raises(MalformedError):
            SchnorrProof.from_bytes(bytes.fromhex(case["noncanonical_proof"]))
