#!/usr/bin/env bash
# Make sure the tools the test suite drives are installed: today, headless Chromium for
# tests/review/test_review_html.py. As root, a missing Chromium is installed from Debian's
# packages; as anyone else, a one-line note says how, and the script still succeeds (the test then
# skips, unless SDQUORUM_REQUIRE_TOOLS=1 makes a missing tool a failure).
set -euo pipefail

if command -v chromium >/dev/null 2>&1; then
    echo "ensure-test-tools: chromium present ($(command -v chromium))"
    exit 0
fi

if [[ "$(id -u)" -ne 0 ]]; then
    echo "ensure-test-tools: chromium missing; run this script as root (or: sudo apt-get install chromium) for the headless HTML test"
    exit 0
fi

echo "ensure-test-tools: installing Debian's chromium with apt-get (for the headless HTML rendering test)"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium
command -v chromium >/dev/null 2>&1 || { echo "ensure-test-tools: chromium still missing after apt-get install" >&2; exit 1; }
