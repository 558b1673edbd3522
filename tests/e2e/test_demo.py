"""`make demo`'s script, run as a user runs it, then searched for every secret it must not leave behind.

The test knows the custodians' passphrases (SDQUORUM_DEMO_PASSPHRASE_SEED), so after the demo it
can open the SD file itself: it rebuilds s, every share, the data encryption key, the domain signing
and backup keys, and, through the backup, every key created on the node. Each must not appear in any
file the processes wrote, nor in their output: raw, hex, or base64 (standard or url-safe, at every
alignment). The only secret allowed on disk unwrapped is the node sealing key file (DESIGN.md, "Node
storage": the emulation boundary); the throw-away PKI's TLS keys are not domain secrets.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from harness import keys_in_backup

from custodian_agent.keyfile import load_wrapping_key
from sdquorum import shamir
from sdquorum.sdfile import SecurityDomainFile, open_domain, share_label

ROOT = Path(__file__).resolve().parents[2]
SEED = "demo-test-seed"
NAMES = ["alice", "bob", "carol", "dave", "erin"]

pytestmark = pytest.mark.slow


def forms(secret: bytes) -> list[bytes]:
    """Every way a secret could be written: raw, hex, base64 / base64url at each alignment."""
    out = [secret, secret.hex().encode(), secret.hex().upper().encode()]
    for enc in (base64.b64encode, base64.urlsafe_b64encode):
        for k in range(3):
            e = enc(bytes(k) + secret)
            start, end = ((k + 2) // 3) * 4, ((k + len(secret)) // 3) * 4
            out.append(e[start:end])
    return out


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    work = tmp_path_factory.mktemp("demo") / "run"
    # Every process at debug level: the secret scan below covers the most talkative logs.
    env = {
        **os.environ,
        "SDQUORUM_DEMO_PASSPHRASE_SEED": SEED,
        "PYTHONPATH": str(ROOT),
        "SDQUORUM_LOG_LEVEL": "DEBUG",
    }
    r = subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "demo.py"), "--workdir", str(work)],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return work, r.stdout + r.stderr


def test_demo_runs_every_step_with_live_progress(demo_run: tuple[Path, str]) -> None:
    _, output = demo_run
    assert "[13/13] Stop every process" in output
    assert re.search(r"\[\d/3 shares, \d+s left\] alice: [a-z ]+ \| bob: ", output)
    assert "recovered: security domain" in output
    assert "decrypted text matches the original" in output
    assert "signature valid" in output


def test_demo_leaves_no_process_behind(demo_run: tuple[Path, str]) -> None:
    work, _ = demo_run
    r = subprocess.run(["pgrep", "-f", str(work)], capture_output=True, text=True)
    assert r.stdout.strip() == "", f"processes left: {r.stdout}"


def test_no_plaintext_secret_in_any_file_or_log(demo_run: tuple[Path, str]) -> None:
    work, output = demo_run
    sd = SecurityDomainFile.from_bytes((work / "security-domain.json").read_bytes())
    header = sd.header
    secrets: dict[str, bytes] = {}
    shares = []
    for name in NAMES:
        home = work / "custodians" / name
        key = load_wrapping_key(home / "wrap.key", home / "wrap.pem", f"{SEED}-{name}".encode())
        slot = header.slot_by_thumbprint(__import__("hashlib").sha256(key.certificate_der()).digest())
        assert slot is not None
        share = shamir.Share.from_bytes(
            slot.x, key.decrypt(slot.encrypted_share, share_label(header.domain_id, header.epoch, slot.x))
        )
        shares.append(share)
        secrets[f"share x={slot.x}"] = share.to_bytes()
        private = key._key  # the test's own copy of the custodian key, to search for its unencrypted forms
        secrets[f"{name} wrapping key (PKCS#8 DER)"] = private.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        secrets[f"{name} wrapping key prime p"] = (
            private.private_numbers().p.to_bytes(192, "big").lstrip(b"\0")
        )
    s = shamir.combine(shares[:3], header.quorum, header.n)
    secrets["s"] = s.to_bytes(32, "little")
    domain = open_domain(sd, s)
    secrets["data encryption key"] = domain.data_encryption_key
    secrets["domain signing key"] = domain.signing_key
    secrets["backup key"] = domain.backup_key
    node_keys = keys_in_backup((work / "keys.backup").read_bytes(), domain)
    assert node_keys, "the demo's backup should hold the keys it created"
    for name, private in node_keys.items():
        secrets[f"node key {name}"] = private
    for name in NAMES:
        secrets[f"{name} passphrase"] = f"{SEED}-{name}".encode()

    allowed = {p for p in work.rglob("*.sealing-key")}
    files = [p for p in work.rglob("*") if p.is_file() and p not in allowed]
    assert any(p.name == "node.db" for p in files), "the node database should be among the scanned files"
    blobs = {str(p.relative_to(work)): p.read_bytes() for p in files}
    blobs["demo output"] = output.encode()
    found = []
    for what, secret in secrets.items():
        for form in forms(secret):
            for where, blob in blobs.items():
                if form in blob and not (what.endswith("passphrase") and where == "demo output"):
                    found.append(f"{what} in {where}")
    assert found == []


def test_processes_really_logged_at_debug_level(demo_run: tuple[Path, str]) -> None:
    work, _ = demo_run
    logs = "".join(p.read_text(errors="replace") for p in work.glob("*.log"))
    assert " DEBUG " in logs  # else the scan above proved less than it says


def test_key_files_are_private(demo_run: tuple[Path, str]) -> None:
    work, _ = demo_run
    for p in [*work.glob("custodians/*/wrap.key"), *work.glob("pki/*.key"), *work.rglob("*.sealing-key")]:
        assert p.stat().st_mode & 0o077 == 0, p


def test_every_file_the_node_and_its_logs_leave_is_private(demo_run: tuple[Path, str]) -> None:
    """Issue 13, class 9: the node database (and its -wal/-shm) and the process logs were 0644."""
    work, _ = demo_run
    made = [*work.glob("*.log"), *work.rglob("node.db*"), *work.rglob("*.sealing-key")]
    assert any(p.name == "node.db" for p in made) and any(p.suffix == ".log" for p in made)
    loose = {
        str(p.relative_to(work)): f"{p.stat().st_mode & 0o777:04o}" for p in made if p.stat().st_mode & 0o077
    }
    assert loose == {}
