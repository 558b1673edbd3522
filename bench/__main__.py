"""``python -m bench [--quick] [--only recovery,flat,large,dataplane,startup,node,pool] [--out FILE]``

Runs the benchmarks of issue 6 (and the start-up of issue 14), prints one table (``| benchmark | measured | baseline | ratio |
target | ok |``) and writes the rows with the machine's facts to ``bench/results.json``
(``bench/results-quick.json`` with ``--quick``, so a smoke run never overwrites the full record).

Every row is a ratio of two numbers measured side by side in this run. A missed target is
reported, not raised: the exit code is 0 when every selected part ran, 1 when a part failed to run
(``--strict``: 2 when a target was missed). See bench/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import faulthandler
import importlib
import inspect
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench._common import BenchContext, Row, machine_facts, quiet_logs, render_table, run_async

PART_LIMIT, PART_LIMIT_QUICK = 480.0, 120.0  # seconds a part may take before the watchdog ends the run


# Each part's module and entry point, imported only when the part runs (a part imports only what
# it needs); a coroutine entry point runs in its own event loop.
_ENTRY = {
    "recovery": ("bench.recovery", "run_recovery"),
    "flat": ("bench.recovery", "run_flat"),
    "large": ("bench.large", "run_large"),
    "dataplane": ("bench.dataplane", "run_dataplane"),
    "startup": ("bench.startup", "run_startup"),
    "node": ("bench.node", "run_node"),
    "pool": ("bench.pool", "run_pool"),
}
PARTS = tuple(_ENTRY)


def _runner(part: str) -> Callable[[BenchContext], list[Row]]:
    module, name = _ENTRY[part]
    run: Callable[[BenchContext], Any] = getattr(importlib.import_module(module), name)
    if inspect.iscoroutinefunction(run):
        return lambda ctx: run_async(run(ctx))
    return run


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer keys and runs (smoke test, < 90 s)")
    p.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts of: {', '.join(PARTS)}")
    p.add_argument("--out", type=Path, help="results file (default bench/results.json, or -quick.json)")
    p.add_argument("--strict", action="store_true", help="exit 2 when a target is missed")
    a = p.parse_args(argv)
    a.parts = [s.strip() for s in a.only.split(",") if s.strip()]
    unknown = [s for s in a.parts if s not in PARTS]
    if unknown or not a.parts:
        p.error(f"unknown part(s) {', '.join(unknown) or '(none)'}: choose from {', '.join(PARTS)}")
    if a.out is None:
        a.out = Path(__file__).resolve().parent / ("results-quick.json" if a.quick else "results.json")
    return a


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    quiet_logs()
    started = time.perf_counter()
    facts = machine_facts()
    print(
        f"sdquorum bench ({'quick' if args.quick else 'full'}): {', '.join(args.parts)} on "
        f"{facts['cpu_model']}, {facts['cores']} cores, Python {facts['python']}",
        flush=True,
    )
    rows: list[Row] = []
    timings: dict[str, float] = {}
    failures: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="sdquorum-bench-") as tmp:
        ctx = BenchContext.create(Path(tmp), args.quick)
        timings["setup (PKI, 10 RSA-3072 wrapping keys)"] = ctx.setup_seconds
        for part in args.parts:
            t0 = time.perf_counter()
            print(f"  running {part} ...", flush=True)
            # a watchdog: a part that hangs dumps every thread's stack and ends the run (exit 1)
            faulthandler.dump_traceback_later(PART_LIMIT_QUICK if args.quick else PART_LIMIT, exit=True)
            try:
                rows += _runner(part)(ctx)
            except Exception as e:  # report the part as failed, run the others
                failures[part] = f"{type(e).__name__}: {e}"
                traceback.print_exc()
            faulthandler.cancel_dump_traceback_later()
            timings[part] = time.perf_counter() - t0
            print(f"  {part} done in {timings[part]:.1f} s", flush=True)
    total = time.perf_counter() - started
    facts["load_average_at_end_1_5_15"] = os.getloadavg()
    print()
    print(render_table(rows))
    print()
    for part, err in failures.items():
        print(f"FAILED to run {part}: {err}")
    load = facts["load_average_1_5_15"][0], facts["load_average_at_end_1_5_15"][0]
    print(
        f"total {total:.1f} s; load average {load[0]:.2f} at start, {load[1]:.2f} at end; results in {args.out}"
    )
    result: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "parts": args.parts,
        "machine": facts,
        "seconds": {**{k: round(v, 2) for k, v in timings.items()}, "total": round(total, 2)},
        "failures": failures,
        "rows": [r.to_json() for r in rows],
    }
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    if failures:
        return 1
    if args.strict and any(r.ok is False for r in rows):
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
