"""Recovery envelopes: what an agent checks before decrypting, and what the coordinator checks on a release."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import nacl.public
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sdquorum import pki, shamir
from sdquorum.encoding import b64e, canonical_json
from sdquorum.envelopes import (
    ATTESTATION_CONTEXT,
    MAX_ENVELOPE_BYTES,
    SHARE_TYPE,
    Attestation,
    CheckedRequest,
    CustodianPolicy,
    ExchangeStatement,
    Release,
    ReleaseStatement,
    check_request,
    decrypt_share,
    make_release,
    open_release,
    sign_attestation,
)
from sdquorum.errors import MalformedError, VerificationError
from sdquorum.keys import SoftwareWrappingKey
from sdquorum.sdfile import HEADER_CONTEXT_V2, SignedHeader

if TYPE_CHECKING:
    from conftest import NodeAttestation, Sealed, SealFactory

SESSION = "session-1"


@dataclass(frozen=True)
class Ctx:
    """One recovery request for slot 1 (alice) of ``sealed``, and the odd parts the cases swap in."""

    sealed: Sealed
    other: Sealed  # another 3-of-5 domain sealed to the same custodians
    node: NodeAttestation
    rogue_node: NodeAttestation  # a node attested under another root
    policy: CustodianPolicy
    exchange_key: nacl.public.PrivateKey
    statement: ExchangeStatement
    attestation: Attestation
    now: datetime

    @property
    def alice(self) -> SoftwareWrappingKey:
        return self.sealed.keys[0]

    @property
    def bob(self) -> SoftwareWrappingKey:
        return self.sealed.keys[1]

    def thumbprint(self, key: SoftwareWrappingKey) -> bytes:
        return pki.thumbprint_sha256(key.certificate_der())

    def attest(self, node: NodeAttestation | None = None, **changes: object) -> Attestation:
        return (node or self.node).sign(dataclasses.replace(self.statement, **changes))  # type: ignore[arg-type]  # field values vary by case


@pytest.fixture(scope="module")
def ctx(
    sealed: Sealed,
    make_sealed: SealFactory,
    node_attestation: NodeAttestation,
    custodian_policy: CustodianPolicy,
    foreign_node_attestation: NodeAttestation,
    now: datetime,
    t0: int,
) -> Ctx:
    exchange_key = nacl.public.PrivateKey.generate()
    statement = ExchangeStatement(
        session_id=SESSION,
        purpose="recovery",
        node_id="node-b",
        node_address="node-b.example:7443",
        domain_id=sealed.sd.header.domain_id,
        epoch=sealed.sd.header.epoch,
        sd_header_sha256=sealed.sd.signed_header.sha256,
        exchange_public_key=bytes(exchange_key.public_key),
        issued_at=t0,
        expires_at=t0 + 600,
        initiator="admin",
        reason="disaster recovery",
    )
    return Ctx(
        sealed=sealed,
        other=make_sealed(),
        node=node_attestation,
        rogue_node=foreign_node_attestation,
        policy=custodian_policy,
        exchange_key=exchange_key,
        statement=statement,
        attestation=node_attestation.sign(statement),
        now=now,
    )


# ------------------------------------------------------------------------------------------- check_request


@dataclass(frozen=True)
class Req:
    """The arguments of check_request."""

    attestation: Attestation
    signed_header: SignedHeader
    x: int
    my_thumbprint: bytes
    policy: CustodianPolicy
    now: datetime

    def check(self) -> CheckedRequest:
        return check_request(
            self.attestation, self.signed_header, self.x, self.my_thumbprint, self.policy, self.now
        )


def _base_request(c: Ctx) -> Req:
    return Req(c.attestation, c.sealed.sd.signed_header, 1, c.thumbprint(c.alice), c.policy, c.now)


def _forged_header(c: Ctx) -> SignedHeader:
    """The sealed header with created_by edited, re-signed by someone else's domain key (parses fine)."""
    key = Ed25519PrivateKey.generate()
    header = json.loads(c.sealed.sd.signed_header.header_bytes)
    header["created_by"] = "node-evil"
    header["signing_public_key"] = b64e(
        key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    data = canonical_json(header)
    return SignedHeader(data, key.sign(HEADER_CONTEXT_V2 + data))


def _forged_request(c: Ctx) -> Req:
    forged = _forged_header(c)
    pinned = dataclasses.replace(
        c.policy, pinned_signing_keys=frozenset({c.sealed.secrets.signing_public_key})
    )
    att = c.attest(sd_header_sha256=forged.sha256)
    return dataclasses.replace(_base_request(c), attestation=att, signed_header=forged, policy=pinned)


def _badly_signed(c: Ctx) -> Attestation:
    other_key = Ed25519PrivateKey.generate()
    data = c.statement.to_bytes()
    return Attestation(data, other_key.sign(ATTESTATION_CONTEXT + data), c.node.certificate_der)


@dataclass(frozen=True)
class RequestCase:
    name: str
    change: Callable[[Ctx, Req], Req]
    message: str


def _r(**changes: object) -> Callable[[Ctx, Req], Req]:
    return lambda c, r: dataclasses.replace(r, **changes)  # type: ignore[arg-type]  # field values vary by case


REQUEST_REFUSALS = [
    RequestCase(
        "attestation signed under another root",
        lambda c, r: dataclasses.replace(r, attestation=c.attest(c.rogue_node)),
        "not signed by the attestation root",
    ),
    RequestCase(
        "statement signed by a key other than the attested one",
        lambda c, r: dataclasses.replace(r, attestation=_badly_signed(c)),
        "attestation signature does not verify",
    ),
    RequestCase(
        "expired: now is the attestation's expires_at",
        lambda c, r: dataclasses.replace(r, now=c.now + timedelta(seconds=600)),
        "expired",
    ),
    RequestCase(
        "expired: now is past expires_at",
        lambda c, r: dataclasses.replace(r, now=c.now + timedelta(hours=1)),
        "expired",
    ),
    RequestCase(
        "attestation issued in the future",
        lambda c, r: dataclasses.replace(
            r,
            attestation=c.attest(
                issued_at=c.statement.issued_at + 3600, expires_at=c.statement.expires_at + 3600
            ),
        ),
        "issued in the future",
    ),
    RequestCase(
        "purpose is a drill, not a recovery",
        lambda c, r: dataclasses.replace(
            r, attestation=c.attest(purpose="drill", challenge=bytes(range(32)))
        ),
        "its attestation says 'drill'",
    ),
    RequestCase(
        "header hash mismatch: another SD file sent with the attestation",
        lambda c, r: dataclasses.replace(r, signed_header=c.other.sd.signed_header),
        "names a different SD file",
    ),
    RequestCase(
        "attestation names another epoch",
        lambda c, r: dataclasses.replace(r, attestation=c.attest(epoch=2)),
        "another domain or epoch",
    ),
    RequestCase(
        "attestation names another domain",
        lambda c, r: dataclasses.replace(r, attestation=c.attest(domain_id=c.other.secrets.domain_id)),
        "another domain or epoch",
    ),
    RequestCase(
        "slot not mine: alice's slot asked of bob",
        lambda c, r: dataclasses.replace(r, my_thumbprint=c.thumbprint(c.bob)),
        "slot 1 belongs to another custodian",
    ),
    RequestCase(
        "slot not mine: bob's slot asked of alice",
        _r(x=2),
        "slot 2 belongs to another custodian",
    ),
    RequestCase("slot that does not exist", _r(x=6), "no slot x=6"),
    RequestCase(
        "domain not allowed by the agent's policy",
        lambda c, r: dataclasses.replace(
            r, policy=dataclasses.replace(c.policy, allowed_domains=frozenset({c.other.secrets.domain_id}))
        ),
        "is not allowed by this agent's configuration",
    ),
    RequestCase(
        "pinned signing key mismatch",
        lambda c, r: dataclasses.replace(
            r,
            policy=dataclasses.replace(
                c.policy, pinned_signing_keys=frozenset({c.other.secrets.signing_public_key})
            ),
        ),
        "has not pinned",
    ),
    RequestCase(
        "header edited and re-signed by another domain key, agent pins the real one",
        lambda c, r: _forged_request(c),
        "has not pinned",
    ),
]


def test_check_request_accepts_the_honest_request(ctx: Ctx) -> None:
    checked = _base_request(ctx).check()
    assert checked.x == 1
    assert checked.header == ctx.sealed.sd.header
    assert checked.statement == ctx.statement
    assert checked.attestation_sha256 == ctx.attestation.sha256
    strict = dataclasses.replace(
        ctx.policy,
        allowed_domains=frozenset({ctx.sealed.secrets.domain_id}),
        pinned_signing_keys=frozenset({ctx.sealed.secrets.signing_public_key}),
    )
    one_second_left = ctx.now + timedelta(seconds=599)
    assert dataclasses.replace(_base_request(ctx), policy=strict, now=one_second_left).check().x == 1


@pytest.mark.parametrize("case", REQUEST_REFUSALS, ids=lambda c: c.name)
def test_check_request_refuses(ctx: Ctx, case: RequestCase) -> None:
    req = case.change(ctx, _base_request(ctx))
    with pytest.raises(VerificationError, match=case.message):
        req.check()


def test_forged_header_passes_without_a_pin(ctx: Ctx) -> None:
    # The premise of the pinned-key case: without a pin, a re-signed header is only a self-signed file.
    req = dataclasses.replace(_forged_request(ctx), policy=ctx.policy)
    assert req.check().header.created_by == "node-evil"


def test_decrypt_share_with_another_custodians_key_fails(ctx: Ctx) -> None:
    checked = _base_request(ctx).check()
    assert decrypt_share(checked, ctx.alice) == ctx.sealed.share(1)
    with pytest.raises(VerificationError, match="does not decrypt"):
        decrypt_share(checked, ctx.bob)


# ------------------------------------------------------------------------------------------- open_release


@dataclass(frozen=True)
class Opening:
    """The coordinator's side of open_release."""

    session_id: str
    expected_x: int
    attestation_sha256: bytes
    exchange_key: nacl.public.PrivateKey


def _opening(c: Ctx) -> Opening:
    return Opening(SESSION, 1, c.attestation.sha256, c.exchange_key)


def _open(c: Ctx, release: Release, o: Opening) -> shamir.Share:
    return open_release(
        release,
        session_id=o.session_id,
        header=c.sealed.sd.header,
        expected_x=o.expected_x,
        attestation_sha256=o.attestation_sha256,
        exchange_key=o.exchange_key,
    )


def _honest_release(c: Ctx, x: int = 1) -> Release:
    key = c.sealed.keys[x - 1]
    checked = dataclasses.replace(_base_request(c), x=x, my_thumbprint=c.thumbprint(key)).check()
    return make_release(checked, decrypt_share(checked, key), key)


def _release_with(c: Ctx, x: int = 1, **statement: object) -> Release:
    """An honest agent's release, made under an exchange statement with ``statement`` changed."""
    key = c.sealed.keys[x - 1]
    checked = CheckedRequest(
        dataclasses.replace(c.statement, **statement),  # type: ignore[arg-type]  # field values vary by case
        c.attestation.sha256,
        c.sealed.sd.header,
        x,
    )
    return make_release(checked, c.sealed.share(x), key)


def _forge(
    c: Ctx,
    signer: SoftwareWrappingKey,
    *,
    x: int = 1,
    share_of: int = 1,
    thumbprint_of: SoftwareWrappingKey | None = None,
    inner: dict[str, object] | None = None,
    attestation_sha256: bytes | None = None,
) -> Release:
    """A release built by hand: outer statement for slot ``x``, sealed share of ``share_of``, signed by ``signer``."""
    body: dict[str, object] = {
        "type": SHARE_TYPE,
        "session_id": SESSION,
        "domain_id": c.sealed.secrets.domain_id.hex(),
        "epoch": 1,
        "x": x,
        "share": b64e(c.sealed.share(share_of).to_bytes()),
        **(inner or {}),
    }
    sealed_share = nacl.public.SealedBox(c.exchange_key.public_key).encrypt(canonical_json(body))
    statement = ReleaseStatement(
        session_id=SESSION,
        domain_id=c.sealed.secrets.domain_id,
        epoch=1,
        x=x,
        thumbprint=c.thumbprint(thumbprint_of or c.sealed.keys[x - 1]),
        attestation_sha256=attestation_sha256 or c.attestation.sha256,
        sealed_share=bytes(sealed_share),
    )
    data = statement.to_bytes()
    return Release(data, signer.sign(data))


def _tampered_signature(c: Ctx) -> Release:
    r = _honest_release(c)
    return Release(r.statement_bytes, r.signature[:-1] + bytes([r.signature[-1] ^ 1]))


def _tampered_statement(c: Ctx) -> Release:
    r = _honest_release(c)
    other = _honest_release(c)  # same fields, another sealed box (fresh ephemeral key)
    data = dataclasses.replace(r.statement, sealed_share=other.statement.sealed_share).to_bytes()
    return Release(data, r.signature)


def _another_session(c: Ctx) -> Opening:
    key = nacl.public.PrivateKey.generate()
    att = c.attest(session_id="session-2", exchange_public_key=bytes(key.public_key))
    return Opening("session-2", 1, att.sha256, key)


@dataclass(frozen=True)
class ReleaseCase:
    name: str
    release: Callable[[Ctx], Release]
    opening: Callable[[Ctx], Opening]
    message: str


RELEASE_REFUSALS = [
    ReleaseCase(
        "release replayed into another session",
        _honest_release,
        _another_session,
        r"another session \(replay\)",
    ),
    ReleaseCase(
        "bob's own release (x=2) sent on alice's request",
        lambda c: _honest_release(c, 2),
        _opening,
        "not signed by slot 1.s wrapping key",
    ),
    ReleaseCase(
        "bob claims alice's slot: x=1, alice's thumbprint, signed by bob",
        lambda c: _forge(c, c.bob, x=1, share_of=2),
        _opening,
        "not signed by slot 1's wrapping key",
    ),
    ReleaseCase(
        "bob claims alice's slot with bob's own thumbprint",
        lambda c: _forge(c, c.bob, x=1, share_of=2, thumbprint_of=c.bob),
        _opening,
        "not signed by slot 1's wrapping key",
    ),
    ReleaseCase(
        "share sealed to a different exchange key",
        lambda c: _release_with(c, exchange_public_key=bytes(nacl.public.PrivateKey.generate().public_key)),
        _opening,
        "not sealed to this session's exchange key",
    ),
    ReleaseCase(
        "opened with another exchange key than the one sealed to",
        _honest_release,
        lambda c: dataclasses.replace(_opening(c), exchange_key=nacl.public.PrivateKey.generate()),
        "not sealed to this session's exchange key",
    ),
    ReleaseCase("tampered signature", _tampered_signature, _opening, "not signed by slot 1"),
    ReleaseCase("statement edited after signing", _tampered_statement, _opening, "not signed by slot 1"),
    ReleaseCase(
        "attestation hash mismatch",
        _honest_release,
        lambda c: dataclasses.replace(_opening(c), attestation_sha256=c.attest(reason="other").sha256),
        "answers another attestation",
    ),
    ReleaseCase(
        "release for another epoch, validly signed",
        lambda c: _release_with(c, epoch=2),
        _opening,
        "another domain or epoch",
    ),
    ReleaseCase(
        "release names bob's certificate, signed by alice",
        lambda c: _forge(c, c.alice, thumbprint_of=c.bob),
        _opening,
        "another wrapping certificate",
    ),
    ReleaseCase(
        "sealed share says x=2, signed release says x=1",
        lambda c: _forge(c, c.alice, inner={"x": 2}),
        _opening,
        "bindings differ",
    ),
    ReleaseCase(
        "sealed share names another session",
        lambda c: _forge(c, c.alice, inner={"session_id": "session-0"}),
        _opening,
        "bindings differ",
    ),
    ReleaseCase(
        "sealed share names another domain",
        lambda c: _forge(c, c.alice, inner={"domain_id": c.other.secrets.domain_id.hex()}),
        _opening,
        "bindings differ",
    ),
]


def test_open_release_returns_the_custodians_share(ctx: Ctx) -> None:
    release = Release.from_bytes(_honest_release(ctx).to_bytes())
    assert _open(ctx, release, _opening(ctx)) == ctx.sealed.share(1)


@pytest.mark.parametrize("case", RELEASE_REFUSALS, ids=lambda c: c.name)
def test_open_release_refuses(ctx: Ctx, case: ReleaseCase) -> None:
    release = Release.from_bytes(case.release(ctx).to_bytes())
    with pytest.raises(VerificationError, match=case.message):
        _open(ctx, release, case.opening(ctx))


def test_release_survives_the_wire_only_intact(ctx: Ctx) -> None:
    data = _honest_release(ctx).to_bytes()
    assert Release.from_bytes(data).statement.x == 1
    with pytest.raises(MalformedError, match="larger than"):
        Release.from_bytes(data + b" " * MAX_ENVELOPE_BYTES)
    with pytest.raises(MalformedError, match="larger than"):
        Attestation.from_bytes(ctx.attestation.to_bytes() + b" " * MAX_ENVELOPE_BYTES)
    assert Attestation.from_bytes(ctx.attestation.to_bytes()) == ctx.attestation


def test_attestation_binds_initiator_and_reason(ctx: Ctx) -> None:
    # What the custodian is shown before approving is inside the signed statement.
    data = ctx.attestation.statement_bytes.replace(b"disaster recovery", b"routine checkup!!")
    edited = Attestation(data, ctx.attestation.signature, ctx.attestation.certificate_der)
    assert edited.statement.reason == "routine checkup!!"
    req = dataclasses.replace(_base_request(ctx), attestation=edited)
    with pytest.raises(VerificationError, match="attestation signature does not verify"):
        req.check()
    assert sign_attestation(ctx.statement, ctx.node.key, ctx.node.certificate_der) == ctx.attestation
