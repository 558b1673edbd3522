"""sdctl's conventions (issue 14, section 4; the anchors are az, vault and kubectl): global flags after
the subcommand, ``--output json`` everywhere (review included), confirmation of destructive commands,
one exit code per meaning, shell completion, and help examples one per line."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from cli_support import Cluster, SdctlRunner, assert_one_line_error, certs_of, running_cluster

from sdctl.cli import _parser, main
from sdquorum.keys import SoftwareWrappingKey


def _leaves(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
    for action in subs:
        for name, sub in action.choices.items():
            yield from _leaves(sub, (*path, name))


LEAVES = [path for path, _ in _leaves(_parser())]
ALL = sorted({p[:i] for p in LEAVES for i in range(1, len(p) + 1)})


@pytest.fixture
async def node(pki_dir: Path, tmp_path: Path) -> AsyncIterator[Cluster]:
    async with running_cluster(pki_dir, tmp_path / "node-a") as c:
        yield c


# ----------------------------------------------------------------------------- the parser for argv


def _help(parser: argparse.ArgumentParser, words: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        parser.parse_args([*words, "--help"])
    return out.getvalue()


@pytest.mark.parametrize("command", [(), *ALL], ids=lambda c: " ".join(c) or "sdctl")
def test_the_parser_built_for_argv_is_the_whole_parser_along_its_path(command: tuple[str, ...]) -> None:
    """main() builds whole only the commands argv names (sdctl --help stays fast): along any path
    the help, and so every argument, is the whole parser's."""
    words = list(command)
    assert _help(_parser(words), words) == _help(_parser(), words)


def test_the_parser_built_for_argv_parses_as_the_whole_parser() -> None:
    words = ["--output", "json", "keys", "create", "k1", "--type", "aes256-gcm", "--node", "n:1"]
    lazy, whole = vars(_parser(words).parse_args(words)), vars(_parser().parse_args(words))
    assert lazy == whole and whole["node"] == "n:1"


# ----------------------------------------------------------------------------- global flags after


@pytest.mark.parametrize("command", LEAVES, ids=" ".join)
def test_every_command_takes_the_global_flags_after_itself(command: tuple[str, ...]) -> None:
    """``sdctl keys list --output json``: each leaf's parser knows --node, --output, --key, --ca,
    --config and --debug (and --cert unless the command has a --cert of its own)."""
    parser = dict(_leaves(_parser()))[command]
    known = {s for a in parser._actions for s in a.option_strings}
    assert {"--node", "--output", "--key", "--ca", "--config", "--debug"} <= known


def test_a_global_flag_is_read_before_or_after_the_subcommand_and_not_reset_by_it() -> None:
    p = _parser()
    after = p.parse_args(["status", "--node", "h:1", "--output", "json"])
    assert (after.node, after.output) == ("h:1", "json")
    before = p.parse_args(["--node", "h:2", "--output", "json", "keys", "list"])
    assert (before.node, before.output) == ("h:2", "json")
    both = p.parse_args(["--output", "json", "keys", "list", "--node", "h:3"])
    assert (both.node, both.output) == ("h:3", "json")
    # a command's own --cert wins after it; the mTLS certificate is then given before it
    d = p.parse_args(["--cert", "me.pem", "download", "--cert", "a.pem", "--quorum", "2", "--out", "x"])
    assert (d.cert, d.custodian_certs) == ("me.pem", [Path("a.pem")])


async def test_output_json_after_the_subcommand_against_a_node(
    node: Cluster, sdctl: SdctlRunner, wrap_certs: list[Path], tmp_path: Path
) -> None:
    r = await sdctl("status", "--output", "json", node=node.target)
    assert r.code == 0 and json.loads(r.out[0])["state"] == "PROVISIONED"
    argv = ["download", *(a for c in wrap_certs[:5] for a in ("--cert", str(c)))]
    assert (
        await sdctl(*argv, "--quorum", "3", "--out", str(tmp_path / "sd.json"), node=node.target)
    ).code == 0
    keys = await sdctl("keys", "list", "--output", "json", node=node.target)
    assert (keys.code, json.loads(keys.out[0])) == (0, [])
    # review honours --output json: one JSON document on standard output, nothing else
    rv = await sdctl("review", "--output", "json", node=node.target)
    assert rv.code == 0, rv.err
    doc = json.loads("\n".join(rv.out))
    assert "findings" in doc
    out = tmp_path / "review.md"
    written = await sdctl("review", "--format", "md", "--out", str(out), "--output", "json", node=node.target)
    assert written.code == 0 and json.loads(written.out[0])["out"] == str(out)


# ----------------------------------------------------------------------------- destructive commands


@pytest.mark.parametrize(
    "argv",
    [
        ("keys", "delete", "k"),
        ("keys", "purge", "k"),
        ("restore", "BACKUP"),
        ("compromise", "--reason", "lost"),
    ],
    ids=" ".join,
)
async def test_destructive_commands_need_yes_without_a_terminal(
    argv: tuple[str, ...], sdctl: SdctlRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not on a terminal and no --yes: one line saying so, exit 2, and the node is never dialled
    (the address below has nothing listening: a dial would be exit 5)."""
    backup = tmp_path / "keys.backup"
    backup.write_bytes(b"x")
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    r = await sdctl(*(str(backup) if a == "BACKUP" else a for a in argv), node="127.0.0.1:1")
    line = assert_one_line_error(r)
    assert r.code == 2 and "--yes" in line


async def test_a_malformed_answer_file_is_named_and_exits_2(sdctl: SdctlRunner, tmp_path: Path) -> None:
    bad = tmp_path / "alice-x1.answer.json"
    bad.write_text('{"format": "something else"}')
    r = await sdctl("upload-answer", str(bad), node="127.0.0.1:1")
    line = assert_one_line_error(r)
    assert r.code == 2 and str(bad) in line


def test_the_exit_code_table_documents_130() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "| 130 |" in readme
    import sdctl.cli

    assert "130 interrupted" in (sdctl.cli.__doc__ or "")


# ----------------------------------------------------------------------------- help and completion


@pytest.mark.parametrize("command", ALL, ids=" ".join)
def test_every_help_lists_examples_one_per_line(
    command: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        main([*command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "\nexamples:\n" in out, out
    block = out.split("\nexamples:\n", 1)[1].rstrip("\n").splitlines()
    assert block, out
    for line in block:
        assert line.startswith("  ") and not line.startswith("   "), line
        assert line.strip().split()[0] in ("sdctl", "source", "echo"), line
        assert line.count("sdctl ") <= 1 or "&&" in line or "<(" in line, line


def _complete(script: str, *words: str) -> list[str]:
    """What the bash completion offers for the command line ``words`` (the last one being typed)."""
    fn = "_" + words[0].replace("-", "_") + "_complete"
    probe = (
        f"{script}\nCOMP_WORDS=({' '.join(repr(w) for w in words)}); COMP_CWORD={len(words) - 1}\n"
        f"{fn}\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n"
    )
    out = subprocess.run(
        ["bash", "--norc", "-c", probe], capture_output=True, text=True, check=True, timeout=30
    )
    return sorted(out.stdout.split())


def test_the_bash_completion_completes_subcommands_and_flags() -> None:
    lines: list[str] = []
    assert main(["completion", "bash"], out=lines.append) == 0
    script = "\n".join(lines)
    assert _complete(script, "sdctl", "ke") == ["keys"]
    assert _complete(script, "sdctl", "keys", "de") == ["delete", "deleted"]
    assert _complete(script, "sdctl", "--node", "h:1", "keys", "p") == ["purge"]
    assert "--yes" in _complete(script, "sdctl", "keys", "delete", "--")
    assert _complete(script, "sdctl", "review", "--format", "h") == ["html"]
    assert _complete(script, "sdctl", "audit", "") == ["export", "verify"]
    zsh: list[str] = []
    assert main(["completion", "zsh"], out=zsh.append) == 0
    zsh_lines = "\n".join(zsh).splitlines()
    assert "autoload -U +X bashcompinit && bashcompinit" in zsh_lines
    assert "complete -o default -F _sdctl_complete sdctl" in zsh_lines


# ----------------------------------------------------------------------------- a tampered SD file


def _flip(b64: str) -> str:
    """One character of a base64url string changed (to another base64url character)."""
    i = len(b64) // 2
    return b64[:i] + ("A" if b64[i] != "A" else "B") + b64[i + 1 :]


TAMPERS = {
    "format marker": lambda o: o.update(format=o["format"] + "x"),
    "format marker replaced": lambda o: o.update(format="another-format/9"),
    "version": lambda o: o.update(version=o["version"] + 1),
    "header": lambda o: o.update(header=_flip(o["header"])),
    "header signature": lambda o: o.update(header_signature=_flip(o["header_signature"])),
    "payload nonce": lambda o: o["payload"].update(nonce=_flip(o["payload"]["nonce"])),
    "payload ciphertext": lambda o: o["payload"].update(ciphertext=_flip(o["payload"]["ciphertext"])),
    "payload algorithm": lambda o: o["payload"].update(alg="A128GCM"),
    "a field removed": lambda o: o.pop("header_signature"),
}


async def test_a_tampered_sd_file_exits_4_whichever_part_was_altered(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey], sdctl: SdctlRunner
) -> None:
    async with running_cluster(pki_dir, tmp_path / "node-a") as a:
        sd = await a.download(certs_of(wrapping_keys[:5]), quorum=3)
    codes: dict[str, int] = {}
    async with running_cluster(pki_dir, tmp_path / "node-b", node_id="node-b") as b:
        for part, edit in TAMPERS.items():
            obj = json.loads(sd)
            edit(obj)
            path = tmp_path / f"sd-{part.replace(' ', '-')}.json"
            path.write_text(json.dumps(obj))
            r = await sdctl("recover", "--sd-file", str(path), "--reason", "t", node=b.target)
            assert_one_line_error(r)
            codes[part] = r.code
    assert codes == dict.fromkeys(TAMPERS, 4)


def test_the_agent_has_the_same_completion(capsys: pytest.CaptureFixture[str]) -> None:
    from custodian_agent.cli import main as agent_main

    assert agent_main(["completion", "bash"]) == 0
    script = capsys.readouterr().out
    assert _complete(script, "custodian-agent", "pen") == ["pending"]
    assert _complete(script, "custodian-agent", "run", "--appr") == ["--approval"]
    assert _complete(script, "custodian-agent", "pending", "--output", "") == ["json", "text"]


def test_the_node_has_the_same_completion(capsys: pytest.CaptureFixture[str]) -> None:
    from hsm_node.cli import main as node_main

    assert node_main(["completion", "bash"]) == 0
    script = capsys.readouterr().out
    assert _complete(script, "hsm-node", "r") == ["run"]
    assert "--listen" in _complete(script, "hsm-node", "run", "--li")


@pytest.mark.parametrize(("typed", "code"), [("no", 2), ("yes", 5)])
async def test_on_a_terminal_restore_asks_and_does_nothing_unless_confirmed(
    typed: str, code: int, sdctl: SdctlRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Typed 'no': nothing is done (exit 2, the node never dialled); typed 'yes': it goes on to the
    node (here an address with nothing listening: exit 5)."""
    backup = tmp_path / "keys.backup"
    backup.write_bytes(b"x")
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    asked: list[str] = []
    monkeypatch.setattr("builtins.input", lambda prompt: asked.append(prompt) or typed)
    r = await sdctl("restore", str(backup), node="127.0.0.1:1")
    assert r.code == code and len(asked) == 1 and "replaced" in asked[0]
    if typed == "no":
        assert "not confirmed" in assert_one_line_error(r)


def test_the_readme_command_reference_lists_every_command() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    missing = [" ".join(c) for c in LEAVES if f"| `sdctl {' '.join(c)}` |" not in readme]
    assert missing == []


def test_the_agent_takes_debug_after_its_command_too() -> None:
    from custodian_agent.cli import _parser as agent_parser

    p = agent_parser()
    assert p.parse_args(["pending", "--debug"]).debug is True
    assert p.parse_args(["--debug", "pending"]).debug is True
    assert p.parse_args(["pending"]).debug is False


async def test_an_answer_file_the_node_refuses_is_named(
    node: Cluster, sdctl: SdctlRunner, tmp_path: Path
) -> None:
    from sdquorum.offline import OfflineAnswer

    ok = tmp_path / "alice-x1.answer.json"
    ok.write_bytes(
        OfflineAnswer("0123456789abcdef", "s", "recovery", b"", denied=True, reason="no").to_bytes()
    )
    r = await sdctl("upload-answer", str(ok), node=node.target)
    line = assert_one_line_error(r)
    assert r.code not in (0, 1) and str(ok) in line, line
