#!/usr/bin/env bash
# Make sure the Debian tools the test suite drives are installed:
#   chromium  - tests/review/test_review_html.py renders the quarterly review headless
#   etcd      - tests/pool/ start a 3-member etcd cluster of their own (Debian's etcd-server: /usr/bin/etcd;
#               the tests talk to it through the Python client, so etcdctl (etcd-client) is not needed;
#               the packaged etcd.service is not used and may stay stopped)
#   iproute2  - tests/multihost/ puts the node and each agent in a network namespace (`ip netns`)
#   openssl   - tests/e2e/test_tls_policy.py probes the node's TLS policy with `openssl s_client`
#   softhsm2  - tests/pkcs11/ keeps a custodian's wrapping key in a PKCS#11 token
#   spin      - tests/model/ checks the Promela model of the protocol exhaustively (with gcc: spin
#               writes its verifier in C)
# As root, missing ones are installed from Debian's packages; as anyone else, a one-line note says
# how, and the script still succeeds (those tests then skip, unless SDQUORUM_REQUIRE_TOOLS=1 makes a
# missing tool a failure).
set -euo pipefail

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v softhsm2-util >/dev/null 2>&1 || missing+=(softhsm2)
command -v spin >/dev/null 2>&1 || missing+=(spin)
command -v cc >/dev/null 2>&1 || missing+=(gcc)

if [[ ${#missing[@]} -eq 0 ]]; then
    echo "ensure-test-tools: chromium, etcd, ip, openssl, softhsm2, spin and cc present"
    exit 0
fi

if [[ "$(id -u)" -ne 0 ]]; then
    echo "ensure-test-tools: missing ${missing[*]}; run as root (or: sudo apt-get install ${missing[*]}) for the tests that need them"
    exit 0
fi

echo "ensure-test-tools: installing Debian's ${missing[*]} with apt-get (for the tests that drive them)"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
for tool in chromium etcd ip openssl softhsm2-util spin cc; do
    command -v "$tool" >/dev/null 2>&1 || { echo "ensure-test-tools: $tool still missing after apt-get install" >&2; exit 1; }
done
