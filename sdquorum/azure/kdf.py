"""SP 800-108 counter-mode KDF with HMAC-SHA512: Azure's ``sp108_kdf`` for EncData content keys.

Each EncData item's 64-byte A256CBC-HS512 key is derived from the 32-byte master key with the item's
tag as the label and an empty context:

    K = HMAC-SHA512(master, be32(1) || tag || 0x00 || context || be32(512))

That is one block of NIST SP 800-108 (rev. 1) section 4.1 counter mode: 4-byte big-endian counter
before the fixed data, label, a 0x00 separator, context, and L (the output length in bits) as 4-byte
big-endian. It is computed by ``cryptography``'s ``KBKDFHMAC``, not by hand; a test checks it against
the formula above and against the Azure CLI's own published SP 800-108 self-test value.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.kbkdf import KBKDFHMAC, CounterLocation, Mode

from sdquorum.errors import UsageError
from sdquorum.fields import is_int

__all__ = ["ITEM_KEY_BYTES", "KDF_NAME", "MASTER_KEY_BYTES", "derive_item_key", "sp800_108_hmac_sha512"]

KDF_NAME = "sp108_kdf"
"""The ``EncData.kdf`` value of a version-2 file."""
MASTER_KEY_BYTES = 32
ITEM_KEY_BYTES = 64


def sp800_108_hmac_sha512(key: bytes, label: bytes, context: bytes, length: int) -> bytes:
    """``length`` bytes of SP 800-108 counter-mode HMAC-SHA512 (r = 32, L as 32-bit big-endian)."""
    if not is_int(length) or not 1 <= length <= 1024:
        raise UsageError("SP 800-108 output length must be 1..1024 bytes")
    kdf = KBKDFHMAC(
        algorithm=hashes.SHA512(),
        mode=Mode.CounterMode,
        length=length,
        rlen=4,
        llen=4,
        location=CounterLocation.BeforeFixed,
        label=label,
        context=context,
        fixed=None,
    )
    return kdf.derive(key)


def derive_item_key(master_key: bytes, tag: str) -> bytes:
    """The 64-byte content key of the EncData item labelled ``tag`` (UTF-8) under ``master_key``."""
    if not isinstance(master_key, bytes) or len(master_key) != MASTER_KEY_BYTES:
        raise UsageError(f"the Azure master key is {MASTER_KEY_BYTES} bytes")
    if not isinstance(tag, str) or not tag:
        raise UsageError("an EncData tag is a non-empty string")
    try:
        label = tag.encode("utf-8")
    except UnicodeEncodeError as e:
        raise UsageError("an EncData tag must be valid Unicode (no lone surrogates)") from e
    return sp800_108_hmac_sha512(master_key, label, b"", ITEM_KEY_BYTES)
