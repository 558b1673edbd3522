"""``custodian-agent run`` settings: ``[agent]``, ``[tls]``, ``[attestation]``, ``[wrapping]``,
``[observability]`` in TOML; ``SDQUORUM_AGENT_*`` in the environment; flags. Sample:
deploy/config/agent.toml. The passphrase is never a setting: it comes from ``--passphrase-file``,
the environment, a systemd credential or a prompt (:mod:`custodian_agent.keyfile`)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from custodian_agent.approvals import DEFAULT_STATE_DIR, check_mode
from sdquorum.errors import UsageError
from sdquorum_rpc.config import Setting, check_host_port, load_settings, log_settings

__all__ = ["DEFAULT_STATE_DIR", "SETTINGS", "AgentSettings"]

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
        DEFAULT_STATE_DIR,
        help="pending requests, decisions, and the domain memory (pinned domain keys, highest epochs seen): back it up",
    ),
    Setting(
        "agent.approval",
        "--approval",
        E + "APPROVAL",
        default="manual",
        help="manual (a person approves each request; the default) or auto-drills (possession drills "
        "answered alone; recoveries and rotations still wait for a person). 'auto' is refused",
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
        "agent.azure_restore",
        "--azure-restore",
        E + "AZURE_RESTORE",
        bool,
        False,
        help="serve Azure restores (default: refused): their result is re-encrypted to an external Azure "
        "exchange certificate no node attests; the custodian is shown its fingerprint",
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
        "wrapping.pkcs11_module",
        "--pkcs11-module",
        E + "PKCS11_MODULE",
        Path,
        help="PKCS#11 module holding the wrapping key (instead of --wrapping-key); PIN from $SDQUORUM_PKCS11_PIN or a prompt",
    ),
    Setting("wrapping.pkcs11_token", "--pkcs11-token", E + "PKCS11_TOKEN", help="the token's label"),
    Setting(
        "wrapping.pkcs11_key_label",
        "--pkcs11-key-label",
        E + "PKCS11_KEY_LABEL",
        help="the key pair's label in the token",
    ),
    Setting(
        "wrapping.key",
        "--wrapping-key",
        E + "WRAPPING_KEY",
        Path,
        help="passphrase-encrypted PKCS#8 wrapping key (or the key in a token: --pkcs11-*)",
    ),
    Setting(
        "wrapping.cert", "--wrapping-cert", E + "WRAPPING_CERT", Path, required=True, help="its certificate"
    ),
    *log_settings(E),
]


@dataclass(frozen=True)
class AgentSettings:
    node: str
    state_dir: Path
    approval: str
    allow_domain: list[str]
    pin_domain_key: list[str]
    azure_restore: bool
    pkcs11_module: Path | None
    pkcs11_token: str | None
    pkcs11_key_label: str | None
    tls_cert: Path
    tls_key: Path
    ca: Path
    attestation_root: Path
    wrapping_key: Path | None
    wrapping_cert: Path
    log_level: str
    log_format: str

    def __post_init__(self) -> None:
        check_host_port(self.node, "agent.node")
        check_mode(self.approval)  # 'auto' is refused here, before any key or passphrase is asked for
        token = (self.pkcs11_module, self.pkcs11_token, self.pkcs11_key_label)
        if any(v is not None for v in token) and not all(v is not None for v in token):
            raise UsageError(
                "a token key needs all of wrapping.pkcs11_module, pkcs11_token and pkcs11_key_label"
            )
        if (self.wrapping_key is None) == (self.pkcs11_module is None):
            raise UsageError(
                "give exactly one wrapping key: wrapping.key (a file) or wrapping.pkcs11_* (a token)"
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
