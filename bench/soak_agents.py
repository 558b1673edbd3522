"""``python -m bench.soak_agents [--agents 10] [--seconds 600]``: idle agents must stay connected.

Starts a real ``hsm-node`` and N ``custodian-agent`` processes (each its own mTLS certificate and
wrapping key) on loopback with the production keepalive settings, leaves them idle, and counts the
connections lost (each agent logs ``connection ... lost``) and the node's disconnects. Before the
keepalive settings agreed, every agent was dropped 160-200 s after connecting with "Too many pings".
Prints one line per minute and a summary; exit 0 when nothing was dropped, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.soak_agents")
    ap.add_argument("--agents", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=600.0)
    args = ap.parse_args(argv)
    from sdctl.pkifiles import init_pki

    names = [f"c{i:02d}" for i in range(args.agents)]
    with tempfile.TemporaryDirectory(prefix="sdquorum-soak-") as tmp:
        root = Path(tmp)
        pki = root / "pki"
        init_pki(pki, ["node-a"], names, datetime.now(UTC))
        env = {**os.environ, "SDQUORUM_PASSPHRASE": "soak passphrase, idle agents"}
        procs: list[tuple[str, subprocess.Popen[bytes]]] = []

        def start(name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
            log = open(root / f"{name}.log", "wb")  # noqa: SIM115  # closed with the process
            p = subprocess.Popen([sys.executable, *cmd], stdout=log, stderr=subprocess.STDOUT, env=env)
            procs.append((name, p))
            return p

        port_file = root / "port"
        start(
            "node",
            ["-m", "hsm_node.cli", "run", "--node-id", "node-a", "--listen", "127.0.0.1:0",
             "--data-dir", str(root / "data"), "--tls-cert", str(pki / "node.pem"),
             "--tls-key", str(pki / "node.key"), "--ca", str(pki / "ca.pem"),
             "--attestation-cert", str(pki / "attestation-node-a.pem"),
             "--attestation-key", str(pki / "attestation-node-a.key"), "--port-file", str(port_file),
             "--log-level", "INFO"],
        )  # fmt: skip
        while not port_file.exists():
            time.sleep(0.05)
        port = port_file.read_text()
        try:
            for n in names:
                home = root / n
                home.mkdir(mode=0o700)
                subprocess.run(
                    [sys.executable, "-m", "custodian_agent.cli", "keygen", "--name", n,
                     "--key", str(home / "wrap.key"), "--cert", str(home / "wrap.pem")],
                    env=env, check=True, capture_output=True,
                )  # fmt: skip
                start(
                    f"agent-{n}",
                    ["-m", "custodian_agent.cli", "run", "--node", f"127.0.0.1:{port}",
                     "--tls-cert", str(pki / f"custodian-{n}.pem"), "--tls-key", str(pki / f"custodian-{n}.key"),
                     "--ca", str(pki / "ca.pem"), "--attestation-root", str(pki / "attestation-root.pem"),
                     "--wrapping-key", str(home / "wrap.key"), "--wrapping-cert", str(home / "wrap.pem"),
                     "--state-dir", str(home / "state")],
                )  # fmt: skip
            t0 = time.monotonic()
            next_report = 60.0
            while (elapsed := time.monotonic() - t0) < args.seconds:
                time.sleep(1.0)
                if elapsed >= next_report:
                    print(f"{elapsed:5.0f} s: {_lost(root, names)} connections lost", flush=True)
                    next_report += 60.0
            lost = _lost(root, names)
            up = sum("connected to" in (root / f"agent-{n}.log").read_text(errors="replace") for n in names)
            node_drops = (root / "node.log").read_text(errors="replace").count("disconnected")
            print(
                f"{args.agents} agents ({up} connected) idle for {args.seconds:.0f} s: {lost} connections lost, "
                f"{node_drops} disconnects seen by the node"
            )
            return 0 if lost == 0 and node_drops == 0 and up == len(names) else 1
        finally:
            for _, p in procs:
                p.send_signal(signal.SIGTERM)
            for _, p in procs:
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()


def _lost(root: Path, names: list[str]) -> int:
    return sum((root / f"agent-{n}.log").read_text(errors="replace").count(" lost") for n in names)


if __name__ == "__main__":
    raise SystemExit(main())
