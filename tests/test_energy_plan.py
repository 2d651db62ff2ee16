"""The least-energy placement (partition/energy.py) against brute force on random small instances:
levels, radio energy, memory limits, a source, per-frame overhead, latency budgets and throughput
floors (some infeasible)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from orchestrator.config import Device
from orchestrator.partition.energy import PowerArrays, brute_force, figures, solve
from tests.test_algorithms import _random_arrays


def _random_power(rng: np.random.Generator, d_n: int) -> PowerArrays:
    scale, dyn, cpus = [], [], []
    for _ in range(d_n):
        n = int(rng.integers(1, 4))
        shares = sorted(rng.uniform(0.1, 1.0, n), reverse=True)
        top = shares[0]
        # lower levels: slower, and (mostly) less power per unit of work
        dyn_w = [float(rng.uniform(0.5, 5.0) * (c / top) ** rng.uniform(1.0, 2.5)) for c in shares]
        scale.append([top / c for c in shares])
        dyn.append(dyn_w)
        cpus.append(list(shares))
    return PowerArrays(
        scale=scale,
        dyn_w=dyn,
        level_cpus=cpus,
        idle_w=[float(x) for x in rng.uniform(0.1, 2.0, d_n)],
        tx_j_per_byte=[float(x) * 8e-9 for x in rng.choice([0.0, 50.0, 500.0], d_n)],
        rx_j_per_byte=[float(x) * 8e-9 for x in rng.choice([0.0, 30.0, 300.0], d_n)],
    )


@pytest.mark.parametrize("seed", range(300))
def test_solve_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    a = _random_arrays(rng)
    d_n, b_n = a.block_cost.shape
    if d_n > 3 and b_n > 5:  # keep brute force quick: levels multiply its placements
        a.block_cost = a.block_cost[:, :5]
        a.cut_bytes = a.cut_bytes[:6]
        a.mem = a.mem[:5] if a.mem.ndim == 1 else a.mem[:6, :6]
    p = _random_power(rng, d_n)
    budget = float(rng.uniform(0.05, 0.8)) if rng.random() < 0.6 else None
    cap = float(rng.uniform(0.02, 0.4)) if rng.random() < 0.4 else None
    want = brute_force(a, p, budget, cap)
    got = solve(a, p, budget, cap)
    if math.isinf(want[0]):
        assert math.isinf(got.energy_j) and got.devices == []
        return
    assert got.energy_j == pytest.approx(want[0], rel=1e-9)
    f = figures(a, p, got.cuts, got.devices, got.levels)  # the placement returned really does it
    assert f is not None and f.energy.total_j == pytest.approx(want[0], rel=1e-9)
    assert len(set(got.devices)) == len(got.devices)
    assert budget is None or f.latency_s <= budget + 1e-12
    assert cap is None or f.period_s <= cap + 1e-12


def test_a_slower_level_wins_where_it_saves_energy_within_the_budget():
    """One device, two levels: at half the share a stage takes twice as long at a quarter of the
    power above idle, so the slow level spends less; a budget too short for it takes the fast one."""
    dev = Device(
        name="phone",
        cpus=0.4,
        power={"idle_w": 0.5, "max_w": 4.5, "levels": [{"cpus": 0.2, "max_w": 1.5}]},
    )
    p = PowerArrays.of([dev])
    assert p.scale == [[1.0, 2.0]] and p.dyn_w == [[4.0, 1.0]]
    a = _random_arrays(np.random.default_rng(0))
    a.block_cost = np.array([[0.05, 0.05]])
    a.cut_bytes = np.zeros(3)
    a.link_rate, a.link_delay = np.zeros((1, 1)), np.zeros((1, 1))
    a.mem, a.dev_mem, a.source, a.overhead = np.ones(2), np.array([10.0]), None, None
    slow = solve(a, p)
    assert slow.levels == [1]  # 0.2 s at 1 W + 0.5 W idle over 0.2 s = 0.3 J, against 0.1 s x 4.5 W
    assert slow.energy_j == pytest.approx(0.2 * 1.0 + 0.5 * 0.2)
    fast = solve(a, p, latency_budget_s=0.15)
    assert fast.levels == [0] and fast.energy_j == pytest.approx(0.1 * 4.0 + 0.5 * 0.1)
    assert math.isinf(solve(a, p, latency_budget_s=0.05).energy_j)


def test_radio_energy_moves_a_cut_off_a_heavy_tensor():
    """Two alike devices: splitting halves each stage's time but a hop of 1 MB at 500 nJ/bit sent
    costs 4 J, so the whole model stays on one device; with no radio cost it splits."""
    devs = [Device(name=n, cpus=1.0, power={"idle_w": 0.0, "max_w": 2.0, "tx_nj_per_bit": 500}) for n in "ab"]
    a = _random_arrays(np.random.default_rng(1))
    a.block_cost = np.full((2, 2), 0.1)
    a.cut_bytes = np.array([0.0, 1e6, 0.0])
    a.link_rate, a.link_delay = np.zeros((2, 2)), np.zeros((2, 2))
    a.mem, a.dev_mem, a.source, a.overhead = np.ones(2), np.array([10.0, 10.0]), None, None
    assert len(solve(a, PowerArrays.of(devs)).devices) == 1
    quiet = [Device(name=n, cpus=1.0, power={"idle_w": 1.0, "max_w": 2.0}) for n in "ab"]
    # idle power over a halved period: 2 devices x 1 W x 0.1 s < 1 device x 1 W x 0.2 s? equal: no gain
    sol = solve(a, PowerArrays.of(quiet))
    assert sol.energy_j == pytest.approx(0.2 * 1.0 + 1.0 * 0.2)


def test_a_level_with_fewer_threads_is_said_to_be_scaled(tiny_vit):
    """A level below a whole CPU where the device has two runs one ORT thread instead of two: the
    plan says its time is scaled from the profile, not measured."""
    from orchestrator.config import Testbed
    from orchestrator.partition import place

    dev = Device(name="box", cpus=2.0, power={"idle_w": 0.0, "max_w": 40.0, "levels": [{"cpus": 0.5, "max_w": 1.0}]})
    _, placement = place(tiny_vit, Testbed(devices=[dev]), algorithm="optimal", objective="energy")
    assert placement.levels == [0.5]
    assert any("box at 0.5 CPUs runs fewer ORT threads" in n for n in placement.notes), placement.notes


def test_a_budget_nothing_meets_is_one_line_with_the_best_latency(tiny_vit, tmp_path):
    import subprocess
    import sys

    import yaml

    ROOT = Path(__file__).resolve().parents[1]

    devices = tmp_path / "devices.yaml"
    devices.write_text(
        yaml.safe_dump(
            {
                "devices": [
                    {
                        "name": "a",
                        "cpus": 1.0,
                        "power": {"idle_w": 1, "max_w": 5, "levels": [{"cpus": 0.5, "max_w": 2}]},
                    },
                    {"name": "b", "cpus": 0.5, "power": {"idle_w": 1, "max_w": 3}},
                ]
            }
        )
    )
    cmd = [sys.executable, "-m", "orchestrator", "partition", "--model", str(tiny_vit), "--devices", str(devices)]
    cmd += ["--algorithm", "optimal", "--objective", "energy", "--source", "a", "--out", str(tmp_path / "plan")]
    r = subprocess.run([*cmd, "--latency-budget", "1us"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "latency_budget: no placement meets the limits: the best latency" in lines[0], r.stderr
    assert not (tmp_path / "plan" / "plan.json").exists()
    ok = subprocess.run([*cmd, "--latency-budget", "10s"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "predicted (modelled):" in ok.stdout and (tmp_path / "plan" / "plan.json").exists()
