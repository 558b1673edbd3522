"""Stateful property test: an agent's domain memory against a node that tries to roll it back.

One honest agent (alice, slot 1; :mod:`custodian_agent.responder` and
:class:`custodian_agent.memory.DomainMemory` on disk, as ``custodian-agent run`` uses them) receives
whatever the adversary makes a node send: recovery and drill requests over domain A's epoch-1 file
(retired once epoch 2 is seen), its epoch-2 file, or another domain's file, from the attested node
or from a node whose attestation is not under the root; the node's notices of any of those headers;
replays of any request sent before, in any order; and the agent restarts (its memory reloaded from
disk) at any point.

Invariants (issue 13 class 2: an epoch never goes back):
- the remembered epoch of a domain never goes down, and survives a restart unchanged;
- a request passes the agent's checks only if its epoch is not below the highest epoch of its
  domain the agent had been shown before (by a request that passed or by a notice);
- nothing attested outside the root passes.
"""

from __future__ import annotations

import tempfile
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import pytest
from attack import FIND_ONLY, SETTINGS, M, N, ceremony
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from coordinator.drill import DrillSession
from coordinator.recovery import RecoverySession
from custodian_agent import responder
from custodian_agent.memory import DomainMemory
from sdquorum.envelopes import CheckedRequest
from sdquorum.errors import SdquorumError
from sdquorum.offline import CeremonyRequest

if TYPE_CHECKING:
    from conftest import HonestAgent, NodeAttestation, Sealed, SealFactory


class AgentMemoryUnderAttack(RuleBasedStateMachine):
    files: ClassVar[tuple[Sealed, ...]]  # domain A epoch 1, domain A epoch 2, domain B epoch 1
    agent: ClassVar[HonestAgent]
    node: ClassVar[NodeAttestation]
    foreign: ClassVar[NodeAttestation]
    t0: ClassVar[int]
    now: ClassVar[datetime]

    def __init__(self) -> None:
        super().__init__()
        self._dir = tempfile.TemporaryDirectory(prefix="sdquorum-agent-memory-")
        self.state_dir = Path(self._dir.name) / "state"
        self.memory = DomainMemory(self.state_dir)
        self.shown: dict[bytes, int] = {}  # the highest epoch per domain the agent was shown
        self.sent: list[tuple[CeremonyRequest, bytes, bool]] = []  # request, thumbprint, foreign
        self.sessions = 0

    def teardown(self) -> None:
        self._dir.cleanup()

    @rule(which=st.integers(0, 2), drill=st.booleans(), foreign=st.booleans())
    def node_sends_a_request(self, which: int, drill: bool, foreign: bool) -> None:
        sealed = self.files[which]
        sign = (self.foreign if foreign else self.node).sign
        self.sessions += 1
        if drill:
            session = ceremony(DrillSession, self.sessions, self.t0)
            assert isinstance(session, DrillSession)
            session.start(sealed.sd.signed_header, self.t0, sign)
        else:
            session = ceremony(RecoverySession, self.sessions, self.t0)
            assert isinstance(session, RecoverySession)
            session.load_sd_file(sealed.sd, self.t0, sign)
        (request,) = session.requests_for(self.agent.thumbprint)
        self.sent.append((request.for_custodian("alice"), request.thumbprint, foreign))
        self._agent_checks(*self.sent[-1])

    @precondition(lambda self: bool(self.sent))
    @rule(data=st.data())
    def a_request_is_replayed(self, data: st.DataObject) -> None:
        self._agent_checks(*data.draw(st.sampled_from(self.sent), label="replayed request"))

    @rule(which=st.integers(0, 2))
    def node_sends_a_notice(self, which: int) -> None:
        signed = self.files[which].sd.signed_header
        try:
            header = responder.check_notice(
                signed.header_bytes,
                signed.signature,
                self.agent.thumbprint,
                self.agent.policy,
                self.memory.known(),
            )
            self.memory.observe(header.domain_id, header.signing_public_key, header.epoch)
        except SdquorumError:
            return
        self._shown(header.domain_id, header.epoch)

    @rule()
    def agent_restarts(self) -> None:
        before = dict(self.memory.known())
        self.memory = DomainMemory(self.state_dir)
        assert dict(self.memory.known()) == before, "the domain memory did not survive a restart"

    def _agent_checks(self, req: CeremonyRequest, thumbprint: bytes, foreign: bool) -> None:
        """What the agent does with a request: check it against what it remembers, then remember."""
        try:
            checked = responder.check(req, thumbprint, self.agent.policy, self.now, self.memory.known())
        except SdquorumError:
            return
        assert isinstance(checked, CheckedRequest)
        assert not foreign, "a request attested outside the root passed"
        header = checked.header
        highest = self.shown.get(header.domain_id, 0)
        assert header.epoch >= highest, f"epoch {header.epoch} passed after the agent was shown {highest}"
        self.memory.observe(header.domain_id, header.signing_public_key, header.epoch)
        self._shown(header.domain_id, header.epoch)

    def _shown(self, domain_id: bytes, epoch: int) -> None:
        self.shown[domain_id] = max(self.shown.get(domain_id, 0), epoch)

    @invariant()
    def the_remembered_epoch_is_the_highest_shown(self) -> None:
        known = self.memory.known()
        assert {d: r.epoch for d, r in known.items()} == self.shown


@pytest.fixture
def configured(
    sealed: Sealed,
    make_sealed: SealFactory,
    agents: list[HonestAgent],
    node_attestation: NodeAttestation,
    foreign_node_attestation: NodeAttestation,
    t0: int,
    now: datetime,
) -> None:
    AgentMemoryUnderAttack.files = (
        sealed,
        make_sealed(M, N, secrets=sealed.secrets, epoch=2),
        make_sealed(M, N),
    )
    AgentMemoryUnderAttack.agent = agents[0]
    AgentMemoryUnderAttack.node = node_attestation
    AgentMemoryUnderAttack.foreign = foreign_node_attestation
    AgentMemoryUnderAttack.t0 = t0
    AgentMemoryUnderAttack.now = now


@pytest.mark.usefixtures("configured")
def test_agent_memory_refuses_every_rollback() -> None:
    run_state_machine_as_test(AgentMemoryUnderAttack, settings=SETTINGS)


@pytest.mark.usefixtures("configured")
def test_the_state_machine_finds_an_agent_that_forgets(monkeypatch: pytest.MonkeyPatch) -> None:
    """The properties can fail: an agent that checks without its memory (as before issue 13) is
    caught serving the retired epoch."""
    real = responder.check

    def forgetful(
        req: CeremonyRequest, thumbprint: bytes, policy: object, now: datetime, remembered: object
    ) -> object:
        return real(req, thumbprint, policy, now)  # type: ignore[arg-type]

    monkeypatch.setattr(responder, "check", forgetful)
    with pytest.raises(AssertionError, match="passed after the agent was shown"):
        run_state_machine_as_test(AgentMemoryUnderAttack, settings=settings(SETTINGS, phases=FIND_ONLY))
