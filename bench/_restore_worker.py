"""One backup restore in a process of its own, so its peak RSS is its own (``python -m bench._restore_worker``).

Argument: one JSON object: ``store`` (``pool`` or ``sqlite``), ``image`` (a file holding a backup
image of ``count`` key rows), ``data_dir``, and for a pool ``pool_id`` (hex), ``endpoints``, ``ca``,
``cert``, ``key`` (the etcd client files). Prints one JSON line: ``seconds`` (the restore alone),
``open_rss_mb`` (peak RSS once the store is open, before the image is read), ``peak_rss_mb`` (peak
RSS at the end) and ``served`` (the keys the store serves after it).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any


def _peak_mb() -> float:
    """This process's peak RSS (Linux's VmHWM: unlike ru_maxrss it starts again at exec, so the
    parent's size at the fork is not counted)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError("no VmHWM in /proc/self/status (the restore benchmark needs Linux)")


def main(argv: list[str]) -> int:
    from hsm_node.pool.etcd import EtcdConfig
    from hsm_node.pool.store import PoolNodeStore
    from hsm_node.store import SqliteNodeStore

    args: dict[str, Any] = json.loads(argv[0])
    data_dir = Path(args["data_dir"])
    store: Any
    if args["store"] == "pool":
        config = EtcdConfig(
            endpoints=tuple(args["endpoints"]),
            ca_pem=Path(args["ca"]).read_bytes(),
            cert_pem=Path(args["cert"]).read_bytes(),
            key_pem=Path(args["key"]).read_bytes(),
        )
        store = PoolNodeStore(config, bytes.fromhex(args["pool_id"]), data_dir, os.urandom(32), "node-a")
    else:
        store = SqliteNodeStore(data_dir, os.urandom(32), "node-a")
    try:
        opened = _peak_mb()
        image = Path(args["image"]).read_bytes()
        t0 = time.perf_counter()
        store.keys.import_key_rows(image, int(args["count"]))
        seconds = time.perf_counter() - t0
        served = store.keys.count_keys()
    finally:
        store.close()
    print(
        json.dumps({"seconds": seconds, "open_rss_mb": opened, "peak_rss_mb": _peak_mb(), "served": served})
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
