"""``--log-format json`` (issue 14, section 4): every line hsm-node and custodian-agent write, on
standard output and standard error, is one JSON event; what they used to print for a person
("serving on port ...", "stopped", the agent's banner) is among the events."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from harness import ROOT, NodeProcess

from custodian_agent.agent import read_heartbeat
from custodian_agent.keyfile import PASSPHRASE_ENV, keygen
from sdquorum_rpc import observability

PASSPHRASE = "correct horse battery"


def _events(text: str) -> list[dict[str, object]]:
    """Every non-empty line as a JSON object (a plain line fails the test, naming it)."""
    events = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError:
            pytest.fail(f"a line that is not JSON: {line!r}")
        assert isinstance(event, dict) and {"ts", "level", "logger", "msg"} <= set(event), line
        events.append(event)
    return events


def test_hsm_node_and_custodian_agent_write_only_json_lines(pki_dir: Path, tmp_path: Path) -> None:
    node = NodeProcess(
        pki_dir, tmp_path / "n" / "data", node_id="node-a", extra_args=["--log-format", "json"]
    )
    node.start()
    key, cert = tmp_path / "alice.key", tmp_path / "alice.pem"
    keygen("alice", key, cert, PASSPHRASE.encode(), datetime.now(UTC), bits=2048)
    state = tmp_path / "agent-state"
    argv = [
        sys.executable, "-m", "custodian_agent.cli", "run", "--node", node.target, "--log-format", "json",
        "--state-dir", str(state), "--approval", "manual",
        "--tls-cert", str(pki_dir / "custodian-alice.pem"), "--tls-key", str(pki_dir / "custodian-alice.key"),
        "--ca", str(pki_dir / "ca.pem"), "--attestation-root", str(pki_dir / "attestation-root.pem"),
        "--wrapping-key", str(key), "--wrapping-cert", str(cert),
    ]  # fmt: skip
    agent = subprocess.Popen(
        argv,
        env={**os.environ, PASSPHRASE_ENV: PASSPHRASE},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not (read_heartbeat(state) or {}).get("connected"):
            assert agent.poll() is None, agent.communicate()
            assert time.monotonic() < deadline, "the agent did not connect"
            time.sleep(0.1)
    finally:
        agent.send_signal(signal.SIGTERM)
        out, err = agent.communicate(timeout=30)
        assert node.proc is not None
        node.proc.send_signal(signal.SIGTERM)
        code = node.proc.wait(30)
        node.kill()
    assert code == 0 and agent.returncode == 0
    node_msgs = [str(e["msg"]) for e in _events(node.log.read_text())]
    assert any("serving on port" in m for m in node_msgs) and any(m.endswith("stopped") for m in node_msgs)
    agent_msgs = [str(e["msg"]) for e in _events(out) + _events(err)]
    assert any("serving wrapping certificate" in m for m in agent_msgs), agent_msgs
    assert "custodian-agent: stopped" in agent_msgs


def test_announce_is_a_plain_line_in_text_mode_and_an_event_in_json_mode(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sdquorum.test")
    observability.announce("sdquorum.test", "serving on port 1")
    assert capsys.readouterr().out == "serving on port 1\n" and caplog.records == []
    monkeypatch.setattr(observability, "_announce_as_log", True)
    observability.announce("sdquorum.test", "serving on port 2")
    observability.announce("sdquorum.test", "refused: already a warning", logged_already=True)
    assert capsys.readouterr().out == ""
    assert [r.getMessage() for r in caplog.records] == ["serving on port 2"]


def test_a_stray_print_in_json_mode_becomes_a_json_event() -> None:
    raw = io.StringIO()
    out = observability._JsonLines(raw)
    out.write("hsm-node node-a: stopped\n")
    out.write('{"already": "json"}\n')
    out.write("{not j")
    out.write("son\n")  # a line written in two parts is one event
    lines = raw.getvalue().splitlines()
    assert len(lines) == 3
    first, second, third = (json.loads(line) for line in lines)
    assert (first["logger"], first["msg"], first["level"]) == ("stdout", "hsm-node node-a: stopped", "INFO")
    assert second == {"already": "json"}
    assert third["msg"] == "{not json"
