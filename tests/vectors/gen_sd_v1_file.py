"""Generate tests/vectors/sd_v1_file.json: a security domain file in native format version 1.

The file was written by the version-1 writer (``sdquorum.sdfile.seal_domain`` at commit 62fff88, the
last build that wrote version 1) and is committed so that every later build proves it still opens
version-1 files (``tests/core/test_sdfile.py``). To regenerate it, check out that commit and run,
from the repository root, ``python tests/vectors/gen_sd_v1_file.py``; this script refuses to run on
a build whose writer makes another version.

The three custodians' RSA-2048 private keys are in the JSON unencrypted: they are test keys made for
this file only, so a test can decrypt each share, reconstruct and open the payload end to end.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from sdquorum import sdfile

OUTPUT = Path(__file__).with_name("sd_v1_file.json")


def _cert(name: str, key: rsa.RSAPrivateKey) -> bytes:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    start = datetime(2026, 1, 1, tzinfo=UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


def build() -> dict[str, object]:
    if sdfile.VERSION != 1:
        raise SystemExit(f"this build writes SD file version {sdfile.VERSION}: run at commit 62fff88")
    keys = [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(3)]
    certs = [_cert(name, k) for name, k in zip(("alice", "bob", "carol"), keys, strict=True)]
    secrets = sdfile.new_domain_secrets(os.urandom, admins=["admin"])
    sd = sdfile.seal_domain(
        secrets, certs, 2, epoch=1, created_by="node-v1", created_at=1767225600, rng=os.urandom
    )
    return {
        "description": __doc__.split("\n")[0],
        "file": sd.to_bytes().decode(),
        "quorum": 2,
        "private_keys_pem": [
            k.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ).decode()
            for k in keys
        ],
        "domain_id": secrets.domain_id.hex(),
        "data_encryption_key": secrets.data_encryption_key.hex(),
        "signing_public_key": secrets.signing_public_key.hex(),
        "backup_key": secrets.backup_key.hex(),
        "admins": list(secrets.admins),
    }


if __name__ == "__main__":
    OUTPUT.write_text(json.dumps(build(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {OUTPUT}", file=sys.stderr)
