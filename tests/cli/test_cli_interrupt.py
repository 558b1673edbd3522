"""Ctrl-C in every command that starts or watches a ceremony says the session goes on at the node,
until when, and the exact commands to attach to it or cancel it (exit 130); a command that started
nothing at the node keeps the plain "interrupted" line. Each command is driven against a stand-in
client whose session is interrupted while it is being followed, so no node is needed."""

from __future__ import annotations

import contextlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from sdctl.cli import main
from sdctl.ctl import Ctl, when
from sdquorum_rpc.admin import Started

SID, DEADLINE = "5e55107d", 1_900_000_000


class _Client:
    """Opens a session as the node would (its id and deadline) and holds nothing else."""

    async def __aenter__(self) -> _Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def errors(self) -> contextlib.nullcontext[None]:  # sync or async, as NodeClient.errors()
        return contextlib.nullcontext()

    async def _started(self, *args: Any) -> Started:
        return Started(SID, DEADLINE)

    init_recovery = start_drill = propose_rotation = start_azure_restore = _started

    async def upload_sd_file(self, session_id: str, sd: bytes) -> Any:
        return SimpleNamespace(domain_id="d", epoch=1, required=3, custodians=[1, 2, 3, 4, 5])

    async def get_session(self, session_id: str = "") -> Any:
        return SimpleNamespace(session_id=SID, kind="attached", expires_at_unix=DEADLINE)


async def _ctrl_c(self: Ctl, c: object, session_id: str, offline_dir: Path | None) -> None:
    raise KeyboardInterrupt


@pytest.fixture
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(Ctl, "client", lambda self: _Client())
    monkeypatch.setattr(Ctl, "follow", _ctrl_c)
    monkeypatch.setattr(
        "sdquorum.azure.sdfile.AzureSecurityDomain.from_bytes", staticmethod(lambda data: None)
    )
    (tmp_path / "sd.json").write_text('{"format": "sdquorum-sd", "header": {}}')
    for name in ("a.pem", "b.pem", "c.pem", "exchange.cer", "azure-sd.json"):
        (tmp_path / name).write_bytes(b"x")
    return tmp_path


ROTATE = "rotate --cert a.pem --cert b.pem --cert c.pem --quorum 2 --reason carol --out sd2.json"
AZURE = "azure restore-blob --sd-file azure-sd.json --exchange-cert exchange.cer --out transfer.json"
CEREMONIES = {
    "recovery": "recover --sd-file sd.json --reason dc",
    "drill": "drill",
    "rotation": ROTATE,
    "azure-recovery": AZURE,
    "attached": "session attach",
}


@pytest.mark.parametrize(("kind", "argv"), CEREMONIES.items())
def test_ctrl_c_while_a_ceremony_is_followed_names_the_session_and_how_to_attach_or_cancel(
    kind: str,
    argv: list[str],
    files: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before the port, only the old sdctl recover/drill/rotate/azure printed this; in the command
    tables none did (a plain "sdctl: interrupted")."""
    monkeypatch.chdir(files)
    flags = ["--node", "10.0.0.7:7443", "--cert", "me.pem", "--key", "me.key", "--ca", "ca.pem"]
    assert main([*flags, *argv.split()]) == 130
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0] == (
        f"sdctl: interrupted: {kind} session {SID} goes on at the node until {when(DEADLINE)}; watch it "
        f"with 'sdctl --node 10.0.0.7:7443 session attach {SID}' or cancel it with "
        f"'sdctl --node 10.0.0.7:7443 session cancel {SID} --reason \"...\"'"
    )
    assert not (files / "sd2.json").exists() and not (files / "transfer.json").exists()


def test_ctrl_c_before_any_session_opened_is_the_plain_interrupted_line(
    files: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def interrupted(self: _Client, session_id: str = "") -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(_Client, "get_session", interrupted)
    flags = ["--node", "10.0.0.7:7443", "--cert", "me.pem", "--key", "me.key", "--ca", "ca.pem"]
    assert main([*flags, "session", "status"]) == 130
    assert capsys.readouterr().err.splitlines() == ["sdctl: interrupted"]
