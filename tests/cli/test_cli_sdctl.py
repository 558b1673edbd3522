"""``sdctl`` as an operator uses it, against an in-process node over real mTLS.

Every failure is one line on stderr (``sdctl: error: ...``), no traceback, and the documented exit
code (sdquorum_rpc/cli.py): 2 usage, 3 state, 4 verification, 5 transport/TLS, 6 permission.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cli_support import NAMES, Cluster, Result, SdctlRunner, assert_one_line_error, certs_of, running_cluster

from sdctl.cli import main
from sdquorum.keys import SoftwareWrappingKey
from sdquorum.sdfile import SecurityDomainFile

ROOT = Path(__file__).resolve().parents[2]


def closed_address() -> str:
    """127.0.0.1 and a port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"127.0.0.1:{port}"


def user_env() -> dict[str, str]:
    """The environment of a person's shell: no SDCTL_* defaults, grpc's logging left at its default."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("SDCTL_", "GRPC_VERBOSITY", "GRPC_TRACE"))
    }
    env["PYTHONPATH"] = str(ROOT)
    return env


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
async def node(pki_dir: Path, tmp_path: Path) -> AsyncIterator[Cluster]:
    """A fresh, PROVISIONED node-a."""
    async with running_cluster(pki_dir, tmp_path / "node-a") as c:
        yield c


async def download(sdctl: SdctlRunner, node: Cluster, certs: list[Path], quorum: int, out: Path) -> Result:
    argv = ["download", *(a for c in certs for a in ("--cert", str(c))), "--quorum", str(quorum)]
    return await sdctl(*argv, "--out", str(out), node=node.target)


# ------------------------------------------------------------------------------- common mistakes


@dataclass(frozen=True)
class Mistake:
    argv: tuple[str, ...]
    code: int
    needle: str  # what the one line must say, so the person knows what to fix
    identity: str | None = "admin"
    foreign_identity: bool = False  # client cert and key from another deployment's CA
    foreign_ca: bool = False  # --ca of another deployment: the node's certificate does not verify
    closed_port: bool = False


MISTAKES = {
    "wrong address: nothing listens on the port": Mistake(
        ("status",), 5, "check the address", closed_port=True
    ),
    # named before dialling: the certificate is not issued by the CA given (the node's TLS refuses an
    # unchecked client: tests/e2e/test_recovery_grpc.py::test_client_certificate_from_another_ca_is_refused)
    "client certificate from another CA": Mistake(("status",), 2, "--cert", foreign_identity=True),
    "--ca of another deployment": Mistake(("status",), 2, "--ca", foreign_ca=True),
    "node not activated: keys list as app": Mistake(("keys", "list"), 3, "download", identity="app"),
    "input file missing: download --cert /nonexistent": Mistake(
        ("download", "--cert", "/nonexistent", "--quorum", "3", "--out", "{tmp}/sd.json"), 2, "/nonexistent"
    ),
    "no --cert, --key, --ca": Mistake(("status",), 2, "--cert, --key, --ca", identity=None),
    "custodian certificate calling backup": Mistake(
        ("backup", "--out", "{tmp}/keys.backup"), 6, "permission denied", identity="custodian-alice"
    ),
}


# Under TLS 1.3 the client's handshake ends before the node checks the client certificate; the node
# then closes the connection and the client only sees "Socket closed".


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, id=k) for k, c in MISTAKES.items()],
)
async def test_common_mistake_gives_one_line_and_its_exit_code(
    case: Mistake, node: Cluster, sdctl: SdctlRunner, pki_dir: Path, foreign_pki_dir: Path, tmp_path: Path
) -> None:
    argv = [a.replace("{tmp}", str(tmp_path)) for a in case.argv]
    r = await sdctl(
        *argv,
        node=closed_address() if case.closed_port else node.target,
        identity=case.identity,
        pki=foreign_pki_dir if case.foreign_identity else pki_dir,
        ca=foreign_pki_dir / "ca.pem" if case.foreign_ca else None,
    )
    line = assert_one_line_error(r)
    assert r.code == case.code, line
    assert case.needle in line
    assert r.out == []
    assert node.node.state == "PROVISIONED"
    assert not (tmp_path / "sd.json").exists() and not (tmp_path / "keys.backup").exists()


async def test_permission_denied_on_an_activated_node_names_the_role(
    node: Cluster, sdctl: SdctlRunner, wrap_certs: list[Path], tmp_path: Path
) -> None:
    assert (await download(sdctl, node, wrap_certs[:3], 3, tmp_path / "sd.json")).code == 0
    r = await sdctl("backup", "--out", str(tmp_path / "keys.backup"), node=node.target, identity="app")
    line = assert_one_line_error(r)
    assert r.code == 6
    assert "app" in line and "Backup" in line
    assert not (tmp_path / "keys.backup").exists()


@pytest.mark.parametrize("identity", ["custodian-alice", "app", "admin"])
async def test_status_is_allowed_for_every_role(node: Cluster, sdctl: SdctlRunner, identity: str) -> None:
    r = await sdctl("status", node=node.target, identity=identity)
    assert (r.code, r.err) == (0, "")
    assert r.out[0].splitlines()[0] == "node node-a: PROVISIONED"  # then the advice line (issue 14)


@pytest.mark.parametrize(
    ("foreign", "flag"),
    [
        pytest.param("identity", "--cert", id="client certificate from another CA"),
        pytest.param("ca", "--ca", id="--ca of another deployment"),
    ],
)
async def test_tls_failure_shows_one_line_on_the_terminal(
    node: Cluster, pki_dir: Path, foreign_pki_dir: Path, tmp_path: Path, foreign: str, flag: str
) -> None:
    """As a person sees it: a separate process, its whole stderr (grpc's own logging included)."""
    ident = foreign_pki_dir if foreign == "identity" else pki_dir
    ca = pki_dir if foreign == "identity" else foreign_pki_dir
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sdctl.cli",
        *("--node", node.target, "--cert", str(ident / "admin.pem"), "--key", str(ident / "admin.key")),
        *("--ca", str(ca / "ca.pem"), "status"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=user_env(),
        cwd=tmp_path,
    )
    async with asyncio.timeout(20):
        out, err = await proc.communicate()
    assert proc.returncode == 2  # named before dialling: not issued by the CA given
    assert out == b""
    lines = err.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("sdctl: error: "), lines[0]
    assert flag in lines[0]


BAD_TLS_FILES = {
    "--key of another identity": ("admin.pem", "app.key", "ca.pem", "--key"),
    "--key is not a PEM key": ("admin.pem", "junk", "ca.pem", "--key"),
    "--cert is not a PEM certificate": ("junk", "admin.key", "ca.pem", "--cert"),
    "--ca is not a PEM certificate": ("admin.pem", "admin.key", "junk", "--ca"),
}


@pytest.mark.parametrize(("cert", "key", "ca", "flag"), BAD_TLS_FILES.values(), ids=BAD_TLS_FILES.keys())
async def test_unusable_tls_files_are_named_in_one_line(
    node: Cluster, pki_dir: Path, tmp_path: Path, cert: str, key: str, ca: str, flag: str
) -> None:
    (tmp_path / "junk").write_text("not a PEM file\n")

    def path(name: str) -> str:
        return str(tmp_path / name if name == "junk" else pki_dir / name)

    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "sdctl.cli", "--node", node.target),
        *("--cert", path(cert), "--key", path(key), "--ca", path(ca), "status"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=user_env(),
        cwd=tmp_path,
    )
    async with asyncio.timeout(20):
        _, err = await proc.communicate()
    lines = err.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("sdctl: error: ") and flag in lines[0], lines[0]
    assert proc.returncode == 2


def test_debug_shows_the_traceback(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("SDCTL_CERT", "SDCTL_KEY", "SDCTL_CA"):
        monkeypatch.delenv(var, raising=False)
    assert main(["status"]) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert main(["--debug", "status"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.splitlines()[-1].startswith("sdctl: error: give --cert")


def test_a_pool_retry_interval_out_of_range_is_one_line_naming_the_setting(
    capsys: pytest.CaptureFixture[str],
) -> None:
    tls_flags = ["--cert", "admin.pem", "--key", "admin.key", "--ca", "ca.pem"]  # never read: refused first
    for value in ("0", "-1", "301", "nan"):
        argv = ["--node", "127.0.0.1:1,127.0.0.1:2", "--retry-interval", value, *tls_flags, "status"]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "more than 0 and at most 300 seconds" in err[0], err
        assert "--retry-interval" in err[0] and "sdctl.retry_interval" in err[0]


# ------------------------------------------------------------------------------- download


@dataclass(frozen=True)
class BadDownload:
    certs: tuple[int, ...]  # indexes into wrap_certs (alice..frank)
    quorum: int
    needle: str
    out_exists: bool = False


BAD_DOWNLOADS = {
    "2 certificates: n below 3": BadDownload((0, 1), 2, "2 custodian certificates given"),
    "11 certificates: n above 10": BadDownload((0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4), 3, "11 custodian"),
    "quorum 1": BadDownload((0, 1, 2), 1, "quorum 1 is too small"),
    "quorum above n": BadDownload((0, 1, 2), 4, "quorum 4 is larger than the 3 custodians"),
    "same certificate twice": BadDownload((0, 1, 0), 2, "#1 and #3 hold the same key"),
    "--out exists already": BadDownload((0, 1, 2), 2, "exists already", out_exists=True),
}


@pytest.mark.parametrize("case", BAD_DOWNLOADS.values(), ids=BAD_DOWNLOADS.keys())
async def test_bad_download_is_refused_and_the_node_stays_provisioned(
    case: BadDownload, node: Cluster, sdctl: SdctlRunner, wrap_certs: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "sd.json"
    if case.out_exists:
        out.write_bytes(b"an earlier SD file: keep me")
    r = await download(sdctl, node, [wrap_certs[i] for i in case.certs], case.quorum, out)
    line = assert_one_line_error(r)
    assert r.code == 2, line
    assert case.needle in line
    assert node.node.state == "PROVISIONED"
    assert node.node.domain_info is None
    if case.out_exists:
        assert out.read_bytes() == b"an earlier SD file: keep me"
    else:
        assert not out.exists()
    status = await sdctl("--output", "json", "status", node=node.target)
    assert json.loads(status.out[0])["state"] == "PROVISIONED"


async def test_download_to_an_unwritable_out_leaves_the_node_provisioned(
    node: Cluster, sdctl: SdctlRunner, wrap_certs: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "no-such-dir" / "sd.json"
    r = await download(sdctl, node, wrap_certs[:3], 3, out)
    errors = [line for line in r.err_lines if line.startswith("sdctl: error: ")]
    assert r.code == 2 and len(errors) == 1, r.err
    assert "no-such-dir" in errors[0]
    assert node.node.state == "PROVISIONED", "the domain was created but its SD file was never written"


async def test_download_with_quorum_2_warns_and_writes_the_sd_file_0600(
    node: Cluster, sdctl: SdctlRunner, wrap_certs: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "sd.json"
    r = await download(sdctl, node, wrap_certs[:3], 2, out)
    assert r.code == 0, r.err
    assert r.err_lines, "no warning printed"
    assert all(line.startswith("sdctl: warning: ") for line in r.err_lines), r.err_lines
    assert any("quorum 2 is below the recommended 3" in line for line in r.err_lines), r.err_lines
    assert mode_of(out) == 0o600
    header = SecurityDomainFile.from_bytes(out.read_bytes()).header
    assert (header.quorum, header.n) == (2, 3)
    assert len(r.out) == 1 and str(out) in r.out[0]
    assert node.node.state == "ACTIVATED"
    again = await download(sdctl, node, wrap_certs[:3], 3, tmp_path / "sd2.json")
    assert again.code == 3 and "only once" in assert_one_line_error(again)
    assert not (tmp_path / "sd2.json").exists()


async def test_status_json_is_parseable_and_follows_activation(
    node: Cluster, sdctl: SdctlRunner, wrap_certs: list[Path], tmp_path: Path
) -> None:
    before = await sdctl("--output", "json", "status", node=node.target)
    assert before.code == 0 and len(before.out) == 1
    obj = json.loads(before.out[0])
    assert obj["state"] == "PROVISIONED" and obj["node_id"] == "node-a" and obj["domain_id"] == ""
    assert (await download(sdctl, node, wrap_certs[:5], 3, tmp_path / "sd.json")).code == 0
    after = json.loads((await sdctl("--output", "json", "status", node=node.target)).out[0])
    assert after["state"] == "ACTIVATED"
    assert (after["quorum"], after["custodians"], after["epoch"], after["keys"]) == (3, 5, 1, 0)
    assert after["domain_id"] == node.node.domain_info.domain_id.hex()


# ------------------------------------------------------------------------------- full flow


async def test_full_operator_flow_through_the_cli_only(
    node: Cluster, sdctl: SdctlRunner, wrap_certs: list[Path], tmp_path: Path
) -> None:
    t = node.target

    async def app(*argv: str) -> Result:
        return await sdctl(*argv, node=t, identity="app")

    def p(name: str) -> str:
        return str(tmp_path / name)

    sd = tmp_path / "sd.json"
    assert (await download(sdctl, node, wrap_certs[:5], 3, sd)).code == 0
    for name, kind in (("pay", "aes256-gcm"), ("sig", "ed25519"), ("rsa", "rsa3072")):
        r = await app("keys", "create", name, "--type", kind)
        assert (r.code, r.err) == (0, ""), r.err
    listed = await app("--output", "json", "keys", "list")
    assert {k["name"]: k["type"] for k in json.loads(listed.out[0])} == {
        "pay": "AES256_GCM",
        "sig": "ED25519",
        "rsa": "RSA3072",
    }

    msg = tmp_path / "msg.txt"
    msg.write_bytes(b"pay 100 EUR to bob")
    # encrypt / decrypt round trip, AES-GCM with AAD and RSA-OAEP
    for key, aad in (("pay", "invoice-7"), ("rsa", "")):
        assert (await app("encrypt", key, "--in", str(msg), "--out", p(f"{key}.ct"), "--aad", aad)).code == 0
        assert mode_of(tmp_path / f"{key}.ct") == 0o600
        assert (tmp_path / f"{key}.ct").read_bytes() != msg.read_bytes()
        r = await app("decrypt", key, "--in", p(f"{key}.ct"), "--out", p(f"{key}.pt"), "--aad", aad)
        assert r.code == 0, r.err
        assert (tmp_path / f"{key}.pt").read_bytes() == msg.read_bytes()

    tampered = tmp_path / "tampered.txt"
    tampered.write_bytes(b"pay 900 EUR to eve")
    for key in ("sig", "rsa"):
        assert (await app("sign", key, "--in", str(msg), "--out", p(f"{key}.sig"))).code == 0
        ok = await app("verify", key, "--in", str(msg), "--signature", p(f"{key}.sig"))
        assert (ok.code, ok.out) == (0, ["signature valid"])
        bad = await app("verify", key, "--in", str(tampered), "--signature", p(f"{key}.sig"))
        line = assert_one_line_error(bad)
        assert bad.code == 4
        assert "NOT valid" in line and key in line

    # backup, lose a key, restore: the old ciphertext decrypts again
    backup = tmp_path / "keys.backup"
    r = await sdctl("backup", "--out", str(backup), node=t)
    assert r.code == 0 and mode_of(backup) == 0o600
    assert (await app("keys", "delete", "pay", "--yes")).code == 0
    gone = await app("decrypt", "pay", "--in", p("pay.ct"), "--out", p("gone.pt"), "--aad", "invoice-7")
    assert gone.code == 2 and "pay" in assert_one_line_error(gone)
    r = await sdctl("restore", str(backup), "--yes", node=t)
    assert (r.code, r.out) == (0, ["restored 3 keys"])
    r = await app("decrypt", "pay", "--in", p("pay.ct"), "--out", p("again.pt"), "--aad", "invoice-7")
    assert r.code == 0 and (tmp_path / "again.pt").read_bytes() == msg.read_bytes()
    # an existing --out is never overwritten
    again = await sdctl("backup", "--out", str(backup), node=t)
    assert again.code == 2 and "exists already" in assert_one_line_error(again)


async def test_decrypting_a_tampered_ciphertext_is_a_verification_failure(
    node: Cluster, sdctl: SdctlRunner, wrap_certs: list[Path], tmp_path: Path
) -> None:
    assert (await download(sdctl, node, wrap_certs[:3], 3, tmp_path / "sd.json")).code == 0
    t = node.target
    assert (await sdctl("keys", "create", "pay", "--type", "aes256-gcm", node=t, identity="app")).code == 0
    (tmp_path / "m").write_bytes(b"secret")
    ct = tmp_path / "ct"
    encrypted = await sdctl(
        "encrypt", "pay", "--in", str(tmp_path / "m"), "--out", str(ct), node=t, identity="app"
    )
    assert encrypted.code == 0  # by the key's owner: an admin manages an app's key but does not use it
    data = bytearray(ct.read_bytes())
    data[-1] ^= 1
    (tmp_path / "bad").write_bytes(bytes(data))
    r = await sdctl(
        "decrypt", "pay", "--in", str(tmp_path / "bad"), "--out", str(tmp_path / "pt"), node=t, identity="app"
    )
    line = assert_one_line_error(r)
    assert not (tmp_path / "pt").exists()
    assert r.code == 4, line
    assert "decryption failed" in line


# ------------------------------------------------------------------------------- recovery


@pytest.fixture
async def sd_of_node_a(pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey]) -> Path:
    """node-a's 3-of-5 SD file (alice..erin), node-a itself gone."""
    async with running_cluster(pki_dir, tmp_path / "node-a-lost") as a:
        sd = await a.download(certs_of(wrapping_keys[:5]), quorum=3)
    path = tmp_path / "sd.json"
    path.write_bytes(sd)
    return path


async def test_recover_through_auto_agents_prints_progress_and_activates(
    pki_dir: Path,
    tmp_path: Path,
    wrapping_keys: list[SoftwareWrappingKey],
    sd_of_node_a: Path,
    sdctl: SdctlRunner,
) -> None:
    async with running_cluster(pki_dir, tmp_path / "node-b", node_id="node-b") as b:
        for name, key in zip(NAMES[:3], wrapping_keys[:3], strict=True):
            b.start_agent(name, key, tmp_path)
        r = await sdctl("recover", "--sd-file", str(sd_of_node_a), "--reason", "drill", node=b.target)
        assert (r.code, r.err) == (0, ""), r.err
        assert r.out[0].startswith("session ") and "3 of 5 custodians needed" in r.out[0]
        assert any(line.strip().startswith("[3/3 shares") for line in r.out[1:]), r.out
        assert r.out[-1].startswith("recovered")
        assert b.node.state == "ACTIVATED"
        again = await sdctl("recover", "--sd-file", str(sd_of_node_a), "--reason", "drill", node=b.target)
        assert again.code == 3 and "already activated" in assert_one_line_error(again)


async def test_recover_with_a_wrong_sd_file_can_be_retried_at_once(
    pki_dir: Path,
    tmp_path: Path,
    wrapping_keys: list[SoftwareWrappingKey],
    sd_of_node_a: Path,
    sdctl: SdctlRunner,
) -> None:
    junk = tmp_path / "keys.backup"  # the file next to it, picked by mistake
    junk.write_bytes(b"not an SD file")
    async with running_cluster(pki_dir, tmp_path / "node-b", node_id="node-b") as b:
        for name, key in zip(NAMES[:3], wrapping_keys[:3], strict=True):
            b.start_agent(name, key, tmp_path)
        wrong = await sdctl("recover", "--sd-file", str(junk), "--reason", "drill", node=b.target)
        assert wrong.code == 2 and "SD file" in assert_one_line_error(wrong)
        right = await sdctl("recover", "--sd-file", str(sd_of_node_a), "--reason", "drill", node=b.target)
        assert right.code == 0, right.err
        assert b.node.state == "ACTIVATED"


# ------------------------------------------------------------------------------- help

SUBCOMMANDS = [
    (),
    ("status",),
    ("download",),
    ("recover",),
    ("backup",),
    ("restore",),
    ("keys",),
    ("keys", "create"),
    ("keys", "list"),
    ("keys", "delete"),
    ("encrypt",),
    ("decrypt",),
    ("sign",),
    ("verify",),
    ("pki",),
    ("pki", "init"),
    ("pki", "issue"),
]


@pytest.mark.parametrize("command", SUBCOMMANDS, ids=lambda c: " ".join(c) or "sdctl")
def test_every_help_has_an_example(command: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main([*command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "example" in out.lower()
    assert f"sdctl {' '.join(command)}".strip() in out
