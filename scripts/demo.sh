#!/usr/bin/env bash
# The main job on a fresh machine: install `tunnel`, then run a self-contained manual-mode tunnel demo on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
exec "${PYTHON:-python3}" -m tunnel_cli.demo "$@"
