"""Refused calls over real gRPC/mTLS: who is recorded, and how much one peer can make the node write.

Issue 13, class 10: a refused call was audited as "unknown peer"; every refusal now names the
caller's certificate subject and public-key SHA-256, also when the certificate holds no role.
Class 8: one certificate holder grew the audit log by one entry (about 0.5 KB) per refused call;
now a peer adds at most DETAILED + 1 entries per window, and the counts add up to the calls exactly.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from harness import Cluster, tls

from sdquorum import pki
from sdquorum.errors import StorageError
from sdquorum.pki._issue import leaf_builder
from sdquorum.refusals import DEFAULT_DETAILED_PER_WINDOW, DEFAULT_WINDOW_SECONDS, OVERFLOW, RefusalWindows
from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2 as pb
from sdquorum_rpc.client import NodeClient
from sdquorum_rpc.tls import TlsFiles

FLOOD = 3000  # refused calls from one client
ENTRIES_PER_PEER_WINDOW = DEFAULT_DETAILED_PER_WINDOW + 1
BYTES_PER_ENTRY = 2048  # an entry's stored JSON: reason <= 500 chars, subject <= 256, signature, hashes


def entries(c: Cluster) -> list[str]:
    return c.node.store.records.audit_entries(c.node.audit_chain())


def spki_hex(pem: Path) -> str:
    return pki.spki_sha256(pem.read_bytes()).hex()


async def flood(client: NodeClient, calls: int, batch: int = 200) -> int:
    """``calls`` InitRecovery calls (an admin method) with a custodian's certificate; all refused."""
    refused = 0

    async def one() -> None:
        nonlocal refused
        try:
            await client.admin.InitRecovery(pb.InitRecoveryRequest(reason="flood", ttl_seconds=60))
        except grpc.aio.AioRpcError as e:
            assert e.code() == grpc.StatusCode.PERMISSION_DENIED
            refused += 1

    for start in range(0, calls, batch):
        await asyncio.gather(*(one() for _ in range(min(batch, calls - start))))
    return refused


async def test_a_refusal_flood_from_one_peer_adds_a_bounded_number_of_entries_and_every_call_is_counted(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="sdquorum.rpc")
    before = len(entries(cluster))
    async with cluster.client("custodian-alice") as c:
        assert await flood(c, FLOOD) == FLOOD
        during = entries(cluster)[before:]
        # The window is open: only the first refusal is written, the rest are being counted.
        assert [json.loads(e)["event"] for e in during] == ["refused"]
        cluster.clock.advance(DEFAULT_WINDOW_SECONDS)
        await cluster.node.tick()  # what the server's ticker does every half second
        first_window = entries(cluster)[before:]
        assert len(first_window) <= ENTRIES_PER_PEER_WINDOW
        # A second window: the bound is per window, and the counting starts again.
        assert await flood(c, FLOOD) == FLOOD
    await cluster.server.stop(grace=0.1)  # shutdown closes the open window: its count is written
    added = [json.loads(e) for e in entries(cluster)[before:]]
    assert len(added) <= 2 * ENTRIES_PER_PEER_WINDOW
    size = sum(len(e) for e in entries(cluster)[before:])
    assert size <= 2 * ENTRIES_PER_PEER_WINDOW * BYTES_PER_ENTRY, size
    alice = spki_hex(cluster.pki / "custodian-alice.pem")
    refused = [e for e in added if e["event"] == "refused"]
    counted = [e for e in added if e["event"] == "refusals-counted"]
    assert len(refused) == 2 and len(counted) == 2
    assert len(refused) + sum(e["details"]["count"] for e in counted) == 2 * FLOOD  # exact
    for e in counted:
        assert e["actor"] == "custodian/alice" and e["details"]["peer"] == alice
        assert e["details"]["by_method"] == [
            {"method": "InitRecovery", "code": "PERMISSION_DENIED", "count": FLOOD - 1}
        ]
    # The node's log, too, says it once a window (the counted ones go to DEBUG).
    warnings = [r for r in caplog.records if r.name == "sdquorum.rpc" and "refused" in r.getMessage()]
    assert len(warnings) == 2 and "key " + alice[:16] in warnings[0].getMessage()
    print(f"\n{2 * FLOOD} refused calls: {len(added)} audit entries, {size} bytes")


async def test_a_refused_call_names_the_certificate_subject_and_key(cluster: Cluster) -> None:
    before = len(entries(cluster))
    async with cluster.client("custodian-alice") as c:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await c.admin.InitRecovery(pb.InitRecoveryRequest(reason="r", ttl_seconds=60))
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    (entry,) = [json.loads(x) for x in entries(cluster)[before:]]
    assert entry["event"] == "refused" and entry["actor"] == "custodian/alice"
    d = entry["details"]
    assert d["method"] == "InitRecovery" and d["code"] == "PERMISSION_DENIED"
    assert d["subject"] == "CN=custodian/alice"
    assert d["spki_sha256"] == spki_hex(cluster.pki / "custodian-alice.pem")


def no_role_certificate(pki_dir: Path, out: Path, common_name: str = "mallory") -> TlsFiles:
    """A client certificate from the deployment's CA without the sdquorum role URI SAN."""
    ca_cert = x509.load_pem_x509_certificate((pki_dir / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((pki_dir / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    builder = leaf_builder(ca_cert, key.public_key(), common_name, now, now, 30).add_extension(
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
    )
    cert = builder.sign(ca_key, hashes.SHA256())
    out.mkdir(parents=True, exist_ok=True)
    (out / "mallory.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (out / "mallory.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return TlsFiles(out / "mallory.pem", out / "mallory.key", pki_dir / "ca.pem")


async def test_a_call_from_a_certificate_without_a_role_names_its_subject_and_key(
    cluster: Cluster, tmp_path: Path
) -> None:
    files = no_role_certificate(cluster.pki, tmp_path / "mallory")
    before = len(entries(cluster))
    async with NodeClient(cluster.target, files) as c:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await c.node.GetStatus(pb.GetStatusRequest())
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    (entry,) = [json.loads(x) for x in entries(cluster)[before:]]
    assert entry["event"] == "refused"
    assert entry["actor"] == "no role (CN=mallory)"
    assert entry["details"]["subject"] == "CN=mallory"
    assert entry["details"]["spki_sha256"] == spki_hex(files.cert)
    assert "unknown peer" not in json.dumps(entry)


async def test_a_malformed_request_is_audited_with_its_sender(cluster: Cluster) -> None:
    """The request guard (bytes that are not the method's message) names the sender too."""
    from sdquorum_rpc.tls import channel_credentials

    before = len(entries(cluster))
    creds = tls(cluster.pki, "custodian-bob")
    async with grpc.aio.secure_channel(cluster.target, channel_credentials(creds)) as ch:
        raw = ch.unary_unary(
            "/sdquorum.v1.Custodian/Deny", request_serializer=None, response_deserializer=None
        )
        with pytest.raises(grpc.aio.AioRpcError):
            await raw(b"\xff\xff\xff\xff\x0f garbage", timeout=5)
    (entry,) = [json.loads(x) for x in entries(cluster)[before:]]
    assert entry["actor"] == "custodian/bob" and entry["details"]["code"] == "INVALID_ARGUMENT"
    assert entry["details"]["spki_sha256"] == spki_hex(creds.cert)


async def test_a_window_that_cannot_be_written_leaves_the_ticker_running_and_its_count_in_the_log(
    cluster: Cluster, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with cluster.client("custodian-carol") as c:
        assert await flood(c, 20, batch=20) == 20

    def broken(*args: object, **kwargs: object) -> None:
        raise StorageError("disk full")

    monkeypatch.setattr(cluster.node.store.records, "append_audit", broken)  # the disk refuses the entry
    cluster.clock.advance(DEFAULT_WINDOW_SECONDS)
    await cluster.node.tick()  # does not raise: the server's ticker also applies session deadlines
    (line,) = [r.getMessage() for r in caplog.records if "could not audit refusals-counted" in r.getMessage()]
    assert '"count": 19' in line and "custodian/carol" in line


async def test_beyond_the_tracked_peers_refusals_share_one_window_and_are_still_counted(
    cluster: Cluster,
) -> None:
    """max_peers bounds the node's memory; the peers beyond it share one overflow window."""
    cluster.node.audit_log.refusals = RefusalWindows(max_peers=2)
    before = len(entries(cluster))
    names = ["alice", "bob", "carol", "dave", "erin", "frank"]
    for name in names:
        async with cluster.client(f"custodian-{name}") as c:
            assert await flood(c, 100) == 100
    assert cluster.node.audit_log.refusals.tracked == 3  # alice, bob and the overflow window
    cluster.clock.advance(DEFAULT_WINDOW_SECONDS)
    await cluster.node.tick()
    added = [json.loads(e) for e in entries(cluster)[before:]]
    refused = [e["actor"] for e in added if e["event"] == "refused"]
    assert refused == [f"custodian/{n}" for n in names[: 2 + DEFAULT_DETAILED_PER_WINDOW]]
    counted = {e["details"]["peer"]: e["details"]["count"] for e in added if e["event"] == "refusals-counted"}
    assert counted == {
        spki_hex(cluster.pki / "custodian-alice.pem"): 99,
        spki_hex(cluster.pki / "custodian-bob.pem"): 99,
        OVERFLOW: 4 * 100 - 4,
    }
    assert len(refused) + sum(counted.values()) == 600


async def test_a_subject_with_a_line_break_is_recorded_on_one_line(
    cluster: Cluster, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    files = no_role_certificate(cluster.pki, tmp_path / "forger", common_name="x\nWARNING forged line")
    before = len(entries(cluster))
    async with NodeClient(cluster.target, files) as c:
        with pytest.raises(grpc.aio.AioRpcError):
            await c.node.GetStatus(pb.GetStatusRequest())
    (entry,) = [json.loads(x) for x in entries(cluster)[before:]]
    assert entry["details"]["subject"] == "CN=x\\x0aWARNING forged line"
    assert not any("\n" in r.getMessage() for r in caplog.records if r.name == "sdquorum.rpc")


async def test_one_custodian_sending_junk_answers_adds_a_bounded_number_of_entries(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[object]
) -> None:
    """Answers and denials that fail their checks inside an open session go through the same
    windows, kept by the custodian's role: 300 junk releases and 300 junk denials from one
    custodian added at most a window's entries for the answers, the denials and the calls (the
    previous code wrote one full entry each: 602 entries, 309 KB), and the session goes on."""
    from harness import certs_of, running_cluster

    async with running_cluster(pki_dir, tmp_path / "origin") as a:
        domain = await a.download(certs_of(wrapping_keys[:5]), quorum=3)  # type: ignore[arg-type]
    async with running_cluster(pki_dir, tmp_path / "b", node_id="node-b") as b:
        await b.start_recovery(domain, ttl=600)
        before = len(entries(b))
        async with b.client("custodian-dave") as cl:
            for i in range(300):
                for call in (
                    cl.custodian.SubmitRelease(pb.ShareRelease(request_id=f"{i:016x}" * 4, release=b"{}")),
                    cl.custodian.Deny(pb.Denial(request_id=f"{i:016x}", signed=b"{}")),
                ):
                    with pytest.raises(grpc.aio.AioRpcError):
                        await call
        new = [json.loads(e) for e in entries(b)[before:]]
        events = {e["event"] for e in new}
        assert {"recovery-answer-refused", "recovery-denial-refused", "refused"} <= events
        assert len(new) <= 4 * ENTRIES_PER_PEER_WINDOW, [e["event"] for e in new]
        assert b.node.session is not None and b.node.session.state.name == "COLLECTING"
