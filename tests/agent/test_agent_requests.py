"""What the running agent does with a request the node sends, before any human or key is involved.

The node is not trusted with anything the attestation does not sign: here, the request id (it names
the agent's approval files) and an approval left on disk from an earlier request.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordinator.recovery import RecoverySession
from custodian_agent import responder
from custodian_agent.agent import Agent, AgentConfig
from custodian_agent.approvals import ApprovalBox
from sdquorum import pki
from sdquorum.envelopes import CustodianPolicy, ExchangeStatement, sign_attestation
from sdquorum.errors import VerificationError
from sdquorum.keys import SoftwareWrappingKey
from sdquorum.offline import CeremonyRequest
from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2 as pb
from sdquorum_rpc.tls import TlsFiles


class _Stub:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    async def Deny(self, m: pb.Denial) -> None:  # the gRPC method's name
        self.calls.append(("deny", m))

    async def SubmitRelease(self, m: pb.ShareRelease) -> None:  # the gRPC method's name
        self.calls.append(("release", m))


class _Client:
    """Stands in for NodeClient: records what the agent sends."""

    def __init__(self) -> None:
        self.custodian = _Stub()

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        yield


def _message(session: RecoverySession, x: int, request_id: str) -> pb.CustodianRequest:
    (req,) = [r for r in session.requests() if r.x == x]
    return pb.CustodianRequest(
        request_id=request_id,
        session_id=req.session_id,
        kind=pb.RECOVERY,
        attestation=req.attestation,
        sd_header=req.header_bytes,
        sd_header_signature=req.header_signature,
        x=x,
    )


def _agent(state: Path, key: SoftwareWrappingKey, policy: CustodianPolicy, t0: int) -> Agent:
    tls = TlsFiles(Path("unused.pem"), Path("unused.key"), Path("unused-ca.pem"), ("", "", ""))
    return Agent(
        AgentConfig("127.0.0.1:1", tls, policy, state, approval="manual"), key, clock=lambda: float(t0)
    )


@pytest.mark.parametrize("shape", ["absolute path", "relative path"])
def test_a_request_id_that_is_a_path_touches_no_file(
    sealed: Any,
    start_session: Any,
    wrapping_keys: list[SoftwareWrappingKey],
    custodian_policy: CustodianPolicy,
    t0: int,
    tmp_path: Path,
    shape: str,
) -> None:
    victim = tmp_path / "alice.wrap.key"
    victim.write_bytes(b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n(the custodian's key)\n")
    state = tmp_path / "state"
    request_id = str(victim) if shape == "absolute path" else "../../alice.wrap.key"
    client = _Client()
    agent = _agent(state, wrapping_keys[0], custodian_policy, t0)
    outcome = asyncio.run(agent.handle(client, _message(start_session(sealed.sd), 1, request_id)))
    assert outcome == "refused"
    assert victim.read_bytes().startswith(b"-----BEGIN")  # still there, unchanged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alice.wrap.key"]  # nothing created
    assert client.custodian.calls == []  # nothing signed or sent for a request that is not one


def test_an_approval_left_from_an_earlier_request_releases_nothing(
    sealed: Any,
    start_session: Any,
    wrapping_keys: list[SoftwareWrappingKey],
    custodian_policy: CustodianPolicy,
    t0: int,
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    rid = "abababababababab"
    box = ApprovalBox(state)
    box.post(rid, {"request_id": rid, "reason": "quarterly drill"})
    box.decide(rid, approved=True)  # and the agent stopped before reading it
    client = _Client()
    agent = _agent(state, wrapping_keys[0], custodian_policy, t0)
    handling = agent.handle(client, _message(start_session(sealed.sd), 1, rid))
    with pytest.raises(TimeoutError):  # it waits for its human, who has not seen this request
        asyncio.run(asyncio.wait_for(handling, 1.0))
    assert client.custodian.calls == []


def test_the_node_shown_to_the_custodian_is_the_one_its_certificate_names(
    sealed: Any, attestation_root: Any, wrapping_keys: list[SoftwareWrappingKey], custodian_policy: CustodianPolicy,
    now: datetime, t0: int,
) -> None:  # fmt: skip
    """A node certified as lab-node cannot tell custodians it is prod-node-b."""
    issued = pki.issue_attestation_cert(attestation_root, "lab-node", now)
    lab_key = serialization.load_pem_private_key(issued.key_pem, password=None)
    assert isinstance(lab_key, Ed25519PrivateKey)
    lab_der = pki.load_cert(issued.cert_pem).public_bytes(serialization.Encoding.DER)
    hdr = sealed.sd.signed_header
    claim = ExchangeStatement(
        "s1", "recovery", "prod-node-b", "prod-b:7443", hdr.header.domain_id, hdr.header.epoch, hdr.sha256,
        os.urandom(32), t0, t0 + 600, "admin", "disaster",
    )  # fmt: skip

    def request(statement: ExchangeStatement) -> CeremonyRequest:
        att = sign_attestation(statement, lab_key, lab_der).to_bytes()
        return CeremonyRequest("ab" * 8, "s1", "recovery", 1, "", att, hdr.header_bytes, hdr.signature)

    mine = pki.thumbprint_sha256(wrapping_keys[0].certificate_der())
    with pytest.raises(
        VerificationError,
        match="says it comes from node 'prod-node-b' but its certificate is node 'lab-node'",
    ):
        responder.check(request(claim), mine, custodian_policy, now)
    req = request(dataclasses.replace(claim, node_id="lab-node"))
    assert responder.describe(req, responder.check(req, mine, custodian_policy, now))["node_id"] == "lab-node"


@pytest.mark.parametrize(
    "change",
    [{"session_id": "another-session"}, {"kind": pb.DRILL}, {"x": 2}],
    ids=["session id not the attestation's", "kind not the attestation's", "slot of another custodian's key"],
)
def test_identifiers_of_a_request_are_checked_against_what_the_node_attested(
    sealed: Any,
    start_session: Any,
    wrapping_keys: list[SoftwareWrappingKey],
    custodian_policy: CustodianPolicy,
    t0: int,
    tmp_path: Path,
    change: dict[str, Any],
) -> None:
    """Issue 13, class 4 (the agent's side): the session id, kind and slot a request carries come
    unsigned; each must be what the attestation and the signed header say, and the slot must hold
    this agent's own key, or nothing is decrypted, shown or released."""
    session = start_session(sealed.sd)
    msg = _message(session, 1, "cd" * 8)
    if "x" in change:
        msg = _message(session, change["x"], "cd" * 8)
    else:
        for field, value in change.items():
            setattr(msg, field, value)
    client = _Client()
    agent = _agent(tmp_path / "state", wrapping_keys[0], custodian_policy, t0)
    assert asyncio.run(agent.handle(client, msg)) == "refused"
    assert [kind for kind, _ in client.custodian.calls] == ["deny"]  # a signed "a check failed", no share
    assert not (tmp_path / "state" / "pending").exists() or not any(
        (tmp_path / "state" / "pending").iterdir()
    )
