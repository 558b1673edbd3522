"""The distributed Azure restore end to end over mTLS, with files from the independent generator:
each agent releases only its own share; the coordinator writes Azure's transfer file."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from azure_sd_generator import make_sd_file, open_sd_file, open_transfer_file
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from harness import NAMES, Cluster, person_at_prompt, run_sdctl, running_cluster

from sdquorum import pki
from sdquorum.keys import SoftwareWrappingKey

ITEMS = [("EncData-1", os.urandom(700)), ("EncData-2", b"key backup " * 50)]


@pytest.fixture(scope="module")
def exchange(now: datetime) -> tuple[rsa.RSAPrivateKey, bytes]:
    key, cert_pem = pki.make_wrapping_key("azure exchange", now, bits=2048)
    return key, pki.load_cert(cert_pem).public_bytes(serialization.Encoding.DER)


async def wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.05)


def restore_blob(
    pki: Path, c: Cluster, sd: Path, cert: Path, out: Path, *more: str
) -> Coroutine[Any, Any, tuple[int, list[str]]]:
    """``sdctl azure restore-blob`` against ``c``: its exit code and output lines."""
    args = ("--sd-file", str(sd), "--exchange-cert", str(cert), "--out", str(out), *more)
    return run_sdctl(pki, c.target, "azure", "restore-blob", *args)


@pytest.mark.asyncio
async def test_restore_blob_with_three_of_five_agents_writes_a_transfer_file_azure_accepts(
    pki_dir: Path,
    tmp_path: Path,
    wrapping_keys: list[SoftwareWrappingKey],
    wrapping_private_keys: list[tuple[rsa.RSAPrivateKey, bytes]],
    exchange: tuple[rsa.RSAPrivateKey, bytes],
) -> None:
    generated = make_sd_file([k.certificate_der() for k in wrapping_keys[:5]], 3, ITEMS)
    sd = tmp_path / "azure-sd.json"
    sd.write_bytes(generated.data)
    cert = tmp_path / "exchange.cer"
    cert.write_bytes(exchange[1])
    out = tmp_path / "transfer.json"
    async with running_cluster(pki_dir, tmp_path / "coordinator") as c:
        agents = [c.start_agent(NAMES[i], wrapping_keys[i], tmp_path) for i in (0, 2, 4)]
        code, lines = await restore_blob(pki_dir, c, sd, cert, out)
        assert code == 0, lines
        assert all(len(a.released) == 1 for a in agents)
        assert c.node.state == "PROVISIONED"  # the coordinating node's own state is untouched
    # What the Azure HSM does with the transfer file: unwrap the new master key, open every item.
    assert open_transfer_file(out.read_bytes(), *exchange) == ITEMS
    assert open_sd_file(generated.data, wrapping_private_keys[:3]) == ITEMS  # the generator agrees


@pytest.mark.asyncio
async def test_restore_blob_refuses_a_flipped_file_before_asking_anyone(
    pki_dir: Path,
    tmp_path: Path,
    wrapping_keys: list[SoftwareWrappingKey],
    exchange: tuple[rsa.RSAPrivateKey, bytes],
) -> None:
    data = bytearray(make_sd_file([k.certificate_der() for k in wrapping_keys[:3]], 2, ITEMS).data)
    data[len(data) // 2] ^= 0x01
    (tmp_path / "sd.json").write_bytes(bytes(data))
    (tmp_path / "x.cer").write_bytes(exchange[1])
    async with running_cluster(pki_dir, tmp_path / "coordinator") as c:
        code, _ = await restore_blob(
            pki_dir, c, tmp_path / "sd.json", tmp_path / "x.cer", tmp_path / "t.json"
        )
        assert code in (2, 4)
        assert c.node.session is None
    assert not (tmp_path / "t.json").exists()


@pytest.mark.asyncio
async def test_native_domain_exported_as_an_azure_file_opens_with_azure_restore_code(
    pki_dir: Path,
    tmp_path: Path,
    wrapping_keys: list[SoftwareWrappingKey],
    wrapping_private_keys: list[tuple[rsa.RSAPrivateKey, bytes]],
) -> None:
    async with running_cluster(pki_dir, tmp_path / "a") as a:
        await a.download([k.certificate_der() for k in wrapping_keys[:3]], quorum=2)
        out = tmp_path / "azure.json"
        code, lines = await run_sdctl(pki_dir, a.target, "sd-file", "--format", "azure", "--out", str(out))
        assert code == 0, lines
        domain = a.node._domain
    assert domain is not None
    # The generator's open_sd_file reads it as Azure's restore-blob does (every wrapping private key on one
    # machine); test_azure_cli_restore.py runs Microsoft's own `az keyvault security-domain restore-blob`.
    items = open_sd_file(out.read_bytes(), wrapping_private_keys[:2])
    assert items == [("sdquorum-payload-v1", domain.to_bytes())]
    _ = datetime.now(UTC)


@pytest.mark.asyncio
async def test_restore_blob_with_an_offline_custodian_answer_file(
    pki_dir: Path,
    tmp_path: Path,
    wrapping_keys: list[SoftwareWrappingKey],
    exchange: tuple[rsa.RSAPrivateKey, bytes],
    now: datetime,
) -> None:
    from custodian_agent.cli import main as agent_main
    from custodian_agent.keyfile import keygen, load_wrapping_key

    home = tmp_path / "airgap"
    home.mkdir()
    keygen("olga", home / "olga.key", home / "olga.pem", b"offline passphrase", now, bits=2048)
    olga = load_wrapping_key(home / "olga.key", home / "olga.pem", b"offline passphrase")
    generated = make_sd_file(
        [wrapping_keys[0].certificate_der(), olga.certificate_der(), wrapping_keys[1].certificate_der()],
        2,
        ITEMS,
    )
    (tmp_path / "sd.json").write_bytes(generated.data)
    (tmp_path / "x.cer").write_bytes(exchange[1])
    requests = tmp_path / "requests"
    requests.mkdir()
    out = tmp_path / "transfer.json"
    async with running_cluster(pki_dir, tmp_path / "coordinator") as c:
        c.start_agent(NAMES[0], wrapping_keys[0], tmp_path)  # one custodian online, one offline
        task = asyncio.create_task(
            restore_blob(
                pki_dir, c, tmp_path / "sd.json", tmp_path / "x.cer", out, "--offline-request", str(requests)
            )
        )
        await wait_for(lambda: any(requests.glob("*-x2.request.json")))
        (request,) = list(requests.glob("*-x2.request.json"))
        answer = tmp_path / "olga.answer.json"
        os.environ["SDQUORUM_PASSPHRASE"] = "offline passphrase"
        try:
            with person_at_prompt("yes"):  # olga reads the request and approves at the prompt
                code = await asyncio.to_thread(
                    agent_main,
                    [
                        "respond",
                        "--request",
                        str(request),
                        "--out",
                        str(answer),
                        "--attestation-root",
                        str(pki_dir / "attestation-root.pem"),
                        "--wrapping-key",
                        str(home / "olga.key"),
                        "--wrapping-cert",
                        str(home / "olga.pem"),
                    ],
                )
        finally:
            del os.environ["SDQUORUM_PASSPHRASE"]
        assert code == 0
        up_code, up_lines = await run_sdctl(pki_dir, c.target, "upload-answer", str(answer))
        assert up_code == 0, up_lines
        code, lines = await task
        assert code == 0, lines
    assert open_transfer_file(out.read_bytes(), *exchange) == ITEMS


def _azure_answers(
    c: Cluster, pki_dir: Path, keys: list[SoftwareWrappingKey], corrupt: set[int]
) -> list[tuple[str, bytes, Any]]:
    """What each of ``keys``' agents releases for its open Azure request; the ones at the indexes in
    ``corrupt`` release a share with one byte changed (a damaged key, or a lying agent)."""
    from sdquorum.azure import gf257
    from sdquorum.azure.ceremony import AzureAnswer, check_azure_request
    from sdquorum.azure.sdfile import decrypt_share
    from sdquorum.envelopes import Attestation, CustodianPolicy, seal_release
    from sdquorum.pki import Role

    policy = CustodianPolicy((pki_dir / "attestation-root.pem").read_bytes())
    out = []
    for i, k in enumerate(keys):
        thumb = pki.thumbprint_sha256(k.certificate_der())
        (req,) = c.node.pending_requests(thumb)
        checked = check_azure_request(
            Attestation.from_bytes(req.attestation), req.header_bytes, req.x, thumb, policy, datetime.now(UTC)
        )
        share = decrypt_share(checked.sd, k)
        if i in corrupt:
            share = gf257.Share(share.x, ((share.ys[0] + 1) % 257, *share.ys[1:]))
        release = seal_release(
            checked.statement, checked.attestation_sha256, checked.slot, share.to_bytes(), k
        )
        out.append(
            (
                req.request_id,
                AzureAnswer(release, k.certificate_der()).to_bytes(),
                Role("custodian", NAMES[i]),
            )
        )
    return out


async def test_a_wrong_azure_share_blocks_nothing_and_is_named(
    pki_dir: Path,
    tmp_path: Path,
    wrapping_keys: list[SoftwareWrappingKey],
    exchange: tuple[rsa.RSAPrivateKey, bytes],
) -> None:
    """3-of-5: alice, bob (wrong share) and carol answer first. The three do not open the file, so
    the session waits; dave's honest share completes it, and bob is the one rejected and named."""
    from coordinator.ceremony import CustodianStatus, SessionState
    from sdquorum.pki import Role

    keys = wrapping_keys[:5]
    data = make_sd_file([k.certificate_der() for k in keys], 3, ITEMS).data
    async with running_cluster(pki_dir, tmp_path / "c") as c:
        s = await c.node.start_azure_restore(data, exchange[1], "dr test", 60, Role("admin"))
        answers = _azure_answers(c, pki_dir, keys, corrupt={1})
        for a in answers[:3]:
            await c.node.submit_answer(*a)
        assert s.state is SessionState.COLLECTING, s.message
        await c.node.submit_answer(*answers[3])
        assert s.state is SessionState.COMPLETED, s.message
        status = {p.name: p for p in s.status().custodians}
        bob = next(p for p in status.values() if p.x == 2)
        assert bob.status is CustodianStatus.REJECTED and "slot 2" in bob.detail
        assert [p.status for p in status.values() if p.x in (1, 3, 4)] == [CustodianStatus.ACCEPTED] * 3
        transfer = c.node.azure_transfer_file(s.session_id)
    assert open_transfer_file(transfer, exchange[0], exchange[1]) == ITEMS


async def test_azure_shares_that_never_open_the_file_fail_only_when_no_one_is_left(
    pki_dir: Path,
    tmp_path: Path,
    wrapping_keys: list[SoftwareWrappingKey],
    exchange: tuple[rsa.RSAPrivateKey, bytes],
) -> None:
    from coordinator.ceremony import SessionState
    from sdquorum.pki import Role

    keys = wrapping_keys[:5]
    data = make_sd_file([k.certificate_der() for k in keys], 3, ITEMS).data
    async with running_cluster(pki_dir, tmp_path / "c") as c:
        s = await c.node.start_azure_restore(data, exchange[1], "dr test", 60, Role("admin"))
        answers = _azure_answers(c, pki_dir, keys, corrupt={2, 3, 4})  # only two honest: no 3 open it
        for a in answers[:4]:
            await c.node.submit_answer(*a)
            assert s.state is SessionState.COLLECTING, s.message
        await c.node.submit_answer(*answers[4])
        assert s.state is SessionState.FAILED
        assert "no 3 of the 5 shares received" in s.message and "at least one of them is wrong" in s.message
