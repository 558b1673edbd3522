"""Custodian wrapping keys in a PKCS#11 token (python-pkcs11): the private key never leaves it.

Tokens such as SoftHSM2 2.6.1 refuse CKM_RSA_PKCS_OAEP with SHA-256 or with a label, but do the raw
private-key operation (CKM_RSA_X_509) and CKM_SHA256_RSA_PKCS_PSS signing. So, as host tools for
PIV cards do, the token computes c^d mod n and the host removes the OAEP-SHA256 encoding in
:mod:`sdquorum.oaep` (one error for every failure, no early exit). Signing (release and proof
envelopes) is PSS-SHA256 with a 32-byte salt inside the token.

``token_import`` stores a key pair made elsewhere (``custodian-agent import-key``: an Azure
custodian's openssl key) in the token, the private half sensitive and not extractable from then on.

``token_keygen`` makes the RSA key pair inside the token (sensitive, not extractable) and a
certificate for its public key. cryptography cannot have a token sign a certificate, so the
certificate is signed by a one-time issuer key that is thrown away at once: only the public key and
the thumbprint of the certificate matter to sdquorum (and to Azure), never its signature.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pkcs11
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from pkcs11 import MGF, Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11 import exceptions as p11e
from pkcs11.util.rsa import decode_rsa_private_key, decode_rsa_public_key

from sdquorum.errors import UsageError, VerificationError
from sdquorum.keys import rsa_public_key_of
from sdquorum.oaep import RawRsaWrappingKey

__all__ = ["PIN_ENV", "Pkcs11WrappingKey", "open_token_key", "token_import", "token_keygen"]

PIN_ENV = "SDQUORUM_PKCS11_PIN"  # the name of a variable, not a secret


class Pkcs11WrappingKey(RawRsaWrappingKey):
    """A :class:`~sdquorum.keys.WrappingKey` whose private half is a token object."""

    def __init__(self, session: Any, private: Any, certificate_der: bytes) -> None:
        self._session = session  # kept open for the agent's lifetime; closed by close()
        self._private = private
        super().__init__(self._raw, certificate_der, self._pss)

    def _raw(self, ciphertext: bytes) -> bytes:
        try:
            return bytes(self._private.decrypt(ciphertext, mechanism=Mechanism.RSA_X_509))
        except p11e.PKCS11Error as e:
            raise VerificationError("decryption failed") from e

    def _pss(self, message: bytes) -> bytes:
        try:
            return bytes(
                self._private.sign(
                    message,
                    mechanism=Mechanism.SHA256_RSA_PKCS_PSS,
                    mechanism_param=(Mechanism.SHA256, MGF.SHA256, 32),
                )
            )
        except p11e.PKCS11Error as e:
            raise UsageError(
                f"the token refused to sign ({type(e).__name__}): check it is present and unlocked"
            ) from e

    def close(self) -> None:
        self._session.close()


def _open_session(module: Path, token_label: str, pin: str) -> Any:
    try:
        lib = pkcs11.lib(str(module))
    except (RuntimeError, OSError, p11e.PKCS11Error) as e:
        raise UsageError(f"cannot load the PKCS#11 module {module}: {e}") from e
    try:
        token = lib.get_token(token_label=token_label)
    except (p11e.NoSuchToken, p11e.MultipleTokensReturned) as e:
        raise UsageError(f"no single token labelled {token_label!r} in {module}: check --pkcs11-token") from e
    try:
        return token.open(user_pin=pin, rw=True)
    except (p11e.PinIncorrect, p11e.PinInvalid, p11e.PinLenRange) as e:
        raise VerificationError(f"the token {token_label!r} refused the PIN") from e
    except p11e.PinLocked as e:
        raise UsageError(f"the token {token_label!r} is locked: unlock it with its SO PIN") from e


def open_token_key(
    module: Path, token_label: str, pin: str, key_label: str, certificate_der: bytes
) -> Pkcs11WrappingKey:
    """The token's private key ``key_label``, checked against the custodian's certificate."""
    session = _open_session(module, token_label, pin)
    try:
        private = session.get_key(object_class=ObjectClass.PRIVATE_KEY, key_type=KeyType.RSA, label=key_label)
        public = session.get_key(object_class=ObjectClass.PUBLIC_KEY, key_type=KeyType.RSA, label=key_label)
    except (p11e.NoSuchKey, p11e.MultipleObjectsReturned) as e:
        session.close()
        raise UsageError(
            f"no single RSA key pair labelled {key_label!r} in the token: check --pkcs11-key-label"
        ) from e
    cert_numbers = rsa_public_key_of(certificate_der).public_numbers()
    n = int.from_bytes(public[Attribute.MODULUS], "big")
    e_ = int.from_bytes(public[Attribute.PUBLIC_EXPONENT], "big")
    if (n, e_) != (cert_numbers.n, cert_numbers.e):
        session.close()
        raise UsageError(
            f"the token's key {key_label!r} does not match the wrapping certificate: use the pair keygen made"
        )
    return Pkcs11WrappingKey(session, private, certificate_der)


def token_keygen(
    module: Path, token_label: str, pin: str, key_label: str, name: str, now: datetime, bits: int = 3072
) -> bytes:
    """Generate the key pair inside the token; return a certificate (PEM) for its public key."""
    if bits < 2048:
        raise UsageError("RSA keys in the token must be at least 2048 bits (3072 recommended)")
    session = _open_session(module, token_label, pin)
    try:
        existing = list(session.get_objects({Attribute.LABEL: key_label}))
        if existing:
            raise UsageError(
                f"the token already holds objects labelled {key_label!r}: choose another --pkcs11-key-label"
            )
        public, _private = session.generate_keypair(
            KeyType.RSA,
            bits,
            label=key_label,
            store=True,
            public_template={Attribute.PUBLIC_EXPONENT: (65537).to_bytes(3, "big")},
            private_template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False},
        )
        numbers = rsa.RSAPublicNumbers(
            int.from_bytes(public[Attribute.PUBLIC_EXPONENT], "big"),
            int.from_bytes(public[Attribute.MODULUS], "big"),
        )
    finally:
        session.close()
    issuer_key = ec.generate_private_key(ec.SECP256R1())  # one-time; discarded when this returns
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, f"{name} token certificate issuer (one-time)")]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(numbers.public_key())
        .serial_number(int.from_bytes(os.urandom(16), "big") >> 1)
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=3650))
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(issuer_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def token_import(module: Path, token_label: str, pin: str, key_label: str, key: rsa.RSAPrivateKey) -> None:
    """Store ``key`` in the token as the pair ``key_label`` (private half sensitive, not
    extractable), as ``token_keygen`` would have made it; refused if the label is taken."""
    session = _open_session(module, token_label, pin)
    try:
        if list(session.get_objects({Attribute.LABEL: key_label})):
            raise UsageError(
                f"the token already holds objects labelled {key_label!r}: choose another --pkcs11-key-label"
            )
        private_der = key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        public_der = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.PKCS1
        )
        common = {Attribute.TOKEN: True, Attribute.LABEL: key_label, Attribute.ID: key_label.encode()}
        try:
            session.create_object(
                {
                    **decode_rsa_private_key(
                        private_der, MechanismFlag.DECRYPT | MechanismFlag.SIGN
                    ),  # no unwrap
                    **common,
                    Attribute.PRIVATE: True,
                    Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: False,
                }
            )
            session.create_object(
                {**decode_rsa_public_key(public_der, MechanismFlag.ENCRYPT | MechanismFlag.VERIFY), **common}
            )
        except p11e.PKCS11Error as e:
            for obj in session.get_objects({Attribute.LABEL: key_label}):  # no half pair left behind
                obj.destroy()
            raise UsageError(f"the token refused the key ({type(e).__name__}): nothing was stored") from e
    finally:
        session.close()
