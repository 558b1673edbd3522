"""The security domain (SD) file, native format version 2 (version 1 is still read).

Layout (JSON, UTF-8)::

    {"format": "sdquorum-security-domain", "version": 2,
     "header": b64url(header bytes), "header_signature": b64url(Ed25519 signature),
     "payload": {"alg": "A256GCM", "nonce": b64url(12 bytes), "ciphertext": b64url(...)}}

Invariants:

* The header is canonical JSON carried as the exact bytes that were signed. It names the domain,
  epoch, quorum m, the n custodian slots (wrapping certificate, its SHA-256 thumbprint, and the
  RSA-OAEP-SHA256 encrypted share whose OAEP label binds domain, epoch and x), the Feldman
  commitments, the domain signing public key, the creating node and (version 2) ``payload_sha256``.
  The signature is Ed25519 by the domain signing key over ``HEADER_CONTEXT_V2 || header``
  (``HEADER_CONTEXT || header`` in version 1); the header's own version picks the context.
* Version 2 binds the payload in the signed header: ``payload_sha256 = SHA-256(nonce || ciphertext)``
  over the exact decoded bytes of the payload object (the nonce is always 12 bytes, so the
  concatenation is unambiguous). :meth:`SecurityDomainFile.from_bytes` checks the signature and then
  this hash (constant time) before anything else: one flipped payload byte is refused by anyone
  holding the file, before any custodian is asked.
* The shares split a uniformly random scalar s (Shamir over Z_l, see :mod:`sdquorum.shamir`);
  KEK = HKDF-SHA256(s, salt = domain_id || epoch, info = "sdquorum kek v1").
* The payload is AES-256-GCM under the KEK. Version 2: AAD = SHA-256 of the canonical JSON of the
  header *without* its ``payload_sha256`` field (:meth:`Header.payload_aad`); the hash of the whole
  header cannot be the AAD, since the header holds the hash of the ciphertext the AAD produces.
  The signed header then binds that ciphertext by its hash, so a payload still cannot be moved
  under another header. Version 1: AAD = SHA-256(header bytes).
* After reconstruction the opener checks s*B == A_0 before using s, and that the payload names the
  same domain and signing key as the header.
* New files (download, rotation) are version 2; version 1 files are read and opened as before.

Parsing is strict: unknown versions, unknown fields (at the top level, in the header, in a slot, in
the payload object and in the decrypted payload), missing or mistyped fields, a header whose version
differs from the file's, x outside 1..n, duplicate x, two slots over one key (compared by
:func:`sdquorum.pki.spki_sha256`, so a second certificate over the same key is a duplicate too), and
wrong lengths are all :class:`~sdquorum.errors.MalformedError`; a signature or payload hash that does
not verify is a :class:`~sdquorum.errors.VerificationError`. A slot is *addressed* by its
certificate's thumbprint (the wire format); a key's *identity* is its SubjectPublicKeyInfo.

Modules: :mod:`._header` (the signed header and its slots), :mod:`._file` (the file container and
its payload hash check) and :mod:`._payload` (the domain's secrets, sealing and opening them).
"""

from __future__ import annotations

from sdquorum.sdfile._file import FORMAT, MAX_SD_FILE_BYTES, SecurityDomainFile, payload_sha256
from sdquorum.sdfile._header import (
    HEADER_CONTEXT,
    HEADER_CONTEXT_V2,
    HEADER_TYPE,
    MAX_CUSTODIANS,
    MIN_CUSTODIANS,
    READ_VERSIONS,
    VERSION,
    Header,
    SignedHeader,
    Slot,
    share_label,
)
from sdquorum.sdfile._payload import (
    KEK_INFO,
    PAYLOAD_TYPE,
    PAYLOAD_VERSION,
    DomainSecrets,
    derive_kek,
    new_domain_secrets,
    open_domain,
    seal_domain,
)

__all__ = [
    "FORMAT",
    "HEADER_CONTEXT",
    "HEADER_CONTEXT_V2",
    "HEADER_TYPE",
    "KEK_INFO",
    "MAX_CUSTODIANS",
    "MAX_SD_FILE_BYTES",
    "MIN_CUSTODIANS",
    "PAYLOAD_TYPE",
    "PAYLOAD_VERSION",
    "READ_VERSIONS",
    "VERSION",
    "DomainSecrets",
    "Header",
    "SecurityDomainFile",
    "SignedHeader",
    "Slot",
    "derive_kek",
    "new_domain_secrets",
    "open_domain",
    "payload_sha256",
    "seal_domain",
    "share_label",
]
