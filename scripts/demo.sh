#!/usr/bin/env bash
# The main job end to end: sets up, starts an embedded nats-server (sync_interval: always)
# with a scheduler, a local worker and a maint worker, submits the bundled example module,
# prints the generated tests with their figures, and exits.
# Extra arguments go to `qefleet demo` (e.g. --module path/to/module.py).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --release
RUST_LOG=${RUST_LOG:-warn} exec target/release/qefleet demo "$@"
