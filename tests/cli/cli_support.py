"""Helpers shared by the command-line tests (imported as ``cli_support``: tests/cli is on sys.path).

The in-process cluster comes from ``tests/harness.py``; its fixtures are re-exported by
``tests/cli/conftest.py`` and its helpers from this module.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import harness as e2e  # the shared in-process cluster harness

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
