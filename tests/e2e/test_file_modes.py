"""Secrets at rest do not depend on the umask (issue 13, class 9).

With umask 022 and a pre-existing 0755 data directory, node.db and its -wal/-shm files were 0644.
Now the node and the agent, run as real processes under umask 022, make every file 0600 and every
directory 0700, tighten what earlier versions left 0644/0755, and refuse a directory writable by
group or others (exit 2, one line naming the chmod to run). Each test lists every file's mode.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from harness import ROOT, NodeProcess, node_run_argv

from custodian_agent.approvals import ApprovalBox
from custodian_agent.keyfile import PASSPHRASE_ENV, keygen
from hsm_node.store import SqliteNodeStore, load_or_create_sealing_key
from sdquorum.errors import UsageError

PASSPHRASE = "correct horse battery"


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    """This process's umask (and so its children's) inside the block."""
    before = os.umask(mask)
    try:
        yield
    finally:
        os.umask(before)


def modes(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """Every file and directory under ``root`` (itself excluded): relative path -> octal mode."""
    return {
        str(p.relative_to(root)): f"{stat.S_IMODE(p.lstat().st_mode):04o}"
        for p in sorted(root.rglob("*"))
        if p.name not in skip
    }


def private(listing: dict[str, str], root: Path) -> dict[str, str]:
    """The entries of ``listing`` that are not 0600 files or 0700 directories."""
    return {
        k: v
        for k, v in listing.items()
        if v != ("0700" if (root / k).is_dir() and not (root / k).is_symlink() else "0600")
    }


def test_a_node_under_umask_022_in_a_0755_data_directory_makes_every_file_0600(
    pki_dir: Path, tmp_path: Path
) -> None:
    site = tmp_path / "site"
    with umask(0o022):
        site.mkdir()
        (site / "node-b").mkdir()  # the pre-existing directory of the report, 0755
        assert modes(site) == {"node-b": "0755"}
        node = NodeProcess(pki_dir, site / "node-b")
        node.start()
    try:
        running = modes(
            site, skip=("node-b.log",)
        )  # the log is the test's redirect of stderr, not the node's
        assert {"node-b/node.db", "node-b/node.db-wal", "node-b/node.db-shm", "node-b.sealing-key"} <= set(
            running
        )
        print("\nwhile running:", running)
        assert private(running, site) == {}, running
    finally:
        node.kill(signal.SIGTERM)
    stopped = modes(site, skip=("node-b.log",))
    print("after SIGTERM:", stopped)
    assert private(stopped, site) == {}, stopped


def test_a_data_directory_left_0755_with_0644_files_by_an_earlier_version_is_tightened(
    tmp_path: Path,
) -> None:
    data = tmp_path / "old"
    with umask(0o022):
        data.mkdir()
        db = sqlite3.connect(data / "node.db")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE meta (k TEXT PRIMARY KEY, v BLOB NOT NULL)")
        db.commit()  # node.db, -wal and -shm, all 0644, as earlier versions made them
        assert set(modes(data).values()) == {"0644"} and len(modes(data)) == 3
        store = SqliteNodeStore(data, os.urandom(32), "node-a")
        db.close()
    store.close()
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert private(modes(data), data) == {}, modes(data)


@pytest.mark.parametrize(
    ("layout", "which"),
    [
        ("data directory 0775", "data"),
        ("data directory 0757", "data"),
        ("sealing key directory 0777", "sealing"),
    ],
)
def test_a_node_refuses_a_directory_writable_by_others_with_exit_2_and_one_line(
    pki_dir: Path, tmp_path: Path, layout: str, which: str
) -> None:
    mode = int(layout.rsplit(" ", 1)[1], 8)
    data = tmp_path / "data"
    sealing = tmp_path / "sealing"
    data.mkdir(mode=0o700)
    sealing.mkdir(mode=0o700)
    os.chmod(data if which == "data" else sealing, mode)
    argv = [*node_run_argv(pki_dir, "node-a", data), "--sealing-key-file", str(sealing / "key")]
    r = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=60)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1, r.stderr
    bad = data if which == "data" else sealing
    assert "writable by group or others" in lines[0] and f"chmod 700 {bad}" in lines[0]
    assert not (data / "node.db").exists() and not (sealing / "key").exists()  # nothing was made


def test_a_sealing_key_in_a_world_writable_directory_is_refused(tmp_path: Path) -> None:
    """/tmp (1777, sticky) is writable by others: no sealing key is made there."""
    with pytest.raises(UsageError, match="writable by group or others"):
        load_or_create_sealing_key(Path("/tmp") / f"sdquorum-test-{os.getpid()}.key")


# ------------------------------------------------------------------------------------- agent


@pytest.fixture(scope="module")
def wrapping_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("wrap")
    keygen("alice", d / "alice.key", d / "alice.pem", PASSPHRASE.encode(), datetime.now(UTC), bits=2048)
    return d / "alice.key", d / "alice.pem"


def agent_argv(pki: Path, key: tuple[Path, Path], state: Path) -> list[str]:
    return [
        sys.executable, "-m", "custodian_agent.cli", "run", "--node", "127.0.0.1:9",
        "--state-dir", str(state), "--approval", "manual",
        "--tls-cert", str(pki / "custodian-alice.pem"), "--tls-key", str(pki / "custodian-alice.key"),
        "--ca", str(pki / "ca.pem"), "--attestation-root", str(pki / "attestation-root.pem"),
        "--wrapping-key", str(key[0]), "--wrapping-cert", str(key[1]),
    ]  # fmt: skip


def test_an_agent_under_umask_022_in_a_0755_state_directory_makes_every_file_0600(
    pki_dir: Path, tmp_path: Path, wrapping_key: tuple[Path, Path]
) -> None:
    state = tmp_path / "state"
    env = {**os.environ, PASSPHRASE_ENV: PASSPHRASE}
    with umask(0o022):
        state.mkdir()
        (state / "heartbeat.json").write_text("{}")  # an earlier version's 0644 heartbeat
        assert modes(state) == {"heartbeat.json": "0644"}
        proc = subprocess.Popen(
            agent_argv(pki_dir, wrapping_key, state),
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    try:
        deadline = time.monotonic() + 30
        while '"time"' not in (state / "heartbeat.json").read_text():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no heartbeat"
            time.sleep(0.1)
        listing = modes(state)
        print("\nagent state:", listing)
        assert {"heartbeat.json", "pending", "decisions"} <= set(listing)
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
        assert private(listing, state) == {}, listing
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
    assert private(modes(state), state) == {}, modes(state)


def test_an_agent_refuses_a_state_directory_writable_by_others_before_asking_for_its_passphrase(
    pki_dir: Path, tmp_path: Path, wrapping_key: tuple[Path, Path]
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    os.chmod(state, 0o770)  # noqa: S103  # the unsafe directory under test
    env = {k: v for k, v in os.environ.items() if k != PASSPHRASE_ENV}  # a prompt would hang: none is asked
    r = subprocess.run(
        agent_argv(pki_dir, wrapping_key, state), env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "writable by group or others" in lines[0] and f"chmod 700 {state}" in lines[0]


def test_a_pending_request_file_is_0600_under_umask_022(tmp_path: Path) -> None:
    """The spool file a manual approval writes (it was written with the umask's 0644)."""
    box = ApprovalBox(tmp_path / "state")
    with umask(0o022):
        box.post("0123456789abcdef", {"reason": "drill"})
    listing = modes(tmp_path / "state")
    assert listing == {"decisions": "0700", "pending": "0700", "pending/0123456789abcdef.json": "0600"}


def test_a_data_directory_of_another_user_is_refused_naming_the_owner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seen from a process running as uid 4242: the directory (ours in truth) is another user's."""
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    owner = data.stat().st_uid
    monkeypatch.setattr(os, "geteuid", lambda: 4242 if owner != 4242 else 4243)
    if owner == 0:  # root may own a directory (it can write anywhere anyway): make it someone else's
        os.chown(data, 1, -1)
        owner = 1
    with pytest.raises(UsageError, match=rf"belongs to uid {owner}, not to this user") as e:
        SqliteNodeStore(data, os.urandom(32), "node-a")
    assert "chown" in str(e.value) and "\n" not in str(e.value)
    assert not (data / "node.db").exists()
