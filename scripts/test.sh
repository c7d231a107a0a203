#!/usr/bin/env bash
# Every test: formatting, lints, unit tests, JSON Schema freshness, and the integration
# suite against real nats-servers, Python and pytest. Installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# The version-refusal test runs Debian's old nats-server 2.9.10 (never the service on 4222).
if [ ! -x /usr/sbin/nats-server ] && command -v apt-get >/dev/null 2>&1; then
  apt-get install -y -qq nats-server >/dev/null
fi
cargo fmt --all --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked --workspace
