"""How faithfully a run emulated its testbed, from what the run itself saw: each node-paced link's
achieved rate from the hops' stamps, and how busy the host's CPUs were while driving."""

from __future__ import annotations

import numpy as np

from orchestrator.config import Testbed
from orchestrator.figures.metrics import HopSample

MIN_MEASURABLE_S = 0.005  # a frame must hold its link this long for the rate to show through per-frame overheads
HOST_BUSY_FLAG = 0.90  # share of all host CPUs busy while driving, above which a run is flagged


def host_busy_share(before, after) -> float:
    """Share of the host's CPU time spent busy between two psutil.cpu_times() readings."""
    total = sum(after) - sum(before)
    idle = (after.idle - before.idle) + (getattr(after, "iowait", 0.0) - getattr(before, "iowait", 0.0))
    return max(0.0, 1.0 - idle / total) if total > 0 else 0.0


def host_busy_flag(share: float) -> str | None:
    """The fidelity flag of a host too busy to give every device its CPU cap, or None."""
    if share <= HOST_BUSY_FLAG:
        return None
    return (
        f"host CPUs {share:.0%} busy while driving: the host itself may have been the bottleneck, "
        "so devices may have had less than their CPU caps"
    )


def link_fidelity(samples: list[HopSample], measured_ids: set[int], testbed: Testbed) -> list[dict]:
    """Achieved rate per node-paced link: bytes over transmission time (queueing and delay excluded)."""
    acc: dict[tuple[str, str], list[float]] = {}
    for h in samples:
        rate = testbed.link(h.src, h.dst).rate_bps
        if h.id in measured_ids and rate and h.busy_s > 0 and h.bytes > 0:
            acc.setdefault((h.src, h.dst), [])
            if h.bytes * 8 / rate >= MIN_MEASURABLE_S:
                acc[(h.src, h.dst)].append(h.bytes * 8 / h.busy_s)
    out = []
    for (src, dst), rates in acc.items():
        cfg = testbed.link(src, dst)
        ach = float(np.median(rates)) if rates else None
        out.append(
            {
                "from": src,
                "to": dst,
                "configured_bps": cfg.rate_bps,
                "achieved_bps": round(ach) if ach else None,
                "configured_delay_ms": cfg.delay_s * 1e3,
                "achieved_delay_ms": None,
                "error": round(ach / cfg.rate_bps - 1, 4) if ach else None,
                "method": "hop timestamps, node pacing"
                if ach
                else f"not measured: frames take under {MIN_MEASURABLE_S * 1e3:.0f} ms on this link",
            }
        )
    return out


def fidelity_figures(
    checked: dict | None, samples: list[HopSample], measured_ids: set[int], testbed: Testbed, host_busy: float
) -> dict:
    """The report's `fidelity`: the runtime's check between the real containers where it ran (`checked`),
    else the links as the hops saw them; flagged with a host too busy to keep the caps."""
    from_hops = link_fidelity(samples, measured_ids, testbed)
    if checked is not None:
        out = {
            "links": checked["links"],
            "cpus": checked["cpus"],
            "flagged": list(checked["flagged"]),
            "seconds": checked["seconds"],
            "links_from_hops": from_hops,
        }
    else:
        out = {"links": from_hops, "cpus": None, "flagged": []}
    busy = host_busy_flag(host_busy)
    if busy:
        out["flagged"].append(busy)
    return out
