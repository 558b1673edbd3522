"""A node refuses to start on an address another process serves (issue 14, part 1).

gRPC servers bind with SO_REUSEPORT by default, so a second ``hsm-node run --listen`` on a live
node's port printed "serving" and then took half of all calls. Both listeners (gRPC and metrics)
now refuse: one line, exit 5, nothing served.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest
from harness import node_run_argv


def _listening_socket() -> tuple[socket.socket, int]:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # as a gRPC server binds: the worst case
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s, s.getsockname()[1]


def _run_node(pki: Path, data: Path, *extra: str, listen: str) -> subprocess.CompletedProcess[str]:
    argv = [*node_run_argv(pki, "node-a", data, listen=listen), *extra]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


@pytest.mark.slow
def test_a_second_node_on_a_port_in_use_refuses_to_start(pki_dir: Path, tmp_path: Path) -> None:
    held, port = _listening_socket()
    with held:
        done = _run_node(pki_dir, tmp_path / "data", listen=f"127.0.0.1:{port}")
    assert done.returncode == 5, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "already in use" in lines[0], done.stderr
    assert "serving" not in done.stdout


@pytest.mark.slow
def test_a_metrics_port_in_use_is_one_line_and_exit_5(pki_dir: Path, tmp_path: Path) -> None:
    held, port = _listening_socket()
    with held:
        done = _run_node(
            pki_dir,
            tmp_path / "data",
            "--metrics-listen",
            f"127.0.0.1:{port}",
            listen="127.0.0.1:0",
        )
    assert done.returncode == 5, done.stderr
    lines = [ln for ln in done.stderr.strip().splitlines() if ln]
    assert len(lines) == 1 and "already in use" in lines[0] and "Traceback" not in done.stderr, done.stderr
