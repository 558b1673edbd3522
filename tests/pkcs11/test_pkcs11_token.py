"""Custodian keys in a PKCS#11 token (SoftHSM2): raw RSA in the token, OAEP-SHA256 on the host."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from harness import NAMES, certs_of, running_cluster
from softhsm import Token

from custodian_agent.pkcs11key import open_token_key, token_keygen
from sdquorum import pki
from sdquorum.envelopes import CustodianPolicy
from sdquorum.errors import UsageError, VerificationError
from sdquorum.keys import SoftwareWrappingKey, encrypt_oaep, verify_pss
from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2 as pb


@pytest.fixture(scope="module")
def token_cert(softhsm: Token, now: datetime) -> bytes:
    pem = token_keygen(softhsm.module, softhsm.label, softhsm.pin, "olga-wrap", "erin", now, bits=2048)
    return pki.load_cert(pem).public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize("label", [b"", b"sdquorum share v1|domain|1|5", os.urandom(40)])
def test_token_key_decrypts_oaep_sha256_with_and_without_labels(
    softhsm: Token, token_cert: bytes, label: bytes
) -> None:
    key = open_token_key(softhsm.module, softhsm.label, softhsm.pin, "olga-wrap", token_cert)
    try:
        secret = os.urandom(32)
        assert key.decrypt(encrypt_oaep(token_cert, secret, label), label) == secret
        with pytest.raises(VerificationError, match=r"^decryption failed$"):
            key.decrypt(encrypt_oaep(token_cert, secret, label + b"x"), label)
        assert verify_pss(token_cert, b"release", key.sign(b"release"))
    finally:
        key.close()


def test_token_refuses_a_wrong_pin_and_a_mismatched_certificate(
    softhsm: Token, token_cert: bytes, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    with pytest.raises(VerificationError, match="refused the PIN"):
        open_token_key(softhsm.module, softhsm.label, "not-the-pin", "olga-wrap", token_cert)
    with pytest.raises(UsageError, match="does not match"):
        open_token_key(
            softhsm.module, softhsm.label, softhsm.pin, "olga-wrap", wrapping_keys[0].certificate_der()
        )
    with pytest.raises(UsageError, match="no single RSA key pair"):
        open_token_key(softhsm.module, softhsm.label, softhsm.pin, "nobody", token_cert)


@pytest.mark.asyncio
async def test_native_recovery_completes_with_one_custodian_key_in_the_token(
    softhsm: Token, token_cert: bytes, pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    key = open_token_key(softhsm.module, softhsm.label, softhsm.pin, "olga-wrap", token_cert)
    try:
        async with running_cluster(pki_dir, tmp_path / "a") as a:
            sd = await a.download([*certs_of(wrapping_keys[:4]), token_cert], quorum=3)
        async with running_cluster(pki_dir, tmp_path / "b", node_id="node-b") as b:
            b.start_agent(NAMES[0], wrapping_keys[0], tmp_path)
            b.start_agent(NAMES[1], wrapping_keys[1], tmp_path)
            b.start_agent("erin", key, tmp_path)  # slot 5: erin's key (CN=erin), in the token
            await b.start_recovery(sd)
            last = await b.wait_session()
            assert last.state == pb.COMPLETED, last.message
            assert {c.name: c.status for c in last.custodians}["erin"] == pb.ACCEPTED
    finally:
        key.close()


def test_keygen_in_the_token_through_the_cli(
    softhsm: Token, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from custodian_agent.cli import main

    monkeypatch.setenv("SDQUORUM_PKCS11_PIN", softhsm.pin)
    cert = tmp_path / "paula.wrap.pem"
    argv = [
        "keygen", "--name", "paula", "--cert", str(cert), "--bits", "2048",
        "--pkcs11-module", str(softhsm.module), "--pkcs11-token", softhsm.label, "--pkcs11-key-label", "paula-wrap",
    ]  # fmt: skip
    assert main(argv) == 0
    der = pki.load_cert(cert.read_bytes()).public_bytes(serialization.Encoding.DER)
    key = open_token_key(softhsm.module, softhsm.label, softhsm.pin, "paula-wrap", der)
    key.close()
    assert main([*argv[:4], str(tmp_path / "again.pem"), *argv[5:]]) == 2  # the label is taken: refused
    assert not (tmp_path / "again.pem").exists()


@pytest.mark.asyncio
async def test_azure_restore_completes_with_one_custodian_key_in_the_token(
    softhsm: Token,
    token_cert: bytes,
    pki_dir: Path,
    tmp_path: Path,
    wrapping_keys: list[SoftwareWrappingKey],
    now: datetime,
) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "azure"))
    from azure_sd_generator import make_sd_file, open_transfer_file

    exchange_key, exchange_pem = pki.make_wrapping_key("exchange", now, bits=2048)
    exchange_der = pki.load_cert(exchange_pem).public_bytes(serialization.Encoding.DER)
    items = [("blob", os.urandom(300))]
    generated = make_sd_file([*certs_of(wrapping_keys[:2]), token_cert], 2, items)
    key = open_token_key(softhsm.module, softhsm.label, softhsm.pin, "olga-wrap", token_cert)
    try:
        async with running_cluster(pki_dir, tmp_path / "c") as c:
            azure = CustodianPolicy((pki_dir / "attestation-root.pem").read_bytes(), azure_restore=True)
            c.start_agent(NAMES[0], wrapping_keys[0], tmp_path, policy=azure)
            c.start_agent("erin", key, tmp_path, policy=azure)  # the token-held key (CN=erin) answers slot 3
            async with c.client() as cl, cl.errors():
                started = await cl.admin.StartAzureRestore(
                    pb.AzureRestoreRequest(
                        sd_file=generated.data,
                        exchange_certificate=exchange_der,
                        reason="test",
                        ttl_seconds=60,
                    )
                )
            last = await c.wait_session()
            assert last.state == pb.COMPLETED, last.message
            async with c.client() as cl, cl.errors():
                data = b"".join(
                    [
                        ch.data
                        async for ch in cl.admin.GetAzureTransferFile(
                            pb.WatchSessionRequest(session_id=started.session_id)
                        )
                    ]
                )
        assert open_transfer_file(data, exchange_key, exchange_der) == items
    finally:
        key.close()


def test_import_key_stores_an_openssl_key_in_the_token(
    softhsm: Token, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An Azure custodian's plain openssl key goes into the token, where it decrypts and signs as a
    key made there does, and cannot be read back; the label is then taken."""
    import subprocess

    import pkcs11
    from pkcs11 import Attribute, KeyType, ObjectClass

    from custodian_agent.cli import main

    plain, cer = tmp_path / "quinn.plain.key", tmp_path / "quinn.cer"
    for argv in (
        ["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(plain)],
        ["req", "-new", "-x509", "-key", str(plain), "-subj", "/CN=quinn", "-days", "365", "-out", str(cer)],
    ):
        subprocess.run(["openssl", *argv], check=True, capture_output=True, timeout=60)
    monkeypatch.setenv("SDQUORUM_PKCS11_PIN", softhsm.pin)
    out_cert = tmp_path / "quinn.wrap.pem"
    argv = [
        "import-key", "--key", str(plain), "--cert", str(cer), "--out-cert", str(out_cert),
        "--pkcs11-module", str(softhsm.module), "--pkcs11-token", softhsm.label, "--pkcs11-key-label", "quinn-wrap",
    ]  # fmt: skip
    assert main(argv) == 0
    der = pki.load_cert(out_cert.read_bytes()).public_bytes(serialization.Encoding.DER)
    key = open_token_key(softhsm.module, softhsm.label, softhsm.pin, "quinn-wrap", der)
    try:
        secret = os.urandom(32)
        assert key.decrypt(encrypt_oaep(der, secret, b"label"), b"label") == secret
        assert verify_pss(der, b"release", key.sign(b"release"))
    finally:
        key.close()
    token = pkcs11.lib(str(softhsm.module)).get_token(token_label=softhsm.label)
    with token.open(user_pin=softhsm.pin) as session:
        private = session.get_key(
            object_class=ObjectClass.PRIVATE_KEY, key_type=KeyType.RSA, label="quinn-wrap"
        )
        assert private[Attribute.SENSITIVE] and not private[Attribute.EXTRACTABLE]
    again = tmp_path / "again.pem"
    assert main([*argv[:6], str(again), *argv[7:]]) == 2  # the label is taken: refused
    assert not again.exists()
