# The machine image: machine-runtime as PID 1, the profile's internal services and (for node workers) the
# worker bundle installed at build time. Compose builds and tags it as `machine-runtime:<profile>`:
#
#   cd generated/full-local && docker-compose up -d --build            (docker-compose 1.29 or Compose v2)
#   docker build --build-arg PROFILE=full-local -t machine-runtime:full-local .
#
# Works with the classic builder and with BuildKit (DOCKER_BUILDKIT=1, Compose v2) alike: no `RUN --mount`
# and no `# syntax=` line (both need BuildKit, and the latter pulls a frontend image from a registry).
#
# Build arguments:
#   PROFILE                 required: the name of a file in profiles/.
#   BASE_IMAGE              the runtime's base (default debian:bookworm-slim; any Debian bookworm image).
#   BUILDER_IMAGE           the image machine-runtime is compiled in (default rust:1-bookworm).
#   MACHINE_RUNTIME_BINARY  a prebuilt machine-runtime (Linux x86-64, glibc of bookworm or older), as a path
#                           inside the build context, with the machine-simulate of the same build next to it:
#                           no compilation. Set BUILDER_IMAGE to BASE_IMAGE with it, so no Rust image is needed
#                           at all (hosts without a registry).
#   WORKER_BUNDLE_URL       where `machine-runtime install` takes the worker bundle from instead of the
#                           profile's source: an http(s):// or file:// tarball, or a folder of the build
#                           context given as a relative path (for example a checkout of the worker bundle).
#
# Layers by need: every image has ca-certificates and Node.js (the workers) and this build's binaries;
# git, Python and venv come only with the profiles whose installs need them (ComfyUI, Playwright:
# `machine-runtime install --profile NAME --system-packages` says which), and curl only while the install
# downloads. So an API-only or simulation machine carries no Python or git toolchain.
#
# Healthcheck: as the generated compose files (xtask's DOCKER_HEALTH): a probe every second that, while the
# machine starts, keeps asking for 3 s (`health --wait`), so Docker reports `healthy` as soon as `/health`
# answers 200. Docker 20.10 and docker-compose 1.29 have no `start_interval` (Engine 25) to make only the
# start period's probes frequent.
#
# Runtime base: debian:bookworm-slim, not nvidia/cuda. The NVIDIA Container Toolkit injects the host
# driver's libraries (libcuda, libnvidia-ml) into any image, and PyTorch wheels ship their own CUDA
# runtime, so a CUDA base image would only add gigabytes of duplicate libraries.

ARG BASE_IMAGE=debian:bookworm-slim
ARG BUILDER_IMAGE=rust:1-bookworm

# --- builder: the binaries (compiled, or prebuilt) and a bundle folder from the context ---------------
# machine-runtime is PID 1; machine-simulate is the `simulation` service (a stand-in for ComfyUI that the
# full-local profile runs), a binary of its own so that PID 1 carries no test double.
FROM ${BUILDER_IMAGE} AS builder
# The classic builder keeps this stage as an untagged image; the label lets `docker image prune --filter
# label=machine-runtime.stage=builder` remove exactly those.
LABEL machine-runtime.stage=builder
ARG MACHINE_RUNTIME_BINARY=
ARG WORKER_BUNDLE_URL=
WORKDIR /src
COPY . .
RUN set -eu; \
    if [ -n "${MACHINE_RUNTIME_BINARY}" ]; then \
        [ -f "${MACHINE_RUNTIME_BINARY}" ] || { echo "error: MACHINE_RUNTIME_BINARY=${MACHINE_RUNTIME_BINARY} is not a file of the build context (a path relative to the repository root, not ignored by .dockerignore)" >&2; exit 1; }; \
        simulate="$(dirname "${MACHINE_RUNTIME_BINARY}")/machine-simulate"; \
        [ -f "$simulate" ] || { echo "error: $simulate is missing: MACHINE_RUNTIME_BINARY needs the machine-simulate of the same build next to it" >&2; exit 1; }; \
        install -D -m 0755 "${MACHINE_RUNTIME_BINARY}" /out/bin/machine-runtime; \
        install -D -m 0755 "$simulate" /out/bin/machine-simulate; \
    else \
        cargo build --release --locked -p machine-runtime --bins; \
        install -D -m 0755 target/release/machine-runtime /out/bin/machine-runtime; \
        install -D -m 0755 target/release/machine-simulate /out/bin/machine-simulate; \
    fi; \
    mkdir -p /out/worker-bundle; \
    case "${WORKER_BUNDLE_URL}" in \
        "" | http://* | https://* | file://*) ;; \
        /*) echo "error: WORKER_BUNDLE_URL=${WORKER_BUNDLE_URL}: an absolute path names no file of the build; give a folder of the build context as a relative path, or a tarball URL" >&2; exit 1 ;; \
        *) [ -d "${WORKER_BUNDLE_URL}" ] || { echo "error: WORKER_BUNDLE_URL=${WORKER_BUNDLE_URL} is not a folder of the build context" >&2; exit 1; }; \
           cp -a "${WORKER_BUNDLE_URL}/." /out/worker-bundle/ ;; \
    esac

# --- runtime ---------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime
# The same for every profile, so it comes first and is cached across profiles. Node.js is Debian's
# (bookworm: 18, the worker bundle's minimum).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates nodejs \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log
# NVIDIA_DRIVER_CAPABILITIES is explicit because its default changed across toolkit versions; NVML needs
# `utility`, CUDA `compute`. GPUs themselves come from the compose device reservation, not from here.
ENV WORKSPACE_DIR=/workspace \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    CUDA_DEVICE_ORDER=PCI_BUS_ID \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1
COPY --from=builder /out/bin/machine-runtime /usr/local/bin/machine-runtime
# Next to machine-runtime, where the runtime starts it from (catalog::SIMULATION_PROGRAM).
COPY --from=builder /out/bin/machine-simulate /usr/local/bin/machine-simulate
ARG PROFILE
ARG WORKER_BUNDLE_URL=
RUN test -n "${PROFILE}" \
 || { echo "error: pass --build-arg PROFILE=<name of a file in profiles/>" >&2; exit 1; }
# MACHINE_PROFILE carries the build argument to run time: exec-form CMD cannot expand variables.
ENV MACHINE_PROFILE=${PROFILE}
WORKDIR /workspace
# Install the profile's internal services and worker bundle now, into the image. `up` never installs: at
# container start it only checks the install markers against the plan (no git, no network) and refuses to
# start, naming `machine-runtime install --profile ...`, when one is missing or broken (an intact install made
# from another source than the container's environment names is used, with a warning). A bundle folder
# from the build context is installed from its copy (removed afterwards); a URL is passed through.
# The Debian packages the install needs are added in the same layer, and those needed only to install
# (curl) removed again, so they cost nothing in the image. (Playwright's `--with-deps` runs apt-get.)
COPY --from=builder /out/worker-bundle /tmp/worker-bundle
RUN set -eu; \
    case "${WORKER_BUNDLE_URL}" in \
        "" | http://* | https://* | file://*) ;; \
        *) WORKER_BUNDLE_URL=/tmp/worker-bundle; export WORKER_BUNDLE_URL ;; \
    esac; \
    packages="$(machine-runtime install --profile "${PROFILE}" --system-packages)"; \
    if [ -n "$packages" ]; then \
        apt-get update; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $packages; \
    fi; \
    machine-runtime install --profile "${PROFILE}"; \
    case " $packages " in \
        *" curl "*) DEBIAN_FRONTEND=noninteractive apt-get purge -y --auto-remove curl ;; \
    esac; \
    rm -rf /tmp/worker-bundle /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=1s --timeout=5s --start-period=5m --retries=30 CMD ["machine-runtime", "health", "--wait", "3"]
ENTRYPOINT ["machine-runtime"]
CMD ["up"]
