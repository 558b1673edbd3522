"""Every decoder of the core, fuzzed with hypothesis: nothing escapes but the project's own errors.

Each decoder of ``fuzz/_harness.py`` (``DECODERS``, with its adapter from bytes) runs under the
harness's oracle: it returns a value or raises :class:`~sdquorum.errors.SdquorumError`, and a value it
accepts survives encode -> decode -> encode. Inputs:

(a) arbitrary bytes, and arbitrary JSON documents;
(b) structure-aware JSON: the valid encoding's "type"/"format"/"version" markers with every other
    field replaced by random JSON or dropped; and the valid encoding with some fields replaced,
    dropped or perturbed in depth (a base64url field that carries JSON is perturbed inside);
(c) single-byte mutations (replace, insert, delete) of a valid encoding, outside and inside one
    base64url field (a certificate, a signed header, a statement).

The random JSON includes what a strict parser must refuse or survive: lone UTF-16 surrogates
(``"\\ud800"``), numbers beyond a float (``1e400``) or with thousands of digits, deep nesting,
base64url and hex strings, integers around 2^63 and booleans where integers go.

Valid encodings come from ``fuzz/_samples.py`` (the real encoders, the atheris seeds). Known bugs
are pinned at the end by strict xfail tests, one or more per ``KNOWN_BUGS`` id, and
``test_every_tolerated_bug_is_pinned`` keeps the two lists in step.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import _harness
import pytest
from _harness import DECODERS, KNOWN_BUGS, Context, Decoder, exercise
from _samples import Samples, build_samples
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from harness import backup_v1
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sdquorum import audit, backup, keys, pki, policy, shamir
from sdquorum.encoding import b64d, b64e, canonical_json, parse_json_object
from sdquorum.envelopes import ExchangeStatement
from sdquorum.errors import MalformedError, SdquorumError
from sdquorum.proposal import RotationProposal
from sdquorum.review import CustodyRecord
from sdquorum.sdfile import DomainSecrets, Header

# Mutated certificates make cryptography warn (e.g. a negative serial number): expected here.
pytestmark = pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")

NOT_JSON = {
    "Share.from_bytes",
    "Commitments.from_points",
    "SchnorrProof.from_bytes",
    "b64d",
    "open_backup",
    "backup_domain_id",
}
JSON_DECODERS = [d for d in DECODERS if d.family != "pki" and d.name not in NOT_JSON]
MARKERS = ("type", "format", "version")

# Examples per decoder and test: what keeps this file near 30 s. Decoders that verify a signature or
# parse certificates on most inputs get fewer.
SLOW = {
    "SecurityDomainFile.from_bytes",
    "open_backup",
    "open_backup(v1)",
    "verify_export",
    "verify_export(root)",
    "validate_download",
    "verify_attestation_chain",
    "RotationProposal.from_bytes",
}


def examples(decoder: Decoder, base: int) -> int:
    return base // 2 if decoder.name in SLOW else base


def fuzz_settings(n: int) -> settings:
    return settings(
        max_examples=n,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


def by_decoder(decoders: list[Decoder]) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("decoder", decoders, ids=[d.name for d in decoders])


@pytest.fixture(scope="session")
def samples() -> Samples:
    return build_samples()


@pytest.fixture(scope="session")
def ctx(samples: Samples) -> Context:
    return samples.context


# ------------------------------------------------------------------------------------ JSON strategies


@dataclass(frozen=True)
class Raw:
    """A JSON token written as is: what json.dumps cannot produce (1e400, NaN, 5000 digits)."""

    token: str


RAW_TOKENS = (
    "1e400",
    "-1e400",
    "1E+999",
    "NaN",
    "Infinity",
    "-0",
    "0.0",
    "1" * 5000,
    "[" * 3000 + "]" * 3000,
    '{"a":' * 3000 + "1" + "}" * 3000,
)
SURROGATE_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=12)
ATOMS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([0, 1, -1, 255, 256, 2**32 - 1, 2**32, 2**63 - 1, 2**63, -(2**63), 10**30]),
    st.floats(),
    SURROGATE_TEXT,
    st.text(max_size=40),
    st.binary(max_size=70).map(b64e),
    st.binary(max_size=40).map(bytes.hex),
    st.binary(min_size=11, max_size=16).map(lambda b: b.hex(" ")[:32]),  # hex that fromhex reads shorter
    st.sampled_from(RAW_TOKENS).map(Raw),
)
JSON = st.recursive(
    ATOMS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(SURROGATE_TEXT, children, max_size=4),
    max_leaves=6,
)


def dumps(value: object) -> str:
    """JSON text of ``value``, Raw tokens verbatim, non-ASCII escaped (so lone surrogates survive)."""
    if isinstance(value, Raw):
        return value.token
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{dumps(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dumps(v) for v in value) + "]"
    if isinstance(value, float) and value != value:
        return "NaN"
    return json.dumps(value)


def inner_json(text: object) -> dict[str, Any] | None:
    """The JSON object a base64url string carries, if it carries one."""
    if not isinstance(text, str) or len(text) < 4:
        return None
    try:
        inner = b64d(text)
        return parse_json_object(inner, "inner") if inner.startswith(b"{") else None
    except SdquorumError:
        return None


@st.composite
def perturbed(draw: st.DrawFn, value: object, depth: int = 0) -> object:
    """``value`` with some parts kept, some replaced by random JSON, some dropped, some perturbed inside."""
    if isinstance(value, dict):
        out: dict[str, object] = {}
        for key, item in value.items():
            action = draw(st.sampled_from(("keep", "keep", "keep", "deeper", "random", "drop")))
            if action == "keep":
                out[key] = item
            elif action == "deeper":
                out[key] = draw(perturbed(item, depth + 1))
            elif action == "random":
                out[key] = draw(JSON)
        if draw(st.booleans()):
            out[draw(SURROGATE_TEXT)] = draw(JSON)
        return out
    if isinstance(value, list):
        items: list[object] = []
        for v in value:
            items.append(draw(perturbed(v, depth + 1)) if draw(st.booleans()) else v)
        if len(items) > 0 and draw(st.booleans()):
            i = draw(st.integers(0, len(items) - 1))
            if draw(st.booleans()):
                items.insert(i, items[i])
            else:
                del items[i]
        return items
    nested = inner_json(value)
    if nested is not None and depth < 3 and draw(st.booleans()):
        return b64e(dumps(draw(perturbed(nested, depth + 1))).encode())
    return draw(JSON)


def b64_paths(value: object, path: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Paths to every base64url string in ``value``; INNER steps into a base64url-carried JSON object."""
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in b64_paths(v, (*path, k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in b64_paths(v, (*path, i))]
    if not isinstance(value, str) or len(value) < 4:
        return []
    try:
        b64d(value)
    except SdquorumError:
        return []
    nested = inner_json(value)
    inner = [] if nested is None else [(*path, INNER, *p) for p in b64_paths(nested)]
    return [path, *inner]


INNER = object()


def replace_at(value: Any, path: tuple[object, ...], change: Callable[[str], str]) -> Any:
    if not path:
        return change(value)
    step, rest = path[0], path[1:]
    if step is INNER:
        inner = parse_json_object(b64d(value), "inner")
        return b64e(dumps(replace_at(inner, rest, change)).encode())
    copy: Any = dict(value) if isinstance(value, dict) else list(value)
    copy[step] = replace_at(value[step], rest, change)
    return copy


def der_positions(data: bytes, start: int = 0, end: int | None = None, depth: int = 0) -> list[int]:
    """Where a DER structure (a certificate) is fragile: each TLV's tag, length, first and last content
    byte, recursing into constructed values and into BIT/OCTET STRINGs that hold DER (extensions, keys)."""
    end = len(data) if end is None else end
    out: list[int] = []
    i = start
    while i + 2 <= end and depth < 12:
        tag, first = data[i], data[i + 1]
        n_len = first & 0x7F if first & 0x80 else 0
        length = int.from_bytes(data[i + 2 : i + 2 + n_len], "big") if n_len else first
        body = i + 2 + n_len
        if tag & 0x1F == 0x1F or body + length > end:
            return out  # not DER we can walk: what we have is enough
        out += [i, i + 1, body, body + length - 1] if length else [i, i + 1]
        if tag & 0x20:
            out += der_positions(data, body, body + length, depth + 1)
        elif tag in (0x03, 0x04) and length > 2:
            skip = 1 if tag == 0x03 else 0
            if data[body + skip] == 0x30:
                out += der_positions(data, body + skip, body + length, depth + 1)
        i = body + length
    return out


@st.composite
def one_byte_mutation(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with one byte replaced, inserted or deleted; in DER, mostly at a TLV's fragile bytes."""
    kind = draw(st.sampled_from(("replace", "insert", "delete") if data else ("insert",)))
    fragile = der_positions(data) if data[:1] == b"\x30" else []
    if kind == "replace" and fragile and draw(st.booleans()):
        i = draw(st.sampled_from(fragile))
        return data[:i] + bytes([draw(st.integers(0, 255))]) + data[i + 1 :]
    i = draw(st.integers(0, len(data) if kind == "insert" else len(data) - 1))
    if kind == "delete":
        return data[:i] + data[i + 1 :]
    byte = bytes([draw(st.integers(0, 255))])
    return data[:i] + byte + data[i + (kind == "replace") :]


@st.composite
def json_variant(
    draw: st.DrawFn, encodings: tuple[bytes, ...], make: Callable[[dict[str, Any]], st.SearchStrategy[Any]]
) -> bytes:
    """A valid encoding with one of its JSON lines (most have one) replaced by ``make(that object)``."""
    lines = draw(st.sampled_from(encodings)).decode().split("\n")
    i = draw(st.integers(0, len(lines) - 1))
    lines[i] = dumps(draw(make(json.loads(lines[i]))))
    return "\n".join(lines).encode()


def marker_fields(obj: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """The object's markers as they are; every other field random JSON, or absent."""
    kept = {k: st.just(v) for k, v in obj.items() if k in MARKERS}
    return st.fixed_dictionaries(kept, optional={k: JSON for k in obj if k not in MARKERS})


@st.composite
def inner_mutation(draw: st.DrawFn, obj: dict[str, Any]) -> Any:
    """The object with one byte of one base64url field's content mutated (at any depth)."""
    paths = b64_paths(obj)
    if not paths:
        return obj
    path = draw(st.sampled_from(paths))
    if path and path[-1] is INNER:
        path = path[:-1]
    mutated = draw(one_byte_mutation(b64d(_leaf(obj, path))))
    return replace_at(obj, path, lambda _old: b64e(mutated))


def _leaf(obj: Any, path: tuple[object, ...]) -> str:
    for step in path:
        obj = parse_json_object(b64d(obj), "inner") if step is INNER else obj[step]
    assert isinstance(obj, str)
    return obj


@contextlib.contextmanager
def only_project_errors() -> Iterator[None]:
    """A project error is an answer; anything else propagates and fails the test."""
    with contextlib.suppress(SdquorumError):
        yield


def fuzz(decoder: Decoder, ctx: Context, inputs: st.SearchStrategy[bytes], n: int) -> None:
    """Run the harness oracle on ``n`` inputs drawn from ``inputs``."""

    @fuzz_settings(examples(decoder, n))
    @given(inputs)
    def run(data: bytes) -> None:
        exercise(decoder, ctx, data)

    run()


# ------------------------------------------------------------------------------------ the samples


@by_decoder(list(DECODERS))
def test_every_sample_decodes(decoder: Decoder, samples: Samples, ctx: Context) -> None:
    """The mutation tests start from valid encodings: each sample decodes to a value."""
    assert samples.of(decoder.name), f"no valid sample for {decoder.name}: add one in fuzz/_samples.py"
    for data in samples.of(decoder.name):
        assert exercise(decoder, ctx, data, strict=True) is not None, data[:200]


# ---------------------------------------------------------------------------------- (a) arbitrary


@by_decoder(list(DECODERS))
def test_arbitrary_bytes(decoder: Decoder, ctx: Context) -> None:
    fuzz(decoder, ctx, st.binary(max_size=1024), 100)


@by_decoder(JSON_DECODERS)
def test_arbitrary_json(decoder: Decoder, ctx: Context) -> None:
    fuzz(decoder, ctx, JSON.map(lambda v: dumps(v).encode()), 60)


# --------------------------------------------------------------------------- (b) structure-aware


@by_decoder(JSON_DECODERS)
def test_markers_with_random_fields(decoder: Decoder, samples: Samples, ctx: Context) -> None:
    fuzz(decoder, ctx, json_variant(samples.of(decoder.name), marker_fields), 60)


@by_decoder(JSON_DECODERS)
def test_valid_encoding_perturbed(decoder: Decoder, samples: Samples, ctx: Context) -> None:
    fuzz(decoder, ctx, json_variant(samples.of(decoder.name), perturbed), 80)


# ---------------------------------------------------------------------------- (c) byte mutations


@by_decoder(list(DECODERS))
def test_one_byte_mutation(decoder: Decoder, samples: Samples, ctx: Context) -> None:
    fuzz(decoder, ctx, st.sampled_from(samples.of(decoder.name)).flatmap(one_byte_mutation), 150)


@by_decoder(JSON_DECODERS)
def test_one_byte_mutation_inside_a_base64_field(decoder: Decoder, samples: Samples, ctx: Context) -> None:
    fuzz(decoder, ctx, json_variant(samples.of(decoder.name), inner_mutation), 120)


# ------------------------------------------------------------------------ decoders' own arguments


SMALL_ORDER_AND_BAD_POINTS = [
    bytes(32),  # y = 0: small order
    b"\x01" + bytes(31),  # identity
    b"\xec" + b"\xff" * 30 + b"\x7f",  # y = p - 1: small order
    b"\xed" + b"\xff" * 30 + b"\x7f",  # y = p: non-canonical
    b"\xff" * 32,
    (2**255 - 19 + 1).to_bytes(32, "little"),  # non-canonical encoding of y = 1
]


@given(
    x=st.one_of(st.integers(), st.booleans(), st.sampled_from([0, 1, 255, 256, -1, 2**64])),
    data=st.one_of(
        st.binary(max_size=40),
        st.integers(0, 2**256 - 1).map(lambda y: y.to_bytes(32, "little")),
        st.sampled_from([(shamir.L - 1).to_bytes(32, "little"), shamir.L.to_bytes(32, "little")]),
    ),
)
@fuzz_settings(200)
def test_share_from_bytes_any_x(x: int, data: bytes) -> None:
    try:
        share = shamir.Share.from_bytes(x, data)
    except SdquorumError:
        return
    assert (share.x, share.to_bytes()) == (x, data)


@given(data=st.data())
@fuzz_settings(100)
def test_commitments_from_points_any_list(data: st.DataObject, samples: Samples) -> None:
    (encoded,) = samples.of("Commitments.from_points")
    valid = [encoded[i : i + 32] for i in range(0, len(encoded), 32)]
    element = st.one_of(
        st.sampled_from(valid),
        st.sampled_from(SMALL_ORDER_AND_BAD_POINTS),
        st.binary(min_size=31, max_size=33),
        st.one_of(st.none(), st.integers(), st.text(max_size=4)),
    )
    points: Any = data.draw(  # Any: a peer's list need not hold bytes
        st.one_of(
            st.lists(element, max_size=6),
            st.integers(250, 260).map(lambda n: valid[:1] * n),
            st.binary(max_size=64),  # one bytes value where a sequence of points is expected
        )
    )
    try:
        commitments = shamir.Commitments.from_points(points)
    except SdquorumError:
        return
    x = data.draw(st.integers(1, 255))
    with only_project_errors():
        commitments.public_share(x)


@given(
    value=st.one_of(
        JSON.map(lambda v: v.token if isinstance(v, Raw) else v), st.binary(max_size=20), SURROGATE_TEXT
    )
)
@fuzz_settings(200)
def test_b64d_any_object(value: object) -> None:
    try:
        out = b64d(value)
    except SdquorumError:
        return
    assert isinstance(value, str) and b64e(out) == value.rstrip("=")


def der_of(pem_or_der: bytes) -> bytes:
    return pki.load_cert(pem_or_der).public_bytes(serialization.Encoding.DER)


PKI_DECODERS = [d for d in DECODERS if d.family == "pki"]


@by_decoder(PKI_DECODERS)
def test_pem_armour_around_mutated_der(decoder: Decoder, samples: Samples, ctx: Context) -> None:
    ders = tuple(der_of(d) for d in samples.of(decoder.name))

    def armour(der: bytes, label: str, blocks: int) -> bytes:
        body = base64.encodebytes(der).decode()
        block = f"-----BEGIN {label}-----\n{body}-----END {label}-----\n"
        return (block * blocks).encode()

    pems = st.builds(
        armour,
        st.sampled_from(ders).flatmap(one_byte_mutation) | st.binary(max_size=300),
        st.sampled_from(["CERTIFICATE", "CERTIFICATE", "X509 CRL", "PRIVATE KEY"]),
        st.integers(1, 2),
    )
    fuzz(decoder, ctx, pems, 100)


@given(data=st.data())
@fuzz_settings(120)
def test_verify_export_any_lines(data: st.DataObject, samples: Samples) -> None:
    """Lines as str (the API), so a line may hold what no file decoding yields (a lone surrogate)."""
    (export,) = samples.of("verify_export")
    valid = export.decode().split("\n")
    line = st.one_of(st.sampled_from(valid), SURROGATE_TEXT, JSON.map(dumps), st.just(" "))
    lines = data.draw(st.one_of(st.lists(line, max_size=6), st.permutations(valid)))
    root = data.draw(st.booleans())
    ctx = samples.context
    try:
        if root:
            audit.verify_export(lines, root_pem=ctx.attestation_root_pem, now=ctx.now)
        else:
            audit.verify_export(lines)
    except SdquorumError:
        pass
    except Exception as e:
        if _harness.known_bug("verify_export", e) is None:
            raise


# ------------------------------------------------------------------------- bugs found, fixed, kept as regressions


F = TypeVar("F", bound=Callable[..., Any])
PINNED: set[str] = set()


def pinned(
    bug_id: str, raises: type[BaseException] | tuple[type[BaseException], ...], reason: str
) -> Callable[[F], F]:
    """A bug the fuzzers found, now fixed: its test stays as a regression test (it fails if ``raises``
    ever escapes again). A newly found bug is pinned as ``pytest.mark.xfail(strict=True, raises=...)``
    with a KNOWN_BUGS entry until it is fixed."""
    PINNED.add(bug_id)
    return lambda test: test


def test_every_tolerated_bug_is_pinned() -> None:
    """The harness tolerates only bugs a strict xfail test reproduces (and stops when it is fixed)."""
    assert {bug.id for bug in KNOWN_BUGS} <= PINNED, "add a pinned test for each KNOWN_BUGS id"


def patched(data: bytes, find: bytes, offset: int, value: int, occurrence: int = 0) -> bytes:
    """``data`` with the byte at ``offset`` from the ``occurrence``-th ``find`` set to ``value``."""
    i = -1
    for _ in range(occurrence + 1):
        i = data.index(find, i + 1)
    return data[: i + offset] + bytes([value]) + data[i + offset + 1 :]


VERSION_3 = bytes.fromhex("a003020102")  # [0] { INTEGER 2 }: X.509 v3
ED25519_OID = bytes.fromhex("06032b6570")
RSA_OID = bytes.fromhex("06092a864886f70d010101")
SKI_OID = bytes.fromhex("0603551d0e")  # SubjectKeyIdentifier; 2.5.29.15 (KeyUsage) is one more


def export_with_certificate(samples: Samples, der: bytes) -> list[str]:
    (export,) = samples.of("verify_export")
    lines = export.decode().split("\n")
    header = json.loads(lines[0])
    header["certificate"] = b64e(der)
    return [json.dumps(header), *lines[1:]]


@pinned(
    "audit-export-certificate-key",
    UnsupportedAlgorithm,
    "audit.verify_export (sdquorum/audit.py:170) calls pki.load_cert(cert_der).public_key() unguarded: a "
    "header certificate with a key algorithm cryptography does not know (here OID 1.3.101.114) raises "
    "cryptography.exceptions.UnsupportedAlgorithm, an unreadable key ValueError. Fix: catch "
    "(UnsupportedAlgorithm, ValueError) there and raise VerificationError.",
)
def test_bug_audit_export_with_an_unknown_key_algorithm(samples: Samples) -> None:
    node = der_of(samples.of("verify_attestation_chain")[0])
    unknown = patched(
        node, ED25519_OID, 4, 0x72, occurrence=1
    )  # the SPKI's OID; the first is the signature's
    with only_project_errors():
        audit.verify_export(export_with_certificate(samples, unknown))


@pinned(
    "load-cert-x400-name",
    x509.UnsupportedGeneralNameType,
    "pki.load_cert (sdquorum/pki.py:133) did not catch x509.UnsupportedGeneralNameType, which "
    "cryptography raises for an x400Address [3] or EDIPartyName [5] general name in an extension; "
    "atheris found it in a subject alternative name. Fix: add it to the caught exceptions.",
)
@pytest.mark.parametrize("tag", [0xA3, 0xA5], ids=["x400Address", "EDIPartyName"])
def test_bug_load_cert_with_an_x400_or_edi_party_name(tag: int) -> None:
    key = Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "x400")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder(name, name, key.public_key(), 1, now, now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("abc.example")]), critical=False)
        .sign(key, None)
        .public_bytes(serialization.Encoding.DER)
    )
    assert pki.load_cert(cert)  # the control: with the DNS name [2] it loads
    with only_project_errors(), pytest.raises(MalformedError):
        pki.load_cert(patched(cert, b"\x82\x0babc.example", 0, tag))


@pinned(
    "load-cert-invalid-version",
    x509.InvalidVersion,
    "pki.load_cert (sdquorum/pki.py:138-145) catches only ValueError, but cryptography raises "
    "x509.InvalidVersion (not a ValueError) for a version other than v1/v3; it reaches verify_export, "
    "verify_attestation_chain, role_from_cert and RotationProposal.names. Fix: catch "
    "(ValueError, x509.InvalidVersion).",
)
def test_bug_load_cert_with_version_10(samples: Samples) -> None:
    with only_project_errors():
        pki.load_cert(patched(samples.of("load_cert")[0], VERSION_3, 4, 0x0A))


@pinned(
    "load-cert-invalid-version",
    x509.InvalidVersion,
    "policy._load (sdquorum/policy.py:96-102), which validate_download uses on custodian certificates, "
    "catches only ValueError; a certificate with version 10 raises x509.InvalidVersion. Fix: catch "
    "(ValueError, x509.InvalidVersion) and raise its UsageError.",
)
def test_bug_validate_download_with_version_10(samples: Samples, ctx: Context) -> None:
    bad = patched(samples.of("validate_download")[0], VERSION_3, 4, 0x0A)
    with only_project_errors():
        policy.validate_download([bad, *ctx.wrapping_certs], 2, ctx.now)


@pinned(
    "load-cert-invalid-version",
    x509.InvalidVersion,
    "keys.rsa_public_key_of (sdquorum/keys.py:79-89; verify_pss and encrypt_oaep use it on slot "
    "certificates) catches only ValueError; version 10 raises x509.InvalidVersion. Fix: catch it too.",
)
def test_bug_rsa_public_key_of_with_version_10(samples: Samples) -> None:
    with only_project_errors():
        keys.rsa_public_key_of(patched(samples.of("rsa_public_key_of")[0], VERSION_3, 4, 0x0A))


@pinned(
    "rsa-public-key-unsupported",
    UnsupportedAlgorithm,
    "keys.rsa_public_key_of (sdquorum/keys.py:86) lets cert.public_key() raise "
    "cryptography.exceptions.UnsupportedAlgorithm for an unknown key algorithm (verify_pss, which "
    "promises a bool, does not catch it either). Fix: catch UnsupportedAlgorithm with ValueError.",
)
def test_bug_rsa_public_key_of_with_an_unknown_key_algorithm(samples: Samples) -> None:
    with only_project_errors():
        keys.rsa_public_key_of(patched(samples.of("rsa_public_key_of")[0], RSA_OID, 10, 0x7F))


@pinned(
    "validate-download-certificate-key",
    UnsupportedAlgorithm,
    "policy.validate_download (sdquorum/policy.py:63) calls cert.public_key() unguarded: a custodian "
    "certificate with an unknown key algorithm (here 1.2.840.113549.1.1.127) raises UnsupportedAlgorithm, "
    "an unreadable key ValueError. Fix: catch both and raise UsageError naming certificate #i.",
)
def test_bug_validate_download_with_an_unknown_key_algorithm(samples: Samples, ctx: Context) -> None:
    bad = patched(samples.of("validate_download")[0], RSA_OID, 10, 0x7F)
    with only_project_errors():
        policy.validate_download([bad, *ctx.wrapping_certs], 2, ctx.now)


def bad_subject(der: bytes, common_name: bytes, tag: int = 0x00) -> bytes:
    """``der`` with the subject CN's string tag (UTF8String) set to ``tag``: 0 does not parse
    (ValueError), BIT STRING (3) is refused for a CN (TypeError). The subject's CN is the last one."""
    cn = bytes([0x0C, len(common_name)]) + common_name
    return patched(der, cn, 0, tag, occurrence=der.count(cn) - 1)


@pinned(
    "load-cert-lazy-subject",
    (ValueError, TypeError),
    "cryptography parses a certificate's subject lazily, so pki.load_cert (sdquorum/pki.py:133) accepts a "
    "certificate whose subject does not parse and the error comes later (ValueError, or TypeError for a "
    "CN typed BIT STRING): RotationProposal.names (sdquorum/proposal.py:38) raises it from summary(), "
    "which custodian-agent respond prints. Fix: in load_cert, read cert.subject and cert.issuer inside "
    "the try and catch (ValueError, TypeError, x509.InvalidVersion).",
)
@pytest.mark.parametrize("tag", [0x00, 0x03], ids=["unknown-tag", "bit-string"])
def test_bug_rotation_proposal_summary_with_an_unparsable_subject(samples: Samples, tag: int) -> None:
    proposal = json.loads(samples.of("RotationProposal.from_bytes")[0])
    cert = bad_subject(b64d(proposal["custodians"][0]["certificate"]), b"alice", tag)
    proposal["custodians"][0]["certificate"] = b64e(cert)
    with only_project_errors():
        RotationProposal.from_bytes(canonical_json(proposal)).summary()


@pinned(
    "load-cert-lazy-subject",
    (ValueError, TypeError),
    "pki._extension (sdquorum/pki.py:472-475) formats its MalformedError with cert.subject, which raises "
    "ValueError when the subject does not parse either: role_from_cert of a certificate with a malformed "
    "SAN and subject raises ValueError. Fix: load_cert reads the subject up front (above), or the "
    "message leaves the subject out.",
)
def test_bug_role_from_cert_with_a_malformed_san_and_subject(samples: Samples) -> None:
    tls = der_of(samples.of("role_from_cert")[0])  # role admin
    bad_san = patched(tls, b"sdquorum://role/", -2, 0x83)  # URI [6] -> x400Address [3]
    with only_project_errors():
        pki.role_from_cert(bad_subject(bad_san, b"admin"))


@pinned(
    "load-cert-lazy-subject",
    (ValueError, TypeError),
    "policy._cn (sdquorum/policy.py:105-106) reads cert.subject to name a certificate that is expired or "
    "not yet valid; policy._load accepted a subject that does not parse, so validate_download raises "
    "ValueError instead of its UsageError. Fix: read the subject in _load's try (or in pki.load_cert, above).",
)
def test_bug_validate_download_with_an_expired_certificate_and_an_unparsable_subject(
    samples: Samples, ctx: Context
) -> None:
    cert = bad_subject(samples.of("validate_download")[0], b"alice")
    expired = patched(cert, b"\x17\x0d", 2, ord("0"), occurrence=1)  # notAfter (UTCTime) 20x6 -> 200x
    with only_project_errors():
        policy.validate_download([expired, *ctx.wrapping_certs], 2, ctx.now)


@pinned(
    "certificate-duplicate-extension",
    x509.DuplicateExtension,
    "pki._extension (sdquorum/pki.py:466-475) catches ExtensionNotFound and ValueError, but cryptography "
    "raises x509.DuplicateExtension (not a ValueError) for a certificate carrying one extension twice; "
    "role_from_cert and verify_attestation_chain (its root, or a leaf) let it escape. Fix: catch "
    "x509.DuplicateExtension there and raise MalformedError.",
)
def test_bug_role_from_cert_with_a_duplicate_extension(samples: Samples) -> None:
    tls = der_of(samples.of("role_from_cert")[0])
    with only_project_errors():
        pki.role_from_cert(patched(tls, SKI_OID, 4, 0x0F))  # SubjectKeyIdentifier -> a second KeyUsage


@pinned(
    "review-lone-surrogate",
    UnicodeEncodeError,
    "CustodyRecord.from_json accepts text holding a lone surrogate ('\\ud800', as json.loads in "
    "hsm_node/server.py:239 yields it): review.model._check_text (sdquorum/review/model.py) refuses Cc/Zl/Zp but not "
    "Cs. Node.add_custody_record then stores the record and fails writing its audit entry "
    "(canonical_json raises UnicodeEncodeError): a custody record without an audit entry. Fix: refuse "
    "category Cs in _check_text (and parse the request with encoding.parse_json).",
)
def test_bug_custody_record_with_a_lone_surrogate_cannot_be_audited() -> None:
    record = {"time": 1, "kind": "review", "custodian": None, "note": "Q3 \ud800"}
    with only_project_errors():
        canonical_json(CustodyRecord.from_json(record).to_json())  # what the node's audit entry signs


HEX_WITH_SPACES = "00 11 22 33 44 55 66 77 88 99 aa"  # 32 characters, 11 bytes


@pinned(
    "hex-whitespace",
    pytest.fail.Exception,
    "sdfile._hex (sdquorum/sdfile.py:440-446) checks len(text) == 32, then bytes.fromhex, which skips "
    "whitespace: '00 11 ... aa' (32 characters) is accepted as an 11-byte domain_id, which the header's "
    "own re-encoding (22 hex digits) then fails. Fix: require re.fullmatch('[0-9a-f]{32}') (or check the "
    "decoded length).",
)
def test_bug_header_domain_id_with_spaces_is_refused(samples: Samples) -> None:
    header = json.loads(samples.of("Header.from_bytes")[0])
    header["domain_id"] = HEX_WITH_SPACES
    with pytest.raises(MalformedError):
        Header.from_bytes(canonical_json(header))


@pinned(
    "hex-whitespace",
    pytest.fail.Exception,
    "envelopes._bytes_hex (sdquorum/envelopes.py:660-667) has the same gap as sdfile._hex: a statement's "
    "domain_id '00 11 ... aa' decodes to 11 bytes. Fix: as for sdfile._hex.",
)
def test_bug_statement_domain_id_with_spaces_is_refused(samples: Samples) -> None:
    statement = json.loads(samples.of("ExchangeStatement.from_bytes")[0])
    statement["domain_id"] = HEX_WITH_SPACES
    with pytest.raises(MalformedError):
        ExchangeStatement.from_bytes(canonical_json(statement))


def sealed_backup(secrets: DomainSecrets, body: bytes) -> bytes:
    """A version 1 backup whose (authentic) body is ``body``."""
    return backup_v1(secrets, body, 0)


@pinned(
    "backup-body-not-json",
    (json.JSONDecodeError, RecursionError, UnicodeDecodeError),
    "backup.open_backup (sdquorum/backup.py:128) parses the authenticated body with json.loads: a body "
    "that is not JSON raises JSONDecodeError (deep nesting RecursionError, bad UTF-8 "
    "UnicodeDecodeError). Only a holder of the domain's keys can make one, so no fuzzer reaches it. Fix: "
    "encoding.parse_json(body, 'backup body').",
)
@pytest.mark.parametrize("body", [b"not json", b"[" * 100_000, b"\xff"], ids=["text", "deep", "not-utf8"])
def test_bug_backup_with_an_authentic_body_that_is_not_json(ctx: Context, body: bytes) -> None:
    with only_project_errors():
        backup.open_backup(sealed_backup(ctx.backup_secrets, body), ctx.backup_secrets)
