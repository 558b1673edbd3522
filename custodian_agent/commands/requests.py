"""``custodian-agent domains``, ``pending``, ``approve`` and ``deny``: what the agent keeps in its
state directory, read and decided by the custodian while ``run`` serves.

Invariants:

* Text that came from the node is shown on one line with no control characters
  (:func:`cell`): an escape sequence in a reason cannot redraw what the custodian reads.
* ``pending --output json`` is one document with a fixed set of keys (``PENDING_JSON_KEYS``);
  a key a request does not carry is null.
* A decision names one open request; one not open (decided, expired, answered or never asked)
  is refused with exit 3.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime
from typing import Any

from custodian_agent.approvals import ApprovalBox
from custodian_agent.commands import state_command, state_dir
from custodian_agent.memory import DomainMemory

__all__ = [
    "PENDING_COLUMNS",
    "PENDING_JSON_KEYS",
    "add_parsers",
    "cell",
    "decide_command",
    "domains_command",
    "pending_command",
    "render_pending",
]


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    state_command(
        sub,
        "domains",
        "list the domains this agent remembers: pinned signing key and highest epoch seen",
        "example: custodian-agent domains --state-dir ~/.sdquorum",
    )
    q = state_command(
        sub,
        "pending",
        "list the open requests waiting for your approval (not decided, not expired)",
        "examples:\n  custodian-agent pending --state-dir ~/.sdquorum\n"
        '  custodian-agent pending --output json      # one JSON document: {"requests": [...]}',
    )
    q.add_argument("--output", choices=["text", "json"], default="text", help="a table (default) or JSON")
    for name, help_ in (
        ("approve", "release your share for a pending request"),
        ("deny", "refuse a pending request"),
    ):
        q = state_command(
            sub,
            name,
            help_,
            f"example: custodian-agent {name} 3f2a9c1b0d4e5f60\n"
            "exit 3 when the request is not open (decided, expired, answered or never asked)",
        )
        q.add_argument("request_id")
        q.add_argument("--reason", default="")


def domains_command(args: argparse.Namespace) -> int:
    known = DomainMemory(state_dir(args)).known()
    for domain_id, seen in sorted(known.items()):
        print(f"domain {domain_id.hex()}: epoch {seen.epoch}, signing key {seen.signing_public_key.hex()}")
    if not known:
        print("no domain remembered yet: the agent learns one when its node announces it or asks")
    return 0


def pending_command(args: argparse.Namespace) -> int:
    box = ApprovalBox(state_dir(args))
    print(render_pending(box.pending(), args.output, time.time(), box.command("approve|deny")))
    return 0


def decide_command(args: argparse.Namespace) -> int:
    """``approve`` or ``deny`` (the command's name) one open request."""
    ApprovalBox(state_dir(args)).decide(
        args.request_id, approved=args.command == "approve", reason=args.reason
    )
    print(f"request {args.request_id}: {'approved' if args.command == 'approve' else 'denied'}")
    return 0


PENDING_JSON_KEYS = (
    "request_id",
    "kind",
    "initiator",
    "node_id",
    "node_address",
    "reason",
    "domain_id",
    "epoch",
    "slot",
    "session_id",
    "destination",  # the sentence the custodian reads; the digests below are its keys' fingerprints
    "destination_sha256",  # the node's attested exchange key (recovery)
    "destination_spki_sha256",  # an external key (Azure restore): its SubjectPublicKeyInfo
    "destination_certificate_sha256",
    "destination_subject",
    "exchange_key_sha256",
    "proposal",
    "expires_at",
    "details_sha256",
)


PENDING_COLUMNS = (  # (heading, key): the reason last, as it is the one that may be long
    ("REQUEST", "request_id"),
    ("KIND", "kind"),
    ("ASKED BY", "initiator"),
    ("NODE", "node_id"),
    ("DOMAIN", "domain_id"),
    ("EPOCH", "epoch"),
    ("DESTINATION KEY", "destination"),
    ("DEADLINE", "expires_at"),
    ("REASON", "reason"),
)


def _printable(text: str) -> str:
    """Text from the node as the custodian's terminal shows it: one line, no control characters
    (an escape sequence in a reason could otherwise redraw what the custodian reads)."""
    text = " ".join(text.split())
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return _printable(value) or "-"
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _destination_cell(it: dict[str, Any]) -> str:
    """Where a release ends up, by the fingerprint of the key it is sealed to ('pending' shows the
    full sentence below the table when the key is not an attested node's)."""
    if it.get("destination_spki_sha256"):
        return "EXTERNAL " + cell(it["destination_spki_sha256"])
    if it.get("destination_sha256"):
        return "node " + cell(it["destination_sha256"])
    return "none" if "destination" in it else "-"


def _deadline_cell(expires_at: Any, now: float) -> str:
    try:
        when = datetime.fromisoformat(str(expires_at))
    except ValueError:
        return cell(expires_at)
    left = max(0, int(when.timestamp() - now))
    return f"{when.astimezone(UTC):%Y-%m-%d %H:%M:%S}Z ({left // 60}m{left % 60:02d}s left)"


def render_pending(items: list[dict[str, Any]], output: str, now: float, command: str) -> str:
    """The open requests as a table for a person, or one JSON document with fixed keys for scripts
    (a key the request does not carry, such as ``destination``, is null)."""
    if output == "json":
        rows = [{k: it.get(k) for k in PENDING_JSON_KEYS} for it in items]
        return json.dumps({"requests": rows}, indent=2, sort_keys=True)
    if not items:
        return "no pending requests"

    def row(it: dict[str, Any]) -> list[str]:
        special = {
            "expires_at": _deadline_cell(it.get("expires_at"), now),
            "destination": _destination_cell(it),
        }
        return [special[k] if k in special else cell(it.get(k)) for _, k in PENDING_COLUMNS]

    table = [[h for h, _ in PENDING_COLUMNS], *(row(it) for it in items)]
    widths = [max(len(row[i]) for row in table) for i in range(len(PENDING_COLUMNS) - 1)]
    lines = ["  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]]) for row in table]
    notes = [  # what a row cannot hold: a rotation's proposal, an external destination's warning
        f"{it.get('request_id')}: {label} {cell(it.get(key))}"
        for it in items
        for key, label, shown in (
            ("proposal", "proposal:", "proposal" in it),
            ("destination", "destination:", bool(it.get("destination_spki_sha256"))),
        )
        if shown
    ]
    return "\n".join([*lines, *notes, f"{len(items)} open; decide each with '{command}'"])
