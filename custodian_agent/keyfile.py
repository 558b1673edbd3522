"""The custodian's wrapping key on disk: passphrase-encrypted PKCS#8 (0600) and its certificate.

``keygen`` writes both files with O_EXCL (never overwrites) and the key file mode 0600 from the
moment it exists; ``import_key`` does the same for a plain PEM key made elsewhere (``openssl``),
whose plaintext it never writes. The passphrase comes from the first of these that is given:

1. ``--passphrase-file FILE`` (mode 0600 or stricter: a file others can read is refused);
2. the environment variable ``SDQUORUM_PASSPHRASE``;
3. the file named by ``SDQUORUM_PASSPHRASE_FILE`` (0600, as 1);
4. systemd's ``$CREDENTIALS_DIRECTORY/sdquorum-passphrase`` (``LoadCredential=`` or
   ``LoadCredentialEncrypted=``; systemd keeps that folder private to the service);
5. a prompt on the terminal that does not echo.

With none of them and no terminal, the command stops with one line saying how to give one (exit 2),
before anything is read or written. A file holds the passphrase on its first line.
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import os
import sys
from datetime import datetime
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sdquorum import pki
from sdquorum.errors import UsageError, VerificationError
from sdquorum.keys import SoftwareWrappingKey
from sdquorum_rpc.files import write_private_file

__all__ = [
    "CREDENTIAL_NAME",
    "PASSPHRASE_ENV",
    "PASSPHRASE_FILE_ENV",
    "has_terminal",
    "import_key",
    "keygen",
    "load_wrapping_key",
    "passphrase",
    "read_passphrase",
    "read_plain_key",
]

PASSPHRASE_ENV = "SDQUORUM_PASSPHRASE"  # noqa: S105  # the name of a variable, not a secret
PASSPHRASE_FILE_ENV = "SDQUORUM_PASSPHRASE_FILE"  # noqa: S105  # the name of a variable, not a secret
CREDENTIAL_NAME = "sdquorum-passphrase"
MIN_PASSPHRASE = 12
MAX_PASSPHRASE_FILE = 4096
HOW_TO_GIVE = (
    "no passphrase and no terminal to ask on: give --passphrase-file FILE (0600), "
    f"${PASSPHRASE_ENV}, ${PASSPHRASE_FILE_ENV}, or a systemd credential named {CREDENTIAL_NAME}"
)


def _read_secret_file(path: Path, check_mode: bool) -> str:
    try:
        fd = os.open(
            path, os.O_RDONLY
        )  # a symlink is followed (Kubernetes mounts secrets so); the mode checked is the file's
    except OSError as e:
        raise UsageError(f"cannot read the passphrase file {path}: {e.strerror}") from e
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if check_mode and st.st_mode & 0o077:
            raise UsageError(f"the passphrase file {path} is readable by others: chmod 600 {path}")
        data = f.read(MAX_PASSPHRASE_FILE + 1)
    if len(data) > MAX_PASSPHRASE_FILE:
        raise UsageError(f"the passphrase file {path} is too long: put the passphrase alone on one line")
    try:
        phrase = data.decode().splitlines()[0] if data.strip() else ""
    except UnicodeDecodeError as e:
        raise UsageError(f"the passphrase file {path} is not UTF-8 text") from e
    if not phrase:
        raise UsageError(f"the passphrase file {path} is empty: write the passphrase on its first line")
    return phrase


def _given(file: Path | None) -> str | None:
    """The passphrase from the first source given (1-4 above), or None if none is."""
    if file is not None:
        return _read_secret_file(file, check_mode=True)
    env = os.environ.get(PASSPHRASE_ENV)
    if env is not None:
        return env
    if os.environ.get(PASSPHRASE_FILE_ENV):
        return _read_secret_file(Path(os.environ[PASSPHRASE_FILE_ENV]), check_mode=True)
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if creds and (Path(creds) / CREDENTIAL_NAME).exists():
        return _read_secret_file(Path(creds) / CREDENTIAL_NAME, check_mode=False)
    return None


def has_terminal() -> bool:
    """Whether a person can be asked: a controlling terminal (what getpass opens) or a tty on stdin."""
    try:
        os.close(os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY))
        return True
    except OSError:
        return sys.stdin is not None and sys.stdin.isatty()


def passphrase(file: Path | None = None, confirm: bool = False) -> bytes:
    """For the command line: the passphrase from its sources (module docstring), or one line
    saying how to give one when there is none and no terminal to ask on."""
    given = _given(file)
    if given is None and not has_terminal():
        raise UsageError(HOW_TO_GIVE)
    return _checked(given, confirm)


def read_passphrase(confirm: bool = False, file: Path | None = None) -> bytes:
    """The passphrase from sources 1-4 of the module docstring, else a prompt that does not echo."""
    return _checked(_given(file), confirm)


def _checked(given: str | None, confirm: bool) -> bytes:
    if given is not None:
        phrase = given
    else:
        try:
            phrase = getpass.getpass("Wrapping key passphrase: ")
            if confirm and getpass.getpass("Repeat the passphrase: ") != phrase:
                raise UsageError("the two passphrases differ: run the command again")
        except EOFError:  # the input ended before a line: nobody is there to type one
            raise UsageError(HOW_TO_GIVE) from None
    if confirm and len(phrase) < MIN_PASSPHRASE:
        raise UsageError(f"the passphrase must be at least {MIN_PASSPHRASE} characters")
    return phrase.encode()


def keygen(
    name: str, key_path: Path, cert_path: Path, passphrase: bytes, now: datetime, bits: int = 3072
) -> bytes:
    """Make a wrapping key pair; write the encrypted key (0600) and certificate. Returns the cert PEM."""
    for p in (key_path, cert_path):
        if p.exists():
            raise UsageError(f"{p} exists already: move it away or choose another path")
        if not p.parent.is_dir():
            raise UsageError(f"the folder {p.parent} does not exist: create it or choose another path")
    key, cert_pem = pki.make_wrapping_key(name, now, bits=bits)
    _write_encrypted_pair(key, cert_pem, key_path, cert_path, passphrase)
    return cert_pem


def load_wrapping_key(key_path: Path, cert_path: Path, passphrase: bytes) -> SoftwareWrappingKey:
    try:
        data, cert = key_path.read_bytes(), cert_path.read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read the wrapping key or certificate: {e}") from e
    if key_path.stat().st_mode & 0o077:
        raise UsageError(f"{key_path} is readable by others: chmod 600 {key_path}")
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except (ValueError, TypeError) as e:
        raise VerificationError(
            f"cannot open {key_path}: wrong passphrase or not an encrypted PKCS#8 key"
        ) from e
    if not isinstance(key, rsa.RSAPrivateKey):
        raise UsageError(f"{key_path} is not an RSA key")
    certificate = pki.load_cert(cert)
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(*spki) != certificate.public_key().public_bytes(*spki):
        raise UsageError(f"the wrapping key {key_path} does not belong to the certificate {cert_path}")
    return SoftwareWrappingKey(key, certificate.public_bytes(serialization.Encoding.DER))


def read_plain_key(plain_key: Path, cert_path: Path) -> tuple[rsa.RSAPrivateKey, bytes]:
    """A plain (unencrypted) PEM RSA key made elsewhere, such as with ``openssl genpkey`` for an Azure
    security domain, and its certificate (PEM): checked to be an RSA key of at least 2048 bits that
    belongs to the certificate (their SubjectPublicKeyInfo digests are equal)."""
    try:
        data, cert_pem = plain_key.read_bytes(), cert_path.read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read {e.filename}: {e.strerror}") from e
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as e:  # encrypted: it is not the plain key this command is for
        raise UsageError(
            f"{plain_key} is passphrase-protected: give the plain key "
            f"('openssl pkey -in {plain_key} -out PLAIN.pem' decrypts it)"
        ) from e
    except (ValueError, UnsupportedAlgorithm) as e:
        raise UsageError(f"{plain_key} is not a PEM private key (PKCS#1 or PKCS#8)") from e
    if not isinstance(key, rsa.RSAPrivateKey):
        raise UsageError(f"{plain_key} is not an RSA key: wrapping keys are RSA")
    if key.key_size < 2048:
        raise UsageError(f"{plain_key} is a {key.key_size}-bit key: wrapping keys need at least 2048 bits")
    certificate = pki.load_cert(cert_pem)
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if not hmac.compare_digest(hashlib.sha256(spki).digest(), pki.spki_sha256(cert_pem)):
        raise UsageError(f"the key {plain_key} does not belong to the certificate {cert_path}")
    return key, certificate.public_bytes(serialization.Encoding.PEM)


def import_key(plain_key: Path, cert_path: Path, out_key: Path, out_cert: Path, passphrase: bytes) -> bytes:
    """:func:`read_plain_key`, then the agent's form: the key encrypted under ``passphrase`` as PKCS#8
    (0600) and the certificate as PEM. The plaintext is never written; removing the plain file is
    the custodian's (the caller says so). Returns the key's identity (:func:`sdquorum.pki.spki_sha256`)."""
    for p in (out_key, out_cert):
        if p.exists():
            raise UsageError(f"{p} exists already: move it away or choose another path")
    key, cert_pem = read_plain_key(plain_key, cert_path)
    _write_encrypted_pair(key, cert_pem, out_key, out_cert, passphrase)
    return pki.spki_sha256(cert_pem)


def _write_encrypted_pair(
    key: rsa.RSAPrivateKey, cert_pem: bytes, key_path: Path, cert_path: Path, passphrase: bytes
) -> None:
    """The key as passphrase-encrypted PKCS#8 (0600) and its certificate (0644): both files or
    neither, so a rerun can succeed."""
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase),
    )
    write_private_file(key_path, encrypted)
    try:
        write_private_file(cert_path, cert_pem, mode=0o644)
    except UsageError:
        key_path.unlink(missing_ok=True)
        raise
