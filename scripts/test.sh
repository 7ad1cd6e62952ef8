#!/usr/bin/env bash
# The whole test suite on a fresh machine: install everything the tests need (into .venv, see install.sh), lint,
# fuzz briefly, run every test. With arguments, they go to pytest and the fuzz step is skipped (a quick subset).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh --test
VENV=${TUNNEL_VENV:-$PWD/.venv}
PY="$VENV/bin/python"
# Tests start the installed commands (tunnel, tunnel-rs, tunnel-rs-ice) by name.
export PATH="$VENV/bin:$PATH"
"$PY" -m ruff check src tests fuzz benchmarks
if [ $# -eq 0 ]; then
  for harness in fuzz/fuzz_*.py; do
    "$PY" "$harness" -atheris_runs=3000 >/dev/null 2>&1 || { echo "fuzz harness failed: $harness"; "$PY" "$harness" -atheris_runs=3000 2>&1 | tail -20; exit 1; }
  done
  echo "fuzz: $(ls fuzz/fuzz_*.py | wc -l) harnesses ran 3000 inputs each"
fi
exec "$PY" -m pytest -q -p no:cacheprovider "$@"
