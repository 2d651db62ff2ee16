# Worker image: a second Docker engine (Debian's docker.io) in a privileged container, so that one
# machine can hold a two-host swarm: the host's engine as manager, this engine as worker.
# Built by scripts/build_worker_image.sh with scripts/ as the build context. BASE is the offline
# Debian bookworm base (edge-testbed-base:bookworm, bootstrapped by `make image`) or any
# Debian bookworm image; the docker.io package comes from the base's apt sources.
ARG BASE=edge-testbed-base:bookworm
FROM ${BASE}
# iptables: dockerd programs NAT and filter rules for its bridge and published ports;
# kmod: dockerd runs modprobe for overlay/bridge/vxlan (harmless when built in or loaded).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      docker.io iptables kmod ca-certificates \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb
COPY worker-entrypoint.sh /usr/local/bin/worker-entrypoint
# The inner engine's images and containers: a volume, i.e. a folder on the host's own filesystem,
# where overlay2 works (it does not on the container's overlay root); removed with the container.
VOLUME /var/lib/docker
ENTRYPOINT ["worker-entrypoint"]
