"""The SD file container: format marker, version, signed header and the AES-256-GCM payload.

Invariants:

* :meth:`SecurityDomainFile.from_bytes` refuses a file over ``max_bytes`` before parsing, any unknown
  member, a nonce other than 12 bytes, a truncated ciphertext, and a header whose version differs
  from the file's; then it checks the header signature and (version 2) that
  :func:`payload_sha256` of the exact nonce and ciphertext equals the signed header's, in constant
  time, before anything else is asked of anyone.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from sdquorum.encoding import b64d, b64e, canonical_json, parse_json_object
from sdquorum.errors import MalformedError, VerificationError
from sdquorum.sdfile._header import Header, SignedHeader, is_version, refuse_unknown

FORMAT = "sdquorum-security-domain"
_FILE_KEYS = frozenset({"format", "version", "header", "header_signature", "payload"})
_PAYLOAD_OBJECT_KEYS = frozenset({"alg", "nonce", "ciphertext"})
MAX_SD_FILE_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class SecurityDomainFile:
    signed_header: SignedHeader
    nonce: bytes
    ciphertext: bytes

    @property
    def header(self) -> Header:
        return self.signed_header.header

    @property
    def version(self) -> int:
        return self.header.version

    def to_bytes(self) -> bytes:
        return canonical_json(
            {
                "format": FORMAT,
                "version": self.version,
                "header": b64e(self.signed_header.header_bytes),
                "header_signature": b64e(self.signed_header.signature),
                "payload": {"alg": "A256GCM", "nonce": b64e(self.nonce), "ciphertext": b64e(self.ciphertext)},
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes, *, max_bytes: int = MAX_SD_FILE_BYTES) -> SecurityDomainFile:
        """Parse and verify the header signature; raises before anything else is asked."""
        if len(data) > max_bytes:
            raise MalformedError(f"SD file is larger than the {max_bytes}-byte limit")
        obj = parse_json_object(data, "SD file")
        if obj.get("format") != FORMAT:
            raise MalformedError("not an sdquorum security domain file (missing format marker)")
        version = obj.get("version")
        if not is_version(version):
            raise MalformedError(
                f"SD file version {repr(version)[:20]} is not supported (this build reads 1 and 2)"
            )
        refuse_unknown(obj, _FILE_KEYS, "SD file")
        payload = obj.get("payload")
        if not isinstance(payload, dict) or payload.get("alg") != "A256GCM":
            raise MalformedError("SD file: payload must be an A256GCM object")
        refuse_unknown(payload, _PAYLOAD_OBJECT_KEYS, "SD file payload")
        nonce = b64d(payload.get("nonce"), "payload nonce")
        if len(nonce) != 12:
            raise MalformedError("SD file: payload nonce must be 12 bytes")
        ciphertext = b64d(payload.get("ciphertext"), "payload ciphertext")
        if len(ciphertext) < 16:
            raise MalformedError("SD file: payload ciphertext is truncated")
        signed = SignedHeader(
            b64d(obj.get("header"), "header"), b64d(obj.get("header_signature"), "header_signature")
        )
        if signed.header.version != version:
            raise MalformedError(
                f"SD file: the file says version {version} but its header version {signed.header.version}"
            )
        header = signed.verify()
        if header.version >= 2 and not hmac.compare_digest(
            header.payload_sha256, payload_sha256(nonce, ciphertext)
        ):
            raise VerificationError(
                "the SD payload does not match the hash in its signed header: the file was altered"
            )
        return cls(signed, nonce, ciphertext)


def payload_sha256(nonce: bytes, ciphertext: bytes) -> bytes:
    """What a version-2 header binds: SHA-256 of the payload's exact nonce (12 bytes) and ciphertext."""
    return hashlib.sha256(nonce + ciphertext).digest()
