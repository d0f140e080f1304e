#!/usr/bin/env bash
# The Docker path without a container registry, in one command: builds generated/<profile>'s machine image
# from what this host makes itself, then runs docker-compose on it. Steps (each says what it does):
#
#   1. the base image machine-base:bookworm (scripts/docker-base-image.sh: debootstrap + docker import;
#      skipped when it exists);
#   2. for a profile with a local Redis, the stand-in of redis:7-alpine, machine-redis:bookworm (Debian's
#      redis-server 7 on that base, machine-runtime/tests/fixtures/docker/redis.Dockerfile; skipped when it
#      exists);
#   3. machine-runtime and machine-simulate built by cargo (release; CARGO_BUILD_PROFILE=dev for a debug
#      build) and copied into .docker-prebuilt/ (git-ignored, inside the build context);
#   4. the worker bundle: WORKER_BUNDLE_URL as given (a tarball URL), or a folder, copied into
#      .docker-prebuilt/worker-bundle; unset: the queue's release (needs GitHub);
#   5. docker-compose build of the machine image (tag machine-runtime:<profile>, as the compose file says)
#      with BASE_IMAGE, BUILDER_IMAGE (no Rust image), MACHINE_RUNTIME_BINARY and WORKER_BUNDLE_URL;
#   6. removes the dangling images the build left: the classic builder's stage image (label
#      machine-runtime.stage=builder) and the tag's previous image when nothing else uses it;
#   7. docker-compose ARGS (default: up -d) with .docker-prebuilt/<profile>.override.yaml, which names the
#      Redis stand-in; pass any docker-compose command the same way (the override must be named each time).
#
# Usage: bash scripts/docker-local.sh PROFILE [docker-compose args, default: up -d]
#        bash scripts/docker-local.sh full-local                 # build and start
#        bash scripts/docker-local.sh full-local --no-build exec machine machine-runtime job push --service simulation
#        bash scripts/docker-local.sh full-local --no-build down
# `--no-build` first skips steps 1-6. Needs a running Docker engine, docker-compose, cargo, and root (or
# sudo) for debootstrap the first time. Exit non-zero on the first failing step, naming it.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "docker-local: $*" >&2; }
fail() { say "error: $*"; exit 1; }

profile="${1:-}"
[ -n "$profile" ] || fail "usage: bash scripts/docker-local.sh PROFILE [docker-compose args]; profiles: $(cd profiles && ls ./*.json | sed 's|^\./||; s|\.json$||' | tr '\n' ' ')"
shift
dir="generated/$profile"
[ -f "$dir/docker-compose.yaml" ] || fail "no $dir/docker-compose.yaml: run cargo xtask env-build $profile first (or pick one of: $(ls generated | tr '\n' ' '))"
build=1
if [ "${1:-}" = "--no-build" ]; then build=0; shift; fi
[ $# -gt 0 ] || set -- up -d
command -v docker >/dev/null && docker info >/dev/null 2>&1 \
  || fail "the Docker engine does not answer; start it (sudo sh -c 'setsid dockerd >/tmp/dockerd.log 2>&1 &') or install docker.io"
command -v docker-compose >/dev/null || fail "docker-compose is missing: apt-get install -y docker-compose"

base=machine-base:bookworm
redis_image=machine-redis:bookworm
image="machine-runtime:$profile"
prebuilt=.docker-prebuilt
override="$prebuilt/$profile.override.yaml"
mkdir -p "$prebuilt"
# The Redis stand-in only where the compose file has a Redis service of the official image.
if grep -q '^  redis:$' "$dir/docker-compose.yaml" && grep -q 'image: "redis:' "$dir/docker-compose.yaml"; then
  printf 'services:\n  redis:\n    image: "%s"\n' "$redis_image" > "$override.partial"
else
  printf 'services: {}\n' > "$override.partial"
fi
mv "$override.partial" "$override"

if [ "$build" = 1 ]; then
  say "1/6 base image $base"
  if [ "$(id -u)" = 0 ] || docker image inspect "$base" >/dev/null 2>&1; then
    bash scripts/docker-base-image.sh "$base"
  else
    sudo bash scripts/docker-base-image.sh "$base"
  fi

  if grep -q "$redis_image" "$override"; then
    say "2/6 Redis image $redis_image (Debian's redis-server on $base)"
    if docker image inspect "$redis_image" >/dev/null 2>&1; then
      say "    $redis_image exists, nothing to do"
    else
      empty="$(mktemp -d)"
      docker build --network host --build-arg "BASE_IMAGE=$base" -t "$redis_image" \
        -f machine-runtime/tests/fixtures/docker/redis.Dockerfile "$empty" || { rmdir "$empty"; fail "building $redis_image"; }
      rmdir "$empty"
    fi
  else
    say "2/6 no local Redis in $profile, no Redis image"
  fi

  cargo_profile="${CARGO_BUILD_PROFILE:-release}"
  say "3/6 cargo build --profile $cargo_profile -p machine-runtime --bins (machine-runtime, machine-simulate)"
  cargo build --profile "$cargo_profile" -p machine-runtime --bins
  target_dir="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
  out_dir="$target_dir/$([ "$cargo_profile" = dev ] && echo debug || echo "$cargo_profile")"
  for bin in machine-runtime machine-simulate; do
    cp "$out_dir/$bin" "$prebuilt/$bin.partial" && mv "$prebuilt/$bin.partial" "$prebuilt/$bin"
  done

  bundle_arg=()
  case "${WORKER_BUNDLE_URL:-}" in
    "") say "4/6 worker bundle: the queue's release (WORKER_BUNDLE_URL unset)" ;;
    http://* | https://*) say "4/6 worker bundle: $WORKER_BUNDLE_URL"; bundle_arg=(--build-arg "WORKER_BUNDLE_URL=$WORKER_BUNDLE_URL") ;;
    *)
      src="${WORKER_BUNDLE_URL#file://}"
      [ -d "$src" ] || fail "WORKER_BUNDLE_URL=$WORKER_BUNDLE_URL is neither a tarball URL nor a folder"
      say "4/6 worker bundle: the folder $src, copied into $prebuilt/worker-bundle"
      rm -rf "$prebuilt/worker-bundle.partial" && cp -R "$src" "$prebuilt/worker-bundle.partial"
      rm -rf "$prebuilt/worker-bundle" && mv "$prebuilt/worker-bundle.partial" "$prebuilt/worker-bundle"
      bundle_arg=(--build-arg "WORKER_BUNDLE_URL=$prebuilt/worker-bundle")
      ;;
  esac

  say "5/6 docker-compose build machine ($image)"
  previous="$(docker image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)"
  (cd "$dir" && docker-compose -f docker-compose.yaml -f "../../$override" build \
    --build-arg "BASE_IMAGE=$base" --build-arg "BUILDER_IMAGE=$base" \
    --build-arg "MACHINE_RUNTIME_BINARY=$prebuilt/machine-runtime" "${bundle_arg[@]}" machine) \
    || fail "building $image (the output above says which step)"

  say "6/6 removing the dangling images the build left"
  docker image prune -f --filter label=machine-runtime.stage=builder >/dev/null
  current="$(docker image inspect -f '{{.Id}}' "$image")"
  if [ -n "$previous" ] && [ "$previous" != "$current" ] \
     && [ "$(docker image inspect -f '{{len .RepoTags}}' "$previous" 2>/dev/null || echo 1)" = 0 ]; then
    docker image rm "$previous" >/dev/null 2>&1 && say "    removed the previous $image (${previous:7:12})" || say "    the previous $image is still used by a container; kept"
  fi
  say "built $image ($(docker image inspect -f '{{.Size}}' "$image") bytes)"
fi

say "docker-compose $* (in $dir, with $override)"
cd "$dir"
exec docker-compose -f docker-compose.yaml -f "../../$override" "$@"
