# syntax=docker/dockerfile:1
# The qefleet image: one binary (`qefleet scheduler|worker|up|...`), the Python the
# sandbox runs generated tests with (pytest, coverage), ONNX Runtime's shared library and
# the default embedding model. Runs as an unprivileged user.
#
#   docker build -t qefleet:cpu .                              # ONNX Runtime, CPU
#   docker build --build-arg FLAVOUR=cuda -t qefleet:cuda .    # onnxruntime-gpu + CUDA 13 /
#                                                              # cuDNN 9 libraries from PyPI;
#                                                              # run with --gpus (needs only
#                                                              # the host's NVIDIA driver)
ARG FLAVOUR=cpu

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin qefleet \
    && install -D target/release/qefleet /out/qefleet

# The virtualenv from the same pinned requirements as scripts/setup.sh, and the MiniLM
# model converted to ONNX from its pinned weights. Built at /opt/qefleet, the path it
# runs from (a venv is not relocatable).
FROM debian:bookworm-slim AS python
ARG FLAVOUR
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/qefleet
COPY requirements.txt requirements-gpu.txt ./
COPY onnx-models/ onnx-models/
RUN python3 -m venv .venv \
    && if [ "$FLAVOUR" = cuda ]; then \
         grep -v '^onnxruntime==' requirements.txt > /tmp/requirements.txt \
         && .venv/bin/pip install --no-cache-dir --no-deps -r /tmp/requirements.txt -r requirements-gpu.txt; \
       else \
         .venv/bin/pip install --no-cache-dir --no-deps -r requirements.txt; \
       fi \
    && .venv/bin/python onnx-models/minilm.py convert \
    && rm -rf onnx-models/build

FROM debian:bookworm-slim
ARG FLAVOUR
LABEL org.opencontainers.image.title="qefleet" \
      org.opencontainers.image.description="Distributed test-generation fleet on NATS JetStream (${FLAVOUR})"
# python3: the venv's interpreter; util-linux: unshare, for the sandbox's network and
# mount namespaces; ca-certificates: cloud providers over TLS.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 util-linux ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/qefleet --create-home qefleet
COPY --from=python /opt/qefleet /opt/qefleet
COPY --from=build /out/qefleet /opt/qefleet/bin/qefleet
ENV PATH=/opt/qefleet/bin:$PATH \
    QEFLEET_PYTHON=/opt/qefleet/.venv/bin/python \
    ORT_DYLIB_PATH=/opt/qefleet/.venv/lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime.so.1.31.1
# State (outbox, `qefleet up`'s embedded server) goes under the user's home: mount a
# volume there to keep it across container replacements.
USER qefleet
WORKDIR /var/lib/qefleet
VOLUME /var/lib/qefleet
EXPOSE 9464
ENTRYPOINT ["qefleet"]
CMD ["up", "--scheduler-metrics-addr", "0.0.0.0:9464"]
