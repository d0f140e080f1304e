#!/usr/bin/env bash
# THE test command (README): installs and starts what the tests drive for real, then runs the whole suite
# with --no-fail-fast (every test binary and the doc-tests run even when one fails) and ends with one line,
# "N passed, N failed". Exit 0 only when every test passed.
#
# Usage: bash scripts/test.sh [cargo test options, e.g. --locked] [-- test-name filter]
# Installing needs root or sudo (apt-get, npm -g, pip); without either, it names what is missing and the
# one command that installs it, and stops. MACHINE_SKIP_DOCKER_TEST=1 and MACHINE_SKIP_NAMESPACE_TEST=1
# skip those tests on purpose (loudly); .ci/run unsets both. Any CARGO_TARGET_DIR works.
set -uo pipefail
cd "$(dirname "$0")/.."

say() { echo "test.sh: $*" >&2; }

sudo=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo="sudo"; else sudo="none"; fi
fi
# Runs an install command as root, or says what to run when that cannot be done here.
as_root() {
  if [ "$sudo" = none ]; then
    say "missing: $1"
    say "install it with: sudo ${*:2}"
    say "0 passed, 0 failed (the suite did not run: tools missing)"
    exit 2
  fi
  say "installing $1 ($(printf '%s ' "${@:2}"))"
  $sudo "${@:2}" || { say "installing $1 failed"; exit 2; }
}

# System tools the tests drive for real: redis-server (broker tests), docker-compose v1 (reads the generated
# compose files), the Docker engine and debootstrap (the Docker end-to-end test builds its base image without
# a registry), git (installer tests), node/npm (PM2 and .env readers), unshare (PID-namespace tests).
missing=()
command -v redis-server   >/dev/null || missing+=(redis-server)
command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v dockerd        >/dev/null || missing+=(docker.io)
command -v debootstrap    >/dev/null || missing+=(debootstrap)
command -v git            >/dev/null || missing+=(git)
command -v node           >/dev/null || missing+=(nodejs)
command -v npm            >/dev/null || missing+=(npm)
command -v python3        >/dev/null || missing+=(python3)
command -v unshare        >/dev/null || missing+=(util-linux)
# prometheus and promtool: the /metrics test scrapes a machine with a real Prometheus (tests/it/metrics.rs).
command -v promtool       >/dev/null || missing+=(prometheus)
if [ ${#missing[@]} -gt 0 ]; then
  as_root "${missing[*]}" sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ${missing[*]} >/dev/null"
fi
if ! command -v pm2 >/dev/null || ! command -v pm2-runtime >/dev/null; then
  as_root "pm2 (npm)" npm install -g --silent pm2@7
fi

# The official Kubernetes schemas, offline, for the strict check of generated/*/kubernetes.yaml (the tests
# pin the Kubernetes version they validate against; the package pins which schemas exist).
if ! command -v kubernetes-validate >/dev/null || [ "$(kubernetes-validate --version 2>/dev/null)" != "1.37.0" ]; then
  python3 -m pip --version >/dev/null 2>&1 \
    || as_root "python3-pip" sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null"
  # A Debian-managed python3 refuses plain installs (PEP 668); the tool is self-contained, so allow it there.
  as_root "kubernetes-validate 1.37.0 (PyPI)" sh -c "python3 -m pip install --quiet --disable-pip-version-check kubernetes-validate==1.37.0 \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages kubernetes-validate==1.37.0"
fi

# The Docker end-to-end tests (machine-runtime/tests/it/docker.rs, and swarm.rs on its Swarm) run against a real engine: start one
# when none answers (unless the developer opted out of that test).
if [ "${MACHINE_SKIP_DOCKER_TEST:-}" != 1 ]; then
  dsudo="$sudo"; [ "$dsudo" = none ] && dsudo=""
  if ! $dsudo docker info >/dev/null 2>&1; then
    [ "$sudo" = none ] && { say "the Docker engine is not running and this user cannot start it"; say "start it with: sudo sh -c 'setsid dockerd >/tmp/dockerd.log 2>&1 &' (or set MACHINE_SKIP_DOCKER_TEST=1)"; say "0 passed, 0 failed (the suite did not run: no Docker engine)"; exit 2; }
    say "starting dockerd (log: /tmp/test-dockerd.log)"
    $sudo sh -c 'setsid dockerd >/tmp/test-dockerd.log 2>&1 &'
    for _ in $(seq 60); do $dsudo docker info >/dev/null 2>&1 && break; sleep 1; done
    $dsudo docker info >/dev/null 2>&1 || { say "dockerd did not start:"; tail -n 20 /tmp/test-dockerd.log >&2; exit 2; }
  fi
fi

# PM2's version from its package.json: running `pm2 --version` starts PM2's daemon in the user's
# ~/.pm2, which then outlives the tests.
pm2_version() {
  node -p "require('$(dirname "$(readlink -f "$(command -v pm2)")")/../package.json').version"
}
say "tools: redis $(redis-server --version | cut -d' ' -f3), docker-compose $(docker-compose version --short), pm2 $(pm2_version), node $(node --version), kubernetes-validate $(kubernetes-validate --version)"
say "running: cargo test --workspace --no-fail-fast $*"

log="$(mktemp /tmp/machine-test.XXXXXX.log)"
trap 'rm -f "$log"' EXIT
cargo test --workspace --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}

# One "test result: ok. 5 passed; 1 failed; ..." line per test binary and doc-test run.
read -r passed failed < <(awk '/^test result: /{
    for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i }
  } END { print p + 0, f + 0 }' "$log")
echo
if [ "$status" != 0 ] && [ "$failed" = 0 ]; then
  # Nothing failed by name, yet cargo failed: a build error or a test binary that crashed.
  echo "$passed passed, $failed failed (cargo test exited with $status: a build error or a crashed test binary, see above)"
  exit "$status"
fi
echo "$passed passed, $failed failed"
[ "$status" = 0 ] && [ "$failed" = 0 ]
