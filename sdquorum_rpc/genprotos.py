"""Regenerate ``sdquorum_rpc/_proto`` from ``protos/`` (``make protos``).

The generated modules are committed so a clone runs without a code generator; ``generate`` is also
what the staleness test calls, into a temporary folder, to compare byte for byte.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT = ROOT / "sdquorum_rpc" / "_proto"


def proto_files() -> list[Path]:
    return sorted(PROTO_ROOT.rglob("*.proto"))


def generate(out: Path) -> list[Path]:
    """Run protoc (grpcio-tools) into ``out`` and return the files written."""
    from grpc_tools import protoc  # type: ignore[import-untyped]  # dev dependency; ships no type hints

    out.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *[str(p.relative_to(PROTO_ROOT)) for p in proto_files()],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed: see the messages above")
    written: list[Path] = []
    for path in sorted(out.rglob("*.py*")):
        if path.suffix not in (".py", ".pyi"):
            continue
        text = path.read_text()
        # protoc writes absolute imports rooted at the proto package; root them at _proto instead.
        text = re.sub(
            r"^from sdquorum\.v1 import", "from sdquorum_rpc._proto.sdquorum.v1 import", text, flags=re.M
        )
        path.write_text(text)
        written.append(path)
    for pkg in {p.parent for p in written} | {out}:
        init = pkg / "__init__.py"
        if not init.exists():
            init.write_text("")
            written.append(init)
    return written


def main() -> int:
    import shutil

    if OUT.exists():
        shutil.rmtree(OUT)
    files = generate(OUT)
    print(f"generated {len(files)} files in {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
