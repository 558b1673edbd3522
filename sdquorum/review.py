"""The quarterly security-domain review: custodians, locations, drills, hand-offs and findings.

I/O-free: :func:`build_review` takes the SD header, the custody records, the drill results and the
retired epochs, with ``now`` (unix seconds) passed in; the renderers return text. Nothing here
reads a disk or a clock or imports grpc. The source document is
``seed/managed-hsm-security-domain.txt``; each rule names the passage it comes from.

Rules (each a :class:`Finding`, by rule id):

* ``compromised`` (critical): the domain is flagged compromised. *Security domain compromise or
  loss*: "A new managed HSM instance must be provisioned, and a new security domain ... must be
  implemented", after the data is decrypted with the current keys; so: stop using the domain,
  provision a new HSM with a new SD and re-encrypt the data under new keys
  (``docs/runbooks/compromise.md``). Also raised when as many keys as the quorum are lost or
  compromised: whoever holds them can open the SD ("A lost security domain is considered
  compromised").
* ``quorum-min``: m = 2 warning, m < 2 critical. *Security domain key handling prohibitions*: "m must
  be greater that 1 (and should ideally be >= 3)"; *Establishing a security domain quorum*: "with at
  least m >= 3".
* ``max-custodians`` (critical): n > 10. *Establishing a security domain quorum*: "The maximum quorum
  size ... is 10".
* ``one-holder-per-share`` (critical): two shares whose current holder is the same person (holders
  compared case- and space-insensitively). *Prohibitions*: "One person should never be allowed to have
  physical access to all quorum keys"; *Establishing a quorum*: "each private key given to a
  different person". The message says so when that person alone holds a quorum.
* ``separate-locations`` (warning): two shares at the same current location. *Storing the security
  domain keys*: "The storage devices must be held at separate geographical locations".
* ``location-unknown`` (warning): no location recorded for a custodian. *Storing the security domain
  keys*: "you must have up-to-date records of where the security domain and its private keys are
  stored".
* ``review-age`` (warning): no ``review`` record, or the last one older than 90 days. *Establishing a
  quorum*: "conduct a security domain review at least once every quarter".
* ``drill-age`` (warning): a custodian never drilled in this epoch, or last drilled more than 90 days
  ago. ``drill-failed``: the last drill ``failed`` or was ``denied`` (critical) or ``unreachable``
  (warning). *Storing the security domain keys*: "you must know who has control of the security
  domain"; a possession drill (DESIGN.md) is how that knowledge is kept current, each quarter with
  the review.
* ``lost-key`` (critical): a custodian of this roster has a ``lost`` or ``compromised`` record made at
  or after this epoch was sealed, or its slot holds a key recorded lost or compromised at any time
  (by SPKI SHA-256); rotate at once. Its status is ``lost`` or ``compromised``.
  *Establishing a quorum*: review "when ... A USB drive or HSM belonging to a member of the security
  domain quorum is lost or compromised". Also critical when fewer than m keys remain usable (the
  domain can no longer be recovered: "prevent crypto lockout"). Info: a loss recorded before this
  epoch was sealed (the rotation that made this epoch should have replaced that key: confirm it), or
  a loss recorded for a name not in this roster ("record for a custodian not in this epoch").
* ``old-epochs`` (warning): retired epochs exist; their SD files still open with the old custodians'
  keys, so every copy must be destroyed. *Security domain compromise or loss* and DESIGN.md,
  Rotation ("the review lists old SD files that must be destroyed").
* ``cert-expiry``: a wrapping certificate expired (warning) or expiring within 90 days (info).
  *Storing the security domain keys*: keep "up-to-date records"; an expired certificate cannot be
  used for a new download or rotation (DESIGN.md, Download).

Ordering and matching:

* Records apply to custodians by slot name; a ``lost`` or ``compromised`` record that names its
  key (``key_sha256``, the SHA-256 of the key's SubjectPublicKeyInfo, which the node records) also
  applies to every slot holding that key, whatever its name, certificate or epoch: a key recorded
  lost stays lost under any new certificate. They are taken in time order (stable for equal
  times). Current holder = the last ``handoff``'s holder, else the slot name; current location = the
  last record carrying a non-empty location (a ``handoff`` may carry one too).
* A drill counts for slot x only when it names that slot's x and custodian and happened at or after
  the header's ``created_at``: a drill of an earlier epoch proved a share that no longer exists.
* A custodian whose key is lost or compromised gets ``lost-key`` and no drill, certificate or
  location-unknown findings: rotation replaces that key.
* "Older than 90 days" means ``now - time > 90 * 86400``.

Findings are sorted critical, warning, info (stable within a severity). :attr:`Review.at_risk` is true
when any finding is critical. Every string a person typed (holder, location, note, actor, drill
detail) is at most 500 characters on one line; the renderers escape it (Markdown and HTML).
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from sdquorum.errors import MalformedError, UsageError
from sdquorum.pki import spki_sha256
from sdquorum.sdfile import Header, Slot

__all__ = [
    "DRILL_OUTCOMES",
    "MAX_TEXT",
    "RECORD_KINDS",
    "SEVERITIES",
    "STATUSES",
    "CustodianReview",
    "CustodyRecord",
    "DrillResult",
    "Finding",
    "RetiredEpoch",
    "Review",
    "build_review",
    "render_html",
    "render_markdown",
    "review_to_json",
]

DAY = 86_400
REVIEW_MAX_AGE = 90 * DAY  # "at least once every quarter"
DRILL_MAX_AGE = 90 * DAY
CERT_NOTICE = 90 * DAY
RECOMMENDED_QUORUM = 3
MAX_CUSTODIANS = 10
MAX_TEXT = 500
RECORD_KINDS = ("handoff", "location", "lost", "compromised", "review")
LOSS_KINDS = ("lost", "compromised")
DRILL_OUTCOMES = ("proved", "failed", "unreachable", "denied")
SEVERITIES = ("critical", "warning", "info")
STATUSES = ("ok", "lost", "compromised")
RUNBOOK = "docs/runbooks/compromise.md"
_T = TypeVar("_T")
REVIEW_TYPE = "sdquorum-review"
_HEX64 = re.compile(r"[0-9a-f]{64}")


# --- values ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CustodyRecord:
    """One custody event. Invalid values raise UsageError here, MalformedError from :meth:`from_json`."""

    time: int  # unix seconds
    kind: str  # "handoff" | "location" | "lost" | "compromised" | "review"
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
        if self.kind not in RECORD_KINDS:
            raise UsageError(
                f"custody record kind {self.kind!r} is unknown: use one of {', '.join(RECORD_KINDS)}"
            )
        if self.custodian is None:
            if self.kind != "review":
                raise UsageError(f"a {self.kind!r} custody record must name its custodian")
        else:
            _check_text(self.custodian, "custodian", required=True)
        for what in ("holder", "location", "note", "actor"):
            _check_text(getattr(self, what), what)
        if self.kind == "handoff" and not self.holder.strip():
            raise UsageError("a handoff record must name the new holder")
        if self.kind == "location" and not self.location.strip():
            raise UsageError("a location record must name the new location")

    def to_json(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "kind": self.kind,
            "custodian": self.custodian,
            "holder": self.holder,
            "location": self.location,
            "note": self.note,
            "actor": self.actor,
        } | ({"key_sha256": self.key_sha256.hex()} if self.key_sha256 else {})

    @classmethod
    def from_json(cls, obj: object) -> CustodyRecord:
        fields = _fields(
            obj,
            "custody record",
            {"time", "kind", "custodian"},
            {"holder", "location", "note", "actor", "key_sha256"},
        )
        custodian = fields["custodian"]
        key = _str(fields.get("key_sha256", ""), "custody record key_sha256")
        if not _HEX64.fullmatch(key) and key:
            raise MalformedError("custody record key_sha256 must be 64 lowercase hex digits")
        return _construct(
            "custody record",
            lambda: cls(
                time=fields["time"],
                kind=_str(fields["kind"], "custody record kind"),
                custodian=None if custodian is None else _str(custodian, "custody record custodian"),
                holder=_str(fields.get("holder", ""), "custody record holder"),
                location=_str(fields.get("location", ""), "custody record location"),
                note=_str(fields.get("note", ""), "custody record note"),
                actor=_str(fields.get("actor", ""), "custody record actor"),
                key_sha256=bytes.fromhex(key),
            ),
        )


@dataclass(frozen=True)
class DrillResult:
    """The outcome of one custodian's possession drill."""

    time: int
    custodian: str
    x: int
    outcome: str  # "proved" | "failed" | "unreachable" | "denied"
    detail: str = ""

    def __post_init__(self) -> None:
        _check_time(self.time, "drill time")
        _check_text(self.custodian, "drill custodian", required=True)
        if not isinstance(self.x, int) or isinstance(self.x, bool) or not 1 <= self.x <= 255:
            raise UsageError("drill x must be a slot number in 1..255")
        if self.outcome not in DRILL_OUTCOMES:
            raise UsageError(
                f"drill outcome {self.outcome!r} is unknown: use one of {', '.join(DRILL_OUTCOMES)}"
            )
        _check_text(self.detail, "drill detail")

    def to_json(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "custodian": self.custodian,
            "x": self.x,
            "outcome": self.outcome,
            "detail": self.detail,
        }

    @classmethod
    def from_json(cls, obj: object) -> DrillResult:
        fields = _fields(obj, "drill result", {"time", "custodian", "x", "outcome"}, {"detail"})
        return _construct(
            "drill result",
            lambda: cls(
                time=fields["time"],
                custodian=_str(fields["custodian"], "drill custodian"),
                x=fields["x"],
                outcome=_str(fields["outcome"], "drill outcome"),
                detail=_str(fields.get("detail", ""), "drill detail"),
            ),
        )


@dataclass(frozen=True)
class RetiredEpoch:
    """An epoch replaced by a rotation: its SD files still open with its custodians' keys."""

    epoch: int
    sd_header_sha256: bytes
    retired_at: int

    def __post_init__(self) -> None:
        if not isinstance(self.epoch, int) or isinstance(self.epoch, bool) or not 0 <= self.epoch < 2**32:
            raise UsageError("retired epoch must be an integer in 0..2^32-1")
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
        fields = _fields(obj, "retired epoch", {"epoch", "sd_header_sha256", "retired_at"}, set())
        digest = _str(fields["sd_header_sha256"], "retired epoch sd_header_sha256")
        if len(digest) != 64:
            raise MalformedError("retired epoch: sd_header_sha256 must be 64 hex digits")
        try:
            raw = bytes.fromhex(digest)
        except ValueError as e:
            raise MalformedError("retired epoch: sd_header_sha256 must be hex") from e
        return _construct(
            "retired epoch",
            lambda: cls(epoch=fields["epoch"], sd_header_sha256=raw, retired_at=fields["retired_at"]),
        )


@dataclass(frozen=True)
class Finding:
    severity: str  # "critical" | "warning" | "info"
    rule: str  # short id, e.g. "quorum-min"
    message: str  # one line a person can act on

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise UsageError(
                f"finding severity {self.severity!r} is unknown: use one of {', '.join(SEVERITIES)}"
            )

    def to_json(self) -> dict[str, Any]:
        return {"severity": self.severity, "rule": self.rule, "message": self.message}


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
    status: str  # "ok" | "lost" | "compromised"

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
            "status": self.status,
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
        return any(f.severity == "critical" for f in self.findings)

    def count(self, severity: str) -> int:
        return sum(1 for f in self.findings if f.severity == severity)


# --- the review --------------------------------------------------------------------------------------


def build_review(
    header: Header,
    records: Sequence[CustodyRecord],
    drills: Sequence[DrillResult],
    retired: Sequence[RetiredEpoch],
    *,
    compromised: bool,
    node_id: str,
    now: int,
) -> Review:
    """Apply every rule of the module docstring to one epoch's roster and custody history."""
    ordered = sorted(records, key=lambda r: r.time)  # stable: equal times keep their recorded order
    slots = sorted(header.slots, key=lambda s: s.x)
    custodians = tuple(_custodian(slot, ordered, drills, header.created_at) for slot in slots)
    labels = _labels(custodians)
    reviews = [r.time for r in ordered if r.kind == "review"]
    last_review = reviews[-1] if reviews else None

    findings: list[Finding] = []
    if compromised:
        findings.append(
            _critical(
                "compromised",
                "the security domain is marked compromised: stop using it; decrypt your data with the current keys, "
                f"provision a new HSM with a new security domain and re-encrypt the data under new keys ({RUNBOOK})",
            )
        )
    findings += _quorum_rules(header.quorum, header.n)
    findings += _loss_rules(header, custodians, labels, ordered)
    findings += _holder_rules(custodians, labels, header.quorum)
    for c in custodians:
        if c.status == "ok":
            findings += _custodian_rules(c, labels[c.x], now)
    findings += _review_rules(last_review, now)
    if retired:
        listed = ", ".join(
            f"{r.epoch} (header sha256 {r.sd_header_sha256.hex()[:16]}…)"
            for r in sorted(retired, key=lambda r: r.epoch)
        )
        epochs = "epoch" if len(retired) == 1 else "epochs"
        findings.append(
            _warning(
                "old-epochs",
                f"destroy every copy of the SD files of {epochs} {listed}: they still open with the old custodians' keys",
            )
        )
    findings.sort(key=lambda f: SEVERITIES.index(f.severity))  # stable within a severity
    return Review(
        node_id=node_id,
        domain_id=header.domain_id.hex(),
        epoch=header.epoch,
        quorum=header.quorum,
        n=header.n,
        generated_at=now,
        compromised=compromised,
        last_review=last_review,
        custodians=custodians,
        retired=tuple(sorted(retired, key=lambda r: r.epoch)),
        findings=tuple(findings),
    )


def _custodian(
    slot: Slot, ordered: Sequence[CustodyRecord], drills: Sequence[DrillResult], sealed_at: int
) -> CustodianReview:
    history = tuple(r for r in ordered if r.custodian == slot.name)
    holder, location = slot.name, ""
    for r in history:
        if r.kind == "handoff":
            holder = r.holder
        if r.location:
            location = r.location
    mine = [d for d in drills if d.x == slot.x and d.custodian == slot.name and d.time >= sealed_at]
    last_drill = max(reversed(mine), key=lambda d: d.time, default=None)  # the later-given one wins a tie
    losses = {r.kind for r in history if r.kind in LOSS_KINDS and r.time >= sealed_at}
    key = spki_sha256(slot.certificate_der)
    losses |= {r.kind for r in ordered if r.kind in LOSS_KINDS and r.key_sha256 and r.key_sha256 == key}
    status = "compromised" if "compromised" in losses else "lost" if "lost" in losses else "ok"
    key_bits, not_after = _certificate_facts(slot)
    return CustodianReview(
        x=slot.x,
        name=slot.name,
        holder=holder,
        location=location,
        key_bits=key_bits,
        cert_not_after=not_after,
        last_drill=last_drill,
        history=history,
        status=status,
    )


def _certificate_facts(slot: Slot) -> tuple[int, int]:
    try:
        cert = x509.load_der_x509_certificate(slot.certificate_der)
        key = cert.public_key()
    except ValueError as e:
        raise MalformedError(f"slot {slot.x} ({slot.name}) holds a certificate that does not parse") from e
    bits = key.key_size if isinstance(key, rsa.RSAPublicKey) else 0
    return bits, int(cert.not_valid_after_utc.timestamp())


def _labels(custodians: Sequence[CustodianReview]) -> dict[int, str]:
    """How messages name each slot: its name, or name and x when two slots share a name."""
    names = [c.name for c in custodians]
    return {c.x: c.name if names.count(c.name) == 1 else f"{c.name} (x={c.x})" for c in custodians}


def _quorum_rules(m: int, n: int) -> list[Finding]:
    out = []
    if m < 2:
        out.append(
            _critical(
                "quorum-min",
                f"the quorum is {m} of {n}: one person can rebuild the HSM; rotate to a quorum of at least 2, "
                f"ideally {RECOMMENDED_QUORUM} or more (sdctl rotate)",
            )
        )
    elif m < RECOMMENDED_QUORUM:
        out.append(
            _warning(
                "quorum-min",
                f"the quorum is {m} of {n}: two people can rebuild the HSM; m >= {RECOMMENDED_QUORUM} recommended "
                "(sdctl rotate)",
            )
        )
    if n > MAX_CUSTODIANS:
        out.append(
            _critical(
                "max-custodians",
                f"{n} custodians exceed the maximum of {MAX_CUSTODIANS}: rotate to at most {MAX_CUSTODIANS} (sdctl rotate)",
            )
        )
    return out


def _loss_rules(
    header: Header,
    custodians: Sequence[CustodianReview],
    labels: dict[int, str],
    ordered: Sequence[CustodyRecord],
) -> list[Finding]:
    out = []
    lost = [c for c in custodians if c.status != "ok"]
    for c in lost:
        out.append(
            _critical(
                "lost-key",
                f"{labels[c.x]}'s key is recorded {c.status}: rotate the quorum at once (sdctl rotate)",
            )
        )
    if lost and len(lost) >= header.quorum:
        out.append(
            _critical(
                "compromised",
                f"{_join(labels[c.x] for c in lost)}'s keys are lost or compromised, as many as the quorum of "
                f"{header.quorum}: treat the security domain as compromised ({RUNBOOK})",
            )
        )
    if lost and header.n - len(lost) < header.quorum:
        out.append(
            _critical(
                "lost-key",
                f"only {header.n - len(lost)} of {header.n} custodian keys remain, fewer than the quorum of "
                f"{header.quorum}: the domain can no longer be recovered or rotated; back up now and provision "
                f"a new security domain ({RUNBOOK})",
            )
        )
    roster = {c.name for c in custodians}
    held = {spki_sha256(slot.certificate_der) for slot in header.slots}
    for r in ordered:
        if r.kind not in LOSS_KINDS or r.custodian is None:
            continue
        if r.key_sha256 and r.key_sha256 in held:
            continue  # a slot of this roster holds that very key: its status says so (critical)
        if r.key_sha256 and r.time < header.created_at:
            out.append(
                _info(
                    "lost-key",
                    f"{r.custodian}'s key (SPKI SHA-256 {r.key_sha256.hex()[:16]}…) was recorded {r.kind} on "
                    f"{_date(r.time)}; no slot of epoch {header.epoch} holds it",
                )
            )
        elif r.custodian not in roster:
            out.append(
                _info(
                    "lost-key",
                    f"record for a custodian not in this epoch: {r.custodian}'s key was recorded {r.kind} on "
                    f"{_date(r.time)}; make sure it holds no share of a security domain still kept",
                )
            )
        elif r.time < header.created_at:
            out.append(
                _info(
                    "lost-key",
                    f"{r.custodian}'s key was recorded {r.kind} on {_date(r.time)}, before epoch {header.epoch} was "
                    f"sealed on {_date(header.created_at)}: confirm that rotation gave {r.custodian} a new key",
                )
            )
    return out


def _holder_rules(custodians: Sequence[CustodianReview], labels: dict[int, str], m: int) -> list[Finding]:
    out = []
    for group in _groups(custodians, lambda c: c.holder):
        holder = group[0].holder
        names = _join(labels[c.x] for c in group)
        if len(group) >= m:
            message = (
                f"{holder} holds {len(group)} shares ({names}), as many as the quorum of {m}: that person alone can "
                "rebuild the HSM; hand the shares off to separate people now"
            )
        else:
            message = (
                f"{names} are held by one person, {holder}: each share needs a holder of its own; "
                "hand the extra shares off to separate people"
            )
        out.append(_critical("one-holder-per-share", message))
    for group in _groups(custodians, lambda c: c.location):
        out.append(
            _warning(
                "separate-locations",
                f"{_join(labels[c.x] for c in group)} keep their keys at the same location ({group[0].location}): "
                "store each key at a separate geographical location",
            )
        )
    return out


def _groups(
    custodians: Sequence[CustodianReview], value: Callable[[CustodianReview], str]
) -> list[list[CustodianReview]]:
    """Custodians sharing one non-empty value (compared ignoring case and spacing), in x order."""
    groups: dict[str, list[CustodianReview]] = {}
    for c in custodians:
        key = " ".join(value(c).split()).casefold()
        if key:
            groups.setdefault(key, []).append(c)
    return [g for g in groups.values() if len(g) > 1]


def _custodian_rules(c: CustodianReview, label: str, now: int) -> list[Finding]:
    out = []
    if not c.location.strip():
        out.append(
            _warning(
                "location-unknown", f"{label} has no recorded location: record where {label}'s key is stored"
            )
        )
    drill = c.last_drill
    if drill is None:
        out.append(
            _warning(
                "drill-age",
                f"{label} has not proved possession of their share in this epoch: run a possession drill (sdctl drill)",
            )
        )
    else:
        if now - drill.time > DRILL_MAX_AGE:
            out.append(
                _warning(
                    "drill-age",
                    f"{label}'s last possession drill was on {_date(drill.time)}, {_days(now - drill.time)} ago: "
                    "run a possession drill (sdctl drill)",
                )
            )
        detail = f" ({drill.detail})" if drill.detail else ""
        if drill.outcome == "failed":
            out.append(
                _critical(
                    "drill-failed",
                    f"{label}'s possession drill on {_date(drill.time)} failed{detail}: check {label}'s key and agent "
                    "and drill again; if the key cannot open its share, rotate it out (sdctl rotate)",
                )
            )
        elif drill.outcome == "denied":
            out.append(
                _critical(
                    "drill-failed",
                    f"{label} denied the possession drill on {_date(drill.time)}{detail}: ask {label} why and drill "
                    "again; if the key is no longer under their control, rotate it out (sdctl rotate)",
                )
            )
        elif drill.outcome == "unreachable":
            out.append(
                _warning(
                    "drill-failed",
                    f"{label}'s agent was unreachable for the possession drill on {_date(drill.time)}{detail}: "
                    "check that it runs and can reach the node, then drill again",
                )
            )
    if c.cert_not_after <= now:
        out.append(
            _warning(
                "cert-expiry",
                f"{label}'s wrapping certificate expired on {_date(c.cert_not_after)}: issue {label} a new key "
                "and rotate it in (sdctl rotate)",
            )
        )
    elif c.cert_not_after - now <= CERT_NOTICE:
        out.append(
            _info(
                "cert-expiry",
                f"{label}'s wrapping certificate expires on {_date(c.cert_not_after)}, in "
                f"{_days(c.cert_not_after - now)}: plan a new key for the next rotation",
            )
        )
    return out


def _review_rules(last_review: int | None, now: int) -> list[Finding]:
    if last_review is None:
        return [
            _warning(
                "review-age",
                "no security domain review is recorded: hold one and record it, at least once a quarter",
            )
        ]
    if now - last_review > REVIEW_MAX_AGE:
        return [
            _warning(
                "review-age",
                f"the last security domain review was on {_date(last_review)}, {_days(now - last_review)} ago: "
                "hold one and record it, at least once a quarter",
            )
        ]
    return []


def _critical(rule: str, message: str) -> Finding:
    return Finding("critical", rule, message)


def _warning(rule: str, message: str) -> Finding:
    return Finding("warning", rule, message)


def _info(rule: str, message: str) -> Finding:
    return Finding("info", rule, message)


# --- renderings --------------------------------------------------------------------------------------


def review_to_json(review: Review) -> dict[str, Any]:
    """The review as a JSON-ready dict (bytes as hex, times as unix seconds)."""
    return {
        "type": REVIEW_TYPE,
        "version": 1,
        "node_id": review.node_id,
        "domain_id": review.domain_id,
        "epoch": review.epoch,
        "quorum": review.quorum,
        "n": review.n,
        "generated_at": review.generated_at,
        "compromised": review.compromised,
        "at_risk": review.at_risk,
        "last_review": review.last_review,
        "custodians": [c.to_json() for c in review.custodians],
        "retired": [r.to_json() for r in review.retired],
        "findings": [f.to_json() for f in review.findings],
    }


def render_markdown(review: Review) -> str:
    """The review as Markdown; every value from a record or certificate is escaped."""
    e = _md
    lines = [f"# Security domain review: {e(review.domain_id)}", ""]
    if review.at_risk:
        lines += [
            f"> **AT RISK**: {_at_risk_line(review)}",
            "",
        ]
    lines += ["## Summary", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {e(v)} |" for k, v in _summary(review)]
    lines += ["", "## Findings", ""]
    if review.findings:
        lines += ["| Severity | Rule | Finding |", "|---|---|---|"]
        lines += [f"| {f.severity} | {e(f.rule)} | {e(f.message)} |" for f in review.findings]
    else:
        lines.append("No findings.")
    lines += [
        "",
        "## Custodians",
        "",
        "| x | Name | Holder | Location | Key | Certificate expires | Last drill | Status |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in review.custodians:
        cells = (
            str(c.x),
            c.name,
            c.holder,
            c.location or "unknown",
            _key(c),
            _date(c.cert_not_after),
            _drill(c),
            c.status,
        )
        lines.append("| " + " | ".join(e(v) for v in cells) + " |")
    lines += ["", "## Hand-off history", ""]
    for c in review.custodians:
        lines += [f"### {c.x}. {e(c.name)}", ""]
        if c.history:
            lines += [
                "| Time | Event | Holder | Location | Note | Recorded by |",
                "|---|---|---|---|---|---|",
            ]
            lines += ["| " + " | ".join(e(v) for v in _history_cells(r)) + " |" for r in c.history]
        else:
            lines.append("No records.")
        lines.append("")
    lines += ["## Retired epochs", ""]
    if review.retired:
        lines += ["| Epoch | SD header SHA-256 | Retired at |", "|---|---|---|"]
        lines += [
            f"| {r.epoch} | `{r.sd_header_sha256.hex()}` | {_datetime(r.retired_at)} |"
            for r in review.retired
        ]
    else:
        lines.append("None.")
    return "\n".join(lines) + "\n"


def render_html(review: Review) -> str:
    """One self-contained HTML page: inline CSS, no script, no external reference; every value escaped."""
    e = _h
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Security domain review: {e(review.domain_id)} epoch {review.epoch}</title>",
        f"<style>{_CSS}</style>",
        "</head><body>",
        f'<h1>Security domain review <span class="mono">{e(review.domain_id)}</span></h1>',
    ]
    if review.at_risk:
        parts.append(
            '<div id="banner" class="banner at-risk" role="alert"><strong>AT RISK</strong>: '
            f"{e(_at_risk_line(review))}</div>"
        )
    else:
        parts.append('<div id="banner" class="banner calm">No critical findings.</div>')
    parts.append('<section id="summary"><h2>Summary</h2><table class="kv"><tbody>')
    parts += [f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in _summary(review)]
    parts.append("</tbody></table></section>")

    parts.append('<section id="findings"><h2>Findings</h2>')
    if review.findings:
        parts.append("<table><thead><tr><th>Severity</th><th>Rule</th><th>Finding</th></tr></thead><tbody>")
        for f in review.findings:
            parts.append(
                f'<tr class="finding {e(f.severity)}" data-rule="{e(f.rule)}">'
                f'<td><span class="badge {e(f.severity)}">{e(f.severity)}</span></td>'
                f'<td class="mono nowrap">{e(f.rule)}</td><td>{e(f.message)}</td></tr>'
            )
        parts.append("</tbody></table>")
    else:
        parts.append("<p>No findings.</p>")
    parts.append("</section>")

    parts.append(
        '<section id="custodians"><h2>Custodians</h2><table><thead><tr><th>x</th><th>Name</th><th>Holder</th>'
        "<th>Location</th><th>Key</th><th>Certificate expires</th><th>Last drill</th><th>Status</th></tr>"
        "</thead><tbody>"
    )
    for c in review.custodians:
        location = e(c.location) if c.location else '<span class="muted">unknown</span>'
        parts.append(
            f'<tr class="custodian {e(c.status)}"><td>{c.x}</td><td class="name">{e(c.name)}</td>'
            f"<td>{e(c.holder)}</td><td>{location}</td><td>{e(_key(c))}</td><td>{e(_date(c.cert_not_after))}</td>"
            f'<td>{e(_drill(c))}</td><td><span class="status {e(c.status)}">{e(c.status)}</span></td></tr>'
        )
    parts.append("</tbody></table></section>")

    parts.append('<section id="history"><h2>Hand-off history</h2>')
    for c in review.custodians:
        parts.append(f"<h3>{c.x}. {e(c.name)}</h3>")
        if c.history:
            parts.append(
                '<table class="history"><thead><tr><th>Time</th><th>Event</th><th>Holder</th><th>Location</th>'
                "<th>Note</th>"
                "<th>Recorded by</th></tr></thead><tbody>"
            )
            parts += [
                "<tr>" + "".join(f"<td>{e(v)}</td>" for v in _history_cells(r)) + "</tr>" for r in c.history
            ]
            parts.append("</tbody></table>")
        else:
            parts.append('<p class="muted">No records.</p>')
    parts.append("</section>")

    parts.append('<section id="retired"><h2>Retired epochs</h2>')
    if review.retired:
        parts.append(
            "<table><thead><tr><th>Epoch</th><th>SD header SHA-256</th><th>Retired at</th></tr></thead><tbody>"
        )
        parts += [
            f'<tr><td>{r.epoch}</td><td class="mono">{r.sd_header_sha256.hex()}</td><td>{e(_datetime(r.retired_at))}</td></tr>'
            for r in review.retired
        ]
        parts.append("</tbody></table>")
    else:
        parts.append('<p class="muted">None.</p>')
    parts.append("</section>")
    parts.append(
        f'<footer class="muted">Generated {e(_datetime(review.generated_at))} on {e(review.node_id)} by sdctl review.</footer>'
    )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


_CSS = (
    "body{font:15px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#1d2330;margin:2rem auto;"
    "max-width:72rem;padding:0 1.5rem}"
    "h1{font-size:1.5rem;margin:0 0 1rem}h2{font-size:1.2rem;margin:2rem 0 .5rem;border-bottom:1px solid #d5d9e0;"
    "padding-bottom:.25rem}h3{font-size:1rem;margin:1.2rem 0 .4rem}"
    "table{border-collapse:collapse;width:100%;margin:.25rem 0}th,td{text-align:left;vertical-align:top;"
    "padding:.35rem .6rem;border-bottom:1px solid #e4e7ec;overflow-wrap:break-word}"
    "th,td.nowrap{white-space:nowrap}"
    "table.history{table-layout:fixed}table.history th:nth-child(1){width:11rem}"
    "table.history th:nth-child(2){width:6rem}table.history th:nth-child(6){width:8rem}"
    "thead th{background:#f3f5f8;font-weight:600}table.kv{width:auto}table.kv th{font-weight:600;padding-right:2rem}"
    ".mono{font-family:ui-monospace,'DejaVu Sans Mono',monospace;font-size:.9em}"
    ".muted{color:#6b7280}"
    ".banner{padding:.8rem 1rem;border-radius:6px;font-size:1.1rem;margin:0 0 1rem}"
    ".banner.at-risk{background:#b91c1c;color:#fff}.banner.calm{background:#e7f6ec;color:#14532d}"
    ".badge,.status{display:inline-block;padding:.05rem .5rem;border-radius:999px;font-size:.8rem;font-weight:600;"
    "text-transform:uppercase;letter-spacing:.03em;white-space:nowrap}"
    ".badge.critical,.status.lost,.status.compromised{background:#fde2e2;color:#991b1b}"
    ".badge.warning{background:#fef3c7;color:#92400e}.badge.info{background:#e0ecff;color:#1e40af}"
    ".status.ok{background:#e7f6ec;color:#166534}"
    "tr.finding.critical td{background:#fff5f5}"
    "footer{margin-top:2.5rem;font-size:.85rem}"
)


def _summary(review: Review) -> list[tuple[str, str]]:
    if review.last_review is None:
        last = "never"
    else:
        last = (
            f"{_date(review.last_review)} ({_days(max(0, review.generated_at - review.last_review))} before)"
        )
    return [
        ("Domain", review.domain_id),
        ("Epoch", str(review.epoch)),
        ("Quorum", f"{review.quorum} of {review.n}"),
        ("Generated at", _datetime(review.generated_at)),
        ("Node", review.node_id),
        ("Marked compromised", "yes" if review.compromised else "no"),
        ("Last review", last),
        (
            "Findings",
            f"{review.count('critical')} critical, {review.count('warning')} warning, {review.count('info')} info",
        ),
    ]


def _at_risk_line(review: Review) -> str:
    k = review.count("critical")
    return f"{_count(k, 'critical finding')}; act on {'it' if k == 1 else 'them'} first."


def _key(c: CustodianReview) -> str:
    return f"RSA-{c.key_bits}" if c.key_bits else "not RSA"


def _drill(c: CustodianReview) -> str:
    d = c.last_drill
    return "never" if d is None else f"{d.outcome} {_date(d.time)}"


def _history_cells(r: CustodyRecord) -> tuple[str, ...]:
    return (_datetime(r.time), r.kind, r.holder, r.location, r.note, r.actor)


_MD_SPECIAL = frozenset("\\`*_[]<|&~")  # ">" quotes only at a line start, never in a cell


def _md(text: str) -> str:
    """Escape for a Markdown table cell or heading: backslash before every character Markdown acts on."""
    return "".join("\\" + ch if ch in _MD_SPECIAL else ch for ch in " ".join(text.split()))


def _h(text: str) -> str:
    return html.escape(text, quote=True)


def _date(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d")


def _datetime(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _days(seconds: int) -> str:
    return _count(seconds // DAY, "day")


def _count(k: int, noun: str) -> str:
    return f"{k} {noun}" if k == 1 else f"{k} {noun}s"


def _join(names: Iterable[str]) -> str:
    items = list(names)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


# --- validation --------------------------------------------------------------------------------------


def _check_time(value: object, what: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
        raise UsageError(f"{what} must be unix seconds (a non-negative integer)")


def _check_text(value: object, what: str, *, required: bool = False) -> None:
    if not isinstance(value, str):
        raise UsageError(f"{what} must be a string")
    if required and not value.strip():
        raise UsageError(f"{what} must not be empty")
    if len(value) > MAX_TEXT:
        raise UsageError(f"{what} is {len(value)} characters long: keep it to {MAX_TEXT}")
    if any(unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp") for ch in value):
        raise UsageError(f"{what} must be one line without control characters")


def _fields(obj: object, what: str, required: set[str], optional: set[str]) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise MalformedError(f"{what} must be a JSON object")
    missing = sorted(required - obj.keys())
    if missing:
        raise MalformedError(f"{what} lacks {', '.join(missing)}")
    unknown = sorted(str(k) for k in obj.keys() - required - optional)
    if unknown:
        raise MalformedError(f"{what} has unknown fields: {', '.join(unknown)}")
    return obj


def _str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise MalformedError(f"{what} must be a string")
    return value


def _construct(what: str, make: Callable[[], _T]) -> _T:
    try:
        return make()
    except UsageError as e:
        raise MalformedError(f"{what}: {e}") from e
