"""Approval modes: no agent releases a share, or approves a rotation, without its person (issue 13, class 1).

``manual`` asks the person for every request; ``auto-drills`` answers a possession drill alone and
asks for everything else; the old ``auto`` (which released recovery shares with nobody approving)
is refused wherever a mode is set: ``custodian-agent run`` (flag, environment, file) exits 2 with one
line before any key is loaded, and :class:`AgentConfig` raises.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from harness import NAMES, certs_of, pki_dir, running_cluster, tls
from support import wait_for

from custodian_agent.agent import AgentConfig
from custodian_agent.approvals import ApprovalBox, asks_person
from sdquorum.envelopes import CustodianPolicy
from sdquorum.errors import UsageError
from sdquorum.keys import SoftwareWrappingKey
from sdquorum.pki import Role
from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2 as pb

__all__ = ["pki_dir"]  # the harness's fixture, used here


# ------------------------------------------------------------------------------------- the rule


@pytest.mark.parametrize(
    ("mode", "kind", "asked"),
    [
        ("manual", "drill", True),
        ("manual", "recovery", True),
        ("auto-drills", "drill", False),
        ("auto-drills", "recovery", True),
        ("auto-drills", "azure-recovery", True),
        ("auto-drills", "rotation", True),
        ("auto-drills", "a kind added later", True),  # fails closed
    ],
)
def test_only_a_drill_is_answered_without_a_person(mode: str, kind: str, asked: bool) -> None:
    assert asks_person(mode, kind) is asked


def test_agent_config_refuses_auto_saying_why_and_what_to_use(pki_dir: Path, tmp_path: Path) -> None:
    """On the old code ``AgentConfig(approval="auto")`` was accepted, and released recovery shares."""
    with pytest.raises(UsageError) as e:
        AgentConfig(
            "127.0.0.1:1",
            tls(pki_dir, "custodian-alice"),
            CustodianPolicy((pki_dir / "attestation-root.pem").read_bytes()),
            tmp_path,
            approval="auto",
        )
    line = str(e.value)
    assert "\n" not in line
    assert "'auto' is refused" in line and "no person approving" in line
    assert "manual" in line and "auto-drills" in line


@pytest.mark.parametrize("where", ["flag", "environment", "config file"])
def test_custodian_agent_run_refuses_auto_at_start_up(
    pki_dir: Path,
    tmp_path: Path,
    where: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One line, exit 2, before the wrapping key is opened (no passphrase is set or asked for)."""
    from custodian_agent.cli import main

    monkeypatch.delenv("SDQUORUM_PASSPHRASE", raising=False)
    for var in ("APPROVAL", "CONFIG", "NODE"):
        monkeypatch.delenv(f"SDQUORUM_AGENT_{var}", raising=False)
    flags = [
        "--node", "127.0.0.1:1", "--state-dir", str(tmp_path / "state"),
        "--tls-cert", str(pki_dir / "custodian-alice.pem"), "--tls-key", str(pki_dir / "custodian-alice.key"),
        "--ca", str(pki_dir / "ca.pem"), "--attestation-root", str(pki_dir / "attestation-root.pem"),
        "--wrapping-key", str(tmp_path / "alice.wrap.key"), "--wrapping-cert", str(tmp_path / "alice.wrap.pem"),
    ]  # fmt: skip
    if where == "flag":
        flags += ["--approval", "auto"]
    elif where == "environment":
        monkeypatch.setenv("SDQUORUM_AGENT_APPROVAL", "auto")
    else:
        config = tmp_path / "agent.toml"
        config.write_text('[agent]\napproval = "auto"\n')
        flags += ["--config", str(config)]
    capsys.readouterr()
    code = main(["run", *flags])
    err = capsys.readouterr().err.splitlines()
    assert code == 2
    assert len(err) == 1, err
    assert err[0].startswith("custodian-agent: error: agent.approval = 'auto' is refused"), err[0]
    assert "use manual" in err[0] and "auto-drills" in err[0]
    assert not (tmp_path / "state").exists()  # it never started


# ------------------------------------------------------------------------------------- over gRPC


async def test_auto_drills_answers_a_drill_alone_but_no_rotation_or_recovery_without_a_person(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    """Three ``auto-drills`` agents and nobody at their prompts: the drill completes; a rotation and a
    recovery each wait, with nothing sent, until the persons approve. (On the old code ``auto``
    released the recovery shares alone, and ``auto-drills`` did not exist.)"""
    keys, names = wrapping_keys[:3], NAMES[:3]
    async with running_cluster(pki_dir, tmp_path / "a") as a:
        sd = await a.download(certs_of(keys), quorum=3)
        agents = [
            a.start_agent(n, k, tmp_path / "a-agents", approval="auto-drills", approves=False)
            for n, k in zip(names, keys, strict=True)
        ]
        drill = await a.node.custody.start_drill("quarterly drill", 60, Role("admin"))
        await wait_for(lambda: drill.finished, interval=0.02)
        assert [c.status.name for c in drill.status().custodians] == ["ACCEPTED"] * 3
        # each proved possession, alone (an agent records it once the node has answered its call)
        await wait_for(lambda: all(len(agent.released) == 1 for agent in agents), interval=0.02)
        boxes = [ApprovalBox(tmp_path / "a-agents" / f"agent-{n}") for n in names]
        assert [box.pending() for box in boxes] == [[], [], []]  # nobody was asked

        rotation = await a.node.rotation.propose_rotation(
            certs_of(wrapping_keys[:4]), 3, "add dave", 60, Role("admin")
        )
        await wait_for(lambda: all(len(box.pending()) == 1 for box in boxes), interval=0.02)
        await asyncio.sleep(0.5)
        assert not rotation.finished and not rotation.progress().accepted
        assert all(len(agent.released) == 1 for agent in agents)  # no rotation approval sent
        assert {box.pending()[0]["kind"] for box in boxes} == {"rotation"}
        await a.stop_agents()

    async with running_cluster(pki_dir, tmp_path / "b", node_id="node-b") as b:
        agents = [
            b.start_agent(n, k, tmp_path / "b-agents", approval="auto-drills", approves=False)
            for n, k in zip(names, keys, strict=True)
        ]
        await b.start_recovery(sd)
        boxes = [ApprovalBox(tmp_path / "b-agents" / f"agent-{n}") for n in names]
        await wait_for(lambda: all(len(box.pending()) == 1 for box in boxes), interval=0.02)
        await asyncio.sleep(0.5)  # time enough for an agent that answered alone to be seen
        assert all(agent.released == [] for agent in agents)
        assert b.node.state != "ACTIVATED"
        assert b.node.session is not None and not b.node.session.progress().accepted

        for box in boxes:  # each person reads the request and approves it
            (item,) = box.pending()
            assert item["kind"] == "recovery"
            box.decide(item["request_id"], approved=True)
        last = await b.wait_session()
        assert last.state == pb.COMPLETED, last.message
        assert all(len(agent.released) == 1 for agent in agents)
