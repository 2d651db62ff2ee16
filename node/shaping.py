"""Glue between the node and node/tc.py: shape this node's egress for the links it was given.

The links come either at start (environment variable EDGE_TC_PEERS, a JSON list of
{"device", "ip", "rate_bps", "delay_s"}: how the Docker testbed and docker-compose.yml start
nodes) or with a LoadRequest (Peer.ip, Peer.tc_rate_bps, Peer.tc_delay_s). The same links are
not shaped twice; links to the same peers (or some of them) with other rates or delays change
their classes in place (`change`: also what SetLink does while frames flow), and only other
peers replace the old shaping: deleting and re-adding a class would leave the link unshaped for
a moment. Peers with a rate get an htb class (netem under it for the delay where the kernel has
netem); the delay of every other shaped link is left to the node, which holds frames itself:
`Shaping.node_delay_s` says how long, per ip.

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
    classes: dict[str, str] = field(default_factory=dict)  # peer ip -> its htb class
    leaf_limits: dict[str, int] = field(default_factory=dict)  # peer ip -> packets its leaf queue holds
    netem_leaves: set[str] = field(default_factory=set)  # peer ips whose leaf is a netem qdisc
    gso_max_size: int = 0

    def link(self, ip: str) -> LinkSpec | None:
        return next((x for x in self.links if x.ip == ip), None)

    def ip_of(self, device: str) -> str:
        """The address of a shaped peer, by its device name ("" when none is shaped by that name)."""
        return next((x.ip for x in self.links if x.device == device and x.ip in self.classes), "")


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
    """Shape egress for `links` unless exactly these are already shaped; links to peers that are
    all shaped already (the same ones or fewer) change their classes in place. Raises TcError."""
    global _current, _netem
    links_t = tuple(sorted(links, key=lambda x: x.ip))
    with _lock:
        if _current is not None and _current.links == links_t:
            return _current
        rated = [x for x in links_t if x.rate_bps > 0]
        unrated = {x.ip: x.delay_s for x in links_t if x.rate_bps <= 0 and x.delay_s > 0}
        cur = _current
        if (
            cur is not None
            and rated
            and {x.ip for x in rated} <= set(cur.classes)
            and not set(unrated) & set(cur.classes)
        ):
            for x in rated:
                if cur.link(x.ip) != x:
                    _change_locked(cur, x)
            cur.node_delay_s.update(unrated)
            cur.readback = tc.read_back(cur.iface)
            log.info("tc changed in place on %s:\n%s", cur.iface, cur.readback.rstrip())
            return cur
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
            iface=iface,
            netem=_netem,
            links=links_t,
            node_delay_s={**unrated, **plan.node_delay_s},
            readback=readback,
            classes={p.ip: f"1:{tc.FIRST_PEER_MINOR + i:x}" for i, p in enumerate(peers)},
            leaf_limits={
                p.ip: tc._netem_limit(p.rate_bps, p.delay_s)
                if p.ip not in plan.node_delay_s and p.delay_s > 0 and _netem
                else tc.queue_limit_packets(p.rate_bps)
                for p in peers
            },
            netem_leaves={p.ip for p in peers if _netem and p.delay_s > 0},
            gso_max_size=tc.gso_max_size(peers),
        )
        return _current


def change(device: str, ip: str, rate_bps: int, delay_s: float) -> LinkSpec:
    """Change one shaped peer's link in place while traffic flows: its htb class's rate (never
    deleted and re-added), its leaf queue (never shrunk below what it held), the delay by netem
    where netem holds it, else by the node (`Shaping.node_delay_s`). Returns the link as it now
    holds, its rate read back from the kernel; raises ValueError for a peer with no class, TcError
    when tc fails or holds something else."""
    with _lock:
        cur = _current
        if cur is None or ip not in cur.classes:
            raise ValueError(
                f"no htb class shapes the link to {device or ip} ({ip or 'no address'}): it was started unshaped "
                "(give it a bandwidth in the devices file to change it while running)"
            )
        return _change_locked(
            cur, LinkSpec(device or (cur.link(ip) or LinkSpec("", ip, 0, 0.0)).device, ip, rate_bps, delay_s)
        )


def _change_locked(cur: Shaping, spec: LinkSpec) -> LinkSpec:
    if spec.rate_bps <= 0 or spec.delay_s < 0:
        raise ValueError(f"link to {spec.device or spec.ip}: rate must be > 0 and delay >= 0, got {spec}")
    classid = cur.classes[spec.ip]
    by_netem = cur.netem and spec.delay_s > 0
    netem_delay = spec.delay_s if by_netem else (0.0 if spec.ip in cur.netem_leaves else None)
    rates = {x.ip: x.rate_bps for x in cur.links if x.ip in cur.classes} | {spec.ip: spec.rate_bps}
    gso = tc.gso_max_size([tc.PeerShape(i, r) for i, r in rates.items()])
    cmds = tc.change_link_commands(
        cur.iface,
        classid,
        spec.rate_bps,
        netem_delay,
        min(rates.values()) if gso != cur.gso_max_size else None,
        queue_floor=cur.leaf_limits.get(spec.ip, 0),
        replace_leaf=(netem_delay is not None) != (spec.ip in cur.netem_leaves),
    )
    shown = tc.apply_batch([*cmds, ["tc", "class", "show", "dev", cur.iface, "classid", classid]])
    held = tc.parse_htb_rates(shown).get(classid)
    if not tc.holds_rate(held, spec.rate_bps):
        raise tc.TcError(
            f"tc on {cur.iface}: class {classid} holds {held} bit/s after the change, asked {spec.rate_bps}"
        )
    assert held is not None
    limit = int(next(c[c.index("limit") + 1] for c in cmds if "limit" in c))
    cur.leaf_limits[spec.ip] = limit
    cur.gso_max_size = gso
    if netem_delay is None:
        cur.netem_leaves.discard(spec.ip)
    else:
        cur.netem_leaves.add(spec.ip)
    if by_netem or spec.delay_s == 0:
        cur.node_delay_s.pop(spec.ip, None)
    else:
        cur.node_delay_s[spec.ip] = spec.delay_s
    now = LinkSpec(spec.device, spec.ip, held, spec.delay_s)
    cur.links = tuple(sorted([x for x in cur.links if x.ip != spec.ip] + [now], key=lambda x: x.ip))
    return now


def loads() -> dict[str, tuple[int, int]]:
    """Peer ip -> (bytes its htb class sent, bytes waiting in it), read from the kernel now; {}
    when nothing is shaped (or tc cannot be read: the counters are a measurement, not a must)."""
    cur = _current
    if cur is None or not cur.classes:
        return {}
    try:
        by_class = tc.parse_class_load(tc.run_tc(["tc", "-s", "class", "show", "dev", cur.iface]))
    except tc.TcError as e:
        log.warning("reading tc counters: %s", e)
        return {}
    return {ip: by_class[c] for ip, c in cur.classes.items() if c in by_class}


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
