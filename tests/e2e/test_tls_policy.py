"""The node's TLS policy, shown with ``openssl s_client``: TLS 1.3, or TLS 1.2 with forward-secret
AEAD suites only; TLS 1.1 and non-forward-secret or CBC suites are refused; no client certificate,
no handshake."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from harness import Cluster

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl command line not installed")


async def s_client(cluster: Cluster, *args: str, client_cert: bool = True) -> tuple[int, str]:
    pki: Path = cluster.pki
    cmd = [
        "openssl",
        "s_client",
        "-connect",
        cluster.target,
        "-CAfile",
        str(pki / "ca.pem"),
        "-verify_return_error",
    ]
    if client_cert:
        cmd += ["-cert", str(pki / "admin.pem"), "-key", str(pki / "admin.key")]
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(b""), timeout=20)
    return proc.returncode or 0, out.decode(errors="replace")


def negotiated(out: str) -> tuple[str, str] | None:
    proto = cipher = ""
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Protocol  :") or line.startswith("Protocol :"):
            proto = line.split(":", 1)[1].strip()
        if line.startswith("Cipher    :") or line.startswith("Cipher :"):
            cipher = line.split(":", 1)[1].strip()
        if line.startswith("New, ") and ", Cipher is " in line:
            proto = proto or line.split(",")[1].strip()
            cipher = cipher or line.split("Cipher is ")[1].strip()
    return (proto, cipher) if cipher and cipher != "(NONE)" and cipher != "0000" else None


async def test_tls13_is_accepted(cluster: Cluster) -> None:
    _rc, out = await s_client(cluster, "-tls1_3")
    got = negotiated(out)
    assert got is not None and got[0] == "TLSv1.3", out[-1500:]


@pytest.mark.parametrize("cipher", ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305"])
async def test_tls12_forward_secret_aead_is_accepted(cluster: Cluster, cipher: str) -> None:
    _rc, out = await s_client(cluster, "-tls1_2", "-cipher", cipher)
    assert negotiated(out) == ("TLSv1.2", cipher), out[-1500:]


@pytest.mark.parametrize(
    "cipher",
    [
        "ECDHE-ECDSA-AES128-SHA",  # CBC, not AEAD
        "ECDHE-ECDSA-AES256-SHA384",  # CBC, not AEAD
        "AES128-GCM-SHA256",  # AEAD but RSA key transport: no forward secrecy
    ],
)
async def test_tls12_other_suites_are_refused(cluster: Cluster, cipher: str) -> None:
    _rc, out = await s_client(cluster, "-tls1_2", "-cipher", cipher)
    assert negotiated(out) is None, out[-1500:]


async def test_tls11_is_refused(cluster: Cluster) -> None:
    _rc, out = await s_client(cluster, "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0")
    assert negotiated(out) is None, out[-1500:]
