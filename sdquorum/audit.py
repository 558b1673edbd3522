"""The audit log: append-only, hash-chained, every entry signed by the node.

An entry is canonical JSON of ``{seq, time, event, actor, details, prev}``; its hash is
SHA-256(``ENTRY_CONTEXT || entry``) and its signature is Ed25519 by the node's attestation key over
the same bytes. ``prev`` is the previous entry's hash (32 zero bytes for the first), so an edited,
deleted, inserted or reordered entry breaks the chain at that point.

An export is JSON lines: a header line naming the node and its attestation certificate, every entry,
and a signed head line (last seq and hash, signed at export time), so a truncated tail is detected
too. :func:`verify_export` checks all of it and, given the attestation root, the certificate chain.

Entries hold no secret: events, actors, custodian names, ids and hashes only. An entry is a value:
its fields (``details`` included) are never changed once it is made, so its body and hash are
encoded once and kept. :func:`make_entry` takes its own copy of ``details``: a caller that changes
its dict afterwards changes nothing in the entry.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from sdquorum import fields as f
from sdquorum import pki
from sdquorum.encoding import b64d, b64e, canonical_json, parse_json
from sdquorum.errors import MalformedError, VerificationError

__all__ = ["GENESIS", "AuditEntry", "ChainHead", "VerifiedLog", "export_lines", "make_entry", "verify_export"]

ENTRY_CONTEXT = b"sdquorum audit entry v1\x00"
HEAD_CONTEXT = b"sdquorum audit head v1\x00"
EXPORT_TYPE = "sdquorum-audit-export-v1"
GENESIS = bytes(32)


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    time: int
    event: str
    actor: str
    details: dict[str, Any]
    prev: bytes
    signature: bytes = field(default=b"", compare=False)

    def _signed_members(self) -> dict[str, Any]:
        """What the entry's hash (and so its signature) covers; :meth:`to_json` adds both."""
        return _members(self.seq, self.time, self.event, self.actor, self.details, self.prev)

    def body(self) -> bytes:
        """The signed and hashed bytes: canonical JSON of every field but the signature."""
        return self._body

    @functools.cached_property
    def _body(self) -> bytes:
        return canonical_json(self._signed_members())

    @functools.cached_property
    def hash(self) -> bytes:
        return hashlib.sha256(ENTRY_CONTEXT + self._body).digest()

    def to_json(self) -> dict[str, Any]:
        return {**self._signed_members(), "hash": self.hash.hex(), "sig": b64e(self.signature)}

    @classmethod
    def from_json(cls, obj: object) -> AuditEntry:
        if not isinstance(obj, dict):
            raise MalformedError("audit entry is not an object")
        try:
            entry = cls(
                seq=f.non_negative(obj["seq"], "audit field", hi=None),
                time=f.non_negative(obj["time"], "audit field", hi=None),
                event=f.string(obj["event"], "audit field"),
                actor=f.string(obj["actor"], "audit field"),
                details=obj["details"] if isinstance(obj["details"], dict) else _bad("details"),
                prev=bytes.fromhex(f.string(obj["prev"], "audit field")),
                signature=b64d(obj["sig"], "audit signature"),
            )
            entry.body()  # every field must encode back canonically
        except (KeyError, ValueError, RecursionError) as e:
            raise MalformedError(f"audit entry is malformed: {e}") from e
        return entry


def _members(
    seq: int, time: int, event: str, actor: str, details: dict[str, Any], prev: bytes
) -> dict[str, Any]:
    return {"seq": seq, "time": time, "event": event, "actor": actor, "details": details, "prev": prev.hex()}


class ChainHead(NamedTuple):
    """Where a chain ends: its last entry's seq and hash, all the next entry links to."""

    seq: int
    hash: bytes


def make_entry(
    prev: AuditEntry | ChainHead | None,
    *,
    time: int,
    event: str,
    actor: str,
    details: dict[str, Any],
    key: Ed25519PrivateKey,
) -> AuditEntry:
    """The entry after ``prev`` (None: the first of its chain), signed with ``key``. The entry holds
    a deep copy of ``details``, so what it signed and what it shows stay the same."""
    seq, prev_hash = (0, GENESIS) if prev is None else (prev.seq + 1, prev.hash)
    details = copy.deepcopy(details)
    body = canonical_json(_members(seq, time, event, actor, details, prev_hash))
    entry = AuditEntry(seq, time, event, actor, details, prev_hash, key.sign(ENTRY_CONTEXT + body))
    entry.__dict__["_body"] = body  # the same fields, so the same body: kept, not encoded again
    return entry


def export_lines(
    entries: Sequence[AuditEntry], *, node_id: str, certificate_der: bytes, key: Ed25519PrivateKey, time: int
) -> list[str]:
    head_seq = entries[-1].seq if entries else -1
    head_hash = entries[-1].hash if entries else GENESIS
    head_body = canonical_json({"node_id": node_id, "seq": head_seq, "hash": head_hash.hex(), "time": time})
    lines = [
        json.dumps(
            {"type": EXPORT_TYPE, "node_id": node_id, "certificate": b64e(certificate_der)}, sort_keys=True
        )
    ]
    lines += [json.dumps(e.to_json(), sort_keys=True) for e in entries]
    lines.append(
        json.dumps(
            {
                "type": "head",
                "seq": head_seq,
                "hash": head_hash.hex(),
                "time": time,
                "sig": b64e(key.sign(HEAD_CONTEXT + head_body)),
            },
            sort_keys=True,
        )
    )
    return lines


@dataclass(frozen=True)
class VerifiedLog:
    node_id: str
    entries: tuple[AuditEntry, ...]


def verify_export(
    lines: Iterable[str], *, root_pem: bytes | None = None, now: datetime | None = None
) -> VerifiedLog:
    """Verify an export; VerificationError names the first entry that fails and why."""
    rows = [line for line in (raw.strip() for raw in lines) if line]
    if len(rows) < 2:
        raise VerificationError("the audit export has no header or no head line: it is truncated")
    objs = [parse_json(r, f"audit export line {i + 1}") for i, r in enumerate(rows)]
    header, head, body = objs[0], objs[-1], objs[1:-1]
    if not isinstance(header, dict) or header.get("type") != EXPORT_TYPE:
        raise VerificationError("the first line is not an sdquorum audit export header")
    if not isinstance(head, dict) or head.get("type") != "head":
        raise VerificationError("the last line is not the signed head: the export is truncated")
    node_id = f.string(header.get("node_id"), "audit field")
    cert_der = b64d(header.get("certificate"), "audit certificate")
    if root_pem is not None:
        if now is None:
            raise VerificationError("checking the certificate chain needs the current time")
        public = pki.verify_attestation_chain(cert_der, root_pem, now)
    else:
        try:
            key = pki.load_cert(cert_der).public_key()
        except (ValueError, UnsupportedAlgorithm) as e:
            raise VerificationError("the audit certificate's public key does not parse") from e
        if not isinstance(key, Ed25519PublicKey):
            raise VerificationError("the audit certificate does not hold an Ed25519 key")
        public = key
    prev: AuditEntry | None = None
    entries = []
    for i, obj in enumerate(body):
        entry = AuditEntry.from_json(obj)
        where = f"line {i + 2} (seq {entry.seq})"
        if entry.seq != i:
            raise VerificationError(f"{where}: expected seq {i}: an entry was deleted, inserted or reordered")
        if entry.prev != (GENESIS if prev is None else prev.hash):
            raise VerificationError(
                f"{where}: does not chain to the entry before it: deleted, inserted or reordered"
            )
        if isinstance(obj, dict) and obj.get("hash") != entry.hash.hex():
            raise VerificationError(f"{where}: its content does not match its hash: the entry was edited")
        try:
            public.verify(entry.signature, ENTRY_CONTEXT + entry.body())
        except InvalidSignature as err:
            raise VerificationError(
                f"{where}: the node's signature does not verify: the entry was edited"
            ) from err
        entries.append(entry)
        prev = entry
    head_seq, head_hash = (
        f.integer(head.get("seq"), "audit field", -1, None, expected="a non-negative integer"),
        f.string(head.get("hash"), "audit field"),
    )
    head_body = canonical_json(
        {
            "node_id": node_id,
            "seq": head_seq,
            "hash": head_hash,
            "time": f.non_negative(head.get("time"), "audit field", hi=None),
        }
    )
    try:
        public.verify(b64d(head.get("sig"), "head signature"), HEAD_CONTEXT + head_body)
    except InvalidSignature as err:
        raise VerificationError("the head line's signature does not verify") from err
    last_seq, last_hash = (prev.seq, prev.hash.hex()) if prev else (-1, GENESIS.hex())
    if (head_seq, head_hash) != (last_seq, last_hash):
        raise VerificationError(
            f"the signed head is seq {head_seq} but the last entry is seq {last_seq}: entries were removed from the end"
        )
    return VerifiedLog(node_id, tuple(entries))


def _bad(what: str) -> dict[str, Any]:
    raise MalformedError(f"audit {what} must be an object")
