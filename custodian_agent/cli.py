"""``custodian-agent``: the custodian's side of every ceremony.

Examples::

    custodian-agent keygen --name alice --key alice.wrap.key --cert alice.wrap.pem
    custodian-agent import-key --key alice.plain.key --cert alice.cer --out alice.wrap.key --out-cert alice.wrap.pem
    custodian-agent run --node node-b.example:7443 --tls-cert alice.tls.pem --tls-key alice.tls.key \\
        --ca transport-ca.pem --attestation-root attestation-root.pem \\
        --wrapping-key alice.wrap.key --wrapping-cert alice.wrap.pem --state-dir ~/.sdquorum
    custodian-agent pending --state-dir ~/.sdquorum
    custodian-agent domains --state-dir ~/.sdquorum
    custodian-agent approve 3f2a9c1b0d4e5f60 --state-dir ~/.sdquorum

Approval (--approval): manual (the default) asks you for every request; auto-drills answers
possession drills alone and still asks you for every recovery and rotation. 'auto' is refused: no
share is released without a person approving.

The wrapping key's passphrase, without a prompt (first found): --passphrase-file FILE (0600),
$SDQUORUM_PASSPHRASE, the file named by $SDQUORUM_PASSPHRASE_FILE, systemd's
$CREDENTIALS_DIRECTORY/sdquorum-passphrase (LoadCredential=). With none and no terminal: exit 2.
Exit codes: 0 ok, 2 bad usage or input, 3 the request is not open, 4 a check failed, 5 network.
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
from typing import Any

from cryptography.hazmat.primitives import serialization

from custodian_agent import responder
from custodian_agent.agent import Agent, AgentConfig, read_heartbeat
from custodian_agent.approvals import ApprovalBox, asks_person
from custodian_agent.config import DEFAULT_STATE_DIR, SETTINGS, AgentSettings
from custodian_agent.keyfile import (
    has_terminal,
    import_key,
    keygen,
    load_wrapping_key,
    passphrase,
    read_plain_key,
)
from custodian_agent.memory import DomainMemory
from sdquorum import __version__, envelopes, pki
from sdquorum.envelopes import CeremonyKind, CustodianPolicy
from sdquorum.errors import SdquorumError, StateError, UsageError
from sdquorum.keys import WrappingKey
from sdquorum.offline import CeremonyRequest, OfflineAnswer
from sdquorum_rpc.cli import run_main
from sdquorum_rpc.config import add_flags, load_settings
from sdquorum_rpc.files import PendingFile, private_umask, read_input_file, write_private_file
from sdquorum_rpc.observability import announce, setup_logging
from sdquorum_rpc.tls import TlsFiles

__all__ = ["main"]

PIN_ENV = "SDQUORUM_PKCS11_PIN"  # the name of a variable, not a secret


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
    _passphrase_flag(k)

    im = sub.add_parser(
        "import-key",
        help="take a plain PEM RSA key made with openssl (and its certificate) into the agent's encrypted form",
        epilog="example (an Azure custodian's key made with 'openssl genpkey' and 'openssl req'):\n"
        "  custodian-agent import-key --key alice.plain.key --cert alice.cer \\\n"
        "      --out alice.wrap.key --out-cert alice.wrap.pem\n"
        "  shred -u alice.plain.key      # then destroy every other copy of the plain key\n"
        "  custodian-agent import-key --key alice.plain.key --cert alice.cer --out-cert alice.wrap.pem \\\n"
        "      --pkcs11-module /usr/lib/softhsm/libsofthsm2.so --pkcs11-token alice --pkcs11-key-label alice-wrap",
        formatter_class=fmt,
    )
    im.add_argument("--key", type=Path, required=True, help="the plain (unencrypted) PEM RSA private key")
    im.add_argument("--cert", type=Path, required=True, help="its certificate (PEM or DER)")
    im.add_argument("--out", type=Path, help="where to write the encrypted key (0600); not with --pkcs11-*")
    im.add_argument("--out-cert", type=Path, required=True, help="where to write the certificate (PEM)")
    _passphrase_flag(im)
    _token_flags(im)

    r = sub.add_parser("run", help="dial the node and serve requests", epilog=__doc__, formatter_class=fmt)
    add_flags(r, SETTINGS)
    _passphrase_flag(r)

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
    _passphrase_flag(o)
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
    q = sub.add_parser(
        "pending",
        help="list the open requests waiting for your approval (not decided, not expired)",
        epilog="examples:\n  custodian-agent pending --state-dir ~/.sdquorum\n"
        '  custodian-agent pending --output json      # one JSON document: {"requests": [...]}',
        formatter_class=fmt,
    )
    _state_dir_flags(q)
    q.add_argument("--output", choices=["text", "json"], default="text", help="a table (default) or JSON")
    for name, help_ in (
        ("approve", "release your share for a pending request"),
        ("deny", "refuse a pending request"),
    ):
        q = sub.add_parser(
            name,
            help=help_,
            epilog=f"example: custodian-agent {name} 3f2a9c1b0d4e5f60\n"
            "exit 3 when the request is not open (decided, expired, answered or never asked)",
            formatter_class=fmt,
        )
        q.add_argument("request_id")
        _state_dir_flags(q)
        q.add_argument("--reason", default="")
    c = sub.add_parser(
        "completion",
        help="print the shell completion script (bash or zsh)",
        epilog="examples:\n  source <(custodian-agent completion bash)\n"
        "  echo 'source <(custodian-agent completion zsh)' >> ~/.zshrc",
        formatter_class=fmt,
    )
    c.add_argument("shell", choices=["bash", "zsh"])
    for command in sub.choices.values():  # the global flag after the command as well
        command.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
        )
    return p


def _state_dir_flags(p: argparse.ArgumentParser) -> None:
    """--state-dir, or the agent's own config file (the one 'run --config' reads) and environment."""
    p.add_argument("--config", type=Path, help="the agent's TOML configuration file (for agent.state_dir)")
    p.add_argument("--state-dir", type=Path, default=None, help=f"default: {DEFAULT_STATE_DIR}")


def _state_dir(args: argparse.Namespace) -> Path:
    setting = next(s for s in SETTINGS if s.key == "agent.state_dir")
    value: Path = load_settings([setting], args, file_may_hold=SETTINGS)[setting.dest]
    return value


UNLOCK_HELP = (
    "file holding the wrapping key's passphrase on its first line (mode 0600). Without it: "
    "$SDQUORUM_PASSPHRASE, the file named by $SDQUORUM_PASSPHRASE_FILE, systemd's "
    "$CREDENTIALS_DIRECTORY/sdquorum-passphrase, else a prompt on the terminal"
)


def _passphrase_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--passphrase-file", type=Path, metavar="FILE", help=UNLOCK_HELP)


def _token_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pkcs11-module", type=Path, help="PKCS#11 module of the token holding the key")
    p.add_argument("--pkcs11-token", help="the token's label")
    p.add_argument("--pkcs11-key-label", help="the key pair's label in the token")


def _import_into_token(args: argparse.Namespace) -> str:
    """import-key into a token: the pair stored there (not extractable), the certificate beside it."""
    if args.out is not None or not args.pkcs11_token or not args.pkcs11_key_label:
        raise UsageError("for a token give --pkcs11-module, --pkcs11-token and --pkcs11-key-label, not --out")
    from custodian_agent.pkcs11key import token_import  # python-pkcs11 only where a token is used

    key, cert_pem = read_plain_key(args.key, args.cert)
    with PendingFile(args.out_cert, mode=0o644) as out:  # reserved first: a taken path stores nothing
        token_import(args.pkcs11_module, args.pkcs11_token, _pin(), args.pkcs11_key_label, key)
        out.write(cert_pem)
    return (
        f"stored the key in token {args.pkcs11_token!r} as {args.pkcs11_key_label!r} (not extractable) "
        f"and wrote {args.out_cert}"
    )


def _pin() -> str:
    pin = os.environ.get(PIN_ENV)
    if pin is not None:
        return pin
    if not has_terminal():
        raise UsageError(f"no token PIN and no terminal to ask on: set ${PIN_ENV}")
    try:
        return getpass.getpass("Token PIN: ")
    except EOFError:
        raise UsageError(f"no token PIN given (the input ended): set ${PIN_ENV} or type it") from None


def _load_key(args: argparse.Namespace | AgentSettings, passphrase_file: Path | None) -> WrappingKey:
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
    return load_wrapping_key(args.wrapping_key, args.wrapping_cert, passphrase(passphrase_file))


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


def _ask_yes_no(question: str) -> bool:
    """Exactly yes or no (any case, spaces around ignored); anything else asks again. The end of
    the input is an error, not an answer, so nothing is written."""
    while True:
        try:
            reply = input(question).strip().lower()
        except EOFError:
            raise UsageError(
                "no answer given (the input ended): nothing was written; run again and type yes or no, "
                "or use --yes / --deny"
            ) from None
        if reply in ("yes", "no"):
            return reply == "yes"
        print(f"please type yes or no (you typed {reply[:20]!r})", flush=True)


def _respond(args: argparse.Namespace) -> int:
    """The offline agent: one request file in, one answer file out, nothing else touched."""
    req = CeremonyRequest.from_bytes(read_input_file(args.request, "request file"))
    if args.yes and asks_person("auto-drills", req.kind):  # the rule 'run' keeps with auto-drills
        raise UsageError(
            f"--yes answers drills only: this {req.kind} request "
            + ("approves a rotation" if req.kind == CeremonyKind.ROTATION else "releases your share")
            + "; run again without --yes, read it and type 'yes' at the prompt"
        )
    policy = _policy(args)
    if args.out.exists():
        raise UsageError(f"{args.out} exists already: choose another --out")
    memory = DomainMemory(args.state_dir) if args.state_dir is not None else None  # damaged: raises
    key = _load_key(args, args.passphrase_file)
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
            print(f"  {k:<13} {_cell(details[k])}")
    if args.deny:
        approved = False
    elif args.yes:
        approved = True
    else:
        approved = _ask_yes_no(f"Release your answer for this {req.kind}? Type yes or no: ")
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


PENDING_JSON_KEYS = (
    "request_id",
    "kind",
    "initiator",
    "node_id",
    "node_address",
    "reason",
    "domain_id",
    "epoch",
    "slot",
    "session_id",
    "destination",  # the sentence the custodian reads; the digests below are its keys' fingerprints
    "destination_sha256",  # the node's attested exchange key (recovery)
    "destination_spki_sha256",  # an external key (Azure restore): its SubjectPublicKeyInfo
    "destination_certificate_sha256",
    "destination_subject",
    "exchange_key_sha256",
    "proposal",
    "expires_at",
    "details_sha256",
)
PENDING_COLUMNS = (  # (heading, key): the reason last, as it is the one that may be long
    ("REQUEST", "request_id"),
    ("KIND", "kind"),
    ("ASKED BY", "initiator"),
    ("NODE", "node_id"),
    ("DOMAIN", "domain_id"),
    ("EPOCH", "epoch"),
    ("DESTINATION KEY", "destination"),
    ("DEADLINE", "expires_at"),
    ("REASON", "reason"),
)


def _printable(text: str) -> str:
    """Text from the node as the custodian's terminal shows it: one line, no control characters
    (an escape sequence in a reason could otherwise redraw what the custodian reads)."""
    text = " ".join(text.split())
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return _printable(value) or "-"
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _destination_cell(it: dict[str, Any]) -> str:
    """Where a release ends up, by the fingerprint of the key it is sealed to ('pending' shows the
    full sentence below the table when the key is not an attested node's)."""
    if it.get("destination_spki_sha256"):
        return "EXTERNAL " + _cell(it["destination_spki_sha256"])
    if it.get("destination_sha256"):
        return "node " + _cell(it["destination_sha256"])
    return "none" if "destination" in it else "-"


def _deadline_cell(expires_at: Any, now: float) -> str:
    try:
        when = datetime.fromisoformat(str(expires_at))
    except ValueError:
        return _cell(expires_at)
    left = max(0, int(when.timestamp() - now))
    return f"{when.astimezone(UTC):%Y-%m-%d %H:%M:%S}Z ({left // 60}m{left % 60:02d}s left)"


def render_pending(items: list[dict[str, Any]], output: str, now: float, command: str) -> str:
    """The open requests as a table for a person, or one JSON document with fixed keys for scripts
    (a key the request does not carry, such as ``destination``, is null)."""
    if output == "json":
        rows = [{k: it.get(k) for k in PENDING_JSON_KEYS} for it in items]
        return json.dumps({"requests": rows}, indent=2, sort_keys=True)
    if not items:
        return "no pending requests"

    def row(it: dict[str, Any]) -> list[str]:
        special = {
            "expires_at": _deadline_cell(it.get("expires_at"), now),
            "destination": _destination_cell(it),
        }
        return [special[k] if k in special else _cell(it.get(k)) for _, k in PENDING_COLUMNS]

    table = [[h for h, _ in PENDING_COLUMNS], *(row(it) for it in items)]
    widths = [max(len(row[i]) for row in table) for i in range(len(PENDING_COLUMNS) - 1)]
    lines = ["  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]]) for row in table]
    notes = [  # what a row cannot hold: a rotation's proposal, an external destination's warning
        f"{it.get('request_id')}: {label} {_cell(it.get(key))}"
        for it in items
        for key, label, shown in (
            ("proposal", "proposal:", "proposal" in it),
            ("destination", "destination:", bool(it.get("destination_spki_sha256"))),
        )
        if shown
    ]
    return "\n".join([*lines, *notes, f"{len(items)} open; decide each with '{command}'"])


def _check_local_files(tls: TlsFiles, policy: CustodianPolicy, state_dir: Path) -> None:
    """Every local file, checked once at start-up: a bad setting is one line and exit 2, not an
    agent that dials, fails its handshake and retries for ever."""
    tls.check()  # PEM files, key matches certificate, validity, issued by the CA given
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


async def _run(args: AgentSettings, passphrase_file: Path | None) -> int:
    ApprovalBox(args.state_dir).check()  # refused before the passphrase is asked for
    tls = TlsFiles(args.tls_cert, args.tls_key, args.ca, ("--tls-cert", "--tls-key", "--ca"))
    policy = _policy(args)
    _check_local_files(tls, policy, args.state_dir)
    key = _load_key(args, passphrase_file)
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
    announce(
        "sdquorum.agent",
        f"custodian-agent: serving wrapping certificate {agent.thumbprint.hex()[:16]} via {args.node} "
        f"({args.approval} approval; Azure restores {'served' if args.azure_restore else 'refused'})",
    )
    await agent.run(stop)
    announce("sdquorum.agent", "custodian-agent: stopped")
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
    if args.command == "completion":
        from sdquorum_rpc.completion import completion_script

        print(completion_script(_parser(), args.shell), end="")
        return 0
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
            args.name,
            args.key,
            args.cert,
            passphrase(args.passphrase_file, confirm=True),
            datetime.now(UTC),
            bits=args.bits,
        )
        print(f"wrote {args.key} (encrypted, 0600) and {args.cert}: give {args.cert} to the HSM admin")
        return 0
    if args.command == "import-key":
        read_input_file(args.key, "key (--key)")  # a wrong path is named before the passphrase prompt
        read_input_file(args.cert, "certificate (--cert)")
        if args.pkcs11_module is not None:
            where = _import_into_token(args)
        elif args.out is None:
            raise UsageError("give --out FILE for the encrypted key, or --pkcs11-* to store it in a token")
        else:
            phrase = passphrase(args.passphrase_file, confirm=True)
            identity = import_key(args.key, args.cert, args.out, args.out_cert, phrase)
            where = f"wrote {args.out} (encrypted, 0600) and {args.out_cert} for key {identity.hex()[:16]}"
        print(
            f"{where}. "
            f"Now destroy the plain key: 'shred -u {args.key}', and every copy of it (backups, other "
            "machines; on SSDs and copy-on-write file systems shred cannot reach every block)"
        )
        return 0
    if args.command == "run":
        with private_umask():  # the state it keeps: files 0600, directories 0700, whatever the umask
            cfg = AgentSettings.load(args)
            setup_logging(cfg.log_level, cfg.log_format)
            return asyncio.run(_run(cfg, args.passphrase_file))
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
        print(render_pending(box.pending(), args.output, time.time(), box.command("approve|deny")))
        return 0
    box.decide(args.request_id, approved=args.command == "approve", reason=args.reason)
    print(f"request {args.request_id}: {'approved' if args.command == 'approve' else 'denied'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run_main("custodian-agent", lambda: _body(args), args.debug)


if __name__ == "__main__":
    raise SystemExit(main())
