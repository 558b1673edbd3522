"""Test harness (imported as ``harness``; ``tests/`` is on sys.path): in-process clusters over real
mTLS on port 0 (a node server, agents, an admin client) and the PKI fixtures they use.

Each certificate comes from a PKI the fixtures make (``sdctl pki init``'s code); a second, foreign
PKI (other transport CA, other attestation root) plays the attacker.

Agents run with ``manual`` approval, as in production: :class:`Custodians` plays each custodian's
person, approving the requests their agent posts through the agent's spool, as
``custodian-agent approve`` does (:meth:`ApprovalBox.decide`), for agents in this process and in
processes of their own alike. No agent here answers a request that releases a share by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import sdquorum_rpc  # noqa: F401  # pins cipher suites before grpc initialises
from custodian_agent.agent import Agent, AgentConfig
from custodian_agent.approvals import ApprovalBox
from hsm_node.cryptopool import CryptoPool
from hsm_node.node import Node, NodeConfig
from hsm_node.server import MAX_BATCH_ITEMS, NodeServer, serve
from hsm_node.store import SqliteNodeStore
from sdctl.pkifiles import init_pki
from sdquorum import backup, envelopes, pki
from sdquorum.encoding import b64e, canonical_json
from sdquorum.envelopes import CustodianPolicy
from sdquorum.errors import NotFoundError, UsageError
from sdquorum.keys import SoftwareWrappingKey
from sdquorum.sdfile import DomainSecrets, SignedHeader
from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2 as pb
from sdquorum_rpc.admin import AdminClient
from sdquorum_rpc.tls import DEFAULT_MAX_MESSAGE_BYTES, TlsFiles

NAMES = ["alice", "bob", "carol", "dave", "erin", "frank"]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def pki_dir(tmp_path_factory: pytest.TempPathFactory, now: datetime) -> Path:
    d = tmp_path_factory.mktemp("pki") / "pki"
    init_pki(d, ["node-a", "node-b"], NAMES, now)
    return d


@pytest.fixture(scope="session")
def foreign_pki_dir(tmp_path_factory: pytest.TempPathFactory, now: datetime) -> Path:
    d = tmp_path_factory.mktemp("foreign") / "pki"
    init_pki(d, ["node-a", "rogue"], NAMES, now)
    return d


class UncheckedTlsFiles(TlsFiles):
    """An attacker's client: its files go to grpc as they are, without the local checks our clients
    make before dialling (validity, issuer), so a test shows what the *server* refuses."""

    def check(self) -> tuple[bytes, bytes, bytes]:
        return self.read()


def tls(pki: Path, stem: str) -> TlsFiles:
    return TlsFiles(pki / f"{stem}.pem", pki / f"{stem}.key", pki / "ca.pem")


def load_attestation(pki: Path, node_id: str) -> tuple[Ed25519PrivateKey, bytes]:
    key = serialization.load_pem_private_key((pki / f"attestation-{node_id}.key").read_bytes(), None)
    assert isinstance(key, Ed25519PrivateKey)
    cert = (pki / f"attestation-{node_id}.pem").read_bytes()
    return key, x509.load_pem_x509_certificate(cert).public_bytes(serialization.Encoding.DER)


class Clock:
    """A clock the test moves by hand; starts at the real time."""

    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


PERSON_POLL = 0.005  # seconds between a stand-in person's looks at their agent's pending requests


class Custodians:
    """Each custodian's person at their own site, approving every request their agent posts.

    A thread looks at each agent's ``STATE_DIR/pending`` every :data:`PERSON_POLL` seconds and
    approves what it finds through :class:`ApprovalBox` (the code ``custodian-agent approve`` runs),
    so the agent goes through its real manual-approval path: post the details, wait, read a
    decision bound to their SHA-256. Works for agents in this process and in processes of their
    own (only the state directory is shared). ``approved`` records ``(name, request_id)`` in order.
    Use as a context manager, or :meth:`start` / :meth:`stop`, or run :meth:`serve` as a task.
    """

    def __init__(self, state_dirs: dict[str, Path] | None = None, poll: float = PERSON_POLL) -> None:
        self.state_dirs: dict[str, Path] = dict(state_dirs or {})
        self.poll = poll
        self.approved: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, name: str, state_dir: Path) -> None:
        with self._lock:
            self.state_dirs[name] = state_dir

    def approve_pending(self) -> list[tuple[str, str]]:
        """One look at every agent's pending requests; approves each not yet decided."""
        with self._lock:
            dirs = list(self.state_dirs.items())
        done = []
        for name, state_dir in dirs:
            try:  # the cheap look first: most looks find nothing
                if not any(f.endswith(".json") for f in os.listdir(state_dir / "pending")):
                    continue
            except FileNotFoundError:
                continue
            box = ApprovalBox(state_dir)
            for item in box.pending():
                request_id = str(item.get("request_id", ""))
                if (box.decisions_dir / request_id).exists():
                    continue  # decided: the agent has yet to read it
                try:
                    box.decide(request_id, approved=True, reason=f"approved by {name} (test)")
                except (UsageError, NotFoundError):
                    continue  # decided meanwhile, or the agent is done with it
                done.append((name, request_id))
        self.approved.extend(done)
        return done

    def _loop(self) -> None:
        while not self._stop.wait(self.poll):
            self.approve_pending()

    async def serve(self, stop: asyncio.Event) -> None:
        """The same persons as a task of the running event loop (no thread), until ``stop`` is set:
        for a process whose agent shares the loop, so that looking costs no GIL hand-over."""
        while not stop.is_set():
            self.approve_pending()
            await asyncio.sleep(self.poll)

    def start(self) -> Custodians:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="custodians", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> Custodians:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def person_at_prompt(answer: str = "yes") -> Iterator[None]:
    """``custodian-agent respond`` run by its custodian, who reads the request and types ``answer``
    at its prompt (the offline counterpart of :class:`Custodians`; ``--yes`` answers drills only)."""
    saved = sys.stdin
    sys.stdin = io.StringIO(answer + "\n")
    try:
        yield
    finally:
        sys.stdin = saved


@dataclass
class Cluster:
    pki: Path
    data_dir: Path
    node: Node
    server: NodeServer
    clock: Clock
    agents: list[tuple[Agent, asyncio.Event, asyncio.Task[None]]] = field(default_factory=list)
    custodians: Custodians = field(default_factory=Custodians)  # their persons, approving

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def client(self, stem: str = "admin", pki: Path | None = None) -> AdminClient:
        return AdminClient(self.target, tls(pki or self.pki, stem))

    def start_agent(
        self,
        name: str,
        key: SoftwareWrappingKey,
        tmp: Path,
        *,
        root_pki: Path | None = None,
        approval: str = "manual",
        approves: bool = True,
        policy: CustodianPolicy | None = None,
        clock: Callable[[], float] | None = None,
    ) -> Agent:
        """An agent of ``name``'s; with ``approves`` its person (:attr:`custodians`) approves every
        request it posts, otherwise the test decides (through the agent's :class:`ApprovalBox`)."""
        config = AgentConfig(
            node=self.target,
            tls=tls(self.pki, f"custodian-{name}"),
            policy=policy
            or CustodianPolicy((root_pki or self.pki).joinpath("attestation-root.pem").read_bytes()),
            state_dir=tmp / f"agent-{name}",
            approval=approval,
        )
        agent = Agent(config, key, clock=clock or self.clock)
        if approves:
            self.custodians.add(name, config.state_dir)
            self.custodians.start()
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        self.agents.append((agent, stop, task))
        return agent

    async def stop_agents(self) -> None:
        for _, stop, _ in self.agents:
            stop.set()
        await asyncio.gather(*(t for _, _, t in self.agents), return_exceptions=True)
        self.agents.clear()

    async def download(self, certs: list[bytes], quorum: int = 3) -> bytes:
        async with self.client() as c, c.errors():
            return (await c.download(certs, quorum))[0]

    async def start_recovery(self, sd: bytes, reason: str = "test", ttl: int = 60) -> str:
        async with self.client() as c, c.errors():
            session_id = (await c.init_recovery(reason, ttl)).session_id
            await c.upload_sd_file(session_id, sd)
        return session_id

    async def node_status(self) -> pb.NodeStatus:
        async with self.client() as c, c.errors():
            return await c.status()

    async def backup(self) -> bytes:
        async with self.client() as c, c.errors():
            return await c.backup()

    async def restore(self, data: bytes) -> int:
        async with self.client() as c, c.errors():
            return await c.restore(data)

    async def wait_session(self, timeout: float = 20.0) -> pb.RecoveryProgress:
        """Watch the running session until it ends; returns its last progress."""
        session = self.node.session
        assert session is not None
        async with self.client() as c, c.errors():
            last = None
            async with asyncio.timeout(timeout):
                async for p in c.watch(session.session_id):
                    last = p
        assert last is not None
        return last


@contextlib.asynccontextmanager
async def running_cluster(
    pki: Path,
    data_dir: Path,
    node_id: str = "node-a",
    attestation_pki: Path | None = None,
    sealing_key: bytes | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    max_batch_items: int = MAX_BATCH_ITEMS,
    crypto_pool: CryptoPool | None = None,
) -> AsyncIterator[Cluster]:
    """A node served in this process; ``crypto_pool`` (closed on exit) runs its large batches."""
    clock = Clock()
    key, cert_der = load_attestation(attestation_pki or pki, node_id)
    store = SqliteNodeStore(data_dir, sealing_key or os.urandom(32), node_id)
    config = NodeConfig(
        node_id=node_id,
        address="127.0.0.1:0",
        data_dir=data_dir,
        attestation_key=key,
        attestation_cert_der=cert_der,
    )
    node = Node(config, store, clock=clock, crypto_pool=crypto_pool)
    server = await serve(node, "127.0.0.1:0", tls(pki, "node"), max_message_bytes, max_batch_items)
    cluster = Cluster(pki, data_dir, node, server, clock)
    try:
        yield cluster
    finally:
        await cluster.stop_agents()
        cluster.custodians.stop()
        await server.stop(grace=0.1)
        if crypto_pool is not None:
            await crypto_pool.close()
        store.close()


async def run_sdctl(pki: Path, target: str, *argv: str) -> tuple[int, list[str]]:
    """``sdctl --node target <admin mTLS flags> *argv`` in-process (in a thread): exit code, lines."""
    from sdctl.cli import main

    lines: list[str] = []
    flags = ["--node", target, "--cert", str(pki / "admin.pem"), "--key", str(pki / "admin.key")]
    code = await asyncio.to_thread(main, [*flags, "--ca", str(pki / "ca.pem"), *argv], out=lines.append)
    return code, lines


@pytest.fixture
async def cluster(pki_dir: Path, tmp_path: Path) -> AsyncIterator[Cluster]:
    async with running_cluster(pki_dir, tmp_path / "node-a") as c:
        yield c


def certs_of(keys: list[SoftwareWrappingKey]) -> list[bytes]:
    return [k.certificate_der() for k in keys]


@contextlib.asynccontextmanager
async def node_b_and_sd_file(
    pki: Path, tmp_path: Path, keys: list[SoftwareWrappingKey], quorum: int = 3
) -> AsyncIterator[tuple[Cluster, bytes]]:
    """A domain made on node-a for ``keys`` (``quorum`` of them needed), then a fresh node-b to
    recover it on (node-a is gone by then): node-b and the SD file."""
    async with running_cluster(pki, tmp_path / "a") as a:
        sd = await a.download(certs_of(keys), quorum=quorum)
    async with running_cluster(pki, tmp_path / "b", node_id="node-b") as b:
        yield b, sd


def node_run_argv(
    pki: Path, node_id: str, data_dir: Path, *, attestation: str | None = None, attestation_key: str | None = None,
    listen: str = "127.0.0.1:0",
) -> list[str]:  # fmt: skip
    """``hsm-node run`` with the test PKI's files; ``attestation``/``attestation_key``: whose
    attestation certificate and key to give it (default: the node's own)."""
    cert, key = attestation or node_id, attestation_key or attestation or node_id
    return [
        sys.executable, "-m", "hsm_node.cli", "run",
        "--node-id", node_id, "--listen", listen, "--data-dir", str(data_dir),
        "--tls-cert", str(pki / "node.pem"), "--tls-key", str(pki / "node.key"), "--ca", str(pki / "ca.pem"),
        "--attestation-cert", str(pki / f"attestation-{cert}.pem"),
        "--attestation-key", str(pki / f"attestation-{key}.key"),
    ]  # fmt: skip


class NodeProcess:
    """``hsm-node run`` as a real process (for kill -9 and restart tests), on 127.0.0.1, port 0."""

    def __init__(
        self,
        pki: Path,
        data_dir: Path,
        node_id: str = "node-b",
        log_level: str = "INFO",
        extra_args: Sequence[str] = (),
    ) -> None:
        """``extra_args``: more ``hsm-node run`` flags (``--crypto-workers 0``, say)."""
        self.pki, self.data_dir, self.node_id, self.log_level = pki, data_dir, node_id, log_level
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.log = data_dir.parent / f"{node_id}.log"

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0, listen: str = "127.0.0.1:0") -> None:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        port_file = self.data_dir.parent / f"{self.node_id}.port"
        port_file.unlink(missing_ok=True)
        argv = [
            *node_run_argv(self.pki, self.node_id, self.data_dir, listen=listen),
            "--port-file", str(port_file), "--log-level", self.log_level, *self.extra_args,
        ]  # fmt: skip
        log = open(self.log, "ab")  # noqa: SIM115  # handed to the child; closed with it
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        log.close()
        deadline = time.monotonic() + timeout
        while not port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.node_id} did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)
        self.port = int(port_file.read_text())

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=20)
        self.proc = None

    def client(self, stem: str = "admin") -> AdminClient:
        return AdminClient(self.target, tls(self.pki, stem))


def agent_config(pki: Path, target: str, name: str, state_dir: Path, approval: str = "manual") -> AgentConfig:
    """An agent's configuration (its person: :class:`Custodians` over ``state_dir``)."""
    return AgentConfig(
        node=target,
        tls=tls(pki, f"custodian-{name}"),
        policy=CustodianPolicy((pki / "attestation-root.pem").read_bytes()),
        state_dir=state_dir,
        approval=approval,
    )


def keys_in_backup(data: bytes, domain: DomainSecrets) -> dict[str, bytes]:
    """Every key's private material in a backup, by name. The store image of a version 2 backup is
    read here with ``sqlite3`` and each row opened with the data encryption key (AAD ``"type|name"``
    for keys owned by ``app`` or from an image without owners, ``"v2|type|owner|name"`` otherwise),
    not with the node's code."""
    opened = backup.open_backup(data, domain)
    if opened.key_rows is None:
        return {k.name: k.private for k in opened.keys}
    db = sqlite3.connect(":memory:")
    try:
        db.deserialize(opened.key_rows)
        aead = AESGCM(domain.data_encryption_key)
        columns = {r[1] for r in db.execute("PRAGMA table_info(keys)")}
        owner = "owner" if "owner" in columns else "'app'"
        rows = db.execute(f"SELECT name, type, {owner}, sealed FROM keys").fetchall()  # noqa: S608  # a column name or a constant
        return {
            name: aead.decrypt(
                sealed[:12],
                sealed[12:],
                (f"{kind}|{name}" if who == "app" else f"v2|{kind}|{who}|{name}").encode(),
            )
            for name, kind, who, sealed in rows
        }
    finally:
        db.close()


def backup_v1(domain: DomainSecrets, body: bytes, key_count: int, node_id: str = "node-old") -> bytes:
    """A version 1 backup (JSON; its body the JSON list of keys in the clear), which the node still
    reads but no longer writes, written here from the version 1 layout with any ``body``."""
    header = canonical_json(
        {"domain_id": domain.domain_id.hex(), "node_id": node_id, "created_at": 5, "key_count": key_count}
    )
    nonce = os.urandom(12)
    ct = AESGCM(domain.backup_key).encrypt(nonce, body, hashlib.sha256(header).digest())
    sig = domain.sign(backup.BACKUP_CONTEXT + header + hashlib.sha256(nonce + ct).digest())
    return canonical_json(
        {
            "format": "sdquorum-backup",
            "version": 1,
            "header": b64e(header),
            "nonce": b64e(nonce),
            "ciphertext": b64e(ct),
            "signature": b64e(sig),
        }
    )


def admin_cert_valid_between(pki_dir: Path, start: datetime, end: datetime) -> tuple[bytes, bytes]:
    """An admin client certificate from the deployment's own CA, valid only from ``start`` to ``end``."""
    ca_cert = x509.load_pem_x509_certificate((pki_dir / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((pki_dir / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "admin")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier("sdquorum://role/admin")]), False
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def checked_for(
    c: Cluster,
    key: SoftwareWrappingKey,
    pki_dir: Path,
    *,
    purpose: str = "recovery",
    now: datetime | None = None,
) -> tuple[str, envelopes.CheckedRequest]:
    """What an honest agent holding ``key`` would have checked for its one open request on ``c``:
    the request id and the checked request (an attacker's test builds its forgery from it)."""
    thumb = pki.thumbprint_sha256(key.certificate_der())
    (req,) = c.node.agents.pending_requests(thumb)
    checked = envelopes.check_request(
        envelopes.Attestation.from_bytes(req.attestation),
        SignedHeader(req.header_bytes, req.header_signature),
        req.x,
        thumb,
        CustodianPolicy((pki_dir / "attestation-root.pem").read_bytes()),
        now or datetime.now(UTC),
        purpose=purpose,
    )
    return req.request_id, checked
