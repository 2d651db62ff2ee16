"""Is the testbed emulating what it was asked to? Measured between the real containers.

The measurements are the probes shipped in the node image (node/probes.py), run with
`docker exec ... python -m node.probes <probe>`.

Links: each receiving container runs a small TCP sink; each sender sends about half a second
of its link's rate through its real, tc-shaped egress. The rate is what the receiver saw
between its first and last byte; the one-way delay of small messages is read across the
containers' shared clock (one host). Transfers go in rounds in which every container sends to
one peer and receives from one, so no container's CPU cap throttles two transfers at once.

Where the receiving node holds the delay itself (no netem), the network is only part of it:
once the transfers are done, each receiving node gets probe frames stamped as its upstream's
would be (the node's own link sender, from this process over the node's published port: no
probe process competes with the node for its container's CPU cap), holds them as it holds any
frame of that link, and reports the hold it really applied (release - arrival, by its clock).
That hold is added to the network's delay, so a late timer or a wrong hold shows.

CPU: every container runs a busy loop for a fixed wall time in as many processes as its cap
needs; CPU time over wall time is the achieved share, next to the cgroup's throttling counts.
A link rate or CPU cap off by more than 10% is flagged.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import math
import time
from typing import TYPE_CHECKING

import numpy as np

from node.probes import hold
from orchestrator.config import Testbed

if TYPE_CHECKING:
    from orchestrator.runtimes.base import LinkEmulation, NodeHandle

TOLERANCE = 0.10
SINK_PORT = 50099
# a 1448-byte TCP segment (MTU 1500, timestamps on) is 1514 bytes in the qdisc: 14 + 20 + 32 of headers
WIRE_PER_PAYLOAD = 1514 / 1448
_USER = "10001"  # the image's user "node": measurements run unprivileged
PROBE = ["python", "-m", "node.probes"]
HOLD_FRAMES = 10
DELAY_SLACK_MS = 0.5  # a fraction of a millisecond of network on top of a 1 ms link is not a fault


def _err(achieved: float | None, configured: float | None) -> float | None:
    if achieved is None or not configured:
        return None
    return round(achieved / configured - 1, 4)


def _wire_rate(r: dict) -> float:
    """Bit/s on the wire as tc counts it: TCP payload plus Ethernet, IP and TCP headers per segment.

    The slope of bytes received against time over the middle of the transfer: a receiver that
    was descheduled for a moment reads a burst late, which would skew a first-to-last ratio.
    """
    marks = [(t, b) for t, b in r.get("marks") or [] if 0.1 * r["bytes"] <= b <= 0.95 * r["bytes"]]
    if len(marks) >= 8:
        t = np.array([m[0] for m in marks], dtype=np.float64) / 1e9
        b = np.array([m[1] for m in marks], dtype=np.float64)
        slope = float(np.polyfit(t - t[0], b, 1)[0])
        return slope * WIRE_PER_PAYLOAD * 8 if slope > 0 else 0.0
    span = (r["last_ns"] - r["first_ns"]) / 1e9
    return (r["bytes"] - r["first_bytes"]) * WIRE_PER_PAYLOAD * 8 / span if span > 0 else 0.0


def _exec_json(cont, cmd: list[str]) -> dict:
    res = cont.exec_run(cmd, user=_USER)
    out = res.output.decode(errors="replace").strip()
    if res.exit_code != 0:
        raise RuntimeError(f"{cont.name}: measurement failed (exit {res.exit_code}): {out[-500:]}")
    return json.loads(out.splitlines()[-1])


def probe(cont, *args: str) -> dict:
    """Run one probe (node/probes.py) in a container as the unprivileged user; its JSON line."""
    return _exec_json(cont, [*PROBE, *args])


def _start_sink(cont, expected: int, life_s: float, port: int) -> None:
    cont.exec_run([*PROBE, "sink", str(expected), f"{life_s:g}", str(port)], user=_USER, detach=True)


def _rounds(devs: list[str]) -> list[list[tuple[str, str]]]:
    """Directed pairs in rounds where each device sends once and receives once (a shift each round)."""
    n = len(devs)
    return [[(devs[i], devs[(i + r) % n]) for i in range(n)] for r in range(1, n)]


def link_row(src: str, dst: str, rate_bps: int, delay_s: float, transfer: dict, hold: dict | None) -> dict:
    """One link's configured against achieved, from the transfer probe's figures and, where the
    node holds the delay, the hold probe's."""
    span = (transfer["last_ns"] - transfer["first_ns"]) / 1e9
    ach = _wire_rate(transfer) or None
    goodput = (transfer["bytes"] - transfer["first_bytes"]) * 8 / span if span > 0 else None
    net_ms = transfer["one_way_ms"][len(transfer["one_way_ms"]) // 4]  # low quartile: the path, not jitter
    delay = net_ms + (hold["held_ms"] if hold else 0.0)
    err = _err(ach, rate_bps) if rate_bps else None
    derr = _err(delay, delay_s * 1e3) if delay_s else None
    d_bad = derr is not None and abs(derr) > TOLERANCE and abs(delay - delay_s * 1e3) > DELAY_SLACK_MS
    return {
        "from": src,
        "to": dst,
        "configured_bps": rate_bps or None,
        "achieved_bps": round(ach) if ach else None,
        "configured_delay_ms": round(delay_s * 1e3, 3),
        "achieved_delay_ms": round(delay, 3),
        "network_delay_ms": round(net_ms, 3),
        "node_hold_ms": round(hold["held_ms"], 3) if hold else None,
        "error": err,
        "delay_error": derr,
        "goodput_bps": round(goodput) if goodput else None,
        "bytes": transfer["bytes"],
        "seconds": round(span, 3),
        "flagged": bool((err is not None and abs(err) > TOLERANCE) or d_bad),
        "method": "tc-shaped TCP transfer between the containers; delay "
        + (
            f"measured network one-way + the hold the receiving node really applied to {hold['frames']} probe frames"
            if hold
            else "measured one-way"
        ),
    }


def node_holds(testbed: Testbed, devs: list[str], hold_at: dict[str, str]) -> dict[tuple[str, str], dict]:
    """What each receiving node really holds frames of each incoming link with a delay: its
    upstreams one after another, the receivers side by side."""

    def receiver(dst: str) -> dict[tuple[str, str], dict]:
        return {
            (src, dst): hold(hold_at[dst], src, testbed.link(src, dst).delay_s, HOLD_FRAMES)
            for src in devs
            if src != dst and testbed.link(src, dst).delay_s > 0
        }

    out: dict[tuple[str, str], dict] = {}
    with cf.ThreadPoolExecutor(max(1, len(devs))) as ex:
        for got in ex.map(receiver, devs):
            out.update(got)
    return out


def check_links(
    containers: dict,
    ips: dict[str, str],
    testbed: Testbed,
    hold_at: dict[str, str] | None,
    seconds: float = 0.5,
    pings: int = 10,
) -> list[dict]:
    """Every link's rate and delay between the containers. `hold_at`: where the nodes hold the
    delay themselves, each node's control address (host:port), to probe the holds it applies."""
    devs = [d.name for d in testbed.devices if d.name in containers]
    for dev in devs:  # one sink per receiver, for all its incoming links, then it exits
        _start_sink(containers[dev], 2 * (len(devs) - 1), 60, SINK_PORT)
    transfers: dict[tuple[str, str], dict] = {}

    def size(rate: int) -> int:
        return max(256 * 1024, int(rate / 8 * seconds)) if rate else 32 * 1024 * 1024

    def one(pair: tuple[str, str]) -> None:
        src, dst = pair
        cfg = testbed.link(src, dst)
        transfers[pair] = probe(containers[src], "send", ips[dst], str(size(cfg.rate_bps)), str(pings), str(SINK_PORT))

    with cf.ThreadPoolExecutor(max(1, len(devs))) as ex:
        for pairs in _rounds(devs):
            list(ex.map(one, pairs))
    retried = set()
    for pair, r in list(transfers.items()):  # one more try, alone, for a link whose rate looks off
        rate = testbed.link(*pair).rate_bps
        if rate and abs(_wire_rate(r) / rate - 1) > TOLERANCE:
            src, dst = pair
            _start_sink(containers[dst], 2, 30, SINK_PORT + 1)
            args = [ips[dst], str(size(rate)), str(pings), str(SINK_PORT + 1)]
            transfers[pair] = probe(containers[src], "send", *args)
            retried.add(pair)
    holds = node_holds(testbed, devs, hold_at) if hold_at is not None else {}
    out = []
    for src, dst in sorted(transfers, key=lambda p: (devs.index(p[0]), devs.index(p[1]))):
        cfg = testbed.link(src, dst)
        row = link_row(src, dst, cfg.rate_bps, cfg.delay_s, transfers[(src, dst)], holds.get((src, dst)))
        out.append(row | {"retried": (src, dst) in retried})
    return out


def check_cpus(containers: dict, testbed: Testbed, seconds: float = 1.0) -> list[dict]:
    devs = [d for d in testbed.devices if d.name in containers]

    def one(d):
        procs = max(1, math.ceil(d.cpus - 1e-9))
        return d, probe(containers[d.name], "busy", str(procs), str(seconds))

    out = []
    for d, r in map(one, devs):  # one at a time: the cap, not the host's other load, is measured
        ach = r["cpu_s"] / r["wall_s"]
        err = _err(ach, d.cpus)
        # under its quota the cgroup is throttled in most periods; if not, the host ran out of CPU
        host_bound = bool(err is not None and err < -TOLERANCE and r["nr_throttled"] < r["nr_periods"] / 2)
        out.append(
            {
                "device": d.name,
                "configured": d.cpus,
                "achieved": round(ach, 4),
                "error": err,
                "nr_periods": r["nr_periods"],
                "nr_throttled": r["nr_throttled"],
                "throttled_ms": round(r["throttled_ns"] / 1e6, 1),
                "flagged": bool(err is not None and abs(err) > TOLERANCE),
                "host_bound": host_bound,
                "method": f"busy loop in the container for {seconds:g} s: CPU time / wall time",
            }
        )
    return out


def flagged_lines(links: list[dict], cpus: list[dict]) -> list[str]:
    """One line per link or CPU cap off by more than the tolerance."""
    out = [
        f"link {x['from']}->{x['to']}: rate error {x['error']:+.1%}"
        if x["error"] is not None and abs(x["error"]) > TOLERANCE
        else f"link {x['from']}->{x['to']}: delay {x['achieved_delay_ms']:.2f} ms vs {x['configured_delay_ms']:.2f} ms"
        for x in links
        if x["flagged"]
    ]
    out += [
        f"cpu {x['device']}: {x['achieved']:.3f} vs {x['configured']:g} ({x['error']:+.1%})"
        + (" - the host was the bottleneck (cgroup rarely throttled)" if x["host_bound"] else "")
        for x in cpus
        if x["flagged"]
    ]
    return out


def check(
    containers: dict,
    ips: dict[str, str],
    testbed: Testbed,
    hold_at: dict[str, str] | None,
    link_seconds: float = 0.5,
    cpu_seconds: float = 1.0,
) -> dict:
    """Configured versus achieved for every link and CPU cap of a running Docker testbed (`hold_at`:
    see check_links)."""
    t0 = time.perf_counter()
    links = check_links(containers, ips, testbed, hold_at, link_seconds)
    cpus = check_cpus(containers, testbed, cpu_seconds)
    return {
        "links": links,
        "cpus": cpus,
        "flagged": flagged_lines(links, cpus),
        "tolerance": TOLERANCE,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def check_testbed(
    containers: dict, ips: dict[str, str], testbed: Testbed, emulation: LinkEmulation, nodes: dict[str, NodeHandle]
) -> dict:
    """check() on a running testbed's containers: where its nodes hold the link delay themselves,
    the holds they apply are probed too, at each node's control address."""
    hold_at = {d: h.control_address for d, h in nodes.items()} if emulation.node_holds_delay else None
    return check(containers, ips, testbed, hold_at)
