"""The review's rules: :func:`build_review` turns one epoch's roster and custody history into findings.

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

from collections.abc import Callable, Sequence

from sdquorum.pki import spki_sha256
from sdquorum.review import _words as w
from sdquorum.review._roster import custodian_review
from sdquorum.review.model import (
    LOSS_KINDS,
    SEVERITIES,
    CustodianReview,
    CustodianStatus,
    CustodyRecord,
    DrillOutcome,
    DrillResult,
    Finding,
    RecordKind,
    RetiredEpoch,
    Review,
    Severity,
)
from sdquorum.sdfile import Header

__all__ = ["RUNBOOK", "build_review"]

DAY = w.DAY
REVIEW_MAX_AGE = 90 * DAY  # "at least once every quarter"
DRILL_MAX_AGE = 90 * DAY
CERT_NOTICE = 90 * DAY
RECOMMENDED_QUORUM = 3
MAX_CUSTODIANS = 10
RUNBOOK = "docs/runbooks/compromise.md"


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
    custodians = tuple(custodian_review(slot, ordered, drills, header.created_at) for slot in slots)
    labels = _labels(custodians)
    reviews = [r.time for r in ordered if r.kind == RecordKind.REVIEW]
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
        if c.status == CustodianStatus.OK:
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
    lost = [c for c in custodians if c.status != CustodianStatus.OK]
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
                f"{w.join(labels[c.x] for c in lost)}'s keys are lost or compromised, as many as the quorum of "
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
                    f"{w.date_text(r.time)}; no slot of epoch {header.epoch} holds it",
                )
            )
        elif r.custodian not in roster:
            out.append(
                _info(
                    "lost-key",
                    f"record for a custodian not in this epoch: {r.custodian}'s key was recorded {r.kind} on "
                    f"{w.date_text(r.time)}; make sure it holds no share of a security domain still kept",
                )
            )
        elif r.time < header.created_at:
            out.append(
                _info(
                    "lost-key",
                    f"{r.custodian}'s key was recorded {r.kind} on {w.date_text(r.time)}, before epoch {header.epoch} was "
                    f"sealed on {w.date_text(header.created_at)}: confirm that rotation gave {r.custodian} a new key",
                )
            )
    return out


def _holder_rules(custodians: Sequence[CustodianReview], labels: dict[int, str], m: int) -> list[Finding]:
    out = []
    for group in _groups(custodians, lambda c: c.holder):
        holder = group[0].holder
        names = w.join(labels[c.x] for c in group)
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
                f"{w.join(labels[c.x] for c in group)} keep their keys at the same location ({group[0].location}): "
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
                    f"{label}'s last possession drill was on {w.date_text(drill.time)}, {w.days(now - drill.time)} ago: "
                    "run a possession drill (sdctl drill)",
                )
            )
        detail = f" ({drill.detail})" if drill.detail else ""
        if drill.outcome == DrillOutcome.FAILED:
            out.append(
                _critical(
                    "drill-failed",
                    f"{label}'s possession drill on {w.date_text(drill.time)} failed{detail}: check {label}'s key and agent "
                    "and drill again; if the key cannot open its share, rotate it out (sdctl rotate)",
                )
            )
        elif drill.outcome == DrillOutcome.DENIED:
            out.append(
                _critical(
                    "drill-failed",
                    f"{label} denied the possession drill on {w.date_text(drill.time)}{detail}: ask {label} why and drill "
                    "again; if the key is no longer under their control, rotate it out (sdctl rotate)",
                )
            )
        elif drill.outcome == DrillOutcome.UNREACHABLE:
            out.append(
                _warning(
                    "drill-failed",
                    f"{label}'s agent was unreachable for the possession drill on {w.date_text(drill.time)}{detail}: "
                    "check that it runs and can reach the node, then drill again",
                )
            )
    if c.cert_not_after <= now:
        out.append(
            _warning(
                "cert-expiry",
                f"{label}'s wrapping certificate expired on {w.date_text(c.cert_not_after)}: issue {label} a new key "
                "and rotate it in (sdctl rotate)",
            )
        )
    elif c.cert_not_after - now <= CERT_NOTICE:
        out.append(
            _info(
                "cert-expiry",
                f"{label}'s wrapping certificate expires on {w.date_text(c.cert_not_after)}, in "
                f"{w.days(c.cert_not_after - now)}: plan a new key for the next rotation",
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
                f"the last security domain review was on {w.date_text(last_review)}, {w.days(now - last_review)} ago: "
                "hold one and record it, at least once a quarter",
            )
        ]
    return []


def _critical(rule: str, message: str) -> Finding:
    return Finding(Severity.CRITICAL, rule, message)


def _warning(rule: str, message: str) -> Finding:
    return Finding(Severity.WARNING, rule, message)


def _info(rule: str, message: str) -> Finding:
    return Finding(Severity.INFO, rule, message)
