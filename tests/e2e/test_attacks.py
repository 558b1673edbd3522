"""The attack table (docs/SECURITY.md), one named test per attack, at the gRPC level.

Each test plays the attacker against a real node over mTLS and checks three things: the attack is
refused, the honest parties are not harmed (the slot stays open, the session goes on), and the
refusal is in the node's audit log.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID
from harness import (
    NAMES,
    Cluster,
    UncheckedTlsFiles,
    admin_cert_valid_between,
    certs_of,
    checked_for,
    running_cluster,
    tls,
)

from sdquorum import envelopes, pki, shamir
from sdquorum.envelopes import CustodianPolicy, Release, ReleaseStatement
from sdquorum.errors import SdquorumError
from sdquorum.keys import SoftwareWrappingKey
from sdquorum.sdfile import SignedHeader
from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2 as pb
from sdquorum_rpc.client import NodeClient


def audit_events(c: Cluster) -> list[dict[str, object]]:
    chain = c.node.audit_chain()
    return [json.loads(e) for e in c.node.store.records.audit_entries(chain)]


def signed_release(key: SoftwareWrappingKey, statement: ReleaseStatement) -> bytes:
    data = statement.to_bytes()
    return Release(data, key.sign(data)).to_bytes()


async def submit(c: Cluster, who: str, request_id: str, release: bytes) -> grpc.aio.AioRpcError | None:
    async with c.client(f"custodian-{who}") as cl:
        try:
            await cl.custodian.SubmitRelease(pb.ShareRelease(request_id=request_id, release=release))
        except grpc.aio.AioRpcError as e:
            return e
    return None


@pytest.fixture
async def domain(pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey]) -> bytes:
    async with running_cluster(pki_dir, tmp_path / "origin") as a:
        return await a.download(certs_of(wrapping_keys[:5]), quorum=3)


@pytest.fixture
async def recovering(pki_dir: Path, tmp_path: Path, domain: bytes) -> AsyncIterator[Cluster]:
    async with running_cluster(pki_dir, tmp_path / "b", node_id="node-b") as b:
        await b.start_recovery(domain, ttl=60)
        yield b


def refused_and_audited(b: Cluster, err: grpc.aio.AioRpcError | None, event: str, reason: str) -> None:
    assert err is not None and err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == "a check failed"  # the attacker learns nothing more
    assert any(e["event"] == event and reason in str(e["details"]) for e in audit_events(b)), audit_events(b)


async def test_attack_release_replayed_from_an_earlier_session(
    pki_dir: Path, tmp_path: Path, domain: bytes, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    dave = wrapping_keys[3]
    async with running_cluster(pki_dir, tmp_path / "b", node_id="node-b") as b:
        await b.start_recovery(domain, ttl=30)
        _, checked = checked_for(b, dave, pki_dir)
        old = envelopes.make_release(checked, envelopes.decrypt_share(checked, dave), dave).to_bytes()
        b.clock.advance(31)  # session 1 ends at its deadline; an eavesdropper kept dave's release
        await b.node.tick()
        await b.start_recovery(domain, ttl=60)
        rid2, _ = checked_for(b, dave, pki_dir)
        err = await submit(b, "dave", rid2, old)
        refused_and_audited(b, err, "recovery-answer-refused", "another session")
        # The replay is not dave's doing: his slot stays open for his real answer.
        assert {c.name: c.status.name for c in b.node.session.status().custodians}["dave"] != "REJECTED"
        assert b.node.session is not None and b.node.session.state.name == "COLLECTING"


async def test_attack_release_for_another_domain_or_epoch(
    recovering: Cluster, pki_dir: Path, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    # Each forgery comes from another custodian: a signed, rejected answer settles its signer's slot.
    variants = [("dave", 3, {"epoch": 2}), ("erin", 4, {"domain_id": bytes(16)})]
    for name, i, change in variants:
        key = wrapping_keys[i]
        rid, checked = checked_for(recovering, key, pki_dir)
        honest = envelopes.make_release(checked, envelopes.decrypt_share(checked, key), key).statement
        err = await submit(recovering, name, rid, signed_release(key, dataclasses.replace(honest, **change)))
        refused_and_audited(recovering, err, "recovery-answer-rejected", "another domain or epoch")
    rejected = [e for e in audit_events(recovering) if e["event"] == "recovery-answer-rejected"]
    assert {e["details"]["custodian"] for e in rejected} == {"dave", "erin"}


async def test_attack_release_sealed_to_the_wrong_exchange_key(
    recovering: Cluster, pki_dir: Path, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    dave = wrapping_keys[3]
    rid, checked = checked_for(recovering, dave, pki_dir)
    mitm = dataclasses.replace(checked.statement, exchange_public_key=bytes(range(32)))
    misdirected = dataclasses.replace(checked, statement=mitm)
    release = envelopes.make_release(misdirected, envelopes.decrypt_share(checked, dave), dave)
    err = await submit(recovering, "dave", rid, release.to_bytes())
    refused_and_audited(
        recovering, err, "recovery-answer-rejected", "not sealed to this session's exchange key"
    )


async def test_attack_custodian_b_claims_custodian_a_slot(
    recovering: Cluster, pki_dir: Path, wrapping_keys: list[SoftwareWrappingKey], tmp_path: Path
) -> None:
    alice, bob = wrapping_keys[0], wrapping_keys[1]
    alice_rid, _ = checked_for(recovering, alice, pki_dir)
    _, bobs = checked_for(recovering, bob, pki_dir)
    bob_release = envelopes.make_release(bobs, envelopes.decrypt_share(bobs, bob), bob).to_bytes()
    err = await submit(recovering, "bob", alice_rid, bob_release)
    # Issue 13, class 4: bob's connection may answer only requests for keys named bob, so this is
    # refused before its signature is even looked at (it used to be refused as "not signed by slot 1").
    refused_and_audited(
        recovering, err, "recovery-answer-refused", "not addressed to a key named for custodian/bob"
    )
    # Relayed by the admin (offline answers), only the signature ties an answer to its slot: still refused.
    async with recovering.client() as cl:
        with pytest.raises(grpc.aio.AioRpcError) as relayed:
            await cl.admin.SubmitOfflineResponse(pb.OfflineResponse(request_id=alice_rid, answer=bob_release))
    assert relayed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert any(
        e["event"] == "recovery-answer-refused" and "not signed by slot 1" in str(e["details"])
        for e in audit_events(recovering)
    )
    # alice's slot is still open: she answers, and the ceremony goes on.
    for i in (0, 1, 2):
        recovering.start_agent(NAMES[i], wrapping_keys[i], tmp_path)
    last = await recovering.wait_session()
    assert last.state == pb.COMPLETED
    assert {c.name: c.status for c in last.custodians}["alice"] == pb.ACCEPTED


async def test_attack_the_same_custodian_twice(
    recovering: Cluster, pki_dir: Path, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    dave = wrapping_keys[3]
    rid, checked = checked_for(recovering, dave, pki_dir)
    release = envelopes.make_release(checked, envelopes.decrypt_share(checked, dave), dave).to_bytes()
    assert await submit(recovering, "dave", rid, release) is None
    again = await submit(recovering, "dave", rid, release)
    refused_and_audited(recovering, again, "recovery-answer-refused", "already answered")
    assert recovering.node.session is not None and recovering.node.session.status().accepted == 1


@pytest.mark.parametrize("x", [0, 6], ids=["x = 0", "x > n"])
async def test_attack_crafted_share_with_x_out_of_range(
    recovering: Cluster, pki_dir: Path, wrapping_keys: list[SoftwareWrappingKey], x: int
) -> None:
    dave = wrapping_keys[3]
    rid, checked = checked_for(recovering, dave, pki_dir)
    share = envelopes.decrypt_share(checked, dave)
    forged = envelopes.make_release(checked, share, dave).statement
    err = await submit(recovering, "dave", rid, signed_release(dave, dataclasses.replace(forged, x=x)))
    refused_and_audited(recovering, err, "recovery-answer-rejected", f"claims slot {x}")


def self_signed_attestation(tmp: Path, node_id: str) -> Path:
    """A 'rogue' PKI directory whose node attestation certificate signs itself."""
    key = ed25519.Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.ExtendedKeyUsage([pki.ATTESTATION_EKU]), critical=False)
        .sign(key, None)
    )
    d = tmp / "selfsigned"
    d.mkdir()
    (d / f"attestation-{node_id}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / f"attestation-{node_id}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return d


async def test_attack_rogue_node_with_a_self_signed_exchange_key(
    pki_dir: Path, tmp_path: Path, domain: bytes, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    rogue_pki = self_signed_attestation(tmp_path, "rogue")
    async with running_cluster(pki_dir, tmp_path / "r", node_id="rogue", attestation_pki=rogue_pki) as r:
        agents = [r.start_agent(n, k, tmp_path) for n, k in zip(NAMES[:5], wrapping_keys[:5], strict=True)]
        await r.start_recovery(domain)
        last = await r.wait_session()
        assert last.state == pb.FAILED
        statuses = [c.status for c in last.custodians]
        assert statuses.count(pb.DENIED) >= 3 and pb.ACCEPTED not in statuses  # 3 refusals end it
        assert all(not a.released for a in agents)
        assert sum(1 for e in audit_events(r) if e["event"] == "recovery-denied") >= 3


@pytest.mark.parametrize(
    ("when", "start", "end"),
    [("expired", -10, -9), ("not yet valid", 9, 10), ("valid (control)", -1, 1)],
)
async def test_attack_client_certificate_outside_its_validity(
    cluster: Cluster, pki_dir: Path, tmp_path: Path, now: datetime, when: str, start: int, end: int
) -> None:
    cert, key = admin_cert_valid_between(pki_dir, now + timedelta(days=start), now + timedelta(days=end))
    (tmp_path / "c.pem").write_bytes(cert)
    (tmp_path / "c.key").write_bytes(key)
    async with NodeClient(
        cluster.target, UncheckedTlsFiles(tmp_path / "c.pem", tmp_path / "c.key", pki_dir / "ca.pem")
    ) as c:
        if when.startswith("valid"):
            assert (await c.node.GetStatus(pb.GetStatusRequest(), timeout=5)).node_id == "node-a"
            return
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await c.node.GetStatus(pb.GetStatusRequest(), timeout=5)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE  # the TLS handshake itself fails


async def test_attack_messages_over_the_size_limit(
    cluster: Cluster, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    await cluster.download(certs_of(wrapping_keys[:3]), quorum=2)
    async with cluster.client("app") as c, c.errors():
        await c.keys.CreateKey(pb.CreateKeyRequest(name="k", type=pb.AES256_GCM))
    async with cluster.client("app") as c:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await c.keys.Encrypt(pb.EncryptRequest(name="k", plaintext=bytes(5 * 1024 * 1024)))
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_attack_malformed_protobuf_fields(
    cluster: Cluster, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    # Bytes that are not a protobuf at all, on the custodian API.
    creds = tls(cluster.pki, "custodian-alice")
    from sdquorum_rpc.tls import channel_credentials

    async with grpc.aio.secure_channel(cluster.target, channel_credentials(creds)) as ch:
        raw = ch.unary_unary(
            "/sdquorum.v1.Custodian/Deny", request_serializer=None, response_deserializer=None
        )
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await raw(b"\xff\xff\xff\xff\x0f garbage", timeout=5)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details() == "malformed request"  # nothing about our parser reaches the peer
    # Well-formed protobuf, meaningless values.
    async with cluster.client("custodian-alice") as c:
        with pytest.raises(grpc.aio.AioRpcError) as e2:
            call = c.custodian.WatchRequests(pb.AgentHello(wrapping_cert_sha256=b"short"))
            await call.read()
    assert e2.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    await cluster.download(certs_of(wrapping_keys[:3]), quorum=2)
    async with cluster.client("app") as c:
        with pytest.raises(grpc.aio.AioRpcError) as e3:
            await c.keys.CreateKey(pb.CreateKeyRequest(name="k", type=99))  # type: ignore[arg-type]
    assert e3.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert any(e["event"] == "refused" for e in audit_events(cluster))


async def test_attack_approval_after_the_deadline(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    async with running_cluster(pki_dir, tmp_path / "a") as a:
        sd = await a.download(certs_of(wrapping_keys[:5]), quorum=3)
        async with a.client() as c, c.errors():
            await c.admin.ProposeRotation(
                pb.RotationRequest(
                    custodian_certificates=certs_of(wrapping_keys[:3]), quorum=2, reason="r", ttl_seconds=30
                )
            )
        thumb = pki.thumbprint_sha256(wrapping_keys[0].certificate_der())
        (req,) = a.node.agents.pending_requests(thumb)
        checked = envelopes.check_request(
            envelopes.Attestation.from_bytes(req.attestation),
            SignedHeader(req.header_bytes, req.header_signature),
            req.x,
            thumb,
            CustodianPolicy((pki_dir / "attestation-root.pem").read_bytes()),
            datetime.now(UTC),
            purpose="rotation",
            proposal=req.proposal,
        )
        proof = envelopes.make_proof(
            checked, envelopes.decrypt_share(checked, wrapping_keys[0]), wrapping_keys[0], os.urandom
        )
        a.clock.advance(31)
        async with a.client("custodian-alice") as c:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await c.custodian.SubmitProof(
                    pb.ProofSubmission(request_id=req.request_id, proof=proof.to_bytes())
                )
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert a.node.custody.security_domain_file() == sd  # nothing changed
        assert (await a.node_status()).epoch == 1
        assert any(e["event"] == "refused" and "SubmitProof" in str(e["details"]) for e in audit_events(a))


async def test_attack_sd_file_with_a_flipped_byte_is_refused_before_any_custodian_is_asked(
    pki_dir: Path, tmp_path: Path, domain: bytes, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    flipped = bytearray(domain)
    flipped[len(flipped) // 3] ^= 0x04
    async with running_cluster(pki_dir, tmp_path / "b", node_id="node-b") as b:
        agents = [b.start_agent(n, k, tmp_path) for n, k in zip(NAMES[:5], wrapping_keys[:5], strict=True)]
        with pytest.raises(SdquorumError, match=r"SD|base64|JSON|altered|signature") as e:
            await b.start_recovery(bytes(flipped))
        assert "\n" not in str(e.value)
        await asyncio.sleep(0.3)
        assert all(not a.released for a in agents)
        assert all(
            b.node.agents.pending_requests(pki.thumbprint_sha256(k.certificate_der())) == []
            for k in wrapping_keys[:5]
        )
        assert any(e["event"] == "sd-file-refused" for e in audit_events(b))


def test_attack_table_is_documented() -> None:
    """docs/SECURITY.md names every test of this file."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "SECURITY.md").read_text()
    import ast

    tree = ast.parse(Path(__file__).read_text())
    names = [
        n.name for n in tree.body if isinstance(n, ast.AsyncFunctionDef) and n.name.startswith("test_attack_")
    ]
    missing = [n for n in names if n not in text]
    assert missing == []


async def test_attack_denial_in_another_custodians_name(
    recovering: Cluster, pki_dir: Path, wrapping_keys: list[SoftwareWrappingKey], tmp_path: Path
) -> None:
    """Bob learns alice's request id (requests carry nothing secret) and denies in her name; or a
    denial alice really signed, for another session or for another node's attestation (a node that
    got her to refuse its own request with the same session and request ids), is replayed here."""
    alice, bob = wrapping_keys[0], wrapping_keys[1]
    alice_rid, checked = checked_for(recovering, alice, pki_dir)
    x = checked.x
    session = recovering.node.session
    assert session is not None and session.attestation is not None
    here = session.attestation.to_bytes()
    other_node = b"the attestation another node sent alice's agent"  # what her denial was bound to
    for forged in (
        envelopes.make_denial(
            bob, session_id=session.session_id, request_id=alice_rid, x=x, reason="no", attestation=here
        ),
        envelopes.make_denial(
            alice, session_id="an-earlier-session", request_id=alice_rid, x=x, reason="no", attestation=here
        ),
        envelopes.make_denial(
            alice,
            session_id=session.session_id,
            request_id=alice_rid,
            x=x,
            reason="no",
            attestation=other_node,
        ),
    ):
        async with recovering.client("custodian-bob") as c:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await c.custodian.Deny(pb.Denial(request_id=alice_rid, signed=forged.to_bytes()))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and e.value.details() == "a check failed"
    assert any(ev["event"] == "recovery-denial-refused" for ev in audit_events(recovering))
    for i in (0, 1, 2):
        recovering.start_agent(NAMES[i], wrapping_keys[i], tmp_path)
    last = await recovering.wait_session()
    assert last.state == pb.COMPLETED
    assert {c.name: c.status for c in last.custodians}["alice"] == pb.ACCEPTED


async def test_a_custodian_learns_nothing_of_the_others_from_a_closed_session(
    recovering: Cluster, pki_dir: Path, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    """Once bad shares have ended a session, a custodian's late call is told only that its request
    is not open: not the session's message, which names the others and why they failed."""
    b = recovering
    for who, key in zip(["bob", "carol", "dave"], wrapping_keys[1:4], strict=True):
        rid, checked = checked_for(b, key, pki_dir)
        good = envelopes.decrypt_share(checked, key)
        bad = envelopes.make_release(checked, shamir.Share(good.x, (good.y + 1) % shamir.L), key)
        err = await submit(b, who, rid, bad.to_bytes())
        assert err is not None and err.details() == "a check failed"
    for who in ("alice", "frank"):  # alice holds an open slot; frank holds none
        err = await submit(b, who, "00" * 8, b"{}")
        assert err is not None and err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert err.details() == "the request is not open", err.details()
    last = await b.wait_session(timeout=10)  # the operator still gets the whole story
    assert "VSS" in last.message and "bob" in last.message, last.message


async def test_attack_a_signed_release_that_seals_no_share(
    recovering: Cluster, pki_dir: Path, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    """Alice signs a release whose sealed content is no share: she vouched for it, so her slot is
    rejected and named (not merely refused and left open), and the others still complete."""
    b = recovering
    rid, checked = checked_for(b, wrapping_keys[0], pki_dir)
    junk = envelopes.seal_release(
        checked.statement, checked.attestation_sha256, checked.x, b"\x01\x02", wrapping_keys[0]
    )
    err = await submit(b, "alice", rid, junk.to_bytes())
    assert (
        err is not None
        and err.code() == grpc.StatusCode.INVALID_ARGUMENT
        and err.details() == "a check failed"
    )
    session = b.node.session
    assert session is not None
    alice = next(p for p in session.status().custodians if p.name == "alice")
    assert alice.status.name == "REJECTED" and "seals no valid share" in alice.detail


async def test_attack_a_huge_key_name_does_not_grow_the_audit_log(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    """An app calls Decrypt with a 3 MiB key name, again and again: each refusal is audited, in a
    bounded entry (the name is refused before any lookup, and no message is stored whole)."""
    async with running_cluster(pki_dir, tmp_path / "a") as a:
        await a.download(certs_of(wrapping_keys[:3]), quorum=2)
        before = len("".join(a.node.store.records.audit_entries("domain")))
        async with a.client("app") as c:
            for _ in range(5):
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await c.keys.Decrypt(
                        pb.DecryptRequest(name="x" * (3 * 1024 * 1024), ciphertext=b"\0" * 40)
                    )
                assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "key names are 1..128 printable characters" in (e.value.details() or "")
        grown = len("".join(a.node.store.records.audit_entries("domain"))) - before
    assert grown < 5 * 2000, grown  # five refusals, each a few hundred bytes
