"""The recovery ceremony end to end over real mTLS gRPC (in-process node, agents and admin)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from harness import (
    NAMES,
    Cluster,
    Custodians,
    certs_of,
    checked_for,
    node_b_and_sd_file,
    running_cluster,
    tls,
)
from support import wait_for

from sdquorum import envelopes, pki, shamir
from sdquorum.envelopes import CustodianPolicy
from sdquorum.errors import StateError, UsageError, VerificationError
from sdquorum.keys import SoftwareWrappingKey
from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2 as pb

pytestmark = pytest.mark.asyncio


async def _backup(c: Cluster) -> bytes:
    async with c.client() as cl, cl.errors():
        return b"".join([ch.data async for ch in cl.admin.Backup(pb.BackupRequest())])


async def _restore(c: Cluster, data: bytes) -> int:
    async def chunks() -> AsyncIterator[pb.BackupChunk]:
        yield pb.BackupChunk(data=data)

    async with c.client() as cl, cl.errors():
        return int((await cl.admin.Restore(chunks())).keys_restored)


async def test_full_recovery_rebuilds_keys_on_a_new_node(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    async with running_cluster(pki_dir, tmp_path / "a") as a:
        sd = await a.download(certs_of(wrapping_keys[:5]), quorum=3)
        async with a.client("app") as c, c.errors():
            await c.keys.CreateKey(pb.CreateKeyRequest(name="pay", type=pb.AES256_GCM))
            await c.keys.CreateKey(pb.CreateKeyRequest(name="sig", type=pb.ED25519))
            ct = (
                await c.keys.Encrypt(pb.EncryptRequest(name="pay", plaintext=b"hello", aad=b"x"))
            ).ciphertext
            sig = (await c.keys.Sign(pb.SignRequest(name="sig", message=b"m"))).signature
        backup = await _backup(a)
        domain_a = a.node.domain_info
    async with running_cluster(pki_dir, tmp_path / "b", node_id="node-b") as b:
        for name, key in zip(NAMES[:5], wrapping_keys[:5], strict=True):
            b.start_agent(name, key, tmp_path)
        await b.start_recovery(sd, reason="datacentre A lost")
        last = await b.wait_session()
        assert last.state == pb.COMPLETED, last.message
        assert last.accepted == 3
        assert [c.status for c in last.custodians].count(pb.NOT_NEEDED) == 2
        assert b.node.state == "ACTIVATED"
        assert b.node.domain_info == domain_a
        assert await _restore(b, backup) == 2
        async with b.client("app") as c, c.errors():
            assert (
                await c.keys.Decrypt(pb.DecryptRequest(name="pay", ciphertext=ct, aad=b"x"))
            ).plaintext == b"hello"
            assert (await c.keys.Verify(pb.VerifyRequest(name="sig", message=b"m", signature=sig))).valid


async def test_client_without_certificate_is_refused(cluster: Cluster) -> None:
    creds = grpc.ssl_channel_credentials(root_certificates=(cluster.pki / "ca.pem").read_bytes())
    async with grpc.aio.secure_channel(cluster.target, creds) as ch:
        stub = pb_grpc().NodeStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.GetStatus(pb.GetStatusRequest(), timeout=5)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_client_certificate_from_another_ca_is_refused(cluster: Cluster, foreign_pki_dir: Path) -> None:
    from harness import UncheckedTlsFiles

    from sdquorum_rpc.client import NodeClient

    files = UncheckedTlsFiles(
        foreign_pki_dir / "admin.pem", foreign_pki_dir / "admin.key", cluster.pki / "ca.pem"
    )
    async with NodeClient(cluster.target, files) as c:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await c.node.GetStatus(pb.GetStatusRequest(), timeout=5)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize(
    ("stem", "call"),
    [
        ("custodian-alice", "admin"),
        ("app", "admin"),
        ("custodian-alice", "keys"),
        ("admin", "custodian"),
        ("app", "custodian"),
    ],
)
async def test_role_calling_another_roles_api_is_permission_denied(
    cluster: Cluster, stem: str, call: str
) -> None:
    async with cluster.client(stem) as c:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            if call == "admin":
                await c.admin.InitRecovery(pb.InitRecoveryRequest(reason="x", ttl_seconds=60))
            elif call == "keys":
                await c.keys.ListKeys(pb.ListKeysRequest())
            else:
                await c.custodian.Deny(pb.Denial(request_id="00" * 8, signed=b"{}"))
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert cluster.node.session is None


async def test_data_plane_before_activation_says_to_download(cluster: Cluster) -> None:
    async with cluster.client("app") as c:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await c.keys.CreateKey(pb.CreateKeyRequest(name="k", type=pb.AES256_GCM))
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "download the security domain" in (e.value.details() or "")


async def test_download_happens_once(cluster: Cluster, wrapping_keys: list[SoftwareWrappingKey]) -> None:
    await cluster.download(certs_of(wrapping_keys[:3]), quorum=2)
    with pytest.raises(UsageError, match="only once"):
        await cluster.download(certs_of(wrapping_keys[:3]), quorum=2)


async def test_agents_refuse_an_exchange_key_attested_under_another_root(
    pki_dir: Path, foreign_pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    async with running_cluster(pki_dir, tmp_path / "a") as a:
        sd = await a.download(certs_of(wrapping_keys[:5]), quorum=3)
    # A rogue node: valid transport certificate, but its attestation key chains to a foreign root.
    async with running_cluster(
        pki_dir, tmp_path / "r", node_id="rogue", attestation_pki=foreign_pki_dir
    ) as r:
        agents = [r.start_agent(n, k, tmp_path) for n, k in zip(NAMES[:5], wrapping_keys[:5], strict=True)]
        await r.start_recovery(sd)
        last = await r.wait_session()
        assert last.state == pb.FAILED
        assert {c.status for c in last.custodians} <= {pb.DENIED, pb.REQUESTED, pb.NOT_CONNECTED}
        assert all(
            c.detail == "" or "a check failed" in c.detail for c in last.custodians if c.status == pb.DENIED
        )
        assert all(not ag.released for ag in agents)
        assert r.node.state == "PROVISIONED"  # was RECOVERY_PENDING for ever (issue 14)


async def test_agent_refuses_an_expired_request(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    async with node_b_and_sd_file(pki_dir, tmp_path, wrapping_keys[:5]) as (b, sd):
        late = b.clock() + 3600  # the agent's clock says the attestation has expired
        agent = b.start_agent("alice", wrapping_keys[0], tmp_path, clock=lambda: late)
        await b.start_recovery(sd, ttl=60)
        await wait_for(
            lambda: (
                b.node.session is not None and b.node.session.status().custodians[0].status.name == "DENIED"
            )
        )
        assert agent.released == []


async def test_agent_refuses_a_domain_it_does_not_serve(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    async with node_b_and_sd_file(pki_dir, tmp_path, wrapping_keys[:5]) as (b, sd):
        policy = CustodianPolicy(
            (pki_dir / "attestation-root.pem").read_bytes(), allowed_domains=frozenset({b"\x01" * 16})
        )
        agent = b.start_agent("alice", wrapping_keys[0], tmp_path, policy=policy)
        await b.start_recovery(sd)
        await wait_for(
            lambda: (
                b.node.session is not None and b.node.session.status().custodians[0].status.name == "DENIED"
            )
        )
        assert agent.released == []


async def test_agent_refuses_a_slot_that_is_not_its_own(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    async with node_b_and_sd_file(pki_dir, tmp_path, wrapping_keys[:5]) as (b, sd):
        await b.start_recovery(sd)
        (bobs,) = b.node.agents.pending_requests(pki.thumbprint_sha256(wrapping_keys[1].certificate_der()))
        from custodian_agent.agent import Agent, AgentConfig

        alice = Agent(
            AgentConfig(
                node=b.target,
                tls=tls(pki_dir, "custodian-alice"),
                policy=CustodianPolicy((pki_dir / "attestation-root.pem").read_bytes()),
                state_dir=tmp_path / "alice",
            ),
            wrapping_keys[0],
        )
        req = pb.CustodianRequest(
            request_id=bobs.request_id,
            session_id=bobs.session_id,
            attestation=bobs.attestation,
            sd_header=bobs.header_bytes,
            sd_header_signature=bobs.header_signature,
            x=bobs.x,
        )
        with Custodians({"alice": tmp_path / "alice"}):  # she would approve: the check must refuse
            async with b.client("custodian-alice") as c:
                assert await alice.handle(c, req) == "refused"
        assert alice.released == []


async def test_request_streams_wake_when_requests_open_not_on_every_delivery_or_answer(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    async with node_b_and_sd_file(pki_dir, tmp_path, wrapping_keys[:5]) as (b, sd):
        before_upload = b.node.notices.request_token()
        await b.start_recovery(sd)
        assert before_upload.is_set()  # the five requests opened: every agent's stream wakes
        after_upload, any_change = b.node.notices.request_token(), b.node.notices.change_token()
        for name, key in zip(NAMES[:5], wrapping_keys[:5], strict=True):
            b.start_agent(name, key, tmp_path)
        last = await b.wait_session()
        assert last.state == pb.COMPLETED, last.message
        assert any_change.is_set()  # deliveries and answers did change the session
        assert not after_upload.is_set()  # but opened no request: no stream was woken for them


async def test_corrupted_share_is_named_and_the_honest_quorum_still_completes(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    async with node_b_and_sd_file(pki_dir, tmp_path, wrapping_keys[:5]) as (b, sd):
        await b.start_recovery(sd)
        # dave is dishonest: a correctly signed release whose sealed share is off by one.
        dave = wrapping_keys[3]
        rid, checked = checked_for(b, dave, pki_dir, now=pki_now())
        good = envelopes.decrypt_share(checked, dave)
        bad = shamir.Share(good.x, (good.y + 1) % shamir.L)
        release = envelopes.make_release(checked, bad, dave)
        async with b.client("custodian-dave") as c:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await c.custodian.SubmitRelease(pb.ShareRelease(request_id=rid, release=release.to_bytes()))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert e.value.details() == "a check failed"  # the peer learns nothing more
        for n, k in [(NAMES[i], wrapping_keys[i]) for i in (0, 1, 2)]:
            b.start_agent(n, k, tmp_path)
        last = await b.wait_session()
        assert last.state == pb.COMPLETED, last.message
        by_name = {c.name: c for c in last.custodians}
        assert by_name["dave"].status == pb.REJECTED
        assert "VSS" in by_name["dave"].detail or "commitments" in by_name["dave"].detail


async def test_fewer_than_quorum_fails_at_the_deadline_naming_the_missing(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    async with node_b_and_sd_file(pki_dir, tmp_path, wrapping_keys[:5]) as (b, sd):
        for n, k in [(NAMES[i], wrapping_keys[i]) for i in (0, 1)]:
            b.start_agent(n, k, tmp_path)
        await b.start_recovery(sd, ttl=60)
        await wait_for(lambda: b.node.session is not None and b.node.session.status().accepted == 2)
        b.clock.advance(61)
        last = await b.wait_session()
        assert last.state == pb.FAILED
        assert "missing custodians: carol, dave, erin" in last.message
        assert b.node.state == "PROVISIONED"  # was RECOVERY_PENDING for ever (issue 14)
        assert b.node.store.keys.count_keys() == 0
        async with b.client("app") as c:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await c.keys.ListKeys(pb.ListKeysRequest())
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_second_concurrent_ceremony_is_refused(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    async with node_b_and_sd_file(pki_dir, tmp_path, wrapping_keys[:5]) as (b, sd):
        await b.start_recovery(sd)
        with pytest.raises(StateError, match="still running"):
            await b.start_recovery(sd)


async def test_restarted_node_keeps_its_domain_and_keys(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    seal = b"\x07" * 32
    async with running_cluster(pki_dir, tmp_path / "a", sealing_key=seal) as a:
        await a.download(certs_of(wrapping_keys[:3]), quorum=2)
        async with a.client("app") as c, c.errors():
            await c.keys.CreateKey(pb.CreateKeyRequest(name="k", type=pb.RSA3072))
            sig = (await c.keys.Sign(pb.SignRequest(name="k", message=b"m"))).signature
    async with running_cluster(pki_dir, tmp_path / "a", sealing_key=seal) as again:
        assert again.node.state == "ACTIVATED"
        async with again.client("app") as c, c.errors():
            assert (await c.keys.Verify(pb.VerifyRequest(name="k", message=b"m", signature=sig))).valid


async def test_restore_refuses_another_domains_backup_and_an_altered_one(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    async with running_cluster(pki_dir, tmp_path / "a") as a:
        await a.download(certs_of(wrapping_keys[:3]), quorum=2)
        async with a.client("app") as c, c.errors():
            await c.keys.CreateKey(pb.CreateKeyRequest(name="k", type=pb.AES256_GCM))
        backup = await _backup(a)
        altered = bytearray(backup)
        altered[-10] ^= 0x01  # inside the ciphertext
        with pytest.raises(VerificationError, match="altered"):
            await _restore(a, bytes(altered))
        assert a.node.store.keys.count_keys() == 1
    async with running_cluster(pki_dir, tmp_path / "c") as other:
        await other.download(certs_of(wrapping_keys[:3]), quorum=2)
        with pytest.raises(VerificationError, match="belongs to domain"):
            await _restore(other, backup)
        assert other.node.store.keys.count_keys() == 0


def pb_grpc():  # type: ignore[no-untyped-def]
    from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2_grpc

    return sdquorum_pb2_grpc


def pki_now():  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime

    return datetime.now(UTC)
