"""Stateful property test: the real Azure restore coordinator under an adversary.

:class:`attack.CeremonyUnderAttack` drives real :class:`coordinator.azure.AzureRestoreSession`\\ s
(3-of-5 Azure files made by the independent generator of tests/azure) to an exchange certificate.
Honest agents release after :func:`sdquorum.azure.ceremony.check_azure_request`; the adversary
(fewer than m keys) also releases for its own slot a share carrying another slot's x (issue 13 class
4's example), a share with wrong values, and a release signed by an outsider's key.

Azure files carry no commitments, so a share is accepted on arrival and proved right only when m of
them open the file; a share found wrong then moves from ACCEPTED to REJECTED (named), and a late
answer is still verified after completion (NOT_NEEDED to REJECTED when wrong). The invariants are
therefore the shared ones, except that a settled slot may still move to REJECTED when it is the
adversary's; in addition: an honest custodian's slot is never REJECTED,
and a COMPLETED session's transfer file opens with the exchange key to exactly the file's items,
with every slot still ACCEPTED then holding its custodian's true share.

On main before issue 13's class 4 fix (62fff88) this test FAILS, as it should: the adversary's
share carrying an honest custodian's x arrives first, and that custodian's own answer is then
rejected as "repeats x" (rule ``adversary_front_runs_an_honest_custodian``). It passes with the fix
merged (c4-identity): a share's x is fixed by its slot, and a late answer is still verified.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import pytest
from attack import SETTINGS, CeremonyUnderAttack, M, N, Run, Sent, World, ceremony
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import strategies as st
from hypothesis.stateful import invariant, precondition, rule, run_state_machine_as_test

from coordinator.azure import AzureRestoreSession
from coordinator.ceremony import CustodianStatus, SessionState
from sdquorum.azure import gf257
from sdquorum.azure.ceremony import AzureAnswer, check_azure_request, release_azure_share
from sdquorum.envelopes import seal_release
from sdquorum.keys import SoftwareWrappingKey

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "azure"))
import azure_sd_generator as gen

if TYPE_CHECKING:
    from conftest import HonestAgent, NodeAttestation, Sealed

ITEMS = [("sd-item-one", b"first item plaintext"), ("sd-item-two", os.urandom(300))]


class AzureRestoreUnderAttack(CeremonyUnderAttack):
    forgeries = ("own", "another slot's x", "wrong values", "outsider key")
    provisional = True
    azure_files: ClassVar[tuple[gen.Generated, ...]]
    exchange: ClassVar[tuple[rsa.RSAPrivateKey, bytes]]

    def __init__(self) -> None:
        super().__init__()
        self.files_of: dict[int, gen.Generated] = {}

    def open_session(self, index: int, sealed: Sealed, foreign: bool, variant: int) -> Run:
        session = ceremony(AzureRestoreSession, index, self.world.t0)
        assert isinstance(session, AzureRestoreSession)
        azure = self.azure_files[variant % len(self.azure_files)]
        signer = self.world.foreign if foreign else self.world.node
        attestation = session.start(azure.data, self.exchange[1], self.world.t0, signer.sign)
        self.files_of[index] = azure
        return Run(session, sealed, foreign, attestation)

    def honest_answer(self, run: Run, x: int) -> bytes:
        agent = self.world.agents[x - 1]
        (request,) = run.session.requests_for(agent.thumbprint)
        policy = dataclasses.replace(agent.policy, azure_restore=True)  # this custodian opted in
        checked = check_azure_request(
            run.attestation, request.header_bytes, request.x, agent.thumbprint, policy, self.world.now
        )
        return release_azure_share(checked, agent.key).to_bytes()

    def forge(self, run: Run, own: int, forgery: str, data: st.DataObject) -> tuple[bytes, int, int]:
        key: SoftwareWrappingKey = self.world.agents[own - 1].key
        share = gf257.Share.from_bytes(self.files_of[self.runs.index(run)].shares[own - 1])
        signer = own
        if forgery == "another slot's x":
            # the x of an honest custodian, preferably one that has not answered yet (issue 13 class 4)
            waiting = [r.x for r in run.session.requests() if r.x not in self.adversary]
            others = waiting or [s for s in range(1, N + 1) if s != own]
            other = data.draw(st.sampled_from(others), label="x claimed")
            share = gf257.Share(other, share.ys)
        elif forgery == "wrong values":
            share = gf257.Share(share.x, tuple((y + 1) % 257 for y in share.ys))
        elif forgery == "outsider key":
            key, signer = self.world.outsider, N + 1
        statement = run.attestation.statement
        release = seal_release(statement, run.attestation.sha256, own, share.to_bytes(), key)
        return AzureAnswer(release, key.certificate_der()).to_bytes(), own, signer

    @precondition(lambda self: bool(self.runs) and bool(self.adversary))
    @rule(data=st.data())
    def adversary_front_runs_an_honest_custodian(self, data: st.DataObject) -> None:
        """Reorder on purpose: the adversary's share carrying an honest custodian's x arrives first,
        then that custodian's own answer (issue 13 class 4's example)."""
        index = data.draw(st.integers(0, len(self.runs) - 1), label="session")
        run = self.runs[index]
        waiting = [r.x for r in run.session.requests() if r.x not in self.adversary]
        own = data.draw(st.sampled_from(sorted(self.adversary)), label="adversary's slot")
        if run.foreign or not waiting or own not in {r.x for r in run.session.requests()}:
            return
        victim = data.draw(st.sampled_from(waiting), label="honest custodian")
        share = gf257.Share.from_bytes(self.files_of[index].shares[own - 1])
        key = self.world.agents[own - 1].key
        release = seal_release(
            run.attestation.statement,
            run.attestation.sha256,
            own,
            gf257.Share(victim, share.ys).to_bytes(),
            key,
        )
        liar = Sent(AzureAnswer(release, key.certificate_der()).to_bytes(), index, own, own, genuine=False)
        self.pool.append(liar)
        self._submit(liar, index, own, liar.data)
        if run.session.requests_for(self.world.agents[victim - 1].thumbprint):
            honest = Sent(self.honest_answer(run, victim), index, victim, victim, genuine=True)
            self.pool.append(honest)
            self._submit(honest, index, victim, honest.data)

    def check_completed(self, run: Run) -> None:
        session = run.session
        assert isinstance(session, AzureRestoreSession)
        if session.state is not SessionState.COMPLETED:
            assert session.transfer_file is None
            return
        assert session.transfer_file is not None
        assert gen.open_transfer_file(session.transfer_file, *self.exchange) == ITEMS
        index = self.runs.index(run)
        for x in session.progress().accepted:
            item = self.accepted_by.get((index, x))
            assert item is not None and item.genuine, f"slot {x} completed the restore with {item}"

    # Azure acceptance is provisional: replace the shared invariants that assume it is final.

    @invariant()
    def every_accepted_slot_is_its_custodians_answer(self) -> None:
        """Relaxed: an ACCEPTED slot was settled by its own key (checked on submit); its value is
        proved only when the file opens (check_completed)."""

    @invariant()
    def settled_slots_and_finished_sessions_never_change(self) -> None:
        """Relaxed as the module docstring says: only the adversary's slot moves, only to REJECTED."""
        for index, run in enumerate(self.runs):
            for progress in run.session.status().custodians:
                key = (index, progress.x)
                before = self.settled.get(key)
                if before is not None and progress.status is not before:
                    # only a liar's slot moves, and only to REJECTED: found wrong once the file opened
                    # (ACCEPTED) or when its late answer is still verified after that (NOT_NEEDED)
                    assert progress.status is CustodianStatus.REJECTED, (
                        f"slot {key} moved from {before} to {progress.status}"
                    )
                    assert progress.x in self.adversary, f"honest slot {key} rejected late: {progress.detail}"
                if progress.status is not CustodianStatus.REQUESTED and progress.status is not (
                    CustodianStatus.NOT_CONNECTED
                ):
                    self.settled[key] = progress.status
            if index in self.finished:
                assert run.session.state is self.finished[index]
            elif run.session.finished:
                self.finished[index] = run.session.state

    @invariant()
    def an_honest_slot_is_never_rejected(self) -> None:
        for index, run in enumerate(self.runs):
            for p in run.session.status().custodians:
                assert p.status is not CustodianStatus.REJECTED or p.x in self.adversary, (
                    f"honest custodian {p.name} (slot {p.x}) of session {index} rejected: {p.detail}"
                )


@pytest.fixture
def world(
    sealed: Sealed,
    agents: list[HonestAgent],
    wrapping_keys: list[SoftwareWrappingKey],
    wrapping_private_keys: list[tuple[rsa.RSAPrivateKey, bytes]],
    node_attestation: NodeAttestation,
    foreign_node_attestation: NodeAttestation,
    t0: int,
    now: datetime,
) -> World:
    certificates = [agent.key.certificate_der() for agent in agents[:N]]
    AzureRestoreUnderAttack.azure_files = tuple(gen.make_sd_file(certificates, M, ITEMS) for _ in range(2))
    AzureRestoreUnderAttack.exchange = wrapping_private_keys[N]
    return World(
        files=(sealed, sealed, sealed),
        agents=tuple(agents[:N]),
        outsider=wrapping_keys[N],
        node=node_attestation,
        foreign=foreign_node_attestation,
        t0=t0,
        now=now,
    )


def test_azure_restore_under_an_adversary_with_fewer_than_m_keys(world: World) -> None:
    AzureRestoreUnderAttack.world = world
    run_state_machine_as_test(AzureRestoreUnderAttack, settings=SETTINGS)
