#!/usr/bin/env bash
# The benchmarks, one command: builds the release binaries and plugins, installs Hugging
# Face Trainer into the project venv (for the benchmark only; the tests do not need it),
# then runs bench/run.py (arguments pass through: --repeats, --steps, --gpt-steps).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
./scripts/setup.sh
cargo build --release --quiet -p host -p bench -p weighted_ce -p csv_logger -p throughput -p timer -p test_fixtures
if ! .venv/bin/python -c "import transformers, accelerate" 2>/dev/null; then
    echo "bench: installing transformers and accelerate into .venv (benchmark only)" >&2
    .venv/bin/python -m pip install --quiet transformers accelerate
fi
exec .venv/bin/python bench/run.py "$@"
