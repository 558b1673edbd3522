"""Properties of sdquorum.shamir: any m of n reconstruct, m-1 do not, a bad share is caught and named."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.bindings import crypto_scalarmult_ed25519_base_noclamp
from support import drbg

from sdquorum.errors import MalformedError, UsageError, VerificationError
from sdquorum.shamir import (
    Commitments,
    L,
    SchnorrProof,
    Share,
    check_xs,
    combine,
    prove_share,
    random_scalar,
    split,
    verify_all,
    verify_share,
    verify_share_proof,
)

FAST = settings(max_examples=50, deadline=None)


def base(k: int) -> bytes:
    return crypto_scalarmult_ed25519_base_noclamp(k.to_bytes(32, "little"))


def named_x(err: pytest.ExceptionInfo[BaseException]) -> int:
    match = re.search(r"x=(-?\d+)", str(err.value))
    assert match is not None, f"error does not name an x: {err.value}"
    return int(match.group(1))


@st.composite
def dealings(draw: st.DrawFn, max_n: int = 10) -> tuple[int, int, int, tuple[Share, ...], Commitments]:
    n = draw(st.integers(2, max_n))
    m = draw(st.integers(2, n))
    secret = draw(st.integers(1, L - 1))
    seed = draw(st.binary(min_size=16, max_size=16))
    shares, commitments = split(secret, m, n, drbg(seed))
    return secret, m, n, shares, commitments


# --- reconstruction -------------------------------------------------------------------------------


@FAST
@given(dealings(), st.data())
def test_any_m_shares_in_any_order_reconstruct(
    dealing: tuple[int, int, int, tuple[Share, ...], Commitments], data: st.DataObject
) -> None:
    secret, m, n, shares, _ = dealing
    chosen = data.draw(st.permutations(shares))[:m]
    assert combine(chosen, m, n) == secret


@FAST
@given(dealings(), st.data())
def test_m_minus_1_shares_do_not_reveal_the_secret(
    dealing: tuple[int, int, int, tuple[Share, ...], Commitments], data: st.DataObject
) -> None:
    secret, m, n, shares, _ = dealing
    chosen = data.draw(st.permutations(shares))[: m - 1]
    assert combine(chosen, m - 1, n) != secret
    with pytest.raises(VerificationError):
        combine(chosen, m, n)


def test_combine_uses_exactly_the_first_m_shares() -> None:
    shares, _ = split(12345, 3, 5, drbg(b"first-m"))
    garbage = Share(x=5, y=(shares[4].y + 1) % L)
    assert combine([shares[0], shares[2], shares[3], garbage], 3, 5) == 12345
    assert combine([shares[0], garbage, shares[3]], 3, 5) != 12345


# --- Feldman verification -------------------------------------------------------------------------


@FAST
@given(dealings())
def test_every_dealt_share_verifies(dealing: tuple[int, int, int, tuple[Share, ...], Commitments]) -> None:
    secret, m, n, shares, commitments = dealing
    assert commitments.threshold == m
    assert commitments.public_secret() == base(secret)
    assert commitments.to_list() == list(commitments.points)
    assert all(verify_share(s, commitments, n) for s in shares)
    assert verify_all(shares, commitments, n) == ()
    assert all(commitments.public_share(s.x) == base(s.y) for s in shares)


@FAST
@given(dealings(), st.data())
def test_one_altered_share_is_named(
    dealing: tuple[int, int, int, tuple[Share, ...], Commitments], data: st.DataObject
) -> None:
    _, _, n, shares, commitments = dealing
    victim = data.draw(st.integers(0, n - 1))
    delta = data.draw(st.integers(1, L - 1))
    altered = list(shares)
    altered[victim] = Share(x=shares[victim].x, y=(shares[victim].y + delta) % L)
    assert verify_all(altered, commitments, n) == (victim + 1,)


def test_share_with_another_custodians_index_is_named() -> None:
    shares, commitments = split(99, 2, 3, drbg(b"swap"))
    claimed = [shares[0], Share(x=2, y=shares[2].y), shares[2]]
    assert verify_all(claimed, commitments, 3) == (2,)


def test_verify_share_is_false_outside_range_and_never_raises() -> None:
    shares, commitments = split(7, 2, 5, drbg(b"range"))
    assert not verify_share(shares[3], commitments, 3)  # a genuine share, but x=4 > n=3
    assert not verify_share(Share(x=0, y=7), commitments, 5)  # f(0) is the secret: never a share
    assert not verify_share(Share(x=-1, y=shares[0].y), commitments, 5)
    assert not verify_share(Share(x=1, y=0), commitments, 5)
    assert not verify_share(Share(x=1, y=shares[0].y + L), commitments, 5)
    assert not verify_share(Share(x=1, y=-shares[0].y), commitments, 5)
    assert not verify_share(Share(x=L + 1, y=shares[0].y), commitments, L + 5)


@FAST
@given(
    st.lists(st.integers(1, L - 1), min_size=2, max_size=10),
    st.one_of(st.integers(1, 40), st.integers(1, L - 1)),
)
def test_public_share_is_the_polynomial_at_x_times_b(coefficients: list[int], x: int) -> None:
    # Horner with double-and-add for small x, scalar multiplications from x = 16 up: both must give
    # f(x)*B, computed here independently as one base-point multiplication of f(x) mod L.
    commitments = Commitments.from_points([base(a) for a in coefficients])
    fx = sum(a * pow(x, j, L) for j, a in enumerate(coefficients)) % L
    if fx == 0:
        with pytest.raises(VerificationError):
            commitments.public_share(x)
    else:
        assert commitments.public_share(x) == base(fx)


def test_identity_public_share_is_a_failed_check_not_a_crash() -> None:
    # A_0 = B, A_1 = -B: at x = 1 the public share is the identity, which libsodium refuses to produce.
    commitments = Commitments.from_points([base(1), base(L - 1)])
    with pytest.raises(VerificationError, match="x=1"):
        commitments.public_share(1)
    assert not verify_share(Share(x=1, y=1), commitments, 3)
    assert verify_all([Share(x=1, y=5), Share(x=2, y=L - 1)], commitments, 3) == (1,)
    # x = 2: B - 2B = -B, an honest share y = L - 1 verifies.
    assert verify_share(Share(x=2, y=L - 1), commitments, 3)


def test_public_share_refuses_non_share_index() -> None:
    _, commitments = split(7, 2, 3, drbg(b"idx"))
    for x in (0, -1, L):
        with pytest.raises(UsageError):
            commitments.public_share(x)


# --- indices --------------------------------------------------------------------------------------


@FAST
@given(dealings(), st.data())
def test_bad_indices_are_refused_and_named(
    dealing: tuple[int, int, int, tuple[Share, ...], Commitments], data: st.DataObject
) -> None:
    _, m, n, shares, _ = dealing
    good = list(shares[: m - 1])
    bad_x = data.draw(
        st.sampled_from([0, -data.draw(st.integers(1, 300)), n + data.draw(st.integers(1, 300))])
    )
    for candidate in (
        [*good, Share(x=bad_x, y=shares[-1].y)],  # x = 0, negative, or > n
        [*good, Share(x=good[-1].x, y=shares[-1].y)],  # duplicate of the last good x
    ):
        offender = candidate[-1].x
        with pytest.raises(VerificationError) as err:
            check_xs([s.x for s in candidate], n)
        assert named_x(err) == offender
        with pytest.raises(VerificationError) as err:
            combine(candidate, m, n)
        assert named_x(err) == offender


def test_check_xs_accepts_distinct_in_range() -> None:
    check_xs([3, 1, 2], 3)
    check_xs([], 3)


def test_combine_needs_m_shares() -> None:
    shares, _ = split(5, 3, 4, drbg(b"few"))
    with pytest.raises(VerificationError, match="2 shares given, 3 needed"):
        combine(shares[:2], 3, 4)


# --- encodings ------------------------------------------------------------------------------------


@FAST
@given(st.integers(1, 255), st.integers(0, L - 1))
def test_share_bytes_round_trip(x: int, y: int) -> None:
    share = Share(x=x, y=y)
    data = share.to_bytes()
    assert len(data) == 32
    assert Share.from_bytes(x, data) == share


@FAST
@given(st.integers(L, 2**256 - 1))
def test_share_from_bytes_rejects_non_canonical(y: int) -> None:
    with pytest.raises(MalformedError, match="canonical"):
        Share.from_bytes(1, y.to_bytes(32, "little"))


@FAST
@given(st.binary(max_size=80).filter(lambda b: len(b) != 32))
def test_share_from_bytes_rejects_wrong_length(data: bytes) -> None:
    with pytest.raises(MalformedError):
        Share.from_bytes(1, data)


def test_share_from_bytes_rejects_non_positive_x() -> None:
    for x in (0, -1):
        with pytest.raises(MalformedError):
            Share.from_bytes(x, bytes(32))


def test_share_repr_hides_y() -> None:
    y = 0x1234567890ABCDEF
    assert str(y) not in repr(Share(x=3, y=y))
    assert hex(y)[2:] not in repr(Share(x=3, y=y)).lower()


def test_commitments_reject_bad_points() -> None:
    good = base(5)
    for points in ([good], [], [good, b"\x01" + bytes(31)], [good, good[:31]], [good, "x" * 32]):
        with pytest.raises(MalformedError):
            Commitments.from_points(points)  # type: ignore[arg-type]  # str point is the point of the test
    with pytest.raises(MalformedError):
        Commitments.from_points(good)  # type: ignore[arg-type]  # one bytes string, not a list of points
    with pytest.raises(MalformedError):  # direct construction validates too: (sqrt(-1), 0) has order 4
        Commitments(points=(good, bytes(32)))
    with pytest.raises(MalformedError):
        Commitments(points=[good, base(6)])  # type: ignore[arg-type]  # a list where a tuple is required


# --- caller errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("secret", "m", "n"),
    [(1, 1, 3), (1, 4, 3), (1, 2, 256), (1, 0, 0), (0, 2, 3), (L, 2, 3), (-1, 2, 3)],
    ids=["m=1", "m>n", "n>255", "m=n=0", "secret=0", "secret=L", "secret<0"],
)
def test_split_refuses_bad_parameters(secret: int, m: int, n: int) -> None:
    with pytest.raises(UsageError):
        split(secret, m, n, drbg(b"bad"))


def test_split_accepts_the_bounds() -> None:
    shares, commitments = split(L - 1, 255, 255, drbg(b"max"))
    assert len(shares) == 255
    assert commitments.threshold == 255
    assert combine(shares[::-1], 255, 255) == L - 1


def test_random_scalar_redraws_zero() -> None:
    stream = [L.to_bytes(64, "little"), bytes(64), (L + 7).to_bytes(64, "little")]
    assert random_scalar(lambda k: stream.pop(0)) == 7


def test_random_scalar_refuses_a_broken_rng() -> None:
    with pytest.raises(UsageError, match="not a random source"):
        random_scalar(lambda k: bytes(k))
    with pytest.raises(UsageError, match="64 bytes"):
        random_scalar(lambda k: bytes(k - 1))


def test_split_coefficients_are_never_zero() -> None:
    # The first draw for a_1 reduces to 0 and must be redrawn: the dealt polynomial keeps degree m-1.
    stream = [L.to_bytes(64, "little"), (5).to_bytes(64, "little")]
    shares, commitments = split(3, 2, 3, lambda k: stream.pop(0))
    assert commitments.points[1] == base(5)
    assert [s.y for s in shares] == [8, 13, 18]


def test_split_redraws_a_polynomial_that_would_deal_a_zero_share() -> None:
    # a_1 = L - 3 makes f(1) = 3 + (L - 3) = 0 mod L: that polynomial is dropped, a_1 = 5 is used.
    stream = [(L - 3).to_bytes(64, "little"), (5).to_bytes(64, "little")]
    shares, commitments = split(3, 2, 3, lambda k: stream.pop(0))
    assert [s.y for s in shares] == [8, 13, 18]
    assert verify_all(shares, commitments, 3) == ()


# --- Schnorr proof of possession ------------------------------------------------------------------


@FAST
@given(st.integers(1, L - 1), st.binary(max_size=64), st.binary(min_size=16, max_size=16))
def test_schnorr_proof(y: int, context: bytes, seed: bytes) -> None:
    share = Share(x=2, y=y)
    public = base(y)
    proof = prove_share(share, context, drbg(seed))
    assert verify_share_proof(proof, public, context)
    parsed = SchnorrProof.from_bytes(proof.to_bytes())
    assert parsed == proof
    assert verify_share_proof(parsed, public, context)
    assert not verify_share_proof(proof, public, context + b"\x00")
    assert not verify_share_proof(proof, base(y % (L - 1) + 1), context)
    tampered = SchnorrProof(commitment=proof.commitment, response=(proof.response + 1) % L)
    assert not verify_share_proof(tampered, public, context)


def test_schnorr_proof_of_a_dealt_share_checks_against_public_share() -> None:
    shares, commitments = split(42, 2, 3, drbg(b"drill"))
    proof = prove_share(shares[1], b"session 1 x=2", drbg(b"k"))
    assert verify_share_proof(proof, commitments.public_share(2), b"session 1 x=2")
    assert not verify_share_proof(proof, commitments.public_share(3), b"session 1 x=2")


def test_schnorr_verify_never_raises_on_garbage() -> None:
    proof = prove_share(Share(x=1, y=9), b"c", drbg(b"g"))
    public = base(9)
    identity = b"\x01" + bytes(31)
    assert not verify_share_proof(proof, identity, b"c")
    assert not verify_share_proof(proof, b"\x00" * 32, b"c")
    assert not verify_share_proof(proof, public[:31], b"c")
    assert not verify_share_proof(SchnorrProof(commitment=identity, response=proof.response), public, b"c")
    assert not verify_share_proof(SchnorrProof(commitment=proof.commitment, response=L), public, b"c")
    assert not verify_share_proof(SchnorrProof(commitment=proof.commitment, response=0), public, b"c")
    assert not verify_share_proof(SchnorrProof(commitment=proof.commitment, response=-1), public, b"c")


def test_schnorr_from_bytes_rejects_malformed() -> None:
    proof = prove_share(Share(x=1, y=9), b"c", drbg(b"m")).to_bytes()
    bad = [
        proof[:63],
        proof + b"\x00",
        b"\x01" + bytes(31) + proof[32:],  # R = identity
        proof[:32] + L.to_bytes(32, "little"),  # z = L, non-canonical
        proof[:32] + b"\xff" * 32,
    ]
    for data in bad:
        with pytest.raises(MalformedError):
            SchnorrProof.from_bytes(data)


def test_prove_share_refuses_invalid_share() -> None:
    for y in (0, L, -1):
        with pytest.raises(UsageError):
            prove_share(Share(x=1, y=y), b"c", drbg(b"p"))
