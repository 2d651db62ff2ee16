#!/usr/bin/env bash
# Build the worker image edge-testbed-worker:<version> (version from pyproject.toml): a Docker
# engine (Debian's docker.io) to run in a privileged container that joins a swarm as a second
# host (tests/swarm_helpers.py).
#
# Environment: BASE_IMAGE (a Debian bookworm image; default: the offline base
#              edge-testbed-base:bookworm that `make image` bootstraps where no registry answers,
#              else debian:bookworm-slim), PULL_TIMEOUT seconds (default 20).
#
# The build runs apt-get (docker.io from the base's Debian sources). The base used is printed.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[build_worker_image] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

command -v docker >/dev/null || die "docker CLI not found"
docker version --format '{{.Server.Version}}' >/dev/null 2>&1 || die "no Docker engine answers"

VERSION=$(sed -n '/^\[project\]/,/^\[/{s/^version *= *"\([^"]*\)".*/\1/p}' pyproject.toml | head -1)
[[ -n "$VERSION" ]] || die "cannot read [project] version from pyproject.toml"
TAG="edge-testbed-worker:$VERSION"
OFFLINE_BASE=edge-testbed-base:bookworm
PUBLIC_BASE=debian:bookworm-slim
PULL_TIMEOUT=${PULL_TIMEOUT:-20}

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

if [[ -n "${BASE_IMAGE:-}" ]]; then
  BASE=$BASE_IMAGE
  image_exists "$BASE" || timeout "$PULL_TIMEOUT" docker pull -q "$BASE" >/dev/null \
    || die "base $BASE is not local and cannot be pulled"
  log "base: $BASE (BASE_IMAGE)"
elif image_exists "$OFFLINE_BASE"; then
  BASE=$OFFLINE_BASE
  log "base: $BASE (offline base, found locally)"
elif image_exists "$PUBLIC_BASE" || timeout "$PULL_TIMEOUT" docker pull -q "$PUBLIC_BASE" >/dev/null 2>&1; then
  BASE=$PUBLIC_BASE
  log "base: $BASE"
else
  die "neither $OFFLINE_BASE nor $PUBLIC_BASE is available: run 'make image' first (it bootstraps $OFFLINE_BASE offline)"
fi

mkdir -p build
log "docker build -f scripts/worker.Dockerfile -t $TAG (BASE=$BASE)"
start=$(date +%s)
docker build --build-arg "BASE=$BASE" -f scripts/worker.Dockerfile -t "$TAG" scripts \
  >build/docker-build-worker.log 2>&1 \
  || { tail -n 30 build/docker-build-worker.log >&2; die "docker build failed, full log in build/docker-build-worker.log"; }
log "built $TAG in $(( $(date +%s) - start ))s ($(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}'))"
