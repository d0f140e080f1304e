#!/usr/bin/env bash
# Checks the real NVML path on a GPU machine: `machine-runtime gpus` must list the same GPUs (count, UUIDs in
# order, MIG UUIDs) as `nvidia-smi -L`. Exit 0 when they agree, 1 when they differ, 2 when it cannot check.
#
# Usage: scripts/gpu-check.sh            (builds with cargo build --release -p machine-runtime)
#        MACHINE_RUNTIME_BIN=path/to/machine-runtime scripts/gpu-check.sh   (uses a prebuilt binary)
set -euo pipefail

cd "$(dirname "$0")/.."

if [[ -n "${MACHINE_RUNTIME_BIN:-}" ]]; then
    bin="$MACHINE_RUNTIME_BIN"
else
    cargo build --release -p machine-runtime
    bin="target/release/machine-runtime"
fi

if ! command -v nvidia-smi >/dev/null; then
    echo "gpu-check: nvidia-smi not found; run this on a machine with the NVIDIA driver" >&2
    exit 2
fi

# nvidia-smi ignores CUDA_VISIBLE_DEVICES, so compare against an unrestricted, real (not fake) inventory.
run() { env -u CUDA_VISIBLE_DEVICES -u MACHINE_FAKE_GPUS "$bin" "$@"; }

echo "== machine-runtime gpus --format text"
run gpus --format text
echo "== machine-runtime gpus --format json"
json="$(run gpus --format json)"
echo "$json"
echo "== nvidia-smi -L"
smi="$(nvidia-smi -L)"
echo "$smi"

# Pretty JSON puts each "uuid" on its own line; GPU- and MIG- prefixes tell GPUs from MIG devices.
rt_gpus="$(grep -o '"uuid": "GPU-[^"]*"' <<<"$json" | sed 's/.*"\(GPU-[^"]*\)"/\1/' || true)"
rt_mig="$(grep -o '"uuid": "MIG-[^"]*"' <<<"$json" | sed 's/.*"\(MIG-[^"]*\)"/\1/' | sort || true)"
# Count GPU lines by their UUID, never by line count: MIG devices appear as extra indented lines.
smi_gpus="$(grep -o 'UUID: GPU-[^)]*' <<<"$smi" | sed 's/UUID: //' || true)"
smi_mig="$(grep -o 'UUID: MIG-[^)]*' <<<"$smi" | sed 's/UUID: //' | sort || true)"

count() { if [[ -z "$1" ]]; then echo 0; else wc -l <<<"$1" | tr -d ' '; fi; }

status=0
echo "== comparison"
echo "GPUs: machine-runtime $(count "$rt_gpus"), nvidia-smi $(count "$smi_gpus")"
if [[ "$rt_gpus" != "$smi_gpus" ]]; then
    echo "gpu-check: GPU UUIDs differ (in order)" >&2
    diff <(echo "$rt_gpus") <(echo "$smi_gpus") >&2 || true
    status=1
fi
echo "MIG devices: machine-runtime $(count "$rt_mig"), nvidia-smi $(count "$smi_mig")"
if [[ "$rt_mig" != "$smi_mig" ]]; then
    echo "gpu-check: MIG device UUIDs differ" >&2
    diff <(echo "$rt_mig") <(echo "$smi_mig") >&2 || true
    status=1
fi
if [[ $status -eq 0 ]]; then
    echo "gpu-check: ok, machine-runtime and nvidia-smi agree"
fi
exit $status
