"""Recovery across hosts: node, admin and every custodian agent in its own network namespace.

Real ``hsm-node``, ``custodian-agent`` and ``sdctl`` processes, as in ``deploy/demo.py``, but each on
its own host of a private test network (:mod:`netns`: namespaces on a bridge, ``10.77.0.0/24``), so
every connection is a real TCP/mTLS connection between different addresses and a custodian's link
can be cut without the processes knowing. The node certificate carries the nodes' namespace
addresses (``sdctl pki init --ip``); the admin runs ``sdctl`` from a namespace of its own.

One PKI, five RSA-2048 wrapping keys and one activated domain (node A, 3 of 5) are shared by the
module; each test then brings up a fresh node B with the five agents and recovers onto it.
Needs root and iproute2: skips with the reason otherwise.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import Custodians
from netns import Net, cleanup_run, probe

pytestmark = pytest.mark.slow

CUSTODIANS = ["alice", "bob", "carol", "dave", "erin"]
NODE_A_IP, NODE_B_IP, ADMIN_IP = "10.77.0.2", "10.77.0.3", "10.77.0.4"
PORT = 7443
PY = sys.executable


def passphrase(name: str) -> str:
    return f"multihost-{name}-passphrase"


def opts(**flags: str | Path) -> list[str]:
    """``opts(tls_cert=p)`` -> ``["--tls-cert", "p"]``."""
    return [a for k, v in flags.items() for a in ("--" + k.replace("_", "-"), str(v))]


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no {path.name})"
    return f"--- {path.name} ---\n" + "\n".join(text[-lines:])


def wait_until(what: str, predicate: Callable[[], bool], timeout: float, logs: list[Path]) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}\n" + "\n".join(map(tail, logs)))
        time.sleep(0.1)


# ---------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def netns_session() -> Iterator[None]:
    """Skip unless namespaces work here; at the end remove anything of this run that is left."""
    reason = probe()
    if reason is not None:
        if "iproute2" in reason and os.environ.get("SDQUORUM_REQUIRE_TOOLS") == "1":
            pytest.fail(f"SDQUORUM_REQUIRE_TOOLS=1 but {reason}")
        pytest.skip(reason)
    yield
    left = cleanup_run()
    assert not left, f"network namespaces or links of this run were left behind and removed now: {left}"


@dataclass(frozen=True)
class Pki:
    dir: Path
    custodians: Path  # custodians/<name>/wrap.key, wrap.pem

    def wrap_cert(self, name: str) -> Path:
        return self.custodians / name / "wrap.pem"


@pytest.fixture(scope="module")
def pki(netns_session: None, tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("multihost-pki")
    d = root / "pki"
    r = subprocess.run(
        [
            PY,
            "-m",
            "sdctl.cli",
            "pki",
            "init",
            "--node-id",
            "node-a",
            "--node-id",
            "node-b",
            "--custodians",
            ",".join(CUSTODIANS),
            "--ip",  # the node certificate names both nodes' namespace addresses
            NODE_A_IP,
            "--ip",
            NODE_B_IP,
            "--out",
            str(d),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    homes = root / "custodians"
    procs = []
    for name in CUSTODIANS:  # each custodian makes its own key (in parallel: RSA-2048 for speed)
        (homes / name).mkdir(parents=True)
        procs.append(
            subprocess.Popen(
                [
                    PY,
                    "-m",
                    "custodian_agent.cli",
                    "keygen",
                    *opts(
                        name=name, bits="2048", key=homes / name / "wrap.key", cert=homes / name / "wrap.pem"
                    ),
                ],
                env={**os.environ, "SDQUORUM_PASSPHRASE": passphrase(name)},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
        )
    for name, p in zip(CUSTODIANS, procs, strict=True):
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0, f"keygen {name}: {out.decode(errors='replace')}"
    return Pki(d, homes)


class Site:
    """The processes of one test on one :class:`Net`: nodes, agents and the admin's ``sdctl``."""

    def __init__(self, net: Net, pki: Pki, work: Path) -> None:
        self.net, self.pki, self.work = net, pki, work
        work.mkdir(parents=True, exist_ok=True)
        self.logs: list[Path] = []
        self.persons = Custodians()  # each custodian approving what their agent asks

    def log(self, name: str) -> Path:
        path = self.work / f"{name}.log"
        if path not in self.logs:
            self.logs.append(path)
        return path

    def start_node(self, node_id: str, ip: str) -> Path:
        """``hsm-node run --listen IP:7443`` in host ``node_id``; returns its log once it serves."""
        self.net.add_host(node_id, ip)
        port_file = self.work / f"{node_id}.port"
        p = self.pki.dir
        proc = self.net.run(
            node_id,
            [
                PY,
                "-m",
                "hsm_node.cli",
                "run",
                *opts(
                    node_id=node_id,
                    listen=f"{ip}:{PORT}",
                    data_dir=self.work / node_id / "data",
                    port_file=port_file,
                    tls_cert=p / "node.pem",
                    tls_key=p / "node.key",
                    ca=p / "ca.pem",
                    attestation_cert=p / f"attestation-{node_id}.pem",
                    attestation_key=p / f"attestation-{node_id}.key",
                ),
            ],
            log=self.log(node_id),
        )
        wait_until(
            f"{node_id} to serve",
            lambda: port_file.exists() or proc.poll() is not None,
            30,
            self.logs,
        )
        assert proc.poll() is None, f"{node_id} exited\n{tail(self.log(node_id))}"
        return self.log(node_id)

    def start_agents(self, node_ip: str) -> dict[str, str]:
        """One ``custodian-agent run --approval manual`` per custodian, each on its own host, and its
        person approving each request it posts (:class:`harness.Custodians`, through its state dir)."""
        p = self.pki.dir
        addresses = {}
        for name in CUSTODIANS:
            host = f"agent-{name}"
            addresses[name] = self.net.add_host(host)
            home = self.pki.custodians / name
            self.net.run(
                host,
                [
                    PY,
                    "-m",
                    "custodian_agent.cli",
                    "run",
                    *opts(
                        node=f"{node_ip}:{PORT}",
                        approval="manual",
                        tls_cert=p / f"custodian-{name}.pem",
                        tls_key=p / f"custodian-{name}.key",
                        ca=p / "ca.pem",
                        attestation_root=p / "attestation-root.pem",
                        wrapping_key=home / "wrap.key",
                        wrapping_cert=home / "wrap.pem",
                        state_dir=self.work / f"state-{name}",
                    ),
                ],
                env={"SDQUORUM_PASSPHRASE": passphrase(name)},
                log=self.log(host),
            )
            self.persons.add(name, self.work / f"state-{name}")
        self.persons.start()
        return addresses

    def wait_connected(self, node_log: Path, names: list[str], timeout: float = 30) -> None:
        def connected() -> bool:
            text = node_log.read_text(errors="replace")
            return all(f"agent custodian/{n} connected" in text for n in names)

        wait_until(f"agents {names} to connect", connected, timeout, self.logs)

    def sdctl(self, node_ip: str, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        """``sdctl`` as the admin, from the admin's own host."""
        if "admin" not in self.net.hosts:
            self.net.add_host("admin", ADMIN_IP)
        p = self.pki.dir
        return self.net.call(
            "admin",
            [
                PY,
                "-m",
                "sdctl.cli",
                *opts(node=f"{node_ip}:{PORT}", cert=p / "admin.pem", key=p / "admin.key", ca=p / "ca.pem"),
                *list(args),
            ],
            timeout=timeout,
        )

    def ok(self, node_ip: str, *args: str) -> str:
        r = self.sdctl(node_ip, *args)
        assert r.returncode == 0, (
            f"sdctl {' '.join(args)}: exit {r.returncode}\n{r.stdout}{r.stderr}\n"
            + "\n".join(map(tail, self.logs))
        )
        return r.stdout

    def recover(
        self, sd_file: Path, *extra: str
    ) -> tuple[subprocess.CompletedProcess[str], dict[str, object]]:
        """``sdctl --output json recover``: the result and the last progress report (or final result)."""
        r = self.sdctl(
            NODE_B_IP,
            "--output",
            "json",
            "recover",
            "--sd-file",
            str(sd_file),
            "--reason",
            "multihost test",
            *extra,
        )
        lines = [line for line in r.stdout.splitlines() if line.startswith("{")]
        assert lines, f"no progress from sdctl recover: {r.stdout}{r.stderr}\n" + "\n".join(
            map(tail, self.logs)
        )
        final = json.loads(lines[-1])
        assert isinstance(final, dict)
        return r, final


@dataclass(frozen=True)
class Domain:
    sd_file: Path
    backup: Path
    message: bytes
    ciphertext: Path


@pytest.fixture(scope="module")
def domain(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Domain]:
    """Node A in its own namespace, activated 3 of 5 by the admin from another; a key made, a message
    encrypted, the key store backed up; then node A is killed (SIGKILL) and its network removed."""
    work = tmp_path_factory.mktemp("multihost-node-a")
    with Net() as net:
        site = Site(net, pki, work)
        site.start_node("node-a", NODE_A_IP)
        certs = [a for n in CUSTODIANS for a in ("--cert", str(pki.wrap_cert(n)))]
        sd_file = work / "security-domain.json"
        site.ok(NODE_A_IP, "download", *certs, "--quorum", "3", "--out", str(sd_file))
        assert "ACTIVATED" in site.ok(NODE_A_IP, "status")
        message = b"multihost: wire 1,000,000 EUR to account 42"
        (work / "message.txt").write_bytes(message)
        site.ok(NODE_A_IP, "keys", "create", "payments", "--type", "aes256-gcm")
        ciphertext = work / "message.enc"
        site.ok(NODE_A_IP, "encrypt", "payments", "--in", str(work / "message.txt"), "--out", str(ciphertext))
        backup = work / "keys.backup"
        site.ok(NODE_A_IP, "backup", "--out", str(backup))
        net.stop("node-a", signal.SIGKILL)  # the disaster
    yield Domain(sd_file, backup, message, ciphertext)


@pytest.fixture
def site(pki: Pki, tmp_path: Path) -> Iterator[Site]:
    with Net() as net:
        s = Site(net, pki, tmp_path)
        try:
            yield s
        finally:
            s.persons.stop()


def statuses(final: dict[str, object]) -> dict[str, str]:
    custodians = final["custodians"]
    assert isinstance(custodians, list)
    return {c["name"]: c["status"] for c in custodians}


def accepted_in_log(node_log: Path, session_id: object = "") -> list[str]:
    """Custodians whose release node B's log records as accepted (in ``session_id``, if given)."""
    lines = [
        line for line in node_log.read_text(errors="replace").splitlines() if f"session {session_id}" in line
    ]
    return [n for n in CUSTODIANS if any(f"answered via custodian/{n}: accepted" in line for line in lines)]


# ---------------------------------------------------------------------------------------- tests


def test_full_recovery_across_namespaces(site: Site, domain: Domain) -> None:
    node_log = site.start_node("node-b", NODE_B_IP)
    assert "PROVISIONED" in site.ok(NODE_B_IP, "status")
    addresses = site.start_agents(NODE_B_IP)
    assert len(set(addresses.values()) | {NODE_B_IP, ADMIN_IP}) == len(CUSTODIANS) + 2  # all different hosts
    site.wait_connected(node_log, CUSTODIANS)

    r, final = site.recover(domain.sd_file, "--ttl", "60")
    assert r.returncode == 0, r.stdout + r.stderr + "\n".join(map(tail, site.logs))
    assert final["state"] == "COMPLETED" and final["accepted"] == 3
    assert sorted(statuses(final).values()).count("ACCEPTED") == 3
    assert "ACTIVATED" in site.ok(NODE_B_IP, "status")
    # Every agent that released saw node B's namespace address in the attested request.
    released = accepted_in_log(node_log)
    assert len(released) == 3
    for name in released:
        assert f'"node_address": "{NODE_B_IP}:{PORT}"' in site.log(f"agent-{name}").read_text()

    # Node A's key comes back through its backup and decrypts what A encrypted.
    site.ok(NODE_B_IP, "restore", str(domain.backup), "--yes")
    out = site.work / "message.dec"
    site.ok(NODE_B_IP, "decrypt", "payments", "--in", str(domain.ciphertext), "--out", str(out))
    assert out.read_bytes() == domain.message


def test_two_custodians_cut_mid_ceremony_the_other_three_complete_it(site: Site, domain: Domain) -> None:
    node_log = site.start_node("node-b", NODE_B_IP)
    site.start_agents(NODE_B_IP)
    site.wait_connected(node_log, CUSTODIANS)
    cut = ["bob", "dave"]
    for name in cut:  # connected, then taken off the bridge: silence, no FIN, no RST
        site.net.cut(f"agent-{name}", how="detach")

    r, final = site.recover(domain.sd_file, "--ttl", "30")
    assert r.returncode == 0, r.stdout + r.stderr + "\n".join(map(tail, site.logs))
    assert final["state"] == "COMPLETED" and final["accepted"] == 3
    uncut = [n for n in CUSTODIANS if n not in cut]
    assert statuses(final) == {n: "NOT_NEEDED" if n in cut else "ACCEPTED" for n in CUSTODIANS}
    assert accepted_in_log(node_log) == uncut
    assert "ACTIVATED" in site.ok(NODE_B_IP, "status")


def test_three_cut_fail_at_the_deadline_then_a_new_session_succeeds(site: Site, domain: Domain) -> None:
    node_log = site.start_node("node-b", NODE_B_IP)
    site.start_agents(NODE_B_IP)
    site.wait_connected(node_log, CUSTODIANS)
    cut = ["carol", "dave", "erin"]
    for name in cut:  # connected, then their veth goes down: silence, no FIN, no RST
        site.net.cut(f"agent-{name}")

    t0 = time.monotonic()
    r, final = site.recover(domain.sd_file, "--ttl", "10")
    failed_after = time.monotonic() - t0
    assert r.returncode == 3, r.stdout + r.stderr
    assert "missing custodians: carol, dave, erin" in r.stderr, r.stderr
    assert final["state"] == "FAILED"
    st = statuses(final)  # the cut ones still open: asked (into a dead link) or never reached
    assert all(st[n] in ("REQUESTED", "NOT_CONNECTED") for n in cut), st
    assert all(st[n] == "ACCEPTED" for n in CUSTODIANS if n not in cut), st
    assert failed_after < 20, f"the 10 s session took {failed_after:.1f}s to fail"
    assert "PROVISIONED" in site.ok(NODE_B_IP, "status")  # was RECOVERY_PENDING

    for name in cut:
        site.net.restore(f"agent-{name}")
    t1 = time.monotonic()
    r, final = site.recover(domain.sd_file, "--ttl", "60")
    assert r.returncode == 0, r.stdout + r.stderr + "\n".join(map(tail, site.logs))
    assert final["state"] == "COMPLETED" and final["accepted"] == 3, final
    back = [n for n in accepted_in_log(node_log, final["session_id"]) if n in cut]
    assert statuses(final)["alice"] == statuses(final)["bob"] == "ACCEPTED" and len(back) == 1, final
    # It answered on a new connection: its agent redialled (with backoff) once the link was back.
    assert node_log.read_text().count(f"agent custodian/{back[0]} connected") >= 2, tail(node_log)
    assert "ACTIVATED" in site.ok(NODE_B_IP, "status")
    print(
        f"session 1 failed after {failed_after:.1f}s; session 2 completed {time.monotonic() - t1:.1f}s after restore"
    )
