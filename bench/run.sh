#!/usr/bin/env bash
# The benchmarks, one command: builds the release binaries and plugins, then runs
# bench/run.py (arguments pass through: --repeats, --steps, --gpt-steps) and the pretrained
# fine-tuning and loading benchmarks (bench/pretrained.py), packing against padding
# (bench/packing.py), and LoRA and gradient
# checkpointing at sequence 512 (bench/lora.py).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
./scripts/setup.sh
cargo build --release --quiet -p host -p bench -p weighted_ce -p csv_logger -p throughput -p timer -p test_fixtures
# setup.sh installs the pinned transformers and accelerate (the tests' oracle) as well.
.venv/bin/python bench/run.py "$@"
.venv/bin/python bench/pretrained.py
.venv/bin/python bench/packing.py
exec .venv/bin/python bench/lora.py
