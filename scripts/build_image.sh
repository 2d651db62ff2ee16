#!/usr/bin/env bash
# Build the node image edge-testbed-node:<version> (version from pyproject.toml).
#
#   scripts/build_image.sh            CPU image from node/Dockerfile
#   scripts/build_image.sh --gpu      GPU image from node/Dockerfile.gpu (needs its CUDA base image)
#
# Environment: BASE_IMAGE (default python:3.11-slim, or nvidia/cuda:... with --gpu),
#              PULL_TIMEOUT seconds (default 20).
#
# Base image, in order: the requested image if it is present locally, or if `docker pull` gets it
# within PULL_TIMEOUT; else (CPU only) an offline Debian bookworm base bootstrapped once with
# debootstrap from the Debian mirror named in this host's apt sources and `docker import`ed as
# edge-testbed-base:bookworm. The choice and its reason are printed: a fallback is never silent.
# Python packages come from wheels downloaded on the host into build/wheels (once per
# requirements file), so the build itself needs no network. Re-running with nothing changed is
# all cache hits.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[build_image] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

GPU=0
[[ "${1:-}" == "--gpu" ]] && GPU=1

command -v docker >/dev/null || die "docker CLI not found"
docker version --format '{{.Server.Version}}' >/dev/null 2>&1 || die "no Docker engine answers"

VERSION=$(sed -n '/^\[project\]/,/^\[/{s/^version *= *"\([^"]*\)".*/\1/p}' pyproject.toml | head -1)
[[ -n "$VERSION" ]] || die "cannot read [project] version from pyproject.toml"

if [[ $GPU == 1 ]]; then
  DOCKERFILE=node/Dockerfile.gpu
  REQS=requirements-node-gpu.txt
  WHEELS=build/wheels-gpu
  TAG="edge-testbed-node-gpu:$VERSION"
  BASE=${BASE_IMAGE:-nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04}
  PYVER=3.12   # the python3 of that Ubuntu 24.04 base; wheels must match it
else
  DOCKERFILE=node/Dockerfile
  REQS=requirements-node.txt
  WHEELS=build/wheels
  TAG="edge-testbed-node:$VERSION"
  BASE=${BASE_IMAGE:-python:3.11-slim}
  PYVER=3.11   # python:3.11-slim and Debian bookworm's python3 are both 3.11
fi
OFFLINE_BASE=edge-testbed-base:bookworm
PULL_TIMEOUT=${PULL_TIMEOUT:-20}

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

# The Debian archive URI for suite "bookworm" from the host's apt sources (deb822 *.sources or
# one-line *.list); never hard-coded, so it follows the host's mirror or proxy.
debian_mirror() {
  python3 - <<'PY'
import glob, re, sys
files = glob.glob("/etc/apt/sources.list") + sorted(glob.glob("/etc/apt/sources.list.d/*.list"))
for f in files:                                   # one-line style: deb [opts] URI SUITE COMP...
    for line in open(f, encoding="utf-8", errors="replace"):
        line = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
        if len(line) >= 3 and line[0] == "deb" and line[2] == "bookworm":
            print(line[1]); sys.exit(0)
for f in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):   # deb822 stanzas
    text = open(f, encoding="utf-8", errors="replace").read()
    for stanza in re.split(r"\n\s*\n", text):
        fields = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line:
                continue
            k, v = line.split(":", 1)
            fields[k.strip().lower()] = v.split()
        if "deb" in fields.get("types", []) and "bookworm" in fields.get("suites", []) \
                and fields.get("enabled", ["yes"])[0].lower() != "no" and fields.get("uris"):
            print(fields["uris"][0]); sys.exit(0)
sys.exit(1)
PY
}

bootstrap_offline_base() {
  [[ $(id -u) == 0 ]] || die "bootstrapping $OFFLINE_BASE needs root (debootstrap)"
  local mirror dir
  mirror=$(debian_mirror) || die "no 'bookworm' Debian source found in /etc/apt/sources.list{,.d}"
  if ! command -v debootstrap >/dev/null; then
    log "installing debootstrap with apt-get"
    apt-get install -y --no-install-recommends debootstrap >/dev/null \
      || { apt-get update >/dev/null && apt-get install -y --no-install-recommends debootstrap >/dev/null; } \
      || die "cannot install debootstrap"
  fi
  dir=$(mktemp -d "${TMPDIR:-/tmp}/edge-testbed-rootfs.XXXXXX")
  trap 'rm -rf "$dir"' EXIT
  log "debootstrap bookworm (minbase + python3, python3-venv, iproute2, ca-certificates) from $mirror"
  debootstrap --variant=minbase --include=python3,python3-venv,iproute2,ca-certificates \
    bookworm "$dir" "$mirror" >"build/debootstrap.log" 2>&1 \
    || die "debootstrap failed, see build/debootstrap.log"
  # Smaller image: no package cache or lists (the image never runs apt).
  rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/* "$dir"/usr/share/doc/* \
         "$dir"/usr/share/man/* "$dir"/usr/share/locale/*
  tar -C "$dir" --numeric-owner --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' -c . \
    | docker import --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' - "$OFFLINE_BASE" >/dev/null
  rm -rf "$dir"; trap - EXIT
  log "imported $OFFLINE_BASE"
}

mkdir -p build
pull_err="timed out after ${PULL_TIMEOUT}s"
if image_exists "$BASE"; then
  log "base: $BASE (found locally)"
elif pull_err=$(timeout "$PULL_TIMEOUT" docker pull -q "$BASE" 2>&1 >/dev/null); then
  log "base: $BASE (pulled)"
elif [[ $GPU == 1 ]]; then
  die "base $BASE is not local and cannot be pulled (${pull_err:-timeout}); the GPU image has no offline fallback (it needs CUDA)"
elif image_exists "$OFFLINE_BASE"; then
  log "base: $OFFLINE_BASE (FALLBACK: $BASE is not local and could not be pulled; offline base cached)"
  log "  pull error: ${pull_err:-timed out after ${PULL_TIMEOUT}s}"
  BASE=$OFFLINE_BASE
else
  log "base: $OFFLINE_BASE (FALLBACK: $BASE is not local and could not be pulled; bootstrapping it once)"
  log "  pull error: ${pull_err:-timed out after ${PULL_TIMEOUT}s}"
  bootstrap_offline_base
  BASE=$OFFLINE_BASE
fi

# Wheels for the image's Python (cp$PYVER, manylinux x86_64), downloaded once per requirements
# file: the stamp holds the file's hash, so editing the pins triggers a fresh download.
want=$(sha256sum "$REQS" | cut -d' ' -f1)
if [[ "$(cat "$WHEELS/.requirements.sha256" 2>/dev/null)" != "$want" ]]; then
  log "downloading wheels for $REQS into $WHEELS"
  rm -rf "$WHEELS"; mkdir -p "$WHEELS"
  PIP=pip; [[ -x .venv/bin/pip ]] && PIP=.venv/bin/pip
  "$PIP" download --quiet --dest "$WHEELS" --only-binary=:all: --implementation cp \
    --python-version "$PYVER" --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -r "$REQS" || die "pip download failed"
  echo "$want" >"$WHEELS/.requirements.sha256"
else
  log "wheels: $WHEELS up to date"
fi

log "docker build -f $DOCKERFILE -t $TAG (BASE=$BASE)"
start=$(date +%s)
docker build --build-arg "BASE=$BASE" -f "$DOCKERFILE" -t "$TAG" . >build/docker-build.log 2>&1 \
  || { tail -n 30 build/docker-build.log >&2; die "docker build failed, full log in build/docker-build.log"; }
log "built $TAG in $(( $(date +%s) - start ))s ($(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}'))"
