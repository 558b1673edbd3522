"""``sdctl session status|attach|cancel``, Ctrl-C during a ceremony, a watch that outlives a dropped
connection, and ``sdctl status`` advice that agrees with what the node accepts (issue 14, section 2)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

import pytest
from cli_support import SdctlRunner, certs_of, e2e, running_cluster

from sdctl import ctl as sdctl_ctl
from sdquorum.keys import SoftwareWrappingKey
from sdquorum.pki import Role

ROOT = Path(__file__).resolve().parents[2]


def _flags(pki: Path, target: str) -> list[str]:
    return ["--node", target, "--cert", str(pki / "admin.pem"), "--key", str(pki / "admin.key"),
            "--ca", str(pki / "ca.pem")]  # fmt: skip


async def _recovering_node_b(pki: Path, tmp: Path, keys: list[SoftwareWrappingKey]) -> bytes:
    async with running_cluster(pki, tmp / "a") as a:
        return await a.download(certs_of(keys), quorum=3)


async def test_session_status_attach_and_cancel(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey], sdctl: SdctlRunner
) -> None:
    sd = await _recovering_node_b(pki_dir, tmp_path, wrapping_keys[:5])
    async with running_cluster(pki_dir, tmp_path / "b", node_id="node-b") as b:
        none = await sdctl("session", "status", node=b.target)
        assert none.code == 3 and "no session has run on this node" in none.err
        sid = await b.start_recovery(sd, ttl=300)
        st = await sdctl("session", "status", node=b.target)
        assert st.code == 0 and st.out[0].startswith(f"recovery session {sid}: COLLECTING, deadline ")
        assert [line.split(":")[0].strip() for line in st.out[1:]] == [
            f"{n} (x={i})" for i, n in enumerate(e2e.NAMES[:5], 1)
        ]
        attach = asyncio.create_task(sdctl("session", "attach", node=b.target))
        await asyncio.sleep(0.5)
        assert not attach.done()  # watching, live
        cancel = await sdctl("session", "cancel", "--reason", "wrong SD file", node=b.target)
        assert cancel.code == 0, cancel
        assert cancel.out == [f"recovery session {sid} cancelled: cancelled by admin: wrong SD file"]
        watched = await asyncio.wait_for(attach, 10)
        # The two commands share this test's captured stderr: the attach's last line may land in
        # what the cancel read, when the node ended the session before the cancel returned.
        assert watched.code == 3 and "failed: cancelled by admin: wrong SD file" in watched.err + cancel.err
        assert watched.out[0].startswith("  [0/3 shares")  # the same live progress as sdctl recover
        again = await sdctl("session", "cancel", sid, "--reason", "twice", node=b.target)
        assert again.code == 3 and "has ended already" in again.err
        assert b.node.state == "PROVISIONED"


async def test_status_advice_in_each_state_is_what_the_node_accepts(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey], sdctl: SdctlRunner,
    wrap_certs: list[Path],
) -> None:  # fmt: skip
    sd = await _recovering_node_b(pki_dir, tmp_path, wrapping_keys[:5])
    async with running_cluster(pki_dir, tmp_path / "b", node_id="node-b") as b:
        st = await sdctl("status", node=b.target)
        assert len(st.out) == 1 and len(st.out[0].splitlines()) == 2
        assert "next: activate it with a new domain (sdctl download" in st.out[0].splitlines()[-1]
        assert "or recover a domain onto it (sdctl recover" in st.out[0].splitlines()[-1]
        sid = await b.start_recovery(sd, ttl=300)  # the advised recover is accepted
        st = await sdctl("status", node=b.target)
        assert f"recovery session {sid} COLLECTING, deadline" in st.out[0].splitlines()[1]
        assert f"(sdctl session cancel {sid} --reason ...)" in st.out[0].splitlines()[-1]
        done = await sdctl("session", "cancel", sid, "--reason", "advised", node=b.target)
        assert done.code == 0
        st = await sdctl("status", node=b.target)
        assert "(sdctl download" in st.out[0].splitlines()[-1]  # PROVISIONED again: the download is accepted
        certs = [a for c in wrap_certs[:3] for a in ("--cert", str(c))]
        dl = await sdctl(
            "download", *certs, "--quorum", "2", "--out", str(tmp_path / "sd-b.json"), node=b.target
        )
        assert dl.code == 0, dl
        st = await sdctl("status", node=b.target)
        assert (
            "the data plane is open" in st.out[0].splitlines()[-1]
            and "sdctl drill" in st.out[0].splitlines()[-1]
        )
        b.node.custody.mark_compromised("two keys lost", Role("admin"))
        st = await sdctl("status", node=b.target)
        assert (
            "MARKED COMPROMISED" in st.out[0]
            and "drills, rotation and Azure restores are refused" in st.out[0].splitlines()[-1]
        )
        drill = await sdctl("drill", "--ttl", "10", node=b.target)
        assert drill.code == 3 and "compromised" in drill.err  # the advice agrees


class CutProxy:
    """A TCP proxy in front of the node that can cut every connection and refuse new ones, as a
    keepalive drop or a network cut does, while the node (and its session) goes on."""

    def __init__(self, upstream: str) -> None:
        self.upstream_port = int(upstream.rsplit(":", 1)[1])
        self.port = 0
        self.writers: list[asyncio.StreamWriter] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.server: asyncio.Server | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self.writers += [w, uw]

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pump(r, uw), pump(ur, w))

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.transport.abort()
        self.writers.clear()


async def test_a_watch_reconnects_through_a_dropped_connection_and_exit_5_only_when_the_node_stays_away(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey], sdctl: SdctlRunner,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Before: the first transport drop while waiting for approvals ended 'sdctl recover' with exit 5."""
    monkeypatch.setattr(sdctl_ctl, "WATCH_BACKOFF_FIRST", 0.2)
    monkeypatch.setattr(sdctl_ctl, "WATCH_BACKOFF_MAX", 0.5)
    monkeypatch.setattr(sdctl_ctl, "WATCH_RETRIES", 40)
    sd = await _recovering_node_b(pki_dir, tmp_path, wrapping_keys[:5])
    async with running_cluster(pki_dir, tmp_path / "b", node_id="node-b") as b:
        (tmp_path / "sd.json").write_bytes(sd)
        recover = ("recover", "--sd-file", str(tmp_path / "sd.json"), "--reason", "dc lost", "--ttl", "300")
        proxy = CutProxy(b.target)
        await proxy.start()
        run = asyncio.create_task(sdctl(*recover, node=proxy.target))
        await asyncio.sleep(1.0)
        assert b.node.session is not None
        sid = b.node.session.session_id
        await proxy.cut()  # the connection drops while the custodians are being asked
        await asyncio.sleep(1.0)
        await proxy.start()  # and the network comes back
        await asyncio.sleep(1.5)
        await b.node.ceremonies.cancel_session(sid, "after the blip", Role("admin"))
        watched = await asyncio.wait_for(run, 30)
        assert watched.code == 3 and "recovery failed: cancelled by admin: after the blip" in watched.err
        assert f"lost the node while watching session {sid}" in watched.err
        assert "the session goes on at the node: reconnecting in 0.2 s (try 1 of 40)" in watched.err

        monkeypatch.setattr(sdctl_ctl, "WATCH_RETRIES", 2)
        sid = await b.start_recovery(sd, ttl=300)
        attach = asyncio.create_task(sdctl("session", "attach", sid, node=proxy.target))
        await asyncio.sleep(0.5)
        await proxy.cut()  # and it stays away
        watched = await asyncio.wait_for(attach, 30)
        assert watched.code == 5, watched
        assert watched.err.count("reconnecting") == 2
        assert f"gave up watching session {sid} after 2 reconnects" in watched.err_lines[-1]
        assert f"'sdctl session status {sid}'" in watched.err_lines[-1]


async def test_ctrl_c_during_sdctl_recover_says_the_session_goes_on_and_how_to_attach_or_cancel(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    """Before: exit 130 and "sdctl: interrupted", nothing about the session that went on."""
    sd = await _recovering_node_b(pki_dir, tmp_path, wrapping_keys[:5])
    (tmp_path / "sd.json").write_bytes(sd)
    async with running_cluster(pki_dir, tmp_path / "b", node_id="node-b") as b:
        argv = [
            *_flags(pki_dir, b.target),
            "recover",
            "--sd-file",
            str(tmp_path / "sd.json"),
            "--reason",
            "dc lost",
        ]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sdctl.cli", *argv, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None
        first = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert first.startswith(b"session "), first
        session = b.node.session
        assert session is not None and not session.finished
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 130
        lines = err.decode().splitlines()
        sid = session.session_id
        assert len(lines) == 1, lines
        assert lines[0].startswith(f"sdctl: interrupted: recovery session {sid} goes on at the node until ")
        assert f"'sdctl --node {b.target} session attach {sid}'" in lines[0]
        assert f"'sdctl --node {b.target} session cancel {sid} --reason \"...\"'" in lines[0]
        assert not session.finished  # it does go on
