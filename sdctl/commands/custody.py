"""``sdctl custody record|list`` (custody events: hand-offs, locations, losses, reviews) and ``sdctl
compromise`` (mark the domain compromised: destructive, so confirmed first)."""

from __future__ import annotations

import json
import time

from sdctl.commands import Command, arg
from sdctl.ctl import Ctl
from sdquorum.errors import UsageError


async def record(ctl: Ctl) -> int:
    from sdquorum.review import CustodyRecord

    a = ctl.args
    rec = {
        "kind": a.event,
        "custodian": a.custodian,
        "holder": a.holder,
        "location": a.location,
        "note": a.note,
        "time": int(time.time()),
    }
    if a.event != "review" and not a.custodian:
        raise UsageError(f"a {a.event} record needs --custodian NAME")
    CustodyRecord.from_json({**rec, "actor": ""})  # check locally: one clear line
    async with ctl.client() as c, c.errors():
        await c.add_custody_record(rec)
    ctl.emit(f"recorded {a.event}" + (f" for {a.custodian}" if a.custodian else ""), {"recorded": rec})
    return 0


async def list_records(ctl: Ctl) -> int:
    async with ctl.client() as c, c.errors():
        st = await c.custody_state()
    records = json.loads(st.records)
    if ctl.json:
        ctl.out(json.dumps(records))
        return 0
    for r in records:
        at = time.strftime("%Y-%m-%d %H:%M", time.gmtime(r["time"]))
        extra = ", ".join(f"{k}={r[k]}" for k in ("holder", "location", "note") if r.get(k))
        ctl.out(f"{at}  {r['kind']:<11} {r.get('custodian') or '-':<12} {extra}  (by {r.get('actor')})")
    return 0


async def compromise(ctl: Ctl) -> int:
    ctl.confirm("mark the domain compromised", "drills and rotation stop for good")
    async with ctl.client() as c, c.errors():
        await c.mark_compromised(ctl.args.reason)
    ctl.emit(
        "domain marked COMPROMISED: drills and rotation are stopped. Follow docs/runbooks/compromise.md: "
        "provision a new domain on a new HSM and re-encrypt your data under new keys.",
        {"compromised": True},
    )
    return 0


COMMANDS = [
    Command(
        "custody",
        "record or list custody events (hand-offs, locations, losses, reviews)",
        sub=(
            Command(
                "record",
                "record one custody event",
                (
                    "sdctl custody record --custodian alice --event handoff --holder 'Bob Smith' --location 'Safe 2, Zurich'",
                    "sdctl custody record --custodian carol --event lost --note 'USB token lost in transit'",
                ),
                (
                    arg(
                        "--event",
                        choices=["handoff", "location", "lost", "compromised", "review"],
                        required=True,
                    ),
                    arg("--custodian", help="the custodian (slot name); not for 'review'"),
                    arg("--holder", default="", help="the person now holding the key (handoff)"),
                    arg("--location", default="", help="where the key is now kept"),
                    arg("--note", default=""),
                ),
                run=record,
            ),
            Command("list", "list custody records", ("sdctl custody list",), run=list_records),
        ),
    ),
    Command(
        "compromise",
        "mark the domain compromised (stops drills and rotation; asks first, --yes when not on a terminal)",
        ("sdctl compromise --reason 'two keys lost'", "sdctl compromise --reason 'two keys lost' --yes"),
        (arg("--reason", required=True),),
        run=compromise,
        destructive=True,
    ),
]
