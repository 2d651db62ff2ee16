"""Links measured by the nodes, beside what the answers show: what lets `adaptive` see a link
fade while a frame is still crossing it, and see a link it left come back.

Saturated links: every node reports, per outgoing link, the bytes that went on it and whether
anything waits for it (tc's class counters, or the node's own pacing). Two readings a tick apart
with a backlog in both give the rate the link delivers now, even when no frame has crossed it
whole (a faded link takes many seconds per frame, and answers only show frames that arrived).

Links the plan does not use: answers never cross them. For those, each tick asks the
sending node to put one small probe frame on the link (through its emulation, like any frame;
the node skips it when requests wait for that link), and reads from the receiving node when the
last one went on the link and when the link let it go: rate = bits / (that time - the link's
configured delay). A probe still crossing (a link that crawls) is not sent again until it
arrives or PROBE_TIMEOUT_S has passed (the node may have skipped it: requests were waiting).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from orchestrator.config import Testbed
from orchestrator.driving.client import NodeClient, NodeError

log = logging.getLogger("orchestrator.adapt.probe")

PROBE_BYTES = 64 * 1024  # ~10 ms at 50 Mbit/s, 2.6 s at 0.2 Mbit/s
PROBE_TIMEOUT_S = 5.0
MIN_RATE_BPS = 1000
MIN_CROSSING_S = 0.05  # a 64 KiB probe: 10 Mbit/s and more all read "fast"
PROBE_EVERY_S = 2.0  # a link that answered is probed again no sooner than this

Pair = tuple[str, str]


@dataclass
class Readings:
    probed: dict[Pair, tuple[int, float]] = field(default_factory=dict)  # bit/s and age (s), last probe
    saturated: dict[Pair, int] = field(default_factory=dict)  # bit/s, backlogged across two readings


class LinkProber:
    def __init__(self, clients: Callable[[], dict[str, NodeClient]], nbytes: int = PROBE_BYTES):
        self._clients = clients
        self.nbytes = nbytes
        self._asked: dict[Pair, float] = {}  # when a probe was last asked for (unix s)
        self._seen: dict[Pair, int] = {}  # sent_ns of the last probe read back
        self._loads: dict[Pair, tuple[int, int, int]] = {}  # last reading: at_ns, sent bytes, backlog

    def read(self, testbed: Testbed) -> Readings:
        """One Stats call per node: the probed links' rates and the saturated links' rates."""
        clients = self._clients()
        out = Readings()
        now_ns = time.time_ns()
        for b, client in clients.items():
            try:
                stats = client.stats(timeout_s=1.0)
            except NodeError:
                continue
            for load in stats.links:
                pair = (b, load.device)
                last = self._loads.get(pair)
                self._loads[pair] = (load.at_ns, load.sent_bytes, load.backlog)
                if last is not None and last[2] > 0 and load.backlog > 0 and load.at_ns - last[0] > 2e8:
                    rate = int((load.sent_bytes - last[1]) * 8e9 / (load.at_ns - last[0]))
                    out.saturated[pair] = max(rate, MIN_RATE_BPS)  # nothing went out: a crawl, never "unshaped"
            for p in stats.probes:
                a = p.device
                if a not in clients:
                    continue
                self._seen[(a, b)] = p.sent_ns
                crossing = (p.arrived_ns - p.sent_ns) / 1e9 - testbed.link(a, b).delay_s
                # a probe that crossed in a few ms shows the nodes' own overheads (and a sender
                # under a small CPU quota), not the link: it only says "fast", 0 as LinkParams has it
                rate = int(p.bytes * 8 / crossing) if crossing > MIN_CROSSING_S else 0
                out.probed[(a, b)] = (rate, (now_ns - p.arrived_ns) / 1e9)
        return out

    def ask(self, pairs: Iterable[Pair]) -> None:
        """Probe these links, each at most once until its last probe arrived (or timed out)."""
        clients = self._clients()
        now = time.time()
        for a, b in pairs:
            if a not in clients or b not in clients:
                continue
            asked = self._asked.get((a, b))
            arrived = asked is not None and self._seen.get((a, b), 0) / 1e9 >= asked
            if asked is not None and now - asked < (PROBE_EVERY_S if arrived else PROBE_TIMEOUT_S):
                continue  # still crossing, or measured a moment ago
            try:
                clients[a].probe(b, self.nbytes)
                self._asked[(a, b)] = now
            except NodeError as e:
                log.debug("probe %s -> %s: %s", a, b, e)
