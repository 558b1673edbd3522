"""Run every atheris target (or some) for N seconds each: ``make fuzz`` runs ``run.py --seconds 60``.

Each target runs in its own process on its corpus directory ``<corpus>/<family>`` (seeded by
``make_corpus.py`` when empty; libFuzzer adds what it finds there), with ``-max_total_time=N``.
Crash inputs go to ``<artifacts>/<family>-crash-*`` and each target's output to
``<artifacts>/<family>.log``. Exit code: 0 if every target ran its time without a crash, 1 if any
crashed (its log's tail is printed, with the command that replays the input), 2 if atheris is missing.

Reproduce a crash: ``python fuzz/fuzz_<family>.py <crash file>`` (runs that one input).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

FUZZ_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(FUZZ_DIR))

from _harness import FAMILIES  # noqa: E402  # fuzz/ is not a package: its path goes first

ATHERIS_HINT = (
    "atheris is not installed in this environment: `pip install atheris` (3.0.0 has Linux wheels for "
    "CPython 3.11), or `pip install -e '.[dev]'` once it is in the dev extras"
)


@dataclass(frozen=True)
class Outcome:
    family: str
    returncode: int
    seconds: float
    log: Path
    runs: str
    crashes: tuple[Path, ...]

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.crashes


def run_target(family: str, seconds: int, corpus: Path, artifacts: Path, extra: list[str]) -> Outcome:
    directory = corpus / family
    log = artifacts / f"{family}.log"
    command = [
        sys.executable,
        str(FUZZ_DIR / f"fuzz_{family}.py"),
        str(directory),
        f"-max_total_time={seconds}",
        f"-artifact_prefix={artifacts}/{family}-",
        "-timeout=25",  # seconds per input: nothing here should take more than milliseconds
        "-rss_limit_mb=2048",
        "-print_final_stats=1",
        *extra,
    ]
    started = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, cwd=FUZZ_DIR, check=False)
    text = log.read_text(errors="replace")
    runs = re.findall(r"stat::number_of_executed_units:\s*(\d+)", text)
    crashes = tuple(sorted(artifacts.glob(f"{family}-*")))
    return Outcome(
        family, proc.returncode, time.monotonic() - started, log, runs[-1] if runs else "?", crashes
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=60, help="fuzzing time per target (default 60)")
    parser.add_argument(
        "--targets",
        default=",".join(FAMILIES),
        help=f"comma-separated families (default all: {','.join(FAMILIES)})",
    )
    parser.add_argument(
        "--corpus", type=Path, default=FUZZ_DIR / "corpus", help="corpus root (default fuzz/corpus)"
    )
    parser.add_argument(
        "--artifacts",
        type=Path,
        default=FUZZ_DIR / "artifacts",
        help="crash inputs and logs (default fuzz/artifacts)",
    )
    parser.add_argument(
        "--jobs", type=int, default=os.cpu_count() or 1, help="targets run at once (default: CPUs)"
    )
    parser.add_argument(
        "libfuzzer_args", nargs="*", help="passed to every target after `--` (e.g. -- -max_len=8192)"
    )
    args = parser.parse_args(argv)

    families = [f for f in args.targets.split(",") if f]
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        parser.error(f"unknown target(s) {', '.join(unknown)}: use some of {', '.join(FAMILIES)}")
    if args.seconds < 1:
        parser.error("--seconds must be at least 1")
    if importlib.util.find_spec("atheris") is None:
        print(f"run.py: {ATHERIS_HINT}", file=sys.stderr)
        return 2

    if any(not (args.corpus / f).is_dir() or not any((args.corpus / f).iterdir()) for f in families):
        from make_corpus import write_corpus

        write_corpus(args.corpus)
    args.artifacts.mkdir(parents=True, exist_ok=True)
    for stale in (p for f in families for p in args.artifacts.glob(f"{f}-*")):
        stale.unlink()

    print(
        f"fuzzing {len(families)} targets for {args.seconds} s each, {args.jobs} at a time (coverage-guided, atheris)"
    )
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        outcomes = list(
            pool.map(
                lambda f: run_target(f, args.seconds, args.corpus, args.artifacts, args.libfuzzer_args),
                families,
            )
        )
    failed = [o for o in outcomes if not o.ok]
    for o in outcomes:
        status = "ok" if o.ok else f"CRASH (exit {o.returncode})"
        print(f"  {o.family:<10} {status:<16} {o.runs:>9} runs in {o.seconds:5.1f} s   log {o.log}")
    for o in failed:
        print(f"\n--- {o.family}: last lines of {o.log}", file=sys.stderr)
        print("\n".join(o.log.read_text(errors="replace").splitlines()[-40:]), file=sys.stderr)
        for crash in o.crashes:
            print(f"replay: {sys.executable} {FUZZ_DIR / f'fuzz_{o.family}.py'} {crash}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
