"""``sdctl`` settings: ``[sdctl]`` and ``[tls]`` in TOML (``--config`` or ``$SDCTL_CONFIG``), then
``SDCTL_*`` in the environment, then flags. Sample: deploy/config/sdctl.toml."""

from __future__ import annotations

from pathlib import Path

from sdquorum_rpc.config import Setting

__all__ = ["SETTINGS"]

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
