"""Ceremony requests and answers as files, for custodians whose key lives on an air-gapped machine.

``sdctl ... --offline-request DIR`` writes one request file per custodian; the custodian runs
``custodian-agent respond --request FILE --out FILE`` on the offline machine, which makes exactly
the checks and the crypto of the online agent; the admin uploads the answer file. The answer is
signed by the custodian's wrapping key (and, for a recovery, sealed to the node's exchange key), so
the person carrying it can neither read a share nor forge an answer.

Both files are JSON with every binary field base64url. Nothing here is secret.

Invariant: every field that can end up in a path is checked before it is used: the request id (8..64
lowercase hex: the agent's approval spool) and the custodian name (a slot name: ``sdctl`` writes
``<custodian>-x<x>.request.json`` in the folder it was given), so a node cannot make either name a
file outside its folder (issue 13, class 5).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from sdquorum.encoding import b64d, b64e, canonical_json, parse_json_object
from sdquorum.envelopes import PURPOSES, CeremonyKind
from sdquorum.errors import MalformedError
from sdquorum.fields import is_int

__all__ = [
    "MAX_OFFLINE_FILE_BYTES",
    "CeremonyRequest",
    "OfflineAnswer",
    "check_custodian_name",
    "check_request_id",
]

_REQUEST_ID = re.compile(r"[0-9a-f]{8,64}")
# A slot name as the SD header allows it (sdquorum.sdfile), or the name an Azure slot is shown by
# (coordinator.azure: "x5t:" and base64url digits of its thumbprint). Neither holds a slash, a
# backslash, a NUL or a line break, nor starts with "." or "-": it names a file in a folder, no more.
_CUSTODIAN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._@-]{0,63}|x5t:[A-Za-z0-9_-]{1,43}")


def check_custodian_name(name: object) -> str:
    """A custodian name from the node, used in file names (``sdctl ... --offline-request DIR``):
    refused unless it is a slot name (see ``_CUSTODIAN_NAME``), before any path is built from it."""
    if not isinstance(name, str) or not _CUSTODIAN_NAME.fullmatch(name):
        raise MalformedError(
            "a custodian name must be 1 to 64 of A-Z a-z 0-9 space . _ @ -, starting with a letter or digit"
        )
    return name


def check_request_id(request_id: object) -> str:
    """A request id as the node makes them: 8 to 64 lowercase hex digits, nothing else. The id
    comes from the node unsigned and names files at the custodian (the approval spool), so
    anything else (a path, a dot, a newline) is refused before it is used."""
    if not isinstance(request_id, str) or not _REQUEST_ID.fullmatch(request_id):
        raise MalformedError("a request id must be 8 to 64 lowercase hex digits")
    return request_id


REQUEST_TYPE = "sdquorum-ceremony-request-v1"
ANSWER_TYPE = "sdquorum-ceremony-answer-v1"
MAX_OFFLINE_FILE_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class CeremonyRequest:
    """What a custodian is asked, online (from the request stream) or offline (from a file)."""

    request_id: str
    session_id: str
    kind: str  # a CeremonyKind, or its word: stored as the member
    x: int
    custodian: str
    attestation: bytes
    header: bytes
    header_signature: bytes
    proposal: bytes = b""

    def __post_init__(self) -> None:
        check_request_id(self.request_id)
        if self.custodian:  # online requests name no one; a file's name is used in file names
            check_custodian_name(self.custodian)
        object.__setattr__(self, "kind", _purpose(self.kind, "request"))

    def to_bytes(self) -> bytes:
        return canonical_json(
            {
                "type": REQUEST_TYPE,
                "request_id": self.request_id,
                "session_id": self.session_id,
                "kind": self.kind,
                "x": self.x,
                "custodian": self.custodian,
                "attestation": b64e(self.attestation),
                "sd_header": b64e(self.header),
                "sd_header_signature": b64e(self.header_signature),
                "proposal": b64e(self.proposal),
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> CeremonyRequest:
        if len(data) > MAX_OFFLINE_FILE_BYTES:
            raise MalformedError("the request file is too large")
        obj = parse_json_object(data, "request file")
        if obj.get("type") != REQUEST_TYPE:
            raise MalformedError("not an sdquorum ceremony request file")
        x = obj.get("x")
        strings = [obj.get(k) for k in ("request_id", "session_id", "kind", "custodian")]
        if not is_int(x) or not all(isinstance(v, str) for v in strings):
            raise MalformedError("the request file has a missing or mistyped field")
        return cls(
            request_id=str(obj["request_id"]),
            session_id=str(obj["session_id"]),
            kind=str(obj["kind"]),
            x=x,
            custodian=str(obj["custodian"]),
            attestation=b64d(obj.get("attestation"), "attestation"),
            header=b64d(obj.get("sd_header"), "sd_header"),
            header_signature=b64d(obj.get("sd_header_signature"), "sd_header_signature"),
            proposal=b64d(obj.get("proposal"), "proposal"),
        )

    @property
    def fingerprint(self) -> str:
        """A short value the custodian can read out to the admin to confirm the file (no secret)."""
        return hashlib.sha256(self.to_bytes()).hexdigest()[:16]


@dataclass(frozen=True)
class OfflineAnswer:
    request_id: str
    session_id: str
    kind: str
    answer: bytes  # release or proof envelope; empty when denied
    denied: bool = False
    reason: str = ""

    def __post_init__(self) -> None:
        check_request_id(self.request_id)
        object.__setattr__(self, "kind", _purpose(self.kind, "answer"))

    def to_bytes(self) -> bytes:
        return canonical_json(
            {
                "type": ANSWER_TYPE,
                "request_id": self.request_id,
                "session_id": self.session_id,
                "kind": self.kind,
                "answer": b64e(self.answer),
                "denied": self.denied,
                "reason": self.reason,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> OfflineAnswer:
        if len(data) > MAX_OFFLINE_FILE_BYTES:
            raise MalformedError("the answer file is too large")
        obj = parse_json_object(data, "answer file")
        if obj.get("type") != ANSWER_TYPE:
            raise MalformedError("not an sdquorum ceremony answer file")
        fields = [obj.get(k) for k in ("request_id", "session_id", "kind", "reason")]
        if not all(isinstance(v, str) for v in fields) or not isinstance(obj.get("denied"), bool):
            raise MalformedError("the answer file has a missing or mistyped field")
        return cls(
            request_id=str(obj["request_id"]),
            session_id=str(obj["session_id"]),
            kind=str(obj["kind"]),
            answer=b64d(obj.get("answer"), "answer"),
            denied=bool(obj["denied"]),
            reason=str(obj["reason"]),
        )


def _purpose(kind: str, what: str) -> CeremonyKind:
    """``kind`` as the ceremony a request or answer file is for (a domain notice is never one)."""
    if kind not in PURPOSES:
        raise MalformedError(f"unknown {what} kind {kind!r}")
    return CeremonyKind(kind)
