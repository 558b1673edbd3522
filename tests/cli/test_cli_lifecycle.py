"""The custody lifecycle through the operator's and custodians' commands, over real mTLS:
possession drills, rotation, offline custodians, the audit log, custody records and the review."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_support import NAMES, Cluster, Result, SdctlRunner, assert_one_line_error, certs_of, running_cluster
from harness import person_at_prompt
from support import wait_for

from custodian_agent.keyfile import keygen, load_wrapping_key
from sdquorum import shamir
from sdquorum.audit import verify_export
from sdquorum.errors import VerificationError
from sdquorum.keys import SoftwareWrappingKey
from sdquorum.sdfile import SecurityDomainFile, open_domain, share_label
from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2 as pb

pytestmark = pytest.mark.asyncio
PASS = "offline custodian passphrase"


async def activated(c: Cluster, keys: list[SoftwareWrappingKey], quorum: int = 3) -> bytes:
    return await c.download(certs_of(keys), quorum=quorum)


def pem_files(tmp_path: Path, keys: list[SoftwareWrappingKey], names: list[str]) -> list[Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    out = []
    for key, name in zip(keys, names, strict=True):
        p = tmp_path / f"{name}.wrap.pem"
        p.write_bytes(
            x509.load_der_x509_certificate(key.certificate_der()).public_bytes(serialization.Encoding.PEM)
        )
        out.append(p)
    return out


# ----------------------------------------------------------------------------------- drills


async def test_drill_reports_proved_failed_and_unreachable_and_is_audited(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey], sdctl: SdctlRunner
) -> None:
    async with running_cluster(pki_dir, tmp_path / "a") as a:
        await activated(a, wrapping_keys[:5])
        for i in range(3):  # alice, bob, carol: honest
            a.start_agent(NAMES[i], wrapping_keys[i], tmp_path)
        # erin's agent now holds another key (frank's): it no longer matches erin's slot.
        a.start_agent("erin", wrapping_keys[5], tmp_path)
        await wait_for(lambda: len(a.node.agents.connected_custodians()) == 4)
        # dave has no agent: unreachable at the deadline.
        drill = asyncio.create_task(sdctl("drill", "--reason", "Q4 drill", "--ttl", "30", node=a.target))
        await wait_for(lambda: a.node.session is not None and a.node.session.status().accepted == 3)
        a.clock.advance(31)
        r = await drill
        assert r.code == 4, r
        report = "\n".join(r.out)
        for name in ("alice", "bob", "carol"):
            assert f"{name} (x=" in report and f"{name} (x={NAMES.index(name) + 1}): proved" in report
        assert "dave (x=4): unreachable" in report
        assert "erin (x=5): failed: erin's agent holds a wrapping key that no longer matches slot 5" in report
        exported = await sdctl("audit", "export", node=a.target)
        log = verify_export(exported.out[0].splitlines() if len(exported.out) == 1 else exported.out)
        results = [e for e in log.entries if e.event == "drill-results"]
        assert results and results[-1].details["results"] == {
            "alice": "proved",
            "bob": "proved",
            "carol": "proved",
            "dave": "unreachable",
            "erin": "failed",
        }


# ----------------------------------------------------------------------------------- rotation


async def test_rotation_reseals_the_same_payload_for_a_new_roster(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey], sdctl: SdctlRunner
) -> None:
    old_keys, new_keys = (
        wrapping_keys[:5],
        [wrapping_keys[i] for i in (0, 1, 5)],
    )  # carol, dave, erin leave; frank joins
    new_certs = pem_files(tmp_path, new_keys, ["alice", "bob", "frank"])
    async with running_cluster(pki_dir, tmp_path / "a") as a:
        old_sd = SecurityDomainFile.from_bytes(await activated(a, old_keys))
        async with a.client("app") as c, c.errors():
            await c.keys.CreateKey(pb.CreateKeyRequest(name="pay", type=pb.AES256_GCM))
            ct = (
                await c.keys.Encrypt(pb.EncryptRequest(name="pay", plaintext=b"before rotation"))
            ).ciphertext
        for i in (1, 2, 3):  # bob, carol, dave approve
            a.start_agent(NAMES[i], wrapping_keys[i], tmp_path)
        out = tmp_path / "sd-epoch2.json"
        r = await sdctl(
            "rotate",
            *[x for p in new_certs for x in ("--cert", str(p))],
            "--quorum",
            "2",
            "--reason",
            "carol, dave and erin leave",
            "--out",
            str(out),
            node=a.target,
        )
        assert r.code == 0, r
        new_sd = SecurityDomainFile.from_bytes(out.read_bytes())
        assert (new_sd.header.epoch, new_sd.header.quorum, new_sd.header.n) == (2, 2, 3)
        assert new_sd.header.domain_id == old_sd.header.domain_id
        assert (await a.node_status()).epoch == 2
        backup = await a.backup()
        # The old epoch's shares do not open the new file.
        old_shares = [
            shamir.Share.from_bytes(
                s.x, k.decrypt(s.encrypted_share, share_label(old_sd.header.domain_id, 1, s.x))
            )
            for s, k in zip(old_sd.header.slots[:3], old_keys[:3], strict=True)
        ]
        old_secret = shamir.combine(old_shares, 3, 5)
        with pytest.raises(VerificationError):
            open_domain(new_sd, old_secret)
        # The review lists the retired epoch whose SD files must be destroyed.
        rv = await sdctl("review", "--format", "json", node=a.target)
        review = json.loads("\n".join(rv.out))
        assert any(f["rule"] == "old-epochs" for f in review["findings"])
    # Recovery from the new file with the new custodians works, and keys made before rotation decrypt.
    async with running_cluster(pki_dir, tmp_path / "b", node_id="node-b") as b:
        b.start_agent("alice", wrapping_keys[0], tmp_path)
        b.start_agent("frank", wrapping_keys[5], tmp_path)
        r = await sdctl("recover", "--sd-file", str(out), "--reason", "after rotation", node=b.target)
        assert r.code == 0, r
        await b.restore(backup)
        async with b.client("app") as c, c.errors():
            assert (
                await c.keys.Decrypt(pb.DecryptRequest(name="pay", ciphertext=ct))
            ).plaintext == b"before rotation"


async def test_rotation_without_m_approvals_by_the_deadline_changes_nothing(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey], sdctl: SdctlRunner
) -> None:
    new_certs = pem_files(tmp_path, wrapping_keys[:3], ["alice", "bob", "carol"])
    async with running_cluster(pki_dir, tmp_path / "a") as a:
        sd = await activated(a, wrapping_keys[:5])
        for i in (0, 1):  # only two of the three needed approve
            a.start_agent(NAMES[i], wrapping_keys[i], tmp_path)
        out = tmp_path / "never.json"
        task = asyncio.create_task(
            sdctl(
                "rotate",
                *[x for p in new_certs for x in ("--cert", str(p))],
                "--quorum",
                "3",
                "--reason",
                "quorum change",
                "--ttl",
                "30",
                "--out",
                str(out),
                node=a.target,
            )
        )
        await wait_for(lambda: a.node.session is not None and a.node.session.status().accepted == 2)
        a.clock.advance(31)
        r = await task
        line = assert_one_line_error(r)
        assert "nothing changed" in line and r.code == 3
        assert not out.exists()
        assert (await a.node_status()).epoch == 1
        assert a.node.custody.security_domain_file() == sd


# ----------------------------------------------------------------------------------- offline custodians


@pytest.fixture
def offline_custodian(tmp_path: Path, now) -> tuple[Path, Path, SoftwareWrappingKey]:  # type: ignore[no-untyped-def]
    home = tmp_path / "airgap"
    home.mkdir()
    keygen("olga", home / "olga.key", home / "olga.pem", PASS.encode(), now, bits=2048)
    return (
        home / "olga.key",
        home / "olga.pem",
        load_wrapping_key(home / "olga.key", home / "olga.pem", PASS.encode()),
    )


async def respond_offline(
    agent_cli: Callable[..., Result],
    pki_dir: Path,
    request: Path,
    key: Path,
    cert: Path,
    out: Path,
    *,
    yes: bool = False,
) -> Result:
    """olga answers offline: with ``yes``, ``--yes`` (drills only); otherwise she reads the
    request and types 'yes' at the prompt."""
    import os

    os.environ["SDQUORUM_PASSPHRASE"] = PASS
    try:
        with person_at_prompt("no" if yes else "yes"):  # with --yes the prompt is not read
            return agent_cli(
                "respond",
                "--request",
                str(request),
                "--out",
                str(out),
                *(["--yes"] if yes else []),
                "--attestation-root",
                str(pki_dir / "attestation-root.pem"),
                "--wrapping-key",
                str(key),
                "--wrapping-cert",
                str(cert),
            )
    finally:
        del os.environ["SDQUORUM_PASSPHRASE"]


async def test_recovery_completes_with_two_online_agents_and_one_offline_release(
    pki_dir: Path,
    tmp_path: Path,
    wrapping_keys: list[SoftwareWrappingKey],
    offline_custodian: tuple[Path, Path, SoftwareWrappingKey],
    sdctl: SdctlRunner,
    agent_cli: Callable[..., Result],
) -> None:
    key_path, cert_path, olga = offline_custodian
    keys = [*wrapping_keys[:4], olga]
    async with running_cluster(pki_dir, tmp_path / "a") as a:
        sd = tmp_path / "sd.json"
        sd.write_bytes(await activated(a, keys))
    requests = tmp_path / "requests"
    requests.mkdir()
    async with running_cluster(pki_dir, tmp_path / "b", node_id="node-b") as b:
        b.start_agent("alice", wrapping_keys[0], tmp_path)
        b.start_agent("bob", wrapping_keys[1], tmp_path)
        recover = asyncio.create_task(
            sdctl(
                "recover",
                "--sd-file",
                str(sd),
                "--reason",
                "offline test",
                "--offline-request",
                str(requests),
                node=b.target,
            )
        )
        await wait_for(lambda: (requests / "olga-x5.request.json").exists())
        answer = tmp_path / "olga.answer.json"
        # --yes would release her share with nobody reading the request: refused, nothing written.
        unattended = await respond_offline(
            agent_cli, pki_dir, requests / "olga-x5.request.json", key_path, cert_path, answer, yes=True
        )
        assert unattended.code == 2 and not answer.exists()
        line = assert_one_line_error(unattended, "custodian-agent")
        assert "--yes answers drills only" in line and "type 'yes' at the prompt" in line
        r = await respond_offline(
            agent_cli, pki_dir, requests / "olga-x5.request.json", key_path, cert_path, answer
        )
        assert r.code == 0, r
        # The answer file holds no share in the clear: it is sealed to node B's exchange key.
        share_y = olga.decrypt(
            SecurityDomainFile.from_bytes(sd.read_bytes()).header.slot(5).encrypted_share,
            share_label(SecurityDomainFile.from_bytes(sd.read_bytes()).header.domain_id, 1, 5),
        )
        assert share_y not in answer.read_bytes() and share_y.hex().encode() not in answer.read_bytes()
        await wait_for(lambda: b.node.session is not None and b.node.session.status().accepted == 2)
        up = await sdctl("upload-answer", str(answer), node=b.target)
        assert up.code == 0, up
        rec = await recover
        assert rec.code == 0, rec
        assert b.node.state == "ACTIVATED"
        statuses = {c.name: c.status.name for c in b.node.session.status().custodians}  # type: ignore[union-attr]
        assert statuses["olga"] == "ACCEPTED" and statuses["alice"] == statuses["bob"] == "ACCEPTED"


async def test_offline_drill_answer_counts_like_an_online_one(
    pki_dir: Path,
    tmp_path: Path,
    wrapping_keys: list[SoftwareWrappingKey],
    offline_custodian: tuple[Path, Path, SoftwareWrappingKey],
    sdctl: SdctlRunner,
    agent_cli: Callable[..., Result],
) -> None:
    key_path, cert_path, olga = offline_custodian
    requests = tmp_path / "requests"
    requests.mkdir()
    async with running_cluster(pki_dir, tmp_path / "a") as a:
        await activated(a, [*wrapping_keys[:2], olga])
        a.start_agent("alice", wrapping_keys[0], tmp_path)
        a.start_agent("bob", wrapping_keys[1], tmp_path)
        drill = asyncio.create_task(sdctl("drill", "--offline-request", str(requests), node=a.target))
        await wait_for(lambda: (requests / "olga-x3.request.json").exists())
        answer = tmp_path / "olga.answer.json"
        assert (
            await respond_offline(
                agent_cli,
                pki_dir,
                requests / "olga-x3.request.json",
                key_path,
                cert_path,
                answer,
                yes=True,
            )
        ).code == 0
        assert (await sdctl("upload-answer", str(answer), node=a.target)).code == 0
        r = await drill
        assert r.code == 0, r
        assert "olga (x=3): proved" in "\n".join(r.out)


# ----------------------------------------------------------------------------------- audit, custody, review


async def test_audit_log_survives_restart_and_a_recovered_node_log_begins_with_its_origin(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey], sdctl: SdctlRunner
) -> None:
    async with running_cluster(pki_dir, tmp_path / "a") as a:
        sd = tmp_path / "sd.json"
        sd.write_bytes(await activated(a, wrapping_keys[:5]))
    seal = b"\x05" * 32
    async with running_cluster(pki_dir, tmp_path / "b", node_id="node-b", sealing_key=seal) as b:
        for i in range(3):
            b.start_agent(NAMES[i], wrapping_keys[i], tmp_path)
        # A refusal before recovery: a custodian calling the admin API.
        denied = await sdctl("status", node=b.target, identity="custodian-alice")
        assert denied.code == 0
        refused = await sdctl(
            "backup", "--out", str(tmp_path / "x"), node=b.target, identity="custodian-alice"
        )
        assert refused.code == 6
        assert (await sdctl("recover", "--sd-file", str(sd), "--reason", "dc lost", node=b.target)).code == 0
        first = await sdctl("audit", "export", node=b.target)
    async with running_cluster(pki_dir, tmp_path / "b", node_id="node-b", sealing_key=seal) as again:
        later = await sdctl("audit", "export", "--out", str(tmp_path / "audit.jsonl"), node=again.target)
        assert later.code == 0
        root = pki_dir / "attestation-root.pem"
        ok = await sdctl(
            "audit",
            "verify",
            str(tmp_path / "audit.jsonl"),
            "--attestation-root",
            str(root),
            node=again.target,
        )
        assert ok.code == 0, ok
        log = verify_export((tmp_path / "audit.jsonl").read_text().splitlines())
        head = log.entries[0]
        assert head.event == "recovered"
        header = SecurityDomainFile.from_bytes(sd.read_bytes()).header
        assert head.details["domain_id"] == header.domain_id.hex() and head.details["epoch"] == 1
        assert head.details["ceremony"] == "recovery" and head.details["session_id"]
        import hashlib

        assert head.details["sd_file_sha256"] == hashlib.sha256(sd.read_bytes()).hexdigest()
        assert len(log.entries) >= len(
            verify_export(first.out[0].splitlines() if len(first.out) == 1 else first.out).entries
        )
        prov = await sdctl("audit", "export", "--chain", "provisioning", node=again.target)
        events = [e.event for e in verify_export("\n".join(prov.out).splitlines()).entries]
        assert "refused" in events and "recovery-started" in events and "recovery-answer-accepted" in events
        # An edited export is caught.
        lines = (tmp_path / "audit.jsonl").read_text().splitlines()
        lines[1] = lines[1].replace('"epoch": 1', '"epoch": 2')
        (tmp_path / "edited.jsonl").write_text("\n".join(lines) + "\n")
        bad = await sdctl("audit", "verify", str(tmp_path / "edited.jsonl"), node=again.target)
        assert bad.code == 4 and "edited" in assert_one_line_error(bad)


async def test_lost_key_puts_the_domain_at_risk_and_compromise_stops_drills_and_rotation(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey], sdctl: SdctlRunner
) -> None:
    async with running_cluster(pki_dir, tmp_path / "a") as a:
        await activated(a, wrapping_keys[:5])
        for name, loc in zip(NAMES[:5], ["Zurich", "Dublin", "Oslo", "Lisbon", "Riga"], strict=True):
            r = await sdctl(
                "custody",
                "record",
                "--custodian",
                name,
                "--event",
                "location",
                "--location",
                loc,
                node=a.target,
            )
            assert r.code == 0, r
        r = await sdctl(
            "custody",
            "record",
            "--custodian",
            "carol",
            "--event",
            "lost",
            "--note",
            "token lost",
            node=a.target,
        )
        assert r.code == 0, r
        md = await sdctl("review", "--format", "md", node=a.target)
        text = "\n".join(md.out)
        assert "rotate" in text.lower() and "carol" in text
        js = json.loads("\n".join((await sdctl("review", "--format", "json", node=a.target)).out))
        assert any(f["rule"] == "lost-key" and f["severity"] == "critical" for f in js["findings"])
        html = tmp_path / "review.html"
        assert (await sdctl("review", "--format", "html", "--out", str(html), node=a.target)).code == 0
        assert "AT RISK" in html.read_text()
        assert (await sdctl("compromise", "--reason", "carol's token lost", "--yes", node=a.target)).code == 0
        drill = await sdctl("drill", node=a.target)
        assert drill.code == 3 and "compromised" in assert_one_line_error(drill)
        certs = pem_files(tmp_path, wrapping_keys[:3], ["alice", "bob", "frank"])
        rot = await sdctl(
            "rotate",
            *[x for p in certs for x in ("--cert", str(p))],
            "--quorum",
            "2",
            "--reason",
            "x",
            "--out",
            str(tmp_path / "r.json"),
            node=a.target,
        )
        assert rot.code == 3 and "compromised" in assert_one_line_error(rot)
        js = json.loads("\n".join((await sdctl("review", "--format", "json", node=a.target)).out))
        assert any(f["rule"] == "compromised" for f in js["findings"])
        listed = await sdctl("custody", "list", node=a.target)
        assert any("lost" in line and "carol" in line for line in listed.out)
