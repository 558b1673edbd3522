"""The sample configuration files in deploy/config/ load through the real settings loaders.

Each sample lists exactly the keys of its settings table (``hsm_node/config.py``,
``custodian_agent/config.py``, ``sdctl/config.py``): required keys set, optional ones set or
commented out, nothing else. The precedence (file < environment < flag) and the errors a person
sees for an unknown key or a bad value are checked on copies of the samples.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from custodian_agent.config import SETTINGS as AGENT_SETTINGS
from custodian_agent.config import AgentSettings
from hsm_node.config import SETTINGS as NODE_SETTINGS
from hsm_node.config import NodeSettings
from sdctl.config import ETCD_ROOT_SETTINGS
from sdctl.config import SETTINGS as SDCTL_SETTINGS
from sdquorum.errors import UsageError
from sdquorum_rpc.config import Setting, load_settings

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "deploy" / "config"
NODE, AGENT, SDCTL = CONFIG / "node.toml", CONFIG / "agent.toml", CONFIG / "sdctl.toml"
SAMPLES = {
    "node.toml": NODE_SETTINGS,
    "agent.toml": AGENT_SETTINGS,
    "sdctl.toml": [*SDCTL_SETTINGS, *ETCD_ROOT_SETTINGS],  # [etcd]: pool allow|remove only
}


def args_for(settings: Sequence[Setting], config: Path | None, **flags: Any) -> argparse.Namespace:
    """The Namespace argparse would give: --config and every setting's dest, unset flags None."""
    ns = argparse.Namespace(config=config, **{s.dest: None for s in settings})
    for dest, value in flags.items():
        assert hasattr(ns, dest), f"no flag with dest {dest}"
        setattr(ns, dest, value)
    return ns


def load_node(config: Path, environ: dict[str, str] | None = None, **flags: Any) -> NodeSettings:
    return NodeSettings.load(args_for(NODE_SETTINGS, config, **flags), environ=environ or {})


def load_agent(config: Path, environ: dict[str, str] | None = None, **flags: Any) -> AgentSettings:
    return AgentSettings.load(args_for(AGENT_SETTINGS, config, **flags), environ=environ or {})


def load_sdctl(config: Path, environ: dict[str, str] | None = None, **flags: Any) -> dict[str, Any]:
    return load_settings(SDCTL_SETTINGS, args_for(SDCTL_SETTINGS, config, **flags), environ=environ or {})


def edited(tmp_path: Path, sample: Path, section: str, line: str) -> Path:
    """A copy of ``sample`` with ``line`` added at the top of ``[section]``."""
    text = sample.read_text()
    header = f"[{section}]\n"
    assert header in text, f"{sample.name} has no [{section}]"
    out = tmp_path / sample.name
    out.write_text(text.replace(header, header + line + "\n", 1))
    return out


def replaced(tmp_path: Path, sample: Path, key_line: str, new_line: str) -> Path:
    text = sample.read_text()
    pattern = re.compile(rf"^{re.escape(key_line)}\s*=.*$", re.M)
    assert len(pattern.findall(text)) == 1, f"{key_line} is not set exactly once in {sample.name}"
    out = tmp_path / sample.name
    out.write_text(pattern.sub(new_line, text))
    return out


def sample_entries(text: str) -> list[tuple[str, bool, str]]:
    """(``section.name``, set?, the comment lines just above it) for each key of a TOML sample.

    A key is set by ``name = ...`` and commented out by ``# name = ...``; any other ``#`` line is
    documentation and belongs to the key below it.
    """
    out: list[tuple[str, bool, str]] = []
    section, comment = "", ""
    for line in text.splitlines():
        if m := re.match(r"^\[([a-z0-9_]+)\]\s*$", line):
            section, comment = m.group(1), ""
        elif m := re.match(r"^(#\s?)?([a-z0-9_]+)\s*=\s*\S", line):
            out.append((f"{section}.{m.group(2)}", m.group(1) is None, comment))
            comment = ""
        elif line.startswith("#"):
            comment += line + "\n"
        else:
            comment = ""
    return out


def sample_keys(text: str) -> tuple[set[str], set[str]]:
    """Keys set and keys commented out in a TOML sample."""
    entries = sample_entries(text)
    return {k for k, on, _ in entries if on}, {k for k, on, _ in entries if not on}


# ------------------------------------------------------------------------------------- the samples


def test_the_node_sample_validates() -> None:
    s = load_node(NODE)
    assert s.node_id == "node-a"
    assert s.listen == "0.0.0.0:7443"
    assert s.data_dir == Path("/var/lib/sdquorum/data")
    assert s.sealing_key_path == Path("/var/lib/sdquorum/sealing/node.sealing-key")
    assert s.sealing_key_path.parent != s.data_dir, "the sealing key must live outside the data dir"
    assert s.tls_cert == Path("/etc/sdquorum/tls/node.pem")
    assert s.attestation_key == Path("/etc/sdquorum/attestation/attestation.key")


def test_the_agent_sample_validates() -> None:
    s = load_agent(AGENT)
    assert s.approval == "manual"
    assert s.node == "sdquorum-node:7443"
    assert s.state_dir == Path("/var/lib/sdquorum-agent")
    assert s.allow_domain == [] and s.pin_domain_key == []
    assert s.wrapping_key == Path("/etc/sdquorum/wrapping/wrap.key")


def test_the_sdctl_sample_validates() -> None:
    s = load_sdctl(SDCTL)
    assert s["node"] == "sdquorum-node:7443"
    assert s["output"] == "text"
    assert s["cert"] == Path("/etc/sdquorum/tls/admin.pem")


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_every_key_of_the_settings_table_is_in_the_sample(name: str) -> None:
    """Every setting appears, set or commented out; required ones are set; nothing else is there."""
    settings = SAMPLES[name]
    active, commented = sample_keys((CONFIG / name).read_text())
    known = {s.key for s in settings}
    assert active <= known, f"{name} sets keys the loader does not know: {sorted(active - known)}"
    assert commented <= known, f"{name} mentions unknown keys: {sorted(commented - known)}"
    missing = known - active - commented
    assert not missing, f"{name} lacks {sorted(missing)}"
    required_unset = {s.key for s in settings if s.required} - active
    assert not required_unset, f"{name} leaves required keys unset: {sorted(required_unset)}"
    assert not active & commented, f"{name} both sets and comments out {sorted(active & commented)}"


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_each_setting_is_documented_beside_it(name: str) -> None:
    """The comment above each key names its environment variable and its flag."""
    comments = {key: comment for key, _, comment in sample_entries((CONFIG / name).read_text())}
    for s in SAMPLES[name]:
        comment = comments[s.key]
        assert s.env in comment, f"the comment above {s.key} in {name} does not name ${s.env}"
        assert s.flag in comment, f"the comment above {s.key} in {name} does not name {s.flag}"


def test_the_key_table_check_can_fail() -> None:
    text = "[node]\n# the id\nid = 'a'\n# listen = '1:2'\n\n[tls]\n# Flag: --tls-cert.\ncert = 'x'\n"
    active, commented = sample_keys(text)
    assert active == {"node.id", "tls.cert"}
    assert commented == {"node.listen"}
    comments = {key: comment for key, _, comment in sample_entries(text)}
    assert comments["node.id"] == "# the id\n"
    assert comments["node.listen"] == ""  # undocumented: the documentation test would fail
    assert "--tls-cert" in comments["tls.cert"]


# ------------------------------------------------------------------------------------- precedence


def test_environment_overrides_the_file_and_a_flag_overrides_the_environment() -> None:
    env = {"SDQUORUM_NODE_LISTEN": "127.0.0.1:9000", "SDQUORUM_NODE_SESSION_SECONDS": "120"}
    assert load_node(NODE, env).listen == "127.0.0.1:9000"
    assert load_node(NODE, env).session_seconds == 120
    flagged = load_node(NODE, env, listen="127.0.0.1:9100", session_seconds="30")
    assert (flagged.listen, flagged.session_seconds) == ("127.0.0.1:9100", 30)

    env = {"SDQUORUM_AGENT_APPROVAL": "auto-drills", "SDQUORUM_AGENT_ALLOW_DOMAINS": "aa, bb"}
    assert load_agent(AGENT, env).approval == "auto-drills"
    assert load_agent(AGENT, env).allow_domain == ["aa", "bb"]
    assert load_agent(AGENT, env, approval="manual", allow_domain=["cc"]).approval == "manual"
    assert load_agent(AGENT, env, allow_domain=["cc"]).allow_domain == ["cc"]

    env = {"SDCTL_NODE": "node-b.example:7443", "SDCTL_OUTPUT": "json"}
    assert load_sdctl(SDCTL, env)["node"] == "node-b.example:7443"
    assert load_sdctl(SDCTL, env, node="node-c.example:7443")["node"] == "node-c.example:7443"
    assert load_sdctl(SDCTL, env)["output"] == "json"
    assert load_sdctl(SDCTL, {"SDCTL_RETRY_INTERVAL": "0.25"})["retry_interval"] == 0.25
    assert load_sdctl(SDCTL, {"SDCTL_RETRY_INTERVAL": "0.25"}, retry_interval="2")["retry_interval"] == 2.0


# ------------------------------------------------------------------------------------- errors


def one_line(e: pytest.ExceptionInfo[UsageError]) -> str:
    text = str(e.value)
    assert "\n" not in text, text
    return text


@pytest.mark.parametrize(
    ("sample", "section", "loader"),
    [(NODE, "node", load_node), (AGENT, "agent", load_agent), (SDCTL, "sdctl", load_sdctl)],
)
def test_an_unknown_key_is_refused_naming_it(tmp_path: Path, sample: Path, section: str, loader: Any) -> None:
    bad = edited(tmp_path, sample, section, 'lisen = "127.0.0.1:7443"')
    with pytest.raises(UsageError) as e:
        loader(bad)
    assert f"{section}.lisen" in one_line(e)


def test_an_unknown_section_is_refused_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "node.toml"
    bad.write_text(NODE.read_text() + '\n[metrics]\nlisten = "0.0.0.0:9464"\n')
    with pytest.raises(UsageError) as e:
        load_node(bad)
    assert "metrics.listen" in one_line(e)


@pytest.mark.parametrize(
    ("sample", "key_line", "new_line", "field", "loader"),
    [
        (NODE, "listen", 'listen = "nohostport"', "node.listen", load_node),
        (NODE, "session_seconds", "session_seconds = 5", "node.session_seconds", load_node),
        (NODE, "session_seconds", 'session_seconds = "soon"', "node.session_seconds", load_node),
        (NODE, "log_format", 'log_format = "xml"', "observability.log_format", load_node),
        (NODE, "drain_seconds", "drain_seconds = 3600", "observability.drain_seconds", load_node),
        (NODE, "max_batch_items", "max_batch_items = 0", "node.max_batch_items", load_node),
        (NODE, "crypto_workers", "crypto_workers = 65", "node.crypto_workers", load_node),
        (NODE, "crypto_workers", "crypto_workers = -1", "node.crypto_workers", load_node),
        (NODE, "id", 'id = "node a!"', "node.id", load_node),
        (SDCTL, "retry_interval", 'retry_interval = "soon"', "sdctl.retry_interval", load_sdctl),
        (SDCTL, "retry_timeout", "retry_timeout = true", "sdctl.retry_timeout", load_sdctl),
        (AGENT, "approval", 'approval = "sometimes"', "agent.approval", load_agent),
        (AGENT, "node", 'node = "nohostport"', "agent.node", load_agent),
        (AGENT, "log_format", 'log_format = "xml"', "observability.log_format", load_agent),
        (AGENT, "log_level", 'log_level = "LOUD"', "observability.log_level", load_agent),
    ],
)
def test_a_bad_value_gives_a_one_line_error_naming_the_field(
    tmp_path: Path, sample: Path, key_line: str, new_line: str, field: str, loader: Any
) -> None:
    bad = replaced(tmp_path, sample, key_line, new_line)
    with pytest.raises(UsageError) as e:
        loader(bad)
    assert field in one_line(e)


def test_a_bad_environment_value_names_the_field() -> None:
    with pytest.raises(UsageError) as e:
        load_node(NODE, {"SDQUORUM_NODE_SESSION_SECONDS": "5"})
    assert "node.session_seconds" in one_line(e)
    with pytest.raises(UsageError) as e:
        load_agent(AGENT, {"SDQUORUM_AGENT_APPROVAL": "sometimes"})
    assert "agent.approval" in one_line(e)


def test_a_missing_required_key_names_it_and_how_to_set_it(tmp_path: Path) -> None:
    text = re.sub(r"^data_dir\s*=.*$", "", NODE.read_text(), flags=re.M)
    bad = tmp_path / "node.toml"
    bad.write_text(text)
    with pytest.raises(UsageError) as e:
        load_node(bad)
    line = one_line(e)
    assert "node.data_dir" in line and "--data-dir" in line and "SDQUORUM_NODE_DATA_DIR" in line


def test_sdctl_refuses_a_bad_output_from_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """sdctl checks ``output`` in its main (load_settings does not): one line, exit 2."""
    from sdctl.cli import main

    for var in ("SDCTL_NODE", "SDCTL_OUTPUT", "SDCTL_CERT", "SDCTL_KEY", "SDCTL_CA", "SDCTL_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    bad = replaced(tmp_path, SDCTL, "output", 'output = "xml"')
    code = main(["--config", str(bad), "status"])
    err = capsys.readouterr().err.splitlines()
    assert code == 2
    assert len(err) == 1 and "sdctl.output" in err[0], err


def test_the_samples_match_the_cli_programs() -> None:
    """``hsm-node run --config`` and ``custodian-agent run --config`` accept the samples as they are."""
    from custodian_agent.cli import _parser as agent_parser
    from hsm_node.cli import _parser as node_parser

    node_args = node_parser().parse_args(["run", "--config", str(NODE)])
    assert NodeSettings.load(node_args, environ={}).node_id == "node-a"
    agent_args = agent_parser().parse_args(["run", "--config", str(AGENT)])
    assert AgentSettings.load(agent_args, environ={}).approval == "manual"


def test_azure_restores_are_opt_in_per_agent(capsys: pytest.CaptureFixture[str]) -> None:
    """agent.azure_restore: off in the sample and by default; the environment or the flag turns it
    on; 'run --help' says what it is (issue 13, class 1)."""
    from custodian_agent.cli import main

    assert load_agent(AGENT).azure_restore is False
    assert load_agent(AGENT, {"SDQUORUM_AGENT_AZURE_RESTORE": "true"}).azure_restore is True
    assert load_agent(AGENT, azure_restore=True).azure_restore is True
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert "--azure-restore" in capsys.readouterr().out
