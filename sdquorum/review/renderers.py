"""The review rendered: a JSON document, Markdown and one self-contained HTML page.

I/O-free: each function takes a :class:`~sdquorum.review.model.Review` and returns text or a dict.
Every value from a record or certificate is escaped (Markdown: a backslash before each character
Markdown acts on, whitespace folded to one line; HTML: ``html.escape`` with quotes). The HTML page
has inline CSS, no script and no external reference, under a Content-Security-Policy that allows
nothing else.
"""

from __future__ import annotations

import html
from typing import Any

from sdquorum.review import _words as w
from sdquorum.review._css import CSS
from sdquorum.review.model import CustodianReview, CustodyRecord, Review, Severity

__all__ = ["REVIEW_TYPE", "render_html", "render_markdown", "review_to_json"]

REVIEW_TYPE = "sdquorum-review"


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
            w.date_text(c.cert_not_after),
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
            f"| {r.epoch} | `{r.sd_header_sha256.hex()}` | {w.datetime_text(r.retired_at)} |"
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
        f"<style>{CSS}</style>",
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
            f"<td>{e(c.holder)}</td><td>{location}</td><td>{e(_key(c))}</td><td>{e(w.date_text(c.cert_not_after))}</td>"
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
            f'<tr><td>{r.epoch}</td><td class="mono">{r.sd_header_sha256.hex()}</td><td>{e(w.datetime_text(r.retired_at))}</td></tr>'
            for r in review.retired
        ]
        parts.append("</tbody></table>")
    else:
        parts.append('<p class="muted">None.</p>')
    parts.append("</section>")
    parts.append(
        f'<footer class="muted">Generated {e(w.datetime_text(review.generated_at))} on {e(review.node_id)} by sdctl review.</footer>'
    )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _summary(review: Review) -> list[tuple[str, str]]:
    if review.last_review is None:
        last = "never"
    else:
        last = f"{w.date_text(review.last_review)} ({w.days(max(0, review.generated_at - review.last_review))} before)"
    return [
        ("Domain", review.domain_id),
        ("Epoch", str(review.epoch)),
        ("Quorum", f"{review.quorum} of {review.n}"),
        ("Generated at", w.datetime_text(review.generated_at)),
        ("Node", review.node_id),
        ("Marked compromised", "yes" if review.compromised else "no"),
        ("Last review", last),
        (
            "Findings",
            f"{review.count(Severity.CRITICAL)} critical, {review.count(Severity.WARNING)} warning, "
            f"{review.count(Severity.INFO)} info",
        ),
    ]


def _at_risk_line(review: Review) -> str:
    k = review.count(Severity.CRITICAL)
    return f"{w.count(k, 'critical finding')}; act on {'it' if k == 1 else 'them'} first."


def _key(c: CustodianReview) -> str:
    return f"RSA-{c.key_bits}" if c.key_bits else "not RSA"


def _drill(c: CustodianReview) -> str:
    d = c.last_drill
    return "never" if d is None else f"{d.outcome} {w.date_text(d.time)}"


def _history_cells(r: CustodyRecord) -> tuple[str, ...]:
    return (w.datetime_text(r.time), r.kind, r.holder, r.location, r.note, r.actor)


_MD_SPECIAL = frozenset("\\`*_[]<|&~")  # ">" quotes only at a line start, never in a cell


def _md(text: str) -> str:
    """Escape for a Markdown table cell or heading: backslash before every character Markdown acts on."""
    return "".join("\\" + ch if ch in _MD_SPECIAL else ch for ch in " ".join(text.split()))


def _h(text: str) -> str:
    return html.escape(text, quote=True)
