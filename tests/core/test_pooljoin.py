"""Joining a pool without a custodian (sdquorum/pooljoin.py): the happy path and each refusal."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace
from datetime import datetime, timedelta

import nacl.public
import pytest

from sdquorum import pki
from sdquorum.encoding import canonical_json
from sdquorum.errors import MalformedError, VerificationError
from sdquorum.pooljoin import (
    GRANT_CONTEXT,
    REQUEST_CONTEXT,
    JoinGrant,
    JoinGrantStatement,
    JoinRequest,
    JoinRequestStatement,
    PoolHeader,
    check_join_request,
    make_join_grant,
    make_join_request,
    open_join_grant,
)
from sdquorum.sdfile import DomainSecrets, new_domain_secrets
from tests.conftest import NodeAttestation, load_node_attestation

SD_FILE = b"the pool's signed SD file, epoch 3"


@pytest.fixture(scope="module")
def domain() -> DomainSecrets:
    return new_domain_secrets(os.urandom, admins=["admin"])


@pytest.fixture(scope="module")
def pool(domain: DomainSecrets) -> PoolHeader:
    return PoolHeader.of(domain.domain_id, 3, SD_FILE)


@pytest.fixture(scope="module")
def member(attestation_root: pki.IssuedCert, now: datetime) -> NodeAttestation:
    return load_node_attestation(pki.issue_attestation_cert(attestation_root, "node-a", now))


def _request(
    joiner: NodeAttestation, pool: PoolHeader, now: datetime, node_id: str = "node-b", ttl: int = 300
):  # type: ignore[no-untyped-def]
    exchange = nacl.public.PrivateKey.generate()
    t = int(now.timestamp())
    req = make_join_request(
        node_id, pool, bytes(exchange.public_key), os.urandom(32), t, joiner.key, joiner.certificate_der, ttl
    )
    return JoinRequest.from_bytes(req.to_bytes()), exchange


def _check(req: JoinRequest, root: pki.IssuedCert, now: datetime, pool: PoolHeader, **kw: object) -> object:
    args: dict[str, object] = {
        "root_pem": root.cert_pem,
        "now": now,
        "allowed": {"node-b"},
        "pool": pool,
        "used": (),
    }
    args.update(kw)
    return check_join_request(req, **args)  # type: ignore[arg-type]


def test_a_joiner_gets_the_domain_secrets_from_a_member(
    node_attestation: NodeAttestation, member: NodeAttestation, attestation_root: pki.IssuedCert,
    now: datetime, pool: PoolHeader, domain: DomainSecrets,
) -> None:  # fmt: skip
    req, exchange = _request(node_attestation, pool, now)
    _check(req, attestation_root, now, pool)
    grant = make_join_grant(req, domain, "node-a", pool, member.key, member.certificate_der)
    grant = JoinGrant.from_bytes(grant.to_bytes())
    got = open_join_grant(
        grant, request=req, exchange_key=exchange, root_pem=attestation_root.cert_pem, now=now, pool=pool,
        members={"node-a"},
    )  # fmt: skip
    assert got == domain
    assert domain.data_encryption_key not in grant.to_bytes()  # sealed to the joiner's exchange key


def test_a_node_without_an_attestation_key_under_the_root_is_refused(
    foreign_node_attestation: NodeAttestation,
    attestation_root: pki.IssuedCert,
    now: datetime,
    pool: PoolHeader,
) -> None:
    req, _ = _request(foreign_node_attestation, pool, now)
    with pytest.raises(VerificationError, match="not signed by the attestation root"):
        _check(req, attestation_root, now, pool)


def test_a_node_not_allowed_is_refused(
    node_attestation: NodeAttestation, attestation_root: pki.IssuedCert, now: datetime, pool: PoolHeader
) -> None:
    req, _ = _request(node_attestation, pool, now)
    with pytest.raises(VerificationError, match=r"not allowed to join.*sdctl pool allow node-b"):
        _check(req, attestation_root, now, pool, allowed={"node-c"})


def test_a_node_claiming_another_nodes_id_is_refused(
    node_attestation: NodeAttestation, attestation_root: pki.IssuedCert, now: datetime, pool: PoolHeader
) -> None:
    req, _ = _request(node_attestation, pool, now, node_id="node-c")  # node-b's certificate
    with pytest.raises(VerificationError, match="claims node id 'node-c'"):
        _check(req, attestation_root, now, pool, allowed={"node-b", "node-c"})


def test_a_replayed_or_expired_join_is_refused(
    node_attestation: NodeAttestation, member: NodeAttestation, attestation_root: pki.IssuedCert,
    now: datetime, pool: PoolHeader, domain: DomainSecrets,
) -> None:  # fmt: skip
    req, _ = _request(node_attestation, pool, now, ttl=60)
    with pytest.raises(VerificationError, match="served already"):
        _check(req, attestation_root, now, pool, used=[os.urandom(32), req.sha256])
    with pytest.raises(VerificationError, match="expired"):
        _check(req, attestation_root, now + timedelta(seconds=61), pool)
    # an old grant (for an earlier request) replayed to a new join does not open it
    old_grant = make_join_grant(req, domain, "node-a", pool, member.key, member.certificate_der)
    new_req, new_exchange = _request(node_attestation, pool, now)
    with pytest.raises(VerificationError, match="another join request"):
        open_join_grant(
            old_grant, request=new_req, exchange_key=new_exchange, root_pem=attestation_root.cert_pem, now=now,
            pool=pool, members={"node-a"},
        )  # fmt: skip


def test_a_member_of_another_domain_is_refused_both_ways(
    node_attestation: NodeAttestation, member: NodeAttestation, attestation_root: pki.IssuedCert,
    now: datetime, pool: PoolHeader, domain: DomainSecrets,
) -> None:  # fmt: skip
    other = PoolHeader.of(os.urandom(16), 3, SD_FILE)
    req, _ = _request(node_attestation, other, now)
    with pytest.raises(VerificationError, match="not this pool's"):
        _check(req, attestation_root, now, pool)  # the joiner read another pool's header
    stale = PoolHeader(pool.domain_id, 2, hashlib.sha256(b"epoch 2").digest())
    req2, _ = _request(node_attestation, stale, now)
    with pytest.raises(VerificationError, match="not the pool's current ones"):
        _check(req2, attestation_root, now, pool)
    # the joiner refuses a grant of another domain than the header it reads in etcd
    req3, ex3 = _request(node_attestation, pool, now)
    grant = make_join_grant(req3, domain, "node-a", pool, member.key, member.certificate_der)
    with pytest.raises(VerificationError, match="not this pool's"):
        open_join_grant(
            grant, request=req3, exchange_key=ex3, root_pem=attestation_root.cert_pem, now=now, pool=other,
            members={"node-a"},
        )  # fmt: skip


def test_the_joiner_refuses_a_grant_from_a_non_member_or_a_forged_one(
    node_attestation: NodeAttestation, member: NodeAttestation, foreign_node_attestation: NodeAttestation,
    attestation_root: pki.IssuedCert, now: datetime, pool: PoolHeader, domain: DomainSecrets,
) -> None:  # fmt: skip
    req, exchange = _request(node_attestation, pool, now)
    kw = {
        "request": req,
        "exchange_key": exchange,
        "root_pem": attestation_root.cert_pem,
        "now": now,
        "pool": pool,
    }
    grant = make_join_grant(req, domain, "node-a", pool, member.key, member.certificate_der)
    with pytest.raises(VerificationError, match="not a member"):
        open_join_grant(grant, members={"node-c"}, **kw)  # type: ignore[arg-type]
    foreign = make_join_grant(
        req, domain, "node-b", pool, foreign_node_attestation.key, foreign_node_attestation.certificate_der
    )
    with pytest.raises(VerificationError, match="not signed by the attestation root"):
        open_join_grant(foreign, members={"node-b"}, **kw)  # type: ignore[arg-type]
    forged = replace(grant, signature=member.key.sign(GRANT_CONTEXT + b"other"))
    with pytest.raises(VerificationError, match="signature does not verify"):
        open_join_grant(forged, members={"node-a"}, **kw)  # type: ignore[arg-type]
    assert REQUEST_CONTEXT != GRANT_CONTEXT  # a request signature is never a grant's


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("domain_id", "00" * 8),  # a domain id is 16 bytes, as in the SD file and every answer
        ("domain_id", "ab" * 17),
        ("domain_id", "AB" * 16),  # lowercase hex: the one spelling .hex() writes
        ("node_id", ""),
        ("node_id", "n" * 129),
        ("epoch", -1),
        ("epoch", True),
        ("sd_file_sha256", "AAAA"),
    ],
)
def test_a_join_request_with_a_malformed_member_is_refused_when_parsed(
    node_attestation: NodeAttestation, now: datetime, pool: PoolHeader, name: str, value: object
) -> None:
    req, _ = _request(node_attestation, pool, now)
    obj = json.loads(req.statement_bytes)
    JoinRequestStatement.from_bytes(canonical_json(obj))  # the honest one parses
    obj[name] = value
    with pytest.raises(MalformedError, match=name):
        JoinRequestStatement.from_bytes(canonical_json(obj))


@pytest.mark.parametrize(("name", "value"), [("domain_id", "00" * 8), ("joiner", ""), ("sender", 7)])
def test_a_join_grant_with_a_malformed_member_is_refused_when_parsed(
    node_attestation: NodeAttestation, member: NodeAttestation, now: datetime, pool: PoolHeader,
    domain: DomainSecrets, name: str, value: object,
) -> None:  # fmt: skip
    req, _ = _request(node_attestation, pool, now)
    grant = make_join_grant(req, domain, "node-a", pool, member.key, member.certificate_der)
    obj = json.loads(grant.statement_bytes)
    JoinGrantStatement.from_bytes(canonical_json(obj))
    obj[name] = value
    with pytest.raises(MalformedError, match=name):
        JoinGrantStatement.from_bytes(canonical_json(obj))


def test_a_grant_carries_the_custody_head_the_member_verified_and_a_v1_grant_still_opens(
    node_attestation: NodeAttestation, member: NodeAttestation, attestation_root: pki.IssuedCert,
    now: datetime, pool: PoolHeader, domain: DomainSecrets,
) -> None:  # fmt: skip
    """The joiner learns, under the member's signature, the custody state it must never go below
    (hsm_node.pool.integrity); a grant of a member of the previous version (no head) still opens."""
    from sdquorum.pooljoin import CustodyHead, open_join_grant_with_head

    head = CustodyHead(7, hashlib.sha256(b"the custody rows").digest())
    kw = {"root_pem": attestation_root.cert_pem, "now": now, "pool": pool, "members": {"node-a"}}
    req, exchange = _request(node_attestation, pool, now)
    grant = make_join_grant(
        req, domain, "node-a", pool, member.key, member.certificate_der, custody_head=head
    )
    got = open_join_grant_with_head(
        JoinGrant.from_bytes(grant.to_bytes()), request=req, exchange_key=exchange, **kw
    )  # type: ignore[arg-type]
    assert got == (domain, head)
    req, exchange = _request(node_attestation, pool, now)
    old = make_join_grant(req, domain, "node-a", pool, member.key, member.certificate_der)
    assert open_join_grant_with_head(old, request=req, exchange_key=exchange, **kw) == (domain, None)  # type: ignore[arg-type]
