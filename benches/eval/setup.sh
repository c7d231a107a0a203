#!/usr/bin/env bash
# Creates .venv-eval for `cargo bench --bench generation`: Pynguin and the corpus packages
# (pinned in benches/eval/requirements.txt). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/../.."
python=/usr/bin/python3
[ -x "$python" ] || python=python3
[ -x .venv-eval/bin/python ] || "$python" -m venv .venv-eval
.venv-eval/bin/python -m pip install --quiet --disable-pip-version-check -r benches/eval/requirements.txt
