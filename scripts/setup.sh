#!/usr/bin/env bash
# Installs what qefleet needs, idempotently: a project-local Python virtualenv (.venv) with
# the pinned nats-server, pytest and coverage, and the Rust build.
# Usage: scripts/setup.sh [--release]
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; assert sys.version_info >= (3, 10)' 2>/dev/null; then
  echo "setup: Python >= 3.10 is required (set PYTHON=/path/to/python3)" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$python" -m venv .venv
fi
# Pinned versions; a no-op (no network) when they are already installed.
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found: install Rust from https://rustup.rs" >&2
  exit 1
fi
cargo build --locked "$@" --bin qefleet
