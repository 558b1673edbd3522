"""Azure Managed HSM security domains (format version 2): the I/O-free core.

Azure users get the distributed restore: each custodian agent decrypts only its own share (found by
its certificate's ``x5t_256``) through its key handle, the coordinator combines ``required`` shares
into the 32-byte master key, opens the EncData items and writes the transfer file wrapped to the
HSM's exchange certificate. Any payload can also be written as a version-2 file.

Modules:

* :mod:`~sdquorum.azure.sdfile`: the security-domain and transfer files, and the restore steps.
* :mod:`~sdquorum.azure.jwe`: compact JWE, RSA-OAEP-256 or dir with A256CBC-HS512 only, strict.
* :mod:`~sdquorum.azure.a256cbc`: A256CBC-HS512 content encryption (RFC 7518 5.2.5).
* :mod:`~sdquorum.azure.gf257`: Shamir over GF(257) per byte, Azure's share encoding.
* :mod:`~sdquorum.azure.kdf`: SP 800-108 counter-mode HMAC-SHA512 (``sp108_kdf``).

Every error is a :mod:`sdquorum.errors` error: MalformedError for bytes that do not parse,
VerificationError for failed checks, UsageError for caller mistakes.
"""

from __future__ import annotations

from sdquorum.azure.gf257 import Share
from sdquorum.azure.sdfile import (
    AzureSecurityDomain,
    EncDatum,
    EncShare,
    Item,
    TransferFile,
    combine_master_key,
    decrypt_items,
    decrypt_share,
    encrypt_items,
    make_transfer_file,
    open_transfer_file,
    seal_azure_domain,
    x5t_256,
)

__all__ = [
    "AzureSecurityDomain",
    "EncDatum",
    "EncShare",
    "Item",
    "Share",
    "TransferFile",
    "combine_master_key",
    "decrypt_items",
    "decrypt_share",
    "encrypt_items",
    "make_transfer_file",
    "open_transfer_file",
    "seal_azure_domain",
    "x5t_256",
]
