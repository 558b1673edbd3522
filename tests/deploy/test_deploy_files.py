"""The deployment files in deploy/ agree with the programs they run and with each other.

No container engine or cluster runs here, so every YAML file is parsed (``yaml.safe_load_all``),
the systemd units and the Dockerfile with the small parsers in ``deploy_checks``, and the checks
compare them with the real argparse parsers, the real settings loaders and the samples in
deploy/config/. Each kind of check has a negative test on a small bad input, so none of them can
pass vacuously.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from deploy_checks import (
    CONFIG_DIR,
    DEPLOY,
    ROOT,
    Loaded,
    Stage,
    agent_unit_problems,
    check_command,
    check_console_command,
    compose_interpolate,
    compose_port_problems,
    compose_workloads,
    console_commands,
    dockerfile_problems,
    fenced_commands,
    k8s_port_problems,
    k8s_workloads,
    parse_console_command,
    parse_dockerfile,
    parse_unit,
    pod_spec,
    seconds,
    shell_commands,
    systemd_workload,
    unit_problems,
    workload_problems,
)

from hsm_node.config import SETTINGS as NODE_SETTINGS
from hsm_node.config import NodeSettings

DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
COMPOSE = DEPLOY / "compose" / "compose.yaml"
K8S = DEPLOY / "k8s"
SYSTEMD = DEPLOY / "systemd"
NODE_UNIT = SYSTEMD / "hsm-node.service"
AGENT_UNIT = SYSTEMD / "custodian-agent@.service"
CUSTODIANS = ["alice", "bob", "carol", "dave", "erin"]
# The console scripts and subcommands the deployment files are expected to run.
EXPECTED = {
    ("hsm-node", "run"),
    ("custodian-agent", "run"),
    ("custodian-agent", "health"),
    ("custodian-agent", "keygen"),
    ("sdctl", "pki"),
    ("sdctl", "status"),
}


def yaml_files() -> list[Path]:
    return sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])


def load_yaml(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def images() -> dict[str, Stage]:
    _, stages = parse_dockerfile(DOCKERFILE.read_text())
    return {s.name: s for s in stages}


def k8s_docs() -> list[dict[str, Any]]:
    return [d for p in sorted(K8S.glob("*.yaml")) if p.name != "kustomization.yaml" for d in load_yaml(p)]


def all_problems(workloads: list[Any]) -> tuple[list[str], list[Loaded]]:
    loaded: list[Loaded] = []
    problems: list[str] = []
    for w in workloads:
        problems += workload_problems(w, loaded)
    return problems, loaded


def k8s(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d is not None]


def compose_doc(text: str) -> dict[str, Any]:
    doc = yaml.safe_load(text)
    assert isinstance(doc, dict)
    return doc


# ======================================================================================== parsing


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_file_parses(path: Path) -> None:
    docs = load_yaml(path)
    assert docs, f"{path} holds no document"
    for d in docs:
        assert isinstance(d, dict)


def test_the_deployment_files_exist() -> None:
    for rel in (
        "config/node.toml",
        "config/agent.toml",
        "config/sdctl.toml",
        "docker/Dockerfile",
        "docker/Dockerfile.dockerignore",
        "compose/compose.yaml",
        "k8s/kustomization.yaml",
        "k8s/namespace.yaml",
        "k8s/node.yaml",
        "k8s/agents.yaml",
        "k8s/network-policy.yaml",
        "systemd/hsm-node.service",
        "systemd/custodian-agent@.service",
        "README.md",
    ):
        assert (DEPLOY / rel).is_file(), rel


def test_every_command_the_files_run_is_one_we_expect() -> None:
    """Across compose, Kubernetes, systemd and the Dockerfile, the expected commands all appear."""
    seen: set[tuple[str, str]] = set()
    workloads = [
        *compose_workloads(compose_doc(COMPOSE.read_text()), COMPOSE, images()),
        *k8s_workloads(k8s_docs(), "k8s"),
        systemd_workload(NODE_UNIT.read_text(), NODE_UNIT.name),
        systemd_workload(AGENT_UNIT.read_text(), AGENT_UNIT.name),
    ]
    commands = [argv for w in workloads for _, argv in w.commands]
    commands += [[*s.entrypoint, *s.cmd] for s in images().values() if s.entrypoint]
    for argv in commands:
        for cmd in console_commands(argv):
            args = parse_console_command(cmd)
            seen.add((PurePosixPath(cmd[0]).name, args.command))
    assert seen == EXPECTED, seen ^ EXPECTED


# ======================================================================================== compose


def test_compose_commands_flags_and_config_paths() -> None:
    doc = compose_doc(COMPOSE.read_text())
    problems, loaded = all_problems(compose_workloads(doc, COMPOSE, images()))
    assert problems == []
    assert {x.program for x in loaded} == {"hsm-node", "custodian-agent", "sdctl"}


def test_compose_ports_agree() -> None:
    doc = compose_doc(COMPOSE.read_text())
    problems, loaded = all_problems(compose_workloads(doc, COMPOSE, images()))
    assert problems == []
    assert compose_port_problems(doc, loaded) == []


def test_compose_services() -> None:
    doc = compose_doc(COMPOSE.read_text())
    services = doc["services"]
    assert {"pki-init", "node", *(f"agent-{n}" for n in CUSTODIANS)} <= set(services)
    assert services["pki-init"]["restart"] == "no"
    for name in CUSTODIANS:
        agent = services[f"agent-{name}"]
        cmd = [compose_interpolate(a) for a in agent["command"]]
        assert cmd[cmd.index("--approval") + 1] == "manual", f"agent-{name} must ask a person by default"
        assert agent["healthcheck"]["test"][1:3] == ["custodian-agent", "health"]
        assert agent["depends_on"]["pki-init"]["condition"] == "service_completed_successfully"
        subpaths = {(v.get("volume") or {}).get("subpath") for v in agent["volumes"]}
        assert all(s is None or s.startswith(f"agent-{name}/") for s in subpaths), subpaths
    node = services["node"]
    assert node["healthcheck"]["test"][0] == "CMD"
    assert "status" in node["healthcheck"]["test"]
    assert seconds(node["stop_grace_period"]) > node_drain_seconds()


def compose_security_problems(doc: Mapping[str, Any]) -> list[str]:
    """Every service: read-only root, no capabilities, no-new-privileges, not root, no literal secret."""
    problems = []
    for name, svc in doc["services"].items():
        if svc.get("read_only") is not True:
            problems.append(f"compose {name}: read_only: true is missing")
        if "ALL" not in (svc.get("cap_drop") or []):
            problems.append(f"compose {name}: cap_drop: [ALL] is missing")
        if not any(str(o).startswith("no-new-privileges") for o in svc.get("security_opt") or []):
            problems.append(f"compose {name}: security_opt no-new-privileges is missing")
        if svc.get("privileged") or str(svc.get("user", "")).split(":")[0] in ("root", "0"):
            problems.append(f"compose {name}: runs privileged or as root")
        env = svc.get("environment") or {}
        for key, value in env.items() if isinstance(env, dict) else []:
            if "PASSPHRASE" in key and not str(value).startswith("${"):
                problems.append(f"compose {name}: {key} is written in the file: take it from the environment")
    return problems


def test_compose_services_are_hardened_and_hold_no_secret() -> None:
    assert compose_security_problems(compose_doc(COMPOSE.read_text())) == []


def test_compose_pki_init_makes_the_files_every_service_mounts(tmp_path: Path) -> None:
    """Run pki-init's script here (same commands, a temporary folder for the volume), then resolve
    every path each service's settings name through its volume subpaths: all must exist."""
    doc = compose_doc(COMPOSE.read_text())
    svc = doc["services"]["pki-init"]
    (pki_mount,) = [v for v in svc["volumes"] if v["source"] == "pki"]
    volume = tmp_path / "pki"
    volume.mkdir()
    script = compose_interpolate(svc["command"][0]).replace(pki_mount["target"], str(volume))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SDQUORUM_", "SDCTL_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # the venv's console scripts
    env |= {f"PASSPHRASE_{n.upper()}": f"{n}-passphrase-123" for n in CUSTODIANS}
    for _ in range(2):  # the second run finds .complete and does nothing
        r = subprocess.run(
            ["/bin/sh", "-eu", "-c", script], env=env, capture_output=True, text=True, check=False
        )
        assert r.returncode == 0, r.stderr
    problems, loaded = all_problems(compose_workloads(doc, COMPOSE, images()))
    assert problems == []
    checked = 0
    for x in loaded:
        service = doc["services"][x.workload.name]
        for use in x.uses:
            if use.writable:
                continue
            for v in service.get("volumes") or []:
                if v.get("source") == "pki" and PurePosixPath(v["target"]) in use.path.parents:
                    rel = use.path.relative_to(v["target"])
                    assert (volume / v["volume"]["subpath"] / rel).is_file(), f"{x.where}: {use}"
                    checked += 1
    assert checked == 5 + 3 + 6 * 5 + 3  # node, its probe, five agents, the admin


# ======================================================================================== kubernetes


def test_k8s_commands_flags_and_config_paths() -> None:
    problems, loaded = all_problems(k8s_workloads(k8s_docs(), "k8s"))
    assert problems == []
    assert sum(x.program == "custodian-agent" for x in loaded) == 5


def test_k8s_ports_agree() -> None:
    docs = k8s_docs()
    problems, loaded = all_problems(k8s_workloads(docs, "k8s"))
    assert problems == []
    assert k8s_port_problems(docs, loaded) == []
    assert {d["kind"] for d in docs} >= {"StatefulSet", "Service", "Deployment", "NetworkPolicy", "ConfigMap"}


def k8s_security_problems(docs: list[dict[str, Any]]) -> list[str]:
    """Non-root, read-only root, no capabilities, RuntimeDefault seccomp, read-only secret files."""
    problems = []
    for d in docs:
        spec = pod_spec(d)
        if spec is None:
            continue
        name = f"{d['kind']}/{d['metadata']['name']}"
        pod = spec.get("securityContext") or {}
        if pod.get("runAsNonRoot") is not True or pod.get("runAsUser") in (None, 0):
            problems.append(f"{name}: the pod must set runAsNonRoot: true and a non-zero runAsUser")
        if (pod.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            problems.append(f"{name}: seccompProfile RuntimeDefault is missing")
        if spec.get("automountServiceAccountToken") is not False:
            problems.append(f"{name}: automountServiceAccountToken: false is missing")
        for c in [*(spec.get("initContainers") or []), *spec["containers"]]:
            sc = c.get("securityContext") or {}
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{name}/{c['name']}: readOnlyRootFilesystem: true is missing")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{name}/{c['name']}: allowPrivilegeEscalation: false is missing")
            if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
                problems.append(f"{name}/{c['name']}: capabilities drop ALL is missing")
            if sc.get("privileged") or sc.get("runAsUser") == 0:
                problems.append(f"{name}/{c['name']}: runs privileged or as root")
        for v in spec.get("volumes") or []:
            if "secret" in v and v["secret"].get("defaultMode") not in (0o400, 0o440):
                problems.append(f"{name}: secret volume {v['name']} needs defaultMode 0400 or 0440")
        for m in (mnt for c in spec["containers"] for mnt in c.get("volumeMounts") or []):
            vol = next((v for v in spec.get("volumes") or [] if v["name"] == m["name"]), {})
            if "secret" in vol and m.get("readOnly") is not True:
                problems.append(f"{name}: secret {m['name']} must be mounted readOnly")
    return problems


def test_k8s_pods_are_hardened() -> None:
    assert k8s_security_problems(k8s_docs()) == []


def test_k8s_node_is_a_statefulset_with_its_data_on_a_claim() -> None:
    docs = k8s_docs()
    (sts,) = [d for d in docs if d["kind"] == "StatefulSet"]
    assert sts["spec"]["replicas"] == 1
    claims = {c["metadata"]["name"] for c in sts["spec"]["volumeClaimTemplates"]}
    _, loaded = all_problems(k8s_workloads(docs, "k8s"))
    (node,) = [x for x in loaded if x.program == "hsm-node"]
    for use in node.uses:
        if use.writable:
            # The mount holding the path: the node's directories are made inside the volume roots.
            m = max(
                (m for m in node.workload.mounts if use.path.is_relative_to(PurePosixPath(m.target))),
                key=lambda m: len(PurePosixPath(m.target).parts),
            )
            assert m.kind == "pvc", f"{use.setting} is not on a PersistentVolumeClaim"
    assert claims >= {"data", "sealing"}
    assert sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > node.settings.drain_seconds


def test_k8s_agents_one_per_site_with_no_service() -> None:
    docs = k8s_docs()
    agents = [d for d in docs if d["kind"] == "Deployment"]
    sites = sorted(d["spec"]["template"]["metadata"]["labels"]["site"] for d in agents)
    assert sites == sorted(CUSTODIANS)
    for d in agents:
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert d["spec"]["selector"]["matchLabels"]["site"] == labels["site"]
        for svc in (x for x in docs if x["kind"] == "Service"):
            selector = svc["spec"].get("selector") or {}
            assert not all(labels.get(k) == v for k, v in selector.items()), (
                f"{svc['metadata']['name']} selects agents"
            )
        (container,) = d["spec"]["template"]["spec"]["containers"]
        for probe in ("readinessProbe", "livenessProbe"):
            assert container[probe]["exec"]["command"][:2] == ["custodian-agent", "health"]
        env = {e["name"]: e for e in container["env"]}
        ref = env["SDQUORUM_PASSPHRASE"]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == f"sdquorum-agent-{labels['site']}-passphrase"
        vols = {v["name"]: v for v in d["spec"]["template"]["spec"]["volumes"]}
        assert vols["tls"]["secret"]["secretName"] == f"sdquorum-agent-{labels['site']}-tls"
        assert vols["wrapping-secret"]["secret"]["secretName"] == f"sdquorum-agent-{labels['site']}-wrapping"


def test_k8s_network_policy_shape() -> None:
    """Default deny; agents: egress to the node and DNS only; node: ingress from agents and admins."""
    policies = {d["metadata"]["name"]: d["spec"] for d in k8s_docs() if d["kind"] == "NetworkPolicy"}
    deny = [
        p for p in policies.values() if p["podSelector"] == {} and "ingress" not in p and "egress" not in p
    ]
    assert deny and set(deny[0]["policyTypes"]) == {"Ingress", "Egress"}
    agent = next(
        p
        for p in policies.values()
        if p["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/component") == "agent"
    )
    assert agent["ingress"] == []
    targets = [t for rule in agent["egress"] for t in rule["to"]]
    assert {"app.kubernetes.io/name": "sdquorum-node"} in [
        t.get("podSelector", {}).get("matchLabels") for t in targets
    ]
    dns_ports = {p["port"] for rule in agent["egress"] for p in rule["ports"] if p["port"] == 53}
    assert dns_ports == {53}
    assert len(agent["egress"]) == 2
    node = next(
        p
        for p in policies.values()
        if p["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name") == "sdquorum-node"
    )
    sources = [s["podSelector"]["matchLabels"] for rule in node["ingress"] for s in rule["from"]]
    assert sources == [{"app.kubernetes.io/component": "agent"}, {"app.kubernetes.io/component": "admin"}]


def test_kustomization_lists_every_manifest() -> None:
    (kust,) = load_yaml(K8S / "kustomization.yaml")
    listed = set(kust["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present
    assert kust["namespace"] == "sdquorum"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (for kustomize) is not installed")
def test_kustomize_renders_the_manifests() -> None:
    r = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    docs = k8s(r.stdout)
    assert all(d["metadata"].get("namespace") == "sdquorum" for d in docs if d["kind"] != "Namespace")
    assert k8s_security_problems(docs) == []
    problems, loaded = all_problems(k8s_workloads(docs, "rendered"))
    assert problems == []
    assert k8s_port_problems(docs, loaded) == []


# ======================================================================================== systemd


def node_drain_seconds() -> int:
    args = argparse.Namespace(config=CONFIG_DIR / "node.toml", **{s.dest: None for s in NODE_SETTINGS})
    return NodeSettings.load(args, environ={}).drain_seconds


@pytest.mark.parametrize("unit", [NODE_UNIT, AGENT_UNIT], ids=lambda p: p.name)
def test_systemd_units_run_real_commands_with_sample_configs(unit: Path) -> None:
    w = systemd_workload(unit.read_text(), unit.name)
    problems, loaded = all_problems([w])
    assert problems == []
    assert len(loaded) == 1


@pytest.mark.parametrize("unit", [NODE_UNIT, AGENT_UNIT], ids=lambda p: p.name)
def test_systemd_units_are_hardened(unit: Path) -> None:
    w = systemd_workload(unit.read_text(), unit.name)
    _, loaded = all_problems([w])
    (x,) = loaded
    drain = x.settings.drain_seconds if x.program == "hsm-node" else None
    writable = [u.path for u in x.uses if u.writable]
    problems = unit_problems(w, drain, writable)
    if x.program == "custodian-agent":
        problems += agent_unit_problems(w)
    assert problems == []


# ======================================================================================== Dockerfile


def test_dockerfile() -> None:
    text = DOCKERFILE.read_text()
    assert dockerfile_problems(text) == []
    args, stages = parse_dockerfile(text)
    assert args["PYTHON_IMAGE"] == "python:3.11-slim"
    assert stages[0].base == "python:3.11-slim"
    by_name = {s.name: s for s in stages}
    assert {"build", "runtime", "node", "agent", "sdctl"} <= set(by_name)
    for target, script in (("node", "hsm-node"), ("agent", "custodian-agent"), ("sdctl", "sdctl")):
        assert PurePosixPath(by_name[target].entrypoint[0]).name == script
        assert by_name[target].user == "10001:10001"
    assert stages[-1].name == "node"
    assert any(
        ins == "COPY" and rest.startswith("--from=build") for ins, rest in by_name["runtime"].instructions
    )


def test_the_compose_images_are_dockerfile_targets() -> None:
    stages = images()
    for name, svc in compose_doc(COMPOSE.read_text())["services"].items():
        build = svc["build"]
        assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE, name
        assert build["target"] in stages, name


def test_the_dockerignore_keeps_keys_out_of_the_build_context() -> None:
    """BuildKit reads <Dockerfile>.dockerignore beside the Dockerfile; it must exclude everything
    but the package sources, and keys even there."""
    lines = [
        ln.strip()
        for ln in (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert lines[0] == "*"
    for pattern in ("**/*.key", "**/*.pem", "**/*.p12"):
        assert pattern in lines
        assert lines.index(pattern) > max(i for i, ln in enumerate(lines) if ln.startswith("!"))
    copied = {
        rest.split()[0].rstrip("/")
        for s in parse_dockerfile(DOCKERFILE.read_text())[1]
        for ins, rest in s.instructions
        if ins == "COPY" and not rest.startswith("--from")
    }
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    assert copied <= allowed, copied - allowed


# ======================================================================================== docs


@pytest.mark.parametrize("doc", [DEPLOY / "README.md", ROOT / "docs" / "byo-pki.md"], ids=lambda p: p.name)
def test_commands_in_the_deployment_docs_exist(doc: Path) -> None:
    found = fenced_commands(doc.read_text())
    assert found, f"no commands in {doc}"
    problems = []
    for line, argv in found:
        problems += check_command(argv, f"{doc.name}:{line}")
    assert problems == []


# ======================================================================================== negative


BAD_AGENT = """
apiVersion: v1
kind: ConfigMap
metadata: {name: cfg}
data:
  agent.toml: "x"
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: bad}
spec:
  template:
    metadata: {labels: {app: bad}}
    spec:
      containers:
        - name: agent
          command: ["custodian-agent"]
          args: [ARGS]
          volumeMounts: [MOUNTS]
      volumes:
        - {name: config, configMap: {name: cfg}}
        - {name: tls, secret: {secretName: t, defaultMode: 0440}}
        - {name: state, emptyDir: {}}
"""


def bad_agent(args: str, mounts: str = "") -> list[dict[str, Any]]:
    return k8s(BAD_AGENT.replace("ARGS", args).replace("MOUNTS", mounts))


def problems_of(docs: list[dict[str, Any]]) -> list[str]:
    return all_problems(k8s_workloads(docs, "bad.yaml"))[0]


def test_an_unknown_subcommand_or_program_is_found() -> None:
    (p,) = problems_of(bad_agent('"serve", "--config", "/etc/sdquorum/agent.toml"'))
    assert "no subcommand 'serve'" in p
    (p,) = check_command(["/bin/sh", "-c", "custodian-agnet keygen --name a --key k --cert c"], "x")
    assert "custodian-agnet is neither a console script" in p
    (p,) = check_command(["hsm-node"], "x")
    assert "required" in p  # a subcommand is required


def test_an_unknown_or_abbreviated_flag_is_found() -> None:
    (p,) = check_command(["custodian-agent", "health", "--state", "/var/lib/sdquorum-agent"], "x")
    assert "no flag --state" in p  # argparse would take the abbreviation; the check does not
    (p,) = check_command(["hsm-node", "run", "--confg", "/etc/sdquorum/node.toml"], "x")
    assert "no flag --confg" in p
    (p,) = check_command(["custodian-agent", "health", "--approval", "manual"], "x")
    assert "no flag --approval" in p  # a flag of 'run', not of 'health'
    (p,) = check_command(["custodian-agent", "keygen", "--name", "alice"], "x")
    assert "required" in p and "--cert" in p
    (p,) = check_command(["sh", "-c", "SDQUORUM_PASSPHRASE=x exec sdctl pki init --out d --node node-a"], "x")
    assert "no flag --node" in p or "required" in p


def test_a_config_path_that_is_not_mounted_is_found() -> None:
    (p,) = problems_of(bad_agent('"run", "--config", "/etc/sdquorum/agent.toml"'))
    assert "not mounted" in p


def test_a_config_map_that_is_not_the_sample_is_found() -> None:
    mounts = "{name: config, mountPath: /etc/sdquorum/agent.toml, subPath: agent.toml}"
    (p,) = problems_of(bad_agent('"run", "--config", "/etc/sdquorum/agent.toml"', mounts))
    assert "differs from deploy/config/agent.toml" in p


def test_a_path_of_the_config_outside_every_mount_is_found() -> None:
    docs = bad_agent(
        '"run", "--config", "/etc/sdquorum/agent.toml"',
        "{name: config, mountPath: /etc/sdquorum/agent.toml, subPath: agent.toml}, "
        "{name: tls, mountPath: /etc/sdquorum/tls}, {name: state, mountPath: /var/lib/sdquorum-agent}",
    )
    docs[0]["data"]["agent.toml"] = (CONFIG_DIR / "agent.toml").read_text()
    problems = problems_of(docs)
    assert any(
        "attestation.root = /etc/sdquorum/attestation/attestation-root.pem is in no mounted" in p
        for p in problems
    )
    assert any("wrapping.key" in p for p in problems)
    assert not any("tls." in p or "state_dir" in p for p in problems), problems


def test_a_read_only_state_dir_is_found() -> None:
    docs = bad_agent(
        '"run", "--config", "/etc/sdquorum/agent.toml", "--state-dir", "/etc/sdquorum/tls"',
        "{name: config, mountPath: /etc/sdquorum/agent.toml, subPath: agent.toml}, "
        "{name: tls, mountPath: /etc/sdquorum, readOnly: true}",
    )
    docs[0]["data"]["agent.toml"] = (CONFIG_DIR / "agent.toml").read_text()
    (p,) = problems_of(docs)
    assert "agent.state_dir = /etc/sdquorum/tls must be writable" in p


def test_a_health_probe_on_another_state_dir_is_found() -> None:
    docs = k8s_docs()
    agent = next(d for d in docs if d["kind"] == "Deployment")
    container = agent["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbe"]["exec"]["command"] = ["custodian-agent", "health", "--state-dir", "/tmp"]
    (p,) = problems_of([d for d in docs if d["kind"] == "ConfigMap"] + [agent])
    assert "would never see a heartbeat" in p


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["custodian-agent", "health", "--config", "/etc/sdquorum/agent.toml"], None),
        (
            ["custodian-agent", "health", "--config", "/etc/sdquorum/agent.toml", "--state-dir", "/tmp"],
            "would never see a heartbeat",
        ),
    ],
    ids=["the config's state_dir", "a flag that overrides it"],
)
def test_a_health_probe_reading_the_agents_config_is_checked_against_its_state_dir(
    command: list[str], expected: str | None
) -> None:
    docs = k8s_docs()
    agent = next(d for d in docs if d["kind"] == "Deployment")
    agent["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["exec"]["command"] = command
    problems = problems_of([d for d in docs if d["kind"] == "ConfigMap"] + [agent])
    if expected is None:
        assert problems == []
    else:
        assert any(expected in p for p in problems), problems


def test_a_compose_config_from_outside_deploy_config_is_found() -> None:
    doc = compose_doc(COMPOSE.read_text())
    doc["configs"]["node-config"]["file"] = "../../pyproject.toml"
    problems, _ = all_problems(compose_workloads(doc, COMPOSE, images()))
    assert any("not a sample in deploy/config/" in p for p in problems), problems


LISTEN_7444 = "- name: SDQUORUM_NODE_LISTEN\n              value: 0.0.0.0:7444\n            "


@pytest.mark.parametrize(
    ("file", "old", "new", "expected"),
    [
        (
            "network-policy.yaml",
            "port: 7443",
            "port: 8443",
            "NetworkPolicy sdquorum-node-ingress admits port 8443",
        ),
        ("network-policy.yaml", "port: 7443", "port: 8443", "lets pods reach the node on 8443"),
        ("node.yaml", "containerPort: 7443", "containerPort: 7444", "container ports are [7444, 9464]"),
        ("node.yaml", "containerPort: 9464", "containerPort: 9465", "serves metrics on 9464"),
        ("node.yaml", "targetPort: grpc", "targetPort: 8443", "targets port 8443"),
        # the environment overrides the sample's node.listen
        (
            "node.yaml",
            "- name: SDQUORUM_NODE_ADDRESS",
            LISTEN_7444 + "- name: SDQUORUM_NODE_ADDRESS",
            "node listens on 7444",
        ),
        (
            "node.yaml",
            '"--node", "127.0.0.1:7443"',
            '"--node", "127.0.0.1:7444"',
            "the probe dials 127.0.0.1:7444",
        ),
    ],
)
def test_ports_that_disagree_are_found(file: str, old: str, new: str, expected: str) -> None:
    texts = {p.name: p.read_text() for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"}
    assert old in texts[file]
    texts[file] = texts[file].replace(old, new)
    docs = [d for t in texts.values() for d in k8s(t)]
    problems, loaded = all_problems(k8s_workloads(docs, "k8s"))
    assert problems == []
    found = k8s_port_problems(docs, loaded)
    assert any(expected in p for p in found), found


def test_compose_ports_that_disagree_are_found() -> None:
    doc = compose_doc(COMPOSE.read_text().replace('expose: ["7443"]', 'expose: ["7444"]'))
    _, loaded = all_problems(compose_workloads(doc, COMPOSE, images()))
    (p,) = compose_port_problems(doc, loaded)
    assert "exposes [7444]" in p
    doc = compose_doc(COMPOSE.read_text().replace("aliases: [sdquorum-node]", "aliases: [hsm]"))
    _, loaded = all_problems(compose_workloads(doc, COMPOSE, images()))
    problems = compose_port_problems(doc, loaded)
    assert len(problems) == 6 and all("dials sdquorum-node:7443" in p for p in problems), problems


def test_compose_without_hardening_or_with_a_written_passphrase_is_found() -> None:
    doc = compose_doc(
        """
services:
  agent:
    image: x
    user: root
    environment: {SDQUORUM_PASSPHRASE: hunter2hunter2}
"""
    )
    problems = compose_security_problems(doc)
    assert len(problems) == 5, problems


def test_k8s_without_hardening_is_found() -> None:
    docs = k8s_docs()
    (sts,) = [d for d in docs if d["kind"] == "StatefulSet"]
    spec = sts["spec"]["template"]["spec"]
    spec["containers"][0]["securityContext"]["readOnlyRootFilesystem"] = False
    spec["securityContext"]["runAsNonRoot"] = False
    spec["volumes"][1]["secret"]["defaultMode"] = 0o644
    problems = k8s_security_problems([sts])
    assert len(problems) == 3, problems


def test_a_dockerfile_running_as_root_or_copying_keys_is_found() -> None:
    bad = """
FROM python:3.11-slim AS build
RUN pip wheel -w /wheels .
FROM python:3.11-slim
COPY pki/node.key /etc/sdquorum/tls/
COPY --chown=10001 ca.pem /etc/sdquorum/
COPY . /src
ENV SDQUORUM_PASSPHRASE=hunter2hunter2
ENTRYPOINT ["/opt/sdquorum/bin/hsm-node"]
CMD ["run", "--config", "/etc/sdquorum/node.toml"]
"""
    problems = dockerfile_problems(bad)
    assert any("COPY pki/node.key" in p for p in problems)
    assert any("COPY ca.pem" in p for p in problems)
    assert any("COPY ." in p for p in problems)
    assert any("ENV SDQUORUM_PASSPHRASE" in p for p in problems)
    assert any("runs as root" in p for p in problems)
    assert len(problems) == 5, problems
    single = 'FROM python:3.11-slim\nUSER 10001\nENTRYPOINT ["hsm-node"]\nCMD ["serve"]\n'
    problems = dockerfile_problems(single)
    assert any("not a multi-stage build" in p for p in problems)
    assert any("no subcommand 'serve'" in p for p in problems)


def test_a_unit_without_hardening_is_found() -> None:
    bad = """
[Unit]
Description=bad

[Service]
ExecStart=/opt/sdquorum/bin/hsm-node run --config /etc/sdquorum/node.toml
User=root
Environment=SDQUORUM_NODE_SEALING_KEY=00
ReadWritePaths=/var/lib/sdquorum /etc
CapabilityBoundingSet=CAP_NET_BIND_SERVICE
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK
TimeoutStopSec=3s
"""
    w = systemd_workload(bad, "bad.service")
    problems = unit_problems(w, 5, [PurePosixPath("/var/lib/sdquorum/data")])
    expected = [
        "User=sdquorum",
        "ProtectSystem=strict",
        "KillSignal=SIGTERM",
        "DynamicUser=no",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "ProtectHome=yes",
        "CapabilityBoundingSet=",
        "RestrictAddressFamilies=",
        "SystemCallFilter=@system-service",
        "ReadWritePaths=/etc",
        "TimeoutStopSec=3s is not above",
        "Environment= holds a secret",
    ]
    for e in expected:
        assert any(e in p for p in problems), (e, problems)
    assert len(problems) == len(expected), problems
    assert agent_unit_problems(w) == ["bad.service: the passphrase needs EnvironmentFile= or LoadCredential="]


def test_a_unit_writing_outside_read_write_paths_is_found() -> None:
    text = NODE_UNIT.read_text().replace(
        "ReadWritePaths=/var/lib/sdquorum", "ReadWritePaths=/var/lib/sdquorum/data"
    )
    (p,) = all_problems([systemd_workload(text, "node.service")])[0]
    assert "node.sealing_key_file = /var/lib/sdquorum/sealing is not under ReadWritePaths=" in p


def test_a_unit_with_a_config_that_has_no_sample_is_found() -> None:
    text = NODE_UNIT.read_text().replace(
        "--config /etc/sdquorum/node.toml", "--config /etc/sdquorum/hsm.toml"
    )
    (p,) = all_problems([systemd_workload(text, "node.service")])[0]
    assert "no sample deploy/config/hsm.toml" in p


def test_the_parsers_on_small_inputs() -> None:
    assert shell_commands('a=1 exec sdctl status; if [ -e x ]; then echo "y" >&2; fi') == [
        ["sdctl", "status"],
        ["[", "-e", "x", "]"],
        ["echo", "y"],
    ]
    assert compose_interpolate("$${X} ${A:-manual} ${B:?set B} $C") == "${X} manual <B> <C>"
    assert seconds("1min 30s") == 90 and seconds("500ms") == 0.5 and seconds("30") == 30
    unit = parse_unit("[Service]\nExecStart=/bin/a \\\n  --b c\nCapabilityBoundingSet=\n")
    assert unit["Service"] == [("ExecStart", "/bin/a    --b c"), ("CapabilityBoundingSet", "")]


def test_a_wrong_command_in_a_doc_is_found() -> None:
    doc = "text\n\n```sh\nkubectl exec deploy/a -- custodian-agent pending --state /x\nsdctl \\\n    statuss\n```\n"
    found = fenced_commands(doc)
    assert [line for line, _ in found] == [4, 5]
    problems = [p for line, argv in found for p in check_command(argv, f"doc:{line}")]
    assert len(problems) == 2
    assert "doc:4: custodian-agent pending has no flag --state" in problems[0]
    assert "doc:5: sdctl has no subcommand 'statuss'" in problems[1]


@pytest.mark.parametrize(("target", "prog"), [("node", "sdctl"), ("agent", "custodian-agent")])
def test_the_node_and_agent_images_have_a_healthcheck_that_is_a_real_command(target: str, prog: str) -> None:
    """docker/compose run the image's HEALTHCHECK: it must be a real command line of our tools (the
    node's status over mTLS with its own certificate; the agent's heartbeat)."""
    checks = [rest for ins, rest in images()[target].instructions if ins == "HEALTHCHECK"]
    assert len(checks) == 1, checks
    exec_form = checks[0][checks[0].index("CMD") + 3 :].strip()
    argv = json.loads(exec_form)
    assert PurePosixPath(argv[0]).name == prog
    assert check_console_command([PurePosixPath(argv[0]).name, *argv[1:]], f"{target} HEALTHCHECK") == []


APPROVAL_SETTINGS = (  # every way a deploy file can set an agent's approval mode, and its value
    r'\bapproval\s*=\s*"([^"]*)"',  # TOML, also inside the k8s ConfigMap
    r'--approval["\s,]+"?([\w${}:-]+)',  # a command line or an exec-form list
    r"\bAGENT_APPROVAL=(\S+)",  # an environment variable, in a command or a comment
    r"\$\{AGENT_APPROVAL:-([^}]*)\}",  # compose's default
)


def test_no_deploy_file_sets_an_approval_mode_the_agent_refuses() -> None:
    """Every approval mode a deploy file, manifest, unit or comment there sets is one the agent
    accepts: 'auto' (shares released with nobody approving) is refused at start-up and appears
    nowhere. (On the old files: compose.yaml's comment offered AGENT_APPROVAL=auto.)"""
    import re

    from custodian_agent.approvals import check_mode
    from sdquorum.errors import UsageError

    found = []
    for path in sorted(p for p in DEPLOY.rglob("*") if p.is_file() and p.suffix != ".py"):
        text = path.read_text(errors="replace")
        for pattern in APPROVAL_SETTINGS:
            for value in re.findall(pattern, text):
                value = compose_interpolate(value) if value.startswith("${") else value.rstrip(".,;)")
                found.append((path.relative_to(DEPLOY).as_posix(), value))
    assert ("config/agent.toml", "manual") in found and ("compose/compose.yaml", "manual") in found
    bad = []
    for where, value in found:
        try:
            check_mode(value)
        except UsageError as e:
            bad.append(f"{where}: {e}")
    assert bad == []
