"""``custodian-agent``: the custodian's side of every ceremony.

Examples::

    custodian-agent keygen --name alice --key alice.wrap.key --cert alice.wrap.pem
    custodian-agent run --node node-b.example:7443 --tls-cert alice.tls.pem --tls-key alice.tls.key \\
        --ca transport-ca.pem --attestation-root attestation-root.pem \\
        --wrapping-key alice.wrap.key --wrapping-cert alice.wrap.pem --state-dir ~/.sdquorum
    custodian-agent pending --state-dir ~/.sdquorum
    custodian-agent domains --state-dir ~/.sdquorum
    custodian-agent approve 3f2a9c1b0d4e5f60 --state-dir ~/.sdquorum

Approval (--approval): manual (the default) asks you for every request; auto-drills answers
possession drills alone and still asks you for every recovery and rotation. 'auto' is refused: no
share is released without a person approving.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import signal
import time
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from custodian_agent import responder
from custodian_agent.agent import Agent, AgentConfig, read_heartbeat
from custodian_agent.approvals import ApprovalBox, asks_person
from custodian_agent.config import SETTINGS, AgentSettings
from custodian_agent.keyfile import keygen, load_wrapping_key, read_passphrase
from custodian_agent.memory import DomainMemory
from sdquorum import __version__, envelopes, pki
from sdquorum.envelopes import CustodianPolicy
from sdquorum.errors import SdquorumError, StateError, UsageError
from sdquorum.keys import WrappingKey
from sdquorum.offline import CeremonyRequest, OfflineAnswer
from sdquorum_rpc.cli import run_main
from sdquorum_rpc.config import add_flags, load_settings
from sdquorum_rpc.files import PendingFile, private_umask, read_input_file, write_private_file
from sdquorum_rpc.observability import setup_logging
from sdquorum_rpc.tls import TlsFiles

__all__ = ["main"]

PIN_ENV = "SDQUORUM_PKCS11_PIN"  # the name of a variable, not a secret

DEFAULT_STATE_DIR = Path.home() / ".sdquorum-agent"


def _parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(
        prog="custodian-agent", description=__doc__.split("\n")[0], epilog=__doc__, formatter_class=fmt
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    k = sub.add_parser(
        "keygen",
        help="make a wrapping key (passphrase-encrypted, 0600) and its certificate",
        epilog="examples:\n  custodian-agent keygen --name alice --key alice.wrap.key --cert alice.wrap.pem\n"
        "  custodian-agent keygen --name alice --cert alice.wrap.pem --pkcs11-module /usr/lib/softhsm/libsofthsm2.so \\\n"
        "      --pkcs11-token alice --pkcs11-key-label alice-wrap      # the key is made inside the token",
        formatter_class=fmt,
    )
    k.add_argument(
        "--name",
        required=True,
        help="custodian name (the certificate's CN): the <name> of your mTLS certificate's custodian/<name>; "
        "the node serves an agent only keys bearing its name",
    )
    k.add_argument("--key", type=Path, help="where to write the encrypted private key (not with --pkcs11-*)")
    k.add_argument(
        "--cert", type=Path, required=True, help="where to write the certificate to hand to the admin"
    )
    k.add_argument("--bits", type=int, default=3072, help="RSA key size (default 3072; at least 2048)")
    _token_flags(k)

    r = sub.add_parser("run", help="dial the node and serve requests", epilog=__doc__, formatter_class=fmt)
    add_flags(r, SETTINGS)

    o = sub.add_parser(
        "respond",
        help="answer a request file on an offline machine (same checks and crypto as 'run')",
        epilog="example: custodian-agent respond --request alice-x1.request.json --out alice-x1.answer.json \\\n"
        "    --attestation-root attestation-root.pem --wrapping-key alice.wrap.key --wrapping-cert alice.wrap.pem",
        formatter_class=fmt,
    )
    o.add_argument("--request", type=Path, required=True, help="the request file the admin gave you")
    o.add_argument("--out", type=Path, required=True, help="where to write the answer file (must not exist)")
    o.add_argument("--attestation-root", type=Path, required=True)
    o.add_argument("--wrapping-key", type=Path, help="passphrase-encrypted key file (or --pkcs11-*)")
    o.add_argument("--wrapping-cert", type=Path, required=True)
    _token_flags(o)
    o.add_argument("--allow-domain", action="append", default=[], metavar="HEX")
    o.add_argument("--pin-domain-key", action="append", default=[], metavar="HEX")
    o.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="remember the domain's signing key and highest epoch here (as 'run' does) and refuse "
        "another key or a retired epoch; without it nothing is remembered",
    )
    o.add_argument(
        "--azure-restore",
        action="store_true",
        help="answer an Azure restore request (refused without it: its result goes to an external key)",
    )
    o.add_argument(
        "--yes",
        action="store_true",
        help="answer a possession drill without asking; refused for a request that releases your "
        "share or approves a rotation (those always ask you)",
    )
    o.add_argument("--deny", action="store_true", help="write a denial instead of an answer")

    h = sub.add_parser(
        "health",
        help="exit 0 if the running agent is connected to its node (for probes and watchdogs)",
        epilog="examples:\n  custodian-agent health --state-dir ~/.sdquorum-agent\n  custodian-agent health --config /etc/sdquorum/agent.toml   # the state_dir of the agent's config",
        formatter_class=fmt,
    )
    _state_dir_flags(h)
    h.add_argument("--max-age", type=int, default=30, help="seconds after which a heartbeat is stale")

    dm = sub.add_parser(
        "domains",
        help="list the domains this agent remembers: pinned signing key and highest epoch seen",
        epilog="example: custodian-agent domains --state-dir ~/.sdquorum",
        formatter_class=fmt,
    )
    _state_dir_flags(dm)
    for name, help_ in (("pending", "list requests waiting for your approval"),):
        q = sub.add_parser(
            name,
            help=help_,
            epilog="example: custodian-agent pending --state-dir ~/.sdquorum",
            formatter_class=fmt,
        )
        _state_dir_flags(q)
    for name, help_ in (
        ("approve", "release your share for a pending request"),
        ("deny", "refuse a pending request"),
    ):
        q = sub.add_parser(
            name, help=help_, epilog=f"example: custodian-agent {name} 3f2a9c1b0d4e5f60", formatter_class=fmt
        )
        q.add_argument("request_id")
        _state_dir_flags(q)
        q.add_argument("--reason", default="")
    return p


def _state_dir_flags(p: argparse.ArgumentParser) -> None:
    """--state-dir, or the agent's own config file (the one 'run --config' reads) and environment."""
    p.add_argument("--config", type=Path, help="the agent's TOML configuration file (for agent.state_dir)")
    p.add_argument("--state-dir", type=Path, default=None, help=f"default: {DEFAULT_STATE_DIR}")


def _state_dir(args: argparse.Namespace) -> Path:
    setting = next(s for s in SETTINGS if s.key == "agent.state_dir")
    value: Path = load_settings([setting], args, file_may_hold=SETTINGS)[setting.dest]
    return value


def _token_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pkcs11-module", type=Path, help="PKCS#11 module of the token holding the key")
    p.add_argument("--pkcs11-token", help="the token's label")
    p.add_argument("--pkcs11-key-label", help="the key pair's label in the token")


def _pin() -> str:
    pin = os.environ.get(PIN_ENV)
    return pin if pin is not None else getpass.getpass("Token PIN: ")


def _load_key(args: argparse.Namespace | AgentSettings) -> WrappingKey:
    """The custodian's key: a passphrase-protected file, or a token object that never leaves it."""
    if args.pkcs11_module is not None:
        if not args.pkcs11_token or not args.pkcs11_key_label:
            raise UsageError("a token key needs --pkcs11-module, --pkcs11-token and --pkcs11-key-label")
        from custodian_agent.pkcs11key import open_token_key  # python-pkcs11 only where a token is used

        cert = pki.load_cert(read_input_file(args.wrapping_cert, "wrapping certificate"))
        return open_token_key(
            args.pkcs11_module,
            args.pkcs11_token,
            _pin(),
            args.pkcs11_key_label,
            cert.public_bytes(serialization.Encoding.DER),
        )
    if args.wrapping_key is None:
        raise UsageError("give --wrapping-key FILE, or --pkcs11-module/--pkcs11-token/--pkcs11-key-label")
    return load_wrapping_key(args.wrapping_key, args.wrapping_cert, read_passphrase())


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


def _policy(args: argparse.Namespace | AgentSettings) -> CustodianPolicy:
    return CustodianPolicy(
        attestation_root_pem=read_input_file(args.attestation_root, "attestation root"),
        allowed_domains=_hexes(args.allow_domain, "--allow-domain", 16),
        pinned_signing_keys=_hexes(args.pin_domain_key, "--pin-domain-key", 32),
        azure_restore=bool(args.azure_restore),
    )


def _respond(args: argparse.Namespace) -> int:
    """The offline agent: one request file in, one answer file out, nothing else touched."""
    req = CeremonyRequest.from_bytes(read_input_file(args.request, "request file"))
    if args.yes and asks_person("auto-drills", req.kind):  # the rule 'run' keeps with auto-drills
        raise UsageError(
            f"--yes answers drills only: this {req.kind} request "
            + ("approves a rotation" if req.kind == "rotation" else "releases your share")
            + "; run again without --yes, read it and type 'yes' at the prompt"
        )
    policy = _policy(args)
    if args.out.exists():
        raise UsageError(f"{args.out} exists already: choose another --out")
    memory = DomainMemory(args.state_dir) if args.state_dir is not None else None  # damaged: raises
    key = _load_key(args)
    thumbprint = pki.thumbprint_sha256(key.certificate_der())
    remembered = memory.known() if memory is not None else None
    checked = responder.check(
        req, thumbprint, policy, datetime.now(UTC), remembered
    )  # raises, naming the check
    if memory is not None and isinstance(checked, envelopes.CheckedRequest):
        h = checked.header
        memory.observe(h.domain_id, h.signing_public_key, h.epoch)
    details = responder.describe(req, checked)
    print(f"request file fingerprint {req.fingerprint} (compare with what the admin read out):")
    for k in (
        "kind",
        "initiator",
        "reason",
        "node_id",
        "node_address",
        "domain_id",
        "epoch",
        "slot",
        "expires_at",
        "destination",
        "proposal",
    ):
        if k in details:
            print(f"  {k:<13} {details[k]}")
    if args.deny:
        approved = False
    elif args.yes:
        approved = True
    else:
        approved = (
            input(f"Release your answer for this {req.kind}? Type 'yes' to approve: ").strip().lower()
            == "yes"
        )
    if approved:
        answer = OfflineAnswer(
            req.request_id, req.session_id, req.kind, responder.answer(req, checked, key, os.urandom)
        )
    else:
        answer = OfflineAnswer(
            req.request_id,
            req.session_id,
            req.kind,
            envelopes.make_denial(
                key,
                session_id=req.session_id,
                request_id=req.request_id,
                x=req.x,
                reason="denied by the custodian",
                attestation=req.attestation,
            ).to_bytes(),
            denied=True,
            reason="denied by the custodian",
        )
    write_private_file(args.out, answer.to_bytes(), mode=0o644)
    print(
        f"wrote {args.out}: {'answer' if approved else 'denial'}; give it to the admin ('sdctl upload-answer {args.out.name}')"
    )
    return 0


def _check_local_files(tls: TlsFiles, policy: CustodianPolicy, state_dir: Path) -> None:
    """Every local file, checked once at start-up: a bad setting is one line and exit 2, not an
    agent that dials, fails its handshake and retries for ever."""
    tls.read()  # PEM files, key matches certificate, validity, issued by the CA given
    try:
        pki.load_cert(policy.attestation_root_pem)
    except SdquorumError as e:
        raise UsageError(f"--attestation-root is not a certificate: {e}") from e
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        probe = state_dir / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"cannot write the state directory {state_dir} (--state-dir): {e.strerror}") from e


async def _run(args: AgentSettings) -> int:
    ApprovalBox(args.state_dir).check()  # refused before the passphrase is asked for
    tls = TlsFiles(args.tls_cert, args.tls_key, args.ca, ("--tls-cert", "--tls-key", "--ca"))
    policy = _policy(args)
    _check_local_files(tls, policy, args.state_dir)
    key = _load_key(args)
    config = AgentConfig(
        node=args.node,
        tls=tls,
        policy=policy,
        state_dir=args.state_dir,
        approval=args.approval,
    )
    agent = Agent(config, key)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(
        f"custodian-agent: serving wrapping certificate {agent.thumbprint.hex()[:16]} via {args.node} "
        f"({args.approval} approval; Azure restores {'served' if args.azure_restore else 'refused'})",
        flush=True,
    )
    await agent.run(stop)
    print("custodian-agent: stopped", flush=True)
    return 0


def _health(state_dir: Path, max_age: int) -> int:
    """Agents take no inbound connections (DESIGN.md), so their health is a local heartbeat file."""
    beat = read_heartbeat(state_dir)
    if beat is None:
        raise StateError(
            f"no heartbeat in {state_dir}: is 'custodian-agent run --state-dir {state_dir}' running?"
        )
    age = time.time() - beat["time"]
    if age > max_age:
        raise StateError(f"the agent's last heartbeat is {age:.0f} s old: it is stuck or stopped")
    if not beat["connected"]:
        raise StateError(
            f"the agent runs but is not connected to {beat['node']}: {beat.get('detail', '')}".rstrip(": ")
        )
    print(f"healthy: connected to {beat['node']} ({age:.0f} s ago)")
    return 0


def _body(args: argparse.Namespace) -> int:
    if args.command != "run":  # run sets up logging from its own settings
        setup_logging("WARNING")
    if args.command == "keygen":
        if args.bits < 2048:
            raise UsageError("--bits must be at least 2048 (3072 recommended)")
        if args.pkcs11_module is not None:
            if args.key is not None or not args.pkcs11_token or not args.pkcs11_key_label:
                raise UsageError(
                    "for a token key give --pkcs11-module, --pkcs11-token and --pkcs11-key-label, not --key"
                )
            from custodian_agent.pkcs11key import token_keygen

            with PendingFile(args.cert, mode=0o644) as out:
                out.write(
                    token_keygen(
                        args.pkcs11_module,
                        args.pkcs11_token,
                        _pin(),
                        args.pkcs11_key_label,
                        args.name,
                        datetime.now(UTC),
                        args.bits,
                    )
                )
            print(
                f"made the key pair inside token {args.pkcs11_token!r}; wrote {args.cert}: give it to the HSM admin"
            )
            return 0
        if args.key is None:
            raise UsageError("give --key FILE for a key file, or --pkcs11-* for a key made inside a token")
        keygen(
            args.name, args.key, args.cert, read_passphrase(confirm=True), datetime.now(UTC), bits=args.bits
        )
        print(f"wrote {args.key} (encrypted, 0600) and {args.cert}: give {args.cert} to the HSM admin")
        return 0
    if args.command == "run":
        with private_umask():  # the state it keeps: files 0600, directories 0700, whatever the umask
            cfg = AgentSettings.load(args)
            setup_logging(cfg.log_level, cfg.log_format)
            return asyncio.run(_run(cfg))
    if args.command == "health":
        return _health(_state_dir(args), args.max_age)
    if args.command == "respond":
        return _respond(args)
    if args.command == "domains":
        known = DomainMemory(_state_dir(args)).known()
        for domain_id, seen in sorted(known.items()):
            print(
                f"domain {domain_id.hex()}: epoch {seen.epoch}, signing key {seen.signing_public_key.hex()}"
            )
        if not known:
            print("no domain remembered yet: the agent learns one when its node announces it or asks")
        return 0
    box = ApprovalBox(_state_dir(args))
    if args.command == "pending":
        items = box.pending()
        for it in items:
            print(json.dumps(it, sort_keys=True))
        if not items:
            print("no pending requests")
        return 0
    box.decide(args.request_id, approved=args.command == "approve", reason=args.reason)
    print(f"request {args.request_id}: {'approved' if args.command == 'approve' else 'denied'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run_main("custodian-agent", lambda: _body(args), args.debug)


if __name__ == "__main__":
    raise SystemExit(main())
