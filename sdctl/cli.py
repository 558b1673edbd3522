"""``sdctl``: the operator's command line for an sdquorum HSM node.

Connection settings: --config FILE (or SDCTL_CONFIG; sample deploy/config/sdctl.toml), then
SDCTL_NODE, SDCTL_CERT, SDCTL_KEY, SDCTL_CA, SDCTL_OUTPUT, then the flags --node, --cert, --key,
--ca, --output (before or after the command); 'pool allow|remove' also take etcd's root pair
(--etcd, --etcd-cert, --etcd-key, --etcd-ca; SDCTL_ETCD*; [etcd]). Exit codes: 0 ok, 1 unexpected,
2 bad usage or input, 3 wrong node state (also: a ceremony failed), 4 a verification failed (also: signature invalid),
5 network or TLS (while a ceremony is watched: the node stayed unreachable through every reconnect;
the session may go on at the node: 'sdctl session status'), 6 permission denied, 130 interrupted
(Ctrl-C: a ceremony goes on at the node; the line printed says how to attach to it or cancel it).

Examples::

    sdctl pki init --out pki --node-id node-a --custodians alice,bob,carol,dave,erin
    sdctl --node 127.0.0.1:7443 status
    sdctl status --output json
    sdctl download --cert alice.wrap.pem --cert bob.wrap.pem --cert carol.wrap.pem --quorum 2 --out sd.json
    sdctl recover --sd-file sd.json --reason "datacentre A lost"
    sdctl session status
    sdctl session attach
    sdctl session cancel --reason "wrong SD file"
    sdctl backup --out keys.backup && sdctl restore keys.backup --yes
    sdctl keys create payments --type aes256-gcm
    sdctl keys delete payments --yes && sdctl keys deleted && sdctl keys recover payments
    source <(sdctl completion bash)

Layout: each command group is one module in ``sdctl/commands/`` declaring its commands as table
rows (name, help, examples, arguments, handler); ``sdctl.commands.build_parser`` builds the parser
from them, and handlers talk to the node through the typed ``sdquorum_rpc.admin.AdminClient``.

Start-up: importing this module loads argparse and small settings modules only. Each command
imports what it needs when it runs (grpc and the wire messages for node commands, the review or
the Azure format for theirs), and nothing imports the agent, the node or prometheus_client
(tests/cli/test_cli_imports.py; ``python -m bench --only startup`` measures it).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from sdctl.commands import all_commands, build_parser
from sdctl.config import ETCD_ROOT_SETTINGS, SETTINGS
from sdquorum import __version__
from sdquorum.errors import UsageError
from sdquorum_rpc.cli import EXIT_CODES, run_main
from sdquorum_rpc.config import add_flags, load_settings

if TYPE_CHECKING:
    from sdctl.ctl import Running

__all__ = ["main"]


def _globals(p: argparse.ArgumentParser, after: set[str] | None) -> None:
    """The global flags: on the top parser (``after`` None) and again after every subcommand."""
    add_flags(p, SETTINGS, after_subcommand=after is not None, skip=after or ())
    if after is None:
        p.add_argument("--debug", action="store_true", help="show tracebacks")
        p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    elif "--debug" not in after:
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")


def _parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The whole parser, or (``argv``) one whole only where these words can lead (build_parser)."""
    assert __doc__ is not None
    return build_parser("sdctl", __doc__.split("\n")[0], __doc__, _globals, all_commands(), argv)


def main(argv: list[str] | None = None, out: Callable[[str], None] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    args = _parser(words).parse_args(words)

    def body() -> int:
        from sdctl.ctl import Ctl

        if args.config is None and os.environ.get("SDCTL_CONFIG"):
            args.config = Path(os.environ["SDCTL_CONFIG"])
        for dest, value in load_settings(SETTINGS, args, file_may_hold=ETCD_ROOT_SETTINGS).items():
            setattr(args, dest, value)
        if args.output not in ("text", "json"):
            raise UsageError(f"sdctl.output = {args.output!r}: use text or json")
        ctl = Ctl(args, out or (lambda s: print(s, flush=True)))
        result = args.run(ctl)
        if isinstance(result, int):
            return result
        import asyncio

        try:
            return int(asyncio.run(result))
        except KeyboardInterrupt:
            if ctl.running is None:
                raise  # nothing runs at the node: run_main's plain "interrupted" (exit 130)
            print(_interrupted_line(args.node, ctl.running), file=sys.stderr, flush=True)
            return EXIT_CODES["interrupted"]

    return run_main("sdctl", body, args.debug)


def _interrupted_line(node: str, running: Running) -> str:
    """The one line Ctrl-C prints while a ceremony runs: it goes on, and how to attach or cancel."""
    from sdctl.ctl import when

    cmd = f"sdctl --node {node}"
    return (
        f"sdctl: interrupted: {running.kind} session {running.session_id} goes on at the node until "
        f"{when(running.expires_at)}; watch it with '{cmd} session attach {running.session_id}' or cancel "
        f"it with '{cmd} session cancel {running.session_id} --reason \"...\"'"
    )


if __name__ == "__main__":
    raise SystemExit(main())
