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
from collections.abc import Callable

from custodian_agent.commands import FORMAT, keys, requests, respond, serve
from sdquorum import __version__
from sdquorum_rpc.cli import run_main
from sdquorum_rpc.observability import setup_logging

__all__ = ["main"]

# The docstring above is the tool's --help text. This module only builds the parser from the
# command groups of custodian_agent.commands (one module each) and dispatches to their handlers.
# The global --debug is accepted before and after the command; 'run' sets up logging from its own
# settings, every other command logs warnings only; the completion script and python-pkcs11 are
# imported only by the commands that use them.

HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "keygen": keys.keygen_command,
    "import-key": keys.import_key_command,
    "run": serve.run_command,
    "respond": respond.respond_command,
    "health": serve.health_command,
    "domains": requests.domains_command,
    "pending": requests.pending_command,
    "approve": requests.decide_command,
    "deny": requests.decide_command,
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="custodian-agent", description=__doc__.split("\n")[0], epilog=__doc__, formatter_class=FORMAT
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    keys.add_parsers(sub)  # keygen, import-key
    serve.add_run_parser(sub, __doc__)
    respond.add_parser(sub)
    serve.add_health_parser(sub)
    requests.add_parsers(sub)  # domains, pending, approve, deny
    c = sub.add_parser(
        "completion",
        help="print the shell completion script (bash or zsh)",
        epilog="examples:\n  source <(custodian-agent completion bash)\n"
        "  echo 'source <(custodian-agent completion zsh)' >> ~/.zshrc",
        formatter_class=FORMAT,
    )
    c.add_argument("shell", choices=["bash", "zsh"])
    for command in sub.choices.values():  # the global flag after the command as well
        command.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
        )
    return p


def _body(args: argparse.Namespace) -> int:
    if args.command != "run":  # run sets up logging from its own settings
        setup_logging("WARNING")
    if args.command == "completion":
        from sdquorum_rpc.completion import completion_script

        print(completion_script(_parser(), args.shell), end="")
        return 0
    return HANDLERS[args.command](args)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run_main("custodian-agent", lambda: _body(args), args.debug)


if __name__ == "__main__":
    raise SystemExit(main())
