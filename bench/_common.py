"""What every benchmark shares: result rows, the table, machine facts, the PKI and wrapping keys.

Every row is a ratio of two numbers measured side by side in the same run (STYLE.md: benchmarks
print ratios, they are not timed tests), with both absolute numbers kept for the record.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from sdquorum import pki
from sdquorum.keys import SoftwareWrappingKey

__all__ = [
    "NAMES",
    "ROOT",
    "BenchContext",
    "Row",
    "harness",
    "machine_facts",
    "median",
    "quiet_logs",
    "render_table",
    "run_async",
]

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
NAMES = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy")


def harness() -> ModuleType:
    """``tests/harness.py`` (in-process clusters over real mTLS, ``NodeProcess``), imported by path."""
    tests = str(ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    return importlib.import_module("harness")  # importable once tests/ is on sys.path


def quiet_logs() -> None:
    """The product logs every late (refused) release at WARNING; a benchmark table needs silence."""
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("sdquorum").setLevel(logging.CRITICAL)
    # grpc.aio logs the WatchRequests streams it cancels when a benchmark node stops
    logging.getLogger("grpc").setLevel(logging.CRITICAL)
    # run_async may close a loop with a grpc handler task still pending ("Task was destroyed")
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)


def run_async(coro: Coroutine[Any, Any, T], cleanup_seconds: float = 5.0) -> T:
    """``asyncio.run`` whose clean-up cannot hang: tasks still pending after ``coro`` (a grpc.aio
    handler stuck in cancellation, say) get ``cleanup_seconds`` to finish, then the loop closes."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for t in pending:
            t.cancel()
        if pending:
            loop.run_until_complete(asyncio.wait(pending, timeout=cleanup_seconds))
        loop.run_until_complete(
            asyncio.wait([loop.create_task(loop.shutdown_asyncgens())], timeout=cleanup_seconds)
        )
        loop.close()


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


@dataclass
class Row:
    """One line of the table: ``measured / baseline`` against ``target``.

    ``lower_is_better``: the target is a ceiling on the ratio (times), else a floor (throughput).
    ``target`` None: reported for the record, no pass/fail. ``check`` overrides the ratio test with
    a condition the row states in ``target_text`` (e.g. "slow custodians NOT_NEEDED").
    """

    part: str
    name: str
    measured: float
    baseline: float
    unit: str
    target: float | None = None
    lower_is_better: bool = True
    check: bool | None = None
    target_text: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.measured / self.baseline if self.baseline else float("inf")

    @property
    def ok(self) -> bool | None:
        if self.check is not None:
            ratio_ok = True
            if self.target is not None:
                ratio_ok = self.ratio <= self.target if self.lower_is_better else self.ratio >= self.target
            return self.check and ratio_ok
        if self.target is None:
            return None
        return self.ratio <= self.target if self.lower_is_better else self.ratio >= self.target

    def target_str(self) -> str:
        if self.target_text:
            return self.target_text
        if self.target is None:
            return "(record)"
        return f"{'<=' if self.lower_is_better else '>='} {self.target:g}x"

    def to_json(self) -> dict[str, Any]:
        return {
            "part": self.part,
            "benchmark": self.name,
            "measured": self.measured,
            "baseline": self.baseline,
            "unit": self.unit,
            "ratio": self.ratio,
            "target": self.target_str(),
            "ok": self.ok,
            "details": self.details,
        }


def _fmt(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value * 1000:.1f} ms" if value < 10 else f"{value:.1f} s"
    if unit == "ops/s":
        return f"{value:,.0f} ops/s"
    if unit == "MB":
        return f"{value:.1f} MB"
    return f"{value:.3g} {unit}"


def render_table(rows: Sequence[Row]) -> str:
    header = ["benchmark", "measured", "baseline", "ratio", "target", "ok"]
    lines = [header]
    for r in rows:
        ok = {True: "yes", False: "NO", None: "-"}[r.ok]
        lines.append(
            [
                r.name,
                _fmt(r.measured, r.unit),
                _fmt(r.baseline, r.unit),
                f"{r.ratio:.2f}x",
                r.target_str(),
                ok,
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for i, line in enumerate(lines):
        out.append("| " + " | ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) + " |")
        if i == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_facts() -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for dist in ("sdquorum", "grpcio", "protobuf", "cryptography", "PyNaCl"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    import ssl  # only for its version string

    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_total_mb": _mem_total_mb(),
        "load_average_1_5_15": os.getloadavg(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "openssl": ssl.OPENSSL_VERSION,
        "libraries": versions,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _mem_total_mb() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return None


@dataclass
class BenchContext:
    """Shared across parts: a temp directory, one PKI (10 custodians, node-a and node-b), the
    custodians' RSA-3072 wrapping keys (made once), and the run's mode."""

    tmp: Path
    quick: bool
    now: datetime
    pki_dir: Path
    keys: list[SoftwareWrappingKey]
    setup_seconds: float
    # the same keys as (private key, certificate DER), for agents in processes of their own
    key_pairs: list[tuple[RSAPrivateKey, bytes]] = field(default_factory=list, repr=False)

    @classmethod
    def create(cls, tmp: Path, quick: bool) -> BenchContext:
        from sdctl.pkifiles import init_pki  # the CLI's PKI code, as the tests use

        started = time.perf_counter()
        now = datetime.now(UTC).replace(microsecond=0)
        pki_dir = tmp / "pki"
        init_pki(pki_dir, ["node-a", "node-b"], list(NAMES), now)
        keys, pairs = [], []
        for name in NAMES:
            key, cert_pem = pki.make_wrapping_key(name, now, bits=3072)
            der = pki.load_cert(cert_pem).public_bytes(serialization.Encoding.DER)
            keys.append(SoftwareWrappingKey(key, der))
            pairs.append((key, der))
        return cls(tmp, quick, now, pki_dir, keys, time.perf_counter() - started, pairs)

    def certs(self, n: int) -> list[bytes]:
        return [k.certificate_der() for k in self.keys[:n]]
