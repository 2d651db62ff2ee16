"""Planning time of the exact `optimal` placement: ViT-B on an 8-device testbed.

Graph loading (I/O and shape inference) is timed apart; the figure that matters is the
planning itself (median of --repeat), target under 1 s for each objective; exits 1 when missed.
Baselines: the `even` algorithm on the same graph (its time, and the ratio), and the number of
(cut set x device sequence) placements a brute force would have to score.

Run: .venv/bin/python bench/bench_planning.py [--cache .cache] [--repeat 5]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

from benchlib import verdict

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.config import TIME_OBJECTIVES, Device, Link, Testbed  # noqa: E402
from orchestrator.models import ensure_vit  # noqa: E402
from orchestrator.partition import Problem, load_graph  # noqa: E402
from orchestrator.partition.algorithms import even  # noqa: E402
from orchestrator.partition.costmodel import build_arrays, evaluate  # noqa: E402
from orchestrator.partition.optimal import optimal  # noqa: E402

# (name, cpus, memory, egress bandwidth, delay): a mixed edge testbed
DEVICES = [
    ("phone", 0.5, "1GiB", "20mbit", "10ms"),
    ("tablet", 1.0, "2GiB", "50mbit", "8ms"),
    ("pi4", 1.0, "512MiB", "100mbit", "2ms"),
    ("pi5", 2.0, "1GiB", "100mbit", "2ms"),
    ("jetson", 3.0, "2GiB", "200mbit", "2ms"),
    ("laptop", 4.0, "4GiB", "300mbit", "3ms"),
    ("nuc", 4.0, "256MiB", "1gbit", "1ms"),
    ("gateway", 1.5, "512MiB", "1gbit", "1ms"),
]


SOURCE = "gateway"  # where frames come from and results go
TARGET_S = 1.0


def testbed() -> Testbed:
    return Testbed(
        devices=[Device(name=n, cpus=c, memory=m, bandwidth=b, delay=d) for n, c, m, b, d in DEVICES],
        links=[Link(**{"from": "laptop", "to": "jetson", "bandwidth": "1gbit", "delay": "1ms"})],
    )


def brute_force_count(blocks: int, devices: int) -> int:
    """Placements a brute force scores: sum over k of C(blocks-1, k-1) * P(devices, k)."""
    return sum(math.comb(blocks - 1, k - 1) * math.perm(devices, k) for k in range(1, min(blocks, devices) + 1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "models" / "vit_b16.onnx"))
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()

    model = ensure_vit(args.model)
    tb = testbed()
    t = time.perf_counter()
    g = load_graph(model)
    print(f"load + analyse {model.name} ({g.n} nodes): {time.perf_counter() - t:.2f} s (I/O, not counted)")

    planning: dict[str, float] = {}
    for objective in TIME_OBJECTIVES:
        problem = Problem(
            graph=g,
            devices=tb.devices,
            stages=None,
            objective=objective,
            points=[],
            block_cost=list(g.cost),
            links=tb.links,
            source=SOURCE,
        )
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            pl = optimal(problem)
            times.append(time.perf_counter() - t)
        even_times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            ev_pl = even(problem)
            even_times.append(time.perf_counter() - t)
        t_opt, t_even = statistics.median(times), statistics.median(even_times)
        planning[objective] = t_opt
        a, bounds = build_arrays(g, tb.devices, tb.links, source=SOURCE)
        names = [d.name for d in tb.devices]
        idx = {p: i for i, p in enumerate(bounds)}
        ev_opt = evaluate(a, [idx[c] for c in pl.cuts], [names.index(d) for d in pl.devices])
        nb = len(bounds) - 1
        print(
            f"optimal ({objective}) plan for ViT-B on {len(names)} devices: {t_opt:.3f} s (median of "
            f"{args.repeat}, best {min(times):.3f}; target < {TARGET_S:g} s); even: {t_even:.4f} s, "
            f"optimal {t_opt / t_even:.0f}x its time; brute force would score "
            f"{brute_force_count(nb, len(names)):,} placements over the same {nb} blocks"
        )
        line = (
            f"  -> {' > '.join(pl.devices)}: bottleneck {ev_opt.bottleneck_s * 1e3:.0f} ms, "
            f"latency {ev_opt.latency_s * 1e3:.0f} ms"
        )
        if all(c in idx for c in ev_pl.cuts):  # even's cuts are candidates: score it the same way
            e = evaluate(a, [idx[c] for c in ev_pl.cuts], [names.index(d) for d in ev_pl.devices])
            line += f"; even over all 8: bottleneck {e.bottleneck_s * 1e3:.0f} ms, latency {e.latency_s * 1e3:.0f} ms"
        print(line)
    slowest = max(planning, key=planning.get)
    return verdict(
        planning[slowest] < TARGET_S,
        f"optimal planning {planning[slowest]:.3f} s at most ({slowest}), target < {TARGET_S:g} s",
    )


if __name__ == "__main__":
    sys.exit(main())
