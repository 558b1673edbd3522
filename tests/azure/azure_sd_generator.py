"""An independent maker and reader of Azure security-domain files (version 2) and transfer files.

Written from the format description in issue 7 alone, on ``cryptography`` and the standard library,
importing nothing from ``sdquorum``: its JWE, A256CBC-HS512, GF(257) sharing and SP 800-108 KDF are its
own. Tests use it so that the code under test reads files it did not make, and its transfer files are
read by code it did not write. Knobs make the malformed files the parser must refuse (other RSA
paddings, short tags, chosen share indices, extra header members).

The format, as the issue gives it:

* File: {"EncData": {"data": [{"compact_jwe", "tag"}...], "kdf": "sp108_kdf"}, "SharedKeys":
  {"enc_shares": [{"enc_key", "x5t_256"}...], "key_algorithm": "shamir_share", "required": m},
  "version": 2}; base64url without padding throughout; x5t_256 = SHA-256 of the certificate DER.
* Shares: JWE {"alg":"RSA-OAEP-256","enc":"A256CBC-HS512"}, random 64-byte CEK under RSA-OAEP
  (SHA-256, MGF1-SHA-256); MAC key = CEK[:32], AES key = CEK[32:], 16-byte IV, PKCS#7, tag = first 32
  bytes of HMAC-SHA512(ASCII header || IV || ciphertext || 64-bit big-endian AAD bit length).
* Share plaintext: little-endian uint16 words (x << 9) | y, Shamir over GF(257) per byte of the
  32-byte master key, the secret at x = 0.
* EncData: JWE {"alg":"dir","enc":"A256CBC-HS512","kid":tag}, empty key part, CEK =
  HMAC-SHA512(master, be32(1) || tag || 0x00 || "" || be32(512)).
* Transfer file: {"EncData": {...}, "WrappedKey": {"enc_key": JWE of the new master key to the
  exchange certificate, "x5t_256": its thumbprint}}.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.asymmetric import padding as rsa_padding
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.x509 import load_der_x509_certificate

Rng = Callable[[int], bytes]
P = 257


# ------------------------------------------------------------------------------------ encodings


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def thumbprint(cert_der: bytes) -> str:
    return b64url(hashlib.sha256(cert_der).digest())


# ------------------------------------------------------------------------------------ A256CBC-HS512


def _mac(key: bytes, header: str, iv: bytes, ct: bytes) -> bytes:
    """The full HMAC-SHA512; the tag is its first 32 bytes (other lengths only to make bad files)."""
    aad = header.encode("ascii")
    return hmac.new(key[:32], aad + iv + ct + (8 * len(aad)).to_bytes(8, "big"), hashlib.sha512).digest()


def _cbc_hs512_seal(
    cek: bytes, header: dict[str, str], plaintext: bytes, rng: Rng, tag_bytes: int
) -> list[str]:
    encoded = b64url(json.dumps(header).encode("utf-8"))
    iv = rng(16)
    padder = padding.PKCS7(128).padder()
    enc = Cipher(algorithms.AES(cek[32:]), modes.CBC(iv)).encryptor()
    ct = enc.update(padder.update(plaintext) + padder.finalize()) + enc.finalize()
    tag = _mac(cek, encoded, iv, ct)[:tag_bytes]
    return [encoded, b64url(iv), b64url(ct), b64url(tag)]


def _cbc_hs512_open(cek: bytes, header: str, iv: bytes, ct: bytes, tag: bytes) -> bytes:
    if len(tag) != 32 or not hmac.compare_digest(_mac(cek, header, iv, ct)[:32], tag):
        raise ValueError("tag does not verify")
    dec = Cipher(algorithms.AES(cek[32:]), modes.CBC(iv)).decryptor()
    unpadder = padding.PKCS7(128).unpadder()
    return unpadder.update(dec.update(ct) + dec.finalize()) + unpadder.finalize()


# ------------------------------------------------------------------------------------ JWE

RSA_PADDINGS: dict[str, Callable[[], rsa_padding.AsymmetricPadding]] = {
    "RSA-OAEP-256": lambda: rsa_padding.OAEP(rsa_padding.MGF1(hashes.SHA256()), hashes.SHA256(), None),
    # SHA-1 and PKCS#1 v1.5: made only so that tests can show the parser refuses them
    "RSA-OAEP": lambda: rsa_padding.OAEP(rsa_padding.MGF1(hashes.SHA1()), hashes.SHA1(), None),  # noqa: S303
    "RSA1_5": rsa_padding.PKCS1v15,
}


def jwe_to_key(
    plaintext: bytes,
    public_key: rsa.RSAPublicKey,
    *,
    alg: str = "RSA-OAEP-256",
    tag_bytes: int = 32,
    extra_header: dict[str, str] | None = None,
    rng: Rng = os.urandom,
) -> str:
    cek = rng(64)
    header = {"alg": alg, "enc": "A256CBC-HS512", **(extra_header or {})}
    encoded, iv, ct, tag = _cbc_hs512_seal(cek, header, plaintext, rng, tag_bytes)
    return ".".join([encoded, b64url(public_key.encrypt(cek, RSA_PADDINGS[alg]())), iv, ct, tag])


def jwe_from_key(token: str, private_key: rsa.RSAPrivateKey) -> bytes:
    encoded, ek, iv, ct, tag = token.split(".")
    header = json.loads(unb64url(encoded))
    if header.get("alg") != "RSA-OAEP-256" or header.get("enc") != "A256CBC-HS512":
        raise ValueError(f"unexpected JWE header {header}")
    cek = private_key.decrypt(unb64url(ek), RSA_PADDINGS["RSA-OAEP-256"]())
    return _cbc_hs512_open(cek, encoded, unb64url(iv), unb64url(ct), unb64url(tag))


def jwe_direct(plaintext: bytes, cek: bytes, kid: str, *, tag_bytes: int = 32, rng: Rng = os.urandom) -> str:
    encoded, iv, ct, tag = _cbc_hs512_seal(
        cek, {"alg": "dir", "enc": "A256CBC-HS512", "kid": kid}, plaintext, rng, tag_bytes
    )
    return ".".join([encoded, "", iv, ct, tag])


def jwe_from_direct(token: str, cek: bytes, kid: str) -> bytes:
    encoded, ek, iv, ct, tag = token.split(".")
    header = json.loads(unb64url(encoded))
    if header != {"alg": "dir", "enc": "A256CBC-HS512", "kid": kid} or ek:
        raise ValueError(f"unexpected dir JWE header {header}")
    return _cbc_hs512_open(cek, encoded, unb64url(iv), unb64url(ct), unb64url(tag))


# ------------------------------------------------------------------------------------ KDF, GF(257)


def item_key(master: bytes, tag: str) -> bytes:
    data = (1).to_bytes(4, "big") + tag.encode("utf-8") + b"\x00" + b"" + (512).to_bytes(4, "big")
    return hmac.new(master, data, hashlib.sha512).digest()


def gf257_split(secret: bytes, m: int, xs: Sequence[int], rng: Rng) -> list[bytes]:
    """Share bytes for each x in ``xs`` (any x, even 0 or repeated: the tests want bad files too)."""
    words: list[list[int]] = [[] for _ in xs]
    for byte in secret:
        coefficients = [byte]
        while len(coefficients) < m:
            r = int.from_bytes(rng(2), "little") % 512
            if r < P:
                coefficients.append(r)
        for i, x in enumerate(xs):
            y = sum(c * pow(x, k, P) for k, c in enumerate(coefficients)) % P
            words[i].append((x << 9) | y)
    return [b"".join(w.to_bytes(2, "little") for w in ws) for ws in words]


def gf257_combine(shares: Sequence[bytes]) -> bytes:
    points = [
        [(w >> 9, w & 0x1FF) for w in (int.from_bytes(s[i : i + 2], "little") for i in range(0, len(s), 2))]
        for s in shares
    ]
    out = bytearray()
    for column in zip(*points, strict=True):
        total = 0
        for j, (xj, yj) in enumerate(column):
            weight = 1
            for i, (xi, _) in enumerate(column):
                if i != j:
                    weight = weight * xi * pow(xi - xj, P - 2, P) % P
            total = (total + yj * weight) % P
        if total > 255:
            raise ValueError("shares do not combine to bytes")
        out.append(total)
    return bytes(out)


# ------------------------------------------------------------------------------------ files


@dataclass(frozen=True)
class Generated:
    data: bytes
    master_key: bytes
    shares: list[bytes]  # plaintext share bytes, in enc_shares order


def _enc_data(items: Sequence[tuple[str, bytes]], master: bytes, rng: Rng, tag_bytes: int) -> dict[str, Any]:
    return {
        "data": [
            {
                "compact_jwe": jwe_direct(pt, item_key(master, tag), tag, tag_bytes=tag_bytes, rng=rng),
                "tag": tag,
            }
            for tag, pt in items
        ],
        "kdf": "sp108_kdf",
    }


def make_sd_file(
    certs_der: Sequence[bytes],
    m: int,
    items: Sequence[tuple[str, bytes]],
    *,
    rng: Rng = os.urandom,
    share_alg: str = "RSA-OAEP-256",
    share_tag_bytes: int = 32,
    item_tag_bytes: int = 32,
    xs: Sequence[int] | None = None,
    share_header_extra: dict[str, str] | None = None,
) -> Generated:
    """A version-2 SD file with ``items`` under a fresh master key, shared m-of-n to ``certs_der``."""
    master = rng(32)
    shares = gf257_split(master, m, xs if xs is not None else range(1, len(certs_der) + 1), rng)
    enc_shares = []
    for share, der in zip(shares, certs_der, strict=True):
        public_key = load_der_x509_certificate(der).public_key()
        assert isinstance(public_key, rsa.RSAPublicKey)
        token = jwe_to_key(
            share,
            public_key,
            alg=share_alg,
            tag_bytes=share_tag_bytes,
            extra_header=share_header_extra,
            rng=rng,
        )
        enc_shares.append({"enc_key": token, "x5t_256": thumbprint(der)})
    document = {
        "EncData": _enc_data(items, master, rng, item_tag_bytes),
        "SharedKeys": {"enc_shares": enc_shares, "key_algorithm": "shamir_share", "required": m},
        "version": 2,
    }
    return Generated(json.dumps(document, indent=1).encode("utf-8"), master, shares)


def open_sd_file(data: bytes, keys: Sequence[tuple[rsa.RSAPrivateKey, bytes]]) -> list[tuple[str, bytes]]:
    """The items of an SD file, with every (private key, certificate DER) given: Azure's own restore."""
    document = json.loads(data)
    assert document["version"] == 2 and document["EncData"]["kdf"] == "sp108_kdf"
    shared = document["SharedKeys"]
    assert shared["key_algorithm"] == "shamir_share"
    by_thumbprint = {thumbprint(der): key for key, der in keys}
    shares = [
        jwe_from_key(s["enc_key"], by_thumbprint[s["x5t_256"]])
        for s in shared["enc_shares"]
        if s["x5t_256"] in by_thumbprint
    ]
    master = gf257_combine(shares[: shared["required"]])
    return [
        (d["tag"], jwe_from_direct(d["compact_jwe"], item_key(master, d["tag"]), d["tag"]))
        for d in document["EncData"]["data"]
    ]


def open_transfer_file(
    data: bytes, exchange_key: rsa.RSAPrivateKey, exchange_cert_der: bytes
) -> list[tuple[str, bytes]]:
    """The items of a transfer file, as the HSM would open them with its exchange key."""
    document = json.loads(data)
    assert set(document) == {"EncData", "WrappedKey"} and document["EncData"]["kdf"] == "sp108_kdf"
    wrapped = document["WrappedKey"]
    if wrapped["x5t_256"] != thumbprint(exchange_cert_der):
        raise ValueError("transfer file is wrapped to another certificate")
    master = jwe_from_key(wrapped["enc_key"], exchange_key)
    assert len(master) == 32
    return [
        (d["tag"], jwe_from_direct(d["compact_jwe"], item_key(master, d["tag"]), d["tag"]))
        for d in document["EncData"]["data"]
    ]


def make_transfer_file(
    items: Sequence[tuple[str, bytes]], exchange_cert_der: bytes, rng: Rng = os.urandom
) -> bytes:
    master = rng(32)
    public_key = load_der_x509_certificate(exchange_cert_der).public_key()
    assert isinstance(public_key, rsa.RSAPublicKey)
    document = {
        "EncData": _enc_data(items, master, rng, 32),
        "WrappedKey": {
            "enc_key": jwe_to_key(master, public_key, rng=rng),
            "x5t_256": thumbprint(exchange_cert_der),
        },
    }
    return json.dumps(document).encode("utf-8")
