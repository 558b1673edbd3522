"""The agent's memory of domains (issue 13, classes 2 and 6): the pinned domain key and the highest
epoch seen, persisted, checked before anything is decrypted, online and offline."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from custodian_agent import responder
from custodian_agent.agent import Agent, AgentConfig
from custodian_agent.cli import main as agent_main
from custodian_agent.keyfile import keygen, load_wrapping_key
from custodian_agent.memory import MEMORY_FILE, DomainMemory
from sdquorum import envelopes, pki
from sdquorum.encoding import canonical_json, parse_json_object
from sdquorum.envelopes import CustodianPolicy, RememberedDomain
from sdquorum.errors import StateError, UsageError, VerificationError
from sdquorum.keys import SoftwareWrappingKey
from sdquorum.offline import CeremonyRequest
from sdquorum.sdfile import HEADER_CONTEXT_V2, SignedHeader, new_domain_secrets, seal_domain
from sdquorum_rpc.tls import TlsFiles

DOMAIN, KEY, OTHER_KEY = bytes(range(16)), bytes(32), bytes([7]) * 32
PASS = "correct horse battery staple"


# ----------------------------------------------------------------------------------------- the file


def test_the_memory_survives_a_restart_and_an_epoch_never_goes_down(tmp_path: Path) -> None:
    m = DomainMemory(tmp_path / "state")
    assert m.known() == {}
    assert m.observe(DOMAIN, KEY, 2) is True
    assert m.observe(DOMAIN, KEY, 1) is False  # lower: kept at 2
    assert m.observe(DOMAIN, KEY, 2) is False
    again = DomainMemory(tmp_path / "state")
    assert again.known() == {DOMAIN: RememberedDomain(KEY, 2)}


def test_another_key_for_a_remembered_domain_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    m = DomainMemory(tmp_path)
    m.observe(DOMAIN, KEY, 1)
    before = (tmp_path / MEMORY_FILE).read_bytes()
    with pytest.raises(VerificationError, match="other than the one this agent pinned"):
        m.observe(DOMAIN, OTHER_KEY, 5)
    assert (tmp_path / MEMORY_FILE).read_bytes() == before
    assert m.known()[DOMAIN] == RememberedDomain(KEY, 1)


def test_the_file_is_0600_in_a_0700_directory_whatever_the_umask_and_written_whole(tmp_path: Path) -> None:
    old = os.umask(0o000)
    try:
        DomainMemory(tmp_path / "state").observe(DOMAIN, KEY, 1)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "state" / MEMORY_FILE).stat().st_mode) == 0o600
    assert os.listdir(tmp_path / "state") == [MEMORY_FILE]  # no temporary file left behind


@pytest.mark.parametrize(
    "content",
    [b"", b"{not json", b'{"format": "other", "version": 1, "domains": {}}', b'{"format": "sdquorum-agent-domains",'
     b' "version": 1, "domains": {"00": {"signing_public_key": "00", "epoch": 1}}}'],
    ids=["empty", "not JSON", "another format", "wrong-sized id"],
)  # fmt: skip
def test_a_damaged_memory_is_a_loud_start_up_error_not_a_silent_reset(
    tmp_path: Path, content: bytes, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    (tmp_path / MEMORY_FILE).write_bytes(content)
    with pytest.raises(StateError, match=f"{MEMORY_FILE} is damaged"):
        DomainMemory(tmp_path)
    tls = TlsFiles(Path("unused.pem"), Path("unused.key"), Path("unused-ca.pem"), ("", "", ""))
    with pytest.raises(StateError, match="is damaged"):  # the running agent does not start either
        Agent(AgentConfig("127.0.0.1:1", tls, CustodianPolicy(b""), tmp_path), wrapping_keys[0])


# ----------------------------------------------------------------------------------------- check_request


def _check(
    sealed: Any,
    start_session: Any,
    keys: list[SoftwareWrappingKey],
    policy: CustodianPolicy,
    remembered: Any,
    now: Any,
) -> Any:
    session = start_session(sealed.sd)
    (req,) = [r for r in session.requests() if r.x == 1]
    return envelopes.check_request(
        envelopes.Attestation.from_bytes(req.attestation), SignedHeader(req.header_bytes, req.header_signature),
        1, pki.thumbprint_sha256(keys[0].certificate_der()), policy, now, remembered=remembered,
    )  # fmt: skip


@pytest.mark.parametrize(
    "name, remembered_epoch, remembered_key, error",
    [
        pytest.param(*row, id=row[0])
        for row in [
            ("never seen: first use passes", None, None, None),
            ("same key, same epoch", 1, "real", None),
            ("epoch 2 seen: epoch 1 is retired", 2, "real", "epoch 1 of domain {d} was retired: this agent has seen epoch 2"),
            ("another key pinned", 1, "other", "signed by a key other than the domain key this agent pinned"),
        ]
    ],
)  # fmt: skip
def test_check_request_against_what_the_agent_remembers(
    sealed: Any, start_session: Any, wrapping_keys: list[SoftwareWrappingKey], custodian_policy: CustodianPolicy,
    name: str, remembered_epoch: int | None, remembered_key: str | None, error: str | None, now: Any,
) -> None:  # fmt: skip
    header = sealed.sd.header
    remembered = {}
    if remembered_epoch is not None:
        key = header.signing_public_key if remembered_key == "real" else OTHER_KEY
        remembered = {header.domain_id: RememberedDomain(key, remembered_epoch)}
    if error is None:
        checked = _check(sealed, start_session, wrapping_keys, custodian_policy, remembered, now)
        assert checked.header == header
    else:
        with pytest.raises(VerificationError, match=error.format(d=header.domain_id.hex())):
            _check(sealed, start_session, wrapping_keys, custodian_policy, remembered, now)


# ----------------------------------------------------------------------------------------- notices


def _resigned(sealed: Any, signer: Ed25519PrivateKey) -> tuple[bytes, bytes]:
    header = parse_json_object(sealed.sd.signed_header.header_bytes, "header")
    from sdquorum.encoding import b64e

    header["signing_public_key"] = b64e(
        signer.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    data = canonical_json(header)
    return data, signer.sign(HEADER_CONTEXT_V2 + data)


def test_a_notice_is_remembered_only_by_a_custodian_of_the_domain_and_under_the_pinned_key(
    sealed: Any, wrapping_keys: list[SoftwareWrappingKey], custodian_policy: CustodianPolicy
) -> None:
    signed = sealed.sd.signed_header
    mine = pki.thumbprint_sha256(wrapping_keys[0].certificate_der())
    stranger = pki.thumbprint_sha256(wrapping_keys[5].certificate_der())  # holds no slot of this 5-slot file
    header = responder.check_notice(signed.header_bytes, signed.signature, mine, custodian_policy, {})
    assert header.domain_id == sealed.sd.header.domain_id
    with pytest.raises(VerificationError, match="holds no slot"):
        responder.check_notice(signed.header_bytes, signed.signature, stranger, custodian_policy, {})
    remembered = {header.domain_id: RememberedDomain(header.signing_public_key, 1)}  # removed by a rotation
    assert responder.check_notice(
        signed.header_bytes, signed.signature, stranger, custodian_policy, remembered
    )
    with pytest.raises(VerificationError, match="does not verify"):
        responder.check_notice(signed.header_bytes, bytes(64), mine, custodian_policy, {})
    forged = _resigned(sealed, Ed25519PrivateKey.generate())
    pinned = {header.domain_id: RememberedDomain(header.signing_public_key, 1)}
    responder.check_notice(*forged, mine, custodian_policy, {})  # the premise: it verifies on its own
    with pytest.raises(VerificationError, match="re-signed"):
        responder.check_notice(*forged, mine, custodian_policy, pinned)
    static = dataclasses.replace(custodian_policy, pinned_signing_keys=frozenset({header.signing_public_key}))
    with pytest.raises(VerificationError, match="has not pinned"):
        responder.check_notice(*forged, mine, static, {})


# ----------------------------------------------------------------------------------------- offline


@pytest.fixture
def olga(tmp_path: Path, now: Any) -> tuple[Path, Path, SoftwareWrappingKey]:
    home = tmp_path / "airgap"
    home.mkdir()
    keygen("olga", home / "olga.key", home / "olga.pem", PASS.encode(), now, bits=2048)
    return (
        home / "olga.key",
        home / "olga.pem",
        load_wrapping_key(home / "olga.key", home / "olga.pem", PASS.encode()),
    )


def test_respond_with_a_state_dir_remembers_and_refuses_a_retired_epoch(
    tmp_path: Path, olga: tuple[Path, Path, SoftwareWrappingKey], wrapping_keys: list[SoftwareWrappingKey],
    start_session: Any, attestation_root: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    key_path, cert_path, key = olga
    secrets = new_domain_secrets(os.urandom)
    sd = seal_domain(
        secrets, [key.certificate_der(), *(k.certificate_der() for k in wrapping_keys[:2])], 2,
        epoch=1, created_by="node-a", created_at=0, rng=os.urandom,
    )  # fmt: skip
    (req,) = [r for r in start_session(sd).requests() if r.x == 1]
    request = tmp_path / "olga.request.json"
    request.write_bytes(req.for_custodian("olga").to_bytes())
    root = tmp_path / "root.pem"
    root.write_bytes(attestation_root.cert_pem)
    monkeypatch.setenv("SDQUORUM_PASSPHRASE", PASS)
    monkeypatch.setattr("builtins.input", lambda prompt="": "yes")  # the custodian types yes
    state = tmp_path / "olga-state"

    def respond(out: str) -> int:
        argv = ["respond", "--request", str(request), "--out", str(tmp_path / out),
                "--attestation-root", str(root), "--wrapping-key", str(key_path), "--wrapping-cert", str(cert_path),
                "--state-dir", str(state)]  # fmt: skip
        return agent_main(argv)

    assert respond("first.json") == 0  # first use: remembered
    assert DomainMemory(state).known() == {secrets.domain_id: RememberedDomain(secrets.signing_public_key, 1)}
    DomainMemory(state).observe(secrets.domain_id, secrets.signing_public_key, 2)  # then olga saw epoch 2
    capsys.readouterr()
    assert respond("second.json") == 4
    err = capsys.readouterr().err
    assert f"epoch 1 of domain {secrets.domain_id.hex()} was retired: this agent has seen epoch 2" in err
    assert not (tmp_path / "second.json").exists()
    (state / MEMORY_FILE).write_text(json.dumps({"format": "sdquorum-agent-domains"})[:-3])
    assert respond("third.json") == 3
    assert "is damaged" in capsys.readouterr().err
    assert CeremonyRequest.from_bytes(request.read_bytes()).request_id == req.request_id


def test_domains_lists_what_the_agent_remembers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert agent_main(["domains", "--state-dir", str(tmp_path)]) == 0
    assert "no domain remembered yet" in capsys.readouterr().out
    DomainMemory(tmp_path).observe(DOMAIN, KEY, 3)
    assert agent_main(["domains", "--state-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out == f"domain {DOMAIN.hex()}: epoch 3, signing key {KEY.hex()}\n"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(epochs=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=12), probe=st.integers(0, 2**32 - 1))
def test_an_epoch_never_goes_back_whatever_the_order_seen(
    tmp_path_factory: pytest.TempPathFactory, sealed: Any, epochs: list[int], probe: int
) -> None:
    """Property: after any sequence of observations the memory holds their maximum, on disk too, and
    a header is refused exactly when its epoch is below it."""
    state = tmp_path_factory.mktemp("memory")
    memory = DomainMemory(state)
    for e in epochs:
        memory.observe(DOMAIN, KEY, e)
    assert DomainMemory(state).known()[DOMAIN] == RememberedDomain(KEY, max(epochs))
    header = dataclasses.replace(sealed.sd.header, domain_id=DOMAIN, signing_public_key=KEY, epoch=probe)
    if probe < max(epochs):
        with pytest.raises(VerificationError, match="was retired"):
            envelopes.check_remembered(header, memory.known())
    else:
        envelopes.check_remembered(header, memory.known())


def test_a_state_directory_others_can_write_to_is_refused_before_the_memory_is_written(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    os.chmod(state, 0o777)  # noqa: S103  # the test: anyone could swap domains.json for one forgetting epoch 2
    with pytest.raises(UsageError):
        DomainMemory(state).observe(DOMAIN, KEY, 2)
    assert not (state / MEMORY_FILE).exists()
