"""sdquorum.refusals: which refused calls are written at once, which are counted, and the bounds.

Case table: one peer flooding one method; one peer trying many (method, code) kinds; many peers
beyond the tracked limit; windows closing by time and on shutdown. Every case checks that the
refusals written plus the counts equal the refused calls.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sdquorum.refusals import (
    MAX_COUNTED_KINDS,
    OVERFLOW,
    AuditRecord,
    Refusal,
    RefusalWindows,
)


def refusal(peer: int = 1, method: str = "InitRecovery", code: str = "PERMISSION_DENIED") -> Refusal:
    return Refusal(
        method, code, "role custodian/x may not call it", f"custodian/p{peer}", f"CN=p{peer}", f"{peer:064x}"
    )


def accounted(records: list[AuditRecord]) -> int:
    """Refusals the audit log accounts for: one per ``refused`` entry plus every count."""
    return sum(1 if r.event == "refused" else r.details["count"] for r in records)


def test_one_peer_flooding_one_method_is_written_once_and_counted_once_per_window() -> None:
    w = RefusalWindows(window_seconds=60)
    out = [rec for t in range(10_000) for rec in w.refused(refusal(), now=1000 + t % 60)]
    assert [r.event for r in out] == ["refused"]
    assert out[0].actor == "custodian/p1" and out[0].details["spki_sha256"] == f"{1:064x}"
    out += w.close_due(now=1060)
    assert [r.event for r in out] == ["refused", "refusals-counted"]
    assert out[1].details["count"] == 9_999 and out[1].details["peer"] == f"{1:064x}"
    assert accounted(out) == 10_000
    assert w.tracked == 0  # a closed window is forgotten


def test_a_window_not_yet_due_stays_open_and_shutdown_writes_its_count() -> None:
    w = RefusalWindows(window_seconds=60)
    out = [rec for _ in range(5) for rec in w.refused(refusal(), now=0)]
    assert w.close_due(now=59) == []
    out += w.close_all(now=59)
    assert accounted(out) == 5 and w.tracked == 0


def test_the_next_refusal_after_the_window_closes_it_and_opens_another() -> None:
    w = RefusalWindows(window_seconds=10)
    out = w.refused(refusal(), 0) + w.refused(refusal(), 1) + w.refused(refusal(), 10)
    assert [r.event for r in out] == ["refused", "refusals-counted", "refused"]
    assert accounted(out) == 3


def test_many_kinds_from_one_peer_are_written_up_to_the_detailed_limit_then_counted() -> None:
    w = RefusalWindows(detailed_per_window=4)
    out = [rec for i in range(200) for rec in w.refused(refusal(method=f"M{i}"), now=0)]
    assert len(out) == 4
    out += w.close_all(now=1)
    assert len(out) == 5  # detailed_per_window + 1, however many kinds
    counted = out[-1].details["by_method"]
    assert len(counted) == MAX_COUNTED_KINDS + 1  # the counters are bounded too: the rest is "*"
    assert counted[0] == {"method": "*", "code": "*", "count": 196 - MAX_COUNTED_KINDS}
    assert accounted(out) == 200


def test_peers_beyond_the_tracked_limit_share_one_overflow_window_that_still_names_them() -> None:
    w = RefusalWindows(max_peers=3)
    out = [rec for p in range(100) for _ in range(10) for rec in w.refused(refusal(peer=p), now=5)]
    assert w.tracked == 4  # three peers and the overflow window: memory is bounded
    refused = [r for r in out if r.event == "refused"]
    # Three peers of their own, then the overflow window names its first 4 (detailed_per_window).
    assert [r.actor for r in refused] == [f"custodian/p{p}" for p in range(7)]
    out += w.close_all(now=6)
    overflow = [r for r in out if r.event == "refusals-counted" and r.details["peer"] == OVERFLOW]
    assert len(overflow) == 1 and overflow[0].details["count"] == 97 * 10 - 4
    assert accounted(out) == 1000
    assert len(out) == 3 * 2 + 4 + 1  # per own window its first refusal and its count; overflow 4 + 1


def test_a_due_window_frees_its_place_for_a_new_peer() -> None:
    w = RefusalWindows(window_seconds=10, max_peers=1)
    out = w.refused(refusal(peer=1), 0) + w.refused(refusal(peer=1), 0) + w.refused(refusal(peer=2), 10)
    assert [(r.event, r.actor) for r in out] == [
        ("refused", "custodian/p1"),
        ("refusals-counted", "custodian/p1"),
        ("refused", "custodian/p2"),
    ]
    assert w.tracked == 1


def test_a_caller_without_a_certificate_or_a_role_is_still_named() -> None:
    none = Refusal("GetStatus", "PERMISSION_DENIED", "no certificate", "", "", "")
    no_role = Refusal("GetStatus", "PERMISSION_DENIED", "no role", "", "CN=mallory", "ab" * 32)
    assert none.actor == "no client certificate" and none.peer == "no client certificate"
    assert no_role.actor == "no role (CN=mallory)" and no_role.peer == "ab" * 32


@pytest.mark.parametrize("bad", [{"window_seconds": 0}, {"max_peers": 0}, {"detailed_per_window": 0}])
def test_limits_below_one_are_refused(bad: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        RefusalWindows(**bad)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 5),
            st.sampled_from(["A", "B", "C"]),
            st.sampled_from(["X", "Y"]),
            st.integers(0, 30),
        ),
        max_size=300,
    ),
    st.integers(1, 4),
    st.integers(1, 3),
)
def test_every_refusal_is_accounted_for_and_each_window_writes_a_bounded_number_of_entries(
    calls: list[tuple[int, str, str, int]], max_peers: int, detailed: int
) -> None:
    w = RefusalWindows(window_seconds=10, max_peers=max_peers, detailed_per_window=detailed)
    out: list[AuditRecord] = []
    now = 0
    for peer, method, code, step in calls:
        now += step
        out += w.refused(refusal(peer, method, code), now)
        out += w.close_due(now)
        assert w.tracked <= max_peers + 1
    out += w.close_all(now)
    assert accounted(out) == len(calls)
    # A window's first refusal is always written in full, so a count never comes without one.
    assert len([r for r in out if r.event == "refusals-counted"]) <= len(
        [r for r in out if r.event == "refused"]
    )
