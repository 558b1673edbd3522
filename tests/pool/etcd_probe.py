"""One etcd client call, run inside a network namespace by tests/pool (the test process itself is
in the root namespace and cannot reach the namespaced members).

    python etcd_probe.py PKI_DIR USER ENDPOINTS OP [ARG ...] [--call-timeout S]

``USER`` is ``root`` or a node id; ``ENDPOINTS`` is comma-separated ``host:port``. OPs: ``health
TIMEOUT`` (every endpoint sees one leader), ``auth NODE_ID,...`` (bootstrap_auth), ``put KEY VALUE``,
``get KEY``. Prints one JSON object: ``ok``, ``seconds``, ``value`` or ``error`` + ``message``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from hsm_node.pool.etcd import EtcdClient, EtcdConfig
from sdquorum import etcd_pki
from sdquorum.errors import SdquorumError

MEMBER_ROLE = "sdquorum-member"


async def run(a: argparse.Namespace) -> dict[str, object]:
    pki = Path(a.pki)
    stem = "root" if a.user == "root" else etcd_pki.etcd_user(a.user)
    cfg = EtcdConfig(
        endpoints=tuple(a.endpoints.split(",")),
        ca_pem=(pki / "ca.pem").read_bytes(),
        cert_pem=(pki / f"{stem}.pem").read_bytes(),
        key_pem=(pki / f"{stem}.key").read_bytes(),
        attempt_timeout=min(1.0, a.call_timeout),
        call_timeout=a.call_timeout,
    )
    t0 = time.monotonic()
    async with EtcdClient(cfg) as c:
        try:
            if a.op == "health":
                deadline = time.monotonic() + float(a.args[0])
                while True:
                    try:
                        leaders = {(await c.status(e)).leader for e in cfg.endpoints}
                    except SdquorumError:
                        leaders = {0}
                    if 0 not in leaders and len(leaders) == 1:
                        break
                    if time.monotonic() > deadline:
                        return {"ok": False, "error": "Timeout", "message": "no common leader"}
                    await asyncio.sleep(0.1)
                value: object = None
            elif a.op == "auth":
                await c.bootstrap_auth(MEMBER_ROLE, [etcd_pki.etcd_user(n) for n in a.args[0].split(",")])
                value = None
            elif a.op == "put":
                value = await c.put(a.args[0].encode(), a.args[1].encode())
            elif a.op == "get":
                kv = await c.get(a.args[0].encode())
                value = None if kv is None else kv.value.decode()
            else:
                raise SystemExit(f"unknown op {a.op}")
        except SdquorumError as e:
            return {
                "ok": False,
                "error": type(e).__name__,
                "message": str(e),
                "seconds": time.monotonic() - t0,
            }
    return {"ok": True, "value": value, "seconds": time.monotonic() - t0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("pki")
    ap.add_argument("user")
    ap.add_argument("endpoints")
    ap.add_argument("op")
    ap.add_argument("args", nargs="*")
    ap.add_argument("--call-timeout", type=float, default=4.0)
    print(json.dumps(asyncio.run(run(ap.parse_args()))))


if __name__ == "__main__":
    main()
