"""Is the testbed emulating what it was asked to? Measured between the running nodes.

Everything goes through the nodes' own gRPC calls, so the check runs the same on the Docker
runtime and on a swarm whose nodes sit on hosts whose engine the orchestrator cannot reach: each
node's Measure call runs a probe of node/probes.py beside it (its container, cgroup and user).

Links: each device runs one probe process for the whole check (`sends`: its sink, its transfers
on a shared schedule, and its busy loop): a process start under a 0.05-CPU quota takes about a
second, so none is started per link. The transfers go in rounds in which every device sends to
one peer and receives from one (n-1 rounds for n devices), each round in a slot of the schedule,
cut at the slot's end so that a slow link never spills into the next round. A transfer pings
first (one-way delay, the sink stamping arrivals with the kernel's receive time on the host's
shared clock), then sends about half a second of its link's rate through its real, tc-shaped
egress; the rate is the slope of bytes against the kernel's arrival stamps over the middle of the
transfer, with the headers each full segment carries on the wire. A link whose rate reads off is
measured once more, in a second schedule of its own.

Where the receiving node holds the delay itself (no netem), the network is only part of it: once
the transfers are done, each receiving node gets probe frames stamped as its upstreams' would be
(the node's own link sender, from this process over the node's control port: no probe process
competes with the node for its CPU quota), one frame at a time, each after the one before has
been released, and reports the hold it really applied (release - arrival, by its clock). That
hold is added to the network's delay, so a late timer or a wrong hold shows; a link whose delay
reads off is probed once more. The probe keeps its own load off what it measures: no Stats polled
while frames are held, a pause after its setup (a new connection and a Stats call cost a 0.05-CPU
node several 100-ms periods of its quota), at most 16 receivers at a time and their frames spread
in time (every hold thread waking at once, they queue for the host's CPUs).

CPU: once the transfers are over, the same probe processes run a busy loop for a fixed wall time
in as many processes as each cap needs, in groups whose caps add up to at most one CPU (the
host's own CPU is not what is measured); CPU time over wall time is the achieved share, next to
the cgroup's throttling counts.
A link rate, delay or CPU cap off by more than 10% is flagged.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import math
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from node.probes import HOLD_GAP_S, holds
from orchestrator.config import Testbed
from orchestrator.runtimes.base import Deployment

if TYPE_CHECKING:
    from orchestrator.driving.client import NodeClient
    from orchestrator.runtimes.base import LinkEmulation

log = logging.getLogger("orchestrator.fidelity")

TOLERANCE = 0.10
SINK_PORT = 50099
RETRY_PORT = SINK_PORT + 1
WIRE_HEADERS = 66  # bytes a full TCP segment carries beside its payload: Ethernet 14, IP 20, TCP 20 + timestamps 12
DEFAULT_MSS = 1448  # MTU 1500
HOLD_FRAMES = 2  # per link
# Receivers probed at once. The frames load the host's CPUs (about 0.7 ms each in this process and
# 1.2 ms in the node, measured), and a waking hold thread that has to wait for one is late: on a
# 2-core host with 32 nodes, 16 at a time left 65% of it idle and 3% of links more than 10% late
# in one pass; 32 at a time, 40% idle and 11-12%.
HOLD_PARALLEL = 16
DELAY_SLACK_MS = 0.5  # a fraction of a millisecond of network on top of a 1 ms link is not a fault
SLOT_EXTRA_S = 0.25  # in a slot beside the transfer itself: connections, pings, the reply, the guard
START_S = 1.5  # for the probe processes to start (a second under a 0.05-CPU quota), plus per device:
START_PER_DEVICE_S = 0.05
CPU_GROUP = 1.0  # CPUs of busy loops at once
CPU_LEAD_S = 0.3  # from the last round's end to the first busy loop
CPU_GAP_S = 0.3  # between two groups' busy loops


Nodes = Deployment | Mapping[str, "NodeClient"]


def _clients(nodes: Nodes) -> dict[str, NodeClient]:
    if isinstance(nodes, Deployment):
        return {d: nodes.client(d) for d in nodes.nodes}
    return dict(nodes)


def _err(achieved: float | None, configured: float | None) -> float | None:
    if achieved is None or not configured:
        return None
    return round(achieved / configured - 1, 4)


def _wire_rate(r: dict) -> float:
    """Bit/s on the wire as tc counts it: TCP payload plus the headers of each full segment.

    The slope of bytes received against their arrival time over the middle of the transfer:
    free of the connection's start, and of a reader that was descheduled for a moment."""
    if not r.get("bytes") or r.get("first_ns") is None:
        return 0.0
    wire = (r.get("mss") or DEFAULT_MSS) + WIRE_HEADERS
    per_payload = wire / (wire - WIRE_HEADERS)
    marks = [(t, b) for t, b in r.get("marks") or [] if 0.1 * r["bytes"] <= b <= 0.95 * r["bytes"]]
    if len(marks) >= 8:
        t = np.array([m[0] for m in marks], dtype=np.float64) / 1e9
        b = np.array([m[1] for m in marks], dtype=np.float64)
        slope = float(np.polyfit(t - t[0], b, 1)[0])
        return slope * per_payload * 8 if slope > 0 else 0.0
    span = (r["last_ns"] - r["first_ns"]) / 1e9
    return (r["bytes"] - r["first_bytes"]) * per_payload * 8 / span if span > 0 else 0.0


def _rounds(devs: list[str]) -> list[list[tuple[str, str]]]:
    """Directed pairs in rounds where each device sends once and receives once (a shift each
    round), and no round holds both directions of a pair: with an even count the half shift pairs
    devices both ways, and is split in two. Two transfers crossing on one pair stall each other
    (each one's acknowledgements queue behind the other's data on a shaped link; measured: half
    of a 32-device fleet's crossing transfers timed out, none once split)."""
    n = len(devs)
    rounds = []
    for r in range(1, n):
        pairs = [(devs[i], devs[(i + r) % n]) for i in range(n)]
        if 2 * r == n:
            rounds += [pairs[: n // 2], pairs[n // 2 :]]
        else:
            rounds.append(pairs)
    return rounds


def _matching_rounds(pairs: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """Pairs in as few rounds as a greedy pass finds, no device sending or receiving twice in one,
    and no pair both ways (see _rounds)."""
    rounds: list[list[tuple[str, str]]] = []
    for src, dst in pairs:
        for r in rounds:
            if all(src != a and dst != b and (dst, src) != (a, b) for a, b in r):
                r.append((src, dst))
                break
        else:
            rounds.append([(src, dst)])
    return rounds


def _size(rate_bps: int, seconds: float) -> int:
    return max(256 * 1024, int(rate_bps / 8 * seconds)) if rate_bps else 32 * 1024 * 1024


def _cpu_groups(testbed: Testbed, devs: list[str]) -> list[list]:
    """Devices in groups whose caps add up to at most CPU_GROUP (a bigger cap alone), first fit
    from the biggest."""
    groups: list[list] = []
    for d in sorted((testbed.device(x) for x in devs), key=lambda d: -d.cpus):
        g = next((g for g in groups if sum(x.cpus for x in g) + d.cpus <= CPU_GROUP + 1e-9), None)
        if g is None:
            groups.append([d])
        else:
            g.append(d)
    return groups


def schedule(
    clients: dict[str, NodeClient],
    ips: dict[str, str],
    testbed: Testbed,
    rounds: list[list[tuple[str, str]]],
    port: int = SINK_PORT,
    seconds: float = 0.5,
    pings: int = 10,
    cpu_seconds: float | None = None,
    rates: dict[tuple[str, str], float] | None = None,
) -> tuple[dict[tuple[str, str], dict], dict[str, dict]]:
    """Run `rounds` of transfers on one schedule, and then (with `cpu_seconds`) every node's busy
    loop, group after group (see _cpu_groups): one probe process beside every node taking part
    (`sends`). Each pair's transfer (its `error` where it failed), and each device's busy loop.
    A transfer is sized to fill `seconds` at its link's configured rate, or at `rates[pair]` where
    given (a link changed while running: sized for what it was seen to carry)."""
    plans: dict[str, dict] = {}

    def plan(dev: str) -> dict:
        return plans.setdefault(dev, {"transfers": [], "expected": 0})

    for k, pairs in enumerate(rounds):
        for src, dst in pairs:
            n = _size(max(testbed.link(src, dst).rate_bps, (rates or {}).get((src, dst), 0)), seconds)
            plan(src)["transfers"].append({"round": k, "ip": ips[dst], "n": n})
            plan(dst)["expected"] += 2  # a ping connection and a transfer
    groups = _cpu_groups(testbed, [d.name for d in testbed.devices if d.name in clients]) if cpu_seconds else []
    for g in groups:
        for d in g:
            plan(d.name)
    slot_s = seconds + SLOT_EXTRA_S
    start_s = START_S + START_PER_DEVICE_S * len(plans)
    t0_ns = time.time_ns() + int(start_s * 1e9)
    end_ns = t0_ns + int((len(rounds) * slot_s + (CPU_LEAD_S if groups else 0.0)) * 1e9)
    for k, g in enumerate(groups):
        at_ns = end_ns + int(k * (cpu_seconds + CPU_GAP_S) * 1e9)
        for d in g:
            plans[d.name]["busy"] = {"at_ns": at_ns, "procs": max(1, math.ceil(d.cpus - 1e-9)), "wall_s": cpu_seconds}
    span_s = (end_ns - time.time_ns()) / 1e9 + len(groups) * (cpu_seconds or 0.0)
    common = {"t0_ns": t0_ns, "slot_ns": int(slot_s * 1e9), "until_ns": end_ns, "port": port, "pings": pings}
    device_at = {ip: d for d, ip in ips.items()}

    def run(dev: str) -> dict:
        return clients[dev].measure("sends", [json.dumps(common | plans[dev])], timeout_s=span_s + 30)

    moved, spun = {}, {}
    with cf.ThreadPoolExecutor(max(1, len(plans))) as ex:
        for dev, got in zip(plans, ex.map(run, plans), strict=True):
            for g in got["transfers"]:
                moved[(dev, device_at[g["ip"]])] = g
            if "busy" in got:
                spun[dev] = got["busy"]
    return moved, spun


def link_row(src: str, dst: str, rate_bps: int, delay_s: float, transfer: dict, hold: dict | None) -> dict:
    """One link's configured against achieved, from the transfer probe's figures and, where the
    node holds the delay, the hold probe's."""
    span = (transfer["last_ns"] - transfer["first_ns"]) / 1e9 if transfer.get("first_ns") is not None else 0.0
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
        "method": "tc-shaped TCP transfer between the nodes; delay "
        + (
            f"measured network one-way + the hold the receiving node really applied to {hold['frames']} probe frames"
            if hold
            else "measured one-way"
        ),
    }


def node_holds(
    clients: dict[str, NodeClient], testbed: Testbed, links: list[tuple[str, str]]
) -> dict[tuple[str, str], dict]:
    """What each receiving node really holds frames of each of `links` (src, dst) for: its
    upstreams one after another; HOLD_PARALLEL receivers side by side, their frames spread over
    the gap between two frames, then the next ones."""
    by_dst: dict[str, list[tuple[str, float]]] = {}
    for src, dst in links:
        by_dst.setdefault(dst, []).append((src, testbed.link(src, dst).delay_s))
    dsts = list(by_dst)
    groups = [dsts[i : i + HOLD_PARALLEL] for i in range(0, len(dsts), HOLD_PARALLEL)]

    def receiver(k: int, dst: str, spread: float) -> dict[tuple[str, str], dict]:
        c = clients[dst]
        got = holds(c.address, by_dst[dst], HOLD_FRAMES, HOLD_GAP_S, k * spread, stats=c.stats)
        return {(src, dst): h for src, h in got.items()}

    out: dict[tuple[str, str], dict] = {}
    for g in groups:
        spread = HOLD_GAP_S / len(g)  # the receivers' frames apart in time, not all at once
        with cf.ThreadPoolExecutor(len(g)) as ex:
            for got in ex.map(receiver, range(len(g)), g, [spread] * len(g)):
                out.update(got)
    return out


def _rate_off(testbed: Testbed, pair: tuple[str, str], r: dict) -> bool:
    rate = testbed.link(*pair).rate_bps
    return bool("error" in r or (rate and abs(_wire_rate(r) / rate - 1) > TOLERANCE))


def _delay_off(testbed: Testbed, pair: tuple[str, str], r: dict, hold: dict) -> bool:
    want = testbed.link(*pair).delay_s * 1e3
    got = r["one_way_ms"][len(r["one_way_ms"]) // 4] + hold["held_ms"]
    return abs(got / want - 1) > TOLERANCE and abs(got - want) > DELAY_SLACK_MS


def _check(
    clients: dict[str, NodeClient],
    ips: dict[str, str],
    testbed: Testbed,
    node_holds_delay: bool,
    seconds: float,
    pings: int,
    cpu_seconds: float | None,
) -> tuple[list[dict], dict[str, dict]]:
    devs = [d.name for d in testbed.devices if d.name in clients]
    t0 = time.perf_counter()
    got, spun = schedule(clients, ips, testbed, _rounds(devs), SINK_PORT, seconds, pings, cpu_seconds)
    again = [p for p, r in got.items() if _rate_off(testbed, p, r)]
    log.info(
        "%d transfers and %d busy loops in %.1f s, %d to measure again",
        len(got),
        len(spun),
        time.perf_counter() - t0,
        len(again),
    )
    if again:  # one more try, in a schedule of their own, for links whose rate looks off
        t0 = time.perf_counter()
        rounds = _matching_rounds(again)
        seen = {p: _wire_rate(got[p]) for p in again if "error" not in got[p]}  # a faster link fills its slot
        got |= schedule(clients, ips, testbed, rounds, RETRY_PORT, seconds, pings, rates=seen)[0]
        log.info("%d transfers again in %d rounds, %.1f s", len(again), len(rounds), time.perf_counter() - t0)
    failed = {p: r["error"] for p, r in got.items() if "error" in r}
    if failed:
        (src, dst), why = next(iter(failed.items()))
        raise RuntimeError(f"{len(failed)} link transfer(s) failed, {src}->{dst} first: {why}")
    retried = set(again)
    held: dict[tuple[str, str], dict] = {}
    if node_holds_delay:
        delayed = [p for p in got if testbed.link(*p).delay_s > 0]
        t0 = time.perf_counter()
        held = node_holds(clients, testbed, delayed)
        off = [p for p in delayed if _delay_off(testbed, p, got[p], held[p])]
        log.info("holds of %d links in %.1f s, %d to probe again", len(delayed), time.perf_counter() - t0, len(off))
        if off:  # once more, for links whose delay looks off
            t0 = time.perf_counter()
            held |= node_holds(clients, testbed, off)
            retried |= set(off)
            log.info("holds of %d links again in %.1f s", len(off), time.perf_counter() - t0)
    out = []
    for src, dst in sorted(got, key=lambda p: (devs.index(p[0]), devs.index(p[1]))):
        cfg = testbed.link(src, dst)
        row = link_row(src, dst, cfg.rate_bps, cfg.delay_s, got[(src, dst)], held.get((src, dst)))
        out.append(row | {"retried": (src, dst) in retried})
    return out, spun


def check_links(
    nodes: Nodes,
    ips: dict[str, str],
    testbed: Testbed,
    node_holds_delay: bool,
    seconds: float = 0.5,
    pings: int = 10,
) -> list[dict]:
    """Every link's rate and delay between the running nodes (`ips`: each device's address on
    the testbed's network, what tc matches and the sinks listen on). `node_holds_delay`: the
    receiving nodes hold the delay themselves (no netem), so their holds are probed too."""
    return _check(_clients(nodes), ips, testbed, node_holds_delay, seconds, pings, None)[0]


def cpu_rows(testbed: Testbed, spun: dict[str, dict], seconds: float) -> list[dict]:
    """Every node's CPU cap against what its busy loop got (CPU time over wall time)."""
    out = []
    for d in (d for d in testbed.devices if d.name in spun):
        r = spun[d.name]
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
                "method": f"busy loop beside the node for {seconds:g} s: CPU time / wall time",
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


def check_nodes(
    nodes: Nodes,
    ips: dict[str, str],
    testbed: Testbed,
    emulation: LinkEmulation | None = None,
    link_seconds: float = 0.5,
    cpu_seconds: float = 2.0,
) -> dict:
    """Configured versus achieved for every link and CPU cap of a running testbed, measured
    through its nodes: `nodes` a Deployment (any runtime) or each device's NodeClient; `ips` each
    device's address on the testbed's network; `emulation` how its links are emulated (default:
    the Deployment's)."""
    if emulation is None:
        if not isinstance(nodes, Deployment):
            raise ValueError("check_nodes needs the link emulation where it is given no Deployment")
        emulation = nodes.link_emulation
    t0 = time.perf_counter()
    links, spun = _check(_clients(nodes), ips, testbed, emulation.node_holds_delay, link_seconds, 10, cpu_seconds)
    cpus = cpu_rows(testbed, spun, cpu_seconds)
    return {
        "links": links,
        "cpus": cpus,
        "flagged": flagged_lines(links, cpus),
        "tolerance": TOLERANCE,
        "seconds": round(time.perf_counter() - t0, 2),
    }
