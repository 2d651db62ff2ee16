"""Fidelity of a Docker testbed: configured versus achieved for every link and CPU cap.

Starts devices/edge4.yaml (or the devices file given: `bench/bench_fidelity.py devices/fleet32.yaml`)
as its own testbed (name `benchfid`, its own subnet), times start and stop, runs the fidelity check
through the nodes' Measure calls (tc-shaped TCP transfers between the containers, the holds the
nodes apply, busy loops under each CPU quota), prints the table, and exits 1 if anything is off by
more than 10%.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from rich.console import Console

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.config import load_devices  # noqa: E402
from orchestrator.driving.client import NodeClient  # noqa: E402
from orchestrator.runtimes import docker as dk  # noqa: E402
from orchestrator.runtimes.docker_commands import fidelity_table  # noqa: E402
from orchestrator.runtimes.docker_fidelity import check_nodes  # noqa: E402
from orchestrator.runtimes.docker_testbed import testbed_spec  # noqa: E402

NAME, SUBNET = "benchfid", "10.213.250.0/24"


def main() -> int:
    con = Console()
    client = dk.engine()
    if client is None:
        con.print("no Docker engine answers: nothing to measure")
        return 0
    devices = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "devices" / "edge4.yaml"
    tb = load_devices(devices)
    spec = testbed_spec(tb, NAME, SUBNET, workspace=ROOT / "runs")
    t0 = time.perf_counter()
    try:
        nodes = dk.up(client, spec)
        up_s = time.perf_counter() - t0
        clients = {d: NodeClient(d, h.control_address) for d, h in nodes.items()}
        emulation = dk.link_emulation_of(next(iter(clients.values())))
        fid = check_nodes(clients, {c.device: c.ip for c in spec.containers}, tb, emulation)
        for c in clients.values():
            c.close()
    finally:
        t1 = time.perf_counter()
        dk.down(client, NAME)
        down_s = time.perf_counter() - t1
    con.print(fidelity_table(fid))
    con.print(
        f"{len(tb.devices)}-device testbed: up {up_s:.1f} s, down {down_s:.1f} s; "
        f"check {fid['seconds']:.1f} s ({len(fid['links'])} links, {len(fid['cpus'])} CPU caps)"
    )
    worst_link = max(abs(x["error"]) for x in fid["links"] if x["error"] is not None)
    worst_cpu = max(abs(x["error"]) for x in fid["cpus"])
    worst_delay = max((abs(x["delay_error"]) for x in fid["links"] if x["delay_error"] is not None), default=0.0)
    con.print(
        f"worst link rate error {worst_link:.1%}, worst delay error {worst_delay:.1%} ({emulation.describe()}), "
        f"worst CPU cap error {worst_cpu:.1%} (tolerance 10%)"
    )
    for f in fid["flagged"]:
        con.print(f"[red]off by more than 10%:[/red] {f}")
    return 1 if fid["flagged"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
