"""Observability: JSON logs with session and request ids, Prometheus metrics over mTLS, gRPC health,
SIGTERM drain, and the agent's heartbeat."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import ssl
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from harness import NAMES, NodeProcess, certs_of, running_cluster, tls

from sdquorum.keys import SoftwareWrappingKey
from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2 as pb
from sdquorum_rpc.observability import JsonFormatter, NodeMetrics
from sdquorum_rpc.tls import channel_credentials

pytestmark = pytest.mark.asyncio


async def test_json_logs_carry_session_and_request_ids(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey], caplog: pytest.LogCaptureFixture
) -> None:
    async with running_cluster(pki_dir, tmp_path / "a") as a:
        sd = await a.download(certs_of(wrapping_keys[:5]), quorum=3)
    caplog.set_level(logging.INFO)
    async with running_cluster(pki_dir, tmp_path / "b", node_id="node-b") as b:
        for i in range(3):
            b.start_agent(NAMES[i], wrapping_keys[i], tmp_path)
        session_id = await b.start_recovery(sd)
        await b.wait_session()
    fmt = JsonFormatter()
    events = [json.loads(fmt.format(r)) for r in caplog.records if r.name.startswith("sdquorum.node")]
    accepted = [e for e in events if "accepted" in e["msg"] and "answered" in e["msg"]]
    assert len(accepted) == 3
    assert all(e["session_id"] == session_id and len(e["request_id"]) >= 8 for e in accepted)
    assert len({e["request_id"] for e in accepted}) == 3  # one id per call
    assert all(set(e) >= {"ts", "level", "logger", "msg"} for e in events)


async def test_metrics_count_ceremonies_and_rpcs_and_need_a_client_certificate(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    metrics = NodeMetrics()
    async with running_cluster(pki_dir, tmp_path / "a") as a:
        a.node.metrics = metrics
        sd = await a.download(certs_of(wrapping_keys[:5]), quorum=3)
        async with a.client("app") as c, c.errors():
            await c.keys.CreateKey(pb.CreateKeyRequest(name="k", type=pb.ED25519))
            for _ in range(3):
                await c.keys.Sign(pb.SignRequest(name="k", message=b"m"))
    async with running_cluster(pki_dir, tmp_path / "b", node_id="node-b") as b:
        b.node.metrics = metrics
        for i in range(3):
            b.start_agent(NAMES[i], wrapping_keys[i], tmp_path)
        await b.start_recovery(sd)
        await b.wait_session()
    port = metrics.serve("127.0.0.1:0", pki_dir / "node.pem", pki_dir / "node.key", pki_dir / "ca.pem")
    try:
        ctx = ssl.create_default_context(cafile=str(pki_dir / "ca.pem"))
        ctx.load_cert_chain(str(pki_dir / "admin.pem"), str(pki_dir / "admin.key"))
        text = await asyncio.to_thread(
            lambda: (
                urllib.request.urlopen(f"https://localhost:{port}/metrics", context=ctx, timeout=10)
                .read()
                .decode()
            )  # https to our own test server
        )
        assert 'sdquorum_ceremonies_total{kind="recovery",outcome="completed"} 1.0' in text
        assert 'sdquorum_rpc_total{code="OK",method="Sign"} 3.0' in text
        assert 'sdquorum_rpc_duration_seconds_count{method="Sign"} 3.0' in text
        assert "sdquorum_ceremony_duration_seconds_bucket" in text
        anonymous = ssl.create_default_context(cafile=str(pki_dir / "ca.pem"))
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            await asyncio.to_thread(
                lambda: urllib.request.urlopen(
                    f"https://localhost:{port}/metrics", context=anonymous, timeout=10
                ).read()
            )
    finally:
        metrics.close()


async def test_health_serves_then_sigterm_drains_cleanly(pki_dir: Path, tmp_path: Path) -> None:
    node = NodeProcess(pki_dir, tmp_path / "n" / "data", node_id="node-a")
    node.start()
    try:
        creds = channel_credentials(tls(pki_dir, "admin"))
        async with grpc.aio.secure_channel(node.target, creds) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert node.proc is not None
        node.proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(node.proc.wait, 30)
        assert code == 0
        log = node.log.read_text()
        assert "draining" in log and "stopped" in log and "Traceback" not in log
    finally:
        node.kill()


async def test_agent_heartbeat_reports_connected_and_disconnected(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    from custodian_agent.cli import main as agent_main

    async with running_cluster(pki_dir, tmp_path / "a") as a:
        agent = a.start_agent("alice", wrapping_keys[0], tmp_path)
        async with asyncio.timeout(10):
            while not agent.connected:
                await asyncio.sleep(0.05)
        state = tmp_path / "agent-alice"
        assert await asyncio.to_thread(agent_main, ["health", "--state-dir", str(state)]) == 0
        # The same agent's config file (every [agent] and [tls] setting 'run' reads) names the state dir.
        config = tmp_path / "agent.toml"
        config.write_text(
            f'[agent]\nnode = "{a.target}"\nstate_dir = "{state}"\napproval = "manual"\n'
            f'[tls]\ncert = "{pki_dir}/custodian-alice.pem"\n'
        )
        assert await asyncio.to_thread(agent_main, ["health", "--config", str(config)]) == 0
        assert await asyncio.to_thread(agent_main, ["pending", "--config", str(config)]) == 0
        wrong = ["health", "--config", str(config), "--state-dir", str(tmp_path / "nowhere")]
        assert await asyncio.to_thread(agent_main, wrong) == 3  # the flag wins over the file
        await a.stop_agents()
    assert await asyncio.to_thread(agent_main, ["health", "--state-dir", str(state)]) == 3
    assert await asyncio.to_thread(agent_main, ["health", "--state-dir", str(tmp_path / "nowhere")]) == 3


async def test_gauges_and_per_service_health_follow_the_node(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    """Node state, session state and connected agents per custodian are gauges; the data plane's
    health (sdquorum.v1.Keys) is SERVING only once the node is ACTIVATED."""
    from prometheus_client import generate_latest

    async def scrape() -> str:
        await asyncio.sleep(0.7)  # one ticker refresh (0.5 s)
        return generate_latest(metrics.registry).decode()

    async def health(service: str) -> int:
        async with grpc.aio.secure_channel(a.target, channel_credentials(tls(pki_dir, "admin"))) as ch:
            reply = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=5
            )
            return int(reply.status)

    metrics = NodeMetrics()
    async with running_cluster(pki_dir, tmp_path / "a") as a:
        metrics.observe(lambda: a.server.snapshot)
        text = await scrape()
        assert 'sdquorum_node_state{state="PROVISIONED"} 1.0' in text
        assert 'sdquorum_node_state{state="ACTIVATED"} 0.0' in text
        assert "sdquorum_node_compromised 0.0" in text
        assert "sdquorum_session_state{" not in text
        assert await health("sdquorum.v1.Keys") == health_pb2.HealthCheckResponse.NOT_SERVING
        assert await health("sdquorum.v1.NodeAdmin") == health_pb2.HealthCheckResponse.SERVING
        await a.download(certs_of(wrapping_keys[:3]), quorum=2)
        agent = a.start_agent("alice", wrapping_keys[0], tmp_path)
        async with asyncio.timeout(10):
            while not agent.connected:
                await asyncio.sleep(0.05)
        text = await scrape()
        assert 'sdquorum_node_state{state="ACTIVATED"} 1.0' in text
        assert 'sdquorum_agent_connected{custodian="alice"} 1.0' in text
        assert await health("sdquorum.v1.Keys") == health_pb2.HealthCheckResponse.SERVING
        async with a.client() as c, c.errors():
            await c.admin.StartDrill(pb.StartDrillRequest(reason="gauges", ttl_seconds=60))
        text = await scrape()
        assert 'sdquorum_session_state{kind="drill",state="collecting"} 1.0' in text
        assert 'sdquorum_agent_connected{custodian="bob"} 0.0' in text
        await a.stop_agents()
        text = await scrape()
        assert 'sdquorum_agent_connected{custodian="alice"} 0.0' in text
