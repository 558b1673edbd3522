"""Proofs of possession (drill) and rotation approvals: they verify, and every replay or forgery is named."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import pytest
from support import drbg

from custodian_agent import responder
from sdquorum import pki, shamir
from sdquorum.encoding import b64e
from sdquorum.envelopes import (
    MAX_ENVELOPE_BYTES,
    Attestation,
    CheckedRequest,
    CustodianPolicy,
    ExchangeStatement,
    Proof,
    ProofStatement,
    check_request,
    decrypt_share,
    make_proof,
    verify_proof,
)
from sdquorum.errors import MalformedError, UnauthenticatedError, VerificationError
from sdquorum.keys import SoftwareWrappingKey
from sdquorum.offline import CeremonyRequest
from sdquorum.proposal import RotationProposal

if TYPE_CHECKING:
    from conftest import NodeAttestation, Sealed, SealFactory

SESSION = "session-1"


@dataclass(frozen=True)
class World:
    """A 3-of-5 domain (alice..erin hold slots 1..5), its node, and a rotation proposal (bob..frank, 3 of 5)."""

    sealed: Sealed
    other: Sealed  # another domain sealed to the same custodians
    node: NodeAttestation
    policy: CustodianPolicy
    keys: tuple[SoftwareWrappingKey, ...]  # keys[x - 1] holds slot x; keys[5] is frank (no slot)
    now: datetime
    t0: int

    def key(self, x: int) -> SoftwareWrappingKey:
        return self.keys[x - 1]

    def thumbprint(self, x: int) -> bytes:
        return pki.thumbprint_sha256(self.key(x).certificate_der())

    def proposal(self, quorum: int = 3, from_epoch: int = 1) -> RotationProposal:
        return RotationProposal(
            domain_id=self.sealed.sd.header.domain_id,
            from_epoch=from_epoch,
            quorum=quorum,
            certificates_der=tuple(k.certificate_der() for k in self.keys[1:6]),
            proposer="admin",
            reason="alice retires; frank joins",
            expires_at=self.t0 + 600,
        )

    def attest(
        self,
        purpose: str,
        *,
        session_id: str = SESSION,
        proposal: bytes = b"",
        seed: int = 1,
        sealed: Sealed | None = None,
    ) -> Attestation:
        header = (sealed or self.sealed).sd.signed_header
        statement = ExchangeStatement(
            session_id=session_id,
            purpose=purpose,
            node_id="node-b",
            node_address="node-b.example:7443",
            domain_id=header.header.domain_id,
            epoch=header.header.epoch,
            sd_header_sha256=header.sha256,
            exchange_public_key=bytes(32),
            issued_at=self.t0,
            expires_at=self.t0 + 600,
            initiator="admin",
            reason=f"quarterly {purpose}",
            challenge=drbg(seed)(32) if purpose != "recovery" else b"",
            proposal_sha256=hashlib.sha256(proposal).digest() if proposal else b"",
        )
        return self.node.sign(statement)

    @functools.cached_property
    def drill(self) -> Attestation:
        return self.attest("drill")

    @functools.cached_property
    def rotation(self) -> Attestation:
        return self.attest("rotation", proposal=self.proposal().to_bytes())

    def request(
        self,
        att: Attestation,
        x: int,
        *,
        kind: str | None = None,
        proposal: bytes | None = None,
        sealed: Sealed | None = None,
    ) -> CeremonyRequest:
        st = att.statement
        signed = (sealed or self.sealed).sd.signed_header
        if proposal is None:
            proposal = self.proposal().to_bytes() if st.purpose == "rotation" else b""
        return CeremonyRequest(
            request_id=f"{x:016x}",
            session_id=st.session_id,
            kind=kind or st.purpose,
            x=x,
            custodian=signed.header.slot(x).name,
            attestation=att.to_bytes(),
            header=signed.header_bytes,
            header_signature=signed.signature,
            proposal=proposal,
        )

    def prove(
        self, att: Attestation, x: int, *, sealed: Sealed | None = None, proposal: bytes | None = None
    ) -> Proof:
        """Slot x's agent answers ``att`` the way the online and offline agents do (responder)."""
        req = self.request(att, x, sealed=sealed, proposal=proposal)
        checked = responder.check(req, self.thumbprint(x), self.policy, self.now)
        return Proof.from_bytes(responder.answer(req, checked, self.key(x), drbg(100 + x)))

    def verify(self, proof: Proof, att: Attestation, x: int) -> None:
        verify_proof(proof, attestation=att, header=self.sealed.sd.header, expected_x=x)


@pytest.fixture(scope="module")
def w(
    sealed: Sealed,
    make_sealed: SealFactory,
    node_attestation: NodeAttestation,
    custodian_policy: CustodianPolicy,
    wrapping_keys: list[SoftwareWrappingKey],
    now: datetime,
    t0: int,
) -> World:
    return World(sealed, make_sealed(), node_attestation, custodian_policy, tuple(wrapping_keys), now, t0)


def resign(original: Proof, key: SoftwareWrappingKey | None, **changes: object) -> Proof:
    """``original`` with statement fields changed, signed by ``key`` (None: keep the old signature)."""
    data = dataclasses.replace(original.statement, **changes).to_bytes()  # type: ignore[arg-type]  # values vary by case
    return Proof(data, key.sign(data) if key else original.signature)


def crafted(w: World, att: Attestation, x: int, **statement_changes: object) -> Proof:
    """A proof by slot x's real key and share, made over ``att`` with the statement the agent saw edited."""
    st = dataclasses.replace(att.statement, **statement_changes)  # type: ignore[arg-type]  # values vary by case
    checked = CheckedRequest(st, att.sha256, w.sealed.sd.header, x)
    return make_proof(checked, w.sealed.share(x), w.key(x), drbg(7))


# ---------------------------------------------------------------------------------------- proofs that verify


@pytest.mark.parametrize("x", [1, 2, 3, 4, 5])
def test_drill_proof_from_the_responder_verifies_for_every_slot(w: World, x: int) -> None:
    proof = w.prove(w.drill, x)
    w.verify(proof, w.drill, x)
    st = proof.statement
    assert (st.purpose, st.session_id, st.x, st.thumbprint) == ("drill", SESSION, x, w.thumbprint(x))
    assert (st.attestation_sha256, st.proposal_sha256) == (w.drill.sha256, b"")


def test_drill_proof_carries_no_share(w: World) -> None:
    data = w.prove(w.drill, 2).to_bytes()
    share = w.sealed.share(2).to_bytes()
    assert b64e(share).encode() not in data and share.hex().encode() not in data


def test_rotation_approval_with_make_proof_verifies(w: World) -> None:
    proposal = w.proposal().to_bytes()
    checked = check_request(
        w.rotation,
        w.sealed.sd.signed_header,
        3,
        w.thumbprint(3),
        w.policy,
        w.now,
        purpose="rotation",
        proposal=proposal,
    )
    proof = make_proof(checked, decrypt_share(checked, w.key(3)), w.key(3), drbg(3))
    w.verify(proof, w.rotation, 3)
    assert proof.statement.purpose == "rotation"
    assert proof.statement.proposal_sha256 == hashlib.sha256(proposal).digest()


def test_rotation_approval_from_the_responder_verifies_and_shows_the_proposal(w: World) -> None:
    w.verify(w.prove(w.rotation, 5), w.rotation, 5)
    req = w.request(w.rotation, 5)
    shown = responder.describe(req, responder.check(req, w.thumbprint(5), w.policy, w.now))
    assert (shown["kind"], shown["slot"], shown["epoch"]) == ("rotation", 5, 1)
    assert "from epoch 1 to 2: quorum 3 of 5" in shown["proposal"]
    assert "CN=frank" in shown["proposal"]
    assert "same key as" in shown["proposal"]  # marked against the roster the agent checked


# ---------------------------------------------------------------------------------------- refusals


@dataclass(frozen=True)
class Refusal:
    name: str
    make: Callable[[World], tuple[Proof, Attestation, int]]  # the proof, what it is checked against, slot
    match: str
    error: type[VerificationError] = VerificationError  # UnauthenticatedError: nobody's answer, nobody blamed


def _replayed_into_another_session(w: World) -> tuple[Proof, Attestation, int]:
    return w.prove(w.drill, 1), w.attest("drill", session_id="session-2", seed=2), 1


def _replayed_into_a_reissued_attestation(w: World) -> tuple[Proof, Attestation, int]:
    return w.prove(w.drill, 1), w.attest("drill", seed=3), 1


def _another_slots_proof(w: World) -> tuple[Proof, Attestation, int]:
    return w.prove(w.drill, 2), w.drill, 1


def _claiming_another_slot(w: World) -> tuple[Proof, Attestation, int]:
    return resign(w.prove(w.drill, 1), w.key(1), x=2), w.drill, 1


def _signed_by_another_custodian(w: World) -> tuple[Proof, Attestation, int]:
    return resign(w.prove(w.drill, 1), w.key(2)), w.drill, 1


def _naming_another_certificate(w: World) -> tuple[Proof, Attestation, int]:
    return resign(w.prove(w.drill, 1), w.key(1), thumbprint=w.thumbprint(2)), w.drill, 1


def _tampered_response(w: World, key: bool) -> tuple[Proof, Attestation, int]:
    good = w.prove(w.drill, 1)
    schnorr = shamir.SchnorrProof.from_bytes(good.statement.proof)
    bad = shamir.SchnorrProof(schnorr.commitment, (schnorr.response + 1) % shamir.L).to_bytes()
    return resign(good, w.key(1) if key else None, proof=bad), w.drill, 1


def _wrong_share(w: World) -> tuple[Proof, Attestation, int]:
    checked = CheckedRequest(w.drill.statement, w.drill.sha256, w.sealed.sd.header, 1)
    lost = shamir.Share(1, (w.sealed.share(1).y + 1) % shamir.L)
    return make_proof(checked, lost, w.key(1), drbg(1)), w.drill, 1


def _another_domain(w: World) -> tuple[Proof, Attestation, int]:
    return w.prove(w.attest("drill", sealed=w.other), 1, sealed=w.other), w.drill, 1


def _approval_of_another_proposal(w: World) -> tuple[Proof, Attestation, int]:
    other = w.proposal(quorum=4).to_bytes()
    return w.prove(w.attest("rotation", proposal=other), 2, proposal=other), w.rotation, 2


def _approval_carrying_another_proposal_hash(w: World) -> tuple[Proof, Attestation, int]:
    other = hashlib.sha256(w.proposal(quorum=4).to_bytes()).digest()
    return crafted(w, w.rotation, 2, proposal_sha256=other), w.rotation, 2


def _drill_proof_as_rotation_approval(w: World) -> tuple[Proof, Attestation, int]:
    return w.prove(w.drill, 2), w.rotation, 2


def _drill_purpose_under_the_rotation_attestation(w: World) -> tuple[Proof, Attestation, int]:
    return crafted(w, w.rotation, 2, purpose="drill"), w.rotation, 2


def _rotation_approval_as_drill_proof(w: World) -> tuple[Proof, Attestation, int]:
    return w.prove(w.rotation, 4), w.drill, 4


def _rotation_purpose_under_the_drill_attestation(w: World) -> tuple[Proof, Attestation, int]:
    return crafted(w, w.drill, 4, purpose="rotation"), w.drill, 4


REFUSALS = [
    Refusal(
        "drill proof replayed into another session",
        _replayed_into_another_session,
        r"the proof belongs to another session \(replay\)",
        UnauthenticatedError,
    ),
    Refusal(
        "drill proof replayed into a re-issued attestation of the same session (new challenge)",
        _replayed_into_a_reissued_attestation,
        "the proof answers another attestation than this session's",
        UnauthenticatedError,
    ),
    Refusal(
        "bob's proof submitted for alice's slot",
        _another_slots_proof,
        "the proof is not signed by slot 1's wrapping key",
        UnauthenticatedError,
    ),
    Refusal(
        "alice's signed proof claiming bob's slot",
        _claiming_another_slot,
        "the proof claims slot 2 on a request for slot 1",
    ),
    Refusal(
        "alice's proof signed by bob's key",
        _signed_by_another_custodian,
        "the proof is not signed by slot 1's wrapping key",
        UnauthenticatedError,
    ),
    Refusal(
        "alice's proof naming bob's certificate",
        _naming_another_certificate,
        "the proof names another wrapping certificate than the slot's",
    ),
    Refusal(
        "Schnorr response tampered and re-signed by the custodian",
        lambda w: _tampered_response(w, key=True),
        "slot 1's proof of possession of its share does not verify",
    ),
    Refusal(
        "Schnorr response tampered in transit",
        lambda w: _tampered_response(w, key=False),
        "the proof is not signed by slot 1's wrapping key",
        UnauthenticatedError,
    ),
    Refusal(
        "custodian proves with a share it does not hold",
        _wrong_share,
        "slot 1's proof of possession of its share does not verify",
    ),
    Refusal(
        "drill proof for another domain",
        _another_domain,
        "the proof answers another attestation than this session's",
        UnauthenticatedError,
    ),
    Refusal(
        "rotation approval of another proposal",
        _approval_of_another_proposal,
        "the proof answers another attestation than this session's",
        UnauthenticatedError,
    ),
    Refusal(
        "rotation approval carrying another proposal's hash under this attestation",
        _approval_carrying_another_proposal_hash,
        "the proof approves another proposal than this one",
    ),
    Refusal(
        "drill proof submitted as a rotation approval",
        _drill_proof_as_rotation_approval,
        "the proof answers another attestation than this session's",
        UnauthenticatedError,
    ),
    Refusal(
        "proof saying drill under the rotation's attestation",
        _drill_purpose_under_the_rotation_attestation,
        r"the proof belongs to another ceremony \(replay\)",
    ),
    Refusal(
        "rotation approval submitted as a drill proof",
        _rotation_approval_as_drill_proof,
        "the proof answers another attestation than this session's",
        UnauthenticatedError,
    ),
    Refusal(
        "proof saying rotation under the drill's attestation",
        _rotation_purpose_under_the_drill_attestation,
        r"the proof belongs to another ceremony \(replay\)",
    ),
]


@pytest.mark.parametrize("case", REFUSALS, ids=lambda c: c.name)
def test_proof_refusals(w: World, case: Refusal) -> None:
    proof, att, x = case.make(w)
    with pytest.raises(VerificationError, match=case.match) as raised:
        w.verify(proof, att, x)
    assert isinstance(raised.value, UnauthenticatedError) is (case.error is UnauthenticatedError)


def test_proof_for_a_slot_the_domain_lacks_is_refused(w: World) -> None:
    with pytest.raises(VerificationError, match="no slot x=9"):
        w.verify(w.prove(w.drill, 1), w.drill, 9)


def test_oversized_or_garbage_proof_is_malformed(w: World) -> None:
    with pytest.raises(MalformedError, match=f"larger than {MAX_ENVELOPE_BYTES}"):
        Proof.from_bytes(b" " * (MAX_ENVELOPE_BYTES + 1))
    with pytest.raises(MalformedError):
        Proof.from_bytes(b"{not json")
    good = w.prove(w.drill, 1)
    short = dataclasses.replace(good.statement, proof=good.statement.proof[:63]).to_bytes()
    with pytest.raises(MalformedError, match="proof must be 64 bytes"):
        ProofStatement.from_bytes(short)


# ---------------------------------------------------------------------------------------- check_request


def _check(w: World, att: Attestation, purpose: str, proposal: bytes = b"", x: int = 1) -> CheckedRequest:
    return check_request(
        att,
        w.sealed.sd.signed_header,
        x,
        w.thumbprint(x),
        w.policy,
        w.now,
        purpose=purpose,
        proposal=proposal,
    )


@pytest.mark.parametrize(
    ("attested", "presented"),
    [("drill", "recovery"), ("recovery", "drill"), ("rotation", "drill"), ("drill", "rotation")],
)
def test_request_presented_as_another_purpose_is_refused(w: World, attested: str, presented: str) -> None:
    proposal = w.proposal().to_bytes()
    att = w.attest(attested, proposal=proposal if attested == "rotation" else b"")
    with pytest.raises(
        VerificationError, match=f"the request says '{presented}' but its attestation says '{attested}'"
    ):
        _check(w, att, presented, proposal)


def test_drill_attestation_in_a_recovery_request_is_refused_by_the_responder(w: World) -> None:
    req = w.request(w.drill, 1, kind="recovery")
    with pytest.raises(
        VerificationError, match="the request says 'recovery' but its attestation says 'drill'"
    ):
        responder.check(req, w.thumbprint(1), w.policy, w.now)


def test_recovery_defaults_refuse_a_drill_attestation(w: World) -> None:
    with pytest.raises(VerificationError, match="says 'recovery' but its attestation says 'drill'"):
        check_request(w.drill, w.sealed.sd.signed_header, 1, w.thumbprint(1), w.policy, w.now)


@pytest.mark.parametrize(
    "shown",
    [
        pytest.param(lambda w: w.proposal(quorum=2).to_bytes(), id="another quorum"),
        pytest.param(lambda w: w.proposal().to_bytes().replace(b",", b", "), id="same proposal, other bytes"),
        pytest.param(lambda w: b"", id="nothing shown"),
    ],
)
def test_rotation_proposal_shown_differently_than_attested_is_refused(
    w: World, shown: Callable[[World], bytes]
) -> None:
    with pytest.raises(
        VerificationError, match="the rotation proposal shown differs from the one the node attested"
    ):
        _check(w, w.rotation, "rotation", shown(w))


def test_rotation_request_carrying_another_proposal_is_refused_by_the_responder(w: World) -> None:
    req = w.request(w.rotation, 2, proposal=w.proposal(quorum=4).to_bytes())
    with pytest.raises(VerificationError, match="the rotation proposal shown differs"):
        responder.check(req, w.thumbprint(2), w.policy, w.now)


def test_attested_proposal_for_another_epoch_is_refused_by_the_responder(w: World) -> None:
    stale = w.proposal(from_epoch=7).to_bytes()
    req = w.request(w.attest("rotation", proposal=stale), 2, proposal=stale)
    with pytest.raises(VerificationError, match="the rotation proposal names another domain or epoch"):
        responder.check(req, w.thumbprint(2), w.policy, w.now)


def test_request_whose_session_differs_from_its_attestation_is_refused(w: World) -> None:
    req = dataclasses.replace(w.request(w.drill, 1), session_id="session-9")
    with pytest.raises(VerificationError, match="the request's session differs from its attestation's"):
        responder.check(req, w.thumbprint(1), w.policy, w.now)


def test_drill_request_for_another_custodians_slot_is_refused(w: World) -> None:
    req = w.request(w.drill, 2)
    with pytest.raises(VerificationError, match="slot 2 belongs to another custodian's certificate"):
        responder.check(req, w.thumbprint(1), w.policy, w.now)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"purpose": "drill", "challenge": b""}, "a drill or rotation needs a 32-byte challenge"),
        ({"purpose": "drill", "challenge": bytes(16)}, "challenge and proposal hash must be 32 bytes"),
        ({"purpose": "rotation"}, "a proposal hash goes with a rotation, and only there"),
        (
            {"purpose": "drill", "proposal_sha256": bytes(32)},
            "a proposal hash goes with a rotation, and only there",
        ),
    ],
    ids=["drill without challenge", "short challenge", "rotation without proposal", "drill with proposal"],
)
def test_statement_with_inconsistent_challenge_or_proposal_is_malformed(
    w: World, changes: dict[str, object], match: str
) -> None:
    st = dataclasses.replace(w.drill.statement, **{"challenge": bytes(32), **changes})  # type: ignore[arg-type]  # values vary by case
    with pytest.raises(MalformedError, match=match):
        w.node.sign(st)
