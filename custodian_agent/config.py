"""``custodian-agent run`` settings: ``[agent]``, ``[tls]``, ``[attestation]``, ``[wrapping]``,
``[observability]`` in TOML; ``SDQUORUM_AGENT_*`` in the environment; flags. Sample:
deploy/config/agent.toml. The passphrase is never a setting: it comes from a prompt or
``$SDQUORUM_PASSPHRASE``."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sdquorum.errors import UsageError
from sdquorum_rpc.config import Setting, check_host_port, load_settings

__all__ = ["SETTINGS", "AgentSettings"]

E = "SDQUORUM_AGENT_"
SETTINGS = [
    Setting(
        "agent.node", "--node", E + "NODE", required=True, help="host:port of the node running the ceremony"
    ),
    Setting(
        "agent.state_dir",
        "--state-dir",
        E + "STATE_DIR",
        Path,
        Path.home() / ".sdquorum-agent",
        help="pending requests and decisions",
    ),
    Setting(
        "agent.approval",
        "--approval",
        E + "APPROVAL",
        default="manual",
        help="manual (a person approves each request) or auto (drills and tests only)",
    ),
    Setting(
        "agent.allow_domains",
        "--allow-domain",
        E + "ALLOW_DOMAINS",
        list,
        [],
        help="only serve these domain ids (hex; repeat or comma-separate)",
    ),
    Setting(
        "agent.pin_domain_keys",
        "--pin-domain-key",
        E + "PIN_DOMAIN_KEYS",
        list,
        [],
        help="only serve SD files signed by this domain key (32-byte hex)",
    ),
    Setting(
        "tls.cert",
        "--tls-cert",
        E + "TLS_CERT",
        Path,
        required=True,
        help="this agent's mTLS client certificate",
    ),
    Setting("tls.key", "--tls-key", E + "TLS_KEY", Path, required=True, help="its private key (PEM, 0600)"),
    Setting(
        "tls.ca", "--ca", E + "TLS_CA", Path, required=True, help="transport CA of the node's certificate"
    ),
    Setting(
        "attestation.root",
        "--attestation-root",
        E + "ATTESTATION_ROOT",
        Path,
        required=True,
        help="root that must sign the node's exchange key",
    ),
    Setting(
        "wrapping.key",
        "--wrapping-key",
        E + "WRAPPING_KEY",
        Path,
        required=True,
        help="passphrase-encrypted PKCS#8 wrapping key",
    ),
    Setting(
        "wrapping.cert", "--wrapping-cert", E + "WRAPPING_CERT", Path, required=True, help="its certificate"
    ),
    Setting(
        "observability.log_level",
        "--log-level",
        E + "LOG_LEVEL",
        default="INFO",
        help="DEBUG, INFO, WARNING or ERROR",
    ),
    Setting(
        "observability.log_format",
        "--log-format",
        E + "LOG_FORMAT",
        default="text",
        help="text or json (one event a line)",
    ),
]


@dataclass(frozen=True)
class AgentSettings:
    node: str
    state_dir: Path
    approval: str
    allow_domain: list[str]
    pin_domain_key: list[str]
    tls_cert: Path
    tls_key: Path
    ca: Path
    attestation_root: Path
    wrapping_key: Path
    wrapping_cert: Path
    log_level: str
    log_format: str

    def __post_init__(self) -> None:
        check_host_port(self.node, "agent.node")
        if self.approval not in ("manual", "auto"):
            raise UsageError(
                f"agent.approval = {self.approval!r}: use manual (default) or auto (drills and tests only)"
            )
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise UsageError(
                f"observability.log_level = {self.log_level!r}: use DEBUG, INFO, WARNING or ERROR"
            )
        if self.log_format not in ("text", "json"):
            raise UsageError(f"observability.log_format = {self.log_format!r}: use text or json")

    @classmethod
    def load(cls, args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> AgentSettings:
        return cls(**load_settings(SETTINGS, args, environ))
