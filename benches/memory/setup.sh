#!/usr/bin/env bash
# Creates .venv-bench with hnswlib for `cargo bench --bench memory`. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/../.."
python=/usr/bin/python3
[ -x "$python" ] || python=python3
[ -x .venv-bench/bin/python ] || "$python" -m venv .venv-bench
if ! .venv-bench/bin/python -c 'import hnswlib, numpy' 2>/dev/null; then
  .venv-bench/bin/python -m pip install --quiet --disable-pip-version-check -r benches/memory/requirements.txt
fi
