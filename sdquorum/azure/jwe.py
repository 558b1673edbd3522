"""Compact JWE (RFC 7516) for exactly the two shapes Azure security domains use, and nothing else.

* Shares and wrapped keys: ``{"alg":"RSA-OAEP-256","enc":"A256CBC-HS512"}``, optionally with a
  ``kid`` string (the Azure CLI writes ``"kid":"not used"``): a random 64-byte content key wrapped
  with RSA-OAEP (SHA-256, MGF1-SHA-256, empty label) to a certificate. Decryption goes through a
  :class:`~sdquorum.keys.WrappingKey` handle's ``decrypt(ciphertext, label=b"")``, so a key in a
  PKCS#11 token works exactly as a key in a file.
* EncData items: ``{"alg":"dir","enc":"A256CBC-HS512","kid":<tag>}``, an empty encrypted-key part,
  the content key given by the caller (derived with :mod:`sdquorum.azure.kdf`).

Strict where the Azure CLI is lenient; :func:`parse_compact` refuses, as :class:`MalformedError`:

* any alg but RSA-OAEP-256 and dir (so RSA1_5 and RSA-OAEP with SHA-1 are refused), any enc but
  A256CBC-HS512, any header member but alg, enc and kid (so ``crit``, ``zip``, ``jku``, ``jwk``,
  ``x5u``, ... are refused, and no critical extension can sneak in), non-string members, duplicate
  members, a header that is not a UTF-8 JSON object;
* anything but five parts of canonical, unpadded base64url (no ``=``, no stray trailing bits);
* an IV that is not 16 bytes, a tag that is not 32 bytes (a truncated tag is refused, never compared
  as a prefix), a ciphertext that is not a non-empty whole number of AES blocks, a non-empty
  encrypted key with dir or an empty one with RSA-OAEP-256.

Decryption failures are :class:`VerificationError` with a single message ("the JWE does not
decrypt with this key"), whether the RSA step, the content-key length or the tag failed. The AAD is
the protected header exactly as received (ASCII), which equals our own encoding because only
canonical base64url is accepted.

Why not a JOSE library (issue 7, item 0): ``joserfc`` 1.8 and ``jwcrypto`` 1.6 were both tried.

* Neither can route the RSA step through a key handle: both call ``decrypt(ciphertext, padding)`` on
  a ``cryptography`` private-key object held inside their key type (``joserfc`` ``RSAKey``,
  ``jwcrypto`` ``JWK``). A PKCS#11 token offers no such object; the only way in would be a custom
  algorithm registered in ``joserfc``'s process-global ``JWERegistry.algorithms`` class dictionary
  with a dummy key to satisfy its key lookup, i.e. our own RSA code inside their internals.
* ``jwcrypto`` accepts RSA-OAEP (SHA-1) by default and non-canonical base64url (stray trailing bits
  in the tag); ``joserfc`` accepts unrequested header members (``jku``, ``cty``) and refuses
  ciphertexts above 64 KiB unless its registry class is subclassed.

So the framing and header policy here are ours (short and fully tested), and A256CBC-HS512 is
:mod:`sdquorum.azure.a256cbc` on ``cryptography`` primitives, checked against every Wycheproof
A256CBC-HS512 vector and, in the tests, against ``joserfc`` as an independent implementation.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sdquorum.azure import a256cbc
from sdquorum.encoding import b64d, b64e, canonical_json
from sdquorum.errors import MalformedError, UsageError, VerificationError
from sdquorum.fields import json_object
from sdquorum.keys import WrappingKey, encrypt_oaep, rsa_public_key_of
from sdquorum.shamir import Rng

__all__ = [
    "ALG_DIR",
    "ALG_RSA_OAEP_256",
    "CONTENT_KEY_BYTES",
    "ENC_A256CBC_HS512",
    "MAX_COMPACT_CHARS",
    "MIN_RSA_BITS",
    "CompactJwe",
    "decrypt_direct",
    "decrypt_with_key",
    "encrypt_direct",
    "encrypt_to_certificate",
    "parse_compact",
    "parse_json_object_strict",
]

ALG_RSA_OAEP_256 = "RSA-OAEP-256"
ALG_DIR = "dir"
ENC_A256CBC_HS512 = "A256CBC-HS512"
CONTENT_KEY_BYTES = a256cbc.KEY_BYTES
MAX_COMPACT_CHARS = 16 * 1024 * 1024
MIN_RSA_BITS = 2048
_MEMBERS = {ALG_RSA_OAEP_256: ({"alg", "enc"}, {"kid"}), ALG_DIR: ({"alg", "enc", "kid"}, set())}
_FAILED = "the JWE does not decrypt with this key"


def parse_json_object_strict(data: bytes | str, what: str) -> dict[str, Any]:
    """A JSON object from UTF-8 ``data``; MalformedError for anything else, including duplicate
    members, floats, NaN/Infinity and lone surrogates (what parses can be written back)."""

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj: dict[str, Any] = {}
        for name, value in pairs:
            if name in obj:
                raise ValueError(f"duplicate member {name!r}")
            obj[name] = value
        return obj

    def no_float(text: str) -> Any:
        raise ValueError(f"non-integer number {text[:20]}")

    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        obj = json.loads(text, object_pairs_hook=no_duplicates, parse_float=no_float, parse_constant=no_float)
        canonical_json(obj)  # refuses lone surrogates
    except (UnicodeError, ValueError, RecursionError) as e:
        raise MalformedError(f"{what} is not valid JSON (UTF-8, no duplicate members, integers only)") from e
    return json_object(obj, what)


def _b64d_part(part: str, what: str) -> bytes:
    if "=" in part:
        raise MalformedError(f"JWE {what} is padded: compact JWE uses unpadded base64url")
    return b64d(part, f"JWE {what}")


@dataclass(frozen=True)
class CompactJwe:
    """A parsed compact JWE of one of the two accepted shapes (see the module invariants)."""

    protected: str
    """The protected-header segment exactly as received: the AAD."""
    header: Mapping[str, str]
    encrypted_key: bytes
    iv: bytes
    ciphertext: bytes = field(repr=False)
    tag: bytes

    @property
    def alg(self) -> str:
        return self.header["alg"]

    @property
    def kid(self) -> str | None:
        return self.header.get("kid")

    def to_compact(self) -> str:
        parts = (self.encrypted_key, self.iv, self.ciphertext, self.tag)
        return ".".join([self.protected, *(b64e(p) for p in parts)])


def parse_compact(token: object) -> CompactJwe:
    """Parse and check the structure of a compact JWE; decrypts nothing."""
    if not isinstance(token, str) or not token.isascii():
        raise MalformedError("a compact JWE must be an ASCII string")
    if len(token) > MAX_COMPACT_CHARS:
        raise MalformedError(f"a compact JWE is longer than {MAX_COMPACT_CHARS} characters")
    parts = token.split(".")
    if len(parts) != 5:
        raise MalformedError(f"a compact JWE has 5 dot-separated parts, got {len(parts)}")
    protected, ek_part, iv_part, ct_part, tag_part = parts
    header = parse_json_object_strict(_b64d_part(protected, "protected header"), "JWE protected header")
    for name, value in header.items():
        if not isinstance(value, str):
            raise MalformedError(f"JWE header member {name!r} must be a string")
    alg, enc = header.get("alg"), header.get("enc")
    if alg not in _MEMBERS:
        raise MalformedError(
            f"JWE alg {alg!r} is refused: only {ALG_RSA_OAEP_256} and {ALG_DIR} are accepted"
        )
    if enc != ENC_A256CBC_HS512:
        raise MalformedError(f"JWE enc {enc!r} is refused: only {ENC_A256CBC_HS512} is accepted")
    required, optional = _MEMBERS[alg]
    present = set(header)
    if not required <= present or present - required - optional:
        allowed = ", ".join(sorted(required | optional))
        raise MalformedError(
            f"JWE header for {alg} must have exactly the members {allowed} ({sorted(present)})"
        )
    encrypted_key = _b64d_part(ek_part, "encrypted key")
    iv = _b64d_part(iv_part, "IV")
    ciphertext = _b64d_part(ct_part, "ciphertext")
    tag = _b64d_part(tag_part, "tag")
    if (alg == ALG_DIR) != (not encrypted_key):
        raise MalformedError(f"JWE with alg {alg} has {'an' if encrypted_key else 'no'} encrypted key")
    if len(iv) != a256cbc.IV_BYTES:
        raise MalformedError(f"JWE IV must be {a256cbc.IV_BYTES} bytes, got {len(iv)}")
    if len(tag) != a256cbc.TAG_BYTES:
        raise MalformedError(f"JWE tag must be {a256cbc.TAG_BYTES} bytes, got {len(tag)}")
    if not ciphertext or len(ciphertext) % a256cbc.BLOCK_BYTES:
        raise MalformedError("JWE ciphertext must be a non-empty whole number of AES blocks")
    return CompactJwe(protected, header, encrypted_key, iv, ciphertext, tag)


def _encode_header(header: dict[str, str]) -> str:
    try:
        return b64e(canonical_json(header))
    except (UnicodeError, ValueError) as e:
        raise UsageError("JWE header values must be valid Unicode (no lone surrogates)") from e


def _seal(header: dict[str, str], encrypted_key: bytes, cek: bytes, plaintext: bytes, rng: Rng) -> str:
    iv = rng(a256cbc.IV_BYTES)
    if not isinstance(iv, bytes) or len(iv) != a256cbc.IV_BYTES:
        raise UsageError(
            f"rng must return exactly {a256cbc.IV_BYTES} bytes when asked for {a256cbc.IV_BYTES}"
        )
    protected = _encode_header(header)
    ciphertext, tag = a256cbc.encrypt(cek, iv, plaintext, protected.encode("ascii"))
    return CompactJwe(protected, header, encrypted_key, iv, ciphertext, tag).to_compact()


def _open(jwe: CompactJwe, cek: bytes) -> bytes:
    try:
        return a256cbc.decrypt(cek, jwe.iv, jwe.ciphertext, jwe.tag, jwe.protected.encode("ascii"))
    except VerificationError as e:
        raise VerificationError(_FAILED) from e


def encrypt_to_certificate(plaintext: bytes, certificate: bytes, rng: Rng, *, kid: str | None = None) -> str:
    """RSA-OAEP-256 / A256CBC-HS512 compact JWE of ``plaintext`` to ``certificate`` (DER or PEM).

    The content key and IV come from ``rng``; the OAEP seed comes from OpenSSL inside ``cryptography``.
    """
    if rsa_public_key_of(certificate).key_size < MIN_RSA_BITS:
        raise UsageError(f"the certificate's RSA key is shorter than {MIN_RSA_BITS} bits: use a larger key")
    header = {"alg": ALG_RSA_OAEP_256, "enc": ENC_A256CBC_HS512}
    if kid is not None:
        if not isinstance(kid, str):
            raise UsageError("a JWE kid is a string")
        header["kid"] = kid
    cek = rng(CONTENT_KEY_BYTES)
    if not isinstance(cek, bytes) or len(cek) != CONTENT_KEY_BYTES:
        raise UsageError(
            f"rng must return exactly {CONTENT_KEY_BYTES} bytes when asked for {CONTENT_KEY_BYTES}"
        )
    return _seal(header, encrypt_oaep(certificate, cek, b""), cek, plaintext, rng)


def decrypt_with_key(token: object, key: WrappingKey) -> bytes:
    """Decrypt an RSA-OAEP-256 / A256CBC-HS512 compact JWE with a wrapping-key handle.

    MalformedError if it is not one (dir included); VerificationError if it does not decrypt.
    """
    jwe = parse_compact(token)
    if jwe.alg != ALG_RSA_OAEP_256:
        raise MalformedError(f"expected a JWE with alg {ALG_RSA_OAEP_256}, got {jwe.alg}")
    try:
        cek = key.decrypt(jwe.encrypted_key, b"")
    except VerificationError as e:
        raise VerificationError(_FAILED) from e
    if len(cek) != CONTENT_KEY_BYTES:
        raise VerificationError(_FAILED)
    return _open(jwe, cek)


def encrypt_direct(plaintext: bytes, cek: bytes, kid: str, rng: Rng) -> str:
    """dir / A256CBC-HS512 compact JWE of ``plaintext`` under the 64-byte ``cek``, header kid ``kid``."""
    if not isinstance(kid, str) or not kid:
        raise UsageError("a dir JWE needs a non-empty kid")
    if not isinstance(cek, bytes) or len(cek) != CONTENT_KEY_BYTES:
        raise UsageError(f"an A256CBC-HS512 content key is {CONTENT_KEY_BYTES} bytes")
    return _seal({"alg": ALG_DIR, "enc": ENC_A256CBC_HS512, "kid": kid}, b"", cek, plaintext, rng)


def decrypt_direct(token: object, cek: bytes, kid: str) -> bytes:
    """Decrypt a dir / A256CBC-HS512 compact JWE whose header kid must be exactly ``kid``."""
    jwe = parse_compact(token)
    if jwe.alg != ALG_DIR:
        raise MalformedError(f"expected a JWE with alg {ALG_DIR}, got {jwe.alg}")
    if jwe.kid != kid:
        raise MalformedError(f"JWE kid {jwe.kid!r} does not name this item ({kid!r})")
    if not isinstance(cek, bytes) or len(cek) != CONTENT_KEY_BYTES:
        raise UsageError(f"an A256CBC-HS512 content key is {CONTENT_KEY_BYTES} bytes")
    return _open(jwe, cek)
