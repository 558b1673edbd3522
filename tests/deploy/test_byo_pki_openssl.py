"""Bring your own PKI: certificates made with the openssl command line only work with sdquorum.

The recipe is the one in docs/byo-pki.md: this test takes the extensions file and the shell
blocks from that page (marked ``<!-- byo-pki:... -->``) and runs them as they are, so the page
cannot drift from what works. Then it starts an in-process node with the openssl-made transport
certificates (the attestation files come from the harness's PKI, as a vendor's would) and shows
that ``sdctl status`` works with the openssl-made admin and custodian certificates, and that a
custodian certificate without the role URI SAN is refused with PERMISSION_DENIED (exit 6).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from harness import running_cluster

from sdquorum import pki

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "byo-pki.md"


def doc_block(marker: str) -> str:
    """The fenced block right after ``<!-- byo-pki:MARKER -->`` in docs/byo-pki.md."""
    m = re.search(rf"<!-- byo-pki:{marker} -->\n```\w*\n(.*?)\n```", DOC.read_text(), re.S)
    assert m, f"docs/byo-pki.md has no block marked byo-pki:{marker}"
    return m.group(1) + "\n"


def sh(script: str, cwd: Path) -> None:
    r = subprocess.run(["/bin/sh", "-eu", "-c", script], cwd=cwd, capture_output=True, text=True, check=False)
    assert r.returncode == 0, f"{script}\n---\n{r.stderr}"


# A custodian certificate made the same way but without the role URI SAN (only a DNS name).
NO_ROLE_SECTION = """
[ custodian_norole ]
basicConstraints       = critical, CA:FALSE
keyUsage               = critical, digitalSignature
extendedKeyUsage       = clientAuth
subjectAltName         = DNS:alice.example
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid
"""
NO_ROLE_COMMANDS = """
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out custodian-norole.key
openssl req -new -key custodian-norole.key -config sdquorum-ext.cnf -subj "/CN=custodian\\/alice" -out norole.csr
openssl x509 -req -in norole.csr -CA ca.pem -CAkey ca.key -CAcreateserial -sha256 -days 397 \\
    -extfile sdquorum-ext.cnf -extensions custodian_norole -out custodian-norole.pem
"""


@pytest.fixture(scope="module")
def byo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the openssl-made PKI of docs/byo-pki.md (transport and attestation)."""
    d = tmp_path_factory.mktemp("byo-pki")
    (d / "sdquorum-ext.cnf").write_text(doc_block("extensions") + NO_ROLE_SECTION)
    sh(doc_block("transport"), d)
    sh(doc_block("attestation"), d)
    sh(NO_ROLE_COMMANDS, d)
    return d


def test_the_recipe_makes_what_the_doc_promises(byo: Path) -> None:
    node = x509.load_pem_x509_certificate((byo / "node.pem").read_bytes())
    san = node.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "sdquorum://role/node" in san.get_values_for_type(x509.UniformResourceIdentifier)
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    eku = node.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    for name, role in (
        ("node", "node"),
        ("admin", "admin"),
        ("app", "app"),
        ("custodian-alice", "custodian/alice"),
    ):
        assert str(pki.role_from_cert((byo / f"{name}.pem").read_bytes())) == role
    for name in ("admin", "app", "custodian-alice"):
        cert = x509.load_pem_x509_certificate((byo / f"{name}.pem").read_bytes())
        assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
            ExtendedKeyUsageOID.CLIENT_AUTH
        ]
    for key in byo.glob("*.key"):
        assert key.read_text().startswith("-----BEGIN PRIVATE KEY-----"), key
        assert key.stat().st_mode & 0o077 == 0, f"{key} is readable by others"


def test_the_openssl_attestation_certificate_passes_the_agents_check(byo: Path) -> None:
    """What an agent checks (the chain, and the node id in the CN) and what hsm-node loads (the
    Ed25519 key of that certificate, for that node id)."""
    from hsm_node.cli import _load_attestation

    _, node_id = pki.verify_attestation_cert(
        (byo / "attestation-node-a.pem").read_bytes(),
        (byo / "attestation-root.pem").read_bytes(),
        datetime.now(UTC),
    )
    assert node_id == "node-a"  # the CN the guide gives it: what the node's statements must name
    _load_attestation(byo / "attestation-node-a.pem", byo / "attestation-node-a.key", "node-a")


@pytest.fixture
def node_pki(byo: Path, pki_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The node's TLS files from the openssl PKI (the harness's attestation key beside them), and
    no SDCTL_* variable left to override the flags these tests give sdctl."""
    for var in ("SDCTL_NODE", "SDCTL_CERT", "SDCTL_KEY", "SDCTL_CA", "SDCTL_CONFIG", "SDCTL_OUTPUT"):
        monkeypatch.delenv(var, raising=False)
    d = tmp_path / "node-pki"
    d.mkdir()
    for name in ("node.pem", "node.key", "ca.pem"):
        shutil.copy(byo / name, d / name)
    for name in ("attestation-node-a.pem", "attestation-node-a.key"):
        shutil.copy(pki_dir / name, d / name)
    return d


async def sdctl(
    target: str, byo: Path, identity: str, capsys: pytest.CaptureFixture[str]
) -> tuple[int, list[str], str]:
    """``sdctl --node TARGET --cert IDENTITY.pem --key IDENTITY.key --ca ca.pem status`` in a thread."""
    from sdctl.cli import main

    capsys.readouterr()
    lines: list[str] = []
    argv = ["--node", target, "--cert", str(byo / f"{identity}.pem"), "--key", str(byo / f"{identity}.key")]
    argv += ["--ca", str(byo / "ca.pem"), "status"]
    code = await asyncio.to_thread(main, argv, out=lines.append)
    return code, lines, capsys.readouterr().err


async def test_a_node_serves_openssl_certificates_and_refuses_a_certificate_without_a_role(
    byo: Path, node_pki: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:

    async with running_cluster(node_pki, tmp_path / "node-a") as cluster:
        code, out, err = await sdctl(cluster.target, byo, "admin", capsys)
        assert (code, err) == (0, ""), err
        assert out[0].splitlines()[0] == "node node-a: PROVISIONED"  # then the advice for this state

        code, out, err = await sdctl(cluster.target, byo, "custodian-alice", capsys)
        assert (code, err) == (0, ""), err  # any role may ask for the status

        code, out, err = await sdctl(cluster.target, byo, "custodian-norole", capsys)
        assert code == 6, (code, out, err)
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("sdctl: error: "), err
        assert "the client certificate carries no sdquorum role" in lines[0], lines[0]


async def test_a_certificate_from_another_ca_is_refused_by_tls(
    byo: Path, node_pki: Path, pki_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The node trusts only its --ca: the harness's admin certificate (another CA) cannot connect.
    sdctl names the mismatch before it dials (exit 2); a client that skips that check is refused by
    the node's TLS (exit 5: tests/e2e/test_recovery_grpc.py::test_client_certificate_from_another_ca_is_refused)."""
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    shutil.copy(pki_dir / "admin.pem", foreign / "admin.pem")
    shutil.copy(pki_dir / "admin.key", foreign / "admin.key")
    shutil.copy(byo / "ca.pem", foreign / "ca.pem")
    async with running_cluster(node_pki, tmp_path / "node-a") as cluster:
        code, _, err = await sdctl(cluster.target, foreign, "admin", capsys)
        assert code == 2, err
        assert "is not issued by the CA" in err and "foreign/ca.pem" in err, err
