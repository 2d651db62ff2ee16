"""A link's rate and delay changed in place while the nodes run, on runtimes whose nodes shape
their own egress with tc (docker, swarm): the links as they are now, and the change itself."""

from __future__ import annotations

import time
from collections.abc import Callable

from common import testbed_pb2 as pb
from node import tc
from orchestrator.config import LinkParams, Testbed
from orchestrator.runtimes.base import Deployment, LinkChange, LinkEmulation, held_rate

# a rate changed from the host, outside the sender's CPU quota: (rate, netem delay or None) -> rate held
HostChange = Callable[[int, float | None], int]


class NodeLinks:
    """Every link of a testbed as it is now (configured at start, then as changed)."""

    def __init__(self, testbed: Testbed) -> None:
        self.testbed = testbed
        self.links: dict[tuple[str, str], LinkParams] = {
            (a.name, b.name): testbed.link(a.name, b.name) for a in testbed.devices for b in testbed.devices if a != b
        }

    def reset(self, device: str) -> None:
        """A device's node came back: its outgoing links are as configured again (its start-up shaping)."""
        for a, b in self.links:
            if a == device:
                self.links[(a, b)] = self.testbed.link(a, b)

    def change(
        self,
        dep: Deployment,
        src: str,
        dst: str,
        dst_ip: str,
        rate_bps: int | None = None,
        delay_s: float | None = None,
        host_change: HostChange | None = None,
    ) -> LinkChange:
        """A rate alone goes through `host_change` where the runtime has one (no wait for the node's
        CPU quota); otherwise through the sending node's SetLink call: the node changes its htb class
        for `dst` in place (`tc class change`, never deleted and re-added), reads the rate back from
        the kernel, and sets the delay where it is held (netem, or its own hold). A rate of 0 (a
        trace's dead moment) crawls at HELD_RATE_BPS. A link started unshaped has no class to change:
        only its delay (the node's hold, on a loaded pipeline) can change. Anything else than what
        was asked raises."""
        if (src, dst) not in self.links:
            raise ValueError(f"no link {src} -> {dst} in this testbed")
        cfg = self.links[(src, dst)]
        rate = cfg.rate_bps if rate_bps is None else held_rate(rate_bps)
        delay = cfg.delay_s if delay_s is None else float(delay_s)
        netem = dep.link_emulation is LinkEmulation.TC_NETEM
        shaped = self.testbed.link(src, dst).rate_bps > 0  # shaped at start: the node has a class for it
        how = []
        if shaped and delay == cfg.delay_s and host_change is not None:
            rate = host_change(rate, delay if netem else None)
            how.append("tc class change (from the host)")
        elif shaped:
            peer = pb.Peer(device=dst, ip=dst_ip, tc_rate_bps=rate, tc_delay_s=delay)
            held = dep.client(src).set_link(peer)
            if not tc.holds_rate(held.tc_rate_bps, rate) or abs(held.tc_delay_s - delay) > 1e-9:
                raise RuntimeError(
                    f"link {src}->{dst}: the node holds {held.tc_rate_bps} bit/s and {held.tc_delay_s * 1e3:g} ms "
                    f"after the change, asked {rate} bit/s and {delay * 1e3:g} ms"
                )
            rate = held.tc_rate_bps
            if rate != cfg.rate_bps:
                how.append("tc class change")
            if delay != cfg.delay_s:
                how.append("netem" if netem else "the sending node's hold")
        elif rate_bps is not None and rate != cfg.rate_bps:
            raise RuntimeError(
                f"link {src}->{dst} has no htb class: it was started unshaped "
                "(give it a bandwidth in the devices file to change it while running)"
            )
        elif delay != cfg.delay_s:
            dep.client(src).set_link(pb.Peer(device=dst, rate_bps=0, delay_s=delay))
            how.append("the sending node's hold")
        self.links[(src, dst)] = cfg.model_copy(update={"rate_bps": rate, "delay_s": delay})
        return LinkChange(src, dst, rate or None, delay, time.time(), " and ".join(how) or "nothing to change")
