"""Glue between the node and node/tc.py: shape this node's egress for the links it was given.

The links come either at start (environment variable EDGE_TC_PEERS, a JSON list of
{"device", "ip", "rate_bps", "delay_s"}: how the Docker testbed and docker-compose.yml start
nodes) or with a LoadRequest (Peer.ip, Peer.tc_rate_bps, Peer.tc_delay_s). The same links are
not shaped twice; different ones replace the old shaping. Peers with a rate get an htb class
(netem under it for the delay where the kernel has netem); the delay of every other shaped link
is left to the node, which holds frames itself: `Shaping.node_delay_s` says how long, per ip.

What the kernel holds is read back, checked against what was asked and logged; a tc error is
raised (TcError), never ignored.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import threading
from dataclasses import dataclass, field

from node import tc

log = logging.getLogger("node.shaping")

ENV = "EDGE_TC_PEERS"
IFACE_ENV = "EDGE_TC_IFACE"


@dataclass(frozen=True)
class LinkSpec:
    device: str
    ip: str
    rate_bps: int
    delay_s: float


@dataclass
class Shaping:
    iface: str = ""
    netem: bool = False
    links: tuple[LinkSpec, ...] = ()
    node_delay_s: dict[str, float] = field(default_factory=dict)  # peer ip -> delay the node adds
    readback: str = ""


_lock = threading.Lock()
_current: Shaping | None = None
_netem: bool | None = None


def current() -> Shaping | None:
    return _current


def iface_for(ip: str) -> str:
    """The interface that routes to `ip` (eth0 in a container), or EDGE_TC_IFACE when set."""
    if os.environ.get(IFACE_ENV):
        return os.environ[IFACE_ENV]
    try:
        out = subprocess.run(["ip", "-o", "route", "get", ip], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    m = re.search(r"\bdev (\S+)", out)
    return m.group(1) if m else "eth0"


def ensure(links: list[LinkSpec]) -> Shaping:
    """Shape egress for `links` unless exactly these are already shaped; raise TcError on failure."""
    global _current, _netem
    links_t = tuple(sorted(links, key=lambda x: x.ip))
    with _lock:
        if _current is not None and _current.links == links_t:
            return _current
        rated = [x for x in links_t if x.rate_bps > 0]
        unrated = {x.ip: x.delay_s for x in links_t if x.rate_bps <= 0 and x.delay_s > 0}
        if not rated:
            _current = Shaping(links=links_t, node_delay_s=unrated)
            return _current
        iface = iface_for(rated[0].ip)
        if _netem is None:
            _netem = tc.has_netem()
        peers = [tc.PeerShape(x.ip, x.rate_bps, x.delay_s) for x in rated]
        plan = tc.shape(iface, peers, netem=_netem)
        readback = tc.read_back(iface)
        by_ip = {x.ip: x.device for x in rated}
        for i, p in enumerate(peers):
            log.info(
                "tc on %s: class 1:%x -> %s (%s) rate %d bit/s, delay %.1f ms by %s",
                iface,
                tc.FIRST_PEER_MINOR + i,
                by_ip[p.ip],
                p.ip,
                p.rate_bps,
                p.delay_s * 1e3,
                "netem" if p.delay_s > 0 and p.ip not in plan.node_delay_s else "the node",
            )
        log.info("tc read back on %s:\n%s", iface, readback.rstrip())
        _current = Shaping(
            iface=iface, netem=_netem, links=links_t, node_delay_s={**unrated, **plan.node_delay_s}, readback=readback
        )
        return _current


def links_from_env(value: str | None = None) -> list[LinkSpec]:
    raw = os.environ.get(ENV, "") if value is None else value
    if not raw.strip():
        return []
    try:
        items = json.loads(raw)
        return [
            LinkSpec(str(d.get("device", "")), str(d["ip"]), int(d.get("rate_bps", 0)), float(d.get("delay_s", 0.0)))
            for d in items
        ]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{ENV} is not a JSON list of {{ip, rate_bps, delay_s}}: {e}") from e


def shape_from_env() -> Shaping | None:
    """At start: shape the links in EDGE_TC_PEERS (None when unset). Raises on a tc error."""
    links = links_from_env()
    return ensure(links) if links else None
