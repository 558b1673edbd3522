"""The bounded model of the protocol (tests/model/sdquorum.pml), checked exhaustively by spin.

The model has two variants: TODAY's protocol (before issue 13) and the FIXED one (DESIGN.md). spin
must find issue 13's class 1 (a secret sent to a destination nobody was shown) and class 2 (a
rollback to a retired epoch) on TODAY, each through its own invariant, and nothing at all on FIXED,
with a complete search (no "Search not completed", no depth truncation). The FIXED variant must still
be able to recover and rotate (the GOAL runs), so it is not safe merely because nothing can happen.
A failure message carries spin's counterexample trail, one line per protocol step.

Needs Debian's ``spin`` and a C compiler (spin writes the verifier in C). Without them these tests
skip saying how to install them (``scripts/ensure-test-tools.sh`` as root); with
``SDQUORUM_REQUIRE_TOOLS=1`` (CI) a missing tool fails instead.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

MODEL = Path(__file__).with_name("sdquorum.pml")
SPIN_TIMEOUT = 120  # seconds for one generate + compile + search; the largest search takes about 10 s
MAX_DEPTH = 10_000  # far beyond the deepest path (about 250 steps): truncation would be reported


def tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path:
        return path
    reason = (
        f"no {name} on PATH: run scripts/ensure-test-tools.sh as root "
        f"(apt-get install {package}) to check the protocol model"
    )
    if os.environ.get("SDQUORUM_REQUIRE_TOOLS") == "1":
        pytest.fail(f"SDQUORUM_REQUIRE_TOOLS=1 but {reason}")
    pytest.skip(reason)


@dataclass(frozen=True)
class Verdict:
    defines: tuple[str, ...]
    errors: int
    states: int
    seconds: float
    output: str
    trail: str

    @property
    def complete(self) -> bool:
        return "Search not completed" not in self.output and "max search depth too small" not in self.output

    def violations(self) -> list[str]:
        return re.findall(r"VIOLATION (inv_\w+)", self.trail)

    def report(self) -> str:
        steps = [line.strip() for line in self.trail.splitlines() if "MSC:" in line or "VIOLATION" in line]
        return (
            f"spin {' '.join(self.defines) or '(TODAY)'}: errors {self.errors}, {self.states} states, "
            f"{self.seconds:.1f} s, complete={self.complete}\ncounterexample trail:\n  "
            + ("\n  ".join(steps) or "(none)")
            + f"\npan output:\n{self.output}"
        )


def verify(workdir: Path, *defines: str, shortest: bool = False) -> Verdict:
    """Generate, compile and run spin's verifier for the model with ``defines``; replay any trail."""
    spin, cc = tool("spin", "spin"), tool("cc", "gcc")
    workdir.mkdir(parents=True, exist_ok=True)
    model = workdir / MODEL.name
    shutil.copyfile(MODEL, model)

    def run(*argv: str) -> str:
        done = subprocess.run(
            argv, cwd=workdir, capture_output=True, text=True, timeout=SPIN_TIMEOUT, check=False
        )
        if done.returncode != 0 and argv[0] != "./pan":
            pytest.fail(f"{' '.join(argv)} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout + done.stderr

    started = time.monotonic()
    run(spin, "-a", *defines, model.name)
    # -DREACH: with -i (iterative shortening) the verifier then finds the shortest counterexample
    run(cc, "-O2", "-w", "-DSAFETY", *(["-DREACH"] if shortest else []), "-o", "pan", "pan.c")
    output = run("./pan", f"-m{MAX_DEPTH}", "-w22", *(["-i"] if shortest else []))
    seconds = time.monotonic() - started
    errors = re.search(r"errors: (\d+)", output)
    states = re.search(r"(\d+) states, stored", output)
    if errors is None or states is None:
        pytest.fail(f"spin's verifier printed no verdict:\n{output}")
    trail = run(spin, "-t", *defines, model.name) if (workdir / f"{model.name}.trail").exists() else ""
    return Verdict(tuple(defines), int(errors.group(1)), int(states.group(1)), seconds, output, trail)


ONLY_DEST = ("-DCHECK_EPOCH=0", "-DCHECK_LOST=0")
ONLY_EPOCH = ("-DCHECK_DEST=0", "-DCHECK_LOST=0")
ONLY_LOST = ("-DCHECK_DEST=0", "-DCHECK_EPOCH=0")


def test_today_class_1_an_admin_alone_sends_the_domain_to_its_own_exchange_certificate(
    tmp_path: Path,
) -> None:
    verdict = verify(tmp_path, *ONLY_DEST, shortest=True)
    assert verdict.errors > 0, verdict.report()
    assert verdict.violations() == ["inv_dest"], verdict.report()
    assert "MSC: adversary role 1" in verdict.trail, verdict.report()  # the admin, alone
    assert "Azure restore completes: transfer file wrapped to key 3, shown=0" in verdict.trail, (
        verdict.report()
    )


def test_today_class_2_a_retired_epoch_is_recovered_with_a_lost_key(tmp_path: Path) -> None:
    verdict = verify(tmp_path, *ONLY_EPOCH, shortest=True)
    assert verdict.errors > 0, verdict.report()
    assert verdict.violations() == ["inv_epoch"], verdict.report()
    steps = verdict.trail
    assert steps.index("rotation to epoch 2") < steps.index("recovery on N2 with the epoch-1 SD file"), (
        verdict.report()
    )
    assert "N2 completes recovery at epoch 1 (domain at epoch 2)" in steps, verdict.report()


def test_today_class_3_a_lost_key_comes_back_under_a_new_certificate(tmp_path: Path) -> None:
    verdict = verify(tmp_path, *ONLY_LOST, shortest=True)
    assert verdict.errors > 0, verdict.report()
    assert verdict.violations() == ["inv_lost"], verdict.report()


def test_fixed_protocol_has_no_violation_in_the_complete_state_space(tmp_path: Path) -> None:
    verdict = verify(tmp_path, "-DFIXED")
    print(verdict.report())  # the state count and time, for the record (pytest -s)
    assert verdict.errors == 0, verdict.report()
    assert verdict.complete, verdict.report()
    assert verdict.states > 100_000, verdict.report()  # the whole bounded world, not a pruned corner


@pytest.mark.parametrize(
    ("defence", "only", "invariant"),
    [
        ("-DDEF_AZURE=0", ONLY_DEST, "inv_dest"),
        ("-DDEF_EPOCH=0", ONLY_EPOCH, "inv_epoch"),
        ("-DDEF_SPKI=0", ONLY_LOST, "inv_lost"),
    ],
    ids=["class 1 without the Azure refusal", "class 2 without agents' epoch memory", "class 3 without SPKI"],
)
def test_fixed_protocol_needs_each_defence(
    tmp_path: Path, defence: str, only: tuple[str, ...], invariant: str
) -> None:
    """Switch one of FIXED's defences off: spin finds its class again, through its own invariant."""
    verdict = verify(tmp_path, "-DFIXED", defence, *only, shortest=True)
    assert verdict.errors > 0, verdict.report()
    assert verdict.violations() == [invariant], verdict.report()


@pytest.mark.parametrize(
    ("goal", "reached"),
    [
        ("-DGOAL=1", "N2 completes recovery at epoch 2 (domain at epoch 2)"),
        ("-DGOAL=2", "rotation to epoch 2 (slot 3 -> key 4)"),
    ],
    ids=["a recovery of the current epoch completes", "the rotation completes"],
)
def test_fixed_protocol_still_recovers_and_rotates(tmp_path: Path, goal: str, reached: str) -> None:
    """The FIXED model is safe with its ceremonies still working: spin refutes 'this never happens'."""
    verdict = verify(tmp_path, "-DFIXED", goal)
    assert verdict.errors > 0, verdict.report()
    assert reached in verdict.trail, verdict.report()
    assert verdict.violations() == [], verdict.report()


def test_fixed_protocol_residual_a_recovery_open_across_a_rotation(tmp_path: Path) -> None:
    """What the fix leaves (docs/SECURITY.md): when operators let a recovery session on a new node stay
    open across a rotation, one honest custodian's release made before the rotation plus a release
    made after it by the lost key's holder (or a colluding custodian) complete the retired epoch.
    No agent refuses (each was asked while the epoch was current); the session deadline bounds it."""
    verdict = verify(tmp_path, "-DFIXED", "-DINFLIGHT=1")
    assert verdict.errors > 0, verdict.report()
    assert verdict.violations() == ["inv_epoch"], verdict.report()
    assert re.search(r"MSC: adversary role [45]\n", verdict.trail), verdict.report()  # a custodian's key


@pytest.mark.parametrize(("required", "outcome"), [("1", pytest.fail.Exception), ("", pytest.skip.Exception)])
def test_missing_spin_skips_or_fails(
    monkeypatch: pytest.MonkeyPatch, required: str, outcome: type[BaseException]
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setenv("SDQUORUM_REQUIRE_TOOLS", required)
    with pytest.raises(outcome, match=r"scripts/ensure-test-tools\.sh"):
        tool("spin", "spin")
