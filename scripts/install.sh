#!/usr/bin/env bash
# Installs what `tunnel` and its test suite need on a fresh Debian/Ubuntu machine (run as root).
# Usage: scripts/install.sh [--test]   (--test adds the real programs the tests drive and the test packages)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ "${1:-}" = "--test" ]; then
  if command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    need=()
    for pkg in coturn iperf3 openssh-server openssh-client socat dnsutils dnsmasq-base iproute2 nftables conntrack procps; do
      dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
    done
    if [ ${#need[@]} -gt 0 ]; then
      apt-get update -qq
      apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    fi
  fi
  "$PY" -m pip install -q --disable-pip-version-check -e ".[test]"
else
  "$PY" -m pip install -q --disable-pip-version-check -e .
fi
