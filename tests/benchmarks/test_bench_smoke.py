"""``make bench`` still runs: every part of ``python -m bench --quick``, end to end.

The benchmarks are not timed tests (no target is asserted here: a missed target is the bench's
own report, not a test failure). What is asserted is what a reader of ``bench/results.json`` relies
on: every part ran to the end, every row of the table is a ratio of two positive numbers measured
in this run, each part has the rows it promises, and the machine it ran on is recorded.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PARTS = ("recovery", "flat", "large", "dataplane", "startup", "node")
ROWS_PER_PART = {  # a row each part must print, by the start of its name
    "recovery": ("recovery 3-of-5", "recovery 6-of-10"),
    "flat": ("flat in n: 10-of-10 vs 3-of-3", "  least possible time here"),
    "large": ("backup (Node.backup) of 25,000 keys", "restore (Node.restore) of 25,000 keys"),
    "dataplane": ("Ed25519 SignBatch x1000", "AES-256-GCM EncryptBatch x1000"),
    "startup": ("sdctl --help vs", "sdctl status vs"),
    "node": (
        "node's work per answer (",  # answers one after another
        "  the same vs its crypto floor plus one durable commit",
        "node's work per answer, ",  # answers arriving together
    ),
}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_every_part_of_the_quick_bench_runs(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=560,
        check=False,
    )
    assert run.returncode == 0, f"the quick bench failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    results = json.loads(out.read_text())
    assert results["mode"] == "quick"
    assert results["failures"] == {}
    assert results["machine"]["cores"] >= 1 and results["machine"]["python"]
    rows = results["rows"]
    for part in PARTS:
        names = [r["benchmark"] for r in rows if r["part"] == part]
        for wanted in ROWS_PER_PART[part]:
            assert any(n.startswith(wanted) for n in names), f"{part}: no row {wanted!r} in {names}"
    for r in rows:
        for key in ("measured", "baseline"):
            assert math.isfinite(r[key]) and r[key] > 0, f"{r['benchmark']}: {key} = {r[key]}"
        assert r["ratio"] == pytest.approx(r["measured"] / r["baseline"])
        assert r["ok"] in (True, False, None)
    assert "| benchmark | measured | baseline | ratio | target | ok |" in re.sub(" +", " ", run.stdout)
