"""The possession drill (all n prove; an outcome per slot) and rotation approval (m approve, or nothing changes)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import pytest
from support import drbg

from coordinator.ceremony import Ceremony, CustodianRequest, CustodianStatus, SessionState
from coordinator.drill import DrillSession
from coordinator.rotation import RotationSession
from custodian_agent import responder
from sdquorum import pki, shamir
from sdquorum.envelopes import CheckedRequest, CustodianPolicy, Release, make_proof, make_release
from sdquorum.errors import MalformedError, StateError, UnauthenticatedError, VerificationError
from sdquorum.keys import SoftwareWrappingKey
from sdquorum.offline import CeremonyRequest
from sdquorum.proposal import RotationProposal

if TYPE_CHECKING:
    from conftest import NodeAttestation, Sealed

ACCEPTED = CustodianStatus.ACCEPTED
REJECTED = CustodianStatus.REJECTED
DENIED = CustodianStatus.DENIED
UNREACHABLE = CustodianStatus.UNREACHABLE
NOT_NEEDED = CustodianStatus.NOT_NEEDED
NOT_CONNECTED = CustodianStatus.NOT_CONNECTED
NAMES = {1: "alice", 2: "bob", 3: "carol", 4: "dave", 5: "erin"}
TTL = 600
HOST_REASON = "carol's agent holds a wrapping key that no longer matches slot 3"


@dataclass
class Run:
    """A drill or rotation session over a 3-of-5 domain, and the agents of its five custodians."""

    session: DrillSession | RotationSession
    sealed: Sealed
    keys: tuple[SoftwareWrappingKey, ...]  # keys[x - 1] holds slot x
    policy: CustodianPolicy
    now: datetime
    t0: int

    def request(self, x: int) -> CustodianRequest:
        thumbprint = pki.thumbprint_sha256(self.keys[x - 1].certificate_der())
        (req,) = self.session.requests_for(thumbprint)
        return req

    def checked(self, x: int) -> tuple[CeremonyRequest, CheckedRequest]:
        """What slot x's agent receives, after the agent's checks (responder.check)."""
        r = self.request(x)
        req = r.for_custodian(NAMES[x])
        return req, responder.check(req, r.thumbprint, self.policy, self.now)

    def submit(self, x: int, answer: bytes) -> bool:
        req = self.request(x)
        self.session.mark_delivered(req.request_id)
        outcome = self.session.submit(req.request_id, answer, self.t0 + 10)
        assert (outcome.x, outcome.name) == (x, NAMES[x])
        return outcome.accepted

    def prove(self, x: int) -> bool:
        """Slot x's agent answers as the online and offline agents do."""
        req, checked = self.checked(x)
        return self.submit(x, responder.answer(req, checked, self.keys[x - 1], drbg(x)))

    def bad_proof(self, x: int) -> bool:
        """Slot x's agent lost its share: it proves knowledge of another value, signed with its own key."""
        _, checked = self.checked(x)
        lost = shamir.Share(x, (self.sealed.share(x).y + 1) % shamir.L)
        return self.submit(x, make_proof(checked, lost, self.keys[x - 1], drbg(x)).to_bytes())

    def deny(self, x: int) -> bool:
        self.session.deny(self.request(x).request_id, "not approved by the custodian", self.t0 + 10)
        return False

    def reject(self, x: int) -> bool:
        self.session.reject_slot(x, HOST_REASON, self.t0 + 10)
        return False

    def deadline(self, x: int = 0) -> bool:
        return self.session.tick(self.session.expires_at)

    def statuses(self) -> dict[int, CustodianStatus]:
        return {c.x: c.status for c in self.session.status().custodians}

    def detail(self, x: int) -> str:
        return next(c.detail for c in self.session.status().custodians if c.x == x)


def _session(cls: type[Ceremony], t0: int, seed: int, session_id: str = "") -> Ceremony:
    return cls(
        session_id=session_id or f"{cls.kind}-1",
        node_id="node-b",
        node_address="node-b.example:7443",
        initiator="admin",
        reason=f"quarterly {cls.kind}",
        created_at=t0,
        expires_at=t0 + TTL,
        rng=drbg(seed),
    )


def proposal_for(
    sealed: Sealed, keys: list[SoftwareWrappingKey], t0: int, *, from_epoch: int = 1
) -> RotationProposal:
    """bob..frank, 3 of 5: alice retires, frank joins."""
    return RotationProposal(
        domain_id=sealed.sd.header.domain_id,
        from_epoch=from_epoch,
        quorum=3,
        certificates_der=tuple(k.certificate_der() for k in keys[1:6]),
        proposer="admin",
        reason="alice retires; frank joins",
        expires_at=t0 + TTL,
    )


@pytest.fixture
def drill(
    sealed: Sealed,
    wrapping_keys: list[SoftwareWrappingKey],
    custodian_policy: CustodianPolicy,
    node_attestation: NodeAttestation,
    now: datetime,
    t0: int,
) -> Run:
    session = _session(DrillSession, t0, seed=1)
    assert isinstance(session, DrillSession)
    session.start(sealed.sd.signed_header, t0, node_attestation.sign)
    return Run(session, sealed, tuple(wrapping_keys[:5]), custodian_policy, now, t0)


@pytest.fixture
def rotation(
    sealed: Sealed,
    wrapping_keys: list[SoftwareWrappingKey],
    custodian_policy: CustodianPolicy,
    node_attestation: NodeAttestation,
    now: datetime,
    t0: int,
) -> Run:
    session = _session(RotationSession, t0, seed=2)
    assert isinstance(session, RotationSession)
    session.start(sealed.sd.signed_header, proposal_for(sealed, wrapping_keys, t0), t0, node_attestation.sign)
    return Run(session, sealed, tuple(wrapping_keys[:5]), custodian_policy, now, t0)


Step = tuple[Callable[[Run, int], bool], int]


def prove(x: int) -> Step:
    return (Run.prove, x)


def bad(x: int) -> Step:
    return (Run.bad_proof, x)


def deny(x: int) -> Step:
    return (Run.deny, x)


def reject(x: int) -> Step:
    return (Run.reject, x)


DEADLINE: Step = (Run.deadline, 0)


@dataclass(frozen=True)
class Scenario:
    name: str
    steps: tuple[Step, ...]
    state: SessionState
    statuses: dict[int, CustodianStatus]
    message: tuple[str, ...]  # fragments of the final message


# ---------------------------------------------------------------------------------------- drill

DRILLS = [
    Scenario(
        "all five prove: completed, every slot accepted",
        (prove(3), prove(1), prove(5), prove(2), prove(4)),
        SessionState.COMPLETED,
        dict.fromkeys(range(1, 6), ACCEPTED),
        ("drill finished: 5 proved",),
    ),
    Scenario(
        "three prove, bob sends a bad proof, erin is silent: at the deadline erin is unreachable",
        (prove(1), bad(2), prove(3), prove(4), DEADLINE),
        SessionState.COMPLETED,
        {1: ACCEPTED, 2: REJECTED, 3: ACCEPTED, 4: ACCEPTED, 5: UNREACHABLE},
        ("drill finished: 3 proved, 1 failed, 1 unreachable",),
    ),
    Scenario(
        "dave denies, the other four prove: completed without waiting for the deadline",
        (prove(1), deny(4), prove(2), prove(3), prove(5)),
        SessionState.COMPLETED,
        {1: ACCEPTED, 2: ACCEPTED, 3: ACCEPTED, 4: DENIED, 5: ACCEPTED},
        ("drill finished: 4 proved, 1 denied",),
    ),
    Scenario(
        "the host rejects carol's slot, the other four prove",
        (reject(3), prove(1), prove(2), prove(4), prove(5)),
        SessionState.COMPLETED,
        {1: ACCEPTED, 2: ACCEPTED, 3: REJECTED, 4: ACCEPTED, 5: ACCEPTED},
        ("drill finished: 4 proved, 1 failed",),
    ),
    Scenario(
        "three deny: a drill has no quorum to miss, it waits for the other two",
        (deny(1), deny(2), deny(3), prove(4), prove(5)),
        SessionState.COMPLETED,
        {1: DENIED, 2: DENIED, 3: DENIED, 4: ACCEPTED, 5: ACCEPTED},
        ("drill finished: 2 proved, 3 denied",),
    ),
    Scenario(
        "nobody answers: at the deadline all five are unreachable, the drill still completes",
        (DEADLINE,),
        SessionState.COMPLETED,
        dict.fromkeys(range(1, 6), UNREACHABLE),
        ("drill finished: 5 unreachable",),
    ),
    Scenario(
        "one of each: proved, bad proof, denied, rejected by the host, silent",
        (prove(1), bad(2), deny(3), reject(4), DEADLINE),
        SessionState.COMPLETED,
        {1: ACCEPTED, 2: REJECTED, 3: DENIED, 4: REJECTED, 5: UNREACHABLE},
        ("drill finished: 1 proved, 2 failed, 1 denied, 1 unreachable",),
    ),
]


def play(run: Run, scenario: Scenario) -> None:
    for step, x in scenario.steps:
        assert run.session.state is SessionState.COLLECTING, run.session.message
        step(run, x)
    assert run.session.state is scenario.state, run.session.message
    assert run.statuses() == scenario.statuses
    for fragment in scenario.message:
        assert fragment in run.session.message, run.session.message
    assert run.session.finished
    assert run.session.requests() == []  # a finished session asks nobody for anything more


@pytest.mark.parametrize("scenario", DRILLS, ids=lambda s: s.name)
def test_drill_scenarios(drill: Run, scenario: Scenario) -> None:
    play(drill, scenario)
    assert drill.session.message == scenario.message[0]


def test_drill_requires_all_n_and_reports_progress(drill: Run) -> None:
    status = drill.session.status()
    assert (status.kind, status.required, status.state) == ("drill", 5, SessionState.COLLECTING)
    assert status.message == "drill: waiting for all 5 custodians to prove possession"
    for x in (1, 2, 3):
        assert drill.prove(x)
    progress = drill.session.progress()
    assert (progress.accepted, progress.missing) == ((1, 2, 3), (4, 5))
    assert drill.session.state is SessionState.COLLECTING  # m = 3 proved, but a drill wants all n


def test_drill_bad_proof_is_rejected_and_its_custodian_named(drill: Run) -> None:
    _, checked = drill.checked(2)
    lost = shamir.Share(2, 12345)
    req = drill.request(2)
    outcome = drill.session.submit(
        req.request_id,
        make_proof(checked, lost, drill.keys[1], drbg(0)).to_bytes(),
        drill.t0,
    )
    assert (outcome.x, outcome.name, outcome.accepted, outcome.completed) == (2, "bob", False, False)
    assert "slot 2's proof of possession of its share does not verify" in outcome.reason
    assert drill.statuses()[2] is REJECTED and drill.detail(2) == outcome.reason
    assert drill.session.progress().rejected == ((2, outcome.reason),)


def test_reject_slot_marks_the_slot_rejected_with_the_given_reason(drill: Run) -> None:
    drill.prove(1)
    carol = drill.request(3).request_id
    drill.session.reject_slot(3, HOST_REASON, drill.t0 + 5)
    assert drill.statuses()[3] is REJECTED
    assert drill.detail(3) == HOST_REASON
    drill.session.reject_slot(1, "too late: already proved", drill.t0 + 6)  # a settled slot stays settled
    drill.session.reject_slot(9, "no such slot", drill.t0 + 6)
    assert drill.statuses() == {
        1: ACCEPTED,
        2: NOT_CONNECTED,
        3: REJECTED,
        4: NOT_CONNECTED,
        5: NOT_CONNECTED,
    }
    assert drill.session.requests_for(pki.thumbprint_sha256(drill.keys[2].certificate_der())) == []
    with pytest.raises(VerificationError, match="slot 3 has already answered"):
        drill.session.submit(carol, b"{}", drill.t0 + 7)


def test_drill_proof_signed_by_another_custodian_is_refused_and_the_slot_stays_open(drill: Run) -> None:
    bob_req, bob_checked = drill.checked(2)
    bobs = responder.answer(bob_req, bob_checked, drill.keys[1], drbg(2))
    with pytest.raises(UnauthenticatedError, match="not signed by slot 1's wrapping key"):
        drill.session.submit(drill.request(1).request_id, bobs, drill.t0 + 10)
    assert drill.statuses()[1] is NOT_CONNECTED
    assert drill.prove(1)


def test_garbage_answer_is_refused_and_the_slot_stays_open(drill: Run) -> None:
    with pytest.raises(MalformedError):
        drill.session.submit(drill.request(4).request_id, b"{not json", drill.t0 + 10)
    assert drill.statuses()[4] is NOT_CONNECTED
    assert drill.prove(4)


def test_recovery_release_sent_to_a_drill_is_refused(drill: Run) -> None:
    _, checked = drill.checked(1)
    release = make_release(checked, drill.sealed.share(1), drill.keys[0])
    with pytest.raises(MalformedError, match="proof statement: unknown type"):
        drill.session.submit(drill.request(1).request_id, release.to_bytes(), drill.t0 + 10)
    assert isinstance(Release.from_bytes(release.to_bytes()), Release)
    assert drill.statuses()[1] is NOT_CONNECTED


def test_drill_proof_replayed_from_an_earlier_drill_is_rejected(
    drill: Run, sealed: Sealed, node_attestation: NodeAttestation
) -> None:
    earlier = _session(DrillSession, drill.t0, seed=9, session_id="drill-0")
    assert isinstance(earlier, DrillSession)
    earlier.start(sealed.sd.signed_header, drill.t0, node_attestation.sign)
    old = Run(earlier, sealed, drill.keys, drill.policy, drill.now, drill.t0)
    req, checked = old.checked(5)
    stale = responder.answer(req, checked, drill.keys[4], drbg(5))
    # A replay is whoever kept it, not erin: refused, and her slot stays open for her real answer.
    with pytest.raises(UnauthenticatedError, match=r"belongs to another session \(replay\)"):
        drill.submit(5, stale)
    assert drill.statuses()[5] is not REJECTED
    assert drill.prove(5)


def test_drill_at_the_deadline_refuses_late_answers(drill: Run) -> None:
    drill.prove(1)
    req, checked = drill.checked(2)
    late = responder.answer(req, checked, drill.keys[1], drbg(2))
    assert not drill.session.tick(drill.session.expires_at - 1)
    with pytest.raises(StateError, match="completed"):
        drill.session.submit(req.request_id, late, drill.session.expires_at)
    assert drill.session.message == "drill finished: 1 proved, 4 unreachable"
    assert drill.detail(2) == "no answer before the deadline"


# ---------------------------------------------------------------------------------------- rotation

ROTATIONS = [
    Scenario(
        "3-of-5, bob, dave and erin approve: completed, alice and carol not needed",
        (prove(2), prove(4), prove(5)),
        SessionState.COMPLETED,
        {1: NOT_NEEDED, 2: ACCEPTED, 3: NOT_NEEDED, 4: ACCEPTED, 5: ACCEPTED},
        ("approved by 3 custodians", "from epoch 1 to 2: quorum 3 of 5", "CN=frank"),
    ),
    Scenario(
        "two approve, then the deadline: failed, nothing changed",
        (prove(1), prove(3), DEADLINE),
        SessionState.FAILED,
        {1: ACCEPTED, 2: NOT_CONNECTED, 3: ACCEPTED, 4: NOT_CONNECTED, 5: NOT_CONNECTED},
        ("deadline passed with 2 of 3 approvals (missing: bob, dave, erin); nothing changed",),
    ),
    Scenario(
        "three deny: failed at the third denial, before the deadline",
        (deny(1), deny(2), deny(4)),
        SessionState.FAILED,
        {1: DENIED, 2: DENIED, 3: NOT_CONNECTED, 4: DENIED, 5: NOT_CONNECTED},
        ("quorum can no longer be reached", "denied: alice, bob, dave"),
    ),
    Scenario(
        "bob approves with a share he does not hold: rejected and named, three others complete",
        (bad(2), prove(1), prove(3), prove(5)),
        SessionState.COMPLETED,
        {1: ACCEPTED, 2: REJECTED, 3: ACCEPTED, 4: NOT_NEEDED, 5: ACCEPTED},
        ("approved by 3 custodians",),
    ),
    Scenario(
        "two deny and one bad approval: failed, both kinds named",
        (prove(4), deny(1), bad(2), deny(5)),
        SessionState.FAILED,
        {1: DENIED, 2: REJECTED, 3: NOT_CONNECTED, 4: ACCEPTED, 5: DENIED},
        ("quorum can no longer be reached", "rejected: bob (", "proof of possession", "denied: alice, erin"),
    ),
]


@pytest.mark.parametrize("scenario", ROTATIONS, ids=lambda s: s.name)
def test_rotation_scenarios(rotation: Run, scenario: Scenario) -> None:
    play(rotation, scenario)
    session = rotation.session
    assert isinstance(session, RotationSession)
    assert session.new_sd_file is None  # the host re-seals only after COMPLETED


def test_rotation_requests_carry_the_proposal_and_need_m(rotation: Run) -> None:
    session = rotation.session
    assert isinstance(session, RotationSession) and session.proposal is not None
    status = session.status()
    assert (status.kind, status.required) == ("rotation", 3)
    assert status.message == "rotation: waiting for 3 of 5 custodians to approve"
    req = rotation.request(2)
    assert req.kind == "rotation" and req.proposal == session.proposal.to_bytes()
    assert RotationProposal.from_bytes(req.proposal) == session.proposal


def test_rotation_approval_for_another_proposal_is_rejected(
    rotation: Run, sealed: Sealed, wrapping_keys: list[SoftwareWrappingKey], node_attestation: NodeAttestation
) -> None:
    """An approval of another proposal (another session's attestation) does not count for this one."""
    other = _session(RotationSession, rotation.t0, seed=3)
    assert isinstance(other, RotationSession)
    other_proposal = RotationProposal(
        **{**proposal_for(sealed, wrapping_keys, rotation.t0).__dict__, "quorum": 2}
    )
    other.start(sealed.sd.signed_header, other_proposal, rotation.t0, node_attestation.sign)
    elsewhere = Run(other, sealed, rotation.keys, rotation.policy, rotation.now, rotation.t0)
    req, checked = elsewhere.checked(2)
    approval = responder.answer(req, checked, rotation.keys[1], drbg(2))
    with pytest.raises(UnauthenticatedError, match=r"answers another attestation|another session"):
        rotation.submit(2, approval)
    assert rotation.statuses()[2] is not REJECTED


def test_drill_proof_is_not_a_rotation_approval(rotation: Run, drill: Run) -> None:
    req, checked = drill.checked(3)
    proof = responder.answer(req, checked, drill.keys[2], drbg(3))
    with pytest.raises(UnauthenticatedError, match=r"the proof belongs to another session \(replay\)"):
        rotation.submit(3, proof)
    assert rotation.statuses()[3] is not REJECTED


@pytest.mark.parametrize(
    "change",
    [{"from_epoch": 2}, {"from_epoch": 0}, {"domain_id": bytes(16)}],
    ids=["next epoch", "previous epoch", "another domain"],
)
def test_rotation_start_refuses_a_proposal_for_another_epoch_or_domain(
    sealed: Sealed,
    wrapping_keys: list[SoftwareWrappingKey],
    node_attestation: NodeAttestation,
    t0: int,
    change: dict[str, object],
) -> None:
    session = _session(RotationSession, t0, seed=4)
    assert isinstance(session, RotationSession)
    proposal = RotationProposal(**{**proposal_for(sealed, wrapping_keys, t0).__dict__, **change})
    with pytest.raises(StateError, match="the proposal names another domain or epoch than the node holds"):
        session.start(sealed.sd.signed_header, proposal, t0, lambda st: pytest.fail("attested"))
    assert session.state is SessionState.AWAITING_SD_FILE
    assert session.attestation is None and session.requests() == []


def test_rotation_start_keeps_no_refused_proposal(
    sealed: Sealed, wrapping_keys: list[SoftwareWrappingKey], node_attestation: NodeAttestation, t0: int
) -> None:
    session = _session(RotationSession, t0, seed=5)
    assert isinstance(session, RotationSession)
    with pytest.raises(StateError):
        session.start(
            sealed.sd.signed_header,
            proposal_for(sealed, wrapping_keys, t0, from_epoch=2),
            t0,
            node_attestation.sign,
        )
    assert session.proposal is None


def test_a_late_rotation_approval_is_still_verified_and_a_wrong_one_named(rotation: Run) -> None:
    """3-of-5 approved by 1, 2, 3; dave's approval with a proof for a share he lost and erin's good
    one come before the deadline. Before issue 13 both were refused unchecked ("completed"); now
    dave is REJECTED and named, erin stays NOT_NEEDED, and the rotation stays COMPLETED."""
    _, dave_checked = rotation.checked(4)
    lost = shamir.Share(4, (rotation.sealed.share(4).y + 1) % shamir.L)
    dave = make_proof(dave_checked, lost, rotation.keys[3], drbg(4)).to_bytes()
    erin_req, erin_checked = rotation.checked(5)
    erin = responder.answer(erin_req, erin_checked, rotation.keys[4], drbg(5))
    dave_id, erin_id = rotation.request(4).request_id, rotation.request(5).request_id
    for x in (1, 2, 3):
        assert rotation.prove(x)
    assert rotation.session.state.name == "COMPLETED"
    bad = rotation.session.submit(dave_id, dave, rotation.t0 + 20)
    good = rotation.session.submit(erin_id, erin, rotation.t0 + 21)
    assert bad.late and not bad.accepted and good.late and good.accepted
    assert rotation.statuses()[4] is REJECTED and "does not verify" in rotation.detail(4)
    assert rotation.statuses()[5] is CustodianStatus.NOT_NEEDED and "verified" in rotation.detail(5)
    assert NAMES[4] in rotation.session.message and rotation.session.state.name == "COMPLETED"
