"""An etcd member cut off the network (network namespaces, tests/multihost/netns.py).

Each etcd member in its own namespace on a private bridge; clients run in namespaces of the same net
(tests/pool/etcd_probe.py). Cutting a member's link without telling it is the partition a pool
member meets in a data centre: the cut member must refuse (it has no leader), never serve what it
had, while the other two go on; when the link returns it catches up.
Needs root and iproute2: skips with the reason otherwise.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from etcd_cluster import EtcdCluster

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "multihost"))  # the namespace harness
from netns import Net, cleanup_run, probe

pytestmark = pytest.mark.slow

KEY = "/sdquorum/0badc0de/keys/partition"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    reason = probe()
    if reason is not None:
        if "iproute2" in reason and os.environ.get("SDQUORUM_REQUIRE_TOOLS") == "1":
            pytest.fail(f"SDQUORUM_REQUIRE_TOOLS=1 but {reason}")
        pytest.skip(reason)
    try:
        with Net() as net, EtcdCluster(tmp_path_factory.mktemp("etcd-netns"), net=net) as c:
            c.start()
            r = c.probe("root", "auth", ",".join(c.node_ids))
            assert r["ok"], r
            yield c
    finally:
        left = cleanup_run()
        assert not left, f"namespaces or links left behind: {left}"


def test_a_member_cut_off_refuses_and_catches_up_when_its_link_returns(cluster: EtcdCluster) -> None:
    net = cluster.net
    assert net is not None
    cut = cluster.members[0]
    assert cluster.probe("node-a", "put", KEY, "before")["ok"]
    net.cut(cut.name, how="detach")  # its packets vanish: nothing tells it
    try:
        # the other two have a quorum: a client that lists every member is served
        r = cluster.probe("node-a", "put", KEY, "during", call_timeout=6.0)
        assert r["ok"], r
        # on the cut member itself (its own loopback), neither a write nor a read is served
        local = ["127.0.0.1:2379"]
        w = cluster.probe("node-a", "put", KEY, "on-cut", host=cut.name, endpoints=local, call_timeout=3.0)
        g = cluster.probe("node-a", "get", KEY, host=cut.name, endpoints=local, call_timeout=3.0)
        for refused in (w, g):
            assert refused["error"] == "TransportError", refused
            assert "\n" not in refused["message"] and "a majority of the etcd members" in refused["message"]
            assert refused["seconds"] < 3.0 + 1.0
        print(f"\ncut member: write refused after {w['seconds']:.2f} s, read after {g['seconds']:.2f} s")
    finally:
        net.restore(cut.name)
    # back on the network it rejoins and serves what was written while it was away
    r = cluster.probe("root", "health", "30", call_timeout=1.0)
    assert r["ok"], r
    back = cluster.probe("node-a", "get", KEY, host=cut.name, endpoints=["127.0.0.1:2379"], call_timeout=6.0)
    assert back == {"ok": True, "value": "during", "seconds": back["seconds"]}
