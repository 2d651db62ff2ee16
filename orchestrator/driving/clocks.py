"""Clock offsets between the orchestrator and the nodes, NTP style.

Each node stamps frames with its own clock (time.time_ns() in its container or process). To
compare a stamp of one device with a stamp of another (a hop's send and receive), both are
brought to the orchestrator's clock: stamp - offset. A probe is one Health call: t_send and
t_recv on the orchestrator's clock around it, now_ns the node's clock when it answered; the
node's offset is now_ns - (t_send + t_recv) / 2, off by at most half the round trip (the
answer was stamped somewhere between t_send and t_recv). Of several probes the one with the
smallest round trip is kept: it bounds the error most tightly.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from orchestrator.driving.client import NodeClient


@dataclass(frozen=True)
class ClockOffset:
    """A node's clock less the orchestrator's (ns): subtract it from the node's stamps."""

    offset_ns: int
    rtt_ns: int  # round trip of the probe kept
    uncertainty_ns: int  # the offset is within this of the truth (half that round trip)

    def as_dict(self) -> dict:
        return asdict(self)


def probe(node: NodeClient, timeout_s: float = 5.0) -> ClockOffset:
    """One Health round trip's estimate."""
    t_send = time.time_ns()
    reply = node.health(timeout_s)
    t_recv = time.time_ns()
    if not reply.now_ns:
        raise node.error("does not report its clock (an older node image?)")
    rtt = t_recv - t_send
    return ClockOffset(reply.now_ns - (t_send + t_recv) // 2, rtt, (rtt + 1) // 2)


def estimate_offset(node: NodeClient, probes: int = 20, timeout_s: float = 5.0) -> ClockOffset:
    """The node's offset: the probe with the smallest round trip of `probes` (after one
    unrecorded probe that opens the connection)."""
    probe(node, timeout_s)  # connection set-up would inflate the first round trip
    return min((probe(node, timeout_s) for _ in range(max(1, probes))), key=lambda c: c.rtt_ns)


def estimate_offsets(nodes: dict[str, NodeClient], probes: int = 20, timeout_s: float = 5.0) -> dict[str, ClockOffset]:
    """Per device, its clock's offset from this process's."""
    return {device: estimate_offset(node, probes, timeout_s) for device, node in nodes.items()}


def offsets_ns(clocks: dict[str, ClockOffset], significant_only: bool = True) -> dict[str, int]:
    """The offsets to subtract from each device's stamps (metrics' `offsets` argument).

    significant_only: an offset no larger than its uncertainty is indistinguishable from none
    (nodes on this host share its clock) and is taken as 0, so that correcting cannot add the
    probe's noise to hops between devices that agree."""
    return {
        d: (0 if significant_only and abs(c.offset_ns) <= c.uncertainty_ns else c.offset_ns) for d, c in clocks.items()
    }
