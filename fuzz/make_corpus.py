"""Write the seed corpus: valid encodings of every format, one directory per fuzz target.

``python fuzz/make_corpus.py [--out fuzz/corpus]`` writes ``<out>/<family>/seed-<sha256 prefix>`` for
every sample of every decoder of the family (see ``_samples.py``), plus a few degenerate inputs.
Seeds are named by content, so running it again adds the new seeds (fresh keys) beside the old
ones and what the fuzzers found. The corpus is not committed (``fuzz/.gitignore``).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

from _harness import DECODERS, FAMILIES
from _samples import build_samples

FUZZ_DIR = Path(__file__).resolve().parent
DEGENERATE = (b"", b"{}", b"[]", b"null", b'{"type":null}')


def write_corpus(out: Path) -> dict[str, int]:
    """Write the seeds under ``out``; return how many each family has."""
    samples = build_samples()
    counts = {}
    for family in FAMILIES:
        directory = out / family
        directory.mkdir(parents=True, exist_ok=True)
        seeds = {s for d in DECODERS if d.family == family for s in samples.of(d.name)} | set(DEGENERATE)
        for seed in seeds:
            (directory / f"seed-{hashlib.sha256(seed).hexdigest()[:16]}").write_bytes(seed)
        counts[family] = len(seeds)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=FUZZ_DIR / "corpus", help="corpus root (default fuzz/corpus)"
    )
    args = parser.parse_args(argv)
    for family, n in write_corpus(args.out).items():
        print(f"{args.out / family}: {n} seeds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
