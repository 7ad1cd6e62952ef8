#!/usr/bin/env bash
# The whole test suite on a fresh machine: install everything the tests need, lint, run every test, fuzz briefly.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh --test
PY=${PYTHON:-python3}
"$PY" -m ruff check src tests fuzz benchmarks
for harness in fuzz/fuzz_*.py; do
  "$PY" "$harness" -atheris_runs=3000 >/dev/null 2>&1 || { echo "fuzz harness failed: $harness"; "$PY" "$harness" -atheris_runs=3000 2>&1 | tail -20; exit 1; }
done
echo "fuzz: $(ls fuzz/fuzz_*.py | wc -l) harnesses ran 3000 inputs each"
exec "$PY" -m pytest -q -p no:cacheprovider "$@"
