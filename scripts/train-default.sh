#!/usr/bin/env bash
# README command (a): set up, build the host and the stock plugins in release mode, and run
# the default training job with the weighted_ce plugin. Extra arguments go to the host.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
./scripts/setup.sh
cargo build --release -p host -p weighted_ce
exec ./target/release/host --plugin target/release/libweighted_ce.so "$@"
