"""Releases sent at once over gRPC from a process of its own (``python -m bench._release_sender``).

The ``node`` part's gRPC row: m custodians' releases, prepared by the parent, reach the node as m
agents answering in the same moment would, each on its own mTLS connection (the custodian's TLS
certificate), from another process, so the node's event loop does only the node's side.

Protocol: JSON lines. The parent writes ``{"target", "pki", "releases": [[name, request id,
release as base64], ...]}``; this process opens one channel per custodian, connects each, and
answers ``{"ok": true}``. The parent writes ``{"op": "send"}``: every release is sent at once
(``SubmitRelease``), and the answer ``{"ok": true}`` comes once every call has been acknowledged.
Anything that goes wrong is answered ``{"ok": false, "error": "..."}``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from pathlib import Path

from bench._common import harness, quiet_logs
from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2 as pb
from sdquorum_rpc.admin import AdminClient

__all__ = ["main"]


def _reply(ok: bool, error: str = "") -> None:
    print(json.dumps({"ok": ok, **({"error": error} if error else {})}), flush=True)


async def _run() -> None:
    loop = asyncio.get_running_loop()
    order = json.loads(await loop.run_in_executor(None, sys.stdin.readline))
    pki = Path(order["pki"])
    clients = [
        (AdminClient(order["target"], harness().tls(pki, f"custodian-{name}")), rid, base64.b64decode(rel))
        for name, rid, rel in order["releases"]
    ]
    for client, _, _ in clients:
        await client.__aenter__()
        await client.channel.channel_ready()  # TLS handshake done: a real agent's stream is up
    _reply(True)
    try:
        await loop.run_in_executor(None, sys.stdin.readline)
        await asyncio.gather(
            *(c.custodian.SubmitRelease(pb.ShareRelease(request_id=rid, release=r)) for c, rid, r in clients)
        )
        _reply(True)
    finally:
        for client, _, _ in clients:
            await client.__aexit__(None, None, None)


def main() -> None:
    quiet_logs()
    try:
        asyncio.run(_run())
    except Exception as e:  # the parent reads the reason
        _reply(False, f"{type(e).__name__}: {e}")


if __name__ == "__main__":
    main()
