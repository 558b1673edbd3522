"""``make demo``: activation, disaster and distributed recovery of an HSM node, on localhost.

Every process is real (one ``hsm-node`` and five ``custodian-agent`` processes, mTLS between all of
them); the operator steps run ``sdctl`` in this process. The agents run with ``manual`` approval, as
in production: no share leaves an agent until its custodian approves. Each custodian's part (reading
the request and approving it, ``custodian-agent approve REQUEST_ID`` at their own site) is played by
a thread of this process that runs the code of that command (:class:`ApprovalBox`) on the agent's
state directory, and prints who approved what. The throw-away PKI, keys and files live in a
temporary directory that is removed at the end (``--keep`` keeps it). Passphrases are random and
passed to the agents through their environment only.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

CUSTODIANS = ["alice", "bob", "carol", "dave", "erin"]
PRONOUNS = {"alice": "her", "bob": "his", "carol": "her", "dave": "his", "erin": "her"}
PERSON_POLL = 0.05  # seconds between a custodian's looks at their agent's pending requests


class Custodians(threading.Thread):
    """Each custodian at their own site: reads what their agent asks and approves it.

    ``custodian-agent pending`` and ``custodian-agent approve ID`` run :class:`ApprovalBox` on the
    agent's state directory; this thread runs that same code for all five, and prints each approval
    with the command the custodian would type.
    """

    def __init__(self, states: dict[str, Path]) -> None:
        super().__init__(name="custodians", daemon=True)
        self.states = states
        self.done = threading.Event()
        self.approved: set[tuple[str, str]] = set()

    def run(self) -> None:
        from custodian_agent.approvals import ApprovalBox
        from sdquorum.errors import SdquorumError

        while not self.done.wait(PERSON_POLL):
            for name, state in self.states.items():
                box = ApprovalBox(state)
                for item in box.pending():
                    rid = str(item.get("request_id", ""))
                    if (name, rid) in self.approved:
                        continue
                    try:
                        box.decide(rid, approved=True)
                    except SdquorumError:
                        continue  # decided already, or the agent is done with it
                    self.approved.add((name, rid))
                    print(
                        f"      {name} approves {item.get('kind')} request {rid} from {item.get('initiator')} "
                        f"on {item.get('node_id')} (at {PRONOUNS[name]} own site: custodian-agent approve {rid})",
                        flush=True,
                    )

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=10)


QUORUM = 3
STEPS = 13


class Demo:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.pki = root / "pki"
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.step_no = 0
        self.t0 = time.monotonic()
        # Tests set SDQUORUM_DEMO_PASSPHRASE_SEED to know the passphrases (and so the secrets to scan for).
        seed = os.environ.get("SDQUORUM_DEMO_PASSPHRASE_SEED")
        self.passphrases = {n: f"{seed}-{n}" if seed else secrets.token_urlsafe(18) for n in CUSTODIANS}

    def step(self, text: str) -> None:
        self.step_no += 1
        print(f"\n[{self.step_no:2d}/{STEPS}] {text}  (t={time.monotonic() - self.t0:.1f}s)", flush=True)

    def sdctl(self, *args: str, node_port: int) -> None:
        from sdctl.cli import main

        argv = [
            "--node",
            f"127.0.0.1:{node_port}",
            "--cert",
            str(self.pki / "admin.pem"),
            "--key",
            str(self.pki / "admin.key"),
            "--ca",
            str(self.pki / "ca.pem"),
            *args,
        ]
        rc = main(argv, out=lambda s: print(f"      {s}", flush=True))
        if rc != 0:
            raise SystemExit(f"demo: 'sdctl {' '.join(args)}' failed with exit code {rc}")

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        # 0600 like every file the processes make (they log no secret; still, not for other users)
        fd = os.open(self.root / f"{name}.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        log = os.fdopen(fd, "wb")  # closed when the process is reaped
        proc = subprocess.Popen(
            [sys.executable, *argv], stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
        self.procs.append((name, proc))
        return proc

    def start_node(self, node_id: str) -> tuple[subprocess.Popen[bytes], int]:
        port_file = self.root / f"{node_id}.port"
        port_file.unlink(missing_ok=True)
        proc = self.start(
            node_id,
            [
                "-m",
                "hsm_node.cli",
                "run",
                "--node-id",
                node_id,
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                str(self.root / node_id / "data"),
                "--tls-cert",
                str(self.pki / "node.pem"),
                "--tls-key",
                str(self.pki / "node.key"),
                "--ca",
                str(self.pki / "ca.pem"),
                "--attestation-cert",
                str(self.pki / f"attestation-{node_id}.pem"),
                "--attestation-key",
                str(self.pki / f"attestation-{node_id}.key"),
                "--port-file",
                str(port_file),
            ],
        )
        deadline = time.monotonic() + 30
        while not port_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"demo: {node_id} did not start; see {self.root / (node_id + '.log')}")
            time.sleep(0.05)
        port = int(port_file.read_text())
        print(f"      {node_id} is serving on 127.0.0.1:{port} (pid {proc.pid})", flush=True)
        return proc, port

    def start_agents(self, port: int) -> None:
        for name in CUSTODIANS:
            home = self.root / "custodians" / name
            self.start(
                f"agent-{name}",
                [
                    "-m",
                    "custodian_agent.cli",
                    "run",
                    "--node",
                    f"127.0.0.1:{port}",
                    "--tls-cert",
                    str(self.pki / f"custodian-{name}.pem"),
                    "--tls-key",
                    str(self.pki / f"custodian-{name}.key"),
                    "--ca",
                    str(self.pki / "ca.pem"),
                    "--attestation-root",
                    str(self.pki / "attestation-root.pem"),
                    "--wrapping-key",
                    str(home / "wrap.key"),
                    "--wrapping-cert",
                    str(home / "wrap.pem"),
                    "--state-dir",
                    str(home / "state"),
                    "--approval",
                    "manual",
                ],
                env={"SDQUORUM_PASSPHRASE": self.passphrases[name]},
            )
        print(
            f"      5 agents dial 127.0.0.1:{port} (each its own process, key and mTLS certificate;"
            " manual approval: each asks its custodian)",
            flush=True,
        )

    def stop(self, prefix: str = "", sig: int = signal.SIGTERM) -> None:
        keep = []
        for name, proc in self.procs:
            if name.startswith(prefix):
                if proc.poll() is None:
                    proc.send_signal(sig)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            else:
                keep.append((name, proc))
        self.procs = keep

    def run(self) -> None:
        from custodian_agent.cli import main as agent_main

        self.step(
            "Create a throw-away PKI: transport CA, node/admin/app/custodian certificates, attestation root"
        )
        from sdctl.cli import main as sdctl_main

        rc = sdctl_main(
            [
                "pki",
                "init",
                "--out",
                str(self.pki),
                "--node-id",
                "node-a",
                "--node-id",
                "node-b",
                "--custodians",
                ",".join(CUSTODIANS),
            ],
            out=lambda s: print(f"      {s}"),
        )
        if rc:
            raise SystemExit("demo: pki init failed")

        self.step(
            "Each custodian makes an RSA-3072 wrapping key (passphrase-encrypted, 0600) and certificate"
        )
        for name in CUSTODIANS:
            home = self.root / "custodians" / name
            home.mkdir(parents=True)
            os.environ["SDQUORUM_PASSPHRASE"] = self.passphrases[name]
            try:
                if agent_main(
                    [
                        "keygen",
                        "--name",
                        name,
                        "--key",
                        str(home / "wrap.key"),
                        "--cert",
                        str(home / "wrap.pem"),
                    ]
                ):
                    raise SystemExit(f"demo: keygen for {name} failed")
            finally:
                del os.environ["SDQUORUM_PASSPHRASE"]

        self.step("Start HSM node A and the five custodian agents")
        _, port_a = self.start_node("node-a")
        self.start_agents(port_a)
        self.sdctl("status", node_port=port_a)

        self.step(f"Activate node A: download its security domain, quorum {QUORUM} of {len(CUSTODIANS)}")
        sd_file = self.root / "security-domain.json"
        certs = [a for n in CUSTODIANS for a in ("--cert", str(self.root / "custodians" / n / "wrap.pem"))]
        self.sdctl("download", *certs, "--quorum", str(QUORUM), "--out", str(sd_file), node_port=port_a)
        self.sdctl("status", node_port=port_a)

        self.step("Create keys on node A and use them: AES-256-GCM encryption, Ed25519 signature")
        message = self.root / "message.txt"
        message.write_bytes(b"wire 1,000,000 EUR to account 42 -- approved by treasury")
        self.sdctl("keys", "create", "payments", "--type", "aes256-gcm", node_port=port_a)
        self.sdctl("keys", "create", "signer", "--type", "ed25519", node_port=port_a)
        self.sdctl(
            "encrypt",
            "payments",
            "--in",
            str(message),
            "--out",
            str(self.root / "message.enc"),
            "--aad",
            "demo",
            node_port=port_a,
        )
        self.sdctl(
            "sign", "signer", "--in", str(message), "--out", str(self.root / "message.sig"), node_port=port_a
        )

        self.step("Take a full backup of node A's key store (sealed under the security domain)")
        backup = self.root / "keys.backup"
        self.sdctl("backup", "--out", str(backup), node_port=port_a)

        self.step("DISASTER: kill node A (SIGKILL) and delete its data directory and sealing key")
        self.stop("node-a", signal.SIGKILL)
        shutil.rmtree(self.root / "node-a")
        print(
            "      node A is gone: only the SD file, the backup and the custodians' keys remain", flush=True
        )

        self.step("Start a brand-new node B (PROVISIONED, no keys)")
        _, port_b = self.start_node("node-b")
        self.sdctl("status", node_port=port_b)

        self.step("Custodians point their agents at node B")
        self.stop("agent-")
        self.start_agents(port_b)

        self.step(
            "Recovery ceremony: each agent checks node B's attestation and asks its custodian; "
            "approved, it releases only its own share"
        )
        custodians = Custodians({n: self.root / "custodians" / n / "state" for n in CUSTODIANS})
        custodians.start()
        try:
            self.sdctl(
                "recover",
                "--sd-file",
                str(sd_file),
                "--reason",
                "demo: datacentre A destroyed",
                "--ttl",
                "120",
                node_port=port_b,
            )
        finally:
            custodians.stop()
        self.sdctl("status", node_port=port_b)

        self.step("Restore node A's backup onto node B")
        self.sdctl("restore", str(backup), "--yes", node_port=port_b)
        self.sdctl("keys", "list", node_port=port_b)

        self.step("Prove it: node B decrypts A's ciphertext and verifies A's signature")
        self.sdctl(
            "decrypt",
            "payments",
            "--in",
            str(self.root / "message.enc"),
            "--out",
            str(self.root / "message.dec"),
            "--aad",
            "demo",
            node_port=port_b,
        )
        if (self.root / "message.dec").read_bytes() != message.read_bytes():
            raise SystemExit("demo: the decrypted message differs from the original")
        print("      decrypted text matches the original", flush=True)
        self.sdctl(
            "verify",
            "signer",
            "--in",
            str(message),
            "--signature",
            str(self.root / "message.sig"),
            node_port=port_b,
        )

        self.step("Stop every process")
        self.stop("agent-")  # agents first, so the node's drain has no open streams to wait for
        self.stop()
        print(
            f"\nDemo complete in {time.monotonic() - self.t0:.1f}s: node A was rebuilt as node B without any "
            "machine but B ever holding more than one share.",
            flush=True,
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    parser.add_argument(
        "--workdir", type=Path, help="work here (a new directory; kept) instead of a temporary one"
    )
    parser.add_argument(
        "--pool",
        action="store_true",
        help="the HSM pool instead: etcd, members killed and joined (demo_pool.py)",
    )
    args = parser.parse_args()
    if args.workdir:
        args.workdir.mkdir(parents=True)
        root, args.keep = args.workdir, True
    else:
        root = Path(tempfile.mkdtemp(prefix="sdquorum-demo-"))
    if args.pool:
        from demo_pool import run_pool_demo  # deploy/ is this script's directory

        return run_pool_demo(root, args.keep)
    demo = Demo(root)
    print(f"sdquorum demo; working directory {root}")
    try:
        demo.run()
    except BaseException:
        print(f"\ndemo failed; process logs are in {root}", file=sys.stderr)
        demo.stop()
        raise
    finally:
        demo.stop()
    if not args.keep:
        shutil.rmtree(root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
