"""Issue 13, class 5: no file name built from what a node sends leaves the folder it was given.

A node-certificate holder made ``sdctl ... --offline-request DIR`` write a file outside DIR through a
custodian name containing ``../``. Here the node's answer to ExportRequests is replaced with such a
name (what a rogue node would send): sdctl refuses it in one line and writes nothing anywhere.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from cli_support import SdctlRunner, assert_one_line_error, certs_of, running_cluster

from coordinator import CustodianRequest
from sdquorum.keys import SoftwareWrappingKey

pytestmark = pytest.mark.asyncio


@pytest.mark.parametrize("name", ["../escaped", "../../escaped", "ABSOLUTE"])
async def test_offline_request_files_stay_in_their_folder(
    pki_dir: Path,
    tmp_path: Path,
    wrapping_keys: list[SoftwareWrappingKey],
    sdctl: SdctlRunner,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
) -> None:
    requests = tmp_path / "out" / "requests"
    requests.mkdir(parents=True)
    if name == "ABSOLUTE":
        name = str(tmp_path / "elsewhere")
    async with running_cluster(pki_dir, tmp_path / "a") as a:
        await a.download(certs_of(wrapping_keys[:5]), quorum=3)
        honest = a.node.ceremonies.export_requests

        def rogue(session_id: str) -> list[tuple[str, CustodianRequest]]:
            return [(name if r.x == 1 else n, r) for n, r in honest(session_id)]

        monkeypatch.setattr(a.node.ceremonies, "export_requests", rogue)
        drill = asyncio.create_task(
            sdctl("drill", "--reason", "Q4", "--ttl", "30", "--offline-request", str(requests), node=a.target)
        )
        escaped = (requests / f"{name}-x1.request.json").resolve()
        async with asyncio.timeout(30):
            while not drill.done() and not escaped.exists():
                await asyncio.sleep(0.05)
        written_outside = escaped.exists()
        if not drill.done():  # the code before wrote the file and went on: end the session
            a.clock.advance(31)
            await a.node.tick()
        result = await drill
    assert not written_outside, f"sdctl wrote {escaped}, outside {requests}"
    line = assert_one_line_error(result)
    assert "custodian name" in line
    assert not any(requests.iterdir())  # nothing written, not even the honest custodians' files
