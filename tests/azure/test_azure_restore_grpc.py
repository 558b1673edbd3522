"""The distributed Azure restore end to end over mTLS, with files from the independent generator:
each agent releases only its own share; the coordinator writes Azure's transfer file."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from azure_sd_generator import make_sd_file, open_sd_file, open_transfer_file
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from harness import NAMES, Cluster, person_at_prompt, run_sdctl, running_cluster
from support import wait_for

from sdquorum import pki
from sdquorum.envelopes import CustodianPolicy
from sdquorum.keys import SoftwareWrappingKey

ITEMS = [("EncData-1", os.urandom(700)), ("EncData-2", b"key backup " * 50)]


@pytest.fixture(scope="module")
def exchange(now: datetime) -> tuple[rsa.RSAPrivateKey, bytes]:
    key, cert_pem = pki.make_wrapping_key("azure exchange", now, bits=2048)
    return key, pki.load_cert(cert_pem).public_bytes(serialization.Encoding.DER)


def azure_policy(pki_dir: Path) -> CustodianPolicy:
    """An agent configured to serve Azure restores (agent.azure_restore = true)."""
    return CustodianPolicy((pki_dir / "attestation-root.pem").read_bytes(), azure_restore=True)


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
        agents = [
            c.start_agent(NAMES[i], wrapping_keys[i], tmp_path, policy=azure_policy(pki_dir))
            for i in (0, 2, 4)
        ]
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
        domain = a.node.lifecycle.domain
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
    capsys: pytest.CaptureFixture[str],
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
        c.start_agent(NAMES[0], wrapping_keys[0], tmp_path, policy=azure_policy(pki_dir))  # one online
        task = asyncio.create_task(
            restore_blob(
                pki_dir, c, tmp_path / "sd.json", tmp_path / "x.cer", out, "--offline-request", str(requests)
            )
        )
        await wait_for(lambda: any(requests.glob("*-x2.request.json")))
        (request,) = list(requests.glob("*-x2.request.json"))
        answer = tmp_path / "olga.answer.json"
        respond = [
            "respond", "--request", str(request), "--out", str(answer),
            "--attestation-root", str(pki_dir / "attestation-root.pem"),
            "--wrapping-key", str(home / "olga.key"), "--wrapping-cert", str(home / "olga.pem"),
        ]  # fmt: skip
        os.environ["SDQUORUM_PASSPHRASE"] = "offline passphrase"
        try:
            capsys.readouterr()
            refused = await asyncio.to_thread(agent_main, respond)  # without the opt-in: refused
            assert refused != 0 and not answer.exists()
            assert "--azure-restore" in capsys.readouterr().err
            with person_at_prompt("yes"):  # olga reads the request and approves at the prompt
                code = await asyncio.to_thread(agent_main, [*respond, "--azure-restore"])
            shown = capsys.readouterr().out
        finally:
            del os.environ["SDQUORUM_PASSPHRASE"]
        assert "EXTERNAL, UNATTESTED" in shown and pki.spki_sha256(exchange[1]).hex() in shown
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
    from sdquorum.envelopes import Attestation, seal_release
    from sdquorum.pki import Role

    policy = azure_policy(pki_dir)
    out = []
    for i, k in enumerate(keys):
        thumb = pki.thumbprint_sha256(k.certificate_der())
        (req,) = c.node.agents.pending_requests(thumb)
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
        s = await c.node.custody.start_azure_restore(data, exchange[1], "dr test", 60, Role("admin"))
        answers = _azure_answers(c, pki_dir, keys, corrupt={1})
        for a in answers[:3]:
            await c.node.answers.submit_answer(*a)
        assert s.state is SessionState.COLLECTING, s.message
        await c.node.answers.submit_answer(*answers[3])
        assert s.state is SessionState.COMPLETED, s.message
        status = {p.name: p for p in s.status().custodians}
        bob = next(p for p in status.values() if p.x == 2)
        assert bob.status is CustodianStatus.REJECTED and "slot 2" in bob.detail
        assert [p.status for p in status.values() if p.x in (1, 3, 4)] == [CustodianStatus.ACCEPTED] * 3
        transfer = c.node.custody.azure_transfer_file(s.session_id)
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
        s = await c.node.custody.start_azure_restore(data, exchange[1], "dr test", 60, Role("admin"))
        answers = _azure_answers(c, pki_dir, keys, corrupt={2, 3, 4})  # only two honest: no 3 open it
        for a in answers[:4]:
            await c.node.answers.submit_answer(*a)
            assert s.state is SessionState.COLLECTING, s.message
        await c.node.answers.submit_answer(*answers[4])
        assert s.state is SessionState.FAILED
        assert "no 3 of the 5 shares received" in s.message and "at least one of them is wrong" in s.message


async def test_agents_refuse_an_azure_restore_unless_configured_and_the_node_hears_only_a_check_failed(
    pki_dir: Path,
    tmp_path: Path,
    wrapping_keys: list[SoftwareWrappingKey],
    exchange: tuple[rsa.RSAPrivateKey, bytes],
) -> None:
    """Agents with the default configuration (agent.azure_restore = false) deny every Azure request:
    the session fails once their denials leave no quorum, and no share was released."""
    from coordinator.ceremony import CustodianStatus, SessionState
    from sdquorum.pki import Role

    keys = wrapping_keys[:3]
    data = make_sd_file([k.certificate_der() for k in keys], 2, ITEMS).data
    async with running_cluster(pki_dir, tmp_path / "c") as c:
        agents = [c.start_agent(NAMES[i], keys[i], tmp_path) for i in range(3)]
        s = await c.node.custody.start_azure_restore(data, exchange[1], "dr test", 60, Role("admin"))
        await wait_for(lambda: s.finished)
        assert s.state is SessionState.FAILED
        denied = [p for p in s.status().custodians if p.status is CustodianStatus.DENIED]
        assert len(denied) >= 2 and all("a check failed" in p.detail for p in denied)  # 2 end a 2-of-3
        assert not any(p.status is CustodianStatus.ACCEPTED for p in s.status().custodians)
        assert all(a.released == [] for a in agents)


async def test_attack_admin_exports_the_domain_for_azure_and_restores_it_to_their_own_key(
    pki_dir: Path,
    tmp_path: Path,
    wrapping_keys: list[SoftwareWrappingKey],
    now: datetime,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Issue 13, class 1. The admin alone: 'sdctl sd-file --format azure', then 'sdctl azure
    restore-blob' with an exchange certificate of their own, against agents that even opted in to
    Azure restores. Before the fix every run below wrote a transfer file that opened with the admin's
    key (data encryption, signing and backup keys). Now: refused before any custodian is asked on
    the node holding the domain, on a fresh second node, and after 'sdctl compromise'; no agent
    releases anything; each refusal is audited and is one line for the admin."""
    _admin_key, mine_pem = pki.make_wrapping_key("the admin's own exchange key", now, bits=2048)
    (tmp_path / "mine.cer").write_bytes(mine_pem)
    keys = wrapping_keys[:3]
    exported = tmp_path / "exported-azure.json"

    async def attack(c: Cluster, label: str) -> str:
        agents = [
            c.start_agent(NAMES[i], keys[i], tmp_path / label, policy=azure_policy(pki_dir)) for i in range(3)
        ]
        out = tmp_path / f"transfer-{label}.json"
        capsys.readouterr()
        code, lines = await restore_blob(pki_dir, c, exported, tmp_path / "mine.cer", out, "--ttl", "30")
        await asyncio.sleep(0.3)  # an agent that was asked would have answered by now
        assert code != 0, (label, lines)
        assert not out.exists(), label
        assert all(a.released == [] for a in agents), label
        await c.stop_agents()
        events = c.node.store.records.audit_entries(c.node.audit_chain())
        assert any("azure-restore-refused" in e for e in events), label
        errors = capsys.readouterr().err.splitlines()
        assert len(errors) == 1 and errors[0].startswith("sdctl: error: "), errors  # one line, no traceback
        return errors[0]

    async with running_cluster(pki_dir, tmp_path / "a") as a:
        await a.download([k.certificate_der() for k in keys], quorum=2)
        code, lines = await run_sdctl(
            pki_dir, a.target, "sd-file", "--format", "azure", "--out", str(exported)
        )
        assert code == 0, (
            lines
        )  # the export itself stays possible: Azure's own tools need the custodians' keys
        assert "sdquorum security domain" in await attack(a, "same-node")
        code, lines = await run_sdctl(pki_dir, a.target, "compromise", "--reason", "admin went rogue")
        assert code == 0, lines
        assert "compromised" in await attack(a, "compromised")
    async with running_cluster(pki_dir, tmp_path / "b", node_id="node-b") as b:
        assert "sdquorum security domain" in await attack(b, "fresh-node")
        assert b.node.state == "PROVISIONED"


async def test_a_late_wrong_azure_share_is_rejected_named_and_audited_by_the_node(
    pki_dir: Path,
    tmp_path: Path,
    wrapping_keys: list[SoftwareWrappingKey],
    exchange: tuple[rsa.RSAPrivateKey, bytes],
) -> None:
    """2-of-4 completes with alice and bob; carol's honest share and dave's wrong one come after,
    before the deadline. Before issue 13 both were refused unchecked ("session is completed"), so
    dave's lie was never named. Now carol is verified and NOT_NEEDED, dave REJECTED and named, each
    audited; the transfer file is unchanged."""
    from coordinator.ceremony import CustodianStatus, SessionState
    from sdquorum.errors import VerificationError
    from sdquorum.pki import Role

    keys = wrapping_keys[:4]
    data = make_sd_file([k.certificate_der() for k in keys], 2, ITEMS).data
    async with running_cluster(pki_dir, tmp_path / "c") as c:
        s = await c.node.custody.start_azure_restore(data, exchange[1], "dr test", 60, Role("admin"))
        answers = _azure_answers(c, pki_dir, keys, corrupt={3})
        for a in answers[:2]:
            await c.node.answers.submit_answer(*a)
        assert s.state is SessionState.COMPLETED
        transfer = c.node.custody.azure_transfer_file(s.session_id)
        await c.node.answers.submit_answer(*answers[2])
        with pytest.raises(VerificationError, match="does not lie on the shares"):
            await c.node.answers.submit_answer(*answers[3])
        status = {p.x: p for p in s.status().custodians}
        assert status[3].status is CustodianStatus.NOT_NEEDED and "verified" in status[3].detail
        assert status[4].status is CustodianStatus.REJECTED and "late" in status[4].detail
        assert status[4].name in s.message and s.state is SessionState.COMPLETED
        events = "\n".join(c.node.store.records.audit_entries(c.node.audit_chain()))
        assert "azure-recovery-late-answer-verified" in events
        assert "azure-recovery-late-answer-rejected" in events
        assert c.node.custody.azure_transfer_file(s.session_id) == transfer
