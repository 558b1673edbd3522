"""The recovery ceremony as a state machine: fastest m win, bad shares are named, deadlines fail cleanly."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from coordinator import CustodianStatus, RecoverySession, SessionState
from sdquorum import shamir
from sdquorum.errors import MalformedError, StateError, UnauthenticatedError, VerificationError

if TYPE_CHECKING:
    from conftest import HonestAgent, Sealed, SessionFactory

ACCEPTED = CustodianStatus.ACCEPTED
REJECTED = CustodianStatus.REJECTED
DENIED = CustodianStatus.DENIED
NOT_NEEDED = CustodianStatus.NOT_NEEDED
NOT_CONNECTED = CustodianStatus.NOT_CONNECTED
REQUESTED = CustodianStatus.REQUESTED
NAMES = {1: "alice", 2: "bob", 3: "carol", 4: "dave", 5: "erin"}


@dataclass
class Ceremony:
    """A 3-of-5 recovery session and the agents of its five custodians (agents[x] answers slot x)."""

    session: RecoverySession
    sealed: Sealed
    agents: dict[int, HonestAgent]
    t0: int

    def answer(self, x: int) -> bool:
        """Slot x's agent answers honestly; returns whether the release was accepted."""
        agent = self.agents[x]
        req = agent.request(self.session)
        self.session.mark_delivered(req.request_id)
        outcome = self.session.submit(req.request_id, agent.answer(self.session), self.t0 + 10)
        assert (outcome.x, outcome.name) == (x, NAMES[x])
        return outcome.accepted

    def corrupt(self, x: int) -> bool:
        """Slot x's agent sends a validly signed release whose sealed share holds y + 1."""
        agent = self.agents[x]
        req = agent.request(self.session)
        good = self.sealed.share(x)
        bad = shamir.Share(x, (good.y + 1) % shamir.L)
        release = agent.release(req, share=bad)
        outcome = self.session.submit(req.request_id, release.to_bytes(), self.t0 + 10)
        assert (outcome.x, outcome.name) == (x, NAMES[x])
        return outcome.accepted

    def deny(self, x: int) -> bool:
        req = self.agents[x].request(self.session)
        self.session.deny(req.request_id, "not approved by the custodian", self.t0 + 10)
        return False

    def deadline(self, x: int = 0) -> bool:
        return self.session.tick(self.session.expires_at)

    def statuses(self) -> dict[int, CustodianStatus]:
        return {c.x: c.status for c in self.session.status().custodians}


@pytest.fixture
def ceremony(sealed: Sealed, agents: list[HonestAgent], start_session: SessionFactory, t0: int) -> Ceremony:
    return Ceremony(start_session(sealed.sd), sealed, {x: agents[x - 1] for x in range(1, 6)}, t0)


Step = tuple[Callable[[Ceremony, int], bool], int]


def answer(x: int) -> Step:
    return (Ceremony.answer, x)


def corrupt(x: int) -> Step:
    return (Ceremony.corrupt, x)


def deny(x: int) -> Step:
    return (Ceremony.deny, x)


DEADLINE: Step = (Ceremony.deadline, 0)


@dataclass(frozen=True)
class Scenario:
    name: str
    steps: tuple[Step, ...]
    state: SessionState
    statuses: dict[int, CustodianStatus]
    message: tuple[str, ...]  # fragments of the final message


SCENARIOS = [
    Scenario(
        "3-of-5, the fastest three (4, 2, 5) answer: completed, 1 and 3 not needed",
        (answer(4), answer(2), answer(5)),
        SessionState.COMPLETED,
        {1: NOT_NEEDED, 2: ACCEPTED, 3: NOT_NEEDED, 4: ACCEPTED, 5: ACCEPTED},
        ("recovered",),
    ),
    Scenario(
        "3-of-5, bob returns a corrupted share: rejected and named, three honest complete",
        (answer(1), corrupt(2), answer(3), answer(5)),
        SessionState.COMPLETED,
        {1: ACCEPTED, 2: REJECTED, 3: ACCEPTED, 4: NOT_NEEDED, 5: ACCEPTED},
        ("recovered",),
    ),
    Scenario(
        "3-of-5, two answer, then the deadline: failed, the three missing named",
        (answer(1), answer(4), DEADLINE),
        SessionState.FAILED,
        {1: ACCEPTED, 2: NOT_CONNECTED, 3: NOT_CONNECTED, 4: ACCEPTED, 5: NOT_CONNECTED},
        ("deadline passed with 2 of 3 shares", "missing custodians: bob, carol, erin"),
    ),
    Scenario(
        "3-of-5, three deny: failed at the third denial, quorum unreachable",
        (deny(1), deny(3), deny(5)),
        SessionState.FAILED,
        {1: DENIED, 2: NOT_CONNECTED, 3: DENIED, 4: NOT_CONNECTED, 5: DENIED},
        ("quorum can no longer be reached", "denied: alice, carol, erin"),
    ),
    Scenario(
        "3-of-5, two deny and one corrupts: failed, both kinds named",
        (answer(4), deny(1), corrupt(2), deny(5)),
        SessionState.FAILED,
        {1: DENIED, 2: REJECTED, 3: NOT_CONNECTED, 4: ACCEPTED, 5: DENIED},
        ("quorum can no longer be reached", "rejected: bob (", "VSS", "denied: alice, erin"),
    ),
    Scenario(
        "3-of-5, two deny, the other three answer: completed",
        (deny(2), answer(1), deny(4), answer(3), answer(5)),
        SessionState.COMPLETED,
        {1: ACCEPTED, 2: DENIED, 3: ACCEPTED, 4: DENIED, 5: ACCEPTED},
        ("recovered",),
    ),
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_recovery_scenarios(ceremony: Ceremony, scenario: Scenario) -> None:
    for step, x in scenario.steps:
        assert ceremony.session.state is SessionState.COLLECTING
        step(ceremony, x)
    session = ceremony.session
    assert session.state is scenario.state
    assert ceremony.statuses() == scenario.statuses
    for fragment in scenario.message:
        assert fragment in session.message, session.message
    if scenario.state is SessionState.COMPLETED:
        assert session.result == ceremony.sealed.secrets
    else:
        assert session.result is None
    assert session.finished
    # A finished session asks nobody for anything more.
    assert all(session.requests_for(a.thumbprint) == [] for a in ceremony.agents.values())


def test_completion_needs_only_m_and_reports_progress(ceremony: Ceremony) -> None:
    assert ceremony.session.status().required == 3
    assert ceremony.answer(5)
    progress = ceremony.session.progress()
    assert (progress.accepted, progress.missing) == ((5,), (1, 2, 3, 4))
    with pytest.raises(
        StateError, match=r"only 1 of the 3 required shares arrived; missing slots \[1, 2, 3, 4\]"
    ):
        progress.require_quorum()
    assert ceremony.answer(3)
    assert ceremony.session.status().state is SessionState.COLLECTING
    assert ceremony.session.result is None
    assert ceremony.answer(1)
    assert ceremony.session.status().state is SessionState.COMPLETED


@pytest.mark.parametrize("prepared", [True, False], ids=["public shares prepared", "computed on demand"])
def test_corrupted_share_is_rejected_and_its_custodian_named(ceremony: Ceremony, prepared: bool) -> None:
    if prepared:  # as the node does while the requests travel
        ceremony.session.prepare()
    assert not ceremony.corrupt(3)
    carol = next(c for c in ceremony.session.status().custodians if c.x == 3)
    assert (carol.name, carol.status) == ("carol", REJECTED)
    assert "slot 3" in carol.detail and "VSS" in carol.detail
    assert ceremony.session.progress().rejected == ((3, carol.detail),)
    assert ceremony.session.state is SessionState.COLLECTING
    for x in (1, 2, 4):
        assert ceremony.answer(x)
    assert ceremony.session.result == ceremony.sealed.secrets


def test_prepare_needs_the_sd_file() -> None:
    session = RecoverySession(
        session_id="s",
        node_id="node-b",
        node_address="node-b:1",
        initiator="admin",
        reason="r",
        created_at=1,
        expires_at=2,
        rng=os.urandom,
    )
    with pytest.raises(StateError, match="no SD file"):
        session.prepare()


def test_corrupted_share_outcome_names_the_check(ceremony: Ceremony) -> None:
    agent = ceremony.agents[2]
    req = agent.request(ceremony.session)
    bad = shamir.Share(2, 1)
    outcome = ceremony.session.submit(req.request_id, agent.release(req, share=bad).to_bytes(), ceremony.t0)
    assert not outcome.accepted and not outcome.completed
    assert outcome.name == "bob"
    assert "does not match the SD commitments" in outcome.reason


def test_garbage_release_is_refused_and_the_slot_stays_open(ceremony: Ceremony) -> None:
    # Bytes nobody signed cannot be blamed on the slot's custodian: refusing them must not let
    # whoever sent them knock an honest custodian out of the session.
    req = ceremony.agents[1].request(ceremony.session)
    with pytest.raises(MalformedError):
        ceremony.session.submit(req.request_id, b"{not json", ceremony.t0)
    assert ceremony.statuses()[1] is not REJECTED
    assert ceremony.answer(1)


def test_release_signed_by_another_custodian_is_refused_and_the_slot_stays_open(ceremony: Ceremony) -> None:
    alice_req = ceremony.agents[1].request(ceremony.session)
    bobs = ceremony.agents[2].release(ceremony.agents[2].request(ceremony.session))  # sent for alice's slot
    with pytest.raises(UnauthenticatedError):
        ceremony.session.submit(alice_req.request_id, bobs.to_bytes(), ceremony.t0)
    assert ceremony.statuses()[1] is not REJECTED
    assert ceremony.answer(1)


def test_deadline_with_two_of_three_fails_and_names_the_missing(ceremony: Ceremony) -> None:
    ceremony.answer(2)
    ceremony.answer(3)
    ceremony.session.mark_delivered(ceremony.agents[1].request(ceremony.session).request_id)
    assert not ceremony.session.tick(ceremony.session.expires_at - 1)
    assert ceremony.session.tick(ceremony.session.expires_at)
    status = ceremony.session.status()
    assert status.state is SessionState.FAILED
    assert "alice" in status.message and "dave" in status.message and "erin" in status.message
    assert "bob" not in status.message and "carol" not in status.message
    assert ceremony.session.result is None


def test_submit_after_the_deadline_is_refused_and_fails_the_session(ceremony: Ceremony) -> None:
    ceremony.answer(1)
    agent = ceremony.agents[2]
    req = agent.request(ceremony.session)
    release = agent.answer(ceremony.session)
    with pytest.raises(StateError, match="deadline passed"):
        ceremony.session.submit(req.request_id, release, ceremony.session.expires_at)
    assert ceremony.session.state is SessionState.FAILED
    assert ceremony.session.result is None


@pytest.mark.parametrize("first", ["accepted", "rejected", "denied"])
def test_same_slot_answering_twice_is_refused(ceremony: Ceremony, first: str) -> None:
    agent = ceremony.agents[4]
    req = agent.request(ceremony.session)
    release = agent.answer(ceremony.session)
    if first == "accepted":
        assert ceremony.session.submit(req.request_id, release, ceremony.t0).accepted
    elif first == "rejected":
        ceremony.corrupt(4)
    else:
        ceremony.deny(4)
    settled = ceremony.statuses()[4]
    with pytest.raises(VerificationError, match="slot 4 has already answered"):
        ceremony.session.submit(req.request_id, release, ceremony.t0 + 1)
    with pytest.raises(VerificationError, match="slot 4 has already answered"):
        ceremony.session.deny(req.request_id, "changed my mind", ceremony.t0 + 1)
    assert ceremony.statuses()[4] is settled
    assert ceremony.session.requests_for(agent.thumbprint) == []


def test_unknown_request_id_is_refused(ceremony: Ceremony) -> None:
    with pytest.raises(VerificationError, match="unknown request id"):
        ceremony.session.submit("0" * 16, b"{}", ceremony.t0)


def test_a_late_release_is_still_verified_and_a_wrong_one_is_named(ceremony: Ceremony) -> None:
    """3-of-5 completes with 1, 2, 3. Before the deadline dave's honest release and erin's corrupted
    one arrive: both are opened and VSS-checked though neither can count. Dave stays NOT_NEEDED;
    erin is REJECTED and named in the status. (Before issue 13 both were refused unchecked as
    "completed", so erin's lie went unnamed.) At the deadline the exchange key is dropped and a late
    answer is refused as before."""
    dave, erin = ceremony.agents[4], ceremony.agents[5]
    dave_req, erin_req = dave.request(ceremony.session), erin.request(ceremony.session)
    good = dave.answer(ceremony.session)  # made in time, submitted after the quorum was reached
    bad_share = shamir.Share(5, (ceremony.sealed.share(5).y + 1) % shamir.L)
    bad = erin.release(erin_req, share=bad_share).to_bytes()
    for x in (1, 2, 3):
        ceremony.answer(x)
    assert ceremony.session.state is SessionState.COMPLETED
    assert ceremony.session.requests_for(dave.thumbprint) == []
    with pytest.raises(MalformedError):  # nobody's answer: the slot stays as it was
        ceremony.session.submit(dave_req.request_id, b"{}", ceremony.t0 + 20)
    outcome = ceremony.session.submit(dave_req.request_id, good, ceremony.t0 + 20)
    assert outcome.late and outcome.accepted and outcome.completed
    outcome = ceremony.session.submit(erin_req.request_id, bad, ceremony.t0 + 21)
    assert outcome.late and not outcome.accepted and "VSS" in outcome.reason
    status = {c.x: c for c in ceremony.session.status().custodians}
    assert status[4].status is NOT_NEEDED and "answered late: verified" in status[4].detail
    assert status[5].status is REJECTED and "VSS" in status[5].detail
    assert "erin" in ceremony.session.message
    assert [status[x].status for x in (1, 2, 3)] == [ACCEPTED] * 3
    assert ceremony.session.state is SessionState.COMPLETED
    assert ceremony.session.result == ceremony.sealed.secrets
    with pytest.raises(StateError, match="completed"):  # a slot answers once, late or not
        ceremony.session.submit(dave_req.request_id, good, ceremony.t0 + 22)
    with pytest.raises(StateError, match="completed"):
        ceremony.session.deny(dave_req.request_id, "late", ceremony.t0 + 22)


def test_the_exchange_key_is_dropped_at_the_deadline_and_late_answers_refused(ceremony: Ceremony) -> None:
    dave = ceremony.agents[4]
    req = dave.request(ceremony.session)
    good = dave.answer(ceremony.session)
    for x in (1, 2, 3):
        ceremony.answer(x)
    assert ceremony.session._exchange_key is not None  # kept for late answers until the deadline
    assert ceremony.session._shares == {}  # the shares themselves went at completion
    ceremony.session.tick(ceremony.session.expires_at)
    assert ceremony.session._exchange_key is None
    with pytest.raises(StateError, match="completed"):
        ceremony.session.submit(req.request_id, good, ceremony.session.expires_at)
    assert ceremony.statuses()[4] is NOT_NEEDED


def test_a_failed_session_drops_its_exchange_key_at_once(ceremony: Ceremony) -> None:
    ceremony.session.abort("operator aborted")
    assert ceremony.session._exchange_key is None


def test_submit_after_failed_is_refused(ceremony: Ceremony) -> None:
    agent = ceremony.agents[1]
    req = agent.request(ceremony.session)
    release = agent.answer(ceremony.session)
    ceremony.session.abort("operator aborted")
    assert ceremony.session.state is SessionState.FAILED
    assert ceremony.session.message == "operator aborted"
    with pytest.raises(StateError, match="failed"):
        ceremony.session.submit(req.request_id, release, ceremony.t0)


def test_load_sd_file_twice_is_refused(ceremony: Ceremony) -> None:
    before = ceremony.session.status()
    with pytest.raises(StateError, match="already has its SD file"):
        ceremony.session.load_sd_file(ceremony.sealed.sd, ceremony.t0 + 1, lambda st: pytest.fail("signed"))
    assert ceremony.session.status() == before


def test_release_from_another_session_is_refused_and_the_slot_stays_open(
    ceremony: Ceremony, start_session: SessionFactory
) -> None:
    other = start_session(ceremony.sealed.sd, session_id="session-2")
    agent = ceremony.agents[1]
    stale = agent.answer(other)  # a release answering session-2, replayed into session-1
    req = agent.request(ceremony.session)
    with pytest.raises(UnauthenticatedError, match="another session"):
        ceremony.session.submit(req.request_id, stale, ceremony.t0)
    assert ceremony.statuses()[1] is not REJECTED
    assert ceremony.answer(1)


def test_progress_after_completion_still_counts_the_accepted(ceremony: Ceremony) -> None:
    for x in (2, 4, 5):
        ceremony.answer(x)
    assert ceremony.session.state is SessionState.COMPLETED
    progress = ceremony.session.progress()
    assert progress.accepted == (2, 4, 5)
    progress.require_quorum()
