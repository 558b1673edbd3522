"""The atheris targets, briefly: every target fuzzes for a few seconds without a crash.

This is ``make fuzz`` (``fuzz/run.py``) bounded to ``SECONDS`` per target, on a fresh seed corpus in a
temporary directory, so the work tree is not touched. A second test checks the other direction: an
input that raises something other than a project error stops the run, with a non-zero exit code, a
crash file and the command that replays it.

Skipped when atheris is not installed, unless ``SDQUORUM_REQUIRE_TOOLS=1`` (then it fails).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from _harness import FAMILIES, SELFTEST_INPUT

pytestmark = pytest.mark.slow

FUZZ_DIR = Path(__file__).resolve().parents[2] / "fuzz"
SECONDS = 3
MIN_RUNS = 100  # a target that ran its seconds executed far more inputs than this


def fuzz_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SDQUORUM_FUZZ_")}
    return {**env, **extra}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if importlib.util.find_spec("atheris") is None:
        if os.environ.get("SDQUORUM_REQUIRE_TOOLS") == "1":
            pytest.fail("atheris is not installed and SDQUORUM_REQUIRE_TOOLS=1: pip install atheris==3.0.0")
        pytest.skip(
            "atheris is not installed (pip install atheris==3.0.0; SDQUORUM_REQUIRE_TOOLS=1 fails instead)"
        )
    out = tmp_path_factory.mktemp("corpus")
    subprocess.run(
        [sys.executable, str(FUZZ_DIR / "make_corpus.py"), "--out", str(out)],
        check=True,
        capture_output=True,
        env=fuzz_env(),
        timeout=120,
    )
    return out


def run_fuzz(
    corpus: Path, artifacts: Path, *args: str, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        str(FUZZ_DIR / "run.py"),
        f"--seconds={SECONDS}",
        f"--corpus={corpus}",
        f"--artifacts={artifacts}",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=False)


def test_every_target_fuzzes_for_a_few_seconds_without_a_crash(corpus: Path, tmp_path: Path) -> None:
    proc = run_fuzz(corpus, tmp_path / "artifacts", env=fuzz_env())
    report = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-6000:]}"
    assert proc.returncode == 0, report
    for family in FAMILIES:
        line = re.search(rf"^\s+{family}\s+ok\s+(\d+) runs", proc.stdout, re.MULTILINE)
        assert line, f"no 'ok' line for target {family}\n{report}"
        assert int(line.group(1)) >= MIN_RUNS, f"target {family} hardly ran\n{report}"


def test_a_crash_stops_the_run_and_is_reported(corpus: Path, tmp_path: Path) -> None:
    """The self-test input raises RuntimeError (only with SDQUORUM_FUZZ_SELFTEST=1)."""
    seeds = tmp_path / "corpus"
    (seeds / "encoding").mkdir(parents=True)
    (seeds / "encoding" / "selftest").write_bytes(SELFTEST_INPUT)
    artifacts = tmp_path / "artifacts"
    proc = run_fuzz(seeds, artifacts, "--targets=encoding", env=fuzz_env(SDQUORUM_FUZZ_SELFTEST="1"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "RuntimeError: fuzz harness self-test input" in proc.stderr
    (crash,) = artifacts.glob("encoding-crash-*")
    assert crash.read_bytes() == SELFTEST_INPUT
    assert f"replay: {sys.executable} {FUZZ_DIR / 'fuzz_encoding.py'} {crash}" in proc.stderr
