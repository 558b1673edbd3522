"""``sdctl review``: the quarterly review (custodians, drills, hand-offs, findings) as Markdown, HTML
or JSON. ``--output json`` gives the JSON document (``--format json``) on standard output, or, with
``--out``, one JSON line saying what was written."""

from __future__ import annotations

import json
import time
from pathlib import Path

from sdctl.commands import Command, arg
from sdctl.ctl import Ctl
from sdquorum.errors import UsageError
from sdquorum_rpc.files import write_private_file


async def review(ctl: Ctl) -> int:
    from sdquorum.review import (
        CustodyRecord,
        DrillResult,
        RetiredEpoch,
        build_review,
        render_html,
        render_markdown,
        review_to_json,
    )
    from sdquorum.sdfile import SignedHeader

    a = ctl.args
    fmt = a.format or ("json" if ctl.json else "md")
    if ctl.json and not a.out and fmt != "json":
        raise UsageError(f"--output json writes the review as JSON: drop --format {fmt} or give --out FILE")
    async with ctl.client() as c, c.errors():
        st = await c.custody_state()
    header = SignedHeader(bytes(st.sd_header), bytes(st.sd_header_signature)).verify()
    rev = build_review(
        header,
        [CustodyRecord.from_json(r) for r in json.loads(st.records)],
        [DrillResult.from_json(d) for d in json.loads(st.drills)],
        [RetiredEpoch.from_json(r) for r in json.loads(st.retired)],
        compromised=st.compromised,
        node_id=st.node_id,
        now=int(time.time()),
    )
    if fmt == "json":
        text = json.dumps(review_to_json(rev), indent=2, sort_keys=True)
    else:
        text = render_html(rev) if fmt == "html" else render_markdown(rev)
    if a.out:
        write_private_file(a.out, text.encode(), mode=0o644)
        critical = rev.count("critical")
        ctl.emit(
            f"wrote the {fmt} review to {a.out}: {len(rev.findings)} findings, {critical} critical",
            {"out": str(a.out), "format": fmt, "findings": len(rev.findings), "critical": critical},
        )
    else:
        ctl.out(text)
    return 0


COMMANDS = [
    Command(
        "review",
        "the quarterly review: custodians, drills, hand-offs, findings",
        ("sdctl review --format html --out review.html", "sdctl review --output json"),
        (
            arg(
                "--format",
                choices=["md", "html", "json"],
                default=None,
                help="default: md (json with --output json)",
            ),
            arg("--out", type=Path, help="write here instead of standard output"),
        ),
        run=review,
    ),
]
