#!/usr/bin/env bash
# Installs what qefleet needs, idempotently: a project-local Python virtualenv (.venv) with
# the pinned nats-server, pytest and coverage, and the Rust build.
# Usage: scripts/setup.sh [--release]
set -euo pipefail
cd "$(dirname "$0")/.."

# The system interpreter is preferred: the sandbox runs submitted code as an unprivileged
# user, who must be able to execute the interpreter (a pyenv under /root is not readable).
if [ -z "${PYTHON:-}" ] && [ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null; then
  python=/usr/bin/python3
else
  python=${PYTHON:-python3}
fi
if ! "$python" -c 'import sys; assert sys.version_info >= (3, 10)' 2>/dev/null; then
  echo "setup: Python >= 3.10 is required (set PYTHON=/path/to/python3)" >&2
  exit 1
fi
home=$(dirname "$(readlink -f "$(command -v "$python")")")
if [ -x .venv/bin/python ] && ! grep -qx "home = $home" .venv/pyvenv.cfg 2>/dev/null; then
  echo "setup: .venv was made from another interpreter; recreating it from $python"
  rm -rf .venv
fi
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv from $python"
  "$python" -m venv .venv
fi
# Pinned versions; a no-op (no network) when they are already installed.
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found: install Rust from https://rustup.rs" >&2
  exit 1
fi
cargo build --locked "$@" --bin qefleet
