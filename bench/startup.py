"""Start-up of the operator's tool (issue 14, section 5): each command is a process of its own.

Measured side by side in one run, each command ``runs`` times in turn (so a slower minute of the
machine falls on both sides), the median wall time of each:

* ``sdctl --help`` against ``python -c 'import argparse'`` (target <= 2x): the price of the
  interpreter and argparse is the floor; what sdctl adds on top is its own start-up.
* ``sdctl status`` against ``bench/_min_status.py`` (target <= 1.3x): a script that imports grpc,
  dials the same node with the same mTLS files and calls GetStatus, and nothing else. The node is
  a real ``hsm-node run`` process started here.
* ``python -c pass`` for the record (the interpreter alone).

The project's modules are byte-compiled first, as a wheel install does: with
``PYTHONDONTWRITEBYTECODE`` set (or a read-only checkout) every run would otherwise compile them
again, while the standard library and grpc come with their bytecode.
"""

from __future__ import annotations

import compileall
import os
import subprocess
import sys
import time
from pathlib import Path

from bench._common import ROOT, BenchContext, Row, harness, median

__all__ = ["run_startup"]


def _sdctl() -> list[str]:
    """The console script as an operator runs it (beside this interpreter), else the module."""
    script = Path(sys.executable).parent / "sdctl"
    return [str(script)] if script.exists() else [sys.executable, "-m", "sdctl.cli"]


def _wall(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, env=env, cwd=ROOT, timeout=120)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{argv[:3]} exited {done.returncode}: {done.stderr.decode()[-500:]}")
    return seconds


def run_startup(ctx: BenchContext) -> list[Row]:
    runs = 7 if ctx.quick else 21
    for package in ("sdctl", "sdquorum", "sdquorum_rpc", "custodian_agent", "hsm_node", "coordinator"):
        compileall.compile_dir(ROOT / package, quiet=1)
    node = harness().NodeProcess(
        ctx.pki_dir, ctx.tmp / "startup" / "node-a", node_id="node-a", log_level="WARNING"
    )
    node.start(timeout=60)
    try:
        pki = ctx.pki_dir
        env = {k: v for k, v in os.environ.items() if not k.startswith("SDCTL_")}
        tls = [str(pki / "admin.pem"), str(pki / "admin.key"), str(pki / "ca.pem")]
        commands = {
            "pass": [sys.executable, "-c", "pass"],
            "argparse": [sys.executable, "-c", "import argparse"],
            "help": [*_sdctl(), "--help"],
            "minimal": [sys.executable, str(ROOT / "bench" / "_min_status.py"), node.target, *tls],
            "status": [
                *_sdctl(),
                "--node",
                node.target,
                "--cert",
                tls[0],
                "--key",
                tls[1],
                "--ca",
                tls[2],
                "status",
            ],
        }
        for argv in commands.values():  # warm the page cache and the bytecode caches once
            _wall(argv, env)
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(runs):
            for name, argv in commands.items():
                times[name].append(_wall(argv, env))
    finally:
        node.kill(15)
    m = {name: median(values) for name, values in times.items()}
    details = {"runs": runs, "seconds_each_run": {k: [round(v, 4) for v in vs] for k, vs in times.items()}}
    return [
        Row(
            "startup",
            "sdctl --help vs python -c 'import argparse'",
            m["help"],
            m["argparse"],
            "s",
            2.0,
            details=details,
        ),
        Row(
            "startup",
            "sdctl status vs a grpc script calling GetStatus with the same mTLS",
            m["status"],
            m["minimal"],
            "s",
            1.3,
        ),
        Row("startup", "(python -c 'import argparse' vs python -c pass)", m["argparse"], m["pass"], "s"),
    ]
