"""Issue 13, classes 3 and 4: a key is its public key, and a wire identifier is its peer's.

Class 3: a key recorded lost came back in a rotation under a freshly self-signed certificate over
the same RSA key; approvers saw NEW KEY and the node accepted. Class 4: identifiers from the wire
not tied to the authenticated peer (a custodian's request stream, its answers).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from harness import Cluster, agent_config, certs_of, checked_for, running_cluster
from recertify import fresh_certificate, private_key_of
from support import wait_for

from custodian_agent.agent import Agent
from sdquorum import envelopes, pki
from sdquorum.envelopes import CustodianPolicy
from sdquorum.errors import UsageError
from sdquorum.keys import SoftwareWrappingKey
from sdquorum.pki import Role
from sdquorum.review import CustodyRecord
from sdquorum.sdfile import SecurityDomainFile, SignedHeader
from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2 as pb

pytestmark = pytest.mark.asyncio


def audit_entries(c: Cluster) -> list[dict[str, Any]]:
    return [json.loads(e) for e in c.node.store.records.audit_entries(c.node.audit_chain())]


async def approve_rotation(a: Cluster, keys: list[SoftwareWrappingKey], names: list[str]) -> None:
    """Each of ``keys`` (held by custodian ``names[i]``) approves the open rotation, as its agent would."""
    policy = CustodianPolicy((a.pki / "attestation-root.pem").read_bytes())
    for key, name in zip(keys, names, strict=True):
        thumb = pki.thumbprint_sha256(key.certificate_der())
        (req,) = a.node.agents.pending_requests(thumb)
        checked = envelopes.check_request(
            envelopes.Attestation.from_bytes(req.attestation),
            SignedHeader(req.header_bytes, req.header_signature),
            req.x,
            thumb,
            policy,
            datetime.fromtimestamp(a.clock(), tz=UTC),
            purpose="rotation",
            proposal=req.proposal,
        )
        proof = envelopes.make_proof(checked, envelopes.decrypt_share(checked, key), key, os.urandom)
        await a.node.answers.submit_answer(req.request_id, proof.to_bytes(), Role("custodian", name))


# ------------------------------------------------------------------------------------------- class 3


async def test_a_key_recorded_lost_is_refused_under_a_fresh_certificate(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey], now: datetime
) -> None:
    """The class-3 example: alice's key is recorded lost; the admin proposes a rotation whose roster
    holds alice's RSA key under a freshly self-signed certificate (CN=alice). Refused, naming alice;
    on the code before, the thumbprint differed and the rotation started."""
    async with running_cluster(pki_dir, tmp_path / "a") as a:
        await a.download(certs_of(wrapping_keys[:5]), quorum=3)
        a.node.custody.add_custody_record(CustodyRecord(0, "lost", "alice", note="token lost"), Role("admin"))
        again = fresh_certificate(wrapping_keys[0], "alice", now)
        assert pki.thumbprint_sha256(again) != pki.thumbprint_sha256(wrapping_keys[0].certificate_der())
        roster = [again, *certs_of(wrapping_keys[1:5])]
        with pytest.raises(UsageError, match="keeps alice's key, which is recorded lost, under CN=alice"):
            await a.node.rotation.propose_rotation(
                roster, 3, "alice has a new certificate", 60, Role("admin")
            )
        renamed = [fresh_certificate(wrapping_keys[0], "zoe", now), *certs_of(wrapping_keys[1:5])]
        with pytest.raises(UsageError, match="keeps alice's key, which is recorded lost, under CN=zoe"):
            await a.node.rotation.propose_rotation(renamed, 3, "zoe joins", 60, Role("admin"))
        assert a.node.session is None  # nothing started


async def test_a_lost_key_stays_lost_after_the_rotation_that_removed_it(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey], now: datetime
) -> None:
    """alice's key is recorded lost in epoch 1; a rotation to epoch 2 leaves her out. A later
    rotation bringing her key back under a new certificate and another name is still refused: the
    custody record names the key (SPKI SHA-256), not only the custodian. On the code before, the
    epoch-2 check looked only at losses since epoch 2 and only by thumbprint, and accepted it."""
    async with running_cluster(pki_dir, tmp_path / "a") as a:
        await a.download(certs_of(wrapping_keys[:5]), quorum=3)
        stamped = a.node.custody.add_custody_record(CustodyRecord(0, "lost", "alice"), Role("admin"))
        assert stamped.key_sha256 == pki.spki_sha256(wrapping_keys[0].certificate_der())
        a.clock.advance(10)
        await a.node.rotation.propose_rotation(
            certs_of(wrapping_keys[1:6]), 3, "alice leaves", 60, Role("admin")
        )
        await approve_rotation(a, wrapping_keys[1:4], ["bob", "carol", "dave"])
        assert SecurityDomainFile.from_bytes(a.node.custody.security_domain_file()).header.epoch == 2
        a.clock.advance(10)
        back = [fresh_certificate(wrapping_keys[0], "zoe", now), *certs_of(wrapping_keys[1:5])]
        with pytest.raises(UsageError, match="keeps alice's key, which is recorded lost, under CN=zoe"):
            await a.node.rotation.propose_rotation(back, 3, "zoe joins", 60, Role("admin"))
        review_header = SecurityDomainFile.from_bytes(a.node.custody.security_domain_file()).header
        assert all(s.name != "alice" for s in review_header.slots)


# ------------------------------------------------------------------------------------------- class 4


async def first_request(call: object, seconds: float) -> pb.CustodianRequest | None:
    """The first request a WatchRequests stream yields within ``seconds``, or None."""
    try:
        return await asyncio.wait_for(call.read(), seconds)  # type: ignore[attr-defined]
    except TimeoutError:
        return None


def custodian_status(a: Cluster, name: str) -> str:
    assert a.node.session is not None
    return next(p.status.name for p in a.node.session.status().custodians if p.name == name)


async def test_a_stream_announcing_another_custodians_key_receives_nothing(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    """The class-4 example: alice opened a request stream announcing bob's thumbprint (with or
    without bob's certificate) and received bob's request, while the operator saw bob as
    REQUESTED. Now her stream is served only keys named alice; bob's own stream still gets his."""
    bob_cert = wrapping_keys[1].certificate_der()
    bob_thumb = pki.thumbprint_sha256(bob_cert)
    async with running_cluster(pki_dir, tmp_path / "a") as a:
        await a.download(certs_of(wrapping_keys[:5]), quorum=3)
        await a.node.custody.start_drill("Q4 drill", 60, Role("admin"))
        for hello in (
            pb.AgentHello(wrapping_cert_sha256=bob_thumb),
            pb.AgentHello(wrapping_cert_sha256=bob_thumb, wrapping_certificate=bob_cert),
        ):
            async with a.client("custodian-alice") as c:
                call = c.custodian.WatchRequests(hello)
                await call.initial_metadata()
                assert await first_request(call, 1.5) is None
                assert custodian_status(a, "bob") == "NOT_CONNECTED"
                call.cancel()
        async with a.client("custodian-bob") as c:  # bob himself is served
            call = c.custodian.WatchRequests(
                pb.AgentHello(wrapping_cert_sha256=bob_thumb, wrapping_certificate=bob_cert)
            )
            req = await first_request(call, 10)
            assert req is not None and req.x == 2
            await wait_for(lambda: custodian_status(a, "bob") == "REQUESTED")
            call.cancel()


async def test_a_hello_whose_certificate_is_not_its_thumbprints_is_refused(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    async with running_cluster(pki_dir, tmp_path / "a") as a, a.client("custodian-alice") as c:
        hello = pb.AgentHello(
            wrapping_cert_sha256=pki.thumbprint_sha256(wrapping_keys[0].certificate_der()),
            wrapping_certificate=wrapping_keys[1].certificate_der(),
        )
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await c.custodian.WatchRequests(hello).read()
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_custodian_answers_only_requests_for_keys_named_for_it(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    """bob's valid proof, sent over alice's connection, is refused and audited; bob's slot stays
    open and bob's own connection then answers it (by SubmitProof: SubmitRelease takes only
    releases). On the code before, the request id alone decided, whoever sent it and how."""
    async with running_cluster(pki_dir, tmp_path / "a") as a:
        await a.download(certs_of(wrapping_keys[:5]), quorum=3)
        await a.node.custody.start_drill("Q4 drill", 60, Role("admin"))
        bob = wrapping_keys[1]
        rid, checked = checked_for(
            a, bob, pki_dir, purpose="drill", now=datetime.fromtimestamp(a.clock(), tz=UTC)
        )
        proof = envelopes.make_proof(
            checked, envelopes.decrypt_share(checked, bob), bob, os.urandom
        ).to_bytes()
        async with a.client("custodian-alice") as c:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await c.custodian.SubmitProof(pb.ProofSubmission(request_id=rid, proof=proof))
        assert e.value.details() == "a check failed"  # the peer learns only that
        assert custodian_status(a, "bob") != "ACCEPTED"
        refused = [x for x in audit_entries(a) if x["event"] == "drill-answer-refused"]
        assert (
            refused and "not addressed to a key named for custodian/alice" in refused[-1]["details"]["reason"]
        )
        async with a.client("custodian-bob") as c:  # the kind is the RPC's too: a proof is no release
            with pytest.raises(grpc.aio.AioRpcError) as wrong_kind:
                await c.custodian.SubmitRelease(pb.ShareRelease(request_id=rid, release=proof))
        assert wrong_kind.value.details() == "a check failed"
        assert custodian_status(a, "bob") != "ACCEPTED"
        async with a.client("custodian-bob") as c, c.errors():
            await c.custodian.SubmitProof(pb.ProofSubmission(request_id=rid, proof=proof))
        assert custodian_status(a, "bob") == "ACCEPTED"


async def test_an_agent_whose_wrapping_certificate_names_someone_else_says_so_at_start(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey], caplog: pytest.LogCaptureFixture
) -> None:
    """The node no longer serves erin's agent a key named frank: the agent tells its operator why."""
    with caplog.at_level(logging.WARNING, logger="sdquorum.agent"):
        Agent(agent_config(pki_dir, "127.0.0.1:1", "erin", tmp_path / "erin"), wrapping_keys[5])
    assert "named 'frank' but this agent is custodian/erin" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sdquorum.agent"):
        Agent(agent_config(pki_dir, "127.0.0.1:1", "frank", tmp_path / "frank"), wrapping_keys[5])
    assert "wrapping certificate" not in caplog.text


async def test_another_custodians_stream_does_not_keep_a_gone_custodian_shown_as_requested(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    """bob's agent is served and goes away while alice holds a stream announcing bob's thumbprint:
    the operator must see bob NOT_CONNECTED. On the code before, alice's stream counted as bob's
    agent and bob stayed REQUESTED."""
    bob_cert = wrapping_keys[1].certificate_der()
    bob_thumb = pki.thumbprint_sha256(bob_cert)
    async with running_cluster(pki_dir, tmp_path / "a") as a:
        await a.download(certs_of(wrapping_keys[:5]), quorum=3)
        await a.node.custody.start_drill("Q4 drill", 60, Role("admin"))
        async with a.client("custodian-alice") as mallory:
            squat = mallory.custodian.WatchRequests(pb.AgentHello(wrapping_cert_sha256=bob_thumb))
            await squat.initial_metadata()
            async with a.client("custodian-bob") as c:
                call = c.custodian.WatchRequests(
                    pb.AgentHello(wrapping_cert_sha256=bob_thumb, wrapping_certificate=bob_cert)
                )
                assert await first_request(call, 10) is not None
                await wait_for(lambda: custodian_status(a, "bob") == "REQUESTED")
                call.cancel()
            await wait_for(lambda: custodian_status(a, "bob") == "NOT_CONNECTED")
            squat.cancel()


async def test_a_drill_tells_a_new_certificate_over_the_slots_key_from_another_key(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey], now: datetime
) -> None:
    """erin's agent runs with a re-issued certificate over her own key: slots are addressed by
    certificate, so it cannot answer and the slot fails, but the reason says it is her key under
    another certificate (compared by SPKI), not another key; dave's agent, with frank's key, is
    told his key no longer matches."""
    erin = wrapping_keys[4]
    reissued = SoftwareWrappingKey(private_key_of(erin), fresh_certificate(erin, "erin", now))
    async with running_cluster(pki_dir, tmp_path / "a") as a:
        await a.download(certs_of(wrapping_keys[:5]), quorum=3)
        a.start_agent("erin", reissued, tmp_path)
        a.start_agent("dave", wrapping_keys[5], tmp_path)
        await wait_for(lambda: len(a.node.agents.connected_custodians()) == 2)
        s = await a.node.custody.start_drill("Q4 drill", 60, Role("admin"))
        detail = {p.name: (p.status.name, p.detail) for p in s.status().custodians}
        assert detail["erin"] == (
            "REJECTED",
            "erin's agent holds slot 5's key under another certificate: "
            "run it with the wrapping certificate the security domain was sealed to",
        )
        assert detail["dave"] == (
            "REJECTED",
            "dave's agent holds a wrapping key that no longer matches slot 4",
        )
        await a.stop_agents()
