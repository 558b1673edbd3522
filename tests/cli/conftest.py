"""Fixtures for the command-line tests: the e2e in-process cluster, plus runners for each CLI.

The e2e fixtures (``pki_dir``, ``foreign_pki_dir``) are re-exported from ``cli_support``, which
loads ``tests/e2e/conftest.py`` under a module name of its own. ``sdctl``'s ``main`` calls
``asyncio.run``, so the ``sdctl`` fixture runs it in a worker thread while the in-process cluster
keeps serving on the test's own loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_support import Result, SdctlRunner, e2e
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sdquorum.keys import SoftwareWrappingKey

pki_dir = e2e.pki_dir  # fixture re-exported from tests/e2e/conftest.py
foreign_pki_dir = e2e.foreign_pki_dir  # fixture re-exported from tests/e2e/conftest.py


@pytest.fixture
def sdctl(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, pki_dir: Path) -> SdctlRunner:
    """``await sdctl(*argv, node=TARGET, identity="admin", pki=pki_dir)`` runs ``sdctl`` in a thread.

    ``identity`` names a cert/key pair (``admin``, ``app``, ``custodian-alice``) in ``pki``; ``None``
    gives no --cert/--key/--ca at all. The SDCTL_* environment is cleared so only flags count.
    """
    from sdctl.cli import main

    for var in ("SDCTL_NODE", "SDCTL_CERT", "SDCTL_KEY", "SDCTL_CA"):
        monkeypatch.delenv(var, raising=False)

    async def run(
        *argv: str,
        node: str | None = None,
        identity: str | None = "admin",
        pki: Path | None = None,
        ca: Path | None = None,
    ) -> Result:
        p = pki or pki_dir
        flags: list[str] = []
        if node is not None:
            flags += ["--node", node]
        if identity is not None:
            flags += ["--cert", str(p / f"{identity}.pem"), "--key", str(p / f"{identity}.key")]
            flags += ["--ca", str(ca or pki_dir / "ca.pem")]
        capsys.readouterr()  # drop anything printed before this command
        lines: list[str] = []
        code = await asyncio.to_thread(main, [*flags, *argv], out=lines.append)
        return Result(code, lines, capsys.readouterr().err)

    return run


@pytest.fixture
def agent_cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    """``agent_cli(*argv)`` runs ``custodian-agent`` in-process; stdout lines and stderr captured."""
    from custodian_agent.cli import main

    def run(*argv: str) -> Result:
        capsys.readouterr()
        code = main(list(argv))
        cap = capsys.readouterr()
        return Result(code, cap.out.splitlines(), cap.err)

    return run


@pytest.fixture
def wrap_certs(tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey]) -> list[Path]:
    """The six custodians' wrapping certificates as PEM files (alice..frank), as handed to the admin."""
    out = tmp_path / "wrap-certs"
    out.mkdir()
    paths = []
    for key in wrapping_keys:
        cert = x509.load_der_x509_certificate(key.certificate_der())
        name = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
        path = out / f"{name!s}.wrap.pem"
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        paths.append(path)
    return paths
