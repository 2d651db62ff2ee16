"""Link rates changed from the host, in the sending container's network namespace.

A node shapes its own egress at start, but a change while it runs should not wait for it: the
node runs under its CPU quota, and a stage that spends the quota makes a SetLink call wait for
the next CFS period (the tunnel's changes ran 40 ms late at p50, 110 ms at p99 that way). From
the host, as root, `tc` runs in the container's namespace (named under /var/run/netns, a link to
its process's, as `ip netns` expects) outside any quota: the same `tc class change` in place,
read back in the same `tc -batch`. Where the host cannot (not root, the engine elsewhere) the
runtime goes through the node instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from node import tc

NETNS_DIR = Path("/var/run/netns")


@dataclass
class _Shaped:
    netns: str
    iface: str
    classes: dict[str, str]  # peer ip -> htb class
    leaf_limits: dict[str, int] = field(default_factory=dict)  # peer ip -> packets its leaf holds now
    rates: dict[str, int] = field(default_factory=dict)  # peer ip -> its class's rate now
    gso_max_size: int = 0  # the offload cap last set (0: not yet by us)


class HostShaper:
    """One per testbed; forget(device) whenever a container stops or starts again."""

    def __init__(self) -> None:
        self._shaped: dict[str, _Shaped] = {}
        self._links: set[Path] = set()

    @staticmethod
    def available() -> bool:
        return os.geteuid() == 0 and Path("/proc/self/ns/net").exists()

    def change_rate(self, cont, peer_ip: str, rate_bps: int, netem_delay_s: float | None) -> int:
        """Change the class shaping `cont`'s egress to `peer_ip` to `rate_bps` in place (the leaf
        queue never shrinks; netem's delay kept where netem holds it); returns the rate read back."""
        s = self._shaping(cont, peer_ip)
        classid = s.classes.get(peer_ip)
        if classid is None:
            raise RuntimeError(f"{cont.name} has no htb class for {peer_ip}: the link was started unshaped")
        floor = s.leaf_limits.get(peer_ip, 0)
        # offload lumps capped at ~2 ms of the slowest class, as the node does: else a crawling
        # link lets a 64 KB lump through at once, seconds of its rate in one burst
        rates = s.rates | {peer_ip: rate_bps}
        gso = tc.gso_max_size([tc.PeerShape(ip, r) for ip, r in rates.items()])
        slowest = min(rates.values()) if gso != s.gso_max_size else None
        cmds = tc.change_link_commands(s.iface, classid, rate_bps, netem_delay_s, slowest, queue_floor=floor)
        shown = tc.apply_batch([*cmds, ["tc", "class", "show", "dev", s.iface, "classid", classid]], netns=s.netns)
        held = tc.parse_htb_rates(shown).get(classid)
        if held is None or not tc.holds_rate(held, rate_bps):
            raise RuntimeError(f"{cont.name}: class {classid} holds {held} bit/s after the change, asked {rate_bps}")
        s.leaf_limits[peer_ip] = max(floor, tc.queue_limit_packets(rate_bps))
        s.rates[peer_ip] = held
        s.gso_max_size = gso
        return held

    def forget(self, cont) -> None:
        self._shaped.pop(cont.id, None)

    def close(self) -> None:
        for link in self._links:
            link.unlink(missing_ok=True)
        self._links.clear()
        self._shaped.clear()

    def _shaping(self, cont, peer_ip: str) -> _Shaped:
        s = self._shaped.get(cont.id)
        if s is None:
            cont.reload()
            pid = cont.attrs["State"]["Pid"]
            if not pid:
                raise RuntimeError(f"{cont.name} is not running")
            netns = f"edge-testbed-{cont.name}"
            link = NETNS_DIR / netns
            NETNS_DIR.mkdir(parents=True, exist_ok=True)
            link.unlink(missing_ok=True)
            link.symlink_to(f"/proc/{pid}/ns/net")
            self._links.add(link)
            route = tc.run_tc(["ip", "-o", "route", "get", peer_ip], netns=netns)
            iface = route.split(" dev ", 1)[1].split()[0] if " dev " in route else "eth0"
            classes = tc.parse_u32_flows(tc.run_tc(["tc", "filter", "show", "dev", iface], netns=netns))
            qdiscs = tc.run_tc(["tc", "qdisc", "show", "dev", iface], netns=netns)
            by_class = tc.parse_htb_rates(tc.run_tc(["tc", "class", "show", "dev", iface], netns=netns))
            rates = {ip: by_class[c] for ip, c in classes.items() if c in by_class}
            s = _Shaped(netns, iface, classes, _leaf_limits(qdiscs, classes), rates)
            self._shaped[cont.id] = s
        return s


def _leaf_limits(qdiscs: str, classes: dict[str, str]) -> dict[str, int]:
    """Peer ip -> the packets its leaf queue holds now, from `tc qdisc show`."""
    by_class: dict[str, int] = {}
    for line in qdiscs.splitlines():
        parts = line.split()
        if "parent" in parts and "limit" in parts:
            limit = parts[parts.index("limit") + 1].rstrip("p")
            if limit.isdigit():
                by_class[parts[parts.index("parent") + 1]] = int(limit)
    return {ip: by_class[c] for ip, c in classes.items() if c in by_class}
