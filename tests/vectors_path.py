"""Where test vectors from elsewhere are read in place (imported as ``vectors_path``: tests/ is on sys.path).

The folder is ``$SDQUORUM_VECTORS`` if set, else ``../shared/vectors`` beside the repository (as CI
lays it out; see shared/vectors/README.md). The files are never copied into the project.

A missing file skips the tests that need it, with the path in the reason, unless
``SDQUORUM_REQUIRE_VECTORS=1`` (``.ci/run`` sets it): then it is a failure.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def vectors_dir() -> Path:
    """The folder holding ``wycheproof/``: ``$SDQUORUM_VECTORS`` or ``../shared/vectors``."""
    override = os.environ.get("SDQUORUM_VECTORS")
    return Path(override) if override else REPO_ROOT.parent / "shared" / "vectors"


def wycheproof(name: str) -> Path:
    """The path of Wycheproof vector file ``name``; skips (or fails, when required) if it is missing."""
    path = vectors_dir() / "wycheproof" / name
    if not path.is_file():
        reason = f"Wycheproof vectors {name} not found at {path} (set SDQUORUM_VECTORS to the vectors folder)"
        if os.environ.get("SDQUORUM_REQUIRE_VECTORS") == "1":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason, allow_module_level=True)
    return path
