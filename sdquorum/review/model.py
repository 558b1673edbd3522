"""The review's values: custody records, drill results, retired epochs, findings and the review itself.

I/O-free. Kinds, outcomes, severities and statuses are :class:`~enum.StrEnum` members; their values
are the JSON and display words (``"handoff"``, ``"critical"``...), so a member compares equal to its
word and serialises as it. Constructors also take the words and store the member.

Invariants checked on construction (UsageError; MalformedError from ``from_json``, naming the value):
times are unix seconds in 0..2^63-1; slot numbers 1..255; epochs 0..2^32-1; every string a person
typed (holder, location, note, actor, drill detail) is at most :data:`MAX_TEXT` characters on one
line without control characters; a ``key_sha256`` is empty or the 32-byte SPKI SHA-256 of a key;
a handoff names its new holder, a location record its location, and every record but a review
names its custodian.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from sdquorum import fields as f
from sdquorum.encoding import Word
from sdquorum.errors import MalformedError, UsageError

__all__ = [
    "DRILL_OUTCOMES",
    "LOSS_KINDS",
    "MAX_TEXT",
    "RECORD_KINDS",
    "SEVERITIES",
    "STATUSES",
    "CustodianReview",
    "CustodianStatus",
    "CustodyRecord",
    "DrillOutcome",
    "DrillResult",
    "Finding",
    "RecordKind",
    "RetiredEpoch",
    "Review",
    "Severity",
]

MAX_TEXT = 500


class RecordKind(Word):
    """What a custody record says happened."""

    HANDOFF = "handoff"
    LOCATION = "location"
    LOST = "lost"
    COMPROMISED = "compromised"
    REVIEW = "review"


class DrillOutcome(Word):
    """How one custodian's possession drill ended."""

    PROVED = "proved"
    FAILED = "failed"
    UNREACHABLE = "unreachable"
    DENIED = "denied"


class Severity(Word):
    """How urgent a finding is; findings sort in this order."""

    CRITICAL = "critical"
    WARNING = "warning"
    INFO = "info"


class CustodianStatus(Word):
    """Whether a custodian's key is still usable."""

    OK = "ok"
    LOST = "lost"
    COMPROMISED = "compromised"


RECORD_KINDS = tuple(RecordKind)
LOSS_KINDS = (RecordKind.LOST, RecordKind.COMPROMISED)
DRILL_OUTCOMES = tuple(DrillOutcome)
SEVERITIES = tuple(Severity)
STATUSES = tuple(CustodianStatus)
_E = TypeVar("_E", bound=StrEnum)


@dataclass(frozen=True)
class CustodyRecord:
    """One custody event. Invalid values raise UsageError here, MalformedError from :meth:`from_json`."""

    time: int  # unix seconds
    kind: RecordKind  # the word ("handoff"...) is taken too and stored as the member
    custodian: str | None  # slot name; None only for kind "review"
    holder: str = ""  # new holder (handoff)
    location: str = ""  # new location (location; may also be given with handoff)
    note: str = ""
    actor: str = ""  # who recorded it (e.g. "admin")
    # The key the record is about: SHA-256 of its SubjectPublicKeyInfo (pki.spki_sha256), 32 bytes,
    # or empty when unknown (records made before keys were recorded, or a name in no roster).
    key_sha256: bytes = b""

    def __post_init__(self) -> None:
        _check_time(self.time, "custody record time")
        if not isinstance(self.key_sha256, bytes) or len(self.key_sha256) not in (0, 32):
            raise UsageError("custody record key_sha256 must be the 32-byte SPKI SHA-256 of a key, or empty")
        object.__setattr__(self, "kind", _member(RecordKind, self.kind, "custody record kind"))
        if self.custodian is None:
            if self.kind != RecordKind.REVIEW:
                raise UsageError(f"a {self.kind!r} custody record must name its custodian")
        else:
            _check_text(self.custodian, "custodian", required=True)
        for what in ("holder", "location", "note", "actor"):
            _check_text(getattr(self, what), what)
        if self.kind == RecordKind.HANDOFF and not self.holder.strip():
            raise UsageError("a handoff record must name the new holder")
        if self.kind == RecordKind.LOCATION and not self.location.strip():
            raise UsageError("a location record must name the new location")

    def to_json(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "kind": self.kind.value,
            "custodian": self.custodian,
            "holder": self.holder,
            "location": self.location,
            "note": self.note,
            "actor": self.actor,
        } | ({"key_sha256": self.key_sha256.hex()} if self.key_sha256 else {})

    @classmethod
    def from_json(cls, obj: object) -> CustodyRecord:
        fields = f.members(
            obj,
            "custody record",
            {"time", "kind", "custodian"},
            {"holder", "location", "note", "actor", "key_sha256"},
        )
        custodian = fields["custodian"]
        key = f.string(fields.get("key_sha256", ""), "custody record key_sha256")
        if key and not (len(key) == 64 and f.HEX.fullmatch(key)):
            raise MalformedError("custody record key_sha256 must be 64 lowercase hex digits")
        return f.construct(
            "custody record",
            lambda: cls(
                time=fields["time"],
                kind=_member(
                    RecordKind, f.string(fields["kind"], "custody record kind"), "custody record kind"
                ),
                custodian=None if custodian is None else f.string(custodian, "custody record custodian"),
                holder=f.string(fields.get("holder", ""), "custody record holder"),
                location=f.string(fields.get("location", ""), "custody record location"),
                note=f.string(fields.get("note", ""), "custody record note"),
                actor=f.string(fields.get("actor", ""), "custody record actor"),
                key_sha256=bytes.fromhex(key),
            ),
        )


@dataclass(frozen=True)
class DrillResult:
    """The outcome of one custodian's possession drill."""

    time: int
    custodian: str
    x: int
    # A DrillOutcome; typed str because callers map their own words onto it (the coordinator's
    # DRILL_OUTCOMES), and stored as the member.
    outcome: str
    detail: str = ""

    def __post_init__(self) -> None:
        _check_time(self.time, "drill time")
        _check_text(self.custodian, "drill custodian", required=True)
        f.integer(self.x, "drill x", 1, 255, expected="a slot number in 1..255", error=UsageError)
        object.__setattr__(self, "outcome", _member(DrillOutcome, self.outcome, "drill outcome"))
        _check_text(self.detail, "drill detail")

    def to_json(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "custodian": self.custodian,
            "x": self.x,
            "outcome": str(self.outcome),
            "detail": self.detail,
        }

    @classmethod
    def from_json(cls, obj: object) -> DrillResult:
        fields = f.members(obj, "drill result", {"time", "custodian", "x", "outcome"}, {"detail"})
        return f.construct(
            "drill result",
            lambda: cls(
                time=fields["time"],
                custodian=f.string(fields["custodian"], "drill custodian"),
                x=fields["x"],
                outcome=f.string(fields["outcome"], "drill outcome"),
                detail=f.string(fields.get("detail", ""), "drill detail"),
            ),
        )


@dataclass(frozen=True)
class RetiredEpoch:
    """An epoch replaced by a rotation: its SD files still open with its custodians' keys."""

    epoch: int
    sd_header_sha256: bytes
    retired_at: int

    def __post_init__(self) -> None:
        f.integer(
            self.epoch, "retired epoch", 0, 2**32 - 1, expected="an integer in 0..2^32-1", error=UsageError
        )
        if not isinstance(self.sd_header_sha256, bytes) or len(self.sd_header_sha256) != 32:
            raise UsageError("retired epoch sd_header_sha256 must be 32 bytes")
        _check_time(self.retired_at, "retired_at")

    def to_json(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "sd_header_sha256": self.sd_header_sha256.hex(),
            "retired_at": self.retired_at,
        }

    @classmethod
    def from_json(cls, obj: object) -> RetiredEpoch:
        fields = f.members(obj, "retired epoch", {"epoch", "sd_header_sha256", "retired_at"}, set())
        digest = f.string(fields["sd_header_sha256"], "retired epoch sd_header_sha256")
        if len(digest) != 64:
            raise MalformedError("retired epoch: sd_header_sha256 must be 64 hex digits")
        try:
            raw = bytes.fromhex(digest)
        except ValueError as e:
            raise MalformedError("retired epoch: sd_header_sha256 must be hex") from e
        return f.construct(
            "retired epoch",
            lambda: cls(epoch=fields["epoch"], sd_header_sha256=raw, retired_at=fields["retired_at"]),
        )


@dataclass(frozen=True)
class Finding:
    severity: Severity
    rule: str  # short id, e.g. "quorum-min"
    message: str  # one line a person can act on

    def __post_init__(self) -> None:
        object.__setattr__(self, "severity", _member(Severity, self.severity, "finding severity"))

    def to_json(self) -> dict[str, Any]:
        return {"severity": self.severity.value, "rule": self.rule, "message": self.message}


@dataclass(frozen=True)
class CustodianReview:
    x: int
    name: str
    holder: str
    location: str
    key_bits: int
    cert_not_after: int
    last_drill: DrillResult | None
    history: tuple[CustodyRecord, ...]
    status: CustodianStatus

    def to_json(self) -> dict[str, Any]:
        return {
            "x": self.x,
            "name": self.name,
            "holder": self.holder,
            "location": self.location,
            "key_bits": self.key_bits,
            "cert_not_after": self.cert_not_after,
            "last_drill": None if self.last_drill is None else self.last_drill.to_json(),
            "history": [r.to_json() for r in self.history],
            "status": self.status.value,
        }


@dataclass(frozen=True)
class Review:
    node_id: str
    domain_id: str  # hex
    epoch: int
    quorum: int
    n: int
    generated_at: int
    compromised: bool
    last_review: int | None
    custodians: tuple[CustodianReview, ...]
    retired: tuple[RetiredEpoch, ...]
    findings: tuple[Finding, ...]

    @property
    def at_risk(self) -> bool:
        """True when any finding is critical."""
        return any(x.severity == Severity.CRITICAL for x in self.findings)

    def count(self, severity: str) -> int:
        """How many findings have ``severity`` (a :class:`Severity` or its word)."""
        return sum(1 for x in self.findings if x.severity == severity)


# --- validation --------------------------------------------------------------------------------------


def _member(enum: type[_E], value: object, what: str) -> _E:
    """``value`` (a member or its word) as a member of ``enum``; UsageError naming ``what`` otherwise."""
    if isinstance(value, str):
        try:
            return enum(value)
        except ValueError:
            pass
    raise UsageError(f"{what} {value!r} is unknown: use one of {', '.join(enum)}")


def _check_time(value: object, what: str) -> None:
    f.integer(value, what, 0, f.MAX_INT63, expected="unix seconds (a non-negative integer)", error=UsageError)


def _check_text(value: object, what: str, *, required: bool = False) -> None:
    text = f.string(value, what, error=UsageError)
    if required and not text.strip():
        raise UsageError(f"{what} must not be empty")
    if len(text) > MAX_TEXT:
        raise UsageError(f"{what} is {len(text)} characters long: keep it to {MAX_TEXT}")
    if any(unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp") for ch in text):
        raise UsageError(f"{what} must be one line without control characters")
