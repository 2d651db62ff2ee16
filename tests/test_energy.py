from __future__ import annotations

import pytest

from orchestrator import config
from orchestrator.figures.energy import device_energy
from orchestrator.runtimes.stats import StatsLine


def _bed() -> config.Testbed:
    return config.Testbed(devices=[{"name": "phone", "cpus": 0.5, "power": {"idle_w": 1.0, "max_w": 5.0}}])


def test_energy_integrates_the_power_model():
    # busy at half its cap for 2 s, then fully busy for 2 s
    rows = [
        StatsLine(time=0.0, cpu_of_cap=None),
        StatsLine(time=1.0, cpu_of_cap=0.5),
        StatsLine(time=2.0, cpu_of_cap=0.5),
        StatsLine(time=3.0, cpu_of_cap=1.0),
        StatsLine(time=4.0, cpu_of_cap=1.0),
    ]
    e = device_energy({"phone": rows}, _bed(), None, images=10)["phone"]
    # samples with a CPU share start at t=1: 1 s at 3 W, then 2 s at 5 W
    assert e["energy_j"] == pytest.approx(3.0 + 10.0)
    assert e["energy_per_image_j"] == pytest.approx(1.3)
    assert e["peak_power_w"] == pytest.approx(5.0)
    assert e["method"].startswith("modelled")


def test_utilisation_over_the_cap_is_clipped_and_too_few_samples_are_not_measured():
    rows = [StatsLine(time=0.0, cpu_of_cap=2.0), StatsLine(time=1.0, cpu_of_cap=2.0)]
    assert device_energy({"phone": rows}, _bed(), None, 1)["phone"]["peak_power_w"] == pytest.approx(5.0)
    one = device_energy({"phone": rows[:1]}, _bed(), None, 1)["phone"]
    assert one["energy_j"] is None
