#!/usr/bin/env bash
# The main job on a fresh machine: install `tunnel` (into .venv, see install.sh), then run a self-contained
# manual-mode tunnel demo on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
VENV=${TUNNEL_VENV:-$PWD/.venv}
exec "$VENV/bin/python" -m tunnel_cli.demo "$@"
