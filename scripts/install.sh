#!/usr/bin/env bash
# Installs `tunnel` into a virtual environment inside the checkout (.venv), never into the system Python:
# Debian 12 / Ubuntu 24.04 mark their Python "externally managed", and a global install outlives the checkout.
# An existing .venv is reused (what is missing gets installed); a fresh one is created.
#
# Usage: scripts/install.sh [--test]
#   --test  also the test dependencies, and (as root, with apt-get) the real programs the tests drive
# Environment: PYTHON (interpreter that creates the venv, default python3), TUNNEL_VENV (default <checkout>/.venv)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
VENV=${TUNNEL_VENV:-$ROOT/.venv}
TEST=0
[ "${1:-}" = "--test" ] && TEST=1

apt_install() {
  # Debian packages by name, only the missing ones; needs root and apt-get.
  local need=()
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
  done
  [ ${#need[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install.sh: please install these packages first: ${need[*]}" >&2
    return 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}

if [ "$TEST" = 1 ] && command -v apt-get >/dev/null 2>&1; then
  # systemd: systemd-analyze verifies the units in deploy/systemd.
  apt_install coturn iperf3 openssh-server openssh-client socat dnsutils dnsmasq-base iproute2 nftables conntrack \
    systemd wireguard-go wireguard-tools iputils-ping procps
fi

# The venv: Debian's python3 needs python3-venv for `-m venv` (ensurepip); install it when that is what is missing.
if [ ! -x "$VENV/bin/python" ]; then
  if ! "$PY" -m venv "$VENV" >/dev/null 2>&1; then
    rm -rf "$VENV"
    apt_install python3-venv
    "$PY" -m venv "$VENV"
  fi
fi
VPY="$VENV/bin/python"

# pip only when something changed: the stamp records the pyproject.toml it installed and whether tests were wanted.
extra=""
[ "$TEST" = 1 ] && extra="[test]"
stamp="$VENV/.tunnel-install-stamp"
base="$(sha256sum pyproject.toml | cut -d' ' -f1) $ROOT"
want="$base $extra"
have="$(cat "$stamp" 2>/dev/null || true)"
# A venv installed with the test extras also serves a plain install.
if { [ "$have" != "$want" ] && [ "$have" != "$base [test]" ]; } || ! "$VPY" -c "import tunnel_cli" >/dev/null 2>&1; then
  "$VPY" -m pip install -q --disable-pip-version-check -e ".$extra" 2>&1 | { grep -v "is ignored: it is neither" || true; }
  echo "$want" >"$stamp"
fi

echo "tunnel is installed in $VENV: $VENV/bin/tunnel (also tunnel-rs, tunnel-rs-ice)" >&2
case ":$PATH:" in
  *":$VENV/bin:"*) ;;
  *) echo "To run it by name: export PATH=\"$VENV/bin:\$PATH\"   (or, without a checkout: pipx install .)" >&2 ;;
esac
