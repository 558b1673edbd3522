"""A custodian's commands as a person who does this once a year uses them (issue 14, section 3):
``pending`` shows only what can still be decided, ``approve``/``deny`` refuse a closed request,
``respond`` takes exactly yes or no, the passphrase comes without a prompt where there is nobody to
ask, and ``import-key`` takes a key made with openssl."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cli_support import Result, assert_one_line_error
from cryptography.hazmat.primitives import serialization

from custodian_agent.agent import Agent, AgentConfig
from custodian_agent.approvals import ApprovalBox
from custodian_agent.keyfile import PASSPHRASE_ENV, PASSPHRASE_FILE_ENV, load_wrapping_key
from sdquorum import pki
from sdquorum.envelopes import CustodianPolicy
from sdquorum.keys import SoftwareWrappingKey
from sdquorum.offline import OfflineAnswer
from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2 as pb
from sdquorum_rpc.tls import TlsFiles

AgentCli = Callable[..., Result]
PASSPHRASE = "custodian passphrase"


@pytest.fixture(autouse=True)
def no_passphrase_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (PASSPHRASE_ENV, PASSPHRASE_FILE_ENV, "CREDENTIALS_DIRECTORY"):
        monkeypatch.delenv(var, raising=False)


def _details(rid: str, expires: datetime, **extra: Any) -> dict[str, Any]:
    return {
        "request_id": rid,
        "kind": "recovery",
        "session_id": "s-" + rid,
        "node_id": "node-b",
        "node_address": "node-b.example:7443",
        "domain_id": "ab" * 16,
        "epoch": 2,
        "slot": 1,
        "initiator": "admin (CN=ops)",
        "reason": "datacentre A lost",
        "expires_at": expires.isoformat(),
        **extra,
    }


@pytest.fixture
def spool(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """One open request, one decided, one expired, one open with a destination key."""
    now = datetime.now(UTC)
    box = ApprovalBox(tmp_path)
    ids = {
        "open": "0000000000000001",
        "decided": "0000000000000002",
        "expired": "0000000000000003",
        "destination": "0000000000000004",
    }
    box.post(ids["open"], _details(ids["open"], now + timedelta(minutes=5)))
    box.post(ids["decided"], _details(ids["decided"], now + timedelta(minutes=5)))
    box.decide(ids["decided"], approved=True)
    box.post(ids["expired"], _details(ids["expired"], now - timedelta(seconds=1)))
    external = {  # as responder.destination describes an Azure restore's exchange key
        "destination": "EXTERNAL, UNATTESTED key: the Azure exchange certificate 'CN=hsm' (...)",
        "destination_spki_sha256": "9f" * 32,
        "destination_certificate_sha256": "8e" * 32,
        "destination_subject": "CN=hsm",
        "exchange_key_sha256": "7d" * 32,
    }
    box.post(ids["destination"], _details(ids["destination"], now + timedelta(minutes=9), **external))
    return tmp_path, ids


# ------------------------------------------------------------------------------ pending


def test_pending_lists_only_open_requests_as_a_table(
    agent_cli: AgentCli, spool: tuple[Path, dict[str, str]]
) -> None:
    state, ids = spool
    r = agent_cli("pending", "--state-dir", str(state))
    assert (r.code, r.err) == (0, "")
    header, *rows, footer = r.out
    assert header.split()[:4] == ["REQUEST", "KIND", "ASKED", "BY"]
    for column in ("NODE", "DOMAIN", "EPOCH", "DESTINATION KEY", "DEADLINE", "REASON"):
        assert column in header
    *rows, warning = rows
    assert [row.split()[0] for row in rows] == [ids["open"], ids["destination"]]  # soonest deadline first
    assert f"EXTERNAL {'9f' * 32}" in rows[1] and "node-b" in rows[0] and "datacentre A lost" in rows[0]
    assert warning.startswith(f"{ids['destination']}: destination: EXTERNAL, UNATTESTED key")  # in full
    assert "left)" in rows[0]  # the deadline, with the time left to decide
    assert footer.startswith("2 open;") and f"--state-dir {state}" in footer


def test_pending_shows_a_rotations_proposal_under_the_table(agent_cli: AgentCli, tmp_path: Path) -> None:
    box = ApprovalBox(tmp_path)
    rid = "00000000000000bb"
    summary = "rotate domain ab.. from epoch 1 to 2: quorum 3 of 5 (CN=frank [5ae9..., NEW KEY])"
    box.post(rid, _details(rid, datetime.now(UTC) + timedelta(minutes=5), kind="rotation", proposal=summary))
    r = agent_cli("pending", "--state-dir", str(tmp_path))
    assert r.out[-2] == f"{rid}: proposal: {summary}"


def test_pending_shows_no_control_characters_from_the_node(agent_cli: AgentCli, tmp_path: Path) -> None:
    """A reason carrying an escape sequence cannot redraw the table the custodian reads."""
    box = ApprovalBox(tmp_path)
    rid = "00000000000000aa"
    box.post(
        rid, _details(rid, datetime.now(UTC) + timedelta(minutes=5), reason="drill\x1b[2K\rall clear\x07")
    )
    r = agent_cli("pending", "--state-dir", str(tmp_path))
    assert r.code == 0
    text = "\n".join(r.out)
    assert "\x1b" not in text and "\x07" not in text and "\r" not in text
    assert "drill\\x1b[2K all clear\\x07" in text  # shown, escaped, for the custodian to see


def test_pending_json_is_one_document_with_the_same_keys_for_every_request(
    agent_cli: AgentCli, spool: tuple[Path, dict[str, str]]
) -> None:
    state, ids = spool
    r = agent_cli("pending", "--state-dir", str(state), "--output", "json")
    assert r.code == 0
    doc = json.loads("\n".join(r.out))
    requests = doc["requests"]
    assert [q["request_id"] for q in requests] == [ids["open"], ids["destination"]]
    assert {frozenset(q) for q in requests} == {frozenset(requests[0])}  # stable keys
    assert requests[0]["destination_spki_sha256"] is None
    assert (
        requests[1]["destination_spki_sha256"] == "9f" * 32 and requests[1]["destination_subject"] == "CN=hsm"
    )
    assert requests[0]["epoch"] == 2 and requests[0]["node_id"] == "node-b"
    empty = agent_cli("pending", "--state-dir", str(state / "none"), "--output", "json")
    assert json.loads("\n".join(empty.out)) == {"requests": []}


@pytest.mark.parametrize("verb", ["approve", "deny"])
@pytest.mark.parametrize("which", ["decided", "expired"])
def test_deciding_a_closed_request_exits_3_and_records_nothing(
    agent_cli: AgentCli, spool: tuple[Path, dict[str, str]], verb: str, which: str
) -> None:
    state, ids = spool
    decisions_before = sorted(p.name for p in (state / "decisions").iterdir())
    r = agent_cli(verb, ids[which], "--state-dir", str(state))
    line = assert_one_line_error(r, "custodian-agent")
    assert r.code == 3, line
    assert r.out == []  # never "approved"
    assert ("already decided" if which == "decided" else "expired") in line
    assert "custodian-agent pending" in line
    assert sorted(p.name for p in (state / "decisions").iterdir()) == decisions_before


def test_the_approval_hint_names_the_state_dir_in_use(
    sealed: Any,
    start_session: Any,
    wrapping_keys: list[SoftwareWrappingKey],
    custodian_policy: CustodianPolicy,
    t0: int,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The agent's 'approval needed' line is a command the custodian can paste as it is."""
    state = tmp_path / "agent state"
    tls = TlsFiles(Path("unused.pem"), Path("unused.key"), Path("unused-ca.pem"), ("", "", ""))
    agent = Agent(
        AgentConfig("127.0.0.1:1", tls, custodian_policy, state, approval="manual"),
        wrapping_keys[0],
        clock=lambda: float(t0),
    )
    (req,) = [r for r in start_session(sealed.sd).requests() if r.x == 1]
    msg = pb.CustodianRequest(
        request_id=req.request_id,
        session_id=req.session_id,
        kind=pb.RECOVERY,
        attestation=req.attestation,
        sd_header=req.header_bytes,
        sd_header_signature=req.header_signature,
        x=1,
    )
    with pytest.raises(TimeoutError):  # it waits for its human
        asyncio.run(asyncio.wait_for(agent.handle(object(), msg), 1.0))  # type: ignore[arg-type]
    out = capsys.readouterr().out
    assert f"'custodian-agent approve {req.request_id} --state-dir '{state}''" in out


# ------------------------------------------------------------------------------ respond


@pytest.fixture
def offline_request(
    tmp_path: Path,
    sealed: Any,
    start_session: Any,
    wrapping_private_keys: Any,
    custodian_policy: CustodianPolicy,
) -> list[str]:
    """argv for 'custodian-agent respond' on a real recovery request for alice (slot 1)."""
    (req,) = [r for r in start_session(sealed.sd).requests() if r.x == 1]
    request = tmp_path / "alice-x1.request.json"
    request.write_bytes(req.for_custodian("alice").to_bytes())
    key, der = wrapping_private_keys[0]
    key_file, cert_file, root = (
        tmp_path / "alice.wrap.key",
        tmp_path / "alice.wrap.pem",
        tmp_path / "root.pem",
    )
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(PASSPHRASE.encode()),
        )
    )
    key_file.chmod(0o600)
    cert_file.write_bytes(pki.load_cert(der).public_bytes(serialization.Encoding.PEM))
    root.write_bytes(custodian_policy.attestation_root_pem)
    return [
        *("respond", "--request", str(request), "--out", str(tmp_path / "alice.answer.json")),
        *(
            "--attestation-root",
            str(root),
            "--wrapping-key",
            str(key_file),
            "--wrapping-cert",
            str(cert_file),
        ),
    ]


def _typed(monkeypatch: pytest.MonkeyPatch, *replies: str) -> list[str]:
    """The person at the keyboard types ``replies`` in turn, then the input ends."""
    asked: list[str] = []
    queue = list(replies)

    def fake_input(prompt: str = "") -> str:
        asked.append(prompt)
        if not queue:
            raise EOFError
        return queue.pop(0)

    monkeypatch.setattr("builtins.input", fake_input)
    return asked


@pytest.mark.parametrize(
    ("replies", "denied", "asked"),
    [
        (["y", " YES "], False, 2),  # 'y' is not yes: asked again (it used to write a denial)
        (["n", "No"], True, 2),
        (["ok", "sure", "yes"], False, 3),
    ],
)
def test_respond_takes_exactly_yes_or_no_and_asks_again_otherwise(
    agent_cli: AgentCli,
    offline_request: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    replies: list[str],
    denied: bool,
    asked: int,
) -> None:
    monkeypatch.setenv(PASSPHRASE_ENV, PASSPHRASE)
    prompts = _typed(monkeypatch, *replies)
    r = agent_cli(*offline_request)
    assert r.code == 0, r.err
    assert len(prompts) == asked
    answer = OfflineAnswer.from_bytes((tmp_path / "alice.answer.json").read_bytes())
    assert answer.denied is denied


def test_respond_with_the_input_ended_writes_nothing(
    agent_cli: AgentCli, offline_request: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSPHRASE_ENV, PASSPHRASE)
    _typed(monkeypatch, "maybe")
    r = agent_cli(*offline_request)
    line = assert_one_line_error(r, "custodian-agent")
    assert r.code == 2 and "nothing was written" in line
    assert not (tmp_path / "alice.answer.json").exists()


# ------------------------------------------------------------------------------ passphrases


def _secret_file(path: Path, text: str, mode: int) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.mark.parametrize("source", ["--passphrase-file", PASSPHRASE_FILE_ENV, "systemd credential"])
def test_keygen_takes_the_passphrase_without_a_prompt(
    agent_cli: AgentCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    monkeypatch.setattr("getpass.getpass", lambda *a: pytest.fail("nobody is there to be prompted"))
    creds = tmp_path / "credentials"
    creds.mkdir()
    secret = _secret_file(
        creds / "sdquorum-passphrase" if source == "systemd credential" else tmp_path / "pp",
        PASSPHRASE + "\n",
        0o400 if source == "systemd credential" else 0o600,
    )
    argv = ["keygen", "--name", "alice", "--bits", "2048"]
    argv += ["--key", str(tmp_path / "k"), "--cert", str(tmp_path / "c.pem")]
    if source == "--passphrase-file":
        argv += ["--passphrase-file", str(secret)]
    elif source == PASSPHRASE_FILE_ENV:
        monkeypatch.setenv(PASSPHRASE_FILE_ENV, str(secret))
    else:
        monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    r = agent_cli(*argv)
    assert r.code == 0, r.err
    load_wrapping_key(tmp_path / "k", tmp_path / "c.pem", PASSPHRASE.encode())  # the newline is not in it


@pytest.mark.parametrize("mode", [0o640, 0o604])
def test_a_passphrase_file_others_can_read_is_refused(agent_cli: AgentCli, tmp_path: Path, mode: int) -> None:
    secret = _secret_file(tmp_path / "pp", PASSPHRASE, mode)
    r = agent_cli(
        *("keygen", "--name", "alice", "--key", str(tmp_path / "k"), "--cert", str(tmp_path / "c.pem")),
        *("--passphrase-file", str(secret)),
    )
    line = assert_one_line_error(r, "custodian-agent")
    assert r.code == 2 and f"chmod 600 {secret}" in line
    assert not (tmp_path / "k").exists()


TOKEN_FLAGS = [
    "--pkcs11-module",
    "/nonexistent/libtoken.so",
    "--pkcs11-token",
    "t",
    "--pkcs11-key-label",
    "k",
]


@pytest.mark.parametrize(
    ("secret", "extra", "needles"),
    [
        ("passphrase", [], ["--passphrase-file", PASSPHRASE_ENV, "sdquorum-passphrase"]),
        ("token PIN", TOKEN_FLAGS, ["SDQUORUM_PKCS11_PIN"]),
    ],
)
def test_no_terminal_and_no_secret_is_one_line_saying_how_to_give_one(
    tmp_path: Path, secret: str, extra: list[str], needles: list[str]
) -> None:
    """As under a service manager: no controlling terminal, stdin empty, no passphrase or PIN source."""
    unset = (PASSPHRASE_ENV, PASSPHRASE_FILE_ENV, "CREDENTIALS_DIRECTORY", "SDQUORUM_PKCS11_PIN")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    argv = ["keygen", "--name", "alice", "--cert", str(tmp_path / "c.pem")]
    argv += extra or ["--key", str(tmp_path / "k")]
    r = subprocess.run(
        [sys.executable, "-m", "custodian_agent.cli", *argv],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        start_new_session=True,  # no controlling terminal: /dev/tty cannot be opened
        timeout=60,
    )
    assert r.returncode == 2, r.stderr
    (line,) = r.stderr.splitlines()
    assert line.startswith(f"custodian-agent: error: no {secret} and no terminal")
    assert all(needle in line for needle in needles), line
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------ import-key


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def openssl_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A plain PEM RSA key and its self-signed certificate, made as Azure's documentation shows."""
    d = tmp_path_factory.mktemp("openssl")
    key, cert = d / "alice.plain.key", d / "alice.cer"
    _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(key))
    _openssl(
        "req", "-new", "-x509", "-key", str(key), "-subj", "/CN=alice", "-days", "365", "-out", str(cert)
    )
    return key, cert


def test_import_key_takes_an_openssl_key_into_the_agents_encrypted_form(
    agent_cli: AgentCli, openssl_key: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain, cert = openssl_key
    monkeypatch.setenv(PASSPHRASE_ENV, PASSPHRASE)
    out_key, out_cert = tmp_path / "alice.wrap.key", tmp_path / "alice.wrap.pem"
    r = agent_cli(
        "import-key",
        "--key",
        str(plain),
        "--cert",
        str(cert),
        "--out",
        str(out_key),
        "--out-cert",
        str(out_cert),
    )
    assert (r.code, r.err) == (0, ""), r.err
    assert "shred" in r.out[-1] and str(plain) in r.out[-1]  # told to destroy the plain key
    assert stat.S_IMODE(out_key.stat().st_mode) == 0o600
    assert out_key.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    body = b"".join(plain.read_bytes().splitlines()[1:-1])
    assert body[:64] not in out_key.read_bytes()  # no plaintext written
    key = load_wrapping_key(out_key, out_cert, PASSPHRASE.encode())  # what 'run' and 'respond' load
    assert pki.spki_sha256(key.certificate_der()) == pki.spki_sha256(cert.read_bytes())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alice.wrap.key", "alice.wrap.pem"]


@pytest.mark.parametrize(
    "problem", ["another key's certificate", "1024-bit key", "encrypted key", "not a key"]
)
def test_import_key_refuses_and_writes_nothing(
    agent_cli: AgentCli,
    openssl_key: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    problem: str,
) -> None:
    plain, cert = openssl_key
    monkeypatch.setenv(PASSPHRASE_ENV, PASSPHRASE)
    if problem == "another key's certificate":
        other = tmp_path / "other.key"
        _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(other))
        plain = other
    elif problem == "1024-bit key":
        plain = tmp_path / "small.key"
        _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024", "-out", str(plain))
        cert = tmp_path / "small.cer"
        _openssl(
            "req", "-new", "-x509", "-key", str(plain), "-subj", "/CN=a", "-days", "1", "-out", str(cert)
        )
    elif problem == "encrypted key":
        enc = tmp_path / "enc.key"
        _openssl("pkey", "-in", str(plain), "-aes256", "-passout", "pass:" + PASSPHRASE, "-out", str(enc))
        plain = enc
    else:
        plain = cert
    out = tmp_path / "out"
    out.mkdir()
    r = agent_cli(
        "import-key",
        "--key",
        str(plain),
        "--cert",
        str(cert),
        "--out",
        str(out / "k"),
        "--out-cert",
        str(out / "c"),
    )
    line = assert_one_line_error(r, "custodian-agent")
    assert r.code == 2, line
    expected = {
        "another key's certificate": "does not belong to the certificate",
        "1024-bit key": "at least 2048 bits",
        "encrypted key": "passphrase-protected",
        "not a key": "not a PEM private key",
    }[problem]
    assert expected in line
    assert not any(out.iterdir())
