"""The quarterly security-domain review: custodians, locations, drills, hand-offs and findings.

I/O-free: :func:`build_review` takes the SD header, the custody records, the drill results and the
retired epochs, with ``now`` (unix seconds) passed in; the renderers return text. Nothing here
reads a disk or a clock or imports grpc.

* :mod:`~sdquorum.review.model`: the values (frozen dataclasses; kinds, outcomes, severities and
  statuses as StrEnums whose values are the JSON words) and their invariants.
* :mod:`~sdquorum.review.rules`: :func:`build_review` and every rule, each naming the passage of
  ``seed/managed-hsm-security-domain.txt`` it comes from.
* :mod:`~sdquorum.review.renderers`: JSON, Markdown and HTML, every value escaped.
"""

from sdquorum.review.model import (
    DRILL_OUTCOMES,
    LOSS_KINDS,
    MAX_TEXT,
    RECORD_KINDS,
    SEVERITIES,
    STATUSES,
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
from sdquorum.review.renderers import REVIEW_TYPE, render_html, render_markdown, review_to_json
from sdquorum.review.rules import build_review

__all__ = [
    "DRILL_OUTCOMES",
    "LOSS_KINDS",
    "MAX_TEXT",
    "RECORD_KINDS",
    "REVIEW_TYPE",
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
    "build_review",
    "render_html",
    "render_markdown",
    "review_to_json",
]
