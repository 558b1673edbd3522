"""``custodian-agent run``: the online agent, dialling its node and serving requests until SIGTERM or
SIGINT; and ``health``, which reads the heartbeat ``run`` keeps.

Invariants:

* Every local file (TLS files, attestation root, state directory) is checked once at start-up,
  before the passphrase is asked for: a bad setting is one line and exit 2, not an agent that
  dials, fails its handshake and retries for ever.
* An agent takes no inbound connections (DESIGN.md), so its health is a local heartbeat file:
  missing, stale or disconnected is exit != 0 with one line saying which.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
from pathlib import Path

from custodian_agent.agent import Agent, AgentConfig, read_heartbeat
from custodian_agent.approvals import ApprovalBox
from custodian_agent.commands import FORMAT, custodian_policy, passphrase_flag, state_command, state_dir
from custodian_agent.commands.keys import load_key
from custodian_agent.config import SETTINGS, AgentSettings
from sdquorum import pki
from sdquorum.envelopes import CustodianPolicy
from sdquorum.errors import SdquorumError, StateError, UsageError
from sdquorum_rpc.config import add_flags
from sdquorum_rpc.files import private_umask
from sdquorum_rpc.observability import announce, setup_logging
from sdquorum_rpc.tls import TlsFiles

__all__ = ["add_health_parser", "add_run_parser", "health_command", "run_command"]


def add_run_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], epilog: str) -> None:
    """``run``; its epilog is the tool's whole help (the examples and the passphrase's sources)."""
    r = sub.add_parser("run", help="dial the node and serve requests", epilog=epilog, formatter_class=FORMAT)
    add_flags(r, SETTINGS)
    passphrase_flag(r)


def add_health_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    h = state_command(
        sub,
        "health",
        "exit 0 if the running agent is connected to its node (for probes and watchdogs)",
        "examples:\n  custodian-agent health --state-dir ~/.sdquorum-agent\n"
        "  custodian-agent health --config /etc/sdquorum/agent.toml   # the state_dir of the agent's config",
    )
    h.add_argument("--max-age", type=int, default=30, help="seconds after which a heartbeat is stale")


def run_command(args: argparse.Namespace) -> int:
    with private_umask():  # the state it keeps: files 0600, directories 0700, whatever the umask
        cfg = AgentSettings.load(args)
        setup_logging(cfg.log_level, cfg.log_format)
        return asyncio.run(_run(cfg, args.passphrase_file))


def health_command(args: argparse.Namespace) -> int:
    return _health(state_dir(args), args.max_age)


def _check_local_files(tls: TlsFiles, policy: CustodianPolicy, state_dir: Path) -> None:
    """Every local file, checked once at start-up: a bad setting is one line and exit 2, not an
    agent that dials, fails its handshake and retries for ever."""
    tls.check()  # PEM files, key matches certificate, validity, issued by the CA given
    try:
        pki.load_cert(policy.attestation_root_pem)
    except SdquorumError as e:
        raise UsageError(f"--attestation-root is not a certificate: {e}") from e
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        probe = state_dir / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"cannot write the state directory {state_dir} (--state-dir): {e.strerror}") from e


async def _run(args: AgentSettings, passphrase_file: Path | None) -> int:
    ApprovalBox(args.state_dir).check()  # refused before the passphrase is asked for
    tls = TlsFiles(args.tls_cert, args.tls_key, args.ca, ("--tls-cert", "--tls-key", "--ca"))
    policy = custodian_policy(args)
    _check_local_files(tls, policy, args.state_dir)
    key = load_key(args, passphrase_file)
    config = AgentConfig(
        node=args.node,
        tls=tls,
        policy=policy,
        state_dir=args.state_dir,
        approval=args.approval,
    )
    agent = Agent(config, key)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    announce(
        "sdquorum.agent",
        f"custodian-agent: serving wrapping certificate {agent.thumbprint.hex()[:16]} via {args.node} "
        f"({args.approval} approval; Azure restores {'served' if args.azure_restore else 'refused'})",
    )
    await agent.run(stop)
    announce("sdquorum.agent", "custodian-agent: stopped")
    return 0


def _health(state_dir: Path, max_age: int) -> int:
    """Agents take no inbound connections (DESIGN.md), so their health is a local heartbeat file."""
    beat = read_heartbeat(state_dir)
    if beat is None:
        raise StateError(
            f"no heartbeat in {state_dir}: is 'custodian-agent run --state-dir {state_dir}' running?"
        )
    age = time.time() - beat["time"]
    if age > max_age:
        raise StateError(f"the agent's last heartbeat is {age:.0f} s old: it is stuck or stopped")
    if not beat["connected"]:
        raise StateError(
            f"the agent runs but is not connected to {beat['node']}: {beat.get('detail', '')}".rstrip(": ")
        )
    print(f"healthy: connected to {beat['node']} ({age:.0f} s ago)")
    return 0
