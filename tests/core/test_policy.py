"""Activation policy (DESIGN.md, Download): which certificates and quorum a domain may be sealed to."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from sdquorum import pki
from sdquorum.errors import UsageError
from sdquorum.policy import validate_download

DER = serialization.Encoding.DER
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def _cert(
    key: PrivateKey, now: datetime, cn: str, *, not_before: timedelta = -timedelta(days=1), days: int = 365
) -> bytes:
    """A self-signed certificate made with cryptography directly (DER); validity relative to ``now``."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + not_before)
        .not_valid_after(now + not_before + timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(DER)


@dataclass(frozen=True)
class Kit:
    """Certificates the cases are built from: five valid, distinct RSA-2048 ones, and odd ones."""

    good: tuple[bytes, ...]
    same_key_as_1: bytes  # a second certificate for certificate #1's key
    ec_p256: bytes
    rsa_1024: bytes
    expired: bytes
    not_yet_valid: bytes


@pytest.fixture(scope="module")
def kit(wrapping_private_keys: list[tuple[rsa.RSAPrivateKey, bytes]], now: datetime) -> Kit:
    spare = wrapping_private_keys[5][0]
    return Kit(
        good=tuple(der for _, der in wrapping_private_keys[:5]),
        same_key_as_1=_cert(wrapping_private_keys[0][0], now, "alice-again"),
        ec_p256=_cert(ec.generate_private_key(ec.SECP256R1()), now, "eve-ec"),
        # A deliberately weak key: the policy must refuse it.
        rsa_1024=_cert(rsa.generate_private_key(public_exponent=65537, key_size=1024), now, "eve-1024"),  # noqa: S505
        expired=_cert(spare, now, "frank-expired", not_before=-timedelta(days=400), days=365),
        not_yet_valid=_cert(spare, now, "frank-future", not_before=timedelta(days=2)),
    )


@pytest.fixture(scope="module")
def certs_3072(now: datetime) -> tuple[bytes, ...]:
    return tuple(
        pki.load_cert(pki.make_wrapping_key(f"big-{i}", now, bits=3072)[1]).public_bytes(DER)
        for i in range(3)
    )


def _at(certs: tuple[bytes, ...], number: int, cert: bytes) -> list[bytes]:
    """``certs`` with certificate #number (1-based) replaced by ``cert``."""
    out = list(certs)
    out[number - 1] = cert
    return out


@dataclass(frozen=True)
class Refusal:
    name: str
    certificates: Callable[[Kit], list[bytes]]
    quorum: int
    message: str  # regex the one-line error must match


REFUSALS = [
    Refusal("n=2", lambda k: list(k.good[:2]), 2, r"^2 custodian certificates given: .* needs 3 to 10$"),
    Refusal("n=11", lambda k: [*k.good, *k.good, k.good[0]], 3, r"^11 custodian certificates given"),
    Refusal("n=0", lambda k: [], 2, r"^0 custodian certificates given"),
    Refusal("m=1", lambda k: list(k.good[:3]), 1, r"^quorum 1 is too small"),
    Refusal("m=0", lambda k: list(k.good[:3]), 0, r"^quorum 0 is too small"),
    Refusal("m=-1", lambda k: list(k.good[:3]), -1, r"^quorum -1 is too small"),
    Refusal("m=4 > n=3", lambda k: list(k.good[:3]), 4, r"^quorum 4 is larger than the 3 custodians"),
    Refusal("m=6 > n=5", lambda k: list(k.good), 6, r"^quorum 6 is larger than the 5 custodians"),
    Refusal(
        "same key in certificates #1 and #3",
        lambda k: _at(k.good[:4], 3, k.same_key_as_1),
        3,
        r"^certificates #1 and #3 hold the same key",
    ),
    Refusal(
        "same certificate twice (#2 and #4)",
        lambda k: _at(k.good[:4], 4, k.good[1]),
        3,
        r"^certificates #2 and #4 hold the same key",
    ),
    Refusal(
        "EC P-256 certificate at #2",
        lambda k: _at(k.good[:4], 2, k.ec_p256),
        3,
        r"^certificate #2 does not hold an RSA key",
    ),
    Refusal(
        "RSA-1024 certificate at #4",
        lambda k: _at(k.good[:5], 4, k.rsa_1024),
        3,
        r"^certificate #4 holds a 1024-bit key: use RSA of at least 2048",
    ),
    Refusal(
        "expired certificate at #3",
        lambda k: _at(k.good[:3], 3, k.expired),
        2,
        r"^certificate #3 \(CN=frank-expired\) expired on ",
    ),
    Refusal(
        "not-yet-valid certificate at #5",
        lambda k: _at(k.good[:5], 5, k.not_yet_valid),
        3,
        r"^certificate #5 \(CN=frank-future\) is not valid before ",
    ),
    Refusal(
        "garbage at #2",
        lambda k: _at(k.good[:3], 2, b"not a certificate"),
        2,
        r"^certificate #2 is not a PEM or DER X.509 certificate",
    ),
]


@pytest.mark.parametrize("case", REFUSALS, ids=lambda c: c.name)
def test_download_refusals(kit: Kit, now: datetime, case: Refusal) -> None:
    with pytest.raises(UsageError, match=case.message) as err:
        validate_download(case.certificates(kit), case.quorum, now)
    assert "\n" not in str(err.value)


def test_certificate_valid_exactly_at_its_bounds_is_accepted(
    wrapping_private_keys: list[tuple[rsa.RSAPrivateKey, bytes]], now: datetime
) -> None:
    key = wrapping_private_keys[5][0]
    starts_now = _cert(key, now, "frank-starts", not_before=timedelta(0))
    ends_now = _cert(wrapping_private_keys[4][0], now, "erin-ends", not_before=-timedelta(days=30), days=30)
    certs = [wrapping_private_keys[0][1], starts_now, ends_now]
    assert validate_download(certs, 2, now).certificates_der == tuple(certs)
    with pytest.raises(UsageError, match=r"certificate #3 .* expired"):
        validate_download(certs, 2, now + timedelta(seconds=1))
    with pytest.raises(UsageError, match=r"certificate #2 .* is not valid before"):
        validate_download(certs, 2, now - timedelta(seconds=1))


@dataclass(frozen=True)
class Warned:
    name: str
    certificates: Callable[[Kit, tuple[bytes, ...]], list[bytes]]
    quorum: int
    warnings: tuple[str, ...]  # regexes, one per expected warning, in order


WARNINGS = [
    Warned("3072-bit keys, m=3: no warning", lambda k, big: list(big), 3, ()),
    Warned(
        "3072-bit keys, m=2: quorum warning",
        lambda k, big: list(big),
        2,
        (r"^quorum 2 is below the recommended 3: two people can rebuild the HSM$",),
    ),
    Warned(
        "one 2048-bit key at #2, m=3: that key is named",
        lambda k, big: [big[0], k.good[0], big[1], big[2]],
        3,
        (r"^certificate #2 holds a 2048-bit key: 3072 bits recommended$",),
    ),
    Warned(
        "2048-bit keys, m=2: both warnings",
        lambda k, big: list(k.good[:3]),
        2,
        (r"^quorum 2 ", r"^certificate #1 holds a 2048-bit", r"^certificate #2 ", r"^certificate #3 "),
    ),
]


@pytest.mark.parametrize("case", WARNINGS, ids=lambda c: c.name)
def test_download_warnings(kit: Kit, certs_3072: tuple[bytes, ...], now: datetime, case: Warned) -> None:
    certs = case.certificates(kit, certs_3072)
    plan = validate_download(certs, case.quorum, now)
    assert plan.quorum == case.quorum
    assert plan.certificates_der == tuple(certs)
    assert len(plan.warnings) == len(case.warnings), plan.warnings
    for warning, pattern in zip(plan.warnings, case.warnings, strict=True):
        assert "\n" not in warning
        assert re.search(pattern, warning), (pattern, warning)


def test_pem_certificates_are_accepted_and_returned_as_der(kit: Kit, now: datetime) -> None:
    pems = [x509.load_der_x509_certificate(d).public_bytes(serialization.Encoding.PEM) for d in kit.good[:3]]
    assert validate_download(pems, 3, now).certificates_der == kit.good[:3]


def test_ten_custodians_and_quorum_ten_are_accepted(kit: Kit, now: datetime) -> None:
    extra = [
        _cert(rsa.generate_private_key(public_exponent=65537, key_size=2048), now, f"extra-{i}")
        for i in range(5)
    ]
    plan = validate_download([*kit.good, *extra], 10, now)
    assert len(plan.certificates_der) == 10
    assert plan.quorum == 10


def test_naive_now_is_a_usage_error(kit: Kit, now: datetime) -> None:
    with pytest.raises(UsageError):
        validate_download(list(kit.good[:3]), 3, now.replace(tzinfo=None))
