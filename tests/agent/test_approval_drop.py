"""An approval given just before the agent's connection drops is not lost (issue 14, section 2):
a cancelled wait leaves the pending request and the decision; the wait the agent starts when the
node sends the request again finds the approval."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

from custodian_agent.approvals import ApprovalBox

RID = "ab" * 16


async def test_a_cancelled_wait_keeps_the_decision_and_the_next_wait_finds_it(tmp_path: Path) -> None:
    box = ApprovalBox(tmp_path / "agent")
    digest = box.post(RID, {"kind": "recovery", "reason": "dc lost"})
    wait = asyncio.create_task(box.wait(RID, time.time() + 60, digest))
    await asyncio.sleep(0.05)
    box.decide(RID, approved=True)  # the person approves ...
    wait.cancel()  # ... as the connection drops, before the wait looked again
    with contextlib.suppress(asyncio.CancelledError):
        await wait
    # before: both files deleted. (pending() lists only open requests, and this one is decided.)
    assert (box.pending_dir / f"{RID}.json").exists() and (box.decisions_dir / RID).exists()
    again = box.post(RID, {"kind": "recovery", "reason": "dc lost"})  # the node sends it again
    decision = await asyncio.wait_for(box.wait(RID, time.time() + 60, again), 5)
    assert decision.approved and decision.counts
    assert box.pending() == []  # a wait that ends closes the request


async def test_a_decision_on_other_details_still_does_not_survive_a_repost(tmp_path: Path) -> None:
    box = ApprovalBox(tmp_path / "agent")
    box.post(RID, {"kind": "recovery", "reason": "dc lost"})
    box.decide(RID, approved=True)
    changed = box.post(RID, {"kind": "recovery", "reason": "something else"})
    decision = await box.wait(RID, time.time() + 0.2, changed, poll=0.01)
    assert not decision.approved
