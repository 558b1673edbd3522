"""``sdctl`` settings: ``[sdctl]`` and ``[tls]`` in TOML (``--config`` or ``$SDCTL_CONFIG``), then
``SDCTL_*`` in the environment, then flags. Sample: deploy/config/sdctl.toml.

:data:`SETTINGS` are global flags of every command. :data:`ETCD_ROOT_SETTINGS` (``[etcd]``: etcd's
``root`` client certificate) are flags of ``sdctl pool allow|remove`` only, the commands that add and
delete a pool member's etcd user; the file may hold them whatever the command."""

from __future__ import annotations

from pathlib import Path

from sdquorum_rpc.config import Setting

__all__ = ["ETCD_ROOT_SETTINGS", "SETTINGS"]

SETTINGS = [
    Setting(
        "sdctl.node",
        "--node",
        "SDCTL_NODE",
        default="127.0.0.1:7443",
        help="node host:port; a pool: several, comma-separated (round-robin, failover)",
    ),
    Setting(
        "sdctl.retry_interval",
        "--retry-interval",
        "SDCTL_RETRY_INTERVAL",
        float,
        default=1.0,
        help="a pool: seconds a member that did not answer is passed over before it is tried again",
    ),
    Setting(
        "sdctl.retry_timeout",
        "--retry-timeout",
        "SDCTL_RETRY_TIMEOUT",
        float,
        default=10.0,
        help="a pool: seconds a call waits for a member while none answers, then fails",
    ),
    Setting("sdctl.output", "--output", "SDCTL_OUTPUT", default="text", help="text or json"),
    Setting("tls.cert", "--cert", "SDCTL_CERT", Path, help="your mTLS client certificate"),
    Setting("tls.key", "--key", "SDCTL_KEY", Path, help="its private key"),
    Setting("tls.ca", "--ca", "SDCTL_CA", Path, help="the transport CA"),
]

ETCD_ROOT_SETTINGS = [
    Setting(
        "etcd.endpoints",
        "--etcd",
        "SDCTL_ETCD",
        help="the HSM pool's etcd endpoints host:port,host:port,... (with etcd's root certificate)",
    ),
    Setting(
        "etcd.cert",
        "--etcd-cert",
        "SDCTL_ETCD_CERT",
        Path,
        help="etcd's root client certificate (etcd-root.pem from 'sdctl pki init --etcd-member')",
    ),
    Setting("etcd.key", "--etcd-key", "SDCTL_ETCD_KEY", Path, help="its private key (etcd-root.key)"),
    Setting("etcd.ca", "--etcd-ca", "SDCTL_ETCD_CA", Path, help="the etcd cluster's CA (etcd-ca.pem)"),
]
