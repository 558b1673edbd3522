"""The custodian's wrapping key on disk: passphrase-encrypted PKCS#8 (0600) and its certificate.

``keygen`` writes both files with O_EXCL (never overwrites) and the key file mode 0600 from the
moment it exists. The passphrase comes from a prompt that does not echo, or from the environment
variable ``SDQUORUM_PASSPHRASE`` for unattended agents and tests.
"""

from __future__ import annotations

import getpass
import os
from datetime import datetime
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sdquorum import pki
from sdquorum.errors import UsageError, VerificationError
from sdquorum.keys import SoftwareWrappingKey
from sdquorum_rpc.files import write_private_file

__all__ = ["PASSPHRASE_ENV", "keygen", "load_wrapping_key", "read_passphrase"]

PASSPHRASE_ENV = "SDQUORUM_PASSPHRASE"  # noqa: S105  # the name of a variable, not a secret
MIN_PASSPHRASE = 12


def read_passphrase(confirm: bool = False) -> bytes:
    """$SDQUORUM_PASSPHRASE, else a file named by $SDQUORUM_PASSPHRASE_FILE or systemd's
    $CREDENTIALS_DIRECTORY/passphrase (LoadCredential=), else a prompt that does not echo."""
    env = os.environ.get(PASSPHRASE_ENV)
    file = os.environ.get(PASSPHRASE_ENV + "_FILE") or (
        str(Path(os.environ["CREDENTIALS_DIRECTORY"]) / "passphrase")
        if os.environ.get("CREDENTIALS_DIRECTORY")
        else None
    )
    if env is None and file is not None:
        try:
            env = Path(file).read_text().rstrip("\r\n")
        except OSError as e:
            raise UsageError(f"cannot read the passphrase file {file}: {e.strerror}") from e
    if env is not None:
        phrase = env
    else:
        phrase = getpass.getpass("Wrapping key passphrase: ")
        if confirm and getpass.getpass("Repeat the passphrase: ") != phrase:
            raise UsageError("the two passphrases differ: run the command again")
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
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase),
    )
    write_private_file(key_path, encrypted)
    try:
        write_private_file(cert_path, cert_pem, mode=0o644)
    except UsageError:
        key_path.unlink(missing_ok=True)  # both files or neither, so a rerun can succeed
        raise
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
