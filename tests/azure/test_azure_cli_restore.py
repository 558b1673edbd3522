"""The Azure CLI's own restore code opens a native domain exported with ``--format azure`` (issue 7).

A node is activated with a native domain (``running_cluster``, ``download``), ``sdctl sd-file
--format azure`` exports it, and Microsoft's ``az keyvault security-domain restore-blob`` (the
azure-cli release pinned in ``scripts/ensure-azure-cli.sh``, installed in ``.tools/azure-cli``)
restores it the way Azure documents: m custodians' wrapping private keys on one machine, a transfer
file out for the HSM's exchange certificate. The test then opens that transfer file as the HSM
would (``sdquorum.azure`` with the exchange private key, and the independent generator) and must
find the node's domain payload. Refusals show the check can fail: az refuses a stranger's key, a
flipped share and a flipped payload.

What az is given: each custodian's key file as ``custodian-agent keygen`` writes it (passphrase-
encrypted PKCS#8 PEM, ``NAME.pem``), its certificate in PEM beside it as ``NAME.cer`` (az finds it
by that name), the passphrases with ``--passwords`` (az takes them only as arguments; these are
throw-away test keys), and the exchange certificate in PEM. No plaintext private key is written.
az runs offline: a fresh ``AZURE_CONFIG_DIR``, no telemetry, no command log file, no login, and,
as root, in a network namespace of its own (``unshare --net``), where any network access fails.

Without the pinned CLI these tests skip, saying how to install it; SDQUORUM_REQUIRE_TOOLS=1 (CI)
makes that a failure.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from azure_sd_generator import open_transfer_file as generator_open_transfer_file
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from harness import ROOT, run_sdctl, running_cluster

from custodian_agent.keyfile import keygen
from sdquorum import pki
from sdquorum.azure import TransferFile, open_transfer_file, x5t_256
from sdquorum.encoding import b64e
from sdquorum.keys import SoftwareWrappingKey

AZ_TIMEOUT = 120  # seconds for one restore-blob run; it takes about 1 s
PAYLOAD_TAG = "sdquorum-payload-v1"  # the one EncData item of an exported native domain
NAMES = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy")
BITS = (2048, 3072, 2048, 3072, 2048, 2048, 2048, 2048, 2048, 2048)  # bob and dave hold RSA-3072


# ---------------------------------------------------------------------------------------- the tool


def find_az(root: Path = ROOT) -> Path:
    """The pinned az in ``root/.tools/azure-cli``, else skip (or fail when SDQUORUM_REQUIRE_TOOLS=1)."""
    script = root / "scripts" / "ensure-azure-cli.sh"
    tool = root / ".tools" / "azure-cli"
    pin = (
        re.search(r"^AZURE_CLI_VERSION=(\S+)$", script.read_text(), re.MULTILINE)
        if script.is_file()
        else None
    )
    stamp = tool / "sdquorum-installed"
    installed = stamp.read_text().strip() if stamp.is_file() else None
    az = tool / "bin" / "az"
    if pin is not None and installed == f"azure-cli=={pin[1]}" and os.access(az, os.X_OK):
        return az
    wanted = f"azure-cli=={pin[1]}" if pin else "the pinned azure-cli"
    log = root / ".tools" / "azure-cli-install.log"
    failed = f"; its last install failed, see {log}" if log.is_file() else ""
    reason = (
        f"{wanted} is not installed in {tool} (found: {installed or 'nothing'}{failed}): run "
        "scripts/ensure-azure-cli.sh (make tools) to test against the Azure CLI's own restore-blob"
    )
    if os.environ.get("SDQUORUM_REQUIRE_TOOLS") == "1":
        pytest.fail(f"SDQUORUM_REQUIRE_TOOLS=1 but {reason}")
    pytest.skip(reason)


@functools.cache
def offline_prefix() -> tuple[str, ...]:
    """``unshare --net --`` where it works (root, namespaces allowed): az then runs in a fresh network
    namespace, with only a loopback that is down, so any network use fails. Elsewhere: nothing."""
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        return ()
    probe = subprocess.run([unshare, "--net", "--", "true"], capture_output=True, check=False)
    return (unshare, "--net", "--") if probe.returncode == 0 else ()


@dataclass(frozen=True)
class Custodian:
    name: str
    key: Path  # passphrase-encrypted PKCS#8 PEM, as custodian-agent keygen writes it
    cert: Path  # PEM, beside the key as az wants it: NAME.pem -> NAME.cer
    passphrase: str
    bits: int

    @property
    def cert_der(self) -> bytes:
        return pki.load_cert(self.cert.read_bytes()).public_bytes(serialization.Encoding.DER)


def az_restore_blob(
    az: Path, work: Path, sd_file: Path, exchange_cert: Path, keys: Sequence[Custodian], out: Path
) -> tuple[int, str]:
    """``az keyvault security-domain restore-blob`` with ``keys`` (in that order), offline: its exit
    code and stderr (not its argv, which holds the passphrases: kept out of failure reports)."""
    config = work / "azure-config"
    shutil.rmtree(config, ignore_errors=True)  # every run starts with no az state: no login, no cache
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(work),
        "LANG": "C.UTF-8",
        "AZURE_CONFIG_DIR": str(config),
        "AZURE_CORE_COLLECT_TELEMETRY": "no",
        "AZURE_LOGGING_ENABLE_LOG_FILE": "no",  # az would log each command under AZURE_CONFIG_DIR
        "AZURE_CORE_NO_COLOR": "true",
        "AZURE_CORE_SURVEY_MESSAGE": "no",
    }
    argv = [
        *offline_prefix(),
        str(az),
        "keyvault",
        "security-domain",
        "restore-blob",
        "--sd-file",
        str(sd_file),
        "--sd-exchange-key",
        str(exchange_cert),
        "--sd-wrapping-keys",
        *(str(k.key) for k in keys),
        "--passwords",
        *(k.passphrase for k in keys),
        "--sd-file-restore-blob",
        str(out),
    ]
    run = subprocess.run(
        argv,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=AZ_TIMEOUT,
        check=False,
    )
    return run.returncode, run.stderr


# ---------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def az() -> Path:
    return find_az()


@pytest.fixture(scope="module")
def custodians(tmp_path_factory: pytest.TempPathFactory, now: datetime) -> list[Custodian]:
    """Ten custodians' key files (custodian-agent keygen); custodians[i] holds slot x = i + 1."""
    home = tmp_path_factory.mktemp("custodians")
    out = []
    for name, bits in zip(NAMES, BITS, strict=True):
        passphrase = f"{name} passphrase for az"
        keygen(name, home / f"{name}.pem", home / f"{name}.cer", passphrase.encode(), now, bits=bits)
        out.append(Custodian(name, home / f"{name}.pem", home / f"{name}.cer", passphrase, bits))
    return out


@dataclass(frozen=True)
class Exchange:
    key: SoftwareWrappingKey  # held in memory only, as inside the HSM
    private_key: rsa.RSAPrivateKey
    cert_pem: Path


@pytest.fixture(scope="module")
def exchange(tmp_path_factory: pytest.TempPathFactory, now: datetime) -> Exchange:
    """The HSM's exchange key (what ``az keyvault security-domain init-recovery`` would download)."""
    key, cert_pem = pki.make_wrapping_key("managed HSM exchange key", now, bits=2048)
    path = tmp_path_factory.mktemp("exchange") / "exchange.cer"
    path.write_bytes(cert_pem)
    der = pki.load_cert(cert_pem).public_bytes(serialization.Encoding.DER)
    return Exchange(SoftwareWrappingKey(key, der), key, path)


@dataclass(frozen=True)
class Exported:
    azure_file: Path  # sdctl sd-file --format azure
    payload: bytes  # the node's domain payload, what a restore must give back


ExportFactory = Callable[[int, int], Exported]


@pytest.fixture(scope="module")
def exported(
    pki_dir: Path, tmp_path_factory: pytest.TempPathFactory, custodians: list[Custodian]
) -> ExportFactory:
    """``exported(n, m)``: a node activated m-of-n to custodians[:n], exported with --format azure
    (made once per (n, m) in this module)."""
    made: dict[tuple[int, int], Exported] = {}

    async def export(n: int, m: int, work: Path) -> Exported:
        async with running_cluster(pki_dir, work / "node") as node:
            await node.activation.download([c.cert_der for c in custodians[:n]], quorum=m)
            out = work / "sd-azure.json"
            code, lines = await run_sdctl(
                pki_dir, node.target, "sd-file", "--format", "azure", "--out", str(out)
            )
            assert code == 0, lines
            domain = node.node.lifecycle.domain
            assert domain is not None
            return Exported(out, domain.to_bytes())

    def get(n: int, m: int) -> Exported:
        if (n, m) not in made:
            made[n, m] = asyncio.run(export(n, m, tmp_path_factory.mktemp(f"domain-{m}-of-{n}")))
        return made[n, m]

    return get


# ---------------------------------------------------------------------------------------- accepted


@dataclass(frozen=True)
class Restore:
    name: str
    n: int
    m: int
    xs: tuple[int, ...]  # the slots whose keys az is given, in this order
    bits: frozenset[int]  # the key sizes among them


RESTORES = [
    Restore("2-of-3, RSA-2048, the first and last custodian", 3, 2, (1, 3), frozenset({2048})),
    Restore(
        "3-of-5, RSA-2048 and RSA-3072 mixed, slots given as 5, 4, 2",
        5,
        3,
        (5, 4, 2),
        frozenset({2048, 3072}),
    ),
    Restore(
        "10-of-10, the largest quorum either side allows",
        10,
        10,
        tuple(range(1, 11)),
        frozenset({2048, 3072}),
    ),
]


@pytest.mark.parametrize("case", RESTORES, ids=[c.name for c in RESTORES])
def test_azure_cli_restore_blob_opens_our_export_and_the_hsm_gets_the_domain_payload(
    case: Restore,
    az: Path,
    exported: ExportFactory,
    custodians: list[Custodian],
    exchange: Exchange,
    tmp_path: Path,
) -> None:
    domain = exported(case.n, case.m)
    keys = [custodians[x - 1] for x in case.xs]
    assert {k.bits for k in keys} == case.bits
    out = tmp_path / "transfer.json"
    code, stderr = az_restore_blob(az, tmp_path, domain.azure_file, exchange.cert_pem, keys, out)
    assert code == 0, stderr
    data = out.read_bytes()
    # What the HSM does with the transfer file: unwrap the new master key, open every item.
    transfer = TransferFile.from_bytes(data)  # our strict parser accepts az's file as it is
    assert transfer.x5t_256 == x5t_256(exchange.key.certificate_der())
    assert open_transfer_file(transfer, exchange.key) == [(PAYLOAD_TAG, domain.payload)]
    der = exchange.key.certificate_der()
    assert generator_open_transfer_file(data, exchange.private_key, der) == [(PAYLOAD_TAG, domain.payload)]


# ---------------------------------------------------------------------------------------- refused


def _flip_ciphertext(token: str) -> str:
    """The compact JWE with one bit of its ciphertext's first byte flipped."""
    parts = token.split(".")
    ct = bytearray(base64.urlsafe_b64decode(parts[3] + "=" * (-len(parts[3]) % 4)))
    ct[0] ^= 0x01
    parts[3] = base64.urlsafe_b64encode(bytes(ct)).decode("ascii").rstrip("=")
    return ".".join(parts)


def flip_share_of(custodian: Custodian) -> Callable[[dict[str, Any]], None]:
    def flip(document: dict[str, Any]) -> None:
        thumbprint = b64e(x5t_256(custodian.cert_der))
        (share,) = [s for s in document["SharedKeys"]["enc_shares"] if s["x5t_256"] == thumbprint]
        share["enc_key"] = _flip_ciphertext(share["enc_key"])

    return flip


def flip_payload(document: dict[str, Any]) -> None:
    (item,) = document["EncData"]["data"]
    item["compact_jwe"] = _flip_ciphertext(item["compact_jwe"])


@dataclass(frozen=True)
class Refusal:
    name: str
    xs: tuple[int, ...]  # slots of the keys given (4 is not a slot of the 2-of-3 domain)
    tamper: Callable[[list[Custodian]], Callable[[dict[str, Any]], None]] | None
    error: str  # az's message, on stderr after "ERROR: "


REFUSALS = [
    Refusal(
        "one of the 2 keys is a stranger's (dave: not a custodian of this domain)",
        (1, 4),
        None,
        "Insufficient shares available.",
    ),
    Refusal(
        "alice's share has a flipped bit: its MAC fails, az drops it",
        (1, 3),
        lambda cs: flip_share_of(cs[0]),
        "Insufficient shares available.",
    ),
    # az's A256CBC-HS512 decryption returns None on a bad tag; re-encrypting that None then fails.
    Refusal(
        "the payload has a flipped bit: its MAC fails",
        (1, 3),
        lambda cs: flip_payload,
        "cannot convert 'NoneType' object to bytes",
    ),
]


@pytest.mark.parametrize("case", REFUSALS, ids=[c.name for c in REFUSALS])
def test_azure_cli_restore_blob_refuses(
    case: Refusal,
    az: Path,
    exported: ExportFactory,
    custodians: list[Custodian],
    exchange: Exchange,
    tmp_path: Path,
) -> None:
    """The 2-of-3 export, which az accepts with slots 1 and 3 (the first accepted case), refused."""
    sd_file = exported(3, 2).azure_file
    if case.tamper is not None:
        document = json.loads(sd_file.read_bytes())
        case.tamper(custodians)(document)
        sd_file = tmp_path / "tampered.json"
        sd_file.write_text(json.dumps(document))
    out = tmp_path / "transfer.json"
    keys = [custodians[x - 1] for x in case.xs]
    code, stderr = az_restore_blob(az, tmp_path, sd_file, exchange.cert_pem, keys, out)
    assert code == 1, stderr
    assert f"ERROR: {case.error}" in stderr
    assert not out.exists()


@pytest.mark.parametrize(("required", "outcome"), [("1", pytest.fail.Exception), ("", pytest.skip.Exception)])
def test_missing_azure_cli_skips_or_fails(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, required: str, outcome: type[BaseException]
) -> None:
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "ensure-azure-cli.sh", tmp_path / "scripts")
    monkeypatch.setenv("SDQUORUM_REQUIRE_TOOLS", required)
    with pytest.raises(outcome, match=r"azure-cli==\S+ is not installed .*scripts/ensure-azure-cli\.sh"):
        find_az(tmp_path)
