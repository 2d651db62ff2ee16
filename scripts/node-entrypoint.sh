#!/bin/sh
# Entrypoint of the node image: starts as root, then runs "$@" as the unprivileged user "node".
# tc needs CAP_NET_ADMIN, and the node shapes its links only once it knows its peers (after
# start-up), so instead of shaping here we keep exactly that one capability across the user
# switch as an *ambient* capability: the node process and the tc it spawns have NET_ADMIN and
# nothing else of root. Without --cap-add NET_ADMIN the node still starts, unprivileged, and tc
# fails loudly when used. EDGE_NODE_AS_ROOT=1 keeps root (escape hatch, e.g. for debugging).
set -e
if [ "$(id -u)" = 0 ] && [ "${EDGE_NODE_AS_ROOT:-0}" != 1 ]; then
  bnd=$(sed -n 's/^CapBnd:[[:space:]]*//p' /proc/self/status)
  if [ $(( 0x$bnd >> 12 & 1 )) = 1 ]; then   # bit 12 = CAP_NET_ADMIN in the bounding set
    exec setpriv --reuid=node --regid=node --init-groups \
      --inh-caps=+net_admin --ambient-caps=+net_admin -- "$@"
  fi
  exec setpriv --reuid=node --regid=node --init-groups -- "$@"
fi
exec "$@"
