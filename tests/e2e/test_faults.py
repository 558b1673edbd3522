"""Faults: processes killed mid-ceremony or mid-write, a full or read-only disk.

The node runs as a real process here (so SIGKILL is real); agents run in the test's event loop and
redial with backoff, as a deployed agent does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from harness import (
    NAMES,
    ROOT,
    Custodians,
    NodeProcess,
    agent_config,
    certs_of,
    node_run_argv,
    running_cluster,
)
from support import wait_for
from test_demo import forms

from custodian_agent.agent import Agent
from sdquorum import pki, shamir
from sdquorum.errors import StateError, UsageError
from sdquorum.keys import SoftwareWrappingKey
from sdquorum.pki import Role
from sdquorum.sdfile import SecurityDomainFile, open_domain, share_label
from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2 as pb

pytestmark = pytest.mark.asyncio


@contextlib.asynccontextmanager
async def agents(
    pki: Path, target: str, keys: dict[str, SoftwareWrappingKey], tmp: Path
) -> AsyncIterator[list[Agent]]:
    running = []
    persons = Custodians({name: tmp / f"agent-{name}" for name in keys}).start()
    for name, key in keys.items():
        agent = Agent(agent_config(pki, target, name, tmp / f"agent-{name}"), key)
        stop = asyncio.Event()
        running.append((agent, stop, asyncio.create_task(agent.run(stop))))
    try:
        yield [a for a, _, _ in running]
    finally:
        persons.stop()
        for _, stop, _ in running:
            stop.set()
        await asyncio.gather(*(t for _, _, t in running), return_exceptions=True)


async def status(node: NodeProcess) -> pb.NodeStatus:
    async with node.client() as c, c.errors():
        return await c.node.GetStatus(pb.GetStatusRequest())


async def start_recovery(node: NodeProcess, sd: bytes, ttl: int = 60) -> str:
    async with node.client() as c, c.errors():
        init = await c.admin.InitRecovery(pb.InitRecoveryRequest(reason="fault test", ttl_seconds=ttl))

        async def chunks() -> AsyncIterator[pb.SdFileChunk]:
            yield pb.SdFileChunk(session_id=init.session_id, data=sd)

        await c.admin.UploadSecurityDomain(chunks())
        return str(init.session_id)


async def accepted(node: NodeProcess, session_id: str) -> int:
    async with node.client() as c, c.errors():
        async for p in c.admin.WatchSession(pb.WatchSessionRequest(session_id=session_id)):
            return int(p.accepted)
    return 0


def domain_secrets(sd_bytes: bytes, keys: list[SoftwareWrappingKey]) -> dict[str, bytes]:
    """Every secret of the domain, rebuilt by the test from the custodians' keys."""
    sd = SecurityDomainFile.from_bytes(sd_bytes)
    h = sd.header
    shares = [
        shamir.Share.from_bytes(s.x, k.decrypt(s.encrypted_share, share_label(h.domain_id, h.epoch, s.x)))
        for s, k in zip(h.slots, keys, strict=True)
    ]
    s = shamir.combine(shares[: h.quorum], h.quorum, h.n)
    d = open_domain(sd, s)
    out = {f"share x={sh.x}": sh.to_bytes() for sh in shares}
    out |= {
        "s": s.to_bytes(32, "little"),
        "dek": d.data_encryption_key,
        "signing": d.signing_key,
        "backup": d.backup_key,
    }
    return out


def leaked(secrets: dict[str, bytes], root: Path, exempt: set[Path]) -> list[str]:
    found = []
    for p in root.rglob("*"):
        if p.is_file() and p not in exempt:
            blob = p.read_bytes()
            found += [f"{what} in {p.name}" for what, sec in secrets.items() for f in forms(sec) if f in blob]
    return found


async def test_node_killed_mid_ceremony_restarts_and_a_new_session_completes(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    async with running_cluster(pki_dir, tmp_path / "a") as a:
        sd = await a.download(certs_of(wrapping_keys[:5]), quorum=3)
    node = NodeProcess(pki_dir, tmp_path / "b" / "data", log_level="DEBUG")
    node.start()  # port 0: the node binds, then writes the port it got
    try:
        two = {NAMES[i]: wrapping_keys[i] for i in (0, 1)}
        async with agents(pki_dir, node.target, two, tmp_path):
            first = await start_recovery(node, sd)
            await wait_for_async(lambda: accepted(node, first), 2)
            node.kill()  # SIGKILL with two shares (and the exchange key) in the node's memory
            node.start(listen=node.target)  # the address its agents and clients know
            assert (await status(node)).state == pb.PROVISIONED  # the restart dropped the session
            second = await start_recovery(node, sd)
            async with agents(pki_dir, node.target, {"carol": wrapping_keys[2]}, tmp_path):
                await wait_for_async(lambda: accepted(node, second), 3)
            await wait_for_async(lambda: status_state(node), pb.ACTIVATED)
        node.kill(signal_term())
        secrets = domain_secrets(sd, wrapping_keys[:5])
        exempt = set((tmp_path / "b").glob("*.sealing-key"))
        assert exempt, "the sealing key file should sit beside the data directory"
        assert leaked(secrets, tmp_path / "b", exempt) == []
    finally:
        node.kill()


async def wait_for_async(probe: Callable[[], object], want: object, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while await probe() != want:  # type: ignore[misc]
            await asyncio.sleep(0.1)


async def status_state(node: NodeProcess) -> int:
    return int((await status(node)).state)


def signal_term() -> int:
    import signal

    return int(signal.SIGTERM)


async def test_agent_killed_and_restarted_mid_ceremony(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey], now: object
) -> None:
    from custodian_agent.keyfile import keygen, load_wrapping_key

    home = tmp_path / "olga"
    home.mkdir()
    # Her wrapping certificate bears the name of her mTLS identity (custodian/erin): the node serves
    # an agent only keys named for it (issue 13, class 4).
    keygen("erin", home / "wrap.key", home / "wrap.pem", b"olga passphrase!", now, bits=2048)  # type: ignore[arg-type]
    olga = load_wrapping_key(home / "wrap.key", home / "wrap.pem", b"olga passphrase!")
    async with running_cluster(pki_dir, tmp_path / "a") as a:
        sd = await a.download(certs_of([*wrapping_keys[:4], olga]), quorum=3)
    # olga's agent is a real process on manual approval, killed while her request waits.
    async with running_cluster(pki_dir, tmp_path / "b", node_id="node-b") as b:
        for i in (0, 1):
            b.start_agent(NAMES[i], wrapping_keys[i], tmp_path)
        await b.start_recovery(sd, ttl=120)
        argv = [
            "custodian-agent", "run", "--node", b.target,
            "--tls-cert", str(pki_dir / "custodian-erin.pem"), "--tls-key", str(pki_dir / "custodian-erin.key"),
            "--ca", str(pki_dir / "ca.pem"), "--attestation-root", str(pki_dir / "attestation-root.pem"),
            "--wrapping-key", str(home / "wrap.key"), "--wrapping-cert", str(home / "wrap.pem"),
            "--state-dir", str(home / "state"), "--approval", "manual",
        ]  # fmt: skip
        cmd = [sys.executable, "-m", "custodian_agent.cli", *argv[1:]]
        env = {**os.environ, "SDQUORUM_PASSPHRASE": "olga passphrase!"}
        first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
        try:
            await wait_for(lambda: any((home / "state" / "pending").glob("*.json")), timeout=30)
            first.kill()
            first.wait()
            again = subprocess.Popen(
                cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT
            )
            try:
                await wait_for(lambda: any((home / "state" / "pending").glob("*.json")), timeout=30)
                (pending,) = list((home / "state" / "pending").glob("*.json"))
                from custodian_agent.approvals import ApprovalBox

                ApprovalBox(home / "state").decide(pending.stem, approved=True)
                last = await b.wait_session(timeout=30)
                assert last.state == pb.COMPLETED, last.message
                assert {c.name: c.status for c in last.custodians}["erin"] == pb.ACCEPTED
            finally:
                again.kill()
                again.wait()
        finally:
            if first.poll() is None:
                first.kill()


async def test_node_killed_during_key_creation_keeps_every_acknowledged_key(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    node = NodeProcess(pki_dir, tmp_path / "n" / "data", node_id="node-a")
    node.start()  # port 0: the node binds, then writes the port it got
    acknowledged: list[str] = []
    try:
        async with node.client() as c, c.errors():
            async for _ in c.admin.DownloadSecurityDomain(
                pb.DownloadRequest(custodian_certificates=certs_of(wrapping_keys[:3]), quorum=2)
            ):
                pass

        async def create_forever() -> None:
            async with node.client("app") as c:
                i = 0
                while True:
                    kind = pb.ED25519 if i % 2 else pb.AES256_GCM
                    try:
                        await c.keys.CreateKey(pb.CreateKeyRequest(name=f"k{i}", type=kind), timeout=5)
                    except Exception:
                        return  # the node died mid-call: this key was never acknowledged
                    acknowledged.append(f"k{i}")
                    i += 1

        writer = asyncio.create_task(create_forever())
        await wait_for(lambda: len(acknowledged) >= 40)
        node.kill()
        await writer
        node.start(listen=node.target)  # the address its agents and clients know
        async with node.client("app") as c, c.errors():
            names = {k.name for k in (await c.keys.ListKeys(pb.ListKeysRequest())).keys}
            assert set(acknowledged) <= names
            sig = await c.keys.Sign(pb.SignRequest(name="k1", message=b"m"))
            assert (
                await c.keys.Verify(pb.VerifyRequest(name="k1", message=b"m", signature=sig.signature))
            ).valid
        db = sqlite3.connect(f"file:{node.data_dir / 'node.db'}?mode=ro", uri=True)
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        db.close()
    finally:
        node.kill()


def _can_mount() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None


@pytest.mark.skipif(not _can_mount(), reason="needs root to mount a small tmpfs as the node's data volume")
async def test_disk_full_and_read_only_data_dir_give_a_clear_error_and_lose_nothing(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(vol)], check=True)
    try:
        seal = os.urandom(32)
        async with running_cluster(pki_dir, vol / "data", sealing_key=seal) as n:
            await n.download(certs_of(wrapping_keys[:3]), quorum=2)
            made: dict[str, bytes] = {}
            error = None
            async with n.client("app") as c:
                for i in range(5000):
                    try:
                        async with c.errors():
                            await c.keys.CreateKey(
                                pb.CreateKeyRequest(name=f"key-{i}-" + "x" * 100, type=pb.AES256_GCM)
                            )
                            ct = await c.keys.Encrypt(
                                pb.EncryptRequest(name=f"key-{i}-" + "x" * 100, plaintext=b"p")
                            )
                    except StateError as e:
                        error = e
                        break
                    made[f"key-{i}-" + "x" * 100] = ct.ciphertext
            assert error is not None, "the volume never filled up"
            assert "full" in str(error) and "nothing was changed" in str(error) and "\n" not in str(error)
            async with n.client("app") as c, c.errors():
                for name, ct_bytes in list(made.items())[-5:] + list(made.items())[:5]:
                    assert (
                        await c.keys.Decrypt(pb.DecryptRequest(name=name, ciphertext=ct_bytes))
                    ).plaintext == b"p"
        # Read-only: the volume is remounted read-only under a stopped node, which then starts on it.
        subprocess.run(["mount", "-o", "remount,size=8m,ro", str(vol)], check=True)
        try:
            async with (
                running_cluster(pki_dir, vol / "data", sealing_key=seal) as ro_node,
                ro_node.client("app") as c,
            ):
                with pytest.raises(StateError, match=r"readonly|read-only|read only") as ro:
                    async with c.errors():
                        await c.keys.CreateKey(pb.CreateKeyRequest(name="after-ro", type=pb.AES256_GCM))
                assert "nothing was changed" in str(ro.value)
        except UsageError as e:  # or the node refuses to start at all, saying why
            assert "cannot open the node database" in str(e) and "\n" not in str(e)
        subprocess.run(["mount", "-o", "remount,rw", str(vol)], check=True)
        async with (
            running_cluster(pki_dir, vol / "data", sealing_key=seal) as again,
            again.client("app") as c,
            c.errors(),
        ):
            names = {k.name for k in (await c.keys.ListKeys(pb.ListKeysRequest())).keys}
            assert set(made) <= names  # nothing stored was lost
            name, ct_bytes = next(iter(made.items()))
            assert (await c.keys.Decrypt(pb.DecryptRequest(name=name, ciphertext=ct_bytes))).plaintext == b"p"
    finally:
        subprocess.run(["umount", "-l", str(vol)], check=False)


@pytest.mark.parametrize(
    ("node_id", "att", "expected"),
    [
        ("node-x", "node-a", "the attestation certificate certifies node-a, not node.id 'node-x'"),
        ("node-a", "mixed", "the attestation key is not the key of the attestation certificate"),
    ],
)
async def test_a_node_that_could_only_make_attestations_agents_refuse_does_not_start(
    pki_dir: Path, tmp_path: Path, node_id: str, att: str, expected: str
) -> None:
    """Agents refuse an attestation whose node is not its certificate's CN: a node configured with
    another id, or with a key that is not its certificate's, stops at start with one line."""
    argv = node_run_argv(
        pki_dir,
        node_id,
        tmp_path / "data",
        attestation="node-a",
        attestation_key="node-b" if att == "mixed" else None,
    )
    r = await asyncio.to_thread(
        subprocess.run,
        argv,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and lines[0].startswith("hsm-node: error: "), lines
    assert expected in lines[0]


@pytest.mark.parametrize("found_by", ["an agent's request stream", "the next session"])
async def test_a_session_ended_by_its_deadline_is_recorded_whoever_finds_it(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey], found_by: str
) -> None:
    """A drill whose deadline passes is applied (its results stored, its end audited) whichever
    path notices the deadline first; before, only the node's own ticker applied it."""
    async with running_cluster(pki_dir, tmp_path / "a") as a:
        await a.download(certs_of(wrapping_keys[:5]), quorum=3)
        s = await a.node.custody.start_drill("quarterly", 30, Role("admin"))
        assert a.server._ticker is not None
        a.server._ticker.cancel()  # the ticker must not be the one to notice
        a.clock.advance(31)
        if found_by == "the next session":
            await a.node.custody.start_drill("the next quarter", 30, Role("admin"))
        else:
            assert (
                a.node.agents.pending_requests(pki.thumbprint_sha256(wrapping_keys[0].certificate_der()))
                == []
            )
        assert s.finished
        rows = a.node.store.records.drill_results()
        events = [json.loads(e)["event"] for e in a.node.store.records.audit_entries("domain")]
    assert sorted(r.custodian for r in rows) == sorted(NAMES[:5])  # one result each
    assert {r.outcome for r in rows} == {"unreachable"}
    assert "drill-completed" in events, events


async def test_a_drill_slot_rejected_for_a_changed_key_has_its_own_audit_entry(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    async with running_cluster(pki_dir, tmp_path / "a") as a:
        await a.download(certs_of(wrapping_keys[:5]), quorum=3)
        s = await a.node.custody.start_drill("quarterly", 60, Role("admin"))
        other = pki.thumbprint_sha256(wrapping_keys[5].certificate_der())
        for _ in range(2):  # carol's agent reconnects with another key, twice: one rejection, one entry
            a.node.agents.agent_connected(Role("custodian", "carol"), other)
        entries = [json.loads(e) for e in a.node.store.records.audit_entries("domain")]
    rejected = [e for e in entries if e["event"] == "drill-slot-rejected"]
    assert [(e["details"]["custodian"], e["details"]["x"]) for e in rejected] == [("carol", 3)]
    assert "no longer matches slot 3" in rejected[0]["details"]["reason"]
    assert s.progress().rejected[0][0] == 3


async def test_a_public_key_swapped_on_disk_does_not_make_verify_accept_its_signatures(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    """Whoever can write the data directory (without the sealing key) puts a key of theirs in a
    row's public column: Verify still checks against the sealed private key's public key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from hsm_node.keyops import KeyType

    async with running_cluster(pki_dir, tmp_path / "a") as a:
        await a.download(certs_of(wrapping_keys[:3]), quorum=2)
        await a.node.keys.create_key("ed", KeyType.ED25519, Role("app"))
        forger = ed25519.Ed25519PrivateKey.generate()
        spki = forger.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        db = sqlite3.connect(tmp_path / "a" / "node.db")
        db.execute("UPDATE keys SET public_der = ? WHERE name = 'ed'", (spki,))
        db.commit()
        db.close()
        message = b"pay mallory 1000000"
        assert a.node.key_ops.verify("ed", message, forger.sign(message), Role("app")) is False
        assert (
            a.node.key_ops.verify("ed", message, a.node.key_ops.sign("ed", message, Role("app")), Role("app"))
            is True
        )  # the real key still works


async def test_a_rotation_may_not_keep_a_key_recorded_lost(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    """alice's key is recorded lost: a rotation that keeps it (say, one that only changes the
    quorum) is refused, naming her; leaving her out, or giving her a new key, is accepted."""
    from sdquorum.review import CustodyRecord

    async with running_cluster(pki_dir, tmp_path / "a") as a:
        await a.download(certs_of(wrapping_keys[:5]), quorum=3)
        a.node.custody.add_custody_record(
            CustodyRecord(0, "lost", "alice", note="USB token lost"), Role("admin")
        )
        with pytest.raises(UsageError, match="keeps alice's key, which is recorded lost"):
            await a.node.rotation.propose_rotation(
                certs_of(wrapping_keys[:5]), 4, "quorum 4", 60, Role("admin")
            )
        assert a.node.session is None  # nothing started
        session = await a.node.rotation.propose_rotation(
            certs_of([*wrapping_keys[1:5], wrapping_keys[5]]), 3, "alice's key is gone", 60, Role("admin")
        )
        assert session.kind == "rotation"
