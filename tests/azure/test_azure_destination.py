"""Issue 13, classes 1 and 4 for Azure restores, in process (no gRPC): where the result goes is
bound in the attested statement and shown to each custodian as an external key; an agent serves
Azure restores only when configured to; an sdquorum domain never goes out through an Azure restore;
a share's x is its slot; late answers are still verified and a wrong one is named."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import azure_sd_generator as gen
import pytest

from coordinator.azure import AzureRestoreSession
from coordinator.ceremony import CustodianStatus, SessionState
from custodian_agent import responder
from sdquorum import pki
from sdquorum.azure import gf257
from sdquorum.azure.ceremony import (
    AZURE_PAYLOAD_TAG,
    AzureAnswer,
    check_azure_request,
    release_azure_share,
)
from sdquorum.azure.sdfile import TransferFile, decrypt_share
from sdquorum.encoding import canonical_json, parse_json_object
from sdquorum.envelopes import (
    ATTESTATION_TYPE,
    Attestation,
    CustodianPolicy,
    ExchangeStatement,
    seal_release,
)
from sdquorum.errors import MalformedError, UsageError, VerificationError
from sdquorum.keys import SoftwareWrappingKey
from sdquorum.offline import CeremonyRequest
from sdquorum.sdfile import new_domain_secrets

ITEMS = [("EncData-1", b"an Azure HSM's domain " * 20)]


@dataclass
class Restore:
    session: AzureRestoreSession
    keys: list[SoftwareWrappingKey]  # keys[x - 1] holds slot x
    exchange: SoftwareWrappingKey
    policy: CustodianPolicy
    now: datetime
    t0: int

    def request(self, x: int) -> CeremonyRequest:
        (req,) = self.session.requests_for(pki.thumbprint_sha256(self.keys[x - 1].certificate_der()))
        return req.for_custodian(f"custodian-{x}")

    def answer(self, x: int, *, claim_x: int | None = None, corrupt: bool = False) -> tuple[str, bytes]:
        """Slot x's agent answers: honestly, or with its own share relabelled as ``claim_x``, or
        with one value changed; every answer is validly signed by slot x's key."""
        req = self.request(x)
        checked = check_azure_request(
            Attestation.from_bytes(req.attestation),
            req.header,
            req.x,
            pki.thumbprint_sha256(self.keys[x - 1].certificate_der()),
            self.policy,
            self.now,
        )
        share = decrypt_share(checked.sd, self.keys[x - 1])
        if claim_x is not None:
            share = gf257.Share(claim_x, share.ys)
        if corrupt:
            share = gf257.Share(share.x, ((share.ys[0] + 1) % gf257.PRIME, *share.ys[1:]))
        key = self.keys[x - 1]
        release = seal_release(checked.statement, checked.attestation_sha256, x, share.to_bytes(), key)
        return req.request_id, AzureAnswer(release, key.certificate_der()).to_bytes()

    def status(self) -> dict[int, Any]:
        return {c.x: c for c in self.session.status().custodians}


def start_restore(
    sd: bytes,
    keys: list[SoftwareWrappingKey],
    exchange: SoftwareWrappingKey,
    node_attestation: Any,
    attestation_root: Any,
    now: datetime,
    t0: int,
    **held: frozenset[bytes],
) -> Restore:
    session = AzureRestoreSession(
        session_id="azure-1",
        node_id="node-b",
        node_address="node-b.example:7443",
        initiator="admin",
        reason="Azure DR",
        created_at=t0,
        expires_at=t0 + 600,
        rng=os.urandom,
    )
    session.start(sd, exchange.certificate_der(), t0, node_attestation.sign, **held)
    policy = CustodianPolicy(attestation_root.cert_pem, azure_restore=True)
    return Restore(session, keys, exchange, policy, now, t0)


@pytest.fixture
def restore_2_of_4(
    wrapping_keys: list[SoftwareWrappingKey],
    node_attestation: Any,
    attestation_root: Any,
    now: datetime,
    t0: int,
) -> Restore:
    keys = wrapping_keys[:4]
    sd = gen.make_sd_file([k.certificate_der() for k in keys], 2, ITEMS).data
    return start_restore(sd, keys, wrapping_keys[5], node_attestation, attestation_root, now, t0)


# ------------------------------------------------------------------ class 1: destination and opt-in


def test_an_agent_refuses_azure_restores_unless_its_configuration_opts_in(restore_2_of_4: Restore) -> None:
    """Default policy (agent.azure_restore = false): refused before anything is decrypted, and the
    local reason says how to enable it. Opted in: served."""
    r = restore_2_of_4
    req = r.request(1)
    mine = pki.thumbprint_sha256(r.keys[0].certificate_der())
    default = CustodianPolicy(r.policy.attestation_root_pem)
    assert default.azure_restore is False
    with pytest.raises(VerificationError, match=r"agent\.azure_restore.*--azure-restore"):
        responder.check(req, mine, default, r.now)
    assert responder.answer(req, responder.check(req, mine, r.policy, r.now), r.keys[0], os.urandom)


def test_the_custodian_is_shown_the_azure_exchange_certificate_as_an_external_key(
    restore_2_of_4: Restore,
) -> None:
    """The prompt names the key the restored domain is wrapped to: the certificate bound in the
    signed statement, with its subject and the SHA-256 of its key and of its DER."""
    r = restore_2_of_4
    req = r.request(1)
    mine = pki.thumbprint_sha256(r.keys[0].certificate_der())
    details = responder.describe(req, responder.check(req, mine, r.policy, r.now))
    cert = r.exchange.certificate_der()
    assert "EXTERNAL, UNATTESTED" in details["destination"]
    assert details["destination_spki_sha256"] == pki.spki_sha256(cert).hex()
    assert details["destination_certificate_sha256"] == hashlib.sha256(cert).hexdigest()
    assert pki.spki_sha256(cert).hex() in details["destination"]
    assert details["destination_subject"] == "CN=frank"


def test_the_transfer_file_is_wrapped_to_the_certificate_the_custodians_were_shown(
    restore_2_of_4: Restore,
) -> None:
    r = restore_2_of_4
    shown = r.session.attestation.statement.destination_certificate  # type: ignore[union-attr]
    assert shown == r.exchange.certificate_der()
    for x in (1, 2):
        r.session.submit(*r.answer(x), r.t0 + 5)
    assert r.session.state is SessionState.COMPLETED
    assert r.session.transfer_file is not None
    assert TransferFile.from_bytes(r.session.transfer_file).x5t_256 == hashlib.sha256(shown).digest()


def test_a_native_recovery_shows_the_nodes_attested_exchange_key(
    sealed: Any, agents: list[Any], start_session: Any, now: datetime
) -> None:
    session = start_session(sealed.sd)
    agent = agents[0]
    rq = agent.request(session).for_custodian("alice")
    details = responder.describe(rq, responder.check(rq, agent.thumbprint, agent.policy, now))
    exchange = session.attestation.statement.exchange_public_key
    assert details["destination_sha256"] == hashlib.sha256(exchange).hexdigest()
    assert "this node's attested exchange key" in details["destination"]
    assert "node node-b" in details["destination"]


def _statement_dict(att: Attestation) -> dict[str, Any]:
    return parse_json_object(att.statement_bytes, "statement")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"extra": "x"}, "unexpected members"),
        ({"type": "sdquorum-exchange-attestation-v1"}, "unknown type"),
        ({"destination_certificate": ""}, "destination certificate goes with an Azure restore"),
        ({"purpose": "recovery"}, "destination certificate goes with an Azure restore"),
    ],
)
def test_the_statement_parser_is_strict_about_the_destination(
    restore_2_of_4: Restore, change: dict[str, str], message: str
) -> None:
    att = restore_2_of_4.session.attestation
    assert att is not None and _statement_dict(att)["type"] == ATTESTATION_TYPE
    obj = {**_statement_dict(att), **change}
    with pytest.raises(MalformedError, match=message):
        ExchangeStatement.from_bytes(canonical_json(obj))


def test_a_statement_round_trips_with_its_destination(restore_2_of_4: Restore) -> None:
    att = restore_2_of_4.session.attestation
    assert att is not None
    st = att.statement
    assert ExchangeStatement.from_bytes(st.to_bytes()) == st
    assert st.destination_certificate == restore_2_of_4.exchange.certificate_der()


# ------------------------------------------------------------------ class 1: no sdquorum domain goes out


def _exported(keys: list[SoftwareWrappingKey], tag: str = AZURE_PAYLOAD_TAG) -> bytes:
    """What 'sdctl sd-file --format azure' writes (or the same payload under another tag)."""
    from sdquorum.azure.sdfile import seal_azure_domain

    payload = new_domain_secrets(os.urandom, admins=("admin",)).to_bytes()
    return seal_azure_domain([(tag, payload)], [k.certificate_der() for k in keys], 2, os.urandom).to_bytes()


def test_an_exported_sdquorum_domain_is_refused_before_any_custodian_is_asked(
    wrapping_keys: list[SoftwareWrappingKey],
    node_attestation: Any,
    attestation_root: Any,
    now: datetime,
    t0: int,
) -> None:
    with pytest.raises(UsageError, match="holds an sdquorum security domain"):
        start_restore(_exported(wrapping_keys[:3]), wrapping_keys[:3], wrapping_keys[5], node_attestation,
                      attestation_root, now, t0)  # fmt: skip


def test_an_agent_refuses_an_exported_sdquorum_domain_whatever_the_node_does(
    wrapping_keys: list[SoftwareWrappingKey],
    node_attestation: Any,
    attestation_root: Any,
    now: datetime,
    t0: int,
) -> None:
    """A node that skipped its own check (a rogue build): the agent still refuses, before decrypting."""
    sd = _exported(wrapping_keys[:3])
    st = ExchangeStatement(
        "s1", "azure-recovery", "node-b", "b:1", hashlib.sha256(sd).digest()[:16], 0,
        hashlib.sha256(sd).digest(), os.urandom(32), t0, t0 + 600, "admin", "DR",
        destination_certificate=wrapping_keys[5].certificate_der(),
    )  # fmt: skip
    req = CeremonyRequest(
        "ab" * 8, "s1", "azure-recovery", 1, "", node_attestation.sign(st).to_bytes(), sd, b""
    )
    mine = pki.thumbprint_sha256(wrapping_keys[0].certificate_der())
    policy = CustodianPolicy(attestation_root.cert_pem, azure_restore=True)
    with pytest.raises(VerificationError, match=r"sdquorum security domain.*native recovery"):
        responder.check(req, mine, policy, now)


def test_an_azure_file_to_the_domains_own_custodian_certificates_is_refused(
    wrapping_keys: list[SoftwareWrappingKey],
    node_attestation: Any,
    attestation_root: Any,
    now: datetime,
    t0: int,
) -> None:
    keys = wrapping_keys[:3]
    sd = gen.make_sd_file([k.certificate_der() for k in keys], 2, ITEMS).data
    held = frozenset({pki.thumbprint_sha256(keys[1].certificate_der())})
    with pytest.raises(UsageError, match=r"slot 2 .* custodian certificate of the domain this node holds"):
        start_restore(sd, keys, wrapping_keys[5], node_attestation, attestation_root, now, t0,
                      held_thumbprints=held)  # fmt: skip


def test_an_answer_whose_certificate_holds_a_key_of_the_domain_is_rejected(
    wrapping_keys: list[SoftwareWrappingKey],
    node_attestation: Any,
    attestation_root: Any,
    now: datetime,
    t0: int,
) -> None:
    keys = wrapping_keys[:3]
    sd = gen.make_sd_file([k.certificate_der() for k in keys], 2, ITEMS).data
    held = frozenset({pki.spki_sha256(keys[0].certificate_der())})
    r = start_restore(sd, keys, wrapping_keys[5], node_attestation, attestation_root, now, t0, held_keys=held)
    outcome = r.session.submit(*r.answer(1), t0 + 5)
    assert not outcome.accepted and "a key of the domain this node holds" in outcome.reason
    assert r.status()[1].status is CustodianStatus.REJECTED


def test_a_file_that_opens_to_an_sdquorum_payload_makes_no_transfer_file(
    wrapping_keys: list[SoftwareWrappingKey],
    node_attestation: Any,
    attestation_root: Any,
    now: datetime,
    t0: int,
) -> None:
    """The payload under another tag (only someone holding it could make this): the file opens,
    but the session fails naming why, and no transfer file is made."""
    keys = wrapping_keys[:3]
    sd = _exported(keys, tag="innocent-looking")
    r = start_restore(sd, keys, wrapping_keys[5], node_attestation, attestation_root, now, t0)
    r.session.submit(*r.answer(1), t0 + 5)
    r.session.submit(*r.answer(2), t0 + 5)
    assert r.session.state is SessionState.FAILED
    assert "opened to an sdquorum security domain" in r.session.message
    assert r.session.transfer_file is None
    assert r.session._shares == {} and r.session._exchange_key is None


# ------------------------------------------------------------------ class 4: x is the slot's, late answers


def test_a_share_claiming_another_slots_x_is_rejected_and_names_the_liar_at_3_of_3(
    wrapping_keys: list[SoftwareWrappingKey],
    node_attestation: Any,
    attestation_root: Any,
    now: datetime,
    t0: int,
) -> None:
    """Bob (slot 2) releases his share relabelled x=1 before alice answers. Before issue 13 bob was
    ACCEPTED, alice then REJECTED for "repeating x=1", and the 3-of-3 session failed blaming alice.
    Now bob is the one rejected and named, and alice is never blamed."""
    keys = wrapping_keys[:3]
    sd = gen.make_sd_file([k.certificate_der() for k in keys], 3, ITEMS).data
    r = start_restore(sd, keys, wrapping_keys[5], node_attestation, attestation_root, now, t0)
    alice = r.answer(1)
    outcome = r.session.submit(*r.answer(2, claim_x=1), t0 + 5)
    assert not outcome.accepted and "carries x=1" in outcome.reason
    status = r.status()
    assert status[2].status is CustodianStatus.REJECTED and "x=1" in status[2].detail
    assert r.session.state is SessionState.FAILED and status[2].name in r.session.message
    assert status[1].status is not CustodianStatus.REJECTED and status[1].name not in r.session.message
    with pytest.raises(Exception, match="failed"):
        r.session.submit(*alice, t0 + 6)


def test_a_share_claiming_another_slots_x_blocks_nothing_at_2_of_3(
    wrapping_keys: list[SoftwareWrappingKey],
    node_attestation: Any,
    attestation_root: Any,
    now: datetime,
    t0: int,
) -> None:
    keys = wrapping_keys[:3]
    sd = gen.make_sd_file([k.certificate_der() for k in keys], 2, ITEMS).data
    r = start_restore(sd, keys, wrapping_keys[5], node_attestation, attestation_root, now, t0)
    r.session.submit(*r.answer(2, claim_x=1), t0 + 5)
    assert r.session.submit(*r.answer(1), t0 + 6).accepted
    assert r.session.submit(*r.answer(3), t0 + 7).accepted
    assert r.session.state is SessionState.COMPLETED
    assert [r.status()[x].status for x in (1, 2, 3)] == [
        CustodianStatus.ACCEPTED, CustodianStatus.REJECTED, CustodianStatus.ACCEPTED,
    ]  # fmt: skip


def test_an_agent_refuses_to_release_a_share_whose_x_is_not_its_slot(
    wrapping_keys: list[SoftwareWrappingKey],
    node_attestation: Any,
    attestation_root: Any,
    now: datetime,
    t0: int,
) -> None:
    keys = wrapping_keys[:3]
    sd = gen.make_sd_file([k.certificate_der() for k in keys], 2, ITEMS, xs=[2, 1, 3]).data
    r = start_restore(sd, keys, wrapping_keys[5], node_attestation, attestation_root, now, t0)
    req = r.request(1)
    checked = responder.check(req, pki.thumbprint_sha256(keys[0].certificate_der()), r.policy, now)
    with pytest.raises(VerificationError, match="carries x=2: a share's x must be its slot"):
        release_azure_share(checked, keys[0])  # type: ignore[arg-type]


def test_late_azure_answers_are_verified_and_a_wrong_one_is_named(restore_2_of_4: Restore) -> None:
    """2-of-4 completes with alice and bob. Carol's honest share and dave's wrong one arrive before
    the deadline: carol stays NOT_NEEDED (verified), dave is REJECTED and named. Before issue 13 both
    were refused unchecked, so dave's lie went unnamed. The shares are gone at completion; only the
    exchange key and a digest per open slot are kept, until the deadline."""
    r = restore_2_of_4
    carol, dave = r.answer(3), r.answer(4, corrupt=True)
    for x in (1, 2):
        r.session.submit(*r.answer(x), r.t0 + 5)
    assert r.session.state is SessionState.COMPLETED
    assert r.session._shares == {}
    good = r.session.submit(*carol, r.t0 + 6)
    bad = r.session.submit(*dave, r.t0 + 7)
    assert good.late and good.accepted
    assert bad.late and not bad.accepted and "does not lie on the shares" in bad.reason
    status = r.status()
    assert status[3].status is CustodianStatus.NOT_NEEDED and "verified" in status[3].detail
    assert status[4].status is CustodianStatus.REJECTED and status[4].name in r.session.message
    assert r.session.state is SessionState.COMPLETED and r.session.transfer_file is not None
    r.session.tick(r.session.expires_at)
    assert r.session._exchange_key is None and r.session._expected == {}


def test_a_late_azure_share_claiming_another_x_is_named(restore_2_of_4: Restore) -> None:
    r = restore_2_of_4
    dave = r.answer(4, claim_x=3)
    for x in (1, 2):
        r.session.submit(*r.answer(x), r.t0 + 5)
    outcome = r.session.submit(*dave, r.t0 + 6)
    assert outcome.late and not outcome.accepted and "carries x=3" in outcome.reason
    assert r.status()[4].status is CustodianStatus.REJECTED


def test_an_exchange_certificate_the_transfer_file_cannot_be_wrapped_to_is_refused_at_start(
    wrapping_keys: list[SoftwareWrappingKey], node_attestation: Any, now: datetime, t0: int
) -> None:
    """A 1024-bit exchange certificate: refused before any custodian is asked (before, the shares
    were collected and only then did wrapping the transfer file fail)."""
    from datetime import timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505  # refused, that is the point
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "short exchange key")])
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    keys = wrapping_keys[:3]
    sd = gen.make_sd_file([k.certificate_der() for k in keys], 2, ITEMS).data
    session = AzureRestoreSession(
        session_id="azure-2", node_id="node-b", node_address="b:1", initiator="admin", reason="DR",
        created_at=t0, expires_at=t0 + 600, rng=os.urandom,
    )  # fmt: skip
    with pytest.raises(MalformedError, match="2048"):
        session.start(sd, cert.public_bytes(serialization.Encoding.DER), t0, node_attestation.sign)
    assert session.attestation is None and session.requests() == []
