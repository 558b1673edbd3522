"""The quarterly security-domain review: custodians, locations, drills, hand-offs and findings.

I/O-free: :func:`build_review` takes the SD header, the custody records, the drill results and the
retired epochs, with ``now`` (unix seconds) passed in; the renderers return text. Nothing here
reads a disk or a clock or imports grpc.

* :mod:`~sdquorum.review.model`: the values (frozen dataclasses; kinds, outcomes, severities and
  statuses as StrEnums whose values are the JSON words) and their invariants.
* :mod:`~sdquorum.review.rules`: :func:`build_review` and every rule, each naming the passage of
  ``seed/managed-hsm-security-domain.txt`` it comes from.
* :mod:`~sdquorum.review.renderers`: JSON, Markdown and HTML, every value escaped.

The public surface is the union of the three modules' ``__all__``.
"""

from sdquorum.review import model, renderers, rules
from sdquorum.review.model import *  # noqa: F403  # model.__all__ is the public part
from sdquorum.review.renderers import *  # noqa: F403  # renderers.__all__ is the public part
from sdquorum.review.rules import *  # noqa: F403  # rules.__all__ is the public part

__all__ = [*model.__all__, *renderers.__all__, *rules.__all__]
