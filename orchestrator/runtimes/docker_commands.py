"""`orchestrator testbed up/down/status/check/render` and `orchestrator stats`: the Docker testbed's
own commands (cli.py defines their arguments and loads this module only when one runs). `check
--scenario` replays a scenario's link changes on the running testbed (docker_trace_check.py)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table

from orchestrator.config import load_devices
from orchestrator.driving.client import NodeClient
from orchestrator.errors import UserError
from orchestrator.runtimes import docker as dk
from orchestrator.runtimes.docker_fidelity import check_nodes
from orchestrator.runtimes.docker_hold import describe_holder, is_held
from orchestrator.runtimes.docker_stats import DockerStatsCollector
from orchestrator.runtimes.docker_testbed import COMPOSE_WORKSPACE, LABEL_DEVICE, render_compose, testbed_spec

LOGS = Path("logs")


def _engine():
    client = dk.engine()
    if client is None:
        raise RuntimeError("no Docker engine answers (is dockerd running, and may you use its socket?)")
    return client


def _collector_pid_file(name: str) -> Path:
    return LOGS / "stats" / f".collector-{name}.pid"


def _start_collector(name: str) -> None:
    """The background stats collector for a testbed up outside a run: logs/stats/<device>.jsonl."""
    out = LOGS / "stats"
    out.mkdir(parents=True, exist_ok=True)
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")]),
    )
    with open(LOGS / f"stats-collector-{name}.log", "a") as log:
        p = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.runtimes.docker_stats", "--testbed", name, "--out", str(out)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    _collector_pid_file(name).write_text(str(p.pid))


def _stop_collector(name: str) -> None:
    f = _collector_pid_file(name)
    try:
        pid = int(f.read_text())
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        if b"orchestrator.runtimes.docker_stats" in cmd:  # only the process we started
            os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError):
        pass
    f.unlink(missing_ok=True)


def _containers(client, name: str) -> dict:
    conts = {c.labels[LABEL_DEVICE]: c for c in dk.testbed_containers(client, name, all_=False)}
    if not conts:
        raise UserError(f"no testbed {name!r} is running: `orchestrator testbed up` first")
    return conts


def fidelity_table(fid: dict) -> Table:
    t = Table(title=f"fidelity: configured vs achieved ({fid['seconds']:.1f} s)")
    for col in ("what", "configured", "achieved", "error", "delay cfg ms", "delay ms", ""):
        t.add_column(col, justify="right" if col not in ("what", "") else "left")
    for x in fid["links"]:
        cfg, ach = x["configured_bps"], x["achieved_bps"]
        t.add_row(
            f"link {x['from']} -> {x['to']}",
            f"{cfg / 1e6:.1f} Mbit/s" if cfg else "unshaped",
            f"{ach / 1e6:.1f} Mbit/s" if ach else "-",
            f"{x['error']:+.1%}" if x["error"] is not None else "-",
            f"{x['configured_delay_ms']:.2f}",
            f"{x['achieved_delay_ms']:.2f}",
            "[red]FLAG" if x["flagged"] else "ok",
        )
    for x in fid["cpus"]:
        t.add_row(
            f"cpu {x['device']}",
            f"{x['configured']:g}",
            f"{x['achieved']:.3f}",
            f"{x['error']:+.1%}",
            "",
            "",
            "[red]FLAG" + (" (host busy)" if x["host_bound"] else "") if x["flagged"] else "ok",
        )
    return t


def show_fidelity(fid: dict, out: str | None, con: Console) -> int:
    """`testbed check`'s table and file (default logs/fidelity_<UTC>.json); exit 1 when anything is off."""
    con.print(fidelity_table(fid))
    path = Path(out) if out else LOGS / f"fidelity_{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(fid, indent=2) + "\n")
    for f in fid["flagged"]:
        con.print(f"[red]off by more than 10%:[/red] {f}")
    con.print(f"wrote {path}")
    return 1 if fid["flagged"] else 0


def removable(found: set[str | None], a: argparse.Namespace, con: Console) -> list[str]:
    """The testbeds `down` removes: --name's, or (--all) every one found; one a run holds only
    with --force (--all leaves it and says so; --name alone refuses)."""
    names = sorted(found - {None}) if a.all else [a.name]
    held = [n for n in names if is_held(n)]
    if held and not a.force:
        if not a.all:
            raise UserError(
                f"testbed {a.name!r} is in use by {describe_holder(a.name)}: wait for it, or --force", "--name"
            )
        for n in held:
            con.print(f"left testbed {n!r}: in use by {describe_holder(n)} (--force removes it)")
    return names if a.force else [n for n in names if n not in held]


def testbed(a: argparse.Namespace) -> int:
    """`orchestrator testbed ACTION`; `render` writes a file and needs no engine."""
    con = Console()
    if getattr(a, "init", False):
        raise UserError("--init makes a swarm: only with --runtime swarm", "--init")
    if a.action == "render":
        tb = load_devices(a.devices)
        text = render_compose(testbed_spec(tb, a.name, a.subnet, workspace=COMPOSE_WORKSPACE), a.devices)
        if a.out:
            Path(a.out).write_text(text)
            con.print(f"wrote {a.out}")
        else:
            sys.stdout.write(text)
        return 0
    client = _engine()
    if a.action == "up":
        tb = load_devices(a.devices)
        spec = testbed_spec(tb, a.name, a.subnet, workspace=Path(a.workspace).resolve())
        running = dk.testbed_containers(client, a.name)
        if running and {c.labels.get(dk.LABEL_CONFIG) for c in running} == {spec.config_hash}:
            dk.wait_nodes(client, a.name, 30)
            con.print(f"testbed {a.name!r} is already up with these devices")
            return 0
        t0 = time.perf_counter()
        hs = dk.up(client, spec)
        dt = time.perf_counter() - t0
        _start_collector(a.name)
        con.print(
            f"testbed {a.name!r} up in {dt:.1f} s: {len(hs)} containers on {spec.network} ({spec.subnet}), "
            f"workspace {spec.workspace}; stats -> {LOGS / 'stats'}/<device>.jsonl"
        )
        return status(client, a.name, con)
    if a.action == "down":
        t0 = time.perf_counter()
        found = {c.labels.get(dk.LABEL_TESTBED) for c in dk.testbed_containers(client)}
        found |= {(n.attrs.get("Labels") or {}).get(dk.LABEL_TESTBED) for n in dk.testbed_networks(client)}
        n_c = n_n = 0
        for n in removable(found, a, con):
            _stop_collector(n)
            c, k = dk.down(client, n)
            n_c, n_n = n_c + c, n_n + k
        con.print(f"removed {n_c} containers and {n_n} networks in {time.perf_counter() - t0:.1f} s")
        return 0
    if a.action == "status":
        return status(client, a.name, con)
    if a.action == "check" and getattr(a, "scenario", None):
        return scenario_check(a, con)
    if a.action == "check":
        conts = _containers(client, a.name)
        tb = load_devices(a.devices)
        missing = [d.name for d in tb.devices if d.name not in conts]
        if missing:
            raise UserError(f"testbed {a.name!r} has no container for {', '.join(missing)}", a.devices)
        ips = {d: dk.container_ip(c) for d, c in conts.items()}
        clients = {d: NodeClient(d, h.control_address) for d, h in dk.handles(client, a.name).items()}
        try:
            fid = check_nodes(clients, ips, tb, dk.link_emulation_of(next(iter(clients.values()))))
        finally:
            for c in clients.values():
                c.close()
        return show_fidelity(fid, a.out, con)
    raise AssertionError(a.action)


def trace_tables(res: dict) -> list[Table]:
    """Per link: configured against achieved for each second, then one summary row per link."""
    out = []
    for x in res["links"]:
        t = Table(title=f"link {x['from']} -> {x['to']}: configured vs achieved per second")
        for col in ("s", "configured", "achieved", "error", ""):
            t.add_column(col, justify="right" if col else "left")
        for w in x["windows"]:
            t.add_row(
                f"{w['t_s']:.0f}",
                f"{w['configured_bps'] / 1e6:.3f} Mbit/s",
                f"{w['achieved_bps'] / 1e6:.3f} Mbit/s",
                f"{w['error']:+.1%}" if w["error"] is not None else "-",
                "ok" if w["ok"] else "[red]off",
            )
        out.append(t)
    t = Table(title=f"scenario {res['scenario']}: links as applied ({res['seconds']:.0f} s)")
    for col in ("link", "changes", "seconds", "1-s windows within 10%", "worst 100-ms overshoot", "late p50", "p99"):
        t.add_column(col, justify="left" if col == "link" else "right")
    for x in res["links"]:
        late = x["lateness_ms"]
        t.add_row(
            f"{x['from']} -> {x['to']}",
            str(late["n"]),
            f"{x['seconds']:.0f}",
            f"{x['within_share']:.0%}" if x["within_share"] is not None else "-",
            f"{x['worst_overshoot']:+.1%}" if x["worst_overshoot"] is not None else "-",
            f"{late['p50']:.1f} ms" if late["p50"] is not None else "-",
            f"{late['p99']:.1f} ms" if late["p99"] is not None else "-",
        )
    out.append(t)
    return out


def scenario_check(a: argparse.Namespace, con: Console) -> int:
    """`testbed check --scenario S.yaml`: the running testbed's links follow the scenario's changes?"""
    from orchestrator.runtimes.docker_trace_check import check_scenario
    from orchestrator.scenario import load_scenario

    tb = load_devices(a.devices)
    path = Path(a.scenario)
    scenario = load_scenario(str(path), base_dir=Path.cwd(), testbed=tb, file=str(path))
    if a.seconds is not None and a.seconds <= 0:
        raise UserError("must be > 0 seconds", None, "--seconds")
    _containers(_engine(), a.name)  # a clear line when no testbed runs
    rt = dk.DockerRuntime(tb, LOGS / "trace_check", Path(a.workspace), testbed_name=a.name, subnet=a.subnet)
    with rt:
        rt.start()
        con.print(f"replaying {path}'s link changes on saturated links, one link at a time...")
        res = check_scenario(rt, scenario, a.seconds, on_link=lambda x: con.print(f"  {x['from']} -> {x['to']} done"))
    for t in trace_tables(res):
        con.print(t)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(res, indent=2) + "\n")
        con.print(f"wrote {a.json}")
    for f in res["flagged"]:
        con.print(f"[red]missed:[/red] {f}")
    if res["skipped_events"]:
        con.print(f"note: {res['skipped_events']} CPU or device event(s) not checked here (links only)")
    return 1 if res["flagged"] else 0


# a status table's columns: (heading, the row's key); cpus and memory shown in their units
STATUS_COLUMNS = [("testbed", "testbed"), ("device", "device"), ("container", "container"), ("status", "status")]
STATUS_COLUMNS += [("ip", "ip"), ("cpus", "cpus"), ("memory MiB", "memory")]


def show_status(rows: list[dict], con: Console, title: str, columns: list[tuple[str, str]]) -> int:
    """A testbed's devices as a table, then who holds each testbed in use."""
    t = Table(title=title)
    for heading, _ in columns:
        t.add_column(heading)
    shown = {"cpus": lambda v: f"{v:g}", "memory": lambda v: f"{v / 2**20:.0f}"}
    for r in rows:
        t.add_row(*(shown.get(key, str)(r[key]) for _, key in columns))
    con.print(t)
    for tb in sorted({r["testbed"] for r in rows if r["testbed"] and is_held(r["testbed"])}):
        con.print(f"testbed {tb!r} is in use by {describe_holder(tb)}")
    return 0


def status(client, name: str | None, con: Console) -> int:
    rows = dk.status(client, name)
    if not rows:
        con.print(f"no testbed {name!r} is running" if name else "no testbed is running")
        return 0
    return show_status(rows, con, "testbed", STATUS_COLUMNS)


def _stats_table(col: DockerStatsCollector) -> Table:
    t = Table(title="per-device stats (docker engine)")
    for c in ("device", "CPU % of cap", "throttled", "memory MiB", "of limit", "peak MiB", "MB in", "MB out"):
        t.add_column(c, justify="left" if c == "device" else "right")
    for dev in sorted(col.containers):
        s = col.latest.get(dev)
        if not s:
            t.add_row(dev, "...", "", "", "", "", "", "")
            continue
        mem, lim, peak = s.memory_bytes or 0, s.memory_limit or 0, s.memory_peak_bytes or 0
        t.add_row(
            dev,
            "-" if s.cpu_of_cap is None else f"{s.cpu_of_cap * 100:.0f}%",
            f"{s.throttled_periods or 0}/{s.periods or 0}",
            f"{mem / 2**20:.0f}",
            f"{mem / lim:.0%}" if lim else "-",
            f"{peak / 2**20:.0f}",
            f"{(s.bytes_in or 0) / 1e6:.1f}",
            f"{(s.bytes_out or 0) / 1e6:.1f}",
        )
    return t


def stats(a: argparse.Namespace) -> int:
    """`orchestrator stats [--follow]`."""
    client = _engine()
    conts = _containers(client, a.name)
    caps = {d: dk.container_cpus(c) for d, c in conts.items()}
    con = Console()
    with DockerStatsCollector(client, conts, caps) as col:
        if not a.follow:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not all(
                d in col.latest and col.latest[d].cpu_of_cap is not None for d in conts
            ):
                time.sleep(0.2)
            con.print(_stats_table(col))
            return 0
        with Live(_stats_table(col), console=con, refresh_per_second=2) as live:
            while col.alive():
                time.sleep(1.0)
                live.update(_stats_table(col))
    return 0
