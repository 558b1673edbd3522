"""``custodian-agent`` as a custodian uses it: keygen, and manual approval of a recovery over gRPC.

The passphrase comes from ``SDQUORUM_PASSPHRASE`` (custodian_agent/keyfile.py); a failure is one
line ``custodian-agent: error: ...`` and its exit code (2 usage, 4 verification).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cli_support import NAMES, Result, SdctlRunner, assert_one_line_error, certs_of, running_cluster
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from coordinator import CustodianStatus
from custodian_agent.approvals import ApprovalBox
from custodian_agent.keyfile import PASSPHRASE_ENV, load_wrapping_key
from sdquorum.errors import StateError, UsageError, VerificationError
from sdquorum.keys import SoftwareWrappingKey

PASSPHRASE = "correct horse battery"
AgentCli = Callable[..., Result]


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def passphrase(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(PASSPHRASE_ENV, PASSPHRASE)
    return PASSPHRASE


@dataclass(frozen=True)
class KeyPair:
    key: Path
    cert: Path


@pytest.fixture(scope="module")
def made_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeyPair]:
    """One wrapping key made by ``custodian-agent keygen`` (RSA-2048 to keep the run short)."""
    from custodian_agent.cli import main

    d = tmp_path_factory.mktemp("keygen")
    pair = KeyPair(d / "alice.wrap.key", d / "alice.wrap.pem")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(PASSPHRASE_ENV, PASSPHRASE)
        argv = ["keygen", "--name", "alice", "--key", str(pair.key), "--cert", str(pair.cert)]
        assert main([*argv, "--bits", "2048"]) == 0
    yield pair


# ------------------------------------------------------------------------------- keygen


def test_keygen_writes_a_0600_encrypted_key_and_its_certificate(made_key: KeyPair) -> None:
    assert mode_of(made_key.key) == 0o600
    pem = made_key.key.read_bytes()
    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    with pytest.raises(TypeError):  # encrypted: does not load without the passphrase
        serialization.load_pem_private_key(pem, password=None)
    key = serialization.load_pem_private_key(pem, password=PASSPHRASE.encode())
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    cert = x509.load_pem_x509_certificate(made_key.cert.read_bytes())
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "alice"
    assert cert.public_key() == key.public_key()
    loaded = load_wrapping_key(made_key.key, made_key.cert, PASSPHRASE.encode())
    assert loaded.certificate_der() == cert.public_bytes(serialization.Encoding.DER)


def test_keygen_output_tells_what_to_hand_to_the_admin(
    agent_cli: AgentCli, passphrase: str, tmp_path: Path
) -> None:
    key, cert = tmp_path / "bob.key", tmp_path / "bob.pem"
    r = agent_cli("keygen", "--name", "bob", "--key", str(key), "--cert", str(cert), "--bits", "2048")
    assert (r.code, r.err) == (0, "")
    assert len(r.out) == 1 and str(cert) in r.out[0] and "0600" in r.out[0]
    assert mode_of(key) == 0o600


@dataclass(frozen=True)
class BadKeygen:
    needle: str
    bits: str = "2048"
    passphrase: str = PASSPHRASE
    existing: str | None = None  # "key" or "cert": that file exists already


BAD_KEYGENS = {
    "key file exists": BadKeygen("exists already", existing="key"),
    "certificate file exists": BadKeygen("exists already", existing="cert"),
    "--bits 1024": BadKeygen("at least 2048", bits="1024"),
    "passphrase of 11 characters": BadKeygen("at least 12 characters", passphrase="elevenchars"),
    "empty passphrase": BadKeygen("at least 12 characters", passphrase=""),
}


@pytest.mark.parametrize("case", BAD_KEYGENS.values(), ids=BAD_KEYGENS.keys())
def test_keygen_refuses(
    case: BadKeygen, agent_cli: AgentCli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(PASSPHRASE_ENV, case.passphrase)
    paths = {"key": tmp_path / "carol.key", "cert": tmp_path / "carol.pem"}
    if case.existing:
        paths[case.existing].write_bytes(b"an earlier file: keep me")
    r = agent_cli(
        *("keygen", "--name", "carol", "--key", str(paths["key"]), "--cert", str(paths["cert"])),
        *("--bits", case.bits),
    )
    line = assert_one_line_error(r, "custodian-agent")
    assert r.code == 2, line
    assert case.needle in line
    for what, path in paths.items():
        if what == case.existing:
            assert path.read_bytes() == b"an earlier file: keep me"
        else:
            assert not path.exists(), f"{what} file written although keygen was refused"


def test_keygen_that_cannot_write_the_certificate_leaves_nothing_behind(
    agent_cli: AgentCli, passphrase: str, tmp_path: Path
) -> None:
    key = tmp_path / "erin.key"
    r = agent_cli(
        *("keygen", "--name", "erin", "--key", str(key), "--cert", str(tmp_path / "no-dir" / "erin.pem")),
        *("--bits", "2048"),
    )
    line = assert_one_line_error(r, "custodian-agent")
    assert r.code == 2 and "no-dir" in line
    assert not key.exists(), "a key without its certificate was left behind"


def test_keygen_at_a_prompt_refuses_two_different_passphrases(
    agent_cli: AgentCli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    answers = iter(["first passphrase!", "second passphrase"])
    monkeypatch.setattr("custodian_agent.keyfile.getpass.getpass", lambda prompt="": next(answers))
    monkeypatch.setattr("custodian_agent.keyfile.has_terminal", lambda: True)  # a person at a terminal
    r = agent_cli("keygen", "--name", "dave", "--key", str(tmp_path / "k"), "--cert", str(tmp_path / "c"))
    line = assert_one_line_error(r, "custodian-agent")
    assert r.code == 2 and "differ" in line
    assert not (tmp_path / "k").exists()


def test_loading_with_a_wrong_passphrase_is_a_one_line_verification_error(made_key: KeyPair) -> None:
    with pytest.raises(VerificationError) as e:
        load_wrapping_key(made_key.key, made_key.cert, b"not the passphrase")
    assert "\n" not in str(e.value)
    assert str(made_key.key) in str(e.value) and "wrong passphrase" in str(e.value)
    with pytest.raises(VerificationError):
        load_wrapping_key(made_key.key, made_key.cert, b"")


def test_loading_a_key_readable_by_others_is_refused(made_key: KeyPair, tmp_path: Path) -> None:
    copy = tmp_path / "copy.key"
    copy.write_bytes(made_key.key.read_bytes())
    copy.chmod(0o644)
    with pytest.raises(UsageError, match="chmod 600"):
        load_wrapping_key(copy, made_key.cert, PASSPHRASE.encode())


def test_run_with_a_wrong_passphrase_exits_4_with_one_line(
    made_key: KeyPair, agent_cli: AgentCli, monkeypatch: pytest.MonkeyPatch, pki_dir: Path, tmp_path: Path
) -> None:
    monkeypatch.setenv(PASSPHRASE_ENV, "not the passphrase")
    r = agent_cli(
        *("run", "--node", "127.0.0.1:9", "--ca", str(pki_dir / "ca.pem")),
        *(
            "--tls-cert",
            str(pki_dir / "custodian-alice.pem"),
            "--tls-key",
            str(pki_dir / "custodian-alice.key"),
        ),
        *("--attestation-root", str(pki_dir / "attestation-root.pem")),
        *("--wrapping-key", str(made_key.key), "--wrapping-cert", str(made_key.cert)),
        *("--state-dir", str(tmp_path / "state")),
    )
    line = assert_one_line_error(r, "custodian-agent")
    assert r.code == 4, line
    assert "wrong passphrase" in line and str(made_key.key) in line
    assert r.out == [], "the agent started serving"


# ------------------------------------------------------------------------------- manual approval


async def wait_pending(agent_cli: AgentCli, state_dir: Path, timeout: float = 15.0) -> dict[str, Any]:
    """Poll ``custodian-agent pending --output json`` until one request shows; returns it."""
    async with asyncio.timeout(timeout):
        while True:
            r = agent_cli("pending", "--state-dir", str(state_dir), "--output", "json")
            assert r.code == 0, r.err
            requests = json.loads("\n".join(r.out))["requests"]
            if requests:
                (obj,) = requests
                assert isinstance(obj, dict)
                return obj
            await asyncio.sleep(0.05)


def exchange_sha256(c: Any) -> str:
    """SHA-256 (hex) of the exchange key in the running session's attested statement."""
    session = c.node.session
    assert session is not None and session.attestation is not None
    return hashlib.sha256(session.attestation.statement.exchange_public_key).hexdigest()


async def test_manual_approval_flow_over_grpc(
    pki_dir: Path,
    tmp_path: Path,
    wrapping_keys: list[SoftwareWrappingKey],
    sdctl: SdctlRunner,
    agent_cli: AgentCli,
) -> None:
    async with running_cluster(pki_dir, tmp_path / "a") as a:
        sd = await a.download(certs_of(wrapping_keys[:5]), quorum=3)
        domain_a = a.node.domain_info
        assert domain_a is not None
    sd_file = tmp_path / "sd.json"
    sd_file.write_bytes(sd)

    async with running_cluster(pki_dir, tmp_path / "b", node_id="node-b") as b:
        names = NAMES[:4]  # alice..dave run agents; erin (slot 5) is away
        for name, key in zip(names, wrapping_keys[:4], strict=True):
            b.start_agent(name, key, tmp_path, approval="manual", approves=False)
        dirs = {name: tmp_path / f"agent-{name}" for name in names}
        recover = asyncio.create_task(
            sdctl(
                *("--output", "json", "recover", "--sd-file", str(sd_file)),
                *("--reason", "datacentre A lost"),
                node=b.target,
            )
        )

        requests = {name: await wait_pending(agent_cli, dirs[name]) for name in names}
        for slot, name in enumerate(names, start=1):
            req = requests[name]
            assert req["reason"] == "datacentre A lost"
            assert req["node_id"] == "node-b"
            assert req["slot"] == slot
            assert "admin" in req["initiator"]
            assert req["domain_id"] == domain_a.domain_id.hex()
            # where the share goes, shown before approving (issue 13, class 1)
            assert req["destination_sha256"] == exchange_sha256(b) and "node node-b" in req["destination"]
            assert "this node's attested exchange key" in req["destination"]
        assert b.node.state != "ACTIVATED", "the node opened the domain before anyone approved"

        # dave refuses first, so his refusal is recorded before the quorum is reached
        r = agent_cli(
            "deny", requests["dave"]["request_id"], "--state-dir", str(dirs["dave"]), "--reason", "not told"
        )
        assert (r.code, r.out) == (0, [f"request {requests['dave']['request_id']}: denied"])

        def status_of(x: int) -> CustodianStatus:
            session = b.node.session
            assert session is not None
            return next(c.status for c in session.status().custodians if c.x == x)

        async with asyncio.timeout(10):
            while status_of(4) is not CustodianStatus.DENIED:
                await asyncio.sleep(0.05)

        for name in names[:3]:
            r = agent_cli("approve", requests[name]["request_id"], "--state-dir", str(dirs[name]))
            assert (r.code, r.err) == (0, ""), r.err
            assert r.out == [f"request {requests[name]['request_id']}: approved"]

        async with asyncio.timeout(20):
            result = await recover
        assert result.code == 0, result.err
        final = json.loads(result.out[-1])
        assert final["state"] == "COMPLETED"
        by_name = {c["name"]: c for c in final["custodians"]}
        assert [by_name[n]["status"] for n in names] == ["ACCEPTED", "ACCEPTED", "ACCEPTED", "DENIED"]
        assert "not told" in by_name["dave"]["detail"]
        assert by_name["erin"]["status"] != "ACCEPTED"
        assert b.node.state == "ACTIVATED"
        assert b.node.domain_info == domain_a

        for name in names:  # every request settled: nothing left to answer
            assert agent_cli("pending", "--state-dir", str(dirs[name])).out == ["no pending requests"]
        again = agent_cli("approve", requests["alice"]["request_id"], "--state-dir", str(dirs["alice"]))
        line = assert_one_line_error(again, "custodian-agent")
        assert again.code == 3 and "not open" in line and "custodian-agent pending" in line


UNKNOWN_IDS = {  # (the id, the exit code: 3 a request that is not open, 2 not a request id at all)
    "well-formed id nobody asked for": ("0123456789abcdef", 3),
    "not hex": ("not-a-request", 2),
    "path traversal": ("../pending/0123456789abcdef", 2),
    "uppercase hex": ("0123456789ABCDEF", 2),
}


@pytest.mark.parametrize("verb", ["approve", "deny"])
@pytest.mark.parametrize(("request_id", "code"), UNKNOWN_IDS.values(), ids=UNKNOWN_IDS.keys())
def test_deciding_an_unknown_request_exits_with_one_line(
    agent_cli: AgentCli, tmp_path: Path, verb: str, request_id: str, code: int
) -> None:
    box = ApprovalBox(tmp_path)
    box.post("fedcba9876543210", {"request_id": "fedcba9876543210", "reason": "drill"})
    r = agent_cli(verb, request_id, "--state-dir", str(tmp_path))
    line = assert_one_line_error(r, "custodian-agent")
    assert r.code == code, line
    assert "custodian-agent pending" in line
    assert not (tmp_path / "decisions").exists() or not any((tmp_path / "decisions").iterdir())
    assert [p["request_id"] for p in box.pending()] == ["fedcba9876543210"]


def test_pending_on_a_fresh_state_dir_says_so(agent_cli: AgentCli, tmp_path: Path) -> None:
    r = agent_cli("pending", "--state-dir", str(tmp_path / "never-used"))
    assert (r.code, r.out, r.err) == (0, ["no pending requests"], "")


def test_a_decision_reaches_the_waiting_agent(tmp_path: Path) -> None:
    """ApprovalBox alone: the written decision is what ``wait`` returns, and the request is gone."""
    box = ApprovalBox(tmp_path)
    digest = box.post("00112233aabbccdd", {"request_id": "00112233aabbccdd"})
    box.decide("00112233aabbccdd", approved=False, reason="not today")
    assert stat.S_IMODE((tmp_path / "decisions" / "00112233aabbccdd").stat().st_mode) == 0o600
    decision = asyncio.run(box.wait("00112233aabbccdd", deadline=float("inf"), details_sha256=digest))
    assert (decision.approved, decision.reason) == (False, "not today")
    assert box.pending() == []
    with pytest.raises(StateError, match="not open"):  # answered: closed (exit 3)
        box.decide("00112233aabbccdd", approved=True)


def test_a_decision_counts_only_for_the_details_it_was_made_on(tmp_path: Path) -> None:
    """A decision left from an earlier request with the same id (an agent stopped mid-wait) is no
    approval of a later request: posting removes it, and one made on other details is a denial."""
    box = ApprovalBox(tmp_path)
    rid = "abababababababab"
    box.post(rid, {"request_id": rid, "reason": "quarterly drill", "session_id": "s1"})
    box.decide(rid, approved=True)
    later = box.post(rid, {"request_id": rid, "reason": "disaster", "session_id": "s2"})
    assert not (tmp_path / "decisions" / rid).exists()  # the old approval is gone
    # a decision written on the first details, after the second request was posted
    (tmp_path / "decisions" / rid).write_text(
        json.dumps({"approved": True, "reason": "", "details_sha256": "0" * 64})
    )
    decision = asyncio.run(box.wait(rid, deadline=float("inf"), details_sha256=later))
    assert (decision.approved, decision.reason) == (False, "the decision was made on other request details")


def test_a_request_is_decided_once(tmp_path: Path) -> None:
    box = ApprovalBox(tmp_path)
    box.post("0011223344556677", {"request_id": "0011223344556677"})
    box.decide("0011223344556677", approved=False, reason="no")
    with pytest.raises(UsageError, match="already decided"):
        box.decide("0011223344556677", approved=True)


@pytest.mark.parametrize("request_id", ["../../etc/passwd", "/tmp/x", "abcdef12\n", "ABCDEF12", "ab/cdef12"])
def test_the_spool_refuses_request_ids_that_are_not_ids(tmp_path: Path, request_id: str) -> None:
    box = ApprovalBox(tmp_path / "state")
    with pytest.raises(UsageError, match="is not a request id"):
        box.post(request_id, {"request_id": request_id})
    with pytest.raises(UsageError, match="is not a request id"):
        asyncio.run(box.wait(request_id, deadline=float("inf"), details_sha256="0" * 64))
    assert not any(tmp_path.rglob("*"))  # nothing written anywhere


def test_a_decision_on_the_same_details_survives_the_agent_restarting(tmp_path: Path) -> None:
    """The agent was restarted while its human decided: it posts the same request again, and the
    human's decision on those same details is the one it gets."""
    box = ApprovalBox(tmp_path)
    rid = "cdcdcdcdcdcdcdcd"
    details = {"request_id": rid, "reason": "disaster", "session_id": "s2"}
    box.post(rid, details)
    box.decide(rid, approved=True, reason="seen")
    again = box.post(rid, details)
    decision = asyncio.run(box.wait(rid, deadline=float("inf"), details_sha256=again))
    assert (decision.approved, decision.reason) == (True, "seen")


def _run_argv(pki_dir: Path, made_key: KeyPair, tmp_path: Path, **override: str) -> list[str]:
    flags = {
        "--node": "127.0.0.1:9",
        "--ca": str(pki_dir / "ca.pem"),
        "--tls-cert": str(pki_dir / "custodian-alice.pem"),
        "--tls-key": str(pki_dir / "custodian-alice.key"),
        "--attestation-root": str(pki_dir / "attestation-root.pem"),
        "--wrapping-key": str(made_key.key),
        "--wrapping-cert": str(made_key.cert),
        "--state-dir": str(tmp_path / "state"),
    }
    flags.update(override)
    return ["run", *(x for kv in flags.items() for x in kv)]


@pytest.mark.parametrize(
    ("flag", "bad", "said"),
    [
        ("--tls-cert", "not-a-cert", "is not a PEM certificate"),
        ("--ca", "foreign-ca", "is not issued by the CA"),
        ("--tls-key", "other-key", "does not belong to the certificate"),
        ("--attestation-root", "not-a-cert", "--attestation-root is not a certificate"),
        ("--wrapping-key", "missing", "cannot read the wrapping key"),
        ("--wrapping-cert", "other-wrapping-cert", "does not belong to the certificate"),
    ],
)
def test_run_with_a_bad_local_file_exits_2_with_one_line_before_dialling(
    made_key: KeyPair,
    agent_cli: AgentCli,
    monkeypatch: pytest.MonkeyPatch,
    pki_dir: Path,
    foreign_pki_dir: Path,
    tmp_path: Path,
    flag: str,
    bad: str,
    said: str,
) -> None:
    """Before, an agent with a bad --tls-cert or a wrong --ca dialled, failed its handshake, logged
    "connected" and retried for ever; a wrapping key for another certificate went unnoticed."""
    monkeypatch.setenv(PASSPHRASE_ENV, PASSPHRASE)
    junk = tmp_path / "junk.pem"
    junk.write_text("this is not a certificate\n")
    value = {
        "not-a-cert": str(junk),
        "foreign-ca": str(foreign_pki_dir / "ca.pem"),
        "other-key": str(pki_dir / "custodian-bob.key"),
        "missing": str(tmp_path / "no-such.key"),
        "other-wrapping-cert": str(pki_dir / "attestation-root.pem"),
    }[bad]
    r = agent_cli(*_run_argv(pki_dir, made_key, tmp_path, **{flag: value}))
    line = assert_one_line_error(r, "custodian-agent")
    assert r.code == 2, line
    assert said in line, line
    assert r.out == [], "the agent started serving"
