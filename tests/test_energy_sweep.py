"""`orchestrator partition --objective energy --sweep`: the spec, every point the exact least energy
(against brute force), the Pareto front, and the command writing pareto.json and pareto.png."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from orchestrator.config import load_devices
from orchestrator.errors import UserError
from orchestrator.partition import Limits, place
from orchestrator.partition.energy import Energy, brute_force, figures
from orchestrator.partition.sweep import (
    BASELINES,
    Point,
    SweepSpec,
    least_energy_points,
    pareto_front,
    parse_sweep,
    plan_sweep,
)
from tests.test_algorithms import _random_arrays
from tests.test_energy_plan import _random_power

ROOT = Path(__file__).resolve().parents[1]

DEVICES = """
devices:
  - name: hub
    cpus: 0.5
    memory: 1GiB
    power: {idle_w: 3.0, max_w: 12.0, levels: [{cpus: 0.25, max_w: 5.0}], tx_nj_per_bit: 10, rx_nj_per_bit: 5}
    bandwidth: 100mbit
    delay: 1ms
  - name: phone
    cpus: 0.4
    memory: 512MiB
    power:
      idle_w: 0.5
      max_w: 4.0
      levels: [{cpus: 0.2, max_w: 1.5}, {cpus: 0.1, max_w: 0.6}]
      tx_nj_per_bit: 50
      rx_nj_per_bit: 30
    bandwidth: 20mbit
    delay: 1ms
  - name: watch
    cpus: 0.2
    memory: 256MiB
    power: {idle_w: 0.1, max_w: 1.0, levels: [{cpus: 0.1, max_w: 0.35}], tx_nj_per_bit: 80, rx_nj_per_bit: 50}
    bandwidth: 10mbit
    delay: 1ms
"""


# --- the spec ---------------------------------------------------------------------------------------


def test_a_latency_sweep_spaces_its_budgets_evenly_both_ends_included():
    spec = parse_sweep("latency_budget=200ms:2s:10")
    assert spec.key == "latency_budget"
    assert spec.values == pytest.approx([0.2 * k for k in range(1, 11)], abs=1e-12)
    assert spec.values[0] == 0.2 and spec.values[-1] == 2.0
    assert spec.label(0.4) == "400 ms"
    assert parse_sweep("latency_budget=250us:1ms:4").values == pytest.approx([250e-6, 500e-6, 750e-6, 1e-3])


def test_a_throughput_sweep_takes_plain_numbers():
    spec = parse_sweep("throughput_floor=0.5:2:4")
    assert spec.key == "throughput_floor"
    assert spec.values == pytest.approx([0.5, 1.0, 1.5, 2.0])
    assert spec.label(1.5) == "1.5/s"
    assert spec.limits(1.5, Limits(3.0, None)) == Limits(3.0, 1.5)
    assert parse_sweep("latency_budget=1s:2s:2").limits(1.0, Limits(None, 4.0)) == Limits(1.0, 4.0)


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("latency=1s:2s:3", "unknown key 'latency'"),
        ("energy_cap=1:2:3", "unknown key 'energy_cap'"),
        ("latency_budget=200:2s:10", "has no unit"),
        ("latency_budget=200xs:2s:10", "unknown time unit"),
        ("latency_budget=200ms:2s:1", "2 to 50"),
        ("latency_budget=200ms:2s:51", "2 to 50"),
        ("latency_budget=200ms:2s:many", "whole number"),
        ("latency_budget=2s:200ms:5", "not below STOP"),
        ("latency_budget=2s:2s:5", "not below STOP"),
        ("latency_budget=0ms:2s:5", "more than 0"),
        ("latency_budget=200ms:2s", "KEY=START:STOP:N"),
        ("200ms:2s:10", "KEY=START:STOP:N"),
        ("throughput_floor=a:2:3", "inferences per second"),
        ("throughput_floor=0:2:3", "more than 0"),
        ("throughput_floor=1:inf:3", "finite"),
    ],
)
def test_a_bad_spec_is_one_line_naming_the_flag(text, said):
    with pytest.raises(UserError) as e:
        parse_sweep(text)
    assert e.value.field == "--sweep"
    assert str(e.value).startswith("--sweep: ") and "\n" not in str(e.value)
    assert said in e.value.message


# --- the points: exact, and monotone -----------------------------------------------------------------


def _small(seed: int):
    rng = np.random.default_rng(seed)
    a = _random_arrays(rng)
    d_n, b_n = a.block_cost.shape
    if d_n > 3 and b_n > 5:  # keep brute force quick, as test_energy_plan does
        a.block_cost = a.block_cost[:, :5]
        a.cut_bytes = a.cut_bytes[:6]
        a.mem = a.mem[:5] if a.mem.ndim == 1 else a.mem[:6, :6]
    return rng, a, _random_power(rng, a.block_cost.shape[0])


@pytest.mark.parametrize("seed", range(60))
def test_every_point_is_the_least_energy_brute_force_finds(seed):
    rng, a, p = _small(seed)
    d_n, b_n = a.block_cost.shape
    names, bounds = [f"d{i}" for i in range(d_n)], list(range(b_n + 1))
    if seed % 3 == 2:
        spec = SweepSpec("throughput_floor", sorted(float(x) for x in rng.uniform(1.0, 40.0, 4)))
        fixed = Limits(float(rng.uniform(0.2, 0.8)) if seed % 2 else None, None)
    else:
        spec = SweepSpec("latency_budget", sorted(float(x) for x in rng.uniform(0.02, 0.8, 5)))
        fixed = Limits(None, float(rng.uniform(2.0, 20.0)) if seed % 2 else None)
    points = least_energy_points(a, p, spec, names=names, bounds=bounds, fixed=fixed)
    assert [pt.limit for pt in points] == spec.values
    for v, pt in zip(spec.values, points, strict=True):
        lim = spec.limits(v, fixed)
        want = brute_force(a, p, lim.latency_budget_s, lim.period_cap_s)
        if math.isinf(want[0]):
            assert not pt.feasible
            continue
        assert pt.feasible and pt.energy.total_j == pytest.approx(want[0], rel=1e-9)
        # the placement shown is one that really does it, within the limits
        devs = [names.index(d) for d in pt.devices]
        lv = [p.level_cpus[d].index(c) for d, c in zip(devs, pt.levels, strict=True)]
        f = figures(a, p, pt.cuts, devs, lv)
        assert f is not None and f.energy.total_j == pytest.approx(want[0], rel=1e-9)
        assert lim.latency_budget_s is None or f.latency_s <= lim.latency_budget_s + 1e-12
        assert lim.period_cap_s is None or f.period_s <= lim.period_cap_s + 1e-12
    # a looser limit never costs more: energy falls (or stays) as the budget grows / the floor drops
    energies = [pt.energy.total_j if pt.feasible else math.inf for pt in points]
    loosening = energies if spec.key == "latency_budget" else energies[::-1]
    assert all(x >= y - 1e-12 for x, y in zip(loosening, loosening[1:], strict=False))


def _pt(name: str, latency: float, energy_j: float) -> Point:
    return Point(name, None, Energy(energy_j, 0.0, 0.0), latency, latency)


@pytest.mark.parametrize("seed", range(20))
def test_the_front_is_what_no_point_beats_and_energy_falls_along_it(seed):
    rng = np.random.default_rng(seed)
    pts = [_pt(f"p{i}", float(rng.choice([1.0, 2.0, 3.0, 4.0, 5.0])), float(rng.integers(1, 8))) for i in range(25)]
    pts.append(Point("nothing", 1.0))  # an infeasible point is never on it
    front = pareto_front(pts)
    ok = [p for p in pts if p.feasible]
    for f in front:
        assert f.feasible
        assert not any(q.dominates(f) for q in ok)
    for p in ok:  # every point off the front is beaten by (or ties with) a point on it
        assert any(f.dominates(p) or (f.latency_s, f.energy.total_j) == (p.latency_s, p.energy.total_j) for f in front)
    lat = [f.latency_s for f in front]
    e = [f.energy.total_j for f in front]
    assert lat == sorted(lat) and len(set(lat)) == len(lat)
    assert all(x > y for x, y in zip(e, e[1:], strict=False))


def test_the_front_of_a_known_set():
    pts = [_pt("a", 1, 9), _pt("b", 2, 5), _pt("c", 2, 6), _pt("d", 3, 5), _pt("e", 4, 2), _pt("f", 4, 2)]
    assert [p.name for p in pareto_front(pts)] == ["a", "b", "e"]


# --- on a model ---------------------------------------------------------------------------------------


@pytest.fixture()
def devices_file(tmp_path) -> Path:
    p = tmp_path / "levels.yaml"
    p.write_text(textwrap.dedent(DEVICES))
    return p


def test_each_point_is_what_partition_plans_at_that_budget(tiny_vit, devices_file):
    testbed = load_devices(devices_file)
    _, sw = plan_sweep(tiny_vit, testbed, parse_sweep("latency_budget=100us:5ms:5"), source="hub")
    assert [b.name for b in sw.baselines] == list(BASELINES)
    for pt in sw.points:
        if not pt.feasible:
            continue
        lim = Limits(pt.limit)
        _, alone = place(tiny_vit, testbed, algorithm="optimal", objective="energy", source="hub", limits=lim)
        assert (alone.cuts, alone.devices, alone.levels) == (pt.cuts, pt.devices, pt.levels)
        assert alone.predicted.energy_j == pytest.approx(pt.energy.total_j, abs=1e-6)  # plan.json: to the µJ
    for name, objective in (("throughput-optimal", "throughput"), ("latency-optimal", "latency")):
        b = next(x for x in sw.baselines if x.name == name)
        _, alone = place(tiny_vit, testbed, algorithm="optimal", objective=objective, source="hub")
        assert (alone.cuts, alone.devices) == (b.cuts, b.devices)
    fast, slow = sw.baselines[0], sw.baselines[1]
    assert fast.levels == [testbed.device(d).cpus for d in fast.devices]
    assert slow.levels == [testbed.device(d).levels()[-1].cpus for d in slow.devices]


def test_a_limit_held_fixed_that_nothing_meets_is_said(tiny_vit, devices_file):
    testbed = load_devices(devices_file)
    spec = parse_sweep("latency_budget=1ms:1s:3")
    _, sw = plan_sweep(tiny_vit, testbed, spec, source="hub", fixed=Limits(None, 1e6))
    assert not any(p.feasible for p in sw.points)
    assert sw.unmet().startswith("the throughput floor 1e+06/s alone is out of reach: the best throughput")
    _, sw = plan_sweep(tiny_vit, testbed, spec, source="hub", fixed=Limits(None, 1.0))  # met by every point
    assert all(p.feasible for p in sw.points)
    assert sw.unmet().endswith("(without the throughput floor 1/s)")


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", "partition", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},  # from `cwd`: its own caches, no profile found
    )


def test_the_command_prints_the_table_and_writes_pareto_json_and_png(tiny_vit, devices_file, tmp_path):
    testbed = load_devices(devices_file)
    # budgets from under the best latency to over the least energy's own
    _, quick = place(tiny_vit, testbed, algorithm="optimal", objective="latency", source="hub")
    _, least = place(tiny_vit, testbed, algorithm="optimal", objective="energy", source="hub")
    lo, hi = quick.predicted.latency_s * 0.5, least.predicted.latency_s * 1.5
    spec = f"latency_budget={lo * 1e6:.0f}us:{hi * 1e6:.0f}us:6"
    out = tmp_path / "sweep" / "deeper"
    r = _cli(
        *("--model", str(tiny_vit), "--devices", str(devices_file), "--algorithm", "optimal"),
        *("--objective", "energy", "--source", "hub", "--sweep", spec, "--out", str(out)),
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert any(line.split()[:3] == ["latency", "budget", "energy"] for line in lines)
    assert "infeasible: the best latency that can be had is" in r.stdout  # the first budget is too short
    for name in BASELINES:
        assert any(line.strip().startswith(name) for line in lines)
    assert sorted(p.name for p in out.iterdir()) == ["pareto.json", "pareto.png"]  # no stage files, no plan

    data = json.loads((out / "pareto.json").read_text())
    assert data["sweep"]["key"] == "latency_budget" and len(data["points"]) == 6
    assert [b["name"] for b in data["baselines"]] == list(BASELINES)
    assert not data["points"][0]["feasible"] and data["points"][-1]["feasible"]
    feasible = [p for p in data["points"] if p["feasible"]]
    assert all(p["latency_s"] <= p["limit"] + 1e-9 for p in feasible)
    e = [p["energy_j"] for p in feasible]
    assert e == sorted(e, reverse=True)
    assert all(
        p["energy_j"] == pytest.approx(p["energy_compute_j"] + p["energy_idle_j"] + p["energy_radio_j"], abs=1e-5)
        for p in feasible
    )
    front = data["front"]
    assert front and [f["latency_s"] for f in front] == sorted(f["latency_s"] for f in front)
    assert all(a["energy_j"] > b["energy_j"] for a, b in zip(front, front[1:], strict=False))
    assert feasible[-1]["on_front"]  # the loosest budget's is the least energy of all

    png = (out / "pareto.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert width >= 800 and height >= 500


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--algorithm", "optimal", "--objective", "energy", "--sweep", "latency=1s:2s:3"], "unknown key"),
        (["--algorithm", "optimal", "--objective", "energy", "--sweep", "latency_budget=1:2s:3"], "no unit"),
        (["--algorithm", "optimal", "--objective", "energy", "--sweep", "latency_budget=1s:2s:1"], "2 to 50"),
        (["--algorithm", "optimal", "--objective", "energy", "--sweep", "latency_budget=2s:1s:3"], "not below"),
        (["--algorithm", "optimal", "--sweep", "latency_budget=1s:2s:3"], "--objective energy"),
        (["--objective", "energy", "--sweep", "latency_budget=1s:2s:3"], "--algorithm optimal"),
        (
            ["--algorithm", "optimal", "--objective", "energy", "--latency-budget", "1s"]
            + ["--sweep", "latency_budget=1s:2s:3"],
            "--latency-budget sets it too",
        ),
    ],
)
def test_a_bad_sweep_ends_in_one_line_and_status_2(args, said, tiny_vit, devices_file, tmp_path):
    out = tmp_path / "out"
    r = _cli("--model", str(tiny_vit), "--devices", str(devices_file), *args, "--out", str(out), cwd=tmp_path)
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --sweep: ") and said in err[0]
    assert "Traceback" not in r.stderr and not out.exists()


def test_the_energy_job_loads_with_its_compare_points():
    from orchestrator.config import load_job

    job = load_job(ROOT / "jobs" / "vit_energy.yaml")
    assert (job.algorithm, job.objective, job.latency_budget) == ("optimal", "energy", 3.0)
    assert [(v.name, v.objective, v.latency_budget) for v in job.compare] == [
        ("budget_4s", None, 4.0),
        ("budget_5s", None, 5.0),
        ("throughput", "throughput", None),
    ]
    assert job.path(job.devices).resolve() == ROOT / "devices" / "edge4_levels.yaml"
