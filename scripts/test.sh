#!/usr/bin/env bash
# README command (b), and what CI runs: set up, check formatting and lints, then the whole
# test suite (unit tests and the end-to-end tests, which build the plugins and run the host
# binary).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
./scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace "$@"
