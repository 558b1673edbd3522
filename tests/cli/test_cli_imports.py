"""Start-up cost of the operator's tool (issue 14, section 5): what importing ``sdctl.cli`` loads.

Each check runs in a fresh interpreter, since this test process has imported everything already.
The timing itself is a benchmark (``python -m bench --only startup``), not a test.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

NEVER_FOR_SDCTL = ("custodian_agent", "hsm_node", "prometheus_client")


def _loaded_after(code: str) -> set[str]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return {name.split(".")[0] for name in json.loads(out.splitlines()[-1])}


def test_importing_sdctl_loads_neither_the_agent_nor_the_node_nor_prometheus() -> None:
    loaded = _loaded_after("import sdctl.cli")
    assert "sdctl" in loaded
    assert sorted(loaded & set(NEVER_FOR_SDCTL)) == []


def test_sdctl_help_loads_no_grpc_protobuf_or_cryptography() -> None:
    """The parser is built from names only: ``--help`` needs argparse, not the wire or the crypto."""
    loaded = _loaded_after(
        "import contextlib, io, sdctl.cli\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    sdctl.cli.main(['--help'])"
    )
    assert sorted(loaded & {"grpc", "google", "cryptography", "asyncio", "logging", *NEVER_FOR_SDCTL}) == []


@pytest.mark.parametrize("module", ["sdquorum_rpc.client", "sdquorum_rpc.convert"])
def test_the_client_side_rpc_modules_do_not_load_prometheus(module: str) -> None:
    """Metrics are served by the node only; the modules every client shares do not import them."""
    loaded = _loaded_after(f"import {module}")
    assert sorted(loaded & set(NEVER_FOR_SDCTL)) == []


def test_a_client_dials_without_loading_cryptography() -> None:
    """``sdctl status`` and every node command open a client: its TLS files are parsed (expiry, CA,
    key) only when a dial fails, so a call that works does not pay ~60 ms for the cryptography
    library (issue 14, section 5: ``sdctl status`` <= 1.3x a bare grpc script)."""
    loaded = _loaded_after(
        "from pathlib import Path\n"
        "from sdquorum_rpc.client import NodeClient\n"
        "from sdquorum_rpc.tls import TlsFiles\n"
        "import sdctl.cli\n"
    )
    assert "grpc" in loaded
    assert "cryptography" not in loaded
