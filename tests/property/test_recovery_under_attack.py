"""Stateful property test: the real recovery coordinator under an adversary (issue 13, the checks).

:class:`attack.CeremonyUnderAttack` drives real :class:`coordinator.recovery.RecoverySession`\\ s
(3-of-5) over the epoch-1 file, the same domain's epoch-2 file (same keys) and another domain's
file. Honest agents release after :func:`sdquorum.envelopes.check_request`; the adversary (fewer
than m keys) also signs releases of its own: a wrong share, another slot, x = 0, x > n, another
epoch, an outsider's key. Besides the shared invariants (see attack.py): fewer than m verified
shares never complete, and a completed session holds exactly its file's domain secrets; no other
session holds any. Deterministic, about 10 s. Two deliberately broken coordinators are caught,
which shows the properties can fail.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import pytest
from attack import FIND_ONLY, SETTINGS, CeremonyUnderAttack, N, Run, World, ceremony
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import run_state_machine_as_test

from coordinator.ceremony import CustodianRequest, SessionState
from coordinator.recovery import RecoverySession
from sdquorum import shamir
from sdquorum.envelopes import Release, SlotKey, open_release, open_sealed_share, seal_release
from sdquorum.errors import StateError, VerificationError

if TYPE_CHECKING:
    from conftest import Sealed


class RecoveryUnderAttack(CeremonyUnderAttack):
    forgeries = ("own", "wrong share", "other slot", "x=0", "x>n", "other epoch", "outsider key")

    def open_session(self, index: int, sealed: Sealed, foreign: bool, variant: int) -> Run:
        session = ceremony(self.world.session_class or RecoverySession, index, self.world.t0)
        assert isinstance(session, RecoverySession)
        signer = self.world.foreign if foreign else self.world.node
        attestation = session.load_sd_file(sealed.sd, self.world.t0, signer.sign)
        return Run(session, sealed, foreign, attestation)

    def honest_answer(self, run: Run, x: int) -> bytes:
        agent = self.world.agents[x - 1]
        (request,) = run.session.requests_for(agent.thumbprint)
        return agent.release(request).to_bytes()

    def forge(self, run: Run, own: int, forgery: str, data: st.DataObject) -> tuple[bytes, int, int]:
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
        return release.to_bytes(), x, signer

    def check_completed(self, run: Run) -> None:
        session = run.session
        assert isinstance(session, RecoverySession)
        if session.state is SessionState.COMPLETED:
            assert session.result == run.sealed.secrets, f"{session.session_id} opened other secrets"
        else:
            assert session.result is None, f"{session.session_id} holds secrets while {session.state}"


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
