"""A fleet of 32 devices on one host (devices/fleet32.yaml: 0.05 CPUs and 256 MiB each).

Planning (no engine needed): `optimal` plans ViT-B over the 32 devices exactly, for throughput and
latency, next to the same planner on 12 distinct devices (the most it could plan before it grouped
alike devices into types) measured in the same run; then how its time grows with the number of
distinct device types over 32 devices (1: all alike, no source; 2: the source and 31 alike; 3; 4:
the fleet itself). Median of --repeat.

Testbed (needs a Docker engine and the node image): --runs times `testbed up` and `testbed down` of
the fleet (the functions the command line calls), the fidelity check once, through the Docker
runtime (its worst link rate and delay errors), each against its target: up < 30 s, check < 60 s,
errors within 10%, down < 10 s. --job also runs jobs/vit_fleet12.yaml (ViT-B over 12 of the
devices) through the command line and prints its figures. Exits 1 when a target is missed.

Run: .venv/bin/python bench/bench_fleet.py [--runs 3] [--repeat 5] [--job] [--plan-only]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

from benchlib import ROOT, median, run_job_reports, verdict

from orchestrator.config import TIME_OBJECTIVES, Device, Testbed, load_devices
from orchestrator.models import ensure_vit
from orchestrator.partition import Problem, load_graph
from orchestrator.partition.costmodel import build_arrays
from orchestrator.partition.optimal import device_types, optimal, solve_arrays, state_count
from orchestrator.partition.problem import Placement

FLEET = ROOT / "devices" / "fleet32.yaml"
JOB = ROOT / "jobs" / "vit_fleet12.yaml"
NAME, SUBNET = "benchfleet", "10.213.248.0/24"
UP_S, CHECK_S, ERROR, DOWN_S, PLAN_S = 30.0, 60.0, 0.10, 10.0, 1.0

# (type, bandwidth, delay) of the fleet's kinds, as in devices/fleet32.yaml
KINDS = [
    ("laptop", "100mbit", "2ms"),
    ("tablet", "80mbit", "4ms"),
    ("phone", "40mbit", "8ms"),
    ("watch", "10mbit", "15ms"),
]


def fleet(counts: list[int]) -> Testbed:
    """Devices of the fleet's kinds, `counts[k]` of kind k, 0.05 CPUs and 256 MiB each."""
    devs = []
    for (kind, bw, delay), n in zip(KINDS, counts, strict=False):
        devs += [
            Device(name=f"{kind}-{i}", type=kind, cpus=0.05, memory="256MiB", bandwidth=bw, delay=delay)
            for i in range(1, n + 1)
        ]
    return Testbed(devices=devs)


def distinct(n: int) -> Testbed:
    """n devices no two alike (each its own rate): n types for the planner."""
    return Testbed(
        devices=[
            Device(name=f"dev-{i}", cpus=0.05, memory="256MiB", bandwidth=f"{10 + 5 * i}mbit", delay="5ms")
            for i in range(n)
        ]
    )


class Timed(NamedTuple):
    whole_s: float  # `optimal` as the run calls it: arrays, types, the search, the prediction
    search_s: float  # the exact search alone (solve_arrays), on arrays built once
    placement: Placement
    counts: list[int]  # devices of each type the planner sees


def plan_times(g, tb: Testbed, source: str | None, objective: str, repeat: int) -> Timed:
    """Medians of `repeat` timings of `optimal` on this testbed, whole and its search alone."""
    problem = Problem(
        graph=g,
        devices=tb.devices,
        stages=None,
        objective=objective,
        points=[],
        block_cost=list(g.cost),
        links=tb.links,
        source=source,
    )
    whole, search, pl = [], [], None
    for _ in range(repeat):
        t = time.perf_counter()
        pl = optimal(problem)
        whole.append(time.perf_counter() - t)
    a, _ = build_arrays(g, tb.devices, tb.links, source=source)
    for _ in range(repeat):
        t = time.perf_counter()
        solve_arrays(a, objective)
        search.append(time.perf_counter() - t)
    return Timed(median(whole), median(search), pl, [len(t) for t in device_types(a)])


def planning(model: Path, repeat: int) -> list[tuple[bool, str]]:
    g = load_graph(model)
    tb = load_devices(FLEET)
    results = []
    print(f"planning ViT-B ({model.name}, {g.n} nodes) with `optimal`, median of {repeat} (whole / search alone):")
    for objective in TIME_OBJECTIVES:
        f = plan_times(g, tb, "laptop", objective, repeat)
        b = plan_times(g, distinct(12), "dev-0", objective, repeat)
        pred = f.placement.predicted
        print(
            f"  {objective}: 32 devices ({len(f.counts)} types, {state_count(f.counts)} states) "
            f"{f.whole_s:.3f} / {f.search_s:.3f} s -> {len(f.placement.devices)} stages, predicted "
            f"{pred.throughput_fps:.2f} fps, {pred.latency_s:.1f} s; baseline: 12 distinct devices (the most "
            f"it planned before types; {state_count(b.counts)} states) {b.whole_s:.3f} / {b.search_s:.3f} s"
        )
        results.append((f.whole_s < PLAN_S, f"optimal ({objective}) over 32 devices {f.whole_s:.3f} s < {PLAN_S:g} s"))
    print("  growth with the distinct types over 32 devices (throughput; latency), whole / search alone:")
    sweeps = [(fleet([32]), None), (fleet([32]), "laptop-1"), (fleet([1, 16, 15]), "laptop-1"), (tb, "laptop")]
    for tbk, source in sweeps:
        row = [plan_times(g, tbk, source, objective, repeat) for objective in TIME_OBJECTIVES]
        counts = row[0].counts
        print(
            f"    {len(counts)} type(s), counts {counts}{'' if source else ' (no source)'}: "
            f"{state_count(counts)} states: " + "; ".join(f"{x.whole_s:.3f} / {x.search_s:.3f} s" for x in row)
        )
    return results


def testbed_figures(runs: int) -> list[tuple[bool, str]] | None:
    from orchestrator.runtimes import docker as dk
    from orchestrator.runtimes.docker_testbed import testbed_spec

    client = dk.engine()
    if client is None or not dk.image_present(client):
        print("testbed: no Docker engine answers, or no node image (`make image`): not measured")
        return None
    tb = load_devices(FLEET)
    spec = testbed_spec(tb, NAME, SUBNET, workspace=(ROOT / "runs").resolve())
    ups, downs, fid, fid_error = [], [], None, ""
    for i in range(runs):
        t0 = time.perf_counter()
        try:
            dk.up(client, spec)
            ups.append(time.perf_counter() - t0)
            if fid is None and not fid_error:
                try:
                    fid = fidelity(tb)
                except Exception as e:  # reported as a missed target, the rest still measured
                    fid_error = f"{type(e).__name__}: {e}"
        finally:
            t1 = time.perf_counter()
            dk.down(client, NAME)
            downs.append(time.perf_counter() - t1)
        print(f"  run {i + 1}: up {ups[-1]:.1f} s, down {downs[-1]:.1f} s", flush=True)
    up_s, down_s = median(ups), median(downs)
    spread = ", ".join
    rows = [(up_s < UP_S, f"up {up_s:.1f} s (median of {runs}: {spread(f'{x:.1f}' for x in ups)}) < {UP_S:g} s")]
    if fid is None:
        rows.append((False, f"fidelity check failed: {fid_error[:300]}"))
    else:
        rate = [abs(x["error"]) for x in fid["links"] if x.get("error") is not None]
        delay = [abs(x["delay_error"]) for x in fid["links"] if x.get("delay_error") is not None]
        worst_rate, worst_delay = max(rate, default=0.0), max(delay, default=0.0)
        rows += [
            (
                fid["seconds"] < CHECK_S,
                f"fidelity check {fid['seconds']:.1f} s ({len(fid['links'])} links) < {CHECK_S:g} s",
            ),
            (
                worst_rate <= ERROR,
                f"worst link rate error {worst_rate:.1%} <= {ERROR:.0%} ({len(rate)} links measured)",
            ),
            (worst_delay <= ERROR, f"worst link delay error {worst_delay:.1%} <= {ERROR:.0%} ({len(delay)} links)"),
        ]
        flagged = fid.get("flagged", [])
        if flagged:
            print(f"  {len(flagged)} off by more than 10%{', the first 10' if len(flagged) > 10 else ''}:")
        for f in flagged[:10]:
            print(f"    {f}")
    rows.append(
        (down_s < DOWN_S, f"down {down_s:.1f} s (median of {runs}: {spread(f'{x:.1f}' for x in downs)}) < {DOWN_S:g} s")
    )
    return rows


def fidelity(tb: Testbed) -> dict:
    """The runtime's own fidelity check on the running fleet (held while it runs)."""
    from orchestrator.runtimes.docker import DockerRuntime

    with tempfile.TemporaryDirectory() as tmp:
        rt = DockerRuntime(tb, Path(tmp), ROOT / "runs", testbed_name=NAME)
        rt.start()
        try:
            return rt.fidelity_check()
        finally:
            rt.stop()


def job_figures() -> list[tuple[bool, str]]:
    t = time.perf_counter()
    import yaml

    job = yaml.safe_load(JOB.read_text())
    job.update(model=str((JOB.parent / job["model"]).resolve()), devices=str((JOB.parent / job["devices"]).resolve()))
    rc, reps = run_job_reports(job, runtime="docker")
    rep = next(iter(reps.values()), None)
    took = time.perf_counter() - t
    if rc != 0 or rep is None:
        return [(False, f"{JOB.name} failed (exit {rc}) after {took:.0f} s")]
    agree = rep["agreement"]
    stages = " > ".join(s["device"] for s in rep["stages"])
    print(
        f"  {JOB.name}: {rep['requests']} requests, {rep['throughput_fps']:.2f} fps, latency p50 "
        f"{rep['latency_ms']['p50'] / 1e3:.1f} s, {len(rep['stages'])} stages ({stages}), {took:.0f} s in all"
    )
    exact = agree.get("top1") == 1.0 and agree.get("max_abs_diff") == 0.0
    return [(exact, f"{JOB.name}: agreement {agree.get('top1')}, max abs diff {agree.get('max_abs_diff')} (exact)")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "models" / "vit_b16.onnx"))
    ap.add_argument("--repeat", type=int, default=5, help="planning runs per figure (median)")
    ap.add_argument("--runs", type=int, default=3, help="testbed up/down cycles (median)")
    ap.add_argument("--job", action="store_true", help=f"also run {JOB.relative_to(ROOT)} on the docker runtime")
    ap.add_argument("--plan-only", action="store_true", help="planning figures only, no engine")
    args = ap.parse_args()

    rows = planning(ensure_vit(args.model), args.repeat)
    if not args.plan_only:
        print("32-device testbed (devices/fleet32.yaml, docker runtime):", flush=True)
        rows += testbed_figures(args.runs) or []
        if args.job:
            rows += job_figures()
    for ok, line in rows:
        print(f"  {'pass  ' if ok else 'MISSED'} {line}")
    missed = [line for ok, line in rows if not ok]
    return verdict(not missed, "every figure within its target" if not missed else f"{len(missed)} missed")


if __name__ == "__main__":
    raise SystemExit(main())
