#!/usr/bin/env bash
# Watches a fake-GPU simulation machine report to a local redis-server, the way the API sees it: a
# subscriber on machine:status:* prints one line per message while the script kills a worker, takes
# Redis away for OUTAGE_SECONDS (default 20) and finally presses Ctrl-C on the machine.
#
# Needs redis-server, redis-cli, curl and python3. Usage: scripts/broker-demo.sh
#   MACHINE_RUNTIME_BIN=path/to/machine-runtime scripts/broker-demo.sh   (uses a prebuilt binary)
set -euo pipefail

cd "$(dirname "$0")/.."
if [[ -n "${MACHINE_RUNTIME_BIN:-}" ]]; then
    bin="$MACHINE_RUNTIME_BIN"
else
    cargo build -q -p machine-runtime
    bin="target/debug/machine-runtime"
fi
outage="${OUTAGE_SECONDS:-20}"
dir="$(mktemp -d)"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
redis_port="$(free_port)"
health_port="$(free_port)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true
    rm -rf "$dir"
}
trap cleanup EXIT

start_redis() {
    redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" \
        --logfile "$dir/redis.log" --daemonize yes
    until redis-cli -p "$redis_port" ping >/dev/null 2>&1; do sleep 0.05; done
}
say() { printf '%s demo: %s\n' "$(date +%T.%3N)" "$*"; }
health() { curl -s "http://127.0.0.1:$health_port/health" | python3 -c '
import json, sys
b = json.load(sys.stdin)
print("healthy=%s warnings=%s broker=%s" % (b["healthy"], b["warnings"], b["broker"].get("summary")))'; }
app_pids() { curl -s "http://127.0.0.1:$health_port/status" | python3 -c '
import json, sys
print(" ".join("%s:%s/%s" % (a["name"], a["pid"], a["restarts"]) for a in json.load(sys.stdin)["apps"]))'; }

start_redis
# The subscriber reconnects after the outage; each message becomes one line.
(
    while true; do
        redis-cli -p "$redis_port" --csv psubscribe 'machine:status:*' 2>/dev/null || true
        sleep 0.2
    done
) | python3 -u -c '
import csv, json, sys, time
for row in csv.reader(sys.stdin, escapechar="\\", doublequote=False):
    if len(row) != 4 or row[0] != "pmessage":
        continue
    m = json.loads(row[3])
    workers = m["status"]["workers"]
    states = " ".join("%s=%s%s" % (k.rsplit("-", 1)[1], w["status"], "" if w["is_connected"] else "(x)")
                      for k, w in sorted(workers.items()))
    gpus = ",".join(str(w["gpu_id"]) for _, w in sorted(m["structure"]["workers"].items()))
    print("%s subscriber: %-13s phase=%-8s workers %s gpus %s" % (time.strftime("%H:%M:%S"),
          m["update_type"], m["status"]["machine"]["phase"], states, gpus), flush=True)
' &
pids+=($!)
sleep 0.5

# The workers are the worker bundle's: install it first (the real one, or the test stand-in that follows
# its contract when WORKER_BUNDLE_URL is not set and nothing can be downloaded).
repo="$(cd "$(dirname "$0")/.." && pwd)"
say "installing the worker bundle (${WORKER_BUNDLE_URL:-the test stand-in})"
WORKSPACE_DIR="$dir" WORKER_BUNDLE_URL="${WORKER_BUNDLE_URL:-$repo/machine-runtime/tests/fixtures/worker-bundle}" \
    "$bin" install --profile full-local >"$dir/install.log" 2>&1 \
    || { say "install failed:"; cat "$dir/install.log"; exit 1; }
say "starting the machine (profile full-local, 2 fake GPUs, status every 2 s)"
MACHINE_FAKE_GPUS=2 WORKSPACE_DIR="$dir" MACHINE_ID=demo-machine \
    HUB_REDIS_URL="redis://127.0.0.1:$redis_port" MACHINE_STATUS_UPDATE_INTERVAL_SECONDS=2 \
    "$bin" up --profile full-local --health-port "$health_port" >"$dir/runtime.log" 2>&1 &
runtime=$!
pids+=("$runtime")
until curl -sf "http://127.0.0.1:$health_port/health" >/dev/null; do
    kill -0 "$runtime" 2>/dev/null || { say "the machine did not start:"; cat "$dir/runtime.log"; exit 1; }
    sleep 0.1
done
say "healthy: $(health)"
sleep 5

victim="$(curl -s "http://127.0.0.1:$health_port/status" | python3 -c '
import json, sys
print(next(a["pid"] for a in json.load(sys.stdin)["apps"] if a["name"] == "simulation-websocket-worker-1"))')"
say "kill -9 simulation-websocket-worker-1 (pid $victim)"
kill -9 "$victim"
sleep 4

before="$(app_pids)"
say "apps before the outage: $before"
say "killing redis for $outage s"
redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true
sleep 3
say "during the outage: $(health)"
sleep $((outage - 3))
say "restarting redis"
start_redis
for _ in $(seq 100); do health | grep -q 'broker=broker connected' && break; sleep 0.1; done
say "broker back: $(health)"
sleep 3
after="$(app_pids)"
say "after the outage: $(health)"
say "apps after the outage: $after"
[[ "$before" == "$after" ]] && say "no app restarted during the outage" || say "APPS CHANGED during the outage"

say "Ctrl-C to the machine"
kill -INT "$runtime"
wait "$runtime" && say "machine exited 0" || say "machine exited $?"
sleep 0.5
say "runtime log lines about redis and the stop:"
grep -E 'broker:|redis|received|stopped in' "$dir/runtime.log" | grep -v '^\[' || true
