from __future__ import annotations

import pytest

from orchestrator.figures.gpu_power import NvmlPowerSampler, gpu_energy


def test_gpu_energy_integrates_power_samples():
    samples = [(0.0, 100.0), (1.0, 200.0), (2.0, 200.0), (5.0, 999.0)]
    e = gpu_energy(samples, (0.0, 2.0), images=10)
    assert e["energy_j"] == pytest.approx(150.0 + 200.0)
    assert e["energy_per_image_j"] == pytest.approx(35.0)
    assert e["peak_power_w"] == 200.0 and e["method"].startswith("measured")
    assert gpu_energy(samples[:1], None, 1)["energy_j"] is None


def test_sampler_reads_a_real_gpu_or_says_why_not():
    with NvmlPowerSampler([0], period_s=0.05) as s:
        if not s.available:
            assert s.error and "NVML" in s.error
            pytest.skip(f"no GPU power to read here: {s.error}")
        import time

        time.sleep(0.3)
    assert len(s.samples[0]) >= 2 and all(w > 0 for _, w in s.samples[0])
