"""Trace fidelity on the Docker testbed: does a link follow a mobility trace as a run applies it?

Starts devices/edge4.yaml as its own testbed (name `benchtrace`, its own subnet) and replays the
first SECONDS of traces/train_hsdpa.txt (two-column) and of traces/train_hsdpa.mahi (Mahimahi) on
phone -> laptop, saturated with TCP (orchestrator/runtimes/docker_trace_check.py, what `orchestrator
testbed check --scenario` runs). Prints per format the share of 1-s windows within 10% of the
trace (target >= 90%), the worst 100-ms window over the rate around a change (target <= 10%) and
how late the changes took effect at p99 (target <= 50 ms). Baselines in the same run: the same
measure on the link held at a fixed rate (what the measure itself reads when nothing changes), and
the time one change takes through `docker exec tc class change` (the way around the node).

    .venv/bin/python bench/bench_trace_fidelity.py [--seconds 30]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from rich.console import Console

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.benchlib import verdict  # noqa: E402
from orchestrator.config import load_devices  # noqa: E402
from orchestrator.runtimes import docker as dk  # noqa: E402
from orchestrator.runtimes.docker_commands import trace_tables  # noqa: E402
from orchestrator.runtimes.docker_trace_check import (  # noqa: E402
    LATENESS_TARGET_MS,
    WITHIN_TARGET,
    check_scenario,
)
from orchestrator.scenario import load_scenario  # noqa: E402

NAME, SUBNET = "benchtrace", "10.213.251.0/24"
LINK = {"from": "phone", "to": "laptop"}
TRACES = {"two-column": ROOT / "traces" / "train_hsdpa.txt", "mahimahi": ROOT / "traces" / "train_hsdpa.mahi"}
FIXED = "3mbit"
OVERSHOOT_TARGET = 0.10


def exec_change_ms(rt: dk.DockerRuntime, n: int = 5) -> list[float]:
    """The baseline path: one `tc class change` through `docker exec` in the sender's container."""
    from node.tc import parse_u32_flows

    cont, ip = rt.containers["phone"], rt.spec.by_device()["laptop"].ip
    classid = parse_u32_flows(cont.exec_run(["tc", "filter", "show", "dev", "eth0"]).output.decode())[ip]
    rate = rt.testbed.link("phone", "laptop").rate_bps
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        cmd = f"tc class change dev eth0 parent 1: classid {classid} htb rate {rate}bit ceil {rate}bit burst 6056b"
        res = cont.exec_run(cmd.split())
        out.append((time.perf_counter() - t0) * 1e3)
        assert res.exit_code == 0, res.output
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="how much of each trace to replay")
    ap.add_argument("--fixed-seconds", type=float, default=15.0, help="the fixed-rate baseline's length")
    ap.add_argument("--json", help="write every figure to this file")
    a = ap.parse_args()
    con = Console()
    if dk.engine() is None:
        con.print("no Docker engine answers: nothing to measure")
        return 0
    tb = load_devices(ROOT / "devices" / "edge4.yaml")
    results = {}
    with dk.DockerRuntime(tb, ROOT / "logs" / NAME, ROOT / "runs", testbed_name=NAME, subnet=SUBNET) as rt:
        rt.start()
        if not rt.owned:
            con.print(f"[red]testbed {NAME!r} was already up: `orchestrator testbed down --name {NAME}` first")
            return 1
        for fmt, path in TRACES.items():
            spec = {"events": [{"at": "0s", "link": LINK, "trace": str(path), "trace_format": fmt}]}
            sc = load_scenario(spec, base_dir=ROOT, testbed=tb, file=f"{path.name} ({fmt})")
            results[fmt] = check_scenario(rt, sc, a.seconds)
        spec = {"events": [{"at": "0s", "link": LINK, "bandwidth": FIXED}]}
        sc = load_scenario(spec, base_dir=ROOT, testbed=tb, file=f"fixed {FIXED}")
        fixed = check_scenario(rt, sc, a.fixed_seconds)
        exec_ms = exec_change_ms(rt)
    if a.json:
        Path(a.json).write_text(json.dumps({"traces": results, "fixed": fixed, "exec_change_ms": exec_ms}, indent=1))
    ok = True
    for fmt, res in results.items():
        for t in trace_tables(res)[-1:]:
            con.print(t)
        x = res["links"][0]
        late = x["lateness_ms"]
        good = (
            x["within_share"] >= WITHIN_TARGET
            and x["worst_overshoot"] <= OVERSHOOT_TARGET
            and late["p99"] <= LATENESS_TARGET_MS
        )
        ok &= good
        con.print(
            f"{fmt:>10} ({TRACES[fmt].name}, first {a.seconds:g} s, {late['n']} changes): "
            f"{x['within_share']:.0%} of 1-s windows within 10% (target >= {WITHIN_TARGET:.0%}), "
            f"worst 100-ms overshoot {x['worst_overshoot']:+.1%} (target <= {OVERSHOOT_TARGET:.0%}), "
            f"applied late p50 {late['p50']:.1f} ms, p99 {late['p99']:.1f} ms (target <= {LATENESS_TARGET_MS:.0f} ms)"
        )
    f = fixed["links"][0]
    con.print(
        f"  baseline: the link held at {FIXED} for {a.fixed_seconds:g} s: {f['within_share']:.0%} of 1-s windows "
        f"within 10%; one change by `docker exec tc class change`: median {statistics.median(exec_ms):.0f} ms, "
        f"max {max(exec_ms):.0f} ms"
    )
    return verdict(
        ok,
        f"both trace formats: >= {WITHIN_TARGET:.0%} of 1-s windows within 10%, 100-ms overshoot <= "
        f"{OVERSHOOT_TARGET:.0%}, changes applied within {LATENESS_TARGET_MS:.0f} ms at p99",
    )


if __name__ == "__main__":
    raise SystemExit(main())
