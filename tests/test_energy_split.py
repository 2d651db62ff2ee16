"""Energy per inference as DIME reports it (figures/energy.py energy_split): the measured figures
from stats lines with known CPU time and frames of known bytes, exact; the plan's prediction split by device
(partition/energy.py figures_by_device), summing to its totals."""

from __future__ import annotations

import numpy as np
import pytest

from orchestrator.config import Device, Level, Power
from orchestrator.config import Testbed as Bed
from orchestrator.figures.energy import MEASURED_LABEL, PREDICTED_LABEL, energy_split, measured_use
from orchestrator.partition.costmodel import Arrays
from orchestrator.partition.energy import Energy, PowerArrays, figures, figures_by_device
from orchestrator.runtimes.stats import StatsLine
from tests.test_algorithms import _random_arrays
from tests.test_energy_plan import _random_power

PHONE = Device(
    name="phone",
    cpus=1.0,
    power=Power(idle_w=0.5, max_w=4.5, levels=[Level(cpus=0.5, max_w=1.5)], tx_nj_per_bit=50, rx_nj_per_bit=30),
)
LAPTOP = Device(name="laptop", cpus=2.0, power=Power(idle_w=2.0, max_w=10.0, tx_nj_per_bit=10, rx_nj_per_bit=5))
BED = Bed(devices=[PHONE, LAPTOP])


def _lines(cap: float, cores: list[float | None], out: list[int], got: list[int], t0: float = 10.0) -> list[StatsLine]:
    """One line a second from t0: each line's cores are its mean since the line before."""
    return [
        StatsLine(time=t0 + i, cpu_cores=c, cpu_cap=cap, bytes_out=o, bytes_in=g)
        for i, (c, o, g) in enumerate(zip(cores, out, got, strict=True))
    ]


def test_cpu_time_at_the_level_and_bytes_over_the_window():
    rows = _lines(0.5, [None, 0.4, 0.2, 0.5], [0, 1000, 3000, 4000], [0, 500, 500, 1500])
    use = measured_use(rows, PHONE, (10.0, 13.0))
    assert use is not None
    assert use.cpu_s == pytest.approx(1.1)
    assert use.compute_j == pytest.approx((1.5 - 0.5) * 1.1 / 0.5)  # the 0.5-CPU level at 1.5 W
    assert (use.bytes_out, use.bytes_in) == (pytest.approx(4000), pytest.approx(1500))
    assert use.caps == (0.5,) and use.covered_s == pytest.approx(3.0)
    # half of the first and of the last interval fall inside this window
    part = measured_use(rows, PHONE, (10.5, 12.5))
    assert part.cpu_s == pytest.approx(0.4 * 0.5 + 0.2 + 0.5 * 0.5)
    assert part.bytes_out == pytest.approx(500 + 2000 + 500)
    assert part.bytes_in == pytest.approx(250 + 0 + 500)


def test_a_cap_that_is_no_level_weighs_cpu_time_at_the_devices_own_power():
    own = measured_use(_lines(1.0, [None, 0.5], [0, 0], [0, 0]), PHONE, None)
    assert own.compute_j == pytest.approx((4.5 - 0.5) * 0.5 / 1.0)
    other = measured_use(_lines(0.7, [None, 0.5], [0, 0], [0, 0]), PHONE, None)  # a scenario's cap
    assert other.compute_j == pytest.approx((4.5 - 0.5) * 0.5 / 1.0) and other.caps == (0.7,)
    unknown = measured_use([StatsLine(time=0), StatsLine(time=1, cpu_cores=0.5)], PHONE, None)
    assert unknown.compute_j == pytest.approx(4.0 * 0.5)


def test_a_counter_that_went_back_started_again_from_zero():
    use = measured_use(_lines(1.0, [None, 0.1, 0.1], [5000, 6000, 200], [0, 0, 0]), PHONE, None)
    assert use.bytes_out == pytest.approx(1000 + 200)


def test_too_few_cpu_samples_is_not_measured():
    assert measured_use(_lines(1.0, [None], [0], [0]), PHONE, None) is None
    split = energy_split({"phone": _lines(1.0, [None], [0], [0])}, BED, (10.0, 11.0), 2, taking_part=["phone"])
    assert split["devices"]["phone"]["measured"] is None and split["total"]["measured"] is None
    assert any("not measured" in n for n in split["notes"])


def test_energy_split_per_inference_predicted_beside_measured():
    window = (10.0, 13.0)
    samples = {
        "phone": _lines(0.5, [None, 0.4, 0.2, 0.5], [0, 1000, 3000, 4000], [0, 500, 500, 1500]),
        "laptop": _lines(2.0, [None, 1.0, 1.0, 1.0], [0, 100, 200, 300], [0, 2000, 4000, 6000]),
    }
    predicted = {"energy_j": 0.9, "energy_compute_j": 0.6, "energy_idle_j": 0.2, "energy_radio_j": 0.1}
    by_device = {"phone": Energy(0.2, 0.05, 0.06), "laptop": Energy(0.4, 0.15, 0.04)}
    split = energy_split(
        samples,
        BED,
        window,
        4,
        taking_part=["phone", "laptop"],
        batch=2,
        predicted=predicted,
        predicted_by_device=by_device,
        frame_bytes={"phone": (3000, 1000), "laptop": (300, 6000)},  # sent, received on the hops
    )
    phone = split["devices"]["phone"]["measured"]
    compute, idle = (1.5 - 0.5) * 1.1 / 0.5, 0.5 * 3.0
    radio = (3000 * 8 * 50 + 1000 * 8 * 30) * 1e-9
    assert phone["compute_j"] == pytest.approx(compute / 4)
    assert phone["idle_j"] == pytest.approx(idle / 4)
    assert phone["radio_j"] == pytest.approx(radio / 4)
    assert phone["computation_j"] == pytest.approx((compute + idle) / 4)
    assert phone["communication_j"] == pytest.approx(radio / 4)
    assert phone["total_j"] == pytest.approx((compute + idle + radio) / 4)
    assert phone["window_j"] == pytest.approx(compute + idle + radio, abs=1e-6)
    assert phone["cpu_s"] == pytest.approx(1.1) and phone["level_cpus"] == 0.5
    assert (phone["bytes_out"], phone["bytes_in"]) == (3000, 1000)
    assert (phone["counted_bytes_out"], phone["counted_bytes_in"]) == (4000, 1500)  # for reference only
    assert phone["label"] == MEASURED_LABEL and MEASURED_LABEL.startswith("measured CPU time and bytes at the modelled")
    laptop = split["devices"]["laptop"]["measured"]
    l_compute, l_idle = (10.0 - 2.0) * 3.0 / 2.0, 2.0 * 3.0
    l_radio = (300 * 8 * 10 + 6000 * 8 * 5) * 1e-9
    assert laptop["total_j"] == pytest.approx((l_compute + l_idle + l_radio) / 4)
    total = split["total"]
    assert total["measured"]["total_j"] == pytest.approx((compute + idle + radio + l_compute + l_idle + l_radio) / 4)
    assert total["measured"]["communication_j"] == pytest.approx((radio + l_radio) / 4)
    # predicted per frame of 2 images: per inference, halved
    assert total["predicted"]["total_j"] == pytest.approx(0.45)
    assert total["predicted"]["computation_j"] == pytest.approx(0.4)
    assert total["predicted"]["communication_j"] == pytest.approx(0.05)
    assert total["predicted"]["label"] == PREDICTED_LABEL and PREDICTED_LABEL.startswith("modelled")
    assert split["devices"]["phone"]["predicted"]["total_j"] == pytest.approx(0.31 / 2)
    want = (0.45 / total["measured"]["total_j"] - 1) * 100
    assert total["error_pct"] == pytest.approx(want, abs=0.06)
    assert split["window_s"] == 3.0 and split["images"] == 4


def test_a_gpu_measured_by_nvml_is_shown_beside():
    samples = {"laptop": _lines(2.0, [None, 1.0], [0, 0], [0, 0])}
    gpu = {"laptop": {"energy_per_image_j": 0.25, "method": "measured (NVML board power)"}}
    split = energy_split(samples, BED, (10.0, 11.0), 1, taking_part=["laptop"], gpu=gpu)
    row = split["devices"]["laptop"]
    assert row["gpu"] == {"total_j": 0.25, "label": "measured (NVML board power)"}
    assert split["total"]["measured"]["total_j"] == pytest.approx(row["measured"]["total_j"])


def test_figures_by_device_by_hand():
    """Source 0 relays nothing (it holds no stage but is where frames come from); stage 0 on device 1
    at its own level, stage 1 on device 2 at half its cpus (twice the time, 1 W above idle)."""
    a = Arrays(
        block_cost=np.array([[1.0, 1.0], [0.1, 0.2], [0.3, 0.1]]),
        cut_bytes=np.array([1000.0, 500.0, 100.0]),
        link_rate=np.zeros((3, 3)),
        link_delay=np.zeros((3, 3)),
        mem=np.array([1.0, 1.0]),
        dev_mem=np.array([100.0, 100.0, 100.0]),
        source=0,
    )
    p = PowerArrays(
        scale=[[1.0], [1.0], [1.0, 2.0]],
        dyn_w=[[1.0], [2.0], [3.0, 1.0]],
        level_cpus=[[1.0], [1.0], [1.0, 0.5]],
        idle_w=[0.1, 0.2, 0.3],
        tx_j_per_byte=[1e-6, 2e-6, 3e-6],
        rx_j_per_byte=[4e-6, 5e-6, 6e-6],
    )
    split = figures_by_device(a, p, [1], [1, 2], [0, 1])
    assert split is not None and set(split) == {0, 1, 2}
    period = 0.2  # stage 1's 0.1 s at half speed
    assert split[0] == pytest.approx(Energy(0.0, 0.1 * period, 1000 * 1e-6 + 100 * 4e-6))
    assert split[1] == pytest.approx(Energy(2.0 * 0.1, 0.2 * period, 1000 * 5e-6 + 500 * 2e-6))
    assert split[2] == pytest.approx(Energy(1.0 * 0.2, 0.3 * period, 500 * 6e-6 + 100 * 3e-6))
    f = figures(a, p, [1], [1, 2], [0, 1])
    assert sum(e.total_j for e in split.values()) == pytest.approx(f.energy.total_j)


@pytest.mark.parametrize("seed", range(200))
def test_figures_by_device_sum_to_figures(seed):
    rng = np.random.default_rng(seed)
    a = _random_arrays(rng)
    d_n, b_n = a.block_cost.shape
    p = _random_power(rng, d_n)
    k = int(rng.integers(1, min(d_n, b_n) + 1))
    devices = [int(x) for x in rng.permutation(d_n)[:k]]
    cuts = sorted(int(x) for x in rng.choice(range(1, b_n), k - 1, replace=False))
    levels = [int(rng.integers(0, len(p.scale[d]))) for d in devices]
    f = figures(a, p, cuts, devices, levels)
    split = figures_by_device(a, p, cuts, devices, levels)
    if f is None:
        assert split is None
        return
    assert set(split) == set(devices) | ({a.source} if a.source is not None else set())
    for part in ("compute_j", "idle_j", "radio_j"):
        assert sum(getattr(e, part) for e in split.values()) == pytest.approx(getattr(f.energy, part), rel=1e-12)


def test_a_plans_energy_by_device_sums_to_plan_json(tmp_path, tiny_vit):
    from orchestrator.config import load_devices
    from orchestrator.partition import Limits, partition, place
    from orchestrator.partition.energy import energy_by_device

    (tmp_path / "d.yaml").write_text(LEVELS)
    bed = load_devices(tmp_path / "d.yaml")
    how = {"algorithm": "optimal", "objective": "energy", "source": "phone", "stages": 2, "limits": Limits(10.0)}
    placed = place(tiny_vit, bed, **how)
    plan = partition(tiny_vit, bed, out_dir=tmp_path / "plan", placed=placed, **how)
    assert [s.level for s in plan.stages] == [0.5, 0.5]  # the frugal level wins within a loose budget
    split = energy_by_device(
        placed[0], placed[1].cuts, [s.device for s in plan.stages], bed, source="phone", levels=placed[1].levels
    )
    assert split is not None and set(split) == {"phone", "laptop"}
    pred = plan.predicted
    assert sum(e.compute_j for e in split.values()) == pytest.approx(pred.energy_compute_j, abs=2e-6)
    assert sum(e.idle_j for e in split.values()) == pytest.approx(pred.energy_idle_j, abs=2e-6)
    assert sum(e.radio_j for e in split.values()) == pytest.approx(pred.energy_radio_j, abs=2e-6)
    assert sum(e.total_j for e in split.values()) == pytest.approx(pred.energy_j, abs=4e-6)


LEVELS = """
devices:
  - name: phone
    cpus: 1
    memory: 1GiB
    bandwidth: 200mbit
    power: {idle_w: 0.2, max_w: 5.0, levels: [{cpus: 0.5, max_w: 1.0}], tx_nj_per_bit: 50, rx_nj_per_bit: 30}
  - name: laptop
    cpus: 1
    memory: 2GiB
    bandwidth: 200mbit
    power: {idle_w: 0.5, max_w: 6.0, levels: [{cpus: 0.5, max_w: 1.5}], tx_nj_per_bit: 10, rx_nj_per_bit: 5}
"""
