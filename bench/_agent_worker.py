"""One custodian's agent in a process of its own, driven by a benchmark (``python -m bench._agent_worker``).

At real sites every custodian's agent runs on its own machine; a benchmark that ran them all in
one interpreter would make agents whose requests arrive together wait for each other's RSA work.
:class:`AgentWorkers` starts one such process per custodian, once per benchmark part; the operating
system spreads them over the machine's cores like any other processes (on 2 cores, 10 agents still
share 2 cores: that cost is real and stays in the measurement).

Protocol: JSON lines. The parent writes the custodian's identity first, ``{"name", "pki",
"certificate", "key"}`` (certificate and PKCS#8 private key as base64 DER: the key crosses the pipe
in memory and is never written to disk or logged), then commands, each answered by one line:

* ``{"op": "start", "target": "host:port", "state_dir": "..."}``: run :class:`Agent` against
  ``target`` with ``manual`` approval, as at a real site, and the custodian's person
  (``tests/harness.py`` :class:`Custodians`, a task of the same loop) approving each request it
  posts through the agent's spool; answers ``{"ok": true}`` once its request stream is up. The
  approval is in every measured recovery: the person looks every 5 ms, the agent for the decision
  every 2 ms at first (:mod:`custodian_agent.approvals`).
* ``{"op": "stop"}``: stop the agent and wait for it; answers ``{"ok": true}``.
* ``{"op": "exit"}`` or end of input: stop and leave.

Anything that goes wrong is answered ``{"ok": false, "error": "..."}``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from bench._common import ROOT, harness, quiet_logs

__all__ = ["AgentWorkers", "main"]

START_TIMEOUT = 60.0
_PROTOCOL = sys.stdout  # the pipe to the parent: protocol lines only (main sends prints elsewhere)


async def _lines(reader: asyncio.StreamReader) -> Any:
    line = await reader.readline()
    return json.loads(line) if line else {"op": "exit"}


def _say(obj: dict[str, Any]) -> None:
    _PROTOCOL.write(json.dumps(obj) + "\n")
    _PROTOCOL.flush()


async def _serve() -> None:
    from cryptography.hazmat.primitives import serialization

    from custodian_agent.agent import Agent
    from sdquorum.keys import SoftwareWrappingKey

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    ident = await _lines(reader)
    private = serialization.load_der_private_key(base64.b64decode(ident["key"]), password=None)
    if not isinstance(private, RSAPrivateKey):
        raise SystemExit("the wrapping key is not RSA")
    key = SoftwareWrappingKey(private, base64.b64decode(ident["certificate"]))
    del ident["key"]
    h = harness()
    running: tuple[asyncio.Event, list[asyncio.Task[None]]] | None = None

    async def stop() -> None:
        nonlocal running
        if running is not None:
            running[0].set()
            await asyncio.gather(*running[1], return_exceptions=True)
            running = None

    _say({"ok": True})
    while True:
        cmd = await _lines(reader)
        op = cmd.get("op")
        try:
            if op == "start":
                await stop()
                state_dir = Path(cmd["state_dir"])
                config = h.agent_config(Path(ident["pki"]), cmd["target"], ident["name"], state_dir)
                agent = Agent(config, key)
                person = h.Custodians({ident["name"]: state_dir})
                event = asyncio.Event()
                running = (
                    event,
                    [asyncio.create_task(agent.run(event)), asyncio.create_task(person.serve(event))],
                )
                async with asyncio.timeout(START_TIMEOUT):
                    while not agent.connected:
                        await asyncio.sleep(0.01)
                _say({"ok": True})
            elif op == "stop":
                await stop()
                _say({"ok": True})
            else:
                await stop()
                return
        except Exception as e:  # reported to the parent, which fails the run
            _say({"ok": False, "error": f"{type(e).__name__}: {e}"})


class AgentWorkers:
    """One agent process per custodian: ``async with AgentWorkers(ctx, n) as w: await w.start(...)``."""

    def __init__(self, pki_dir: Path, names: list[str], keys: list[tuple[RSAPrivateKey, bytes]]) -> None:
        self.pki_dir, self.names, self.keys = pki_dir, names, keys  # keys: (private key, certificate DER)
        self.procs: list[asyncio.subprocess.Process] = []
        self._active: list[asyncio.subprocess.Process] = []

    @property
    def active_pids(self) -> list[int]:
        """The processes of the agents started by :meth:`start` and not yet stopped."""
        return [p.pid for p in self._active]

    async def __aenter__(self) -> AgentWorkers:
        for name, (private, cert_der) in zip(self.names, self.keys, strict=True):
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench._agent_worker",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                cwd=ROOT,
            )
            self.procs.append(proc)
            ident = {
                "name": name,
                "pki": str(self.pki_dir),
                "certificate": base64.b64encode(cert_der).decode(),
                # the explicit export of a bench key, to a pipe (never to disk)
                "key": base64.b64encode(
                    private.private_bytes(Encoding.DER, PrivateFormat.PKCS8, NoEncryption())
                ).decode(),
            }
            await self._send(proc, ident)
        await asyncio.gather(*(self._answer(p) for p in self.procs))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for p in self.procs:
            if p.stdin is not None and not p.stdin.is_closing():
                p.stdin.write(b'{"op": "exit"}\n')
                p.stdin.close()
        for p in self.procs:
            try:
                await asyncio.wait_for(p.wait(), 15)
            except TimeoutError:
                p.kill()
                await p.wait()
        self.procs.clear()

    async def _send(self, proc: asyncio.subprocess.Process, obj: dict[str, Any]) -> None:
        if proc.stdin is None:  # pragma: no cover - created with a pipe
            raise RuntimeError("agent worker has no stdin")
        proc.stdin.write((json.dumps(obj) + "\n").encode())
        await proc.stdin.drain()

    async def _answer(self, proc: asyncio.subprocess.Process) -> None:
        if proc.stdout is None:  # pragma: no cover - created with a pipe
            raise RuntimeError("agent worker has no stdout")
        async with asyncio.timeout(START_TIMEOUT + 30):
            line = await proc.stdout.readline()
        if not line:
            raise RuntimeError(f"an agent worker exited (code {await proc.wait()})")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise RuntimeError(f"an agent worker failed: {reply.get('error')}")

    async def start(self, targets: list[str], state_dir: Path) -> None:
        """The agent of custodian i dials ``targets[i]`` (the first ``len(targets)`` custodians);
        returns once every one's request stream is up."""
        if self._active or len(targets) > len(self.procs):
            raise RuntimeError("agents are running already, or more targets than agent processes")
        self._active = self.procs[: len(targets)]  # names and procs are longer: zip stops at targets
        for name, proc, target in zip(self.names, self._active, targets, strict=False):
            await self._send(proc, {"op": "start", "target": target, "state_dir": str(state_dir / name)})
        await asyncio.gather(*(self._answer(p) for p in self._active))

    async def stop(self) -> None:
        active, self._active = self._active, []
        for proc in active:
            await self._send(proc, {"op": "stop"})
        await asyncio.gather(*(self._answer(p) for p in active))


def main() -> None:
    quiet_logs()
    sys.stdout = sys.stderr  # the agent prints "approval needed: ..." for its person: not on the pipe
    asyncio.run(_serve())


if __name__ == "__main__":
    main()
