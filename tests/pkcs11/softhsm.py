"""A SoftHSM2 token made for the test session (Debian's softhsm2, installed by
scripts/ensure-test-tools.sh): its own config and token directory under a temporary folder."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

MODULE_CANDIDATES = ["/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so"]


@dataclass(frozen=True)
class Token:
    module: Path
    label: str
    pin: str


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Token]:
    module = next((Path(p) for p in MODULE_CANDIDATES if Path(p).exists()), None)
    util = shutil.which("softhsm2-util")
    if module is None or util is None:
        if os.environ.get("SDQUORUM_REQUIRE_TOOLS") == "1":
            pytest.fail(
                "SoftHSM2 is missing: run scripts/ensure-test-tools.sh as root (apt-get install softhsm2)"
            )
        pytest.skip(
            "SoftHSM2 is not installed: run scripts/ensure-test-tools.sh as root (apt-get install softhsm2)"
        )
    root = tmp_path_factory.mktemp("softhsm")
    (root / "tokens").mkdir()
    conf = root / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    old = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    subprocess.run(
        [
            util,
            "--init-token",
            "--free",
            "--label",
            "sdquorum-test",
            "--so-pin",
            "010203",
            "--pin",
            "custodian-pin",
        ],
        check=True,
        capture_output=True,
    )
    yield Token(module, "sdquorum-test", "custodian-pin")
    if old is None:
        os.environ.pop("SOFTHSM2_CONF", None)
    else:
        os.environ["SOFTHSM2_CONF"] = old
