"""Issue 13, class 4, Azure files: slots named only by thumbprint are served by certificate name.

An Azure file holds no certificates, only their thumbprints, so the node learns a slot's name from
the certificate an agent sends in its hello (it must hash to the thumbprint) and serves the slot
only to the mTLS identity that certificate names.
"""

from __future__ import annotations

import asyncio
import os
from datetime import datetime
from pathlib import Path

import pytest
from azure_sd_generator import make_sd_file
from cryptography.hazmat.primitives import serialization
from harness import running_cluster

from sdquorum import pki
from sdquorum.keys import SoftwareWrappingKey
from sdquorum.pki import Role
from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2 as pb

pytestmark = pytest.mark.asyncio


async def first_request(call: object, seconds: float) -> pb.CustodianRequest | None:
    try:
        return await asyncio.wait_for(call.read(), seconds)  # type: ignore[attr-defined]
    except TimeoutError:
        return None


async def test_an_azure_slot_is_served_only_to_the_identity_its_certificate_names(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey], now: datetime
) -> None:
    _, exchange_pem = pki.make_wrapping_key("azure exchange", now, bits=2048)
    exchange = pki.load_cert(exchange_pem).public_bytes(serialization.Encoding.DER)
    certs = [k.certificate_der() for k in wrapping_keys[:3]]
    data = make_sd_file(certs, 2, [("blob", os.urandom(64))]).data
    alice_cert, alice_thumb = certs[0], pki.thumbprint_sha256(certs[0])
    async with running_cluster(pki_dir, tmp_path / "c") as c:
        await c.node.custody.start_azure_restore(data, exchange, "dr test", 60, Role("admin"))
        for who, hello in (
            ("erin", pb.AgentHello(wrapping_cert_sha256=alice_thumb, wrapping_certificate=alice_cert)),
            ("erin", pb.AgentHello(wrapping_cert_sha256=alice_thumb)),
            ("alice", pb.AgentHello(wrapping_cert_sha256=alice_thumb)),  # no certificate: no name
        ):
            async with c.client(f"custodian-{who}") as cl:
                call = cl.custodian.WatchRequests(hello)
                await call.initial_metadata()
                assert await first_request(call, 1.5) is None, (who, hello)
                call.cancel()
        async with c.client("custodian-alice") as cl:
            call = cl.custodian.WatchRequests(
                pb.AgentHello(wrapping_cert_sha256=alice_thumb, wrapping_certificate=alice_cert)
            )
            req = await first_request(call, 10)
            assert req is not None and req.x == 1 and req.kind == pb.AZURE_RECOVERY
            call.cancel()


async def test_an_azure_answer_counts_only_from_the_identity_its_certificate_names(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey], now: datetime
) -> None:
    """alice's valid Azure release (it carries her certificate, CN=alice), sent by custodian/erin:
    refused before it is opened, her slot stays open, and her own answer then counts."""
    from test_azure_restore_grpc import _azure_answers

    from sdquorum.errors import VerificationError

    _, exchange_pem = pki.make_wrapping_key("azure exchange", now, bits=2048)
    exchange = pki.load_cert(exchange_pem).public_bytes(serialization.Encoding.DER)
    keys = wrapping_keys[:3]
    data = make_sd_file([k.certificate_der() for k in keys], 2, [("blob", os.urandom(64))]).data
    async with running_cluster(pki_dir, tmp_path / "c") as c:
        s = await c.node.custody.start_azure_restore(data, exchange, "dr test", 60, Role("admin"))
        rid, answer, alice = _azure_answers(c, pki_dir, keys, corrupt=set())[0]
        with pytest.raises(VerificationError, match="not addressed to a key named for custodian/erin"):
            await c.node.answers.submit_answer(rid, answer, Role("custodian", "erin"))
        assert s.status().accepted == 0
        await c.node.answers.submit_answer(rid, answer, alice)
        assert s.status().accepted == 1
