"""A pool member cut off the network (network namespaces): it stops serving once ``max_staleness``
has passed without proof of a current view, the other member goes on creating keys, and when its
link returns the cut member serves again, with what was created while it was away.

etcd members, hsm-node members and the admin each in a namespace of their own on a private bridge
(tests/multihost/netns.py). Needs root and iproute2: skips with the reason otherwise.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from etcd_cluster import EtcdCluster

from sdctl.pkifiles import init_pki
from sdquorum import pki

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "multihost"))  # the namespace harness
from netns import Net, cleanup_run, probe

pytestmark = pytest.mark.slow
PY = sys.executable
STALENESS = 2.0


@pytest.fixture
def net_etcd(tmp_path: Path) -> Iterator[tuple[Net, EtcdCluster]]:
    reason = probe()
    if reason is not None:
        if "iproute2" in reason and os.environ.get("SDQUORUM_REQUIRE_TOOLS") == "1":
            pytest.fail(f"SDQUORUM_REQUIRE_TOOLS=1 but {reason}")
        pytest.skip(reason)
    try:
        with Net() as net, EtcdCluster(tmp_path / "etcd", net=net) as c:
            c.start()
            r = c.probe("root", "auth", ",".join(c.node_ids))
            assert r["ok"], r
            yield net, c
    finally:
        left = cleanup_run()
        assert not left, f"namespaces or links left behind: {left}"


def test_a_member_cut_off_stops_serving_and_catches_up(
    net_etcd: tuple[Net, EtcdCluster], tmp_path: Path, now: datetime
) -> None:
    net, etcd = net_etcd
    ips = {n: net.add_host(n) for n in ("node-a", "node-b", "admin")}
    d = tmp_path / "pki"
    init_pki(
        d,
        ["node-a", "node-b"],
        ["alice", "bob", "carol"],
        now,
        ips=[ips["node-a"], ips["node-b"], "127.0.0.1"],
    )
    certs = []
    for name in ("alice", "bob", "carol"):
        _, cert_pem = pki.make_wrapping_key(name, now, bits=2048)
        certs.append(tmp_path / f"{name}.pem")
        certs[-1].write_bytes(cert_pem)
    logs = {}
    for node_id in ("node-a", "node-b"):
        pair = etcd.client(node_id)
        logs[node_id] = tmp_path / f"{node_id}.log"
        port_file = tmp_path / f"{node_id}.port"
        net.run(
            node_id,
            [
                PY,
                "-m",
                "hsm_node.cli",
                "run",
                "--node-id",
                node_id,
                "--listen",
                "0.0.0.0:7443",
                "--data-dir",
                str(tmp_path / node_id / "data"),
                "--port-file",
                str(port_file),
                "--tls-cert",
                str(d / "node.pem"),
                "--tls-key",
                str(d / "node.key"),
                "--ca",
                str(d / "ca.pem"),
                "--attestation-cert",
                str(d / f"attestation-{node_id}.pem"),
                "--attestation-key",
                str(d / f"attestation-{node_id}.key"),
                "--pool-etcd",
                ",".join(etcd.endpoints),
                "--pool-etcd-cert",
                str(pair.cert),
                "--pool-etcd-key",
                str(pair.key),
                "--pool-etcd-ca",
                str(etcd.ca),
                "--pool-name",
                "netns",
                "--pool-attestation-root",
                str(d / "attestation-root.pem"),
                "--pool-max-staleness",
                str(STALENESS),
                "--crypto-workers",
                "0",
            ],
            log=logs[node_id],
        )
        deadline = time.monotonic() + 30
        while not port_file.exists():
            assert time.monotonic() < deadline, logs[node_id].read_text()[-2000:]
            time.sleep(0.05)

    def sdctl(host: str, target: str, *args: str) -> tuple[int, str]:
        r = net.call(
            host,
            [PY, "-m", "sdctl.cli", "--node", target, "--cert", str(d / "admin.pem"), "--key", str(d / "admin.key"),
             "--ca", str(d / "ca.pem"), *args],
            timeout=60,
        )  # fmt: skip
        return r.returncode, r.stdout + r.stderr

    a, b = f"{ips['node-a']}:7443", f"{ips['node-b']}:7443"
    cert_args = [x for c in certs for x in ("--cert", str(c))]
    rc, out = sdctl("admin", a, "download", *cert_args, "--quorum", "2", "--out", str(tmp_path / "sd.json"))
    assert rc == 0, out
    for args in (("keys", "create", "before", "--type", "aes256-gcm"), ("pool", "allow", "node-b")):
        rc, out = sdctl("admin", a, *args)
        assert rc == 0, out
    plain = tmp_path / "plain.txt"
    plain.write_bytes(b"hello")

    def encrypt(host: str, target: str, key: str) -> tuple[int, str]:
        return sdctl(
            host, target, "encrypt", key, "--in", str(plain), "--out", str(tmp_path / f"{host}-{key}.enc")
        )

    deadline = time.monotonic() + 30
    while encrypt("admin", b, "before")[0] != 0:  # node-b joins
        assert time.monotonic() < deadline, logs["node-b"].read_text()[-2000:]
        time.sleep(0.2)

    net.cut("node-b", how="detach")  # its packets vanish: nothing tells it
    try:
        time.sleep(STALENESS + 1.5)
        rc, out = encrypt("node-b", "127.0.0.1:7443", "before")  # on its own loopback
        assert rc != 0 and "has not heard from etcd" in out, out
        rc, out = sdctl("admin", a, "keys", "create", "during", "--type", "aes256-gcm")
        assert rc == 0, out  # the member on the quorum's side goes on
    finally:
        net.restore("node-b")
    deadline = time.monotonic() + 20
    while encrypt("node-b", "127.0.0.1:7443", "during")[0] != 0:  # back, and caught up
        assert time.monotonic() < deadline, logs["node-b"].read_text()[-2000:]
        time.sleep(0.2)
