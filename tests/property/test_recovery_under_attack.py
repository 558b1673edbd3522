"""Stateful property test: the real recovery coordinator under an adversary (issue 13, the checks).

A hypothesis ``RuleBasedStateMachine`` drives real :class:`coordinator.recovery.RecoverySession`\\ s
(3-of-5, in-process, the fixtures of tests/conftest.py) while an adversary acts. The adversary holds
fewer than m = 3 custodians' wrapping keys (none: the admin, an app or a network peer; one: a
custodian; two: colluding custodians) and may also run a node whose attestation is not under the
root. It replays, reorders and duplicates every release ever made, into any session and any slot's
request; it forges what its keys can sign: its own share for other slots, x = 0, a wrong share, a
release for another epoch, a release sealed to another session's exchange key, a denial for another
custodian's slot; and it flips bytes in anything. Sessions are of the epoch-1 file, the same domain's
epoch-2 file (same keys), and another domain's file. Honest agents check every request
(:func:`sdquorum.envelopes.check_request`) before they release.

Invariants, after every step:
- fewer than m accepted (verified) shares never complete a session;
- every ACCEPTED slot was settled by a release its own custodian's key signed, for that session and
  that slot, carrying the custodian's true share;
- a release not signed by the slot's key never settles the slot (an honest custodian is never
  blamed for what another key signed);
- a settled slot never changes, and a finished session never changes state;
- a completed session's secrets are exactly its SD file's domain secrets; no other session holds any.
- an honest agent releases only into a session attested under the root.

Deterministic (``derandomize=True``, no example database), bounded to about 30 s.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from coordinator.ceremony import SETTLED, CustodianRequest, CustodianStatus, SessionState
from coordinator.recovery import RecoverySession
from sdquorum import shamir
from sdquorum.envelopes import (
    Attestation,
    Release,
    SlotKey,
    make_denial,
    open_release,
    open_sealed_share,
    seal_release,
)
from sdquorum.errors import SdquorumError, StateError, VerificationError
from sdquorum.keys import SoftwareWrappingKey

if TYPE_CHECKING:
    from conftest import HonestAgent, NodeAttestation, Sealed, SealFactory

M, N = 3, 5
MAX_SESSIONS = 3
SETTINGS = settings(
    max_examples=80,
    stateful_step_count=50,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

FIND_ONLY = (Phase.explicit, Phase.reuse, Phase.generate)


@dataclass(frozen=True)
class Sent:
    """A release (or anything posing as one) on the wire, with what the test knows of its origin."""

    data: bytes
    session: int  # index of the session it was made for
    x: int  # the slot it claims
    signer: int  # slot number of the key that signed it (6: outside the file), 0: nobody's signature
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
    session_class: type[RecoverySession] = RecoverySession


@dataclass
class Run:
    session: RecoverySession
    sealed: Sealed
    foreign: bool
    request_ids: dict[int, str]
    attestation: Attestation


class RecoveryUnderAttack(RuleBasedStateMachine):
    world: ClassVar[World]

    def __init__(self) -> None:
        super().__init__()
        self.runs: list[Run] = []
        self.pool: list[Sent] = []
        self.adversary: frozenset[int] = frozenset()
        self.settled: dict[tuple[int, int], CustodianStatus] = {}
        self.finished: dict[int, SessionState] = {}
        self.accepted_by: dict[tuple[int, int], Sent] = {}

    # ------------------------------------------------------------------ set-up

    @initialize(keys=st.sets(st.integers(1, N), max_size=M - 1))
    def choose_adversary(self, keys: set[int]) -> None:
        """The adversary's role for this run: the wrapping keys of fewer than m custodians (or none)."""
        self.adversary = frozenset(keys)

    @precondition(lambda self: len(self.runs) < MAX_SESSIONS)
    @rule(which=st.integers(0, 2), foreign=st.booleans())
    def start_session(self, which: int, foreign: bool) -> None:
        """An admin starts a recovery of one of the files on the node, or the adversary on a node whose
        attestation key is not under the root."""
        world = self.world
        sealed = world.files[which]
        index = len(self.runs)
        session = world.session_class(
            session_id=f"session-{index}",
            node_id="node-b",
            node_address="node-b.example:7443",
            initiator="admin",
            reason="property test",
            created_at=world.t0,
            expires_at=world.t0 + 600,
            rng=os.urandom,
        )
        attestation = session.load_sd_file(
            sealed.sd, world.t0, (world.foreign if foreign else world.node).sign
        )
        request_ids = {r.x: r.request_id for r in session.requests()}
        self.runs.append(Run(session, sealed, foreign, request_ids, attestation))

    # ------------------------------------------------------------------ honest agents

    @precondition(lambda self: bool(self.runs))
    @rule(data=st.data(), x=st.integers(1, N))
    def honest_agent_answers(self, data: st.DataObject, x: int) -> None:
        if x in self.adversary:
            return
        index = data.draw(st.integers(0, len(self.runs) - 1), label="session")
        run = self.runs[index]
        agent = self.world.agents[x - 1]
        requests = run.session.requests_for(agent.thumbprint)
        if not requests:
            return
        if run.foreign:
            with pytest.raises(VerificationError):
                agent.check(requests[0])  # the attestation does not chain to the root: nothing released
            return
        release = agent.release(requests[0])
        sent = Sent(release.to_bytes(), index, x, x, genuine=True)
        self.pool.append(sent)
        if data.draw(st.booleans(), label="the network delivers it at once"):
            self._submit(sent, index, x, sent.data)

    # ------------------------------------------------------------------ the adversary's own releases

    @precondition(lambda self: bool(self.runs) and bool(self.adversary))
    @rule(
        data=st.data(),
        forgery=st.sampled_from(
            ["own", "wrong share", "other slot", "x=0", "x>n", "other epoch", "outsider key"]
        ),
    )
    def adversary_signs_a_release(self, data: st.DataObject, forgery: str) -> None:
        index = data.draw(st.integers(0, len(self.runs) - 1), label="session")
        run = self.runs[index]
        own = data.draw(st.sampled_from(sorted(self.adversary)), label="adversary's slot")
        key = self.world.agents[own - 1].key
        share = run.sealed.share(own)
        statement, x, y, signer = run.attestation.statement, own, share.y, own
        if forgery == "wrong share":
            y = (share.y + 1) % shamir.L
        elif forgery == "other slot":
            x = data.draw(st.sampled_from([s for s in range(1, N + 1) if s != own]), label="claimed slot")
        elif forgery == "x=0":
            x = 0
        elif forgery == "x>n":
            x = N + 1
        elif forgery == "other epoch":
            statement = dataclasses.replace(statement, epoch=statement.epoch + 1)
        elif forgery == "outsider key":
            key, signer = self.world.outsider, N + 1
        release = seal_release(statement, run.attestation.sha256, x, shamir.Share(x, y).to_bytes(), key)
        sent = Sent(release.to_bytes(), index, x, signer, genuine=forgery == "own")
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
        """Any release made so far, to any session, as the answer to any slot's request (replay,
        reorder, duplicate), optionally with one byte flipped."""
        item = data.draw(st.sampled_from(self.pool), label="release")
        index = data.draw(st.integers(0, len(self.runs) - 1), label="to session")
        slot = data.draw(st.integers(1, N), label="as slot")
        payload = item.data
        if tamper:
            at = data.draw(st.integers(0, len(payload) - 1), label="flipped byte")
            payload = payload[:at] + bytes([payload[at] ^ 0x01]) + payload[at + 1 :]
        self._submit(item, index, slot, payload)

    def _submit(self, item: Sent, index: int, slot: int, payload: bytes) -> None:
        run = self.runs[index]
        before = self._status(run, slot)
        try:
            outcome = run.session.submit(run.request_ids[slot], payload, self.world.t0 + 10)
        except SdquorumError:
            assert self._status(run, slot) == before, "a refused answer changed its slot"
            return
        # The answer settled the slot: it must be that slot's custodian's own doing.
        assert item.signer == slot, f"slot {slot} settled by a release signed by key {item.signer}"
        if outcome.accepted:
            assert item.genuine and item.session == index and item.x == slot and payload == item.data, (
                f"slot {slot} of session {index} accepted {item}"
            )
            self.accepted_by[(index, slot)] = item

    @precondition(lambda self: bool(self.pool))
    @rule(data=st.data())
    def deliver_as_sent(self, data: st.DataObject) -> None:
        """Any release made so far, again, to the session and slot it was made for (a duplicate, or a
        late delivery after others)."""
        item = data.draw(st.sampled_from(self.pool), label="release")
        self._submit(item, item.session, min(max(item.x, 1), N), item.data)

    @precondition(lambda self: bool(self.runs))
    @rule(data=st.data(), now=st.integers(0, 3))
    def deadline_passes(self, data: st.DataObject, now: int) -> None:
        """The clock moves (one draw in four reaches the deadline)."""
        run = self.runs[data.draw(st.integers(0, len(self.runs) - 1), label="session")]
        run.session.tick(run.session.expires_at if now == 0 else self.world.t0 + 10 * now)

    # ------------------------------------------------------------------ invariants

    @invariant()
    def fewer_than_m_never_complete_and_the_secret_is_the_files(self) -> None:
        for index, run in enumerate(self.runs):
            session = run.session
            accepted = session.progress().accepted
            if session.state is SessionState.COMPLETED:
                assert len(accepted) >= M, f"session {index} completed with {len(accepted)} shares"
                assert not run.foreign
                assert session.result == run.sealed.secrets, f"session {index} opened other secrets"
            else:
                assert session.result is None, f"session {index} holds secrets while {session.state}"

    @invariant()
    def every_accepted_slot_is_its_custodians_release(self) -> None:
        for index, run in enumerate(self.runs):
            for x in run.session.progress().accepted:
                item = self.accepted_by.get((index, x))
                assert item is not None and item.signer == x and item.genuine, (index, x, item)

    @invariant()
    def settled_slots_and_finished_sessions_never_change(self) -> None:
        for index, run in enumerate(self.runs):
            for progress in run.session.status().custodians:
                key = (index, progress.x)
                if key in self.settled:
                    assert progress.status is self.settled[key], f"slot {key} moved from {self.settled[key]}"
                elif progress.status in SETTLED:
                    self.settled[key] = progress.status
            if index in self.finished:
                assert run.session.state is self.finished[index]
            elif run.session.finished:
                self.finished[index] = run.session.state

    def _status(self, run: Run, slot: int) -> CustodianStatus:
        return next(p.status for p in run.session.status().custodians if p.x == slot)


@pytest.fixture
def world(
    sealed: Sealed,
    make_sealed: SealFactory,
    agents: list[HonestAgent],
    wrapping_keys: list[SoftwareWrappingKey],
    node_attestation: NodeAttestation,
    foreign_node_attestation: NodeAttestation,
    t0: int,
) -> World:
    return World(
        files=(sealed, make_sealed(M, N, secrets=sealed.secrets, epoch=2), make_sealed(M, N)),
        agents=tuple(agents[:N]),
        outsider=wrapping_keys[N],
        node=node_attestation,
        foreign=foreign_node_attestation,
        t0=t0,
    )


def test_recovery_coordinator_under_an_adversary_with_fewer_than_m_keys(world: World) -> None:
    RecoveryUnderAttack.world = world
    run_state_machine_as_test(RecoveryUnderAttack, settings=SETTINGS)


class SkipsTheVssCheck(RecoverySession):
    """A broken coordinator: a signed release's share is taken without the Feldman check."""

    def _accept(self, req: CustodianRequest, answer: bytes) -> str:
        if self._attestation is None or self._exchange_key is None:  # pragma: no cover - ended
            raise StateError("the session has ended")
        self._shares[req.x] = open_release(
            Release.from_bytes(answer),
            session_id=self.session_id,
            header=self.header,
            expected_x=req.x,
            attestation_sha256=self._attestation.sha256,
            exchange_key=self._exchange_key,
        )
        return "share taken"


class TrustsTheWireSigner(RecoverySession):
    """A broken coordinator (issue 13 class 4's kind): checks a release against the certificate of
    whichever slot the release names, not against the slot whose request it answers."""

    def _accept(self, req: CustodianRequest, answer: bytes) -> str:
        release = Release.from_bytes(answer)
        header = self.header
        named = next((s for s in header.slots if s.thumbprint == release.statement.thumbprint), None)
        if named is None or self._attestation is None or self._exchange_key is None:
            raise VerificationError("no slot has the certificate this release names")
        raw = open_sealed_share(
            release,
            slot=SlotKey(req.x, named.certificate_der, header.domain_id, header.epoch),
            session_id=self.session_id,
            attestation_sha256=self._attestation.sha256,
            exchange_key=self._exchange_key,
        )
        share = shamir.Share.from_bytes(req.x, raw)
        if not shamir.matches_public_share(share, self._public_share(req.x)):
            raise VerificationError(f"the share of slot {req.x} does not match the SD commitments (VSS)")
        self._shares[req.x] = share
        return "share verified"


@pytest.mark.parametrize("broken", [SkipsTheVssCheck, TrustsTheWireSigner], ids=lambda c: c.__name__)
def test_the_state_machine_finds_a_broken_coordinator(world: World, broken: type[RecoverySession]) -> None:
    """The properties can fail: each coordinator broken in one check is caught by an invariant."""
    RecoveryUnderAttack.world = dataclasses.replace(world, session_class=broken)
    with pytest.raises(AssertionError):  # found, not shrunk: the shortest example is not the point here
        run_state_machine_as_test(RecoveryUnderAttack, settings=settings(SETTINGS, phases=FIND_ONLY))
