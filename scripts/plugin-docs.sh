#!/usr/bin/env bash
# The plugin API reference (rustdoc of plugin-api, with its examples), for plugin authors:
#     ./scripts/plugin-docs.sh        then open target/doc/plugin_api/index.html
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
./scripts/setup-torch.sh >/dev/null # tch's build needs the project's libtorch
cargo doc -p plugin-api --no-deps
echo "plugin API reference: $ROOT/target/doc/plugin_api/index.html"
