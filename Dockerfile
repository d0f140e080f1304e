# syntax=docker/dockerfile:1.7
# The machine image: machine-runtime as PID 1, the profile's internal services installed at build time.
#
#   docker build --build-arg PROFILE=gpu-mixed -t machine:gpu-mixed .
#
# Runtime base: debian:bookworm-slim, not nvidia/cuda. The NVIDIA Container Toolkit injects the host
# driver's libraries (libcuda, libnvidia-ml) into any image, and PyTorch wheels ship their own CUDA
# runtime, so a CUDA base image would only add gigabytes of duplicate libraries.

ARG RUST_VERSION=1
ARG NODE_VERSION=22

# --- builder: machine-runtime in release mode ------------------------------------------------------
FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src
COPY . .
# The target directory is a cache mount, so the binary is copied out within the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p machine-runtime \
 && install -D -m 0755 target/release/machine-runtime /out/machine-runtime

# --- node: the Node.js binary for the worker bundle (Debian's own nodejs is too old) ---------------
FROM node:${NODE_VERSION}-bookworm-slim AS node

# --- runtime ---------------------------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime
ARG PROFILE
RUN test -n "${PROFILE}" \
 || { echo "error: pass --build-arg PROFILE=<name of a file in profiles/>" >&2; exit 1; }
# MACHINE_PROFILE carries the build argument to run time: exec-form CMD cannot expand variables.
# NVIDIA_DRIVER_CAPABILITIES is explicit because its default changed across toolkit versions; NVML needs
# `utility`, CUDA `compute`. GPUs themselves come from the compose device reservation, not from here.
ENV MACHINE_PROFILE=${PROFILE} \
    WORKSPACE_DIR=/workspace \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    CUDA_DEVICE_ORDER=PCI_BUS_ID \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates git python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
COPY --from=node /usr/local/bin/node /usr/local/bin/node
COPY --from=builder /out/machine-runtime /usr/local/bin/machine-runtime
WORKDIR /workspace
# Install the profile's internal services now, into the image; at container start `up` finds the
# markers current and skips in milliseconds. (Playwright's `--with-deps` runs apt-get here, as root.)
RUN machine-runtime install --profile "${PROFILE}" \
 && rm -rf /var/lib/apt/lists/*
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=10s --start-period=5m --retries=3 CMD ["machine-runtime", "health"]
ENTRYPOINT ["machine-runtime"]
CMD ["up"]
