"""Stateful property test: the real possession drill and rotation approval under an adversary.

:class:`attack.CeremonyUnderAttack` drives real :class:`coordinator.drill.DrillSession`\\ s and
:class:`coordinator.rotation.RotationSession`\\ s (3-of-5; a rotation proposes one of two rosters)
over the epoch-1 file, the same domain's epoch-2 file and another domain's file. Honest agents
answer as the online and offline agents do (:mod:`custodian_agent.responder`); the adversary (fewer
than m keys) also signs proofs of its own: of a wrong value, for another slot, for another epoch,
for another proposal, for another ceremony kind, with an outsider's key. Besides the shared
invariants (see attack.py): a drill never FAILS as a session (its report is the result) and
completes only when every slot has settled or the deadline passed; a rotation COMPLETES only with m
genuine approvals of the very proposal it was opened with.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import TYPE_CHECKING

import pytest
from attack import FIND_ONLY, SETTINGS, CeremonyUnderAttack, N, Run, World, ceremony
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import run_state_machine_as_test

from coordinator.ceremony import OPEN, CustodianRequest, SessionState
from coordinator.drill import DrillSession
from coordinator.rotation import RotationSession
from custodian_agent import responder
from sdquorum import shamir
from sdquorum.envelopes import CheckedRequest, Proof, make_proof
from sdquorum.errors import UnauthenticatedError
from sdquorum.keys import SoftwareWrappingKey, verify_pss
from sdquorum.proposal import RotationProposal

if TYPE_CHECKING:
    from conftest import Sealed

NAMES = ("alice", "bob", "carol", "dave", "erin")


def proposal(sealed: Sealed, keys: list[SoftwareWrappingKey], t0: int, variant: int) -> RotationProposal:
    """Variant 0: bob..frank (alice retires); variant 1: alice..erin at quorum 4."""
    certificates = keys[1:6] if variant == 0 else keys[0:5]
    return RotationProposal(
        domain_id=sealed.sd.header.domain_id,
        from_epoch=sealed.sd.header.epoch,
        quorum=3 + variant,
        certificates_der=tuple(k.certificate_der() for k in certificates),
        proposer="admin",
        reason=f"roster variant {variant}",
        expires_at=t0 + 600,
    )


class DrillRotationUnderAttack(CeremonyUnderAttack):
    forgeries = (
        "own",
        "wrong share",
        "other slot",
        "other epoch",
        "other proposal",
        "other kind",
        "outsider key",
    )

    def open_session(self, index: int, sealed: Sealed, foreign: bool, variant: int) -> Run:
        world = self.world
        signer = (world.foreign if foreign else world.node).sign
        if variant < 2:  # half the sessions are drills, the others rotations to one of two rosters
            drill = ceremony(world.session_class or DrillSession, index, world.t0)
            assert isinstance(drill, DrillSession)
            return Run(drill, sealed, foreign, drill.start(sealed.sd.signed_header, world.t0, signer))
        rotation = ceremony(RotationSession, index, world.t0)
        assert isinstance(rotation, RotationSession)
        keys = [agent.key for agent in world.agents] + [world.outsider]
        offer = proposal(sealed, keys, world.t0, variant - 2)
        return Run(
            rotation, sealed, foreign, rotation.start(sealed.sd.signed_header, offer, world.t0, signer)
        )

    def honest_answer(self, run: Run, x: int) -> bytes:
        """What slot x's agent answers, after its checks (responder.check), as both agents do."""
        agent = self.world.agents[x - 1]
        (request,) = run.session.requests_for(agent.thumbprint)
        req = request.for_custodian(NAMES[x - 1])
        checked = responder.check(req, request.thumbprint, agent.policy, self.world.now)
        return responder.answer(req, checked, agent.key, os.urandom)

    def forge(self, run: Run, own: int, forgery: str, data: st.DataObject) -> tuple[bytes, int, int]:
        key = self.world.agents[own - 1].key
        header = run.sealed.sd.header
        statement = run.attestation.statement
        share, x, signer = run.sealed.share(own), own, own
        if forgery == "wrong share":
            share = shamir.Share(own, (share.y + 1) % shamir.L)
        elif forgery == "other slot":
            x = data.draw(st.sampled_from([s for s in range(1, N + 1) if s != own]), label="claimed slot")
            share = shamir.Share(x, share.y)
        elif forgery == "other epoch":
            statement = dataclasses.replace(statement, epoch=statement.epoch + 1)
        elif forgery == "other proposal":
            statement = dataclasses.replace(statement, proposal_sha256=bytes(32))
        elif forgery == "other kind":
            other = "rotation" if statement.purpose == "drill" else "drill"
            statement = dataclasses.replace(statement, purpose=other)
        elif forgery == "outsider key":
            key, signer = self.world.outsider, N + 1
        checked = CheckedRequest(statement, run.attestation.sha256, header, x)
        return make_proof(checked, share, key, os.urandom).to_bytes(), x, signer

    def check_completed(self, run: Run) -> None:
        session = run.session
        if isinstance(session, DrillSession):
            assert session.state is not SessionState.FAILED, "a drill failed as a session"
            if session.state is SessionState.COMPLETED:
                assert all(p.status not in OPEN for p in session.status().custodians)
        elif isinstance(session, RotationSession) and session.state is SessionState.COMPLETED:
            assert session.proposal is not None and session.attestation is not None
            attested = session.attestation.statement.proposal_sha256
            assert attested == hashlib.sha256(session.proposal.to_bytes()).digest()


def test_drill_and_rotation_under_an_adversary_with_fewer_than_m_keys(world: World) -> None:
    DrillRotationUnderAttack.world = world
    run_state_machine_as_test(DrillRotationUnderAttack, settings=SETTINGS)


class TakesProofsOnTrust(DrillSession):
    """A broken drill: a proof signed by the slot's key counts without its Schnorr proof checked."""

    def _accept(self, req: CustodianRequest, answer: bytes) -> str:
        header = self.header
        slot = header.slot(req.x)
        proof = Proof.from_bytes(answer)
        if not verify_pss(slot.certificate_der, proof.statement_bytes, proof.signature):
            raise UnauthenticatedError(f"the proof is not signed by slot {req.x}'s wrapping key")
        return "taken on trust"


def test_the_state_machine_finds_a_broken_drill(world: World) -> None:
    """The properties can fail: a drill that does not check the proof itself is caught."""
    DrillRotationUnderAttack.world = dataclasses.replace(world, session_class=TakesProofsOnTrust)
    with pytest.raises(AssertionError):  # found, not shrunk
        run_state_machine_as_test(DrillRotationUnderAttack, settings=settings(SETTINGS, phases=FIND_ONLY))
