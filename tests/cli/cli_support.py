"""Helpers shared by the command-line tests (imported as ``cli_support``: tests/cli is on sys.path).

``tests/`` is not a package, so ``tests/e2e/conftest.py`` (the in-process cluster) is loaded once
more here under a module name of its own, :data:`E2E_MODULE`; its fixtures are re-exported by
``tests/cli/conftest.py`` and its helpers from this module.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

E2E_MODULE = "sdquorum_tests_e2e_conftest"


def _load_e2e() -> ModuleType:
    if E2E_MODULE in sys.modules:
        return sys.modules[E2E_MODULE]
    spec = importlib.util.spec_from_file_location(
        E2E_MODULE, Path(__file__).parents[1] / "e2e" / "conftest.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[E2E_MODULE] = module
    spec.loader.exec_module(module)
    return module


e2e = _load_e2e()
NAMES: list[str] = e2e.NAMES
Cluster = e2e.Cluster
certs_of = e2e.certs_of
running_cluster = e2e.running_cluster
tls = e2e.tls


@dataclass(frozen=True)
class Result:
    """What a person sees after one command: exit code, stdout lines, stderr text."""

    code: int
    out: list[str]
    err: str

    @property
    def err_lines(self) -> list[str]:
        return self.err.splitlines()


def assert_one_line_error(result: Result, prog: str = "sdctl") -> str:
    """Exit != 0, exactly one line on stderr, ``PROG: error: ...``, no traceback. Returns the line."""
    assert result.code != 0, result
    assert "Traceback" not in result.err, result.err
    lines = result.err_lines
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{prog}: error: "), lines[0]
    return lines[0]


SdctlRunner = Callable[..., Awaitable[Result]]
