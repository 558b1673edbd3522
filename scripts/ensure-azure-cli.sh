#!/usr/bin/env bash
# Make sure the pinned Azure CLI that tests/azure/test_azure_cli_restore.py drives is installed in
# .tools/azure-cli/ (gitignored), a virtual environment of its own.
#
# Why: issue 7 promises that `sdctl sd-file --format azure` writes a file that the Azure CLI's *own*
# `az keyvault security-domain restore-blob` accepts. Only the real CLI can show that, so the test
# runs it, offline (restore-blob needs no login and no network). The CLI is a test-only tool:
#   - its own venv, not the project's .venv and not in pyproject.toml: it brings ~400 MB of
#     dependencies (every azure-mgmt-* package) whose pins would fight ours;
#   - a pinned version (AZURE_CLI_VERSION), so that what the test proves names one release of
#     Microsoft's restore code (azure/cli/command_modules/keyvault, inside the azure-cli package
#     itself); pip resolves its other dependencies (cryptography among them) at install time. Bump
#     it on purpose;
#   - installed once (~30 s from the package registry, ~400 MB): --no-compile skips byte-compiling
#     every azure-mgmt-* module (that took a minute more and 340 MB); az compiles the few it uses on
#     its first run. When present, this script only reads a stamp file, written last, so that an
#     interrupted install is started over.
# If pip fails, this says so in one line and still succeeds, so that the rest of `make test` runs:
# the test then skips with the reason, or fails under SDQUORUM_REQUIRE_TOOLS=1 (as in .ci/run).
set -euo pipefail

AZURE_CLI_VERSION=2.91.0
cd "$(dirname "$0")/.."
dir=.tools/azure-cli
stamp=$dir/sdquorum-installed
log=.tools/azure-cli-install.log
want="azure-cli==$AZURE_CLI_VERSION"

if [[ -x $dir/bin/az && -f $stamp && "$(cat "$stamp")" == "$want" ]]; then
    echo "ensure-azure-cli: $want present in $dir"
    exit 0
fi

echo "ensure-azure-cli: installing $want into $dir (test-only tool, ~30 s, once)"
rm -rf "$dir"
mkdir -p .tools
start=$SECONDS
if "${PYTHON:-python3}" -m venv "$dir" >"$log" 2>&1 &&
    "$dir/bin/python" -m pip install --quiet --no-input --no-compile "$want" >>"$log" 2>&1 &&
    [[ -x $dir/bin/az ]]; then
    echo "$want" >"$stamp"
    rm -f "$log"
    echo "ensure-azure-cli: $want installed in $((SECONDS - start)) s"
else
    echo "ensure-azure-cli: pip install $want failed (see $log); tests/azure/test_azure_cli_restore.py will skip, or fail under SDQUORUM_REQUIRE_TOOLS=1"
fi
