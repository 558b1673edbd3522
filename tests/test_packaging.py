"""The wire contract and the layering hold: generated code is fresh, the core imports no grpc."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sdquorum_rpc import genprotos

ROOT = Path(__file__).resolve().parent.parent


def test_generated_protobuf_code_is_not_stale(tmp_path: Path) -> None:
    fresh = {p.relative_to(tmp_path): p.read_bytes() for p in genprotos.generate(tmp_path)}
    committed = {
        p.relative_to(genprotos.OUT): p.read_bytes()
        for p in genprotos.OUT.rglob("*")
        if p.is_file() and p.suffix in (".py", ".pyi") and "__pycache__" not in p.parts
    }
    assert fresh.keys() == committed.keys(), "run 'make protos' and commit the result"
    stale = [str(k) for k in fresh if fresh[k] != committed[k]]
    assert stale == [], f"stale generated files {stale}: run 'make protos' and commit the result"


def test_core_and_coordinator_import_no_grpc() -> None:
    code = (
        "import sys, pkgutil, importlib\n"
        "import sdquorum, coordinator\n"
        "for pkg in (sdquorum, coordinator):\n"
        "    for m in pkgutil.iter_modules(pkg.__path__, pkg.__name__ + '.'):\n"
        "        importlib.import_module(m.name)\n"
        "bad = sorted(m for m in sys.modules if m == 'grpc' or m.startswith('grpc.'))\n"
        "print(','.join(bad))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert r.stdout.strip() == ""


def test_console_scripts_are_declared() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    for script in ("hsm-node", "custodian-agent", "sdctl"):
        assert f'{script} = "' in text


@pytest.mark.parametrize("tool", ["sdctl", "hsm-node", "custodian-agent"])
def test_every_tool_prints_its_version(tool: str) -> None:
    import tomllib

    version = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())[
        "project"
    ]["version"]
    module = {"sdctl": "sdctl.cli", "hsm-node": "hsm_node.cli", "custodian-agent": "custodian_agent.cli"}[
        tool
    ]
    r = subprocess.run(
        [sys.executable, "-m", module, "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith(version), r.stdout
