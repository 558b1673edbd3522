"""The transport stays up and fails loudly (issue 14, part 1).

Keepalive: an idle request stream (what every agent holds open between ceremonies) must survive
many client ping periods. The intervals are shortened here (the same :class:`Keepalive` both ends
use in production, scaled down); with the server's gRPC defaults, a client pinging every
``time_ms`` is cut off with GOAWAY "too_many_pings" after two strikes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from harness import Cluster, admin_cert_valid_between, agent_config, tls

from custodian_agent.agent import Agent
from sdquorum.keys import SoftwareWrappingKey
from sdquorum_rpc.tls import (
    Keepalive,
    TlsFiles,
    channel_credentials,
    channel_options,
    server_credentials,
    server_options,
)

FAST = Keepalive(time_ms=100, timeout_ms=2_000)
IDLE_SECONDS = 3.0  # 30 client ping periods


async def _idle_stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
    await asyncio.sleep(3600)  # never answers: the stream stays idle, as an agent's between ceremonies
    yield b""


async def _serve(pki: Path, options: list[tuple[str, int]]) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(options=options)
    handler = grpc.method_handlers_generic_handler(
        "test.Idle", {"Watch": grpc.unary_stream_rpc_method_handler(_idle_stream)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_secure_port("127.0.0.1:0", server_credentials(tls(pki, "node")))
    await server.start()
    return server, port


async def _drops_while_idle(
    pki: Path, server_opts: list[tuple[str, int]], client_opts: list[tuple[str, int]] | None = None
) -> list[str]:
    """Hold one idle stream open for IDLE_SECONDS; the errors that ended it (none if it stayed up)."""
    server, port = await _serve(pki, server_opts)
    try:
        async with grpc.aio.secure_channel(
            f"localhost:{port}",
            channel_credentials(tls(pki, "custodian-alice")),
            options=client_opts if client_opts is not None else channel_options(keepalive=FAST),
        ) as channel:
            call = channel.unary_stream("/test.Idle/Watch")(b"")

            async def read() -> None:
                async for _ in call:
                    pass

            reader = asyncio.create_task(read())
            done, _ = await asyncio.wait({reader}, timeout=IDLE_SECONDS)
            if reader in done:
                e = reader.exception()
                return [f"{type(e).__name__}: {e}" if e else "the stream ended"]
            call.cancel()
            reader.cancel()
            return []
    finally:
        await server.stop(0)


async def test_an_idle_stream_survives_many_keepalive_pings(pki_dir: Path) -> None:
    assert await _drops_while_idle(pki_dir, server_options(keepalive=FAST)) == []


def test_server_and_client_keepalive_agree() -> None:
    """gRPC's server default minimum ping interval is 5 minutes: a server that does not set it cuts
    off a client pinging every 20 s after two strikes (observed: every agent dropped 160-200 s after
    connecting). The node's server options must permit the interval its clients use."""
    pairs = [(dict(channel_options()), dict(server_options()))]
    for ka in (FAST, Keepalive(time_ms=60_000, timeout_ms=20_000)):
        pairs.append((dict(ka.client_options()), dict(ka.server_options())))
    for client, server in pairs:
        assert server["grpc.http2.min_recv_ping_interval_without_data_ms"] <= client["grpc.keepalive_time_ms"]
        assert (
            server["grpc.keepalive_permit_without_calls"]
            == 1
            == client["grpc.keepalive_permit_without_calls"]
        )


def test_keepalive_refuses_nonsense() -> None:
    from sdquorum.errors import UsageError

    with pytest.raises(UsageError):
        Keepalive(time_ms=0)


@pytest.mark.parametrize(("start", "end", "said"), [(-30, -1, "expired on"), (1, 30, "not valid yet")])
def test_sdctl_names_a_client_certificate_outside_its_validity(
    pki_dir: Path,
    tmp_path: Path,
    now: datetime,
    start: int,
    end: int,
    said: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Before: the node closed the connection and sdctl said "... or it refused your client
    certificate". Now the certificate is named before anything is dialled (nothing listens here)."""
    from sdctl.cli import main

    cert, key = admin_cert_valid_between(pki_dir, now + timedelta(days=start), now + timedelta(days=end))
    (tmp_path / "a.pem").write_bytes(cert)
    (tmp_path / "a.key").write_bytes(key)
    lines: list[str] = []
    argv = ["--node", "127.0.0.1:9", "--cert", str(tmp_path / "a.pem"), "--key", str(tmp_path / "a.key")]
    code = main([*argv, "--ca", str(pki_dir / "ca.pem"), "status"], out=lines.append)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and said in err[0] and "a.pem" in err[0], err


def test_tls_files_name_an_expired_certificate_and_a_wrong_ca(
    pki_dir: Path, foreign_pki_dir: Path, tmp_path: Path, now: datetime
) -> None:
    from sdquorum.errors import UsageError

    cert, key = admin_cert_valid_between(pki_dir, now - timedelta(days=30), now - timedelta(days=1))
    (tmp_path / "a.pem").write_bytes(cert)
    (tmp_path / "a.key").write_bytes(key)
    with pytest.raises(UsageError, match="expired on"):
        TlsFiles(tmp_path / "a.pem", tmp_path / "a.key", pki_dir / "ca.pem").check()
    with pytest.raises(UsageError, match="not issued by the CA"):
        TlsFiles(pki_dir / "admin.pem", pki_dir / "admin.key", foreign_pki_dir / "ca.pem").check()


async def test_an_agent_whose_handshake_fails_never_says_connected(
    cluster: Cluster,
    foreign_pki_dir: Path,
    tmp_path: Path,
    wrapping_keys: list[SoftwareWrappingKey],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Files that are consistent locally (another deployment's CA and certificate) but that the node
    refuses: the handshake fails. Before, a failed call returned empty initial metadata and the
    agent logged "connected" and reported itself connected in its heartbeat."""
    caplog.set_level(logging.INFO, logger="sdquorum.agent")
    config = agent_config(foreign_pki_dir, cluster.target, "alice", tmp_path / "state")
    agent = Agent(config, wrapping_keys[0])
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    await asyncio.sleep(2.0)
    stop.set()
    await task
    assert agent.connections == 0
    assert not any("connected to" in r.getMessage() for r in caplog.records), caplog.text
    assert any("lost" in r.getMessage() for r in caplog.records), "the failure should be logged"
