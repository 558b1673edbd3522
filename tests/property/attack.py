"""The adversary's toolkit for the stateful ceremony tests (tests/property/test_*_under_attack.py).

:class:`CeremonyUnderAttack` is a hypothesis ``RuleBasedStateMachine`` over real I/O-free ceremony
sessions (coordinator/), 3-of-5, with the fixtures of tests/conftest.py. Its adversary holds fewer
than m = 3 custodians' wrapping keys (none: the admin, an app or a network peer; one: a custodian;
two: colluding custodians) and may run a node whose attestation is not under the root. It replays,
reorders and duplicates every answer ever made, into any session and any slot's request; it signs
what its keys can (the subclass says what: wrong values, other slots, x = 0, other epochs, other
proposals, an outsider's key, denials for other slots); it flips bytes in anything. Honest agents
check every request before they answer. Subclasses say how a session opens, how an honest agent
answers and what the adversary forges.

Invariants, after every step:
- every ACCEPTED slot was settled by an answer its own custodian's key signed, for that session and
  that slot, with the custodian's true share (``Sent.genuine``);
- an answer not signed by the slot's key never settles the slot, a custodian's own honest answer is
  never the one rejected (an honest custodian is never blamed for what another key signed or
  claimed), and a refused answer changes nothing;
- a settled slot never changes (except NOT_NEEDED to REJECTED, when the adversary's own late answer
  is still verified after completion and found wrong), and a finished session never changes state;
- a COMPLETED session has at least ``required()`` accepted slots, and never ran on a foreign node
  (subclasses add what completion must mean, e.g. recovery: exactly the file's secrets).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, ClassVar

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from coordinator.ceremony import SETTLED, Ceremony, CustodianStatus, SessionState
from sdquorum.envelopes import Attestation, make_denial
from sdquorum.errors import SdquorumError, VerificationError
from sdquorum.keys import SoftwareWrappingKey

if TYPE_CHECKING:
    from conftest import HonestAgent, NodeAttestation, Sealed

M, N = 3, 5
MAX_SESSIONS = 3
SETTINGS = settings(
    max_examples=150,
    stateful_step_count=50,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
FIND_ONLY = (Phase.explicit, Phase.reuse, Phase.generate)  # for the broken coordinators: no shrinking


@dataclass(frozen=True)
class Sent:
    """An answer (or anything posing as one) on the wire, with what the test knows of its origin."""

    data: bytes
    session: int  # index of the session it was made for
    x: int  # the slot it claims
    signer: int  # slot number of the key that signed it (N + 1: a key outside the file)
    genuine: bool  # the signer's own true share, for its own slot, bound to that session


@dataclass
class World:
    """What the fixtures provide, once per test run."""

    files: tuple[Sealed, ...]  # epoch 1, the same domain's epoch 2, another domain
    agents: tuple[HonestAgent, ...]  # agents[x - 1] holds slot x in every file
    outsider: SoftwareWrappingKey
    node: NodeAttestation
    foreign: NodeAttestation
    t0: int
    now: datetime
    session_class: type[Ceremony] | None = None  # a broken coordinator in place of the real one


@dataclass
class Run:
    session: Ceremony
    sealed: Sealed
    foreign: bool
    attestation: Attestation
    request_ids: dict[int, str] = field(default_factory=dict)


def ceremony(cls: type[Ceremony], index: int, t0: int) -> Ceremony:
    return cls(
        session_id=f"session-{index}",
        node_id="node-b",
        node_address="node-b.example:7443",
        initiator="admin",
        reason="property test",
        created_at=t0,
        expires_at=t0 + 600,
        rng=os.urandom,
    )


class CeremonyUnderAttack(RuleBasedStateMachine):
    world: ClassVar[World]
    forgeries: ClassVar[tuple[str, ...]]
    provisional: ClassVar[bool] = False  # True: a share is accepted before it can be proved right

    def __init__(self) -> None:
        super().__init__()
        self.runs: list[Run] = []
        self.pool: list[Sent] = []
        self.adversary: frozenset[int] = frozenset()
        self.settled: dict[tuple[int, int], CustodianStatus] = {}
        self.finished: dict[int, SessionState] = {}
        self.accepted_by: dict[tuple[int, int], Sent] = {}

    # ------------------------------------------------------------------ what subclasses say

    def open_session(self, index: int, sealed: Sealed, foreign: bool, variant: int) -> Run:
        raise NotImplementedError

    def honest_answer(self, run: Run, x: int) -> bytes:
        raise NotImplementedError

    def forge(self, run: Run, own: int, forgery: str, data: st.DataObject) -> tuple[bytes, int, int]:
        """The adversary's answer: (bytes, claimed slot, signer's slot)."""
        raise NotImplementedError

    def check_completed(self, run: Run) -> None:
        """What a COMPLETED session must hold beyond m accepted slots."""

    # ------------------------------------------------------------------ set-up

    @initialize(keys=st.sets(st.integers(1, N), max_size=M - 1))
    def choose_adversary(self, keys: set[int]) -> None:
        """The adversary's role for this run: the wrapping keys of fewer than m custodians (or none)."""
        self.adversary = frozenset(keys)

    @precondition(lambda self: len(self.runs) < MAX_SESSIONS)
    @rule(which=st.integers(0, 2), foreign=st.booleans(), variant=st.integers(0, 3))
    def start_session(self, which: int, foreign: bool, variant: int) -> None:
        """An admin starts a ceremony over one of the files on the node, or the adversary on a node
        whose attestation key is not under the root (``variant``: which ceremony, for subclasses
        that run several)."""
        run = self.open_session(len(self.runs), self.world.files[which], foreign, variant)
        run.request_ids = {r.x: r.request_id for r in run.session.requests()}
        self.runs.append(run)

    # ------------------------------------------------------------------ honest agents

    @precondition(lambda self: bool(self.runs))
    @rule(data=st.data())
    def honest_agent_answers(self, data: st.DataObject) -> None:
        """An honest custodian with an open request answers it (the order is the network's)."""
        index = data.draw(st.integers(0, len(self.runs) - 1), label="session")
        run = self.runs[index]
        waiting = [r.x for r in run.session.requests() if r.x not in self.adversary]
        if not waiting:
            return
        x = data.draw(st.sampled_from(waiting), label="custodian")
        if run.foreign:
            with pytest.raises(VerificationError):  # the attestation does not chain to the root
                self.honest_answer(run, x)
            return
        sent = Sent(self.honest_answer(run, x), index, x, x, genuine=True)
        self.pool.append(sent)
        if data.draw(st.booleans(), label="the network delivers it at once"):
            self._submit(sent, index, x, sent.data)

    # ------------------------------------------------------------------ the adversary's own answers

    @precondition(lambda self: bool(self.runs) and bool(self.adversary))
    @rule(data=st.data())
    def adversary_signs_an_answer(self, data: st.DataObject) -> None:
        forgery = data.draw(st.sampled_from(self.forgeries), label="forgery")
        index = data.draw(st.integers(0, len(self.runs) - 1), label="session")
        run = self.runs[index]
        own = data.draw(st.sampled_from(sorted(self.adversary)), label="adversary's slot")
        answer, x, signer = self.forge(run, own, forgery, data)
        sent = Sent(answer, index, x, signer, genuine=forgery == "own")
        self.pool.append(sent)
        if data.draw(st.booleans(), label="sent at once, as the answer to the adversary's own slot"):
            self._submit(sent, index, own, sent.data)

    @precondition(lambda self: bool(self.runs) and bool(self.adversary))
    @rule(data=st.data(), slot=st.integers(1, N))
    def adversary_denies_for_a_slot(self, data: st.DataObject, slot: int) -> None:
        """A denial signed by an adversary's key for any slot: only its own slot can be denied by it."""
        index = data.draw(st.integers(0, len(self.runs) - 1), label="session")
        run = self.runs[index]
        own = data.draw(st.sampled_from(sorted(self.adversary)), label="adversary's slot")
        request_id = run.request_ids[slot]
        denial = make_denial(
            self.world.agents[own - 1].key,
            session_id=run.session.session_id,
            request_id=request_id,
            x=slot,
            reason="no",
            attestation=run.attestation.to_bytes(),
        )
        before = self._status(run, slot)
        try:
            progress = run.session.deny_signed(request_id, denial.to_bytes(), self.world.t0 + 10)
        except SdquorumError:
            assert self._status(run, slot) == before
            return
        assert slot == own, f"slot {slot} denied by the key of slot {own}"
        assert progress.status is CustodianStatus.DENIED

    # ------------------------------------------------------------------ the network

    @precondition(lambda self: bool(self.pool))
    @rule(data=st.data(), tamper=st.booleans())
    def deliver(self, data: st.DataObject, tamper: bool) -> None:
        """Any answer made so far, to any session, as the answer to any slot's request (replay,
        reorder, duplicate), optionally with one byte flipped."""
        item = data.draw(st.sampled_from(self.pool), label="answer")
        index = data.draw(st.integers(0, len(self.runs) - 1), label="to session")
        slot = data.draw(st.integers(1, N), label="as slot")
        payload = item.data
        if tamper:
            at = data.draw(st.integers(0, len(payload) - 1), label="flipped byte")
            payload = payload[:at] + bytes([payload[at] ^ 0x01]) + payload[at + 1 :]
        self._submit(item, index, slot, payload)

    @precondition(lambda self: bool(self.pool))
    @rule(data=st.data())
    def deliver_as_sent(self, data: st.DataObject) -> None:
        """Any answer made so far, again, to the session and slot it was made for (a duplicate, or a
        late delivery after others)."""
        item = data.draw(st.sampled_from(self.pool), label="answer")
        self._submit(item, item.session, min(max(item.x, 1), N), item.data)

    @precondition(lambda self: bool(self.runs))
    @rule(data=st.data(), now=st.integers(0, 3))
    def deadline_passes(self, data: st.DataObject, now: int) -> None:
        """The clock moves (one draw in four reaches the deadline)."""
        run = self.runs[data.draw(st.integers(0, len(self.runs) - 1), label="session")]
        run.session.tick(run.session.expires_at if now == 0 else self.world.t0 + 10 * now)

    def _submit(self, item: Sent, index: int, slot: int, payload: bytes) -> None:
        run = self.runs[index]
        before = self._status(run, slot)
        try:
            outcome = run.session.submit(run.request_ids[slot], payload, self.world.t0 + 10)
        except SdquorumError:
            assert self._status(run, slot) == before, "a refused answer changed its slot"
            return
        # The answer settled the slot: it must be that slot's custodian's own doing, and a custodian's
        # own honest answer to its own request is never the one rejected.
        assert item.signer == slot, f"slot {slot} settled by an answer signed by key {item.signer}"
        if item.genuine and item.session == index and item.x == slot and payload == item.data:
            assert outcome.accepted, f"slot {slot}'s own honest answer was rejected: {outcome.reason}"
        if outcome.accepted:
            genuine = item.genuine and item.session == index and item.x == slot and payload == item.data
            assert genuine or self.provisional, f"slot {slot} of session {index} accepted {item}"
            self.accepted_by[(index, slot)] = dataclasses.replace(item, genuine=genuine)

    def _status(self, run: Run, slot: int) -> CustodianStatus:
        return next(p.status for p in run.session.status().custodians if p.x == slot)

    # ------------------------------------------------------------------ invariants

    @invariant()
    def completion_needs_the_quorum(self) -> None:
        for index, run in enumerate(self.runs):
            if run.session.state is SessionState.COMPLETED and run.session.kind != "drill":
                accepted = run.session.progress().accepted
                assert len(accepted) >= M, f"session {index} completed with {len(accepted)} accepted"
                assert not run.foreign, f"session {index} on a foreign node completed"
            self.check_completed(run)

    @invariant()
    def every_accepted_slot_is_its_custodians_answer(self) -> None:
        for index, run in enumerate(self.runs):
            for x in run.session.progress().accepted:
                item = self.accepted_by.get((index, x))
                assert item is not None and item.signer == x and item.genuine, (index, x, item)

    @invariant()
    def settled_slots_and_finished_sessions_never_change(self) -> None:
        for index, run in enumerate(self.runs):
            for progress in run.session.status().custodians:
                key = (index, progress.x)
                before = self.settled.get(key)
                if before is not None and progress.status is not before:
                    # the one exception (coordinator/ceremony.py): a late answer, still verified after
                    # completion, found wrong; it can only be the adversary's own slot
                    assert (
                        before is CustodianStatus.NOT_NEEDED and progress.status is CustodianStatus.REJECTED
                    ), f"slot {key} moved from {before} to {progress.status}"
                    assert progress.x in self.adversary, f"honest slot {key} rejected late: {progress.detail}"
                    self.settled[key] = progress.status
                elif before is None and progress.status in SETTLED:
                    self.settled[key] = progress.status
            if index in self.finished:
                assert run.session.state is self.finished[index]
            elif run.session.finished:
                self.finished[index] = run.session.state
