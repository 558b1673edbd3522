"""Issue 13, classes 2 and 6, end to end with real agents: a tampered SD file is refused by the node
before any custodian is asked; agents pin the domain key at activation and refuse a header re-signed
by another key; after a rotation, a recovery from the retired epoch is refused by every agent (and
node) that saw the new epoch, so the holder of the key recorded lost cannot get a quorum."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from harness import NAMES, Cluster, certs_of, run_sdctl, running_cluster
from support import wait_for

from custodian_agent.agent import Agent
from sdquorum import pki
from sdquorum.encoding import b64d, b64e, canonical_json, parse_json_object
from sdquorum.errors import VerificationError
from sdquorum.keys import SoftwareWrappingKey
from sdquorum.pki import Role
from sdquorum.review import CustodyRecord
from sdquorum.sdfile import HEADER_CONTEXT_V2, SecurityDomainFile
from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2 as pb

ALICE, BOB, CAROL, DAVE, ERIN = range(5)


def audit_events(c: Cluster) -> list[dict[str, Any]]:
    return [json.loads(e) for e in c.node.store.records.audit_entries(c.node.audit_chain())]


def remembers(agent: Agent, domain_id: bytes, epoch: int) -> Callable[[], bool]:
    def check() -> bool:
        seen = agent.memory.known().get(domain_id)
        return seen is not None and seen.epoch == epoch

    return check


def _flip_decoded(obj: dict[str, Any], path: tuple[str, ...], position: int = 0) -> None:
    parent = obj
    for k in path[:-1]:
        parent = parent[k]
    raw = bytearray(b64d(parent[path[-1]]))
    raw[position % len(raw)] ^= 0x01
    parent[path[-1]] = b64e(bytes(raw))


TAMPERINGS: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("one payload ciphertext byte", lambda o: _flip_decoded(o, ("payload", "ciphertext"), 100), "payload"),
    ("one payload nonce byte", lambda o: _flip_decoded(o, ("payload", "nonce")), "payload"),
    ("one header byte", lambda o: _flip_decoded(o, ("header",), 200), ""),
    ("one signature byte", lambda o: _flip_decoded(o, ("header_signature",), 5), "signature"),
    ("an unknown top-level field", lambda o: o.update(note="harmless?"), "unknown field"),
    (
        "a character of the header's base64",
        lambda o: o.update(header=o["header"][:40] + "!" + o["header"][41:]),
        "header",
    ),
]


async def test_an_altered_sd_file_is_refused_by_the_node_before_any_custodian_is_asked(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    """Before version 2, a flipped payload byte passed: m custodians released, then recovery failed
    (exit 3, nothing audited). Now whichever part is altered, sdctl exits 4, the node audits
    "sd-file-refused" with the reason, no agent is asked, and the session it opened has ended."""
    async with running_cluster(pki_dir, tmp_path / "a") as a:
        sd = await a.download(certs_of(wrapping_keys[:3]), quorum=2)
    async with running_cluster(pki_dir, tmp_path / "b", node_id="node-b") as b:
        agents = [b.start_agent(n, k, tmp_path) for n, k in zip(NAMES[:3], wrapping_keys[:3], strict=True)]
        await wait_for(
            lambda: len(b.node.agents.connected_custodians()) == 3, interval=0.02, what="the agents connected"
        )
        for name, tamper, reason in TAMPERINGS:
            obj = parse_json_object(sd, "sd")
            tamper(obj)
            path = tmp_path / "tampered.json"
            path.write_bytes(canonical_json(obj))
            code, lines = await run_sdctl(
                pki_dir, b.target, "recover", "--sd-file", str(path), "--reason", "t"
            )
            assert code == 4, (name, lines)
            refused = [e for e in audit_events(b) if e["event"] == "sd-file-refused"]
            assert refused and reason in refused[-1]["details"]["reason"], (name, refused)
            session = b.node.session
            assert session is not None and session.finished, name  # nothing left running or blocking
            assert all(
                b.node.agents.pending_requests(pki.thumbprint_sha256(k.certificate_der())) == []
                for k in wrapping_keys[:3]
            )
        await asyncio.sleep(0.2)
        assert [a.released for a in agents] == [[], [], []]  # no custodian was asked
        # The right file goes through at once: no refused session blocks it.
        good = tmp_path / "sd.json"
        good.write_bytes(sd)
        code, lines = await run_sdctl(pki_dir, b.target, "recover", "--sd-file", str(good), "--reason", "t")
        assert code == 0, lines
        assert b.node.state == "ACTIVATED"


def _resigned_with_a_fresh_key(sd: bytes) -> bytes:
    """The SD file with its header's signing key replaced by a fresh one, which signs it: the header
    verifies on its own (the key travels in it), so only a pinned key tells it apart."""
    obj = parse_json_object(sd, "sd")
    header = parse_json_object(b64d(obj["header"]), "header")
    forger = Ed25519PrivateKey.generate()
    header["signing_public_key"] = b64e(
        forger.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    header_bytes = canonical_json(header)
    obj["header"] = b64e(header_bytes)
    obj["header_signature"] = b64e(forger.sign(HEADER_CONTEXT_V2 + header_bytes))
    return canonical_json(obj)


async def test_agents_pin_the_domain_key_at_activation_and_refuse_a_header_re_signed_by_another(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey], caplog: pytest.LogCaptureFixture
) -> None:
    keys = wrapping_keys[:3]
    async with running_cluster(pki_dir, tmp_path / "a") as a:
        agents = [a.start_agent(n, k, tmp_path) for n, k in zip(NAMES[:3], keys, strict=True)]
        await wait_for(
            lambda: len(a.node.agents.connected_custodians()) == 3, interval=0.02, what="the agents connected"
        )
        sd = await a.download(certs_of(keys), quorum=2)
        header = SecurityDomainFile.from_bytes(sd).header
        for agent in agents:  # told at activation: key pinned, epoch 1
            await wait_for(
                remembers(agent, header.domain_id, 1), interval=0.02, what="the activation notice arrived"
            )
            assert agent.memory.known()[header.domain_id].signing_public_key == header.signing_public_key
    forged = _resigned_with_a_fresh_key(sd)
    SecurityDomainFile.from_bytes(forged)  # the premise: the forged file verifies on its own
    caplog.set_level(logging.WARNING, logger="sdquorum.agent")
    async with running_cluster(pki_dir, tmp_path / "b", node_id="node-b") as b:
        agents = [b.start_agent(n, k, tmp_path) for n, k in zip(NAMES[:3], keys, strict=True)]
        await b.start_recovery(forged, ttl=30)
        final = await b.wait_session()
        assert final.state == pb.FAILED
        assert [a.released for a in agents] == [[], [], []]
        assert b.node.state != "ACTIVATED"
    pinned = [
        r.getMessage()
        for r in caplog.records
        if "other than the domain key this agent pinned" in r.getMessage()
    ]
    assert len(pinned) == 3, caplog.text


async def test_after_a_rotation_the_retired_epoch_cannot_be_recovered_with_the_lost_key(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey], caplog: pytest.LogCaptureFixture
) -> None:
    """The issue's class-2 example: carol's key is recorded lost, a rotation removes it, and erin
    leaves (epoch 2: alice, bob, dave). Carol, holding the lost key, takes the retired epoch-1 file
    (2 of alice, bob, carol, erin) to a new node: alice and bob, whose agents saw epoch 2, refuse,
    saying why, and so does erin, whom the rotation removed but told; carol alone is not a quorum."""
    alice, bob, carol, dave, erin = (wrapping_keys[i] for i in (ALICE, BOB, CAROL, DAVE, ERIN))
    async with running_cluster(pki_dir, tmp_path / "a") as a:
        agents = [a.start_agent(NAMES[i], wrapping_keys[i], tmp_path) for i in (ALICE, BOB, ERIN)]
        await wait_for(
            lambda: len(a.node.agents.connected_custodians()) == 3,
            interval=0.02,
            what="alice, bob and erin connected",
        )
        epoch1 = await a.download(certs_of([alice, bob, carol, erin]), quorum=2)
        domain_id = SecurityDomainFile.from_bytes(epoch1).header.domain_id
        a.node.custody.add_custody_record(
            CustodyRecord(0, "lost", "carol", note="laptop stolen"), Role("admin")
        )
        await a.node.rotation.propose_rotation(
            certs_of([alice, bob, dave]), 2, "carol's key is lost", 30, Role("admin")
        )
        assert (await a.wait_session()).state == pb.COMPLETED
        for agent in agents:  # the new header was announced to the agents of its and the old custodians
            await wait_for(remembers(agent, domain_id, 2), interval=0.02, what="the rotation notice arrived")
    caplog.set_level(logging.WARNING, logger="sdquorum.agent")
    async with running_cluster(pki_dir, tmp_path / "b", node_id="node-b") as b:
        honest = [b.start_agent(NAMES[i], wrapping_keys[i], tmp_path) for i in (ALICE, BOB, ERIN)]
        thief = b.start_agent("carol", carol, tmp_path / "thief")  # never saw the rotation
        await b.start_recovery(epoch1, ttl=30)
        final = await b.wait_session()
        assert final.state == pb.FAILED, final
        assert b.node.state != "ACTIVATED"
        assert [a.released for a in honest] == [[], [], []]
        statuses = {c.name: c.status for c in final.custodians}
        assert [statuses[n] for n in ("alice", "bob", "erin")] == [pb.DENIED] * 3
        assert statuses["carol"] != pb.DENIED  # the lost key's holder was willing: it was not enough
        assert thief.connected
    retired = f"epoch 1 of domain {domain_id.hex()} was retired: this agent has seen epoch 2"
    assert sum(retired in r.getMessage() for r in caplog.records) == 3, caplog.text


async def test_a_node_refuses_the_upload_of_an_epoch_below_the_highest_it_has_seen(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    keys = wrapping_keys[:4]
    async with running_cluster(pki_dir, tmp_path / "a") as a:
        for i in (ALICE, BOB, CAROL):
            a.start_agent(NAMES[i], keys[i], tmp_path)
        epoch1 = await a.download(certs_of(keys[:3]), quorum=2)
        await wait_for(
            lambda: len(a.node.agents.connected_custodians()) == 3, interval=0.02, what="the agents connected"
        )
        s = await a.node.rotation.propose_rotation(
            certs_of([keys[0], keys[1], keys[3]]), 2, "dave in", 30, Role("admin")
        )
        assert (await a.wait_session()).state == pb.COMPLETED
        epoch2 = s.new_sd_file
        assert epoch2 is not None
    async with running_cluster(pki_dir, tmp_path / "b", node_id="node-b") as b:
        await b.start_recovery(epoch2, ttl=10)  # no agent: the session only runs out
        b.clock.advance(11)
        await b.node.tick()
        assert b.node.session is not None and b.node.session.finished
        with pytest.raises(
            VerificationError, match=r"epoch 1 of domain [0-9a-f]+ was retired: this node has seen epoch 2"
        ):
            await b.start_recovery(epoch1, ttl=10)
        session = b.node.session
        assert session is not None and session.finished and session.requests() == []
        refused = [e for e in audit_events(b) if e["event"] == "sd-file-refused"]
        assert "this node has seen epoch 2" in refused[-1]["details"]["reason"]
