"""The production code stays in rooms of one responsibility (issue 15), measured with ``ast``.

No production module over 450 lines; no class over 300 lines or 25 methods (generated protobuf
code aside). Nothing is over a limit: the last modules and classes that were (the core's
envelopes, pki and sdfile, the coordinator's Ceremony, the crypto pool, the agent's CLI, the admin
client, the etcd client) were split along their responsibilities.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("sdquorum", "coordinator", "hsm_node", "custodian_agent", "sdctl", "sdquorum_rpc")
MAX_MODULE_LINES = 450
MAX_CLASS_LINES = 300
MAX_CLASS_METHODS = 25


def _measure() -> dict[str, tuple[int, bool]]:
    """name -> (size, over a limit): modules by lines, classes by lines (methods beyond the limit
    count as over too)."""
    out: dict[str, tuple[int, bool]] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.name.endswith(("_pb2.py", "_pb2_grpc.py", "_pb2.pyi")):
                continue
            name = path.relative_to(ROOT).as_posix()
            source = path.read_text()
            lines = len(source.splitlines())
            out[name] = (lines, lines > MAX_MODULE_LINES)
            for node in ast.walk(ast.parse(source)):
                if isinstance(node, ast.ClassDef):
                    size = (node.end_lineno or node.lineno) - node.lineno + 1
                    methods = sum(isinstance(b, ast.FunctionDef | ast.AsyncFunctionDef) for b in node.body)
                    over = size > MAX_CLASS_LINES or methods > MAX_CLASS_METHODS
                    out[f"{name}:{node.name}"] = (size, over)
    return out


def test_no_module_or_class_crosses_a_limit() -> None:
    measured = _measure()
    over = sorted(f"{n} ({size})" for n, (size, is_over) in measured.items() if is_over)
    assert not over, f"over a limit (split them along their responsibilities): {over}"
