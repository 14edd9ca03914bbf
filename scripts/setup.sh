#!/usr/bin/env bash
# Installs everything a build needs that may be missing on a fresh Debian machine with a
# Rust toolchain and Python 3: a C++ compiler (torch-sys compiles a small C++ wrapper),
# Python's venv module, gloo's headers (the torch wheel lacks them; the distributed shim
# needs them), rustfmt and clippy (the test script's checks), and the project-local
# libtorch venv. Idempotent and quick when everything is already there.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

missing=()
command -v c++ >/dev/null 2>&1 || missing+=(g++)
python3 -c "import ensurepip, venv" >/dev/null 2>&1 || missing+=(python3-venv)
[ -f /usr/include/gloo/config.h ] || [ -n "${GLOO_INCLUDE_DIR:-}" ] || missing+=(libgloo-dev)
if [ ${#missing[@]} -gt 0 ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "setup: please install: ${missing[*]}" >&2
        exit 1
    fi
    echo "setup: installing ${missing[*]}" >&2
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# scripts/test.sh checks formatting and lints: the toolchain's rustfmt and clippy.
if ! cargo fmt --version >/dev/null 2>&1; then
    rustup component add rustfmt
fi
if ! cargo clippy --version >/dev/null 2>&1; then
    rustup component add clippy
fi

"$ROOT/scripts/setup-torch.sh"
