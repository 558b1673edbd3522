"""Copy deploy/config/node.toml and agent.toml into the ConfigMaps of node.yaml and agents.yaml.

Kustomize may not read files outside deploy/k8s/ (its default load restrictor), so the ConfigMaps
hold copies of the samples; tests/deploy fails when a copy differs. After editing a sample, run:

    python deploy/k8s/sync_configmaps.py
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIG = HERE.parent / "config"
TARGETS = {"node.yaml": "node.toml", "agents.yaml": "agent.toml"}


def sync(manifest: Path, sample: Path) -> bool:
    """Replace the block scalar ``  <sample name>: |`` of the first document; True if it changed."""
    text = manifest.read_text()
    head = f"  {sample.name}: |\n"
    start = text.index(head) + len(head)
    end = text.index("\n---\n", start) + 1
    body = "".join(f"    {line}" if line.strip() else "\n" for line in sample.read_text().splitlines(True))
    new = text[:start] + body + text[end:]
    manifest.write_text(new)
    return new != text


def main() -> None:
    for manifest, sample in TARGETS.items():
        changed = sync(HERE / manifest, CONFIG / sample)
        print(f"{manifest}: {'updated from' if changed else 'already equal to'} config/{sample}")


if __name__ == "__main__":
    main()
