"""The failover client over several members (sdquorum_rpc/_failover.py), against real port-0 grpc.aio
servers with real mTLS: each member is a ``Keys`` service that says which member answered, counts
the calls it was sent, and can be stopped, restarted on its port, or made to refuse with UNAVAILABLE
(as a pool member cut off from etcd does).

Cases: a member that failed is passed over for the retry interval and idempotent calls go on at
once; a call that is not idempotent is never sent twice, and the next one goes to a member not
resting; a create while every member rests waits for the first rest to end, then is sent once;
every member down: the call retries each at the interval and fails after its deadline with one
line; a member restarted after a long outage is used again within the interval.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from harness import tls

from sdquorum.errors import TransportError
from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2 as pb
from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2_grpc as pbg
from sdquorum_rpc.client import NodeClient
from sdquorum_rpc.tls import server_credentials


class _Keys(pbg.KeysServicer):
    def __init__(self, member: Member) -> None:
        self.member = member

    async def _answer(self, method: str, context: Any) -> None:
        self.member.calls[method] += 1
        if self.member.refuse:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{self.member.name} is cut off from etcd")

    async def Encrypt(self, request: pb.EncryptRequest, context: Any) -> pb.EncryptResponse:
        await self._answer("Encrypt", context)
        return pb.EncryptResponse(ciphertext=self.member.name.encode())

    async def CreateKey(self, request: pb.CreateKeyRequest, context: Any) -> pb.KeyInfo:
        await self._answer("CreateKey", context)
        return pb.KeyInfo(name=request.name)


class Member:
    """One pool member: a grpc.aio server on a fixed port (0 at first), mTLS with the node's files."""

    def __init__(self, pki: Path, name: str) -> None:
        self.pki, self.name = pki, name
        self.port = 0
        self.refuse = False
        self.calls: Counter[str] = Counter()
        self.server: grpc.aio.Server | None = None

    @property
    def target(self) -> str:
        return f"localhost:{self.port}"

    async def start(self) -> None:
        self.server = grpc.aio.server()
        pbg.add_KeysServicer_to_server(_Keys(self), self.server)
        self.port = self.server.add_secure_port(
            f"localhost:{self.port}", server_credentials(tls(self.pki, "node"))
        )
        await self.server.start()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(0)
            self.server = None


@pytest.fixture
async def members(pki_dir: Path) -> AsyncIterator[list[Member]]:
    ms = [Member(pki_dir, n) for n in ("a", "b", "c")]
    for m in ms:
        await m.start()
    yield ms
    for m in ms:
        await m.stop()


def _client(pki: Path, ms: list[Member], **retry: float) -> NodeClient:
    return NodeClient(",".join(m.target for m in ms), tls(pki, "admin"), **retry)


async def _encrypt(c: NodeClient, **kwargs: Any) -> str:
    r = await c.keys.Encrypt(pb.EncryptRequest(name="k", plaintext=b"x"), **kwargs)
    return bytes(r.ciphertext).decode()


async def test_a_failed_member_rests_for_the_interval_and_idempotent_calls_go_on_at_once(
    pki_dir: Path, members: list[Member]
) -> None:
    b = members[1]
    b.refuse = True
    async with _client(pki_dir, members, retry_interval=0.6) as client:
        started = time.monotonic()
        answers = [await _encrypt(client) for _ in range(9)]
        assert time.monotonic() - started < 0.6  # all inside b's rest
        assert set(answers) == {"a", "c"}  # every call answered, by the others
        assert b.calls["Encrypt"] == 1  # b was sent one call, then passed over (round-robin: 3)
        await asyncio.sleep(0.7)  # b's rest is over: it has its turn again, and rests again
        assert set([await _encrypt(client) for _ in range(6)]) == {"a", "c"}
        assert b.calls["Encrypt"] == 2
        b.refuse = False
        await asyncio.sleep(0.7)
        assert "b" in {await _encrypt(client) for _ in range(3)}


async def test_a_call_that_is_not_idempotent_is_sent_once_and_the_next_skips_the_resting_member(
    pki_dir: Path, members: list[Member]
) -> None:
    a, b, c = members
    a.refuse = True
    async with _client(pki_dir, members, retry_interval=30) as client:
        with pytest.raises(grpc.aio.AioRpcError) as refused:  # a's turn: refused, not sent again
            await client.keys.CreateKey(pb.CreateKeyRequest(name="k1", type=pb.AES256_GCM))
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
        assert (a.calls["CreateKey"], b.calls["CreateKey"], c.calls["CreateKey"]) == (1, 0, 0)
        for i in range(2, 6):  # a rests: b and c take every create, none is refused
            await client.keys.CreateKey(pb.CreateKeyRequest(name=f"k{i}", type=pb.AES256_GCM))
        assert (a.calls["CreateKey"], b.calls["CreateKey"], c.calls["CreateKey"]) == (1, 2, 2)


async def test_a_create_while_every_member_rests_waits_for_the_first_rest_to_end_and_is_sent_once(
    pki_dir: Path, members: list[Member]
) -> None:
    for m in members:
        m.refuse = True
    async with _client(pki_dir, members, retry_interval=0.5) as client:
        for i in range(3):  # one create per member: each refuses once and rests
            with pytest.raises(grpc.aio.AioRpcError):
                await client.keys.CreateKey(pb.CreateKeyRequest(name=f"k{i}", type=pb.AES256_GCM))
        rested = time.monotonic()
        for m in members:
            m.refuse = False
        await client.keys.CreateKey(pb.CreateKeyRequest(name="k3", type=pb.AES256_GCM))
        assert time.monotonic() - rested >= 0.35  # nothing sent before the first rest ended
        assert [m.calls["CreateKey"] for m in members] == [2, 1, 1]  # then sent once, to that member


async def test_every_member_down_retries_at_the_interval_and_fails_after_the_deadline_with_one_line(
    pki_dir: Path, members: list[Member]
) -> None:
    for m in members:
        m.refuse = True
    async with _client(pki_dir, members, retry_interval=0.25, retry_timeout=1.0) as client:
        started = time.monotonic()
        with pytest.raises(TransportError) as down, client.errors():
            await _encrypt(client)
        took = time.monotonic() - started
        line = str(down.value)
        assert 0.75 <= took <= 1.5, took  # it waited for the members, up to its deadline
        tries = sum(m.calls["Encrypt"] for m in members)
        assert 3 * 3 <= tries <= 3 * 6, tries  # each member once per interval, not in a busy loop
        assert "\n" not in line and "no pool member answered Encrypt within 1 s" in line
        assert "tried again every 0.25 s" in line and "cut off from etcd" in line
        # a call's own timeout is its deadline
        started = time.monotonic()
        with pytest.raises(TransportError, match=r"within 0\.5 s"), client.errors():
            await _encrypt(client, timeout=0.5)
        assert 0.25 <= time.monotonic() - started <= 1.0


async def test_a_member_restarted_after_an_outage_is_used_again_within_the_interval(
    pki_dir: Path, members: list[Member]
) -> None:
    b = members[1]
    interval = 0.3
    async with _client(pki_dir, members, retry_interval=interval) as client:
        assert {await _encrypt(client) for _ in range(3)} == {"a", "b", "c"}
        await b.stop()
        # 6 s down: grpc's own reconnect backoff (1 s, x1.6 per failed attempt, 20% jitter) would next
        # try about 3 s after the restart; the client caps it at the interval
        outage_end = time.monotonic() + 6.0
        while time.monotonic() < outage_end:
            assert await _encrypt(client) in ("a", "c")  # never an error: idempotent, failed over
        await b.start()
        back = time.monotonic()
        while await _encrypt(client) != "b":
            assert time.monotonic() - back < interval + 1.0, "the restarted member was not used again"
        print(
            f"\nmember b answered {time.monotonic() - back:.2f} s after its restart (interval {interval} s)"
        )
