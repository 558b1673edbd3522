"""Static checks of the deployment files in deploy/ (imported as ``deploy_checks``).

There is no container engine or cluster in the test environment, so the files are parsed, not
run: YAML with ``yaml.safe_load_all``, systemd units and the Dockerfile with the small parsers
below. Every check returns a list of problems (empty: fine), each naming the file part at fault,
so that each can be shown to fail on a small bad input.

What is checked:

* commands: every program a file runs is one of the console scripts (or a plain shell utility),
  every subcommand exists, every ``--flag`` is spelled exactly as in that command's argparse parser
  (``_parser()`` of ``hsm_node.cli``, ``custodian_agent.cli``, ``sdctl.cli``) and the whole command
  line parses;
* configuration paths: ``--config PATH`` is a mounted sample from deploy/config/ (a compose
  config, a Kubernetes ConfigMap equal to the sample, or /etc/sdquorum/<sample> under systemd); the
  sample is loaded with the workload's environment and flags through the real loaders, and every
  file or directory it names lies in a mount of that workload (writable where the process writes);
* ports: the node's listen port is the container port, the Service's target, the NetworkPolicy
  port and the port agents and probes dial;
* the Dockerfile: multi-stage, runtime stages run as a non-root user, no key or certificate
  COPYed, entrypoints are console scripts;
* systemd units: the hardening directives, the stop timeout above the node's drain time, the
  passphrase only through EnvironmentFile=/LoadCredential=.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, NoReturn
from unittest import mock

from custodian_agent.cli import _parser as agent_parser
from custodian_agent.config import AgentSettings
from hsm_node.cli import _parser as node_parser
from hsm_node.config import NodeSettings
from sdctl.cli import _parser as sdctl_parser
from sdctl.config import SETTINGS as SDCTL_SETTINGS
from sdquorum.errors import SdquorumError
from sdquorum_rpc.config import load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CONFIG_DIR = DEPLOY / "config"

CONSOLE_SCRIPTS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "hsm-node": node_parser,
    "custodian-agent": agent_parser,
    "sdctl": sdctl_parser,
}
# Programs a deployment file may run besides the console scripts (shell scripts, init containers).
SHELL_UTILITIES = frozenset(
    {"sh", "set", "umask", "cd", "mkdir", "install", "cp", "rm", "touch", "echo", "printf", "exit"}
    | {"test", "[", "true", "false", "return", "local", "export", "chmod", "cat", "ls"}
)
SHELL_KEYWORDS = frozenset({"if", "then", "else", "elif", "do", "while", "until", "!", "exec", "{"})
SHELL_ENDS = frozenset({"fi", "done", "}", "esac"})
SECRET_SUFFIXES = (".key", ".pem", ".crt", ".der", ".p12", ".pfx", ".jks", ".passphrase")
SECRET_DIRS = frozenset({"pki", "secrets", ".ssh", "demo-run"})
SECRET_ENV = frozenset({"SDQUORUM_PASSPHRASE", "SDQUORUM_PKCS11_PIN", "SDQUORUM_NODE_SEALING_KEY"})


# ---------------------------------------------------------------------------------------- commands


class _ParseError(Exception):
    pass


def _raise(self: argparse.ArgumentParser, message: str) -> NoReturn:
    raise _ParseError(f"{self.prog}: {message}")


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def check_console_command(argv: Sequence[str], where: str) -> list[str]:
    """Problems of one console-script command line (argv[0] is hsm-node, custodian-agent or sdctl)."""
    prog = PurePosixPath(argv[0]).name
    if prog not in CONSOLE_SCRIPTS:
        return [f"{where}: {argv[0]} is not a console script ({', '.join(sorted(CONSOLE_SCRIPTS))})"]
    problems: list[str] = []
    parser = CONSOLE_SCRIPTS[prog]()
    level, args, i = parser, list(argv[1:]), 0
    while i < len(args):
        token = args[i]
        if token.startswith("-") and token != "-":
            name = token.split("=", 1)[0]
            action = level._option_string_actions.get(name)
            if action is None:
                problems.append(f"{where}: {level.prog} has no flag {name}")
            elif action.nargs != 0 and "=" not in token:
                i += 1  # its value
        else:
            subs = _subcommands(level)
            if subs:
                if token not in subs:
                    problems.append(f"{where}: {level.prog} has no subcommand {token!r} ({', '.join(subs)})")
                    return problems
                level = subs[token]
        i += 1
    if problems:
        return problems
    with mock.patch.object(argparse.ArgumentParser, "error", _raise):
        try:
            parser.parse_args(args)
        except _ParseError as e:
            problems.append(f"{where}: {' '.join(argv)}: {e}")
    return problems


def parse_console_command(argv: Sequence[str]) -> argparse.Namespace:
    """The Namespace of a command line already found valid by :func:`check_console_command`."""
    return CONSOLE_SCRIPTS[PurePosixPath(argv[0]).name]().parse_args(list(argv[1:]))


def shell_commands(script: str) -> list[list[str]]:
    """The simple commands of a small POSIX shell script, each as argv (keywords stripped).

    Enough for the scripts in deploy/: lines, ``;``/``&&``/``||``/``|`` lists, if/for/functions,
    ``NAME=value`` prefixes, ``exec``; redirections are dropped. Words keep their $variables.
    """
    script = script.replace("\\\n", " ")
    functions = set(re.findall(r"^\s*([A-Za-z_][\w-]*)\s*\(\)", script, re.M))
    out: list[list[str]] = []
    for line in script.splitlines():
        line = re.sub(r"\s\d*[<>]{1,2}&?\d*(?=[\s;&|)]|$)", " ", line)
        lexer = shlex.shlex(_strip_comment(line), posix=True, punctuation_chars=";&|()")
        lexer.whitespace_split = True
        lexer.commenters = ""  # a # inside a word (${x#y}) is no comment
        segment: list[str] = []
        for token in [*lexer, ";"]:
            if token and set(token) <= set(";&|()"):
                out.extend(_simple_command(segment, functions))
                segment = []
            else:
                segment.append(token)
    return out


def _strip_comment(line: str) -> str:
    """``line`` without a trailing shell comment (a # that starts a word, outside quotes)."""
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def _simple_command(words: list[str], functions: set[str]) -> list[list[str]]:
    while words and (words[0] in SHELL_KEYWORDS or re.fullmatch(r"[A-Za-z_]\w*=.*", words[0])):
        words = words[1:]
    if not words or words[0] in SHELL_ENDS or words[0] in functions or words[0] in ("for", "case"):
        return []
    return [words]


def check_command(argv: Sequence[str], where: str) -> list[str]:
    """Problems of any command a deployment file runs: console scripts in full, shells recursively."""
    if not argv:
        return [f"{where}: empty command"]
    prog = PurePosixPath(argv[0]).name
    if prog in CONSOLE_SCRIPTS:
        return check_console_command(argv, where)
    if prog == "sh":
        script = _shell_script(argv)
        if script is None:
            return [f"{where}: sh without -c SCRIPT"]
        problems: list[str] = []
        for cmd in shell_commands(script):
            problems += check_command(cmd, where)
        return problems
    if prog in SHELL_UTILITIES:
        return []
    return [f"{where}: {argv[0]} is neither a console script nor a known shell utility"]


def _shell_script(argv: Sequence[str]) -> str | None:
    for i, a in enumerate(argv[1:], 1):
        if a.startswith("-") and "c" in a[1:] and i + 1 < len(argv):
            return argv[i + 1]
    return None


def console_commands(argv: Sequence[str]) -> list[list[str]]:
    """The console-script commands in a command line (itself, or those inside ``sh -c``)."""
    prog = PurePosixPath(argv[0]).name if argv else ""
    if prog in CONSOLE_SCRIPTS:
        return [list(argv)]
    if prog == "sh" and (script := _shell_script(argv)) is not None:
        return [c for c in shell_commands(script) if PurePosixPath(c[0]).name in CONSOLE_SCRIPTS]
    return []


# ---------------------------------------------------------------------------------------- compose


_INTERPOLATION = re.compile(r"\$\$|\$\{([A-Za-z_]\w*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_]\w*)")


def compose_interpolate(text: str) -> str:
    """Compose's variable substitution with nothing set: ``${X:-d}`` gives d, ``$$`` gives $."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        if m.group(2) in (":-", "-"):
            return m.group(3)
        return f"<{m.group(1) or m.group(4)}>"

    return _INTERPOLATION.sub(sub, text)


@dataclass
class Mount:
    target: str
    kind: str  # volume, bind, config, secret, tmpfs, emptyDir, pvc, configMap
    read_only: bool
    sample: Path | None = None  # the deploy/config sample this file mount carries
    text: str | None = None  # its text (Kubernetes ConfigMaps)
    files: dict[str, str] = field(default_factory=dict)  # ConfigMap directory mounts: name -> text
    subpath: str | None = None  # compose volume subpath, Kubernetes subPath


@dataclass
class Workload:
    """One process environment: a compose service, a Kubernetes container, a systemd unit."""

    file: str
    name: str
    commands: list[tuple[str, list[str]]]  # (where, argv)
    env: dict[str, str]
    mounts: list[Mount]
    systemd: Mapping[str, list[tuple[str, str]]] | None = None
    instance: str = ""

    def where(self, what: str) -> str:
        return f"{self.file} {self.name} {what}"


def _argv(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(value)
    return [str(v) for v in value]


def _compose_env(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if isinstance(value, list):
        pairs = [str(v).split("=", 1) for v in value]
        return {p[0]: compose_interpolate(p[1]) if len(p) > 1 else "" for p in pairs}
    return {str(k): compose_interpolate(str(v)) for k, v in value.items() if v is not None}


def compose_workloads(
    doc: Mapping[str, Any], compose_file: Path, images: Mapping[str, Stage]
) -> list[Workload]:
    """One Workload per service; ``images`` maps a build target to its Dockerfile stage."""
    out = []
    configs = doc.get("configs") or {}
    secrets = doc.get("secrets") or {}
    for name, svc in (doc.get("services") or {}).items():
        target = (svc.get("build") or {}).get("target")
        stage = images.get(target) if target else None
        entry = _argv(svc["entrypoint"]) if "entrypoint" in svc else (stage.entrypoint if stage else [])
        cmd = _argv(svc["command"]) if "command" in svc else (stage.cmd if stage else [])
        commands: list[tuple[str, list[str]]] = []
        main = [compose_interpolate(a) for a in [*entry, *cmd]]
        if main:
            commands.append(("command", main))
        test = (svc.get("healthcheck") or {}).get("test")
        if isinstance(test, list) and test and test[0] == "CMD":
            commands.append(("healthcheck", [compose_interpolate(a) for a in test[1:]]))
        elif isinstance(test, list) and test and test[0] == "CMD-SHELL":
            commands.append(("healthcheck", ["sh", "-c", compose_interpolate(test[1])]))
        elif isinstance(test, str):
            commands.append(("healthcheck", ["sh", "-c", compose_interpolate(test)]))
        mounts = []
        for v in svc.get("volumes") or []:
            if isinstance(v, str):
                parts = v.split(":")
                kind = "bind" if parts[0].startswith((".", "/")) else "volume"
                mounts.append(Mount(parts[1], kind, len(parts) > 2 and "ro" in parts[2].split(",")))
            else:
                sub = (v.get("volume") or {}).get("subpath")
                mounts.append(
                    Mount(v["target"], v.get("type", "volume"), bool(v.get("read_only")), subpath=sub)
                )
        for c in svc.get("configs") or []:
            source = c if isinstance(c, str) else c["source"]
            tgt = f"/{source}" if isinstance(c, str) else c.get("target", f"/{source}")
            file = (configs.get(source) or {}).get("file")
            sample = (compose_file.parent / file).resolve() if file else None
            mounts.append(Mount(tgt, "config", True, sample=sample))
        for s in svc.get("secrets") or []:
            source = s if isinstance(s, str) else s["source"]
            tgt = s if isinstance(s, str) else s.get("target", source)
            tgt = tgt if tgt.startswith("/") else f"/run/secrets/{tgt}"
            if source in secrets:
                mounts.append(Mount(tgt, "secret", True))
        for t in svc.get("tmpfs") or []:
            mounts.append(Mount(str(t).split(":")[0], "tmpfs", False))
        out.append(Workload(compose_file.name, name, commands, _compose_env(svc.get("environment")), mounts))
    return out


# ---------------------------------------------------------------------------------------- kubernetes

POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod", "ReplicaSet"}


def pod_spec(doc: Mapping[str, Any]) -> Mapping[str, Any] | None:
    kind = doc.get("kind")
    if kind == "Pod":
        return doc.get("spec") or {}
    if kind == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    if kind in POD_KINDS:
        return doc["spec"]["template"]["spec"]
    return None


def k8s_workloads(docs: Sequence[Mapping[str, Any]], file: str) -> list[Workload]:
    """One Workload per container (init containers too) of every pod template in ``docs``."""
    config_maps = {
        d["metadata"]["name"]: d.get("data") or {} for d in docs if d and d.get("kind") == "ConfigMap"
    }
    out = []
    for doc in docs:
        spec = pod_spec(doc) if doc else None
        if spec is None:
            continue
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        claims = {c["metadata"]["name"] for c in (doc.get("spec") or {}).get("volumeClaimTemplates") or []}
        for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
            name = f"{doc['kind']}/{doc['metadata']['name']}/{c['name']}"
            commands = []
            argv = [*_argv(c.get("command")), *_argv(c.get("args"))]
            commands.append(("command", argv))
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                ex = ((c.get(probe) or {}).get("exec") or {}).get("command")
                if ex:
                    commands.append((probe, _argv(ex)))
            env = {e["name"]: str(e["value"]) for e in c.get("env") or [] if "value" in e}
            mounts = []
            for m in c.get("volumeMounts") or []:
                vol = volumes.get(m["name"])
                ro = bool(m.get("readOnly"))
                sub = m.get("subPath")
                if vol is None:
                    kind = "pvc" if m["name"] in claims else "missing"
                    mounts.append(Mount(m["mountPath"], kind, ro, subpath=sub))
                elif "configMap" in vol:
                    data = config_maps.get(vol["configMap"]["name"], {})
                    if sub:
                        mounts.append(
                            Mount(m["mountPath"], "configMap", True, text=data.get(sub), subpath=sub)
                        )
                    else:
                        mounts.append(Mount(m["mountPath"], "configMap", True, files=dict(data)))
                elif "secret" in vol:
                    mounts.append(Mount(m["mountPath"], "secret", True, subpath=sub))
                elif "emptyDir" in vol:
                    mounts.append(Mount(m["mountPath"], "emptyDir", ro, subpath=sub))
                elif "persistentVolumeClaim" in vol:
                    mounts.append(Mount(m["mountPath"], "pvc", ro, subpath=sub))
                else:
                    mounts.append(
                        Mount(m["mountPath"], next(iter(set(vol) - {"name"}), "?"), ro, subpath=sub)
                    )
            out.append(Workload(file, name, commands, env, mounts))
    return out


# ---------------------------------------------------------------------------------------- systemd


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """A systemd unit as {section: [(key, value), ...]} in file order (keys may repeat)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    logical = re.sub(r"\\\n", " ", text)
    for raw in logical.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if m := re.fullmatch(r"\[([^\]]+)\]", line):
            current = sections.setdefault(m.group(1), [])
        elif "=" in line and current is not None:
            key, value = line.split("=", 1)
            current.append((key.strip(), value.strip()))
        else:
            raise ValueError(f"not a unit file line: {raw!r}")
    return sections


def unit_values(unit: Mapping[str, list[tuple[str, str]]], key: str, section: str = "Service") -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def systemd_workload(text: str, file: str, instance: str = "alice") -> Workload:
    unit = parse_unit(text)

    def expand(s: str) -> str:
        return s.replace("%i", instance).replace("%I", instance)

    commands = []
    for key in ("ExecStartPre", "ExecStart", "ExecStartPost", "ExecReload", "ExecStop"):
        for v in unit_values(unit, key):
            commands.append((key, shlex.split(expand(v).lstrip("-@:+!"))))
    env: dict[str, str] = {}
    for v in unit_values(unit, "Environment"):
        for pair in shlex.split(expand(v)):
            k, _, val = pair.partition("=")
            env[k] = val
    return Workload(file, file, commands, env, [], systemd=unit, instance=instance)


# ---------------------------------------------------------------------------------------- Dockerfile


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]]  # (INSTRUCTION, rest of the line)
    parent: Stage | None = None

    def _last(self, instruction: str) -> str | None:
        for ins, rest in reversed(self.instructions):
            if ins == instruction:
                return rest
        return self.parent._last(instruction) if self.parent else None

    @property
    def user(self) -> str | None:
        return self._last("USER")

    @property
    def entrypoint(self) -> list[str]:
        return _exec_form(self._last("ENTRYPOINT"))

    @property
    def cmd(self) -> list[str]:
        return _exec_form(self._last("CMD"))


def _exec_form(rest: str | None) -> list[str]:
    if rest is None:
        return []
    rest = rest.strip()
    if rest.startswith("["):
        return [str(a) for a in json.loads(rest)]
    return ["/bin/sh", "-c", rest]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages of a Dockerfile."""
    lines: list[str] = []
    buffer = ""
    for raw in text.splitlines():
        if raw.lstrip().startswith("#"):
            continue  # comments (also inside a continued instruction) and parser directives
        if raw.rstrip().endswith("\\"):
            buffer += raw.rstrip()[:-1] + " "
            continue
        lines.append(buffer + raw)
        buffer = ""
    if buffer:
        lines.append(buffer)
    args: dict[str, str] = {}
    stages: list[Stage] = []
    by_name: dict[str, Stage] = {}
    for line in lines:
        if not line.strip():
            continue
        ins, _, rest = line.strip().partition(" ")
        ins = ins.upper()
        rest = rest.strip()
        if ins == "FROM":
            words = [w for w in rest.split() if not w.startswith("--")]
            base = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), words[0])
            name = words[2] if len(words) > 2 and words[1].upper() == "AS" else str(len(stages))
            stage = Stage(name, base, [], by_name.get(base))
            stages.append(stage)
            by_name[name] = stage
        elif ins == "ARG" and not stages:
            k, _, v = rest.partition("=")
            args[k.strip()] = v.strip()
        elif stages:
            stages[-1].instructions.append((ins, rest))
    return args, stages


def dockerfile_problems(text: str, where: str = "Dockerfile") -> list[str]:
    problems: list[str] = []
    _, stages = parse_dockerfile(text)
    if len(stages) < 2:
        problems.append(f"{where}: not a multi-stage build")
    for stage in stages:
        for ins, rest in stage.instructions:
            if ins in ("COPY", "ADD"):
                words = [w for w in shlex.split(rest) if not w.startswith("--")]
                if rest.lstrip().startswith("["):
                    words = json.loads(rest)
                for src in words[:-1]:
                    if _is_secret_path(src):
                        problems.append(
                            f"{where}: stage {stage.name}: {ins} {src} copies a key or certificate"
                        )
            if ins in ("ENV", "ARG"):
                for name in re.findall(r"([A-Za-z_]\w*)(?==|\s|$)", rest):
                    if name in SECRET_ENV:
                        problems.append(
                            f"{where}: stage {stage.name}: {ins} {name} bakes a secret into the image"
                        )
        if stage.entrypoint or stage.cmd:
            user = (stage.user or "").split(":")[0]
            if user in ("", "root", "0"):
                problems.append(f"{where}: stage {stage.name} runs as root (give USER a non-root uid)")
            if stage.entrypoint:
                problems += check_command([*stage.entrypoint, *stage.cmd], f"{where}: stage {stage.name}")
    return problems


def _is_secret_path(src: str) -> bool:
    path = PurePosixPath(src.rstrip("/") or "/")
    if src.strip() in (".", "./", "*", "/"):
        return True  # the whole build context: whatever keys lie around would be copied
    return path.name.endswith(SECRET_SUFFIXES) or any(p in SECRET_DIRS for p in path.parts)


# ---------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class PathUse:
    setting: str
    path: PurePosixPath
    writable: bool
    directory: bool


def load_workload_settings(
    argv: Sequence[str], config: Path | None, env: Mapping[str, str]
) -> tuple[str, Any, list[PathUse]]:
    """Load a run command's settings as the process would, with ``config`` standing in for --config.

    Returns (program, settings, the paths it will open).
    """
    args = parse_console_command(argv)
    args.config = config
    prog = PurePosixPath(argv[0]).name
    if prog == "hsm-node":
        s = NodeSettings.load(args, environ=env)
        uses = [
            PathUse("node.data_dir", PurePosixPath(s.data_dir), True, True),
            PathUse("node.sealing_key_file", PurePosixPath(s.sealing_key_path).parent, True, True),
            PathUse("tls.cert", PurePosixPath(s.tls_cert), False, False),
            PathUse("tls.key", PurePosixPath(s.tls_key), False, False),
            PathUse("tls.ca", PurePosixPath(s.ca), False, False),
            PathUse("attestation.cert", PurePosixPath(s.attestation_cert), False, False),
            PathUse("attestation.key", PurePosixPath(s.attestation_key), False, False),
        ]
        if s.port_file:
            uses.append(PathUse("node.port_file", PurePosixPath(s.port_file).parent, True, True))
        return prog, s, uses
    if prog == "custodian-agent":
        a = AgentSettings.load(args, environ=env)
        uses = [
            PathUse("agent.state_dir", PurePosixPath(a.state_dir), True, True),
            PathUse("tls.cert", PurePosixPath(a.tls_cert), False, False),
            PathUse("tls.key", PurePosixPath(a.tls_key), False, False),
            PathUse("tls.ca", PurePosixPath(a.ca), False, False),
            PathUse("attestation.root", PurePosixPath(a.attestation_root), False, False),
            PathUse("wrapping.cert", PurePosixPath(a.wrapping_cert), False, False),
        ]
        if a.wrapping_key is not None:
            uses.append(PathUse("wrapping.key", PurePosixPath(a.wrapping_key), False, False))
        if getattr(a, "pkcs11_module", None) is not None:
            uses.append(PathUse("wrapping.pkcs11_module", PurePosixPath(a.pkcs11_module), False, False))
        return prog, a, uses
    values = load_settings(SDCTL_SETTINGS, args, environ=env)
    uses = [
        PathUse(f"tls.{k}", PurePosixPath(values[k]), False, False)
        for k in ("cert", "key", "ca")
        if values[k]
    ]
    return prog, values, uses


def _under(path: PurePosixPath, target: str) -> bool:
    t = PurePosixPath(target)
    return path == t or t in path.parents


def _mount_for(w: Workload, path: PurePosixPath) -> Mount | None:
    best = None
    for m in w.mounts:
        if _under(path, m.target) and (best is None or len(m.target) > len(best.target)):
            best = m
    return best


def _health_state_dir(w: Workload, args: argparse.Namespace) -> PurePosixPath | None:
    """The state dir ``custodian-agent health`` reads: --state-dir, else $SDQUORUM_AGENT_STATE_DIR,
    else its --config's agent.state_dir (the loaders' precedence)."""
    if args.state_dir is not None:
        return PurePosixPath(args.state_dir)
    if "SDQUORUM_AGENT_STATE_DIR" in w.env:
        return PurePosixPath(w.env["SDQUORUM_AGENT_STATE_DIR"])
    if args.config is None:
        return None
    sample, problems = _sample_of(w, str(args.config))
    if problems or sample is None:
        return None
    value = tomllib.loads(sample.read_text()).get("agent", {}).get("state_dir")
    return PurePosixPath(value) if isinstance(value, str) else None


def _sample_of(w: Workload, config: str) -> tuple[Path | None, list[str]]:
    """The deploy/config sample that --config CONFIG is in this workload, or problems."""
    where = w.where(f"--config {config}")
    if w.systemd is not None:
        if not config.startswith("/etc/sdquorum/") or not config.endswith(".toml"):
            return None, [f"{where}: give a configuration file in /etc/sdquorum/"]
        name = re.sub(rf"-{re.escape(w.instance)}(?=\.toml$)", "", PurePosixPath(config).name)
        sample = CONFIG_DIR / name
        if not sample.is_file():
            return None, [f"{where}: no sample deploy/config/{name} for it"]
        return sample, []
    path = PurePosixPath(config)
    for m in w.mounts:
        if m.kind == "configMap" and m.files and path.parent == PurePosixPath(m.target):
            text = m.files.get(path.name)
            return _sample_from_text(where, path.name, text)
        if PurePosixPath(m.target) == path:
            if m.kind == "config":
                if m.sample is None or not m.sample.is_file() or m.sample.parent != CONFIG_DIR:
                    return None, [f"{where}: mounted from {m.sample}, not a sample in deploy/config/"]
                return m.sample, []
            if m.kind == "configMap":
                return _sample_from_text(where, m.subpath or path.name, m.text)
            return None, [f"{where}: mounted from a {m.kind}, not from a deploy/config sample"]
    return None, [f"{where}: not mounted in {w.name} (no config, ConfigMap or volume at that path)"]


def _sample_from_text(where: str, key: str, text: str | None) -> tuple[Path | None, list[str]]:
    sample = CONFIG_DIR / key
    if text is None:
        return None, [f"{where}: the ConfigMap has no key {key}"]
    if not sample.is_file():
        return None, [f"{where}: no sample deploy/config/{key}"]
    if text != sample.read_text():
        return None, [
            f"{where}: the ConfigMap's {key} differs from deploy/config/{key}: run deploy/k8s/sync_configmaps.py"
        ]
    return sample, []


def _rw_paths(w: Workload) -> list[PurePosixPath]:
    assert w.systemd is not None
    out = []
    for v in unit_values(w.systemd, "ReadWritePaths"):
        out += [PurePosixPath(p.lstrip("-+").replace("%i", w.instance)) for p in v.split()]
    return out


@dataclass
class Loaded:
    """A run command of a workload with its settings as the process would load them."""

    workload: Workload
    where: str
    argv: list[str]
    program: str
    settings: Any
    uses: list[PathUse]


def workload_problems(w: Workload, loaded: list[Loaded] | None = None) -> list[str]:
    """Commands, flags, configuration paths and the paths the configuration names."""
    problems: list[str] = []
    for what, argv in w.commands:
        problems += check_command(argv, w.where(what))
    if problems:
        return problems
    mine: list[Loaded] = []
    for what, argv in w.commands:
        for cmd in console_commands(argv):
            problems += _paths_of_command(w, what, cmd, mine)
    state_dirs = {PurePosixPath(x.settings.state_dir) for x in mine if x.program == "custodian-agent"}
    for what, argv in w.commands:
        for cmd in console_commands(argv):
            args = parse_console_command(cmd)
            is_health = PurePosixPath(cmd[0]).name == "custodian-agent" and args.command == "health"
            health_dir = _health_state_dir(w, args) if is_health else None
            if is_health and state_dirs and health_dir not in state_dirs:
                problems.append(
                    f"{w.where(what)}: health's state dir {health_dir} is not the agent's "
                    f"state_dir {', '.join(map(str, state_dirs))}: the probe would never see a heartbeat"
                )
    if loaded is not None:
        loaded.extend(mine)
    return problems


def _paths_of_command(w: Workload, what: str, cmd: list[str], loaded: list[Loaded]) -> list[str]:
    args = parse_console_command(cmd)
    prog = PurePosixPath(cmd[0]).name
    where = w.where(what)
    problems: list[str] = []
    config_flag = getattr(args, "config", None)
    env = dict(w.env)
    if prog == "sdctl" and config_flag is None and "SDCTL_CONFIG" in env:
        config_flag = Path(env["SDCTL_CONFIG"])
    runs = (prog in ("hsm-node", "custodian-agent") and getattr(args, "command", "") == "run") or (
        prog == "sdctl" and getattr(args, "command", "") != "pki"
    )
    sample = None
    if config_flag is not None:
        sample, found = _sample_of(w, str(config_flag))
        problems += found
        if found:
            return problems
    elif prog in ("hsm-node", "custodian-agent") and runs:
        problems.append(f"{where}: {prog} run without --config: use a sample from deploy/config/")
        return problems
    if not runs:
        if prog == "custodian-agent" and getattr(args, "command", "") == "health":
            health_dir = _health_state_dir(w, args)
            if health_dir is None:
                return [
                    *problems,
                    f"{where}: health names no state dir (--state-dir, or agent.state_dir in --config)",
                ]
            problems += _check_path(w, where, PathUse("--state-dir", health_dir, False, True))
        return problems
    try:
        program, settings, uses = load_workload_settings(cmd, sample, env)
    except SdquorumError as e:
        return [f"{where}: the settings do not load: {e}"]
    for use in uses:
        problems += _check_path(w, where, use)
    loaded.append(Loaded(w, where, cmd, program, settings, uses))
    return problems


def _check_path(w: Workload, where: str, use: PathUse) -> list[str]:
    if w.systemd is not None:
        if use.writable and not any(_under(use.path, str(p)) for p in _rw_paths(w)):
            return [f"{where}: {use.setting} = {use.path} is not under ReadWritePaths="]
        return []
    m = _mount_for(w, use.path)
    if m is None:
        return [f"{where}: {use.setting} = {use.path} is in no mounted volume, secret or config of {w.name}"]
    if use.writable and m.read_only:
        return [f"{where}: {use.setting} = {use.path} must be writable but {m.target} is mounted read-only"]
    return []


# ---------------------------------------------------------------------------------------- ports


def port_of(host_port: str) -> int:
    return int(host_port.rpartition(":")[2])


def k8s_port_problems(docs: Sequence[Mapping[str, Any]], loaded: Sequence[Loaded]) -> list[str]:
    """Node listen port == containerPort == Service targetPort == NetworkPolicy ports == dialled port;
    the metrics port (observability.metrics_listen), when set, is a container port too and the only
    other port a NetworkPolicy may admit to the node."""
    problems: list[str] = []
    nodes = [x for x in loaded if x.program == "hsm-node"]
    if len(nodes) != 1:
        return [f"k8s: expected one hsm-node run, found {len(nodes)}"]
    node = nodes[0]
    listen = port_of(node.settings.listen)
    pod: Mapping[str, Any] | None = None
    pod_labels: dict[str, str] = {}
    for d in docs:
        spec = pod_spec(d) if d else None
        for c in (spec or {}).get("containers") or []:
            if node.workload.name == f"{d['kind']}/{d['metadata']['name']}/{c['name']}":
                pod, pod_labels = c, d["spec"]["template"]["metadata"]["labels"]
    assert pod is not None
    named = {p.get("name"): p["containerPort"] for p in pod.get("ports") or []}
    if listen not in named.values():
        problems.append(f"k8s: node listens on {listen} but its container ports are {sorted(named.values())}")
    metrics = port_of(node.settings.metrics_listen) if node.settings.metrics_listen else None
    if metrics is not None and metrics not in named.values():
        problems.append(
            f"k8s: node serves metrics on {metrics} but its container ports are {sorted(named.values())}"
        )
    admitted = {listen} if metrics is None else {listen, metrics}
    services = [
        d
        for d in docs
        if d and d.get("kind") == "Service" and _selects(d["spec"].get("selector") or {}, pod_labels)
    ]
    if not services:
        problems.append("k8s: no Service selects the node")
    service_ports: dict[str, int] = {}
    for svc in services:
        for p in svc["spec"]["ports"]:
            target = p.get("targetPort", p["port"])
            target = named.get(target, target) if isinstance(target, str) else target
            if target != listen:
                problems.append(
                    f"k8s: Service {svc['metadata']['name']} targets port {target}, the node listens on {listen}"
                )
            service_ports[svc["metadata"]["name"]] = p["port"]
    for d in docs:
        if not d or d.get("kind") != "NetworkPolicy":
            continue
        name = d["metadata"]["name"]
        if (
            _selects(d["spec"]["podSelector"].get("matchLabels") or {}, pod_labels)
            and d["spec"]["podSelector"]
        ):
            for rule in d["spec"].get("ingress") or []:
                for p in rule.get("ports") or []:
                    port = named.get(p["port"], p["port"]) if isinstance(p["port"], str) else p["port"]
                    if port not in admitted:
                        problems.append(
                            f"k8s: NetworkPolicy {name} admits port {port} to the node, which listens on "
                            f"{sorted(admitted)}"
                        )
        for rule in d["spec"].get("egress") or []:
            if any(
                _selects((t.get("podSelector") or {}).get("matchLabels") or {}, pod_labels)
                and t.get("podSelector")
                for t in rule.get("to") or []
            ):
                for p in rule.get("ports") or []:
                    port = named.get(p["port"], p["port"]) if isinstance(p["port"], str) else p["port"]
                    if port != listen:
                        problems.append(
                            f"k8s: NetworkPolicy {name} lets pods reach the node on {port}, it listens on {listen}"
                        )
    for x in loaded:
        if x.program == "custodian-agent":
            host, port = x.settings.node.rpartition(":")[::2]
            if host.split(".")[0] not in service_ports or int(port) != service_ports[host.split(".")[0]]:
                problems.append(
                    f"{x.where}: agent.node = {x.settings.node} is not a Service of the node ({service_ports})"
                )
        if x.program == "sdctl" and x.workload is node.workload and port_of(x.settings["node"]) != listen:
            problems.append(f"{x.where}: the probe dials {x.settings['node']}, the node listens on {listen}")
    return problems


def _selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def compose_port_problems(doc: Mapping[str, Any], loaded: Sequence[Loaded]) -> list[str]:
    problems: list[str] = []
    nodes = [x for x in loaded if x.program == "hsm-node"]
    if len(nodes) != 1:
        return [f"compose: expected one hsm-node run, found {len(nodes)}"]
    node = nodes[0]
    listen = port_of(node.settings.listen)
    svc = doc["services"][node.workload.name]
    exposed = {int(str(p).split("/")[0]) for p in svc.get("expose") or []}
    exposed |= {
        int(str(p).rsplit(":", 1)[-1].split("/")[0])
        for p in svc.get("ports") or []
        if isinstance(p, (str, int))
    }
    exposed |= {int(p["target"]) for p in svc.get("ports") or [] if isinstance(p, dict)}
    if listen not in exposed:
        problems.append(f"compose: node listens on {listen} but exposes {sorted(exposed)}")
    names = {node.workload.name}
    for net in (svc.get("networks") or {}).values() if isinstance(svc.get("networks"), dict) else []:
        names |= set((net or {}).get("aliases") or [])
    for x in loaded:
        dial = (
            x.settings.node
            if x.program == "custodian-agent"
            else x.settings["node"]
            if x.program == "sdctl"
            else None
        )
        if dial is None:
            continue
        host, _, port = dial.rpartition(":")
        local = x.workload is node.workload and host in ("127.0.0.1", "localhost")
        if int(port) != listen or not (local or host in names):
            problems.append(f"{x.where}: dials {dial}, but the node is {sorted(names)} on port {listen}")
    return problems


# ---------------------------------------------------------------------------------------- systemd checks

TRUE = {"yes", "true", "1", "on"}
REQUIRED_EXACT = {
    "User": "sdquorum",
    "ProtectSystem": "strict",
    "KillSignal": "SIGTERM",
}
REQUIRED_TRUE = ("NoNewPrivileges", "PrivateTmp", "ProtectHome")


def seconds(text: str) -> float:
    """A systemd time span (``30``, ``30s``, ``1min 30s``, ``500ms``) in seconds."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "": 1}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text):
        total += float(number) * units[unit]
    return total


def unit_problems(w: Workload, drain_seconds: float | None, writable: Sequence[PurePosixPath]) -> list[str]:
    """The hardening of one unit.

    ``drain_seconds`` is the node's drain time (None for agents); ``writable`` the directories the
    process writes (from its loaded settings): ReadWritePaths= may open those and nothing else.
    """
    assert w.systemd is not None
    unit = w.systemd
    problems: list[str] = []

    def last(key: str) -> str | None:
        values = unit_values(unit, key)
        return values[-1] if values else None

    for key, want in REQUIRED_EXACT.items():
        if last(key) != want:
            problems.append(f"{w.file}: {key}={want} is missing (found {last(key)!r})")
    if (last("DynamicUser") or "").lower() not in ("no", "false", "0", "off"):
        problems.append(f"{w.file}: DynamicUser=no is missing")
    for key in REQUIRED_TRUE:
        if (last(key) or "").lower() not in TRUE:
            problems.append(f"{w.file}: {key}=yes is missing")
    caps = unit_values(unit, "CapabilityBoundingSet")
    if not caps or caps[-1] != "":
        problems.append(f"{w.file}: CapabilityBoundingSet= (empty: no capabilities) is missing")
    families = set((last("RestrictAddressFamilies") or "").split())
    if families != {"AF_INET", "AF_INET6", "AF_UNIX"}:
        problems.append(
            f"{w.file}: RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX is missing (found {sorted(families)})"
        )
    filters = unit_values(unit, "SystemCallFilter")
    if not filters or "@system-service" not in filters[0].split():
        problems.append(f"{w.file}: SystemCallFilter=@system-service is missing")
    rw = _rw_paths(w)
    if not rw:
        problems.append(f"{w.file}: ReadWritePaths= is missing")
    for p in rw:
        if not str(p).startswith("/var/lib/") or not any(_under(x, str(p)) for x in writable):
            problems.append(f"{w.file}: ReadWritePaths={p} opens more than the data/state directory")
    stop = last("TimeoutStopSec")
    if stop is None:
        problems.append(f"{w.file}: TimeoutStopSec= is missing")
    elif drain_seconds is not None and seconds(stop) <= drain_seconds:
        problems.append(
            f"{w.file}: TimeoutStopSec={stop} is not above the node's drain time ({drain_seconds:g} s)"
        )
    starts = unit_values(unit, "ExecStart")
    if len(starts) != 1 or "--config /etc/sdquorum/" not in starts[0]:
        problems.append(f"{w.file}: ExecStart= must run one command with --config /etc/sdquorum/...toml")
    for v in unit_values(unit, "Environment"):
        if any(name in v for name in SECRET_ENV):
            problems.append(
                f"{w.file}: Environment= holds a secret inline: use EnvironmentFile= or LoadCredential="
            )
    return problems


def agent_unit_problems(w: Workload) -> list[str]:
    assert w.systemd is not None
    if not unit_values(w.systemd, "EnvironmentFile") and not unit_values(w.systemd, "LoadCredential"):
        return [f"{w.file}: the passphrase needs EnvironmentFile= or LoadCredential="]
    return []


# ---------------------------------------------------------------------------------------- misc


def fenced_commands(markdown: str) -> list[tuple[int, list[str]]]:
    """Console-script commands in the ```sh blocks of a markdown file: (line number, argv).

    A console script's name anywhere in a simple command, except as a flag's value
    (``--target sdctl``), starts its command line: the words before it are a wrapper such as
    ``sudo -u sdquorum`` or ``kubectl exec POD --``.
    """
    out: list[tuple[int, list[str]]] = []
    in_block = False
    pending = ""
    start = 0
    for n, line in enumerate(markdown.splitlines(), 1):
        if line.startswith("```"):
            in_block = line.strip() in ("```sh", "```bash", "```console", "```shell")
            pending = ""
            continue
        if not in_block:
            continue
        text = line.strip()
        if not pending:
            start = n
        if text.endswith("\\"):
            pending += text[:-1] + " "
            continue
        text, pending = pending + text, ""
        text = re.sub(r"^\$\s+", "", text)
        for cmd in shell_commands(text):
            # also behind a wrapper: sudo -u sdquorum ..., kubectl exec ... --, docker compose exec ...
            for k, word in enumerate(cmd):
                if PurePosixPath(word).name in CONSOLE_SCRIPTS and not (
                    k and cmd[k - 1].startswith("-") and cmd[k - 1] != "--"
                ):
                    out.append((start, cmd[k:]))
                    break
    return out
