"""Planning time of the exact `optimal` placement: ViT-B on an 8-device testbed.

Graph loading (I/O and shape inference) is timed apart; the figure that matters is the
planning itself, target under 1 s. Baselines: the `even` algorithm on the same graph, and the
number of (cut set x device sequence) placements a brute force would have to score.

Run: .venv/bin/python bench/bench_planning.py [--cache .cache] [--repeat 5]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.config import Device, Link, Testbed  # noqa: E402
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


def testbed() -> Testbed:
    return Testbed(
        devices=[Device(name=n, cpus=c, memory=m, bandwidth=b, delay=d) for n, c, m, b, d in DEVICES],
        links=[Link(**{"from": "laptop", "to": "jetson", "bandwidth": "1gbit", "delay": "1ms"})],
    )


def brute_force_count(blocks: int, devices: int) -> int:
    """Placements a brute force scores: sum over k of C(blocks-1, k-1) * P(devices, k)."""
    return sum(math.comb(blocks - 1, k - 1) * math.perm(devices, k) for k in range(1, min(blocks, devices) + 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default=str(ROOT / "models" / "vit_b16.onnx"))
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()

    model = ensure_vit(args.model)
    tb = testbed()
    t = time.perf_counter()
    g = load_graph(model)
    print(f"load + analyse {model.name} ({g.n} nodes): {time.perf_counter() - t:.2f} s (I/O, not counted)")

    for objective in ("throughput", "latency"):
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
        t = time.perf_counter()
        ev_pl = even(problem)
        t_even = time.perf_counter() - t
        a, bounds = build_arrays(g, tb.devices, tb.links, source=SOURCE)
        names = [d.name for d in tb.devices]
        idx = {p: i for i, p in enumerate(bounds)}
        ev_opt = evaluate(a, [idx[c] for c in pl.cuts], [names.index(d) for d in pl.devices])
        nb = len(bounds) - 1
        print(
            f"optimal ({objective}) plan for ViT-B on {len(names)} devices: {min(times):.3f} s "
            f"(best of {args.repeat}, target < 1 s); even: {t_even:.3f} s; brute force would score "
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


if __name__ == "__main__":
    main()
