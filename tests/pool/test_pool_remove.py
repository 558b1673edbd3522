"""``sdctl pool remove`` ends a member's etcd access, ``sdctl pool allow`` gives it (issue 16).

A real 3-member etcd cluster with authentication on, real hsm-node processes, and ``sdctl`` run
through its ``main()`` as a person would run it. node-a is the pool's first member; node-b and
node-c have etcd client certificates, but only node-a and node-b have an etcd user, so node-c is a
brand-new node as an operator meets one.

- What one role alone can do: a member's etcd certificate cannot delete or add another member's
  etcd user; an admin's transport certificate does not even reach etcd.
- ``pool allow`` with etcd's root settings creates node-c's etcd user: node-c joins with no etcdctl
  step. ``pool remove`` without them, or with a member's certificate in place of root's, refuses in
  one line and changes nothing; with etcd out of reach it marks node-c removed (visible in the
  pool's status) and says its etcd user is left and to run the command again;
  with root it deletes node-c's user (its own etcd client can no longer put or commit anything) and
  frees the ceremony lock node-c held; run again, it says it found everything done.
- ``--etcd-user-later`` marks node-b removed and exits 3 saying node-b can still write and the step
  that ends it; the same command with the root settings from the environment then finishes.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import pytest
from etcd_cluster import EtcdCluster, free_ports, running_cluster
from harness import NAMES, NodeProcess, certs_of
from support import wait_for

from hsm_node.pool.etcd import Delete, EtcdClient, Put
from sdctl.pkifiles import init_pki
from sdquorum.errors import PermissionDeniedError, TransportError
from sdquorum.keys import SoftwareWrappingKey
from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2 as pb

pytestmark = pytest.mark.slow
NODES = ("node-a", "node-b", "node-c")
POOL = "rm"
ROW = b"/sdquorum/" + POOL.encode().hex().encode() + b"/keys/written-by-a-removed-member"


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    with running_cluster(
        tmp_path_factory.mktemp("etcd"), node_ids=NODES, users_for=("node-a", "node-b")
    ) as c:  # node-c: no etcd user yet
        yield c


@pytest.fixture(scope="module")
def pool_pki(tmp_path_factory: pytest.TempPathFactory, now: datetime) -> Path:
    d = tmp_path_factory.mktemp("pki") / "pki"
    init_pki(d, list(NODES), NAMES, now)
    return d


def _start(etcd: EtcdCluster, pki: Path, tmp: Path, node_id: str) -> NodeProcess:
    args = [*etcd.member_args(node_id, pki / "attestation-root.pem", POOL), "--crypto-workers", "0"]
    node = NodeProcess(pki, tmp / node_id / "data", node_id=node_id, extra_args=args)
    node.start()
    return node


@pytest.fixture(scope="module")
def node_a(
    etcd: EtcdCluster,
    pool_pki: Path,
    tmp_path_factory: pytest.TempPathFactory,
    wrapping_keys: list[SoftwareWrappingKey],
) -> Iterator[NodeProcess]:
    """The pool's first member, activated (an admin's download)."""
    a = _start(etcd, pool_pki, tmp_path_factory.mktemp("members"), "node-a")

    async def activate() -> None:
        async with a.client() as c, c.errors():
            async for _ in c.admin.DownloadSecurityDomain(
                pb.DownloadRequest(custodian_certificates=certs_of(wrapping_keys[:3]), quorum=2)
            ):
                pass

    try:
        asyncio.run(activate())
        yield a
    finally:
        a.kill()


@dataclass(frozen=True)
class Run:
    code: int
    out: list[str]
    err: list[str]

    @property
    def error(self) -> str:
        """The one line a failed command printed (and nothing else on stderr, no traceback)."""
        assert self.code != 0 and len(self.err) == 1 and self.err[0].startswith("sdctl: error: "), self
        return self.err[0]


@pytest.fixture
def sdctl(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, pool_pki: Path) -> object:
    """``await sdctl(node, *argv)``: ``sdctl --node NODE --cert admin.pem ... *argv`` through main()
    in a thread (it runs its own event loop); SDCTL_* from the test's environment cleared."""
    from sdctl.cli import main

    for var in [v for v in os.environ if v.startswith("SDCTL_")]:
        monkeypatch.delenv(var)
    admin = ["--cert", str(pool_pki / "admin.pem"), "--key", str(pool_pki / "admin.key")]

    async def run(node: NodeProcess, *argv: str) -> Run:
        capsys.readouterr()
        lines: list[str] = []
        flags = ["--node", node.target, *admin, "--ca", str(pool_pki / "ca.pem")]
        code = await asyncio.to_thread(main, [*flags, *argv], out=lines.append)
        return Run(code, lines, capsys.readouterr().err.splitlines())

    return run


async def _pool(node: NodeProcess) -> pb.PoolStatus:
    async with node.client() as c, c.errors():
        status: pb.PoolStatus = await c.admin.GetPoolStatus(pb.GetStatusRequest())
    return status


async def _can_write(etcd: EtcdCluster, node_id: str) -> bool:
    """Whether ``node_id``'s own etcd certificate can still put a row of the pool."""
    async with EtcdClient(etcd.config(node_id, call_timeout=2.0)) as c:
        try:
            await c.put(ROW, node_id.encode())
        except PermissionDeniedError:
            return False
        await c.delete(ROW)
        return True


# ------------------------------------------------------------------------- one role alone


async def test_neither_a_member_nor_an_admin_certificate_can_add_or_delete_etcd_users(
    etcd: EtcdCluster, pool_pki: Path
) -> None:
    async with EtcdClient(etcd.config("node-a")) as member:
        with pytest.raises(PermissionDeniedError):
            await member.remove_member_user("node.node-b")
        with pytest.raises(PermissionDeniedError):
            await member.add_member_user("node.node-c", "sdquorum-member")
    assert await _can_write(etcd, "node-b")  # node-b's user is still there
    assert not await _can_write(etcd, "node-c")  # and node-c still has none
    admin = replace(
        etcd.config("node-a", call_timeout=2.0),
        cert_pem=(pool_pki / "admin.pem").read_bytes(),
        key_pem=(pool_pki / "admin.key").read_bytes(),
    )
    async with EtcdClient(admin) as c:  # the transport CA's certificate: etcd's TLS refuses it
        with pytest.raises(TransportError, match="TLS"):
            await c.remove_member_user("node.node-b")
    assert await _can_write(etcd, "node-b")


# ------------------------------------------------------------------------- allow and remove


async def test_allow_with_etcd_root_lets_a_new_node_join_and_remove_ends_its_etcd_access(
    etcd: EtcdCluster,
    node_a: NodeProcess,
    pool_pki: Path,
    tmp_path: Path,
    sdctl: object,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = sdctl  # type: ignore[assignment]
    allowed = await run(node_a, "pool", "allow", "node-c", *etcd.root_args())
    assert allowed.code == 0, allowed
    assert "etcd user node.node-c created" in allowed.out[0]
    c = _start(etcd, pool_pki, tmp_path, "node-c")  # no etcdctl step anywhere
    try:

        async def c_active() -> bool:
            async with c.client() as cc, cc.errors():
                return (await cc.node.GetStatus(pb.GetStatusRequest())).state == pb.ACTIVATED

        await wait_for(c_active, 20, what="node-c joins")
        # node-c runs a drill: it holds the pool's ceremony lock (a lease of the drill's 120 s)
        async with c.client() as cc, cc.errors():
            await cc.admin.StartDrill(pb.StartDrillRequest(reason="drill on node-c", ttl_seconds=120))

        # without etcd's root settings: refused, nothing done
        bare = await run(node_a, "pool", "remove", "node-c")
        assert bare.code == 2
        assert "--etcd-cert" in bare.error and "--etcd-user-later" in bare.error
        assert "nothing was done" in bare.error
        assert "node-c" in (await _pool(node_a)).members

        # a member's certificate where root's belongs: one line, before anything is done
        wrong = await run(node_a, "pool", "remove", "node-c", *etcd.root_args("node-b"))
        assert wrong.code == 6
        assert "'node.node-b', not root" in wrong.error and "nothing was done" in wrong.error
        assert str(etcd.client("node-b").cert) in wrong.error
        assert "node-c" in (await _pool(node_a)).members

        # etcd out of reach: the node's half is done, the line says what is not and to run it again
        unreachable = etcd.root_args()
        unreachable[1] = f"127.0.0.1:{free_ports(1)[0]}"
        half = await run(node_a, "pool", "remove", "node-c", *unreachable)
        assert half.code == 5, half
        assert "node-c is now removed" in half.error and "can still write" in half.error
        assert "run the same command again" in half.error
        assert "node-c" not in (await _pool(node_a)).members  # the state is visible
        assert await _can_write(etcd, "node-c")  # what the line said: not ended yet

        start = time.monotonic()
        done = await run(node_a, "pool", "remove", "node-c", *etcd.root_args())
        with capsys.disabled():
            print(f"\nsdctl pool remove with the etcd half took {(time.monotonic() - start) * 1000:.0f} ms")
        assert done.code == 0, done
        assert "node-c was already removed" in done.out[0]
        assert "etcd user node.node-c deleted" in done.out[0] and "1 ceremony lock(s)" in done.out[0]
        async with EtcdClient(etcd.config("node-c", call_timeout=2.0)) as own:
            with pytest.raises(PermissionDeniedError):
                await own.put(ROW, b"x")
            with pytest.raises(PermissionDeniedError):
                await own.commit([Put(ROW, b"x"), Delete(ROW + b"-2")])
            with pytest.raises(PermissionDeniedError):
                await own.create(ROW, b"x")
        # the lock node-c held is free now, not at its drill's deadline: node-a starts a ceremony
        async with node_a.client() as ca, ca.errors():
            started = await ca.admin.StartDrill(pb.StartDrillRequest(reason="after removal", ttl_seconds=60))
            await ca.admin.CancelSession(
                pb.CancelSessionRequest(session_id=started.session_id, reason="done")
            )

        # the same command again, its etcd settings from a config file: all done already, exit 0
        pair = etcd.client("root")
        config = tmp_path / "sdctl.toml"
        config.write_text(
            f'[etcd]\nendpoints = "{",".join(etcd.endpoints)}"\ncert = "{pair.cert}"\n'
            f'key = "{pair.key}"\nca = "{etcd.ca}"\n'
        )
        again = await run(node_a, "--config", str(config), "pool", "remove", "node-c")
        assert again.code == 0, again
        assert "node-c was already removed" in again.out[0] and "was deleted already" in again.out[0]
        c.kill()

        # an admin takes node-c back: allowed again, its etcd user made again, an empty data
        # directory: it joins anew (the runbook's way back)
        back = await run(node_a, "pool", "allow", "node-c", *etcd.root_args())
        assert back.code == 0 and "etcd user node.node-c created" in back.out[0], back
        twice = await run(node_a, "pool", "allow", "node-c", *etcd.root_args())
        assert twice.code == 0 and "etcd user node.node-c existed already" in twice.out[0], twice
        c = _start(etcd, pool_pki, tmp_path / "again", "node-c")
        await wait_for(c_active, 20, what="node-c joins again")
        assert "node-c" in (await _pool(node_a)).members
    finally:
        c.kill()


async def test_remove_with_etcd_user_later_exits_3_with_the_step_and_the_root_settings_finish_it(
    etcd: EtcdCluster, node_a: NodeProcess, sdctl: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = sdctl  # type: ignore[assignment]
    allowed = await run(node_a, "pool", "allow", "node-b")  # without etcd's root: the step is printed
    assert allowed.code == 0, allowed
    assert "user add node.node-b" in allowed.out[0] and "--etcd-cert" in allowed.out[0]

    # half of etcd's root settings, or root settings and the opt-out together: refused, nothing done
    half = await run(node_a, "pool", "remove", "node-b", "--etcd", ",".join(etcd.endpoints))
    assert half.code == 2 and "give --etcd-cert, --etcd-key, --etcd-ca too" in half.error
    both = await run(node_a, "pool", "remove", "node-b", "--etcd-user-later", *etcd.root_args())
    assert both.code == 2 and "contradict" in both.error
    assert "node-b" in (await _pool(node_a)).allowed

    later = await run(node_a, "pool", "remove", "node-b", "--etcd-user-later")
    assert later.code == 3
    assert later.out == ["node-b is now removed from pool rm: the members refuse it and it serves nothing"]
    assert "node-b can still write" in later.error and "user delete node.node-b" in later.error
    assert "node-b" not in (await _pool(node_a)).allowed
    assert await _can_write(etcd, "node-b")

    pair = etcd.client("root")
    for var, value in (
        ("SDCTL_ETCD", ",".join(etcd.endpoints)),
        ("SDCTL_ETCD_CERT", str(pair.cert)),
        ("SDCTL_ETCD_KEY", str(pair.key)),
        ("SDCTL_ETCD_CA", str(etcd.ca)),
    ):
        monkeypatch.setenv(var, value)
    finished = await run(node_a, "pool", "remove", "node-b")
    assert finished.code == 0, finished
    assert "node-b was already removed" in finished.out[0] and "node.node-b deleted" in finished.out[0]
    assert not await _can_write(etcd, "node-b")


async def test_a_member_that_alters_the_pools_state_cannot_stop_its_own_removal(
    etcd: EtcdCluster, node_a: NodeProcess, sdctl: object
) -> None:
    """node-c (allowed and joined again by the test above, its etcd user made) puts a permission
    row with its own certificate: every member refuses the pool's custody head, so the node cannot
    mark it removed. Its etcd access ends all the same (the previous code stopped at the node's
    refusal and left node-c able to write); once the row is gone, the command finishes."""
    run = sdctl  # type: ignore[assignment]
    junk = ROW.replace(b"/keys/written-by-a-removed-member", b"/allowed/zz")
    async with EtcdClient(etcd.config("node-c", call_timeout=2.0)) as own:
        await own.put(junk, b'{"by": "admin", "at": 1}')
    refused = await run(node_a, "pool", "remove", "node-c", *etcd.root_args())
    assert "did not mark node-c removed" in refused.error and "altered outside sdquorum" in refused.error
    assert "node.node-c is gone" in refused.error
    assert not await _can_write(etcd, "node-c")
    async with EtcdClient(etcd.config("root")) as root:  # the operator removes the row
        await root.delete(junk)
    finished = await run(node_a, "pool", "remove", "node-c", *etcd.root_args())
    assert finished.code == 0, finished
    assert "node-c is now removed" in finished.out[0] and "was deleted already" in finished.out[0]
