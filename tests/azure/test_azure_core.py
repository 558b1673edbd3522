"""The Azure security-domain core: A256CBC-HS512, sp108_kdf, GF(257) shares, strict JWE, v2 files,
transfer files, and the host-side OAEP decoder that lets a PKCS#11 key stand in for a key file.

Files come from ``azure_sd_generator`` (written from the format description, importing nothing from
sdquorum) as well as from the code under test, and go both ways.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import Any

import azure_sd_generator as gen
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from sdquorum.azure import a256cbc, gf257, jwe, kdf
from sdquorum.azure.sdfile import (
    WRAPPED_KEY_KID,
    AzureSecurityDomain,
    TransferFile,
    combine_master_key,
    decrypt_items,
    decrypt_share,
    make_transfer_file,
    open_transfer_file,
    seal_azure_domain,
    x5t_256,
)
from sdquorum.errors import MalformedError, NotFoundError, SdquorumError, UsageError, VerificationError
from sdquorum.keys import SoftwareWrappingKey, oaep_sha256, pss_sha256, verify_pss
from sdquorum.oaep import DECRYPTION_FAILED, RawRsaWrappingKey, oaep_decode, rsa_oaep_decrypt

FAST = settings(max_examples=40, deadline=None)
ITEMS = [("sd-item-one", b"first item plaintext"), ("sd-item-two", os.urandom(300)), ("empty", b"")]
KeyPair = tuple[rsa.RSAPrivateKey, bytes]


def flip(data: bytes, i: int, mask: int = 0x01) -> bytes:
    return data[:i] + bytes([data[i] ^ mask]) + data[i + 1 :]


def raw_op_of(key: rsa.RSAPrivateKey) -> Callable[[bytes], bytes]:
    """The raw private operation c -> c^d mod n (by the CRT), as a token's CKM_RSA_X_509 does it."""
    numbers = key.private_numbers()
    k = key.key_size // 8

    def op(ciphertext: bytes) -> bytes:
        c = int.from_bytes(ciphertext, "big")
        m1, m2 = pow(c, numbers.dmp1, numbers.p), pow(c, numbers.dmq1, numbers.q)
        return (m2 + numbers.iqmp * (m1 - m2) % numbers.p * numbers.q).to_bytes(k, "big")

    return op


def raw_key_of(pair: KeyPair) -> RawRsaWrappingKey:
    key, der = pair
    return RawRsaWrappingKey(raw_op_of(key), der, lambda m: key.sign(m, pss_sha256(), hashes.SHA256()))


def self_signed(key: rsa.RSAPrivateKey, now: datetime) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now.replace(year=now.year + 1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


@pytest.fixture(scope="module")
def custodians(wrapping_private_keys: list[KeyPair]) -> list[KeyPair]:
    return wrapping_private_keys[:5]


@pytest.fixture(scope="module")
def handles(wrapping_keys: list[SoftwareWrappingKey]) -> list[SoftwareWrappingKey]:
    return wrapping_keys[:5]


@pytest.fixture(scope="module")
def exchange(wrapping_private_keys: list[KeyPair]) -> KeyPair:
    """The HSM's exchange key (from init-recovery); any RSA key with a certificate plays it."""
    return wrapping_private_keys[5]


@pytest.fixture(scope="module")
def generated(custodians: list[KeyPair]) -> gen.Generated:
    """A 3-of-5 file made by the independent generator."""
    return gen.make_sd_file([der for _, der in custodians], 3, ITEMS)


# ============================================================================ A256CBC-HS512


@FAST
@given(plaintext=st.binary(max_size=100), aad=st.binary(max_size=100))
def test_a256cbc_round_trip(plaintext: bytes, aad: bytes) -> None:
    key, iv = os.urandom(64), os.urandom(16)
    ct, tag = a256cbc.encrypt(key, iv, plaintext, aad)
    assert len(tag) == 32 and len(ct) == (len(plaintext) // 16 + 1) * 16
    assert a256cbc.decrypt(key, iv, ct, tag, aad) == plaintext


def test_a256cbc_refuses_every_flipped_bit() -> None:
    key, iv, aad = os.urandom(64), os.urandom(16), b"header"
    ct, tag = a256cbc.encrypt(key, iv, b"some plaintext of two blocks", aad)
    for what in ("iv", "ct", "tag", "aad"):
        parts = {"iv": iv, "ct": ct, "tag": tag, "aad": aad}
        for i in range(len(parts[what])):
            for mask in (0x01, 0x80):
                parts_flipped = dict(parts, **{what: flip(parts[what], i, mask)})
                with pytest.raises(VerificationError):
                    a256cbc.decrypt(
                        key,
                        parts_flipped["iv"],
                        parts_flipped["ct"],
                        parts_flipped["tag"],
                        parts_flipped["aad"],
                    )


@pytest.mark.parametrize("tag_len", [0, 16, 24, 31, 33, 64])
def test_a256cbc_refuses_a_tag_that_is_not_32_bytes(tag_len: int) -> None:
    """A truncated tag is refused outright: never compared as a prefix of the real one."""
    key, iv = os.urandom(64), os.urandom(16)
    ct, tag = a256cbc.encrypt(key, iv, b"x", b"")
    full = hmac.new(key[:32], iv + ct + (0).to_bytes(8, "big"), hashlib.sha512).digest()
    assert full[:32] == tag
    with pytest.raises(MalformedError, match="tag must be 32 bytes"):
        a256cbc.decrypt(key, iv, ct, full[:tag_len], b"")


def test_a256cbc_refuses_bad_lengths() -> None:
    key, iv = os.urandom(64), os.urandom(16)
    ct, tag = a256cbc.encrypt(key, iv, b"x", b"")
    for bad_iv in (iv[:12], iv + b"\0"):
        with pytest.raises(MalformedError):
            a256cbc.decrypt(key, bad_iv, ct, tag, b"")
    for bad_ct in (b"", ct[:15], ct + b"\0"):
        with pytest.raises(MalformedError):
            a256cbc.decrypt(key, iv, bad_ct, tag, b"")
    for bad_key in (key[:32], key + b"\0"):
        with pytest.raises(UsageError):
            a256cbc.decrypt(bad_key, iv, ct, tag, b"")
        with pytest.raises(UsageError):
            a256cbc.encrypt(bad_key, iv, b"x", b"")


def test_a256cbc_uses_the_first_half_for_the_mac_and_the_second_for_aes() -> None:
    """RFC 7518 5.2.2.1: MAC_KEY = K[:32], ENC_KEY = K[32:]; swapping the halves must not verify."""
    key, iv = os.urandom(64), os.urandom(16)
    ct, tag = a256cbc.encrypt(key, iv, b"plaintext", b"aad")
    with pytest.raises(VerificationError):
        a256cbc.decrypt(key[32:] + key[:32], iv, ct, tag, b"aad")


# ============================================================================ sp108_kdf


@FAST
@given(master=st.binary(min_size=32, max_size=32), tag=st.text(min_size=1, max_size=40))
def test_kdf_is_the_issue_formula(master: bytes, tag: str) -> None:
    """HMAC-SHA512(master, be32(1) || tag || 0x00 || context("") || be32(512)), 64 bytes."""
    formula = hmac.new(
        master,
        (1).to_bytes(4, "big") + tag.encode() + b"\x00" + b"" + (512).to_bytes(4, "big"),
        hashlib.sha512,
    ).digest()
    assert kdf.derive_item_key(master, tag) == formula == gen.item_key(master, tag)


def test_kdf_matches_the_azure_cli_self_test_value() -> None:
    """The Azure CLI's sp800_108 self-test: key 0x41 * 32, label "label", context "context", 256 bits."""
    out = kdf.sp800_108_hmac_sha512(b"\x41" * 32, b"label", b"context", 32)
    assert out.hex() == "f0ca51f6308791404bf68b56024ee7c64d6c737716f81d47e1e68b5c4e399575"


def test_kdf_refuses_caller_mistakes() -> None:
    for master, tag in ((b"\0" * 31, "t"), (b"\0" * 64, "t"), (b"\0" * 32, ""), (b"\0" * 32, "\ud800")):
        with pytest.raises(UsageError):
            kdf.derive_item_key(master, tag)


# ============================================================================ GF(257) shares


def test_share_word_layout() -> None:
    """Little-endian uint16 words (x << 9) | y."""
    share = gf257.Share(x=3, ys=(5, 256, 0))
    assert share.to_bytes() == bytes([0x05, 0x06, 0x00, 0x07, 0x00, 0x06])
    assert gf257.Share.from_bytes(share.to_bytes()) == share
    assert "256" not in repr(share)


@FAST
@given(
    secret=st.binary(min_size=1, max_size=40),
    m=st.integers(2, 6),
    extra=st.integers(0, 4),
    data=st.data(),
)
def test_any_m_of_n_shares_reconstruct(secret: bytes, m: int, extra: int, data: st.DataObject) -> None:
    n = m + extra
    shares = gf257.split(secret, m, n, os.urandom)
    assert [s.x for s in shares] == list(range(1, n + 1))
    chosen = data.draw(st.permutations(shares))[:m]
    assert gf257.combine(chosen, m) == secret
    assert gf257.combine([gf257.Share.from_bytes(s.to_bytes()) for s in chosen], m) == secret
    assert gen.gf257_combine([s.to_bytes() for s in chosen]) == secret


def test_generator_shares_combine_with_ours() -> None:
    secret = os.urandom(32)
    shares = gen.gf257_split(secret, 3, [4, 1, 5], os.urandom)
    assert gf257.combine([gf257.Share.from_bytes(s) for s in shares], 3) == secret


def test_coefficients_are_uniform_over_gf257_zero_included() -> None:
    """Every 2-byte draw maps to each of the 257 elements exactly 255 times (0xffff is redrawn):
    so y = s + a*x is uniform whatever the secret byte s, and m-1 shares say nothing about it."""
    draws = iter(range(0x10000))

    def rng(k: int) -> bytes:
        return next(draws).to_bytes(k, "big")

    counts = Counter(gf257._random_element(rng) for _ in range(0xFFFF))
    assert set(counts) == set(range(257)) and set(counts.values()) == {255}
    redrawn = iter([0xFFFF, 0xFFFF, 7])
    assert gf257._random_element(lambda k: next(redrawn).to_bytes(k, "big")) == 7


def test_fewer_than_m_shares_are_refused() -> None:
    shares = gf257.split(b"secret", 3, 5, os.urandom)
    with pytest.raises(VerificationError, match="2 Azure shares given, 3 needed"):
        gf257.combine(shares[:2], 3)


def _word(x: int, y: int) -> bytes:
    return ((x << 9) | y).to_bytes(2, "little")


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("empty", b""),
        ("odd length", _word(1, 5) + b"\x01"),
        ("x = 0", _word(0, 5) + _word(0, 6)),
        ("x = 127 (out of range)", _word(127, 5)),
        ("words with different x", _word(1, 5) + _word(2, 6)),
        ("y = 257", _word(1, 257)),
        ("y = 511", _word(1, 511)),
    ],
)
def test_share_bytes_refused(name: str, data: bytes) -> None:
    with pytest.raises(MalformedError):
        gf257.Share.from_bytes(data)


@pytest.mark.parametrize(
    ("name", "shares", "message"),
    [
        ("x = 0", [gf257.Share(0, (1,)), gf257.Share(2, (1,))], "x=0"),
        ("x out of range", [gf257.Share(1, (1,)), gf257.Share(127, (1,))], "x=127"),
        ("duplicate x", [gf257.Share(2, (1,)), gf257.Share(2, (1,))], "x=2 appears twice"),
        ("mismatched lengths", [gf257.Share(1, (1, 2)), gf257.Share(2, (1,))], "x=2 has 1 values"),
        ("y > 256", [gf257.Share(1, (300,)), gf257.Share(2, (1,))], "outside GF"),
        ("not a byte", [gf257.Share(1, (256,)), gf257.Share(2, (256,))], "not a byte"),
    ],
)
def test_combine_refuses(name: str, shares: list[gf257.Share], message: str) -> None:
    with pytest.raises(VerificationError, match=message):
        gf257.combine(shares, 2)


def test_split_refuses_caller_mistakes() -> None:
    for secret, m, n in ((b"", 2, 3), (b"s", 1, 3), (b"s", 4, 3), (b"s", 2, 127)):
        with pytest.raises(UsageError):
            gf257.split(secret, m, n, os.urandom)
    with pytest.raises(UsageError):
        gf257.split(b"s", 2, 3, lambda k: b"\xff" * k)
    with pytest.raises(UsageError):
        gf257.combine([gf257.Share(1, (1,))], 1)


# ============================================================================ JWE


def test_jwe_round_trip_to_a_certificate(
    handles: list[SoftwareWrappingKey], custodians: list[KeyPair]
) -> None:
    token = jwe.encrypt_to_certificate(b"payload", handles[0].certificate_der(), os.urandom)
    parsed = jwe.parse_compact(token)
    assert dict(parsed.header) == {"alg": "RSA-OAEP-256", "enc": "A256CBC-HS512"}
    assert parsed.to_compact() == token
    assert jwe.decrypt_with_key(token, handles[0]) == b"payload"
    assert jwe.decrypt_with_key(token, raw_key_of(custodians[0])) == b"payload"
    assert gen.jwe_from_key(token, custodians[0][0]) == b"payload"


def test_jwe_from_the_generator_decrypts(
    handles: list[SoftwareWrappingKey], custodians: list[KeyPair]
) -> None:
    public = custodians[1][0].public_key()
    for extra in (None, {"kid": "not used"}):
        token = gen.jwe_to_key(b"from elsewhere", public, extra_header=extra)
        assert jwe.decrypt_with_key(token, handles[1]) == b"from elsewhere"


def test_jwe_to_another_key_does_not_decrypt(
    handles: list[SoftwareWrappingKey], custodians: list[KeyPair]
) -> None:
    token = jwe.encrypt_to_certificate(b"payload", handles[0].certificate_der(), os.urandom)
    for wrong in (handles[1], raw_key_of(custodians[1])):
        with pytest.raises(VerificationError, match="does not decrypt with this key"):
            jwe.decrypt_with_key(token, wrong)


def test_jwe_content_key_of_the_wrong_length_is_refused(
    handles: list[SoftwareWrappingKey], custodians: list[KeyPair]
) -> None:
    protected = gen.b64url(b'{"alg":"RSA-OAEP-256","enc":"A256CBC-HS512"}')
    short_cek = os.urandom(32)
    ek = custodians[0][0].public_key().encrypt(short_cek, oaep_sha256(b""))
    iv = os.urandom(16)
    ct, tag = a256cbc.encrypt(short_cek * 2, iv, b"x", protected.encode())
    token = ".".join([protected, *(gen.b64url(p) for p in (ek, iv, ct, tag))])
    with pytest.raises(VerificationError, match="does not decrypt with this key"):
        jwe.decrypt_with_key(token, handles[0])


def test_jwe_direct_round_trip_and_kid() -> None:
    cek = os.urandom(64)
    token = jwe.encrypt_direct(b"item", cek, "the-tag", os.urandom)
    assert dict(jwe.parse_compact(token).header) == {"alg": "dir", "enc": "A256CBC-HS512", "kid": "the-tag"}
    assert token.split(".")[1] == ""
    assert jwe.decrypt_direct(token, cek, "the-tag") == b"item"
    assert gen.jwe_from_direct(token, cek, "the-tag") == b"item"
    assert jwe.decrypt_direct(gen.jwe_direct(b"gen", cek, "k"), cek, "k") == b"gen"
    with pytest.raises(MalformedError, match="kid"):
        jwe.decrypt_direct(token, cek, "another-tag")
    with pytest.raises(VerificationError):
        jwe.decrypt_direct(token, os.urandom(64), "the-tag")


def _rsa_token(custodians: list[KeyPair], **kw: Any) -> str:
    return gen.jwe_to_key(b"share", custodians[0][0].public_key(), **kw)


def _with_header(token: str, header: bytes) -> str:
    return ".".join([gen.b64url(header), *token.split(".")[1:]])


def _with_part(token: str, index: int, value: str) -> str:
    parts = token.split(".")
    parts[index] = value
    return ".".join(parts)


def _b64_with_stray_bits(data: bytes) -> str:
    """A base64url text that decodes to ``data`` but is not canonical (stray trailing bits set)."""
    text = gen.b64url(data)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    assert len(data) % 3, "needs a partial final group"
    return text[:-1] + alphabet[alphabet.index(text[-1]) | 1]


JWE_REFUSALS: list[tuple[str, Callable[[list[KeyPair]], str], str]] = [
    ("RSA1_5", lambda c: _rsa_token(c, alg="RSA1_5"), "'RSA1_5' is refused"),
    ("RSA-OAEP (SHA-1)", lambda c: _rsa_token(c, alg="RSA-OAEP"), "'RSA-OAEP' is refused"),
    ("truncated tag (16 bytes)", lambda c: _rsa_token(c, tag_bytes=16), "tag must be 32 bytes"),
    ("full HMAC as tag (64 bytes)", lambda c: _rsa_token(c, tag_bytes=64), "tag must be 32 bytes"),
    ("crit", lambda c: _rsa_token(c, extra_header={"crit": "exp"}), "exactly the members"),
    ("zip", lambda c: _rsa_token(c, extra_header={"zip": "DEF"}), "exactly the members"),
    ("jku", lambda c: _rsa_token(c, extra_header={"jku": "https://example.invalid"}), "exactly the members"),
    ("x5t#S256", lambda c: _rsa_token(c, extra_header={"x5t#S256": "AAAA"}), "exactly the members"),
    (
        "other enc",
        lambda c: _with_header(_rsa_token(c), b'{"alg":"RSA-OAEP-256","enc":"A128CBC-HS256"}'),
        "enc",
    ),
    ("no enc", lambda c: _with_header(_rsa_token(c), b'{"alg":"RSA-OAEP-256"}'), "enc"),
    ("alg none", lambda c: _with_header(_rsa_token(c), b'{"alg":"none","enc":"A256CBC-HS512"}'), "'none'"),
    (
        "kid not a string",
        lambda c: _with_header(_rsa_token(c), b'{"alg":"RSA-OAEP-256","enc":"A256CBC-HS512","kid":1}'),
        "string",
    ),
    (
        "duplicate member",
        lambda c: _with_header(_rsa_token(c), b'{"alg":"RSA1_5","alg":"RSA-OAEP-256","enc":"A256CBC-HS512"}'),
        "JSON",
    ),
    ("header not an object", lambda c: _with_header(_rsa_token(c), b'["RSA-OAEP-256"]'), "object"),
    ("header not UTF-8", lambda c: _with_header(_rsa_token(c), b'{"alg":"\xff"}'), "JSON"),
    (
        "dir without kid",
        lambda c: _with_part(
            gen.jwe_direct(b"x", os.urandom(64), "k"), 0, gen.b64url(b'{"alg":"dir","enc":"A256CBC-HS512"}')
        ),
        "exactly the members",
    ),
    (
        "dir with an encrypted key",
        lambda c: _with_part(gen.jwe_direct(b"x", os.urandom(64), "k"), 1, "AAAA"),
        "encrypted key",
    ),
    ("RSA without an encrypted key", lambda c: _with_part(_rsa_token(c), 1, ""), "encrypted key"),
    (
        "padded base64url",
        lambda c: _with_part(_rsa_token(c), 2, _rsa_token(c).split(".")[2] + "=="),
        "padded",
    ),
    (
        "stray bits in the tag",
        lambda c: _with_part(_rsa_token(c), 4, _b64_with_stray_bits(os.urandom(32))),
        "canonical",
    ),
    ("not base64url", lambda c: _with_part(_rsa_token(c), 3, "a+b/"), "base64url"),
    ("12-byte IV", lambda c: _with_part(_rsa_token(c), 2, gen.b64url(os.urandom(12))), "IV must be 16 bytes"),
    ("empty ciphertext", lambda c: _with_part(_rsa_token(c), 3, ""), "ciphertext"),
    (
        "ciphertext not whole blocks",
        lambda c: _with_part(_rsa_token(c), 3, gen.b64url(os.urandom(17))),
        "ciphertext",
    ),
    ("4 parts", lambda c: _rsa_token(c).rsplit(".", 1)[0], "5 dot-separated parts"),
    ("6 parts", lambda c: _rsa_token(c) + ".AAAA", "5 dot-separated parts"),
    ("non-ASCII", lambda c: _rsa_token(c) + "é", "ASCII"),
]


@pytest.mark.parametrize(("name", "make", "message"), JWE_REFUSALS, ids=[r[0] for r in JWE_REFUSALS])
def test_jwe_refusals(
    name: str,
    make: Callable[[list[KeyPair]], str],
    message: str,
    custodians: list[KeyPair],
    handles: list[SoftwareWrappingKey],
) -> None:
    token = make(custodians)
    with pytest.raises(MalformedError, match=message):
        jwe.parse_compact(token)
    with pytest.raises(MalformedError):
        jwe.decrypt_with_key(token, handles[0])


def test_jwe_shape_must_fit_the_call(handles: list[SoftwareWrappingKey]) -> None:
    cek = os.urandom(64)
    direct = jwe.encrypt_direct(b"x", cek, "k", os.urandom)
    with pytest.raises(MalformedError, match="RSA-OAEP-256"):
        jwe.decrypt_with_key(direct, handles[0])
    wrapped = jwe.encrypt_to_certificate(b"x", handles[0].certificate_der(), os.urandom)
    with pytest.raises(MalformedError, match="dir"):
        jwe.decrypt_direct(wrapped, cek, "k")


@pytest.fixture(scope="module")
def short_key_cert(now: datetime) -> bytes:
    """A certificate for a 1024-bit RSA key: only to show that such a key is refused."""
    return self_signed(rsa.generate_private_key(public_exponent=65537, key_size=1024), now)  # noqa: S505


def test_jwe_refuses_short_rsa_keys(short_key_cert: bytes) -> None:
    with pytest.raises(UsageError, match="2048"):
        jwe.encrypt_to_certificate(b"x", short_key_cert, os.urandom)


@FAST
@given(st.text(max_size=300))
def test_jwe_parser_raises_only_malformed(token: str) -> None:
    with contextlib.suppress(MalformedError):
        jwe.parse_compact(token)


@FAST
@given(st.binary(max_size=200))
def test_jwe_parser_on_arbitrary_headers(header: bytes) -> None:
    token = ".".join(
        [gen.b64url(header), "", gen.b64url(b"\0" * 16), gen.b64url(b"\0" * 16), gen.b64url(b"\0" * 32)]
    )
    with contextlib.suppress(MalformedError):
        jwe.parse_compact(token)


def test_jwe_interoperates_with_joserfc(
    handles: list[SoftwareWrappingKey], custodians: list[KeyPair]
) -> None:
    """joserfc (a maintained JOSE library) as an independent implementation, both directions."""
    joserfc_jwe = pytest.importorskip("joserfc.jwe")
    from joserfc.jwk import OctKey, RSAKey

    algs = ["RSA-OAEP-256", "A256CBC-HS512"]
    private = RSAKey.import_key(custodians[0][0])
    theirs = joserfc_jwe.encrypt_compact(
        {"alg": "RSA-OAEP-256", "enc": "A256CBC-HS512"}, b"joserfc", private, algorithms=algs
    )
    assert jwe.decrypt_with_key(theirs, handles[0]) == b"joserfc"
    ours = jwe.encrypt_to_certificate(b"ours", handles[0].certificate_der(), os.urandom)
    assert joserfc_jwe.decrypt_compact(ours, private, algorithms=algs).plaintext == b"ours"

    cek = os.urandom(64)
    dir_algs = ["dir", "A256CBC-HS512"]
    theirs = joserfc_jwe.encrypt_compact(
        {"alg": "dir", "enc": "A256CBC-HS512", "kid": "t"}, b"d", OctKey.import_key(cek), algorithms=dir_algs
    )
    assert jwe.decrypt_direct(theirs, cek, "t") == b"d"
    ours = jwe.encrypt_direct(b"o", cek, "t", os.urandom)
    assert joserfc_jwe.decrypt_compact(ours, OctKey.import_key(cek), algorithms=dir_algs).plaintext == b"o"


# ============================================================================ host-side OAEP


@pytest.fixture(scope="module", params=[2048, 3072])
def oaep_key(request: pytest.FixtureRequest, now: datetime) -> KeyPair:
    key = rsa.generate_private_key(public_exponent=65537, key_size=request.param)
    return key, self_signed(key, now)


@settings(max_examples=25, deadline=None)
@given(data=st.data(), label=st.binary(max_size=64))
def test_oaep_decodes_what_cryptography_encrypts(
    oaep_key: KeyPair, data: st.DataObject, label: bytes
) -> None:
    key, _ = oaep_key
    message = data.draw(st.binary(max_size=key.key_size // 8 - 66))
    ciphertext = key.public_key().encrypt(message, oaep_sha256(label))
    assert raw_key_of(oaep_key).decrypt(ciphertext, label) == message
    em = raw_op_of(key)(ciphertext)
    assert oaep_decode(em, key.key_size // 8, label) == message
    with pytest.raises(VerificationError, match=DECRYPTION_FAILED):
        raw_key_of(oaep_key).decrypt(ciphertext, label + b"x")


def test_oaep_with_and_without_labels(oaep_key: KeyPair) -> None:
    key, der = oaep_key
    handle = raw_key_of(oaep_key)
    for label in (b"", b"sdquorum share v1|label"):
        ciphertext = key.public_key().encrypt(b"m", oaep_sha256(label))
        assert handle.decrypt(ciphertext, label) == b"m"
        assert SoftwareWrappingKey(key, der).decrypt(ciphertext, label) == b"m"


def _oaep_encode(
    message: bytes,
    k: int,
    label: bytes,
    *,
    y: int = 0,
    lhash: bytes | None = None,
    ps_tail: bytes = b"",
    sep: int = 1,
) -> bytes:
    """An EME-OAEP block (RFC 8017 7.1.1 step 2) with chosen defects."""
    h = hashlib.sha256(label).digest() if lhash is None else lhash
    ps = b"\x00" * (k - len(message) - 2 * 32 - 2 - len(ps_tail)) + ps_tail
    db = h + ps + bytes([sep]) + message
    seed = os.urandom(32)

    def mgf1(s: bytes, n: int) -> bytes:
        return b"".join(hashlib.sha256(s + i.to_bytes(4, "big")).digest() for i in range(-(-n // 32)))[:n]

    masked_db = bytes(a ^ b for a, b in zip(db, mgf1(seed, k - 33), strict=True))
    masked_seed = bytes(a ^ b for a, b in zip(seed, mgf1(masked_db, 32), strict=True))
    return bytes([y]) + masked_seed + masked_db


@pytest.mark.parametrize(
    ("name", "defects"),
    [
        ("leading byte 1", {"y": 1}),
        ("leading byte 0x80", {"y": 0x80}),
        ("label hash wrong", {"lhash": b"\x00" * 32}),
        ("separator 0x02", {"sep": 2}),
        ("separator 0x00 (none found)", {"sep": 0}),
        ("non-zero byte in the padding", {"ps_tail": b"\x07\x00"}),
        ("0xff before the separator", {"ps_tail": b"\xff"}),
    ],
)
def test_oaep_every_failure_is_the_same_error(name: str, defects: dict[str, Any]) -> None:
    """One type, one message: the decoder tells nothing about which check failed."""
    k = 256
    em = _oaep_encode(b"msg", k, b"lbl", **defects)
    with pytest.raises(VerificationError) as e:
        oaep_decode(em, k, b"lbl")
    assert type(e.value) is VerificationError and str(e.value) == DECRYPTION_FAILED
    assert oaep_decode(_oaep_encode(b"msg", k, b"lbl"), k, b"lbl") == b"msg"


def test_oaep_decode_edges() -> None:
    k = 256
    assert oaep_decode(_oaep_encode(b"", k, b""), k, b"") == b""
    longest = os.urandom(k - 66)
    assert oaep_decode(_oaep_encode(longest, k, b""), k, b"") == longest
    for em, kk in ((b"\0" * 255, 256), (b"\0" * 65, 65), (b"", 0)):
        with pytest.raises(VerificationError, match=DECRYPTION_FAILED):
            oaep_decode(em, kk, b"")


def test_oaep_ciphertext_out_of_range_never_reaches_the_token(oaep_key: KeyPair) -> None:
    key, der = oaep_key
    n, k = key.public_key().public_numbers().n, key.key_size // 8
    calls: list[bytes] = []

    def op(c: bytes) -> bytes:
        calls.append(c)
        return raw_op_of(key)(c)

    handle = RawRsaWrappingKey(op, der, lambda m: b"")
    for bad in (
        (0).to_bytes(k, "big"),
        (1).to_bytes(k, "big"),
        (n - 1).to_bytes(k, "big"),
        n.to_bytes(k, "big"),
        (n + 1).to_bytes(k, "big"),
        b"\x01" * (k - 1),
        b"\x00" + b"\x01" * k,
        b"",
    ):
        with pytest.raises(VerificationError, match=DECRYPTION_FAILED):
            handle.decrypt(bad, b"")
    assert calls == []


def test_oaep_token_output_without_leading_zeros(oaep_key: KeyPair) -> None:
    """Some tokens strip the leading zero bytes of c^d mod n: the block is restored to k bytes."""
    key, der = oaep_key
    handle = RawRsaWrappingKey(lambda c: raw_op_of(key)(c).lstrip(b"\x00"), der, lambda m: b"")
    ciphertext = key.public_key().encrypt(b"stripped", oaep_sha256(b"l"))
    assert handle.decrypt(ciphertext, b"l") == b"stripped"
    too_long = RawRsaWrappingKey(lambda c: b"\x00" + raw_op_of(key)(c), der, lambda m: b"")
    with pytest.raises(VerificationError, match=DECRYPTION_FAILED):
        too_long.decrypt(ciphertext, b"l")


def test_raw_key_handle_signs_and_names_its_certificate(custodians: list[KeyPair]) -> None:
    handle = raw_key_of(custodians[0])
    assert handle.certificate_der() == custodians[0][1]
    assert verify_pss(custodians[0][1], b"release", handle.sign(b"release"))


def test_rsa_oaep_decrypt_refuses_non_bytes(custodians: list[KeyPair]) -> None:
    with pytest.raises(UsageError):
        rsa_oaep_decrypt("text", custodians[0][0].public_key(), raw_op_of(custodians[0][0]), b"")  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        oaep_decode(b"\0" * 256, 256, "label")  # type: ignore[arg-type]


# ============================================================================ SD files


def test_generator_file_restores_with_our_code(
    generated: gen.Generated, handles: list[SoftwareWrappingKey], custodians: list[KeyPair]
) -> None:
    sd = AzureSecurityDomain.from_bytes(generated.data)
    assert sd.required == 3 and sd.n == 5 and [d.tag for d in sd.data] == [t for t, _ in ITEMS]
    # custodians 2, 4 and 5 serve; the one at index 3 holds its key "in a token" (raw op + host OAEP)
    served = [
        decrypt_share(sd, handles[1]),
        decrypt_share(sd, raw_key_of(custodians[3])),
        decrypt_share(sd, handles[4]),
    ]
    assert [s.x for s in served] == [2, 4, 5]
    assert [s.to_bytes() for s in served] == [generated.shares[i] for i in (1, 3, 4)]
    master = combine_master_key(sd, served)
    assert master == generated.master_key
    assert decrypt_items(sd.data, master) == ITEMS


def test_full_restore_generator_file_to_generator_readable_transfer_file(
    generated: gen.Generated, handles: list[SoftwareWrappingKey], exchange: KeyPair
) -> None:
    sd = AzureSecurityDomain.from_bytes(generated.data)
    master = combine_master_key(sd, [decrypt_share(sd, h) for h in handles[2:5]])
    tf = make_transfer_file(decrypt_items(sd.data, master), exchange[1], os.urandom)
    data = tf.to_bytes()
    assert gen.open_transfer_file(data, exchange[0], exchange[1]) == ITEMS
    document = json.loads(data)
    assert set(document) == {"EncData", "WrappedKey"} and document["EncData"]["kdf"] == "sp108_kdf"
    assert document["WrappedKey"]["x5t_256"] == gen.thumbprint(exchange[1])
    header = json.loads(base64.urlsafe_b64decode(document["WrappedKey"]["enc_key"].split(".")[0] + "=="))
    assert header == {"alg": "RSA-OAEP-256", "enc": "A256CBC-HS512", "kid": WRAPPED_KEY_KID}
    new_master = gen.jwe_from_key(document["WrappedKey"]["enc_key"], exchange[0])
    assert len(new_master) == 32 and new_master != generated.master_key  # a fresh master key
    assert [d["tag"] for d in document["EncData"]["data"]] == [t for t, _ in ITEMS]
    assert TransferFile.from_bytes(data) == tf


def test_generator_transfer_file_opens_with_ours(
    exchange: KeyPair, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    data = gen.make_transfer_file(ITEMS, exchange[1])
    assert open_transfer_file(TransferFile.from_bytes(data), wrapping_keys[5]) == ITEMS
    with pytest.raises(NotFoundError):
        open_transfer_file(TransferFile.from_bytes(data), wrapping_keys[0])


def test_our_sd_file_restores_with_the_generator(
    custodians: list[KeyPair], handles: list[SoftwareWrappingKey]
) -> None:
    """--format azure: a file we write is read by a restore we did not write (every wrapping key given)."""
    sd = seal_azure_domain(ITEMS, [der for _, der in custodians], 3, os.urandom)
    data = sd.to_bytes()
    assert AzureSecurityDomain.from_bytes(data) == sd
    assert gen.open_sd_file(data, custodians[1:4]) == ITEMS
    assert gen.open_sd_file(data, [custodians[4], custodians[0], custodians[2]]) == ITEMS
    document = json.loads(data)
    assert document["version"] == 2 and document["SharedKeys"]["key_algorithm"] == "shamir_share"
    assert [s["x5t_256"] for s in document["SharedKeys"]["enc_shares"]] == [
        gen.thumbprint(d) for _, d in custodians
    ]
    shares = [decrypt_share(sd, h) for h in handles]
    assert [s.x for s in shares] == [1, 2, 3, 4, 5]
    assert decrypt_items(sd.data, combine_master_key(sd, shares[::-2])) == ITEMS


def test_sd_file_bytes_round_trip(generated: gen.Generated) -> None:
    sd = AzureSecurityDomain.from_bytes(generated.data)
    again = AzureSecurityDomain.from_bytes(sd.to_bytes())
    assert again == sd and again.to_bytes() == sd.to_bytes()


def test_share_is_found_by_certificate_thumbprint(
    generated: gen.Generated, custodians: list[KeyPair], exchange: KeyPair
) -> None:
    sd = AzureSecurityDomain.from_bytes(generated.data)
    pem = x509.load_der_x509_certificate(custodians[2][1]).public_bytes(serialization.Encoding.PEM)
    assert sd.share_for(pem) == sd.share_for(custodians[2][1]) == sd.shares[2]
    assert x5t_256(pem) == hashlib.sha256(custodians[2][1]).digest()
    with pytest.raises(NotFoundError):
        sd.share_for(exchange[1])


# ---------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("name", "knobs", "message"),
    [
        ("RSA1_5 shares", {"share_alg": "RSA1_5"}, "'RSA1_5' is refused"),
        ("RSA-OAEP (SHA-1) shares", {"share_alg": "RSA-OAEP"}, "'RSA-OAEP' is refused"),
        ("16-byte share tags", {"share_tag_bytes": 16}, "tag must be 32 bytes"),
        ("16-byte EncData tags", {"item_tag_bytes": 16}, "tag must be 32 bytes"),
        ("crit in the share header", {"share_header_extra": {"crit": "x"}}, "exactly the members"),
    ],
)
def test_generator_files_refused_at_parse(
    name: str, knobs: dict[str, Any], message: str, custodians: list[KeyPair]
) -> None:
    made = gen.make_sd_file([der for _, der in custodians[:3]], 2, ITEMS[:1], **knobs)
    with pytest.raises(MalformedError, match=message):
        AzureSecurityDomain.from_bytes(made.data)


def test_share_with_x_0_is_refused(custodians: list[KeyPair], handles: list[SoftwareWrappingKey]) -> None:
    made = gen.make_sd_file([der for _, der in custodians[:3]], 2, ITEMS[:1], xs=[0, 2, 3])
    sd = AzureSecurityDomain.from_bytes(made.data)
    with pytest.raises(MalformedError, match="x=0"):
        decrypt_share(sd, handles[0])
    assert decrypt_share(sd, handles[1]).x == 2


def test_share_with_x_beyond_n_is_refused(
    custodians: list[KeyPair], handles: list[SoftwareWrappingKey]
) -> None:
    made = gen.make_sd_file([der for _, der in custodians[:3]], 2, ITEMS[:1], xs=[1, 2, 9])
    sd = AzureSecurityDomain.from_bytes(made.data)
    with pytest.raises(MalformedError, match="x=9"):
        decrypt_share(sd, handles[2])


def test_duplicate_x_is_refused(custodians: list[KeyPair], handles: list[SoftwareWrappingKey]) -> None:
    made = gen.make_sd_file([der for _, der in custodians[:3]], 2, ITEMS[:1], xs=[1, 1, 3])
    sd = AzureSecurityDomain.from_bytes(made.data)
    shares = [decrypt_share(sd, h) for h in handles[:3]]
    with pytest.raises(VerificationError, match="x=1 appears twice"):
        combine_master_key(sd, shares)
    assert decrypt_items(sd.data, combine_master_key(sd, shares[1:])) == ITEMS[:1]


def test_a_share_from_another_domain_fails_the_encdata_macs(
    custodians: list[KeyPair], handles: list[SoftwareWrappingKey]
) -> None:
    ders = [der for _, der in custodians[:3]]
    a = AzureSecurityDomain.from_bytes(gen.make_sd_file(ders, 2, ITEMS).data)
    b = AzureSecurityDomain.from_bytes(gen.make_sd_file(ders, 2, ITEMS).data)
    # Shares of two domains combine to a wrong key (the MACs fail) or to a value outside a byte (refused).
    with pytest.raises(VerificationError):
        master = combine_master_key(a, [decrypt_share(a, handles[0]), decrypt_share(b, handles[1])])
        decrypt_items(a.data, master)


def test_combine_master_key_checks_against_the_file(generated: gen.Generated) -> None:
    sd = AzureSecurityDomain.from_bytes(generated.data)
    with pytest.raises(VerificationError, match=r"outside 1\.\.5"):
        combine_master_key(
            sd, [gf257.Share(6, (1,) * 32), gf257.Share(1, (1,) * 32), gf257.Share(2, (1,) * 32)]
        )
    with pytest.raises(VerificationError, match="32-byte key"):
        combine_master_key(sd, [gf257.Share(x, (1,) * 16) for x in (1, 2, 3)])
    with pytest.raises(VerificationError, match="2 Azure shares given, 3 needed"):
        combine_master_key(sd, [gf257.Share(x, (1,) * 32) for x in (1, 2)])


class CachingKey:
    """A WrappingKey that remembers decryptions, so the flip test does each RSA operation once."""

    def __init__(self, key: SoftwareWrappingKey) -> None:
        self._key = key
        self._cache: dict[tuple[bytes, bytes], bytes | VerificationError] = {}

    def certificate_der(self) -> bytes:
        return self._key.certificate_der()

    def decrypt(self, ciphertext: bytes, label: bytes) -> bytes:
        if (ciphertext, label) not in self._cache:
            try:
                self._cache[ciphertext, label] = self._key.decrypt(ciphertext, label)
            except VerificationError as e:
                self._cache[ciphertext, label] = e
        result = self._cache[ciphertext, label]
        if isinstance(result, VerificationError):
            raise VerificationError(str(result))
        return result

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)


def test_a_flipped_bit_anywhere_is_refused_with_a_project_error(
    custodians: list[KeyPair], handles: list[SoftwareWrappingKey]
) -> None:
    """Every byte of a 3-of-3 generator file, flipped two ways: parse, decrypt every share, combine,
    open every item. Each must fail with an sdquorum error (and nothing else ever escapes)."""
    made = gen.make_sd_file([der for _, der in custodians[:3]], 3, [("t", b"item")])
    keys = [CachingKey(h) for h in handles[:3]]

    def restore(data: bytes) -> list[tuple[str, bytes]]:
        sd = AzureSecurityDomain.from_bytes(data)
        shares = [decrypt_share(sd, k) for k in keys]
        return decrypt_items(sd.data, combine_master_key(sd, shares))

    assert restore(made.data) == [("t", b"item")]
    accepted, escaped = [], []
    for i in range(len(made.data)):
        for mask in (0x01, 0x20):
            try:
                restore(flip(made.data, i, mask))
                accepted.append((i, mask))
            except SdquorumError:
                pass
            except Exception as e:  # the point: nothing but project errors
                escaped.append((i, mask, repr(e)))
    assert escaped == []
    assert accepted == []


def test_a_flipped_bit_anywhere_in_a_transfer_file_is_refused(
    exchange: KeyPair, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    data = make_transfer_file([("t", b"item")], exchange[1], os.urandom).to_bytes()
    key = CachingKey(wrapping_keys[5])
    for i in range(len(data)):
        with pytest.raises(SdquorumError):
            open_transfer_file(TransferFile.from_bytes(flip(data, i)), key)


def _mutated(generated: gen.Generated, change: Callable[[dict[str, Any]], object]) -> bytes:
    document = json.loads(generated.data)
    change(document)
    return json.dumps(document).encode()


STRUCTURE_REFUSALS: list[tuple[str, Callable[[dict[str, Any]], object]]] = [
    ("extra top-level member", lambda d: d.update(extra=1)),
    ("version 3", lambda d: d.update(version=3)),
    ("version as a string", lambda d: d.update(version="2")),
    ("version true", lambda d: d.update(version=True)),
    ("no version", lambda d: d.pop("version")),
    ("other kdf", lambda d: d["EncData"].update(kdf="hkdf")),
    ("other key algorithm", lambda d: d["SharedKeys"].update(key_algorithm="xor")),
    ("required 1", lambda d: d["SharedKeys"].update(required=1)),
    ("required above n", lambda d: d["SharedKeys"].update(required=6)),
    ("required as a string", lambda d: d["SharedKeys"].update(required="3")),
    ("required false", lambda d: d["SharedKeys"].update(required=False)),
    ("no shares", lambda d: d["SharedKeys"].update(enc_shares=[])),
    (
        "same certificate twice",
        lambda d: d["SharedKeys"]["enc_shares"][1].update(
            x5t_256=d["SharedKeys"]["enc_shares"][0]["x5t_256"]
        ),
    ),
    ("31-byte thumbprint", lambda d: d["SharedKeys"]["enc_shares"][0].update(x5t_256=gen.b64url(b"\0" * 31))),
    ("extra share member", lambda d: d["SharedKeys"]["enc_shares"][0].update(x5c="AAAA")),
    ("share enc_key not a string", lambda d: d["SharedKeys"]["enc_shares"][0].update(enc_key=1)),
    (
        "a dir JWE as a share",
        lambda d: d["SharedKeys"]["enc_shares"][0].update(enc_key=d["EncData"]["data"][0]["compact_jwe"]),
    ),
    (
        "an RSA JWE as an item",
        lambda d: d["EncData"]["data"][0].update(compact_jwe=d["SharedKeys"]["enc_shares"][0]["enc_key"]),
    ),
    (
        "item kid is another item's tag",
        lambda d: d["EncData"]["data"][0].update(tag=d["EncData"]["data"][1]["tag"]),
    ),
    ("empty tag", lambda d: d["EncData"]["data"][0].update(tag="")),
    ("no items", lambda d: d["EncData"].update(data=[])),
    ("items not a list", lambda d: d["EncData"].update(data={})),
    ("SharedKeys not an object", lambda d: d.update(SharedKeys=[])),
]


@pytest.mark.parametrize(("name", "change"), STRUCTURE_REFUSALS, ids=[r[0] for r in STRUCTURE_REFUSALS])
def test_structure_refusals(
    name: str, change: Callable[[dict[str, Any]], object], generated: gen.Generated
) -> None:
    with pytest.raises(MalformedError):
        AzureSecurityDomain.from_bytes(_mutated(generated, change))


@pytest.mark.parametrize(
    "data",
    [b"", b"[]", b"not json", b'{"version": 2.0}', b'{"version": NaN}', b"\xff\xfe", b'{"a": 1, "a": 2}'],
)
def test_not_a_file_is_malformed(data: bytes) -> None:
    with pytest.raises(MalformedError):
        AzureSecurityDomain.from_bytes(data)
    with pytest.raises(MalformedError):
        TransferFile.from_bytes(data)


def test_duplicate_member_is_refused(generated: gen.Generated) -> None:
    text = generated.data.decode()
    doubled = text.replace('"version": 2', '"version": 2, "version": 2')
    assert doubled != text
    with pytest.raises(MalformedError, match="duplicate"):
        AzureSecurityDomain.from_bytes(doubled.encode())


def test_size_limit(generated: gen.Generated) -> None:
    with pytest.raises(MalformedError, match="larger than"):
        AzureSecurityDomain.from_bytes(generated.data, max_bytes=len(generated.data) - 1)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_parsers_raise_only_malformed_on_arbitrary_bytes(data: bytes) -> None:
    for parse in (AzureSecurityDomain.from_bytes, TransferFile.from_bytes):
        with contextlib.suppress(MalformedError):
            parse(data)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(
    enc_data=JSON_VALUES | st.fixed_dictionaries({"data": JSON_VALUES, "kdf": st.just("sp108_kdf")}),
    shared=JSON_VALUES
    | st.fixed_dictionaries(
        {"enc_shares": JSON_VALUES, "key_algorithm": st.just("shamir_share"), "required": JSON_VALUES}
    ),
)
def test_parser_raises_only_malformed_on_arbitrary_json(enc_data: object, shared: object) -> None:
    data = json.dumps({"EncData": enc_data, "SharedKeys": shared, "version": 2}).encode()
    with pytest.raises(MalformedError):
        AzureSecurityDomain.from_bytes(data)


def test_seal_refuses_caller_mistakes(custodians: list[KeyPair], short_key_cert: bytes) -> None:
    ders = [der for _, der in custodians[:3]]
    for m, certs in ((1, ders), (4, ders), (2, [ders[0], ders[1], ders[0]])):
        with pytest.raises(UsageError):
            seal_azure_domain(ITEMS, certs, m, os.urandom)
    with pytest.raises(UsageError):
        seal_azure_domain([], ders, 2, os.urandom)
    with pytest.raises(UsageError):
        seal_azure_domain([("bad\x00tag", b"")], ders, 2, os.urandom)
    with pytest.raises(UsageError, match="2048"):
        seal_azure_domain(ITEMS, [*ders[:2], short_key_cert], 2, os.urandom)
    with pytest.raises(MalformedError):
        seal_azure_domain(ITEMS, [*ders[:2], b"not a certificate"], 2, os.urandom)


def test_an_agent_that_pins_domain_keys_serves_an_azure_domain_only_when_it_names_it(
    node_attestation: Any, wrapping_keys: list[Any], attestation_root: Any, now: datetime, t0: int
) -> None:
    """An Azure file is signed by no domain key, so a pin can never be met by it: an agent that
    pins serves an Azure domain only if its configuration allows that domain by id."""
    from custodian_agent import responder
    from sdquorum import pki
    from sdquorum.azure.ceremony import azure_domain_id
    from sdquorum.envelopes import CustodianPolicy, ExchangeStatement
    from sdquorum.errors import VerificationError
    from sdquorum.offline import CeremonyRequest

    sd = gen.make_sd_file([k.certificate_der() for k in wrapping_keys[:3]], 2, [("x", b"y")]).data
    domain = azure_domain_id(sd)
    st = ExchangeStatement(
        "s1", "azure-recovery", "node-b", "b:1", domain, 0, hashlib.sha256(sd).digest(), os.urandom(32),
        t0, t0 + 600, "admin", "DR", destination_certificate=wrapping_keys[5].certificate_der(),
    )  # fmt: skip
    req = CeremonyRequest(
        "ab" * 8, "s1", "azure-recovery", 1, "", node_attestation.sign(st).to_bytes(), sd, b""
    )
    mine = pki.thumbprint_sha256(wrapping_keys[0].certificate_der())
    pinned = frozenset({b"\x01" * 32})
    with pytest.raises(VerificationError, match="pins domain signing keys"):
        responder.check(
            req,
            mine,
            CustodianPolicy(attestation_root.cert_pem, pinned_signing_keys=pinned, azure_restore=True),
            now,
        )
    allowed = CustodianPolicy(
        attestation_root.cert_pem,
        allowed_domains=frozenset({domain}),
        pinned_signing_keys=pinned,
        azure_restore=True,
    )
    assert responder.answer(req, responder.check(req, mine, allowed, now), wrapping_keys[0], os.urandom)


@given(st.binary(min_size=1, max_size=40), st.integers(2, 6), st.data())
@settings(max_examples=60, deadline=None)
def test_every_honest_share_lies_on_any_m_others_and_a_changed_one_does_not(
    secret: bytes, m: int, data: st.DataObject
) -> None:
    """What names a wrong Azure share once m others have opened the file."""
    n = data.draw(st.integers(m + 1, 8))
    shares = gf257.split(secret, m, n, os.urandom)
    used = list(data.draw(st.permutations(shares)))[:m]
    for s in shares:
        assert gf257.lies_on(s, used)
        if s in used:
            continue  # a share of the set itself always lies on it
        i = data.draw(st.integers(0, len(s.ys) - 1))
        changed = gf257.Share(s.x, tuple((y + 1) % gf257.PRIME if j == i else y for j, y in enumerate(s.ys)))
        assert not gf257.lies_on(changed, used)
