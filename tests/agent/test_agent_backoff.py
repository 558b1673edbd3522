"""The agent's reconnect delay (issue 14, section 1): it doubles while the node cannot be reached,
and starts again from the first step after a connection that was up. Before, it kept growing after
every drop, so an agent dropped a few times waited the maximum before each reconnect for ever."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from pathlib import Path

import pytest

from custodian_agent.agent import BACKOFF_START, Agent, AgentConfig
from sdquorum.envelopes import CustodianPolicy
from sdquorum.errors import TransportError
from sdquorum.keys import SoftwareWrappingKey
from sdquorum_rpc.tls import TlsFiles


async def test_the_reconnect_delay_starts_again_after_a_connection_that_was_up(
    tmp_path: Path,
    wrapping_keys: list[SoftwareWrappingKey],
    custodian_policy: CustodianPolicy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="sdquorum.agent")
    tls = TlsFiles(Path("unused.pem"), Path("unused.key"), Path("unused-ca.pem"), ("", "", ""))
    agent = Agent(AgentConfig("127.0.0.1:1", tls, custodian_policy, tmp_path / "state"), wrapping_keys[0])
    stop = asyncio.Event()
    attempts = 0

    async def connect_once(_stop: asyncio.Event) -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 4:  # the fourth attempt gets through, then the connection drops
            agent.connections += 1
        if attempts == 5:
            stop.set()
        raise TransportError("the node closed the request stream")

    agent._connect_once = connect_once  # type: ignore[method-assign]  # the network, stood in for
    started = time.monotonic()
    await asyncio.wait_for(agent.run(stop), 10)
    delays = [float(m) for m in re.findall(r"retrying in ([0-9.]+)s", caplog.text)]
    assert delays[:3] == [BACKOFF_START, 2 * BACKOFF_START, 4 * BACKOFF_START]  # unreachable: doubling
    assert delays[3] == BACKOFF_START  # it was up: start again
    assert time.monotonic() - started < 5
