#!/bin/sh
# Entrypoint of the worker image: runs dockerd inside this (privileged) container.
#   - storage: overlay2 where /var/lib/docker accepts an overlay mount (the image's volume, on the
#     host's filesystem), vfs otherwise (always works, copies every layer); DOCKERD_STORAGE_DRIVER
#     forces one;
#   - cgroups: the cgroupfs driver (no systemd in here), one private cgroup namespace;
#   - MTU: that of this container's eth0, so the inner bridge and overlay fit inside the outer one.
# Arguments are passed on to dockerd.
set -eu
log() { echo "[worker] $*"; }

# Mount propagation for the inner engine's volumes. /sys and the cgroup hierarchies are writable
# in a --privileged container; where the engine cannot start a privileged container (its own
# bounding set lacks a capability: runc fails with "unable to apply caps") it runs with every
# other capability and unconfined system paths instead, and they come read-only: remount them.
mount --make-rshared / 2>/dev/null || true
mount -o remount,rw /sys 2>/dev/null || true
for d in /sys/fs/cgroup/*/; do
  mount -o remount,bind,rw "$d" 2>/dev/null || true
done

driver=${DOCKERD_STORAGE_DRIVER:-}
if [ -z "$driver" ]; then
  probe=/var/lib/docker/.overlay-probe
  rm -rf "$probe" && mkdir -p "$probe/lower" "$probe/upper" "$probe/work" "$probe/merged"
  if mount -t overlay overlay -o "lowerdir=$probe/lower,upperdir=$probe/upper,workdir=$probe/work" \
       "$probe/merged" 2>/dev/null; then
    umount "$probe/merged"
    driver=overlay2
  else
    driver=vfs
  fi
  rm -rf "$probe"
fi

mtu=$(cat /sys/class/net/eth0/mtu 2>/dev/null || echo 1500)
rm -f /var/run/docker.pid /var/run/docker/containerd/containerd.pid
log "dockerd: storage driver $driver, cgroupfs, mtu $mtu"
exec dockerd --host=unix:///var/run/docker.sock --storage-driver="$driver" \
  --exec-opt native.cgroupdriver=cgroupfs --mtu="$mtu" "$@"
