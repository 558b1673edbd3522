"""Configuration: a TOML file, then the environment, then flags; validated with errors that name the
field and say how to set it.

Each process declares its settings once as :class:`Setting` rows (TOML key ``section.name``, flag,
environment variable, type, default) and turns the merged values into its own frozen dataclass,
whose ``__post_init__`` checks meaning (ranges, formats). A wrong value's error names the field
where the person can fix it: ``node.listen (SDQUORUM_NODE_LISTEN): ... : use host:port``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from sdquorum.errors import UsageError

__all__ = ["Setting", "add_flags", "check_host_port", "load_settings", "log_settings"]


class Setting(NamedTuple):
    """One setting, an immutable row. A NamedTuple rather than a frozen dataclass: every command
    line imports this module before it parses its flags, and dataclasses imports inspect (about
    12 ms of each start-up; bench/startup.py)."""

    key: str  # "section.name" in the TOML file
    flag: str  # "--name"
    env: str  # "SDQUORUM_..."
    kind: type = str  # str, int, float, Path, bool, list (list of str)
    default: Any = None
    required: bool = False
    help: str = ""

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    def where(self) -> str:
        return f"{self.key} ({self.flag}, ${self.env} or [{self.key.split('.')[0]}] in the config file)"


def add_flags(
    parser: argparse.ArgumentParser,
    settings: Sequence[Setting],
    *,
    after_subcommand: bool = False,
    skip: Collection[str] = (),
) -> None:
    """One flag per setting; flags default to None so an unset flag never hides the file or env.

    ``after_subcommand``: the same flags on a subcommand's parser, defaults suppressed so that a flag
    given before the subcommand is not reset; ``skip``: flags the subcommand declares itself."""
    default = argparse.SUPPRESS if after_subcommand else None
    if "--config" not in skip:
        parser.add_argument(
            "--config",
            type=Path,
            default=default,
            help="TOML configuration file (flags and environment override it)",
        )
    for s in settings:
        if s.flag in skip:
            continue
        if s.kind is bool:
            parser.add_argument(
                s.flag, dest=s.dest, action="store_const", const=True, default=default, help=s.help
            )
        elif s.kind is list:
            parser.add_argument(s.flag, dest=s.dest, action="append", default=default, help=s.help)
        else:
            parser.add_argument(s.flag, dest=s.dest, default=default, help=s.help + _default_note(s))


def _default_note(s: Setting) -> str:
    return f" (default: {s.default})" if s.default not in (None, "", []) else ""


def load_settings(
    settings: Sequence[Setting],
    args: argparse.Namespace,
    environ: Mapping[str, str] | None = None,
    *,
    file_may_hold: Sequence[Setting] = (),
) -> dict[str, Any]:
    """Merge file < environment < flags; convert and check each value; return {dest: value}.
    ``file_may_hold``: further settings the file may set without an error (a command that needs
    only some of a process's settings reads the same file as the process)."""
    environ = os.environ if environ is None else environ
    file_values = _read_toml(getattr(args, "config", None))
    known = {s.key for s in (*settings, *file_may_hold)}
    unknown = sorted(k for k in file_values if k not in known)
    if unknown:
        raise UsageError(
            f"unknown setting {unknown[0]} in {args.config}: check its spelling (see the sample in deploy/config/)"
        )
    out: dict[str, Any] = {}
    for s in settings:
        raw: Any = s.default
        source = "default"
        if s.key in file_values:
            raw, source = file_values[s.key], "file"
        if s.env in environ:
            raw, source = environ[s.env], "env"
        flag_value = getattr(args, s.dest, None)
        if flag_value is not None:
            raw, source = flag_value, "flag"
        if raw is None or (raw == "" and s.required):
            if s.required:
                raise UsageError(f"{s.key} is not set: give {s.where()}")
            out[s.dest] = None
            continue
        out[s.dest] = _convert(s, raw, source)
    return out


def _convert(s: Setting, raw: Any, source: str) -> Any:
    try:
        if s.kind is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError("use true or false")
        if s.kind is int:
            if isinstance(raw, bool):
                raise ValueError("use a whole number")
            return int(raw)
        if s.kind is float:
            if isinstance(raw, bool):
                raise ValueError("use a number")
            return float(raw)
        if s.kind is Path:
            return Path(str(raw)).expanduser()
        if s.kind is list:
            if isinstance(raw, list):
                return [str(v) for v in raw]
            return [v.strip() for v in str(raw).split(",") if v.strip()] if source == "env" else [str(raw)]
        if not isinstance(raw, (str, int, float)):
            raise ValueError("use a string")
        return str(raw)
    except ValueError as e:
        raise UsageError(f"{s.key} = {raw!r} is not valid: {e}; set {s.where()}") from e


def _read_toml(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    import tomllib  # only when a file is given: every command line starts without it

    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError as e:
        raise UsageError(f"the config file {path} does not exist: check --config") from e
    except OSError as e:
        raise UsageError(f"cannot read the config file {path}: {e.strerror}") from e
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"the config file {path} is not valid TOML: {e}") from e
    flat: dict[str, Any] = {}
    for section, values in data.items():
        if not isinstance(values, dict):
            raise UsageError(f"{section} in {path} must be a [section] table (see deploy/config/)")
        for name, value in values.items():
            flat[f"{section}.{name}"] = value
    return flat


def log_settings(env_prefix: str) -> list[Setting]:
    """``[observability]`` log_level and log_format, as every long-running process reads them."""
    return [
        Setting(
            "observability.log_level",
            "--log-level",
            env_prefix + "LOG_LEVEL",
            default="INFO",
            help="DEBUG, INFO, WARNING or ERROR",
        ),
        Setting(
            "observability.log_format",
            "--log-format",
            env_prefix + "LOG_FORMAT",
            default="text",
            help="text or json (one event a line)",
        ),
    ]


def check_host_port(value: str, what: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"{what} = {value!r} is not host:port: use for example 127.0.0.1:7443")
    return value
