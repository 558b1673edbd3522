"""Test harness: a real 3-member etcd cluster (Debian's ``etcd-server``) with mutual TLS everywhere.

:class:`EtcdCluster` writes an etcd PKI (:mod:`sdquorum.etcd_pki`: its own CA, one certificate per
member, client certificates for ``root`` and for pool members), starts ``etcd`` members with peer
and client TLS, ``--client-cert-auth`` and ``--peer-cert-allowed-cn``, waits until every member sees
a leader, and can stop, kill (SIGKILL) and restart one member for the "lose one / lose two" tests.
:meth:`EtcdCluster.enable_auth` turns on etcd's authentication with one etcd user per pool member
(the client certificate's CN), so only member certificates can write under ``/sdquorum/``.

Two placements:

* **loopback** (default): every member on 127.0.0.1 with free ports, data in a temporary directory.
* **network namespaces** (``net=``, a :class:`netns.Net` from tests/multihost): each member in its
  own namespace at its own address on the private bridge, on the standard ports 2379/2380, so a
  member can be cut off the network without being told (:meth:`netns.Net.cut`). Clients must then
  run in a namespace of the same net too.

Timing is tuned for tests (heartbeat 100 ms, election 1 s: etcd's defaults), so losing the leader
costs about one second.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import pytest

from hsm_node.pool import access
from hsm_node.pool.etcd import EtcdClient, EtcdConfig
from sdquorum import etcd_pki
from sdquorum.errors import TransportError

if TYPE_CHECKING:  # tests/multihost is put on sys.path only when namespaces are used
    from netns import Net

ETCD = "etcd"
MEMBER_ROLE = access.MEMBER_ROLE  # what sdctl pool allow grants
HEARTBEAT_MS = 100
ELECTION_MS = 1000
_CIPHERS = ",".join(  # TLS 1.2 only with forward-secret AEAD suites (TLS 1.3 is always allowed)
    [
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
    ]
)


def etcd_binary() -> str:
    """Path of ``etcd``, else skip (or fail when SDQUORUM_REQUIRE_TOOLS=1) saying how to install it."""
    found = shutil.which(ETCD)
    if found is not None:
        return found
    reason = "no 'etcd' on PATH: run scripts/ensure-test-tools.sh as root (Debian's etcd-server)"
    if os.environ.get("SDQUORUM_REQUIRE_TOOLS") == "1":
        pytest.fail(f"SDQUORUM_REQUIRE_TOOLS=1 but {reason}")
    pytest.skip(reason)


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass(frozen=True)
class ClientPair:
    cert: Path
    key: Path


@dataclass
class Member:
    name: str
    host: str  # address the member listens on
    client_port: int
    peer_port: int
    data_dir: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    extra: list[str] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"https://{self.host}:{self.peer_port}"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@contextlib.contextmanager
def running_cluster(
    workdir: Path,
    *,
    node_ids: tuple[str, ...] = ("node-a", "node-b"),
    users_for: tuple[str, ...] | None = None,
    extra: tuple[str, ...] = (),
) -> Iterator[EtcdCluster]:
    """A started 3-member cluster with client-certificate auth on (:meth:`EtcdCluster.enable_auth`),
    each member run with ``extra`` flags; every member killed on exit."""
    with EtcdCluster(workdir, node_ids=node_ids) as c:
        for m in c.members:
            m.extra = list(extra)
        c.start()
        asyncio.run(c.enable_auth(users_for=users_for))
        yield c


class EtcdCluster:
    """A running etcd cluster for one test (or module). Use as a context manager."""

    def __init__(
        self,
        workdir: Path,
        *,
        size: int = 3,
        node_ids: tuple[str, ...] = ("node-a", "node-b"),
        net: Net | None = None,
    ) -> None:
        self.binary = etcd_binary()
        self.workdir = workdir
        self.net = net
        self.pki = workdir / "etcd-pki"
        self.pki.mkdir(parents=True, mode=0o700)
        self.token = f"sdq-{secrets.token_hex(4)}"
        self.node_ids = node_ids
        if net is None:
            ports = free_ports(2 * size)
            hosts = ["127.0.0.1"] * size
            pairs = [(ports[2 * i], ports[2 * i + 1]) for i in range(size)]
        else:
            hosts = [net.add_host(f"etcd{i}") for i in range(size)]
            pairs = [(2379, 2380)] * size
        self.members = [
            Member(
                f"etcd{i}",
                hosts[i],
                pairs[i][0],
                pairs[i][1],
                workdir / f"etcd{i}.data",
                workdir / f"etcd{i}.log",
            )
            for i in range(size)
        ]
        self._write_pki()

    # ------------------------------------------------------------------ PKI

    def _write_pki(self) -> None:
        now = datetime.now(UTC)
        ca = etcd_pki.make_etcd_ca(now)
        self._pair("ca", ca)
        for m in self.members:
            self._pair(m.name, etcd_pki.issue_etcd_member_cert(ca, m.name, now, ip_addresses=(m.host,)))
        self._pair("root", etcd_pki.issue_etcd_client_cert(ca, etcd_pki.ETCD_ROOT_USER, now))
        for node_id in self.node_ids:
            user = etcd_pki.etcd_user(node_id)
            self._pair(user, etcd_pki.issue_etcd_client_cert(ca, user, now))
        # a certificate from another CA with a member's user name: must never get in
        other = etcd_pki.make_etcd_ca(now)
        self._pair(
            "stranger", etcd_pki.issue_etcd_client_cert(other, etcd_pki.etcd_user(self.node_ids[0]), now)
        )

    def _pair(self, stem: str, issued: object) -> None:
        cert_pem: bytes = issued.cert_pem  # type: ignore[attr-defined]
        key_pem: bytes = issued.key_pem  # type: ignore[attr-defined]
        (self.pki / f"{stem}.pem").write_bytes(cert_pem)
        key = self.pki / f"{stem}.key"
        key.write_bytes(key_pem)
        key.chmod(0o600)

    @property
    def ca(self) -> Path:
        return self.pki / "ca.pem"

    def client(self, user: str) -> ClientPair:
        """``root``, ``stranger`` or a node id (its ``node.<id>`` certificate)."""
        stem = user if user in ("root", "stranger") else etcd_pki.etcd_user(user)
        return ClientPair(self.pki / f"{stem}.pem", self.pki / f"{stem}.key")

    def config(self, user: str, *, endpoints: list[str] | None = None, **timeouts: float) -> EtcdConfig:
        pair = self.client(user)
        return EtcdConfig(
            endpoints=tuple(endpoints or self.endpoints),
            ca_pem=self.ca.read_bytes(),
            cert_pem=pair.cert.read_bytes(),
            key_pem=pair.key.read_bytes(),
            **timeouts,
        )

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    # ------------------------------------------------------------------ processes

    def _argv(self, m: Member, state: str) -> list[str]:
        pki = self.pki
        listen_host = "0.0.0.0" if self.net is not None else m.host  # noqa: S104  # inside its own namespace
        return [
            self.binary,
            "--name",
            m.name,
            "--data-dir",
            str(m.data_dir),
            "--listen-client-urls",
            f"https://{listen_host}:{m.client_port}",
            "--advertise-client-urls",
            f"https://{m.host}:{m.client_port}",
            "--listen-peer-urls",
            f"https://{listen_host}:{m.peer_port}",
            "--initial-advertise-peer-urls",
            m.peer_url,
            "--initial-cluster",
            ",".join(f"{x.name}={x.peer_url}" for x in self.members),
            "--initial-cluster-token",
            self.token,
            "--initial-cluster-state",
            state,
            "--cert-file",
            str(pki / f"{m.name}.pem"),
            "--key-file",
            str(pki / f"{m.name}.key"),
            "--trusted-ca-file",
            str(self.ca),
            "--client-cert-auth",
            "--peer-cert-file",
            str(pki / f"{m.name}.pem"),
            "--peer-key-file",
            str(pki / f"{m.name}.key"),
            "--peer-trusted-ca-file",
            str(self.ca),
            "--peer-client-cert-auth",
            "--peer-cert-allowed-cn",
            etcd_pki.ETCD_MEMBER_CN,
            "--cipher-suites",
            _CIPHERS,
            "--heartbeat-interval",
            str(HEARTBEAT_MS),
            "--election-timeout",
            str(ELECTION_MS),
            "--pre-vote",  # a member that rejoins does not call an election that unseats a working leader
            "--enable-grpc-gateway=false",
            "--logger",
            "zap",
            "--log-outputs",
            "stderr",
            *m.extra,
        ]

    def _start(self, m: Member, state: str) -> None:
        argv = self._argv(m, state)
        if self.net is not None:
            m.proc = self.net.run(m.name, argv, log=m.log)
        else:
            with open(m.log, "ab") as log:
                m.proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
                )

    def start(self, timeout: float = 30.0) -> None:
        for m in self.members:
            self._start(m, "new")
        self.wait_healthy(timeout)

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        """Stop member ``name`` (SIGTERM; ``kill`` for SIGKILL) and wait for it to exit."""
        m = self.member(name)
        if m.proc is not None and m.proc.poll() is None:
            m.proc.send_signal(sig)
            try:
                m.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                m.proc.kill()
                m.proc.wait()
        m.proc = None

    def kill(self, name: str) -> None:
        self.stop(name, signal.SIGKILL)

    def restart(self, name: str) -> None:
        """Start member ``name`` again on its data directory (it rejoins with what it had)."""
        m = self.member(name)
        if m.running():
            raise RuntimeError(f"{name} is running")
        self._start(m, "existing")

    def member(self, name: str) -> Member:
        return next(m for m in self.members if m.name == name)

    def close(self) -> None:
        for m in self.members:
            with contextlib.suppress(Exception):
                self.stop(m.name, signal.SIGKILL)

    def __enter__(self) -> EtcdCluster:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ health and auth

    def wait_healthy(self, timeout: float = 30.0, names: list[str] | None = None) -> float:
        """Wait until each running member (or ``names``) reports the same leader and has applied the
        same log (a restarted member has caught up: losing another one now keeps a quorum that
        commits at once); seconds waited."""
        if self.net is not None:
            return self._wait_healthy_netns(timeout)
        start = time.monotonic()
        asyncio.run(self.healthy(timeout, names))
        return time.monotonic() - start

    async def healthy(self, timeout: float = 30.0, names: list[str] | None = None) -> None:
        """:meth:`wait_healthy` for a caller inside an event loop (loopback only)."""
        members = [m for m in self.members if (names is None or m.name in names) and m.running()]
        deadline = time.monotonic() + timeout
        async with EtcdClient(self.config("root", attempt_timeout=0.5)) as c:
            while True:
                dead = [m.name for m in members if not m.running()]
                if dead:
                    raise RuntimeError(f"etcd member(s) {dead} exited:\n{self.tail()}")
                try:
                    statuses = [await c.status(m.endpoint) for m in members]
                except TransportError:
                    statuses = []
                leaders = {s.leader for s in statuses}
                applied = {s.raft_applied_index for s in statuses}
                if statuses and 0 not in leaders and len(leaders) == 1 and len(applied) == 1:
                    return  # one leader, and every member has caught up with the log
                if time.monotonic() > deadline:
                    raise RuntimeError(f"etcd not healthy after {timeout} s:\n{self.tail()}")
                await asyncio.sleep(0.1)

    def _wait_healthy_netns(self, timeout: float) -> float:
        """In namespaces the test process cannot reach the members: ask from a client namespace."""
        start = time.monotonic()
        r = self.probe("root", "health", str(timeout), call_timeout=1.0, timeout=timeout + 15)
        if not r["ok"]:
            raise RuntimeError(f"etcd not healthy in namespaces: {r}\n{self.tail()}")
        return time.monotonic() - start

    def probe(
        self,
        user: str,
        op: str,
        *args: str,
        host: str = "etcd-client",
        endpoints: list[str] | None = None,
        call_timeout: float = 4.0,
        timeout: float = 60.0,
    ) -> dict[str, Any]:
        """Run one client call (tests/pool/etcd_probe.py) in namespace ``host`` (made on first use
        for ``etcd-client``): the namespaced cluster's only clients live in the same net."""
        assert self.net is not None, "probe() is for clusters in network namespaces"
        if host not in self.net.hosts:
            self.net.add_host(host)
        argv = [
            sys.executable,
            str(Path(__file__).with_name("etcd_probe.py")),
            str(self.pki),
            user,
            ",".join(endpoints or self.endpoints),
            op,
            *args,
            "--call-timeout",
            str(call_timeout),
        ]
        r = self.net.call(host, argv, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"etcd_probe {op} failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
        result: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
        return result

    async def leader(self) -> str:
        """The name of the member that leads now (loopback only)."""
        async with EtcdClient(self.config("root", attempt_timeout=0.5)) as c:
            statuses = {m.name: await c.status(m.endpoint) for m in self.members if m.running()}
        leaders = {s.leader for s in statuses.values()}
        if len(leaders) != 1 or 0 in leaders:
            raise RuntimeError(f"no single leader: {statuses}")
        return next(name for name, s in statuses.items() if s.member_id == s.leader)

    async def enable_auth(self, users_for: tuple[str, ...] | None = None) -> None:
        """As ``root``: the member role on /sdquorum/, one etcd user per node id (``users_for``, by
        default every node id: a node id left out has a certificate but no etcd user, as a new
        member before ``sdctl pool allow``), auth on."""
        node_ids = self.node_ids if users_for is None else users_for
        if self.net is not None:
            r = await asyncio.to_thread(self.probe, "root", "auth", ",".join(node_ids))
            if not r["ok"]:
                raise RuntimeError(f"etcd auth bootstrap failed: {r}")
            return
        users = [etcd_pki.etcd_user(n) for n in node_ids]
        async with EtcdClient(self.config("root")) as c:
            await c.bootstrap_auth(MEMBER_ROLE, users)

    def member_args(self, node_id: str, attestation_root: Path, pool: str) -> list[str]:
        """The ``hsm-node run`` flags of pool member ``node_id`` (its etcd client pair)."""
        pair = self.client(node_id)
        return [
            "--pool-etcd", ",".join(self.endpoints), "--pool-etcd-cert", str(pair.cert),
            "--pool-etcd-key", str(pair.key), "--pool-etcd-ca", str(self.ca), "--pool-name", pool,
            "--pool-attestation-root", str(attestation_root),
        ]  # fmt: skip

    def root_args(self, user: str = "root") -> list[str]:
        """``sdctl pool allow|remove``'s etcd root flags, made of ``user``'s pair (``root``, or a
        node id to present a member's certificate instead)."""
        pair = self.client(user)
        return [
            "--etcd", ",".join(self.endpoints), "--etcd-cert", str(pair.cert),
            "--etcd-key", str(pair.key), "--etcd-ca", str(self.ca),
        ]  # fmt: skip

    def tail(self, lines: int = 15) -> str:
        out = []
        for m in self.members:
            try:
                text = m.log.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                text = ["(no log)"]
            out.append(f"--- {m.name} ---\n" + "\n".join(text))
        return "\n".join(out)
