"""The command table: every ``sdctl`` command is a :class:`Command` row declared in one module per
command group, and :func:`build_parser` turns the rows into argparse parsers.

Invariants:

* A group module imports at top level only this module, ``sdctl.ctl`` and the lazily loaded wire
  messages: building the parser (``sdctl --help``) loads no grpc, protobuf or cryptography. A handler
  imports what it needs when it runs.
* Every leaf command has a handler and at least one example; the examples are printed one per line
  under ``examples:`` in its ``--help`` (a group's help shows each subcommand's first example) (tests/cli/test_cli_conventions.py walks every command).
* The global flags (``--node``, ``--output``, ``--cert``, ``--key``, ``--ca``, ``--config``,
  ``--debug``) are accepted before and after the subcommand. After it, a flag the command declares
  itself wins (``download --cert`` is a custodian's certificate); give the mTLS certificate before
  the subcommand or in ``SDCTL_CERT`` then.
* ``destructive=True`` commands ask for confirmation on a terminal and need ``--yes`` otherwise.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from sdctl.ctl import Ctl

__all__ = ["GROUPS", "Arg", "Command", "Handler", "all_commands", "build_parser", "roster_certs"]

# One module per command group, in the order 'sdctl --help' lists them.
GROUPS = (
    "status",
    "activation",
    "recovery",
    "session",
    "ceremonies",
    "backup",
    "keys",
    "custody",
    "pool",
    "review",
    "audit",
    "azure",
    "pki",
    "completion",
)

Handler = Callable[["Ctl"], "int | Coroutine[Any, Any, int]"]


class Arg(NamedTuple):
    """One argument: argparse's option strings (or a positional name) and its keywords."""

    names: tuple[str, ...]
    kw: dict[str, Any] = {}  # noqa: RUF012 - a NamedTuple default, never mutated


def arg(*names: str, **kw: Any) -> Arg:
    return Arg(names, kw)


class Command(NamedTuple):
    """One command or command group. A group has ``sub`` and no ``run``; a leaf has ``run``."""

    name: str
    help: str
    examples: tuple[str, ...] = ()
    args: tuple[Arg, ...] = ()
    run: Handler | None = None
    sub: tuple[Command, ...] = ()
    description: str = ""
    destructive: bool = False
    exclusive: tuple[Arg, ...] = ()  # a required mutually exclusive group


def all_commands() -> list[Command]:
    import importlib

    out: list[Command] = []
    for group in GROUPS:
        out.extend(importlib.import_module(f"sdctl.commands.{group}").COMMANDS)
    return out


YES = arg("--yes", "-y", action="store_true", help="do not ask (required when not on a terminal)")


def roster_certs(help: str) -> Arg:
    """``--cert`` given once per custodian of a roster (download, rotate): ``args.custodian_certs``."""
    return arg("--cert", dest="custodian_certs", action="append", type=Path, required=True, help=help)


def build_parser(
    prog: str,
    description: str,
    epilog: str,
    add_globals: Callable[[argparse.ArgumentParser, set[str] | None], None],
    commands: list[Command],
    argv: Sequence[str] | None = None,
) -> argparse.ArgumentParser:
    """The parser for ``commands``. ``add_globals(parser, after)`` adds the global flags: once to the
    top parser (``after=None``: real defaults) and to every leaf (``after``: the leaf's own option
    strings, which the globals skip; defaults suppressed, so a flag given before the subcommand is
    not reset by the leaf).

    ``argv``: the parser for parsing these words only. A command whose name is not one of them
    is added with its name and help alone (argparse can select a command only by a word of
    ``argv``, so every command it can select is whole, and ``--help`` lists them all): ``sdctl
    --help`` and ``sdctl status`` do not build the ~450 arguments of every other command. None:
    every command whole (shell completion, the tests that walk the commands)."""
    fmt = argparse.RawDescriptionHelpFormatter
    top = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog, formatter_class=fmt)
    add_globals(top, None)
    _add_commands(top, commands, prog, add_globals, None if argv is None else frozenset(argv))
    return top


def _add_commands(
    parent: argparse.ArgumentParser,
    commands: tuple[Command, ...] | list[Command],
    path: str,
    add_globals: Callable[[argparse.ArgumentParser, set[str] | None], None],
    words: frozenset[str] | None,
) -> None:
    depth = path.count(" ")
    dest = "command" if depth == 0 else f"{path.split(' ', 1)[1].replace(' ', '_').replace('-', '_')}_command"
    sub = parent.add_subparsers(dest=dest, required=True, metavar="COMMAND")
    for c in commands:
        if words is not None and c.name not in words:  # never selected by these words: listed only
            sub.add_parser(c.name, help=c.help, add_help=False)
            continue
        examples = c.examples or tuple(e for leaf in c.sub for e in leaf.examples[:1])
        epilog = "examples:\n" + "\n".join(f"  {e}" for e in examples) if examples else None
        p = sub.add_parser(
            c.name,
            help=c.help,
            description=c.description or c.help,
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if c.sub:
            _add_commands(p, c.sub, f"{path} {c.name}", add_globals, words)
            continue
        own = {n for a in c.args for n in a.names}
        for a in (*c.args, *((YES,) if c.destructive else ())):
            p.add_argument(*a.names, **a.kw)
        if c.exclusive:
            g = p.add_mutually_exclusive_group(required=True)
            for a in c.exclusive:
                g.add_argument(*a.names, **a.kw)
        add_globals(p, own)
        p.set_defaults(run=c.run, destructive=c.destructive)
