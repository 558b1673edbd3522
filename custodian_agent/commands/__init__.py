"""The ``custodian-agent`` commands, one module per command group, and the flags they share.

* :mod:`.keys`: ``keygen`` and ``import-key`` (the wrapping key, in a file or a PKCS#11 token), and
  the loading of that key for the commands that use it.
* :mod:`.serve`: ``run`` (the online agent) and ``health`` (its heartbeat).
* :mod:`.respond`: ``respond`` (the offline agent: one request file in, one answer file out).
* :mod:`.requests`: ``domains``, ``pending``, ``approve`` and ``deny`` (the agent's local state).

Each group module has ``add_parsers(sub)`` adding its commands to ``custodian-agent``'s parser and
one handler per command taking the parsed arguments and returning the exit code;
``custodian_agent.cli`` wires them together.

Invariants:

* Every command that reads the agent's state takes ``--state-dir`` or ``--config`` (the file
  ``run --config`` reads) through :func:`state_dir_flags` (:func:`state_command`), so they all find the same directory.
* Every command that unlocks a key file takes the same ``--passphrase-file`` flag; every command
  that may use a token takes the same ``--pkcs11-*`` flags. The passphrase and the PIN are never
  flags' values.
* The custodian's policy is built in one place (:func:`custodian_policy`), for ``run`` and ``respond`` alike.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from custodian_agent.config import DEFAULT_STATE_DIR, SETTINGS, AgentSettings
from sdquorum.envelopes import CustodianPolicy
from sdquorum.errors import UsageError
from sdquorum_rpc.config import load_settings
from sdquorum_rpc.files import read_input_file

__all__ = [
    "FORMAT",
    "custodian_policy",
    "passphrase_flag",
    "state_command",
    "state_dir",
    "state_dir_flags",
    "token_flags",
]

FORMAT = argparse.RawDescriptionHelpFormatter  # every command's epilog keeps its line breaks


def state_dir_flags(p: argparse.ArgumentParser) -> None:
    """--state-dir, or the agent's own config file (the one 'run --config' reads) and environment."""
    p.add_argument("--config", type=Path, help="the agent's TOML configuration file (for agent.state_dir)")
    p.add_argument("--state-dir", type=Path, default=None, help=f"default: {DEFAULT_STATE_DIR}")


def state_command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help_: str, epilog: str
) -> argparse.ArgumentParser:
    """A command that reads the agent's state directory: its parser, with :func:`state_dir_flags`."""
    p = sub.add_parser(name, help=help_, epilog=epilog, formatter_class=FORMAT)
    state_dir_flags(p)
    return p


def state_dir(args: argparse.Namespace) -> Path:
    setting = next(s for s in SETTINGS if s.key == "agent.state_dir")
    value: Path = load_settings([setting], args, file_may_hold=SETTINGS)[setting.dest]
    return value


UNLOCK_HELP = (
    "file holding the wrapping key's passphrase on its first line (mode 0600). Without it: "
    "$SDQUORUM_PASSPHRASE, the file named by $SDQUORUM_PASSPHRASE_FILE, systemd's "
    "$CREDENTIALS_DIRECTORY/sdquorum-passphrase, else a prompt on the terminal"
)


def passphrase_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--passphrase-file", type=Path, metavar="FILE", help=UNLOCK_HELP)


def token_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pkcs11-module", type=Path, help="PKCS#11 module of the token holding the key")
    p.add_argument("--pkcs11-token", help="the token's label")
    p.add_argument("--pkcs11-key-label", help="the key pair's label in the token")


def _hexes(values: list[str], what: str, length: int) -> frozenset[bytes]:
    out = set()
    for v in values:
        try:
            b = bytes.fromhex(v)
        except ValueError as e:
            raise UsageError(f"{what} {v!r} is not hex") from e
        if len(b) != length:
            raise UsageError(f"{what} {v!r} must be {length} bytes of hex")
        out.add(b)
    return frozenset(out)


def custodian_policy(args: argparse.Namespace | AgentSettings) -> CustodianPolicy:
    return CustodianPolicy(
        attestation_root_pem=read_input_file(args.attestation_root, "attestation root"),
        allowed_domains=_hexes(args.allow_domain, "--allow-domain", 16),
        pinned_signing_keys=_hexes(args.pin_domain_key, "--pin-domain-key", 32),
        azure_restore=bool(args.azure_restore),
    )
