"""Tests of sdquorum.pki: roles, mTLS certificates, the attestation chain and wrapping keys."""

from __future__ import annotations

import ast
import hashlib
import ipaddress
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from recertify import self_signed

from sdquorum.errors import MalformedError, UsageError, VerificationError
from sdquorum.pki import (
    ATTESTATION_EKU,
    ROLE_URI_PREFIX,
    IssuedCert,
    Role,
    issue_attestation_cert,
    issue_tls_cert,
    load_cert,
    make_attestation_root,
    make_ca,
    make_wrapping_key,
    role_from_cert,
    spki_sha256,
    thumbprint_sha256,
    verify_attestation_chain,
)

REPO = Path(__file__).resolve().parents[2]
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
DER = serialization.Encoding.DER
_E = TypeVar("_E", bound=x509.ExtensionType)


@pytest.fixture(scope="module")
def ca() -> IssuedCert:
    return make_ca("sdquorum test CA", NOW)


@pytest.fixture(scope="module")
def att_root() -> IssuedCert:
    return make_attestation_root("sdquorum test attestation root", NOW)


def _cert(issued: IssuedCert) -> x509.Certificate:
    return x509.load_pem_x509_certificate(issued.cert_pem)


def _ext(cert: x509.Certificate, ext_type: type[_E]) -> x509.Extension[_E]:
    return cert.extensions.get_extension_for_class(ext_type)


def _custom_cert(
    issuer: IssuedCert | None,
    *,
    key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey,
    cn: str = "custom",
    ca: bool = False,
    extensions: Sequence[x509.ExtensionType] = (),
) -> x509.Certificate:
    """A certificate built by hand, signed by ``issuer`` (or self-signed when None)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    if issuer is None:
        issuer_name, signing_key = name, key
    else:
        issuer_name = _cert(issuer).subject
        loaded = serialization.load_pem_private_key(issuer.key_pem, password=None)
        assert isinstance(loaded, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey)
        signing_key = loaded
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    for ext in extensions:
        builder = builder.add_extension(ext, critical=False)
    algorithm = None if isinstance(signing_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(signing_key, algorithm)


# --- roles -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "name"),
    [
        ("admin", "admin", None),
        ("app", "app", None),
        ("node", "node", None),
        ("custodian/alice", "custodian", "alice"),
        ("custodian/0.b_c-d", "custodian", "0.b_c-d"),
        ("custodian/" + "a" * 64, "custodian", "a" * 64),
        ("app/payments", "app", "payments"),  # a named app owns keys of its own (ADR 0009)
    ],
)
def test_role_round_trips(text: str, kind: str, name: str | None) -> None:
    role = Role.parse(text)
    assert (role.kind, role.name) == (kind, name)
    assert str(role) == text
    assert role.uri() == "sdquorum://role/" + text
    assert role.uri().startswith(ROLE_URI_PREFIX)
    assert Role.parse(str(role)) == role


@pytest.mark.parametrize(
    "text",
    [
        "",
        "root",
        "Admin",
        " admin",
        "admin\n",
        "admin/x",
        "node/",
        "custodian",
        "custodian/",
        "custodian/Alice",
        "custodian/-alice",
        "custodian/.alice",
        "custodian/al ice",
        "custodian/alice\n",
        "custodian/a/b",
        "custodian/" + "a" * 65,
        "app/",
        "app/Payments",
        "app/a/b",
        "node/x",
    ],
)
def test_bad_role_strings_are_refused(text: str) -> None:
    with pytest.raises(UsageError):
        Role.parse(text)


def test_role_constructor_validates() -> None:
    with pytest.raises(UsageError, match=r"needs|invalid"):
        Role("custodian", None)
    with pytest.raises(UsageError, match="takes no name"):
        Role("admin", "x")
    with pytest.raises(UsageError, match="unknown role kind"):
        Role("root", None)


# --- TLS certificates ----------------------------------------------------------------------------------


def test_ca_has_ca_extensions(ca: IssuedCert) -> None:
    cert = _cert(ca)
    bc = _ext(cert, x509.BasicConstraints)
    assert bc.critical and bc.value == x509.BasicConstraints(ca=True, path_length=0)
    ku = _ext(cert, x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign and not ku.value.digital_signature
    public_key = cert.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert public_key.curve.name == "secp256r1"
    ski = _ext(cert, x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(public_key)
    cert.verify_directly_issued_by(cert)


@pytest.mark.parametrize(
    ("role_text", "ekus"),
    [
        ("node", {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}),
        ("admin", {ExtendedKeyUsageOID.CLIENT_AUTH}),
        ("app", {ExtendedKeyUsageOID.CLIENT_AUTH}),
        ("custodian/alice", {ExtendedKeyUsageOID.CLIENT_AUTH}),
    ],
)
def test_tls_cert_carries_role_eku_san_cn(
    ca: IssuedCert, role_text: str, ekus: set[x509.ObjectIdentifier]
) -> None:
    role = Role.parse(role_text)
    issued = issue_tls_cert(ca, role, NOW, dns_names=("localhost", "node1.example"))
    cert = _cert(issued)

    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == role_text
    assert cert.issuer == _cert(ca).subject
    cert.verify_directly_issued_by(_cert(ca))

    san = _ext(cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [f"sdquorum://role/{role_text}"]
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "node1.example"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert set(_ext(cert, x509.ExtendedKeyUsage).value) == ekus

    ku = _ext(cert, x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
    bc = _ext(cert, x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    aki = _ext(cert, x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == _ext(_cert(ca), x509.SubjectKeyIdentifier).value.digest
    _ext(cert, x509.SubjectKeyIdentifier)

    assert cert.not_valid_before_utc == NOW - timedelta(minutes=5)
    assert cert.not_valid_after_utc == NOW + timedelta(days=397)

    assert role_from_cert(issued.cert_pem) == role
    assert role_from_cert(cert.public_bytes(DER)) == role


def test_tls_key_is_unencrypted_pkcs8_matching_the_cert(ca: IssuedCert) -> None:
    issued = issue_tls_cert(ca, Role("admin"), NOW)
    assert issued.key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    key = serialization.load_pem_private_key(issued.key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    spki = DER, serialization.PublicFormat.SubjectPublicKeyInfo
    assert key.public_key().public_bytes(*spki) == _cert(issued).public_key().public_bytes(*spki)


def test_tls_cert_explicit_validity_and_clamp_to_ca(ca: IssuedCert) -> None:
    start = NOW - timedelta(days=2)
    cert = _cert(
        issue_tls_cert(ca, Role("app"), NOW, not_before=start, days=10, dns_names=(), ip_addresses=())
    )
    assert cert.not_valid_before_utc == start
    assert cert.not_valid_after_utc == NOW + timedelta(days=10)
    san = _ext(cert, x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier("sdquorum://role/app")]

    short_ca = make_ca("short CA", NOW, days=30)
    clamped = _cert(issue_tls_cert(short_ca, Role("node"), NOW))
    assert clamped.not_valid_after_utc == _cert(short_ca).not_valid_after_utc


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ip_addresses": ("not-an-ip",)}, "IP address"),
        ({"dns_names": ("bücher.example",)}, "DNS name"),
        ({"dns_names": ("",)}, "DNS name"),
        ({"days": 0}, "days"),
        ({"not_before": NOW + timedelta(days=500)}, "not_before"),
        ({"not_before": datetime(2025, 1, 1)}, "timezone-aware"),  # naive on purpose
    ],
)
def test_tls_cert_bad_arguments_are_refused(ca: IssuedCert, kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(UsageError, match=match):
        issue_tls_cert(ca, Role("admin"), NOW, **kwargs)  # type: ignore[arg-type]  # table of kwargs


def test_tls_cert_refuses_naive_now_expired_ca_and_non_ca(ca: IssuedCert) -> None:
    with pytest.raises(UsageError, match="timezone-aware"):
        issue_tls_cert(ca, Role("admin"), datetime(2025, 6, 1))  # naive on purpose
    with pytest.raises(UsageError, match="not valid at"):
        issue_tls_cert(ca, Role("admin"), NOW + timedelta(days=3651))
    leaf = issue_tls_cert(ca, Role("admin"), NOW)
    with pytest.raises(UsageError, match="not a CA"):
        issue_tls_cert(leaf, Role("admin"), NOW)
    mismatched = IssuedCert(ca.cert_pem, make_ca("other", NOW).key_pem)
    with pytest.raises(UsageError, match="does not match"):
        issue_tls_cert(mismatched, Role("admin"), NOW)


def test_custodian_name_too_long_for_cn_is_refused(ca: IssuedCert) -> None:
    role = Role("custodian", "a" * 55)  # "custodian/" + 55 = 65 characters > ub-common-name
    with pytest.raises(UsageError, match="CN"):
        issue_tls_cert(ca, role, NOW)
    issue_tls_cert(ca, Role("custodian", "a" * 54), NOW)


@pytest.mark.parametrize(
    ("sans", "match"),
    [
        (None, "no sdquorum://role/"),
        ([x509.DNSName("localhost")], "no sdquorum://role/"),
        ([x509.UniformResourceIdentifier("https://example.com/role/admin")], "no sdquorum://role/"),
        (
            [
                x509.UniformResourceIdentifier("sdquorum://role/admin"),
                x509.UniformResourceIdentifier("sdquorum://role/app"),
            ],
            "2 role URI SANs",
        ),
        ([x509.UniformResourceIdentifier("sdquorum://role/root")], "invalid"),
        ([x509.UniformResourceIdentifier("sdquorum://role/custodian/Alice")], "invalid"),
    ],
    ids=["no-san", "dns-only", "foreign-uri", "two-roles", "unknown-role", "bad-custodian"],
)
def test_role_from_cert_refuses_missing_or_bad_role(
    ca: IssuedCert, sans: list[x509.GeneralName] | None, match: str
) -> None:
    extensions: list[x509.ExtensionType] = [] if sans is None else [x509.SubjectAlternativeName(sans)]
    cert = _custom_cert(ca, key=ec.generate_private_key(ec.SECP256R1()), cn="admin", extensions=extensions)
    with pytest.raises(VerificationError, match=match):
        role_from_cert(cert.public_bytes(serialization.Encoding.PEM))


def test_role_from_cert_refuses_garbage() -> None:
    with pytest.raises(MalformedError):
        role_from_cert(b"not a certificate")


# --- attestation -----------------------------------------------------------------------------------------


def test_attestation_chain_verifies(att_root: IssuedCert) -> None:
    root = _cert(att_root)
    assert isinstance(root.public_key(), ed25519.Ed25519PublicKey)
    assert _ext(root, x509.BasicConstraints).value == x509.BasicConstraints(ca=True, path_length=0)
    assert _ext(root, x509.KeyUsage).value.key_cert_sign

    issued = issue_attestation_cert(att_root, "node-1", NOW)
    leaf = _cert(issued)
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "node-1"
    assert list(_ext(leaf, x509.ExtendedKeyUsage).value) == [ATTESTATION_EKU]
    assert _ext(leaf, x509.KeyUsage).critical and _ext(leaf, x509.KeyUsage).value.digital_signature
    assert not _ext(leaf, x509.BasicConstraints).value.ca

    public_key = verify_attestation_chain(issued.cert_pem, att_root.cert_pem, NOW)
    key = serialization.load_pem_private_key(issued.key_pem, password=None)
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    public_key.verify(key.sign(b"exchange key"), b"exchange key")
    with pytest.raises(InvalidSignature):
        public_key.verify(key.sign(b"exchange key"), b"another key")
    # DER is accepted too, and the validity edges are inclusive.
    verify_attestation_chain(leaf.public_bytes(DER), root.public_bytes(DER), leaf.not_valid_after_utc)
    verify_attestation_chain(issued.cert_pem, att_root.cert_pem, leaf.not_valid_before_utc)


@pytest.mark.parametrize("other_cn", ["sdquorum test attestation root", "another vendor"])
def test_attestation_refused_under_another_root(att_root: IssuedCert, other_cn: str) -> None:
    other = make_attestation_root(other_cn, NOW)
    issued = issue_attestation_cert(other, "node-1", NOW)
    with pytest.raises(VerificationError, match="not signed by the attestation root"):
        verify_attestation_chain(issued.cert_pem, att_root.cert_pem, NOW)


@pytest.mark.parametrize(
    ("root_at", "issued_at", "checked_at", "match"),
    [
        (NOW, NOW, NOW + timedelta(days=398), "attestation certificate expired"),
        (
            NOW - timedelta(days=1),
            NOW,
            NOW - timedelta(hours=1),
            "attestation certificate is not valid until",
        ),
        (NOW - timedelta(days=3000), NOW - timedelta(days=3000), NOW, "attestation certificate expired"),
    ],
    ids=["leaf-expired", "leaf-not-yet-valid", "old-leaf"],
)
def test_attestation_refused_outside_validity(
    root_at: datetime, issued_at: datetime, checked_at: datetime, match: str
) -> None:
    root = make_attestation_root("root", root_at)
    issued = issue_attestation_cert(root, "node-1", issued_at)
    with pytest.raises(VerificationError, match=match):
        verify_attestation_chain(issued.cert_pem, root.cert_pem, checked_at)


def test_attestation_refused_when_root_expired() -> None:
    root = make_attestation_root("root", NOW, days=1)
    issued = issue_attestation_cert(root, "node-1", NOW)  # clamped to the root's one day
    later = NOW + timedelta(days=1, seconds=1)
    with pytest.raises(VerificationError, match="attestation root expired"):
        verify_attestation_chain(issued.cert_pem, root.cert_pem, later)


def test_attestation_refused_without_eku(att_root: IssuedCert) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    for extensions in ([], [x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])]):
        leaf = _custom_cert(att_root, key=key, extensions=extensions)
        with pytest.raises(VerificationError, match="lacks the attestation EKU"):
            verify_attestation_chain(leaf.public_bytes(DER), att_root.cert_pem, NOW)


def test_attestation_refused_when_leaf_is_ca(att_root: IssuedCert) -> None:
    leaf = _custom_cert(
        att_root,
        key=ed25519.Ed25519PrivateKey.generate(),
        ca=True,
        extensions=[x509.ExtendedKeyUsage([ATTESTATION_EKU])],
    )
    with pytest.raises(VerificationError, match="is a CA"):
        verify_attestation_chain(leaf.public_bytes(DER), att_root.cert_pem, NOW)


def test_attestation_refused_when_root_is_not_ca() -> None:
    root_key = ed25519.Ed25519PrivateKey.generate()
    root_cert = _custom_cert(None, key=root_key, cn="fake root", ca=False)
    fake_root = IssuedCert(
        root_cert.public_bytes(serialization.Encoding.PEM),
        root_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )
    leaf = _custom_cert(
        fake_root,
        key=ed25519.Ed25519PrivateKey.generate(),
        extensions=[x509.ExtendedKeyUsage([ATTESTATION_EKU])],
    )
    with pytest.raises(VerificationError, match="root is not a CA"):
        verify_attestation_chain(leaf.public_bytes(DER), fake_root.cert_pem, NOW)
    with pytest.raises(UsageError, match="not a CA"):
        issue_attestation_cert(fake_root, "node-1", NOW)


def test_attestation_refused_when_leaf_key_is_not_ed25519(att_root: IssuedCert) -> None:
    leaf = _custom_cert(
        att_root,
        key=ec.generate_private_key(ec.SECP256R1()),
        extensions=[x509.ExtendedKeyUsage([ATTESTATION_EKU])],
    )
    with pytest.raises(VerificationError, match="not Ed25519"):
        verify_attestation_chain(leaf.public_bytes(DER), att_root.cert_pem, NOW)


def test_attestation_issue_refuses_tls_ca(ca: IssuedCert) -> None:
    with pytest.raises(UsageError, match="not Ed25519"):
        issue_attestation_cert(ca, "node-1", NOW)


def test_tls_issue_refuses_attestation_root(att_root: IssuedCert) -> None:
    with pytest.raises(UsageError, match="not an ECDSA"):
        issue_tls_cert(att_root, Role("node"), NOW)


# --- thumbprints and loading ----------------------------------------------------------------------------


def test_thumbprint_is_sha256_of_der_for_pem_and_der(ca: IssuedCert) -> None:
    _key, pem = make_wrapping_key("custodian alice", NOW, bits=2048)
    der = x509.load_pem_x509_certificate(pem).public_bytes(DER)
    expected = hashlib.sha256(der).digest()
    assert thumbprint_sha256(pem) == expected
    assert thumbprint_sha256(der) == expected
    assert len(expected) == 32
    assert thumbprint_sha256(ca.cert_pem) != expected


@pytest.mark.parametrize(
    "data", [b"", b"garbage", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"]
)
def test_load_cert_refuses_garbage(data: bytes) -> None:
    with pytest.raises(MalformedError):
        load_cert(data)


def test_load_cert_refuses_several_pem_blocks(ca: IssuedCert, att_root: IssuedCert) -> None:
    with pytest.raises(MalformedError, match="exactly one"):
        load_cert(ca.cert_pem + att_root.cert_pem)
    assert load_cert(b"\n" + ca.cert_pem) == _cert(ca)


# --- wrapping keys ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [2048, 3072])
def test_wrapping_key_size_and_self_signed_cert(bits: int) -> None:
    key, pem = make_wrapping_key("custodian alice", NOW, bits=bits)
    assert isinstance(key, rsa.RSAPrivateKey)
    assert key.key_size == bits
    cert = x509.load_pem_x509_certificate(pem)
    public_key = cert.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey)
    assert public_key.public_numbers() == key.public_key().public_numbers()
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "custodian alice"
    cert.verify_directly_issued_by(cert)
    ku = _ext(cert, x509.KeyUsage).value
    assert ku.key_encipherment and ku.digital_signature and not ku.key_cert_sign
    assert not _ext(cert, x509.BasicConstraints).value.ca
    assert cert.not_valid_before_utc <= NOW <= cert.not_valid_after_utc


def test_wrapping_key_default_is_3072() -> None:
    key, _pem = make_wrapping_key("custodian bob", NOW)
    assert key.key_size == 3072


@pytest.mark.parametrize("bits", [1024, 2047])
def test_wrapping_key_too_small_is_refused(bits: int) -> None:
    with pytest.raises(UsageError, match="at least 2048"):
        make_wrapping_key("custodian alice", NOW, bits=bits)


# --- shape -----------------------------------------------------------------------------------------------


def test_pki_keeps_the_core_grpc_free() -> None:
    imported: set[str] = set()
    for path in sorted((REPO / "sdquorum" / "pki").glob("*.py")):  # the package's modules
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module.split(".")[0])
    assert "cryptography" in imported  # the walk sees imports at all
    assert "grpc" not in imported
    # Transitively too: importing the module loads no grpc.
    probe = "import sys, sdquorum.pki; sys.exit('grpc' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr or "importing sdquorum.pki loaded grpc"


def test_a_key_keeps_its_identity_under_a_new_certificate() -> None:
    """Two certificates over one RSA key: different thumbprints, one SPKI digest (DESIGN.md: a key's
    identity is its public key, never a certificate's bytes)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    a, b = self_signed(key, "bob", datetime.now(UTC)), self_signed(key, "bob", datetime.now(UTC))
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert thumbprint_sha256(a) != thumbprint_sha256(b)
    assert spki_sha256(a) == spki_sha256(b)
    assert len(spki_sha256(a)) == 32
    spki = other.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert spki_sha256(a) != hashlib.sha256(spki).digest()


def test_spki_sha256_is_remembered_per_bytes_and_never_remembers_a_refusal() -> None:
    """A header's duplicate-key check digests every slot on each parse: the digest of the same
    bytes is remembered (one parse), PEM and DER of one certificate agree, a bytearray is taken,
    and bytes that are no certificate are refused every time."""
    from sdquorum.pki import _certs

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    der = self_signed(key, "carol", datetime.now(UTC))
    pem = x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
    expected = hashlib.sha256(
        key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    ).digest()
    _certs._spki_sha256.cache_clear()
    assert spki_sha256(der) == spki_sha256(bytearray(der)) == spki_sha256(pem) == expected
    assert _certs._spki_sha256.cache_info().misses == 2  # DER once, PEM once
    for _ in range(2):
        with pytest.raises(MalformedError):
            spki_sha256(b"\x30\x03\x02\x01\x00")
    with pytest.raises(MalformedError, match="must be bytes"):
        spki_sha256("not bytes")  # type: ignore[arg-type]


def test_a_padded_certificate_is_digested_but_never_remembered() -> None:
    """A PEM parses with trailing bytes: a peer padding its certificate must not pin memory."""
    from sdquorum.pki import _certs

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    der = self_signed(key, "dave", datetime.now(UTC))
    pem = x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
    _certs._spki_sha256.cache_clear()
    assert spki_sha256(pem + b"\n" * 20_000) == spki_sha256(der)
    assert _certs._spki_sha256.cache_info().currsize == 1  # the DER only
