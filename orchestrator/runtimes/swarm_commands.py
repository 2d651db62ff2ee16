"""`orchestrator testbed up/down/status/check --runtime swarm`: the swarm testbed's own commands
(cli.py loads this module only when one runs). The orchestrator never makes or leaves a swarm on
its own: `up --init` makes a single-node one where the engine is in none, and says so."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console

from orchestrator.config import load_devices
from orchestrator.errors import UserError
from orchestrator.runtimes import swarm_services as sw
from orchestrator.runtimes.docker_commands import LOGS, _engine, removable, show_fidelity, show_status
from orchestrator.runtimes.docker_testbed import LABEL_CONFIG, LABEL_TESTBED
from orchestrator.runtimes.swarm import SwarmRuntime, shape_links


def status(client, name: str | None, con: Console) -> int:
    rows = sw.status(client, name)
    if not rows:
        con.print(f"no swarm testbed {name!r} is running" if name else "no swarm testbed is running")
        return 0
    columns = [("testbed", "testbed"), ("device", "device"), ("service", "container"), ("task", "status")]
    columns += [("host", "host"), ("reached at", "address"), ("overlay ip", "ip"), ("cpus", "cpus")]
    return show_status(rows, con, "swarm testbed", [*columns, ("memory MiB", "memory")])


def up(a: argparse.Namespace, client, con: Console) -> int:
    tb = load_devices(a.devices)
    if a.init and not sw.is_manager(client):
        if (client.info().get("Swarm") or {}).get("LocalNodeState") == "active":
            raise UserError("the engine is a swarm worker: run this on a manager", "--init")
        con.print(sw.init_single_node(client))
    spec = sw.swarm_spec(tb, a.name)
    sw.require_manager(client)
    running = sw.testbed_services(client, a.name)
    if running and {s.attrs["Spec"]["Labels"].get(LABEL_CONFIG) for s in running} == {spec.config_hash}:
        sw.wait_nodes(client, a.name, 30)
        con.print(f"swarm testbed {a.name!r} is already up with these devices")
        return 0
    t0 = time.perf_counter()
    handles = sw.up(client, spec)
    shape_links(handles, tb)
    con.print(
        f"swarm testbed {a.name!r} up in {time.perf_counter() - t0:.1f} s: {len(handles)} services on the overlay "
        f"{spec.network}; links shaped; runs write stats from the nodes themselves"
    )
    return status(client, a.name, con)


def down(a: argparse.Namespace, client, con: Console) -> int:
    t0 = time.perf_counter()
    found = {s.attrs["Spec"]["Labels"].get(LABEL_TESTBED) for s in sw.testbed_services(client)}
    found |= {(n.attrs.get("Labels") or {}).get(LABEL_TESTBED) for n in sw.testbed_networks(client)}
    n_s = n_n = 0
    for n in removable(found, a, con):
        s, k = sw.down(client, n)
        n_s, n_n = n_s + s, n_n + k
    con.print(f"removed {n_s} services and {n_n} networks in {time.perf_counter() - t0:.1f} s")
    return 0


def check(a: argparse.Namespace, client, con: Console) -> int:
    tb = load_devices(a.devices)
    if not sw.testbed_services(client, a.name):
        raise UserError(f"no swarm testbed {a.name!r} is running: `orchestrator testbed up --runtime swarm` first")
    with SwarmRuntime(tb, LOGS / "swarm_check", Path(a.workspace), testbed_name=a.name, client=client) as rt:
        rt.start()
        fid = rt.fidelity_check()
    return show_fidelity(fid, a.out, con)


def testbed(a: argparse.Namespace) -> int:
    con = Console()
    if a.action == "render":
        raise UserError("render writes docker-compose.yml: the docker runtime's (no --runtime swarm)", "--runtime")
    if getattr(a, "scenario", None):
        raise UserError("check --scenario replays links on the docker runtime only", "--scenario")
    client = _engine()
    if a.action == "up":
        return up(a, client, con)
    if a.init:
        raise UserError("--init goes with `up` only", "--init")
    sw.require_manager(client)
    if a.action == "down":
        return down(a, client, con)
    if a.action == "status":
        return status(client, a.name, con)
    if a.action == "check":
        return check(a, client, con)
    raise AssertionError(a.action)
