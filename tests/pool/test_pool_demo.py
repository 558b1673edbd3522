"""``python deploy/demo.py --pool`` runs to its end: a member killed under load, one joined, nothing lost."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from etcd_cluster import etcd_binary

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_the_pool_demo_loses_no_acknowledged_key(tmp_path: Path) -> None:
    etcd_binary()  # skip (or fail under SDQUORUM_REQUIRE_TOOLS=1) without etcd
    run = subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "demo.py"), "--pool", "--workdir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = run.stdout
    assert "kill -9 node-a" in out and "node-c ACTIVATED" in out
    assert "acknowledged keys are on node-c: nothing lost" in out
    assert "Pool demo complete" in out
