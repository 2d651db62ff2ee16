"""Energy per inference from each device's CPU use and its power model in devices.yaml.

The model is linear in utilisation of the device's own CPU cap: P = idle + (max - idle) * u.
These figures are modelled, not measured; a GPU's NVML power, where present, would be measured.
"""

from __future__ import annotations

from orchestrator.config import Testbed
from orchestrator.runtimes.stats import StatsLine


def device_energy(
    samples: dict[str, list[StatsLine]], testbed: Testbed, window: tuple[float, float] | None, images: int
) -> dict[str, dict]:
    """Per device: energy over the window, energy per image, mean and peak power."""
    out: dict[str, dict] = {}
    for dev, rows in samples.items():
        spec = testbed.device(dev)
        idle, peak = spec.power.idle_w, spec.power.max_w
        pts = [(r.time, r.cpu_of_cap) for r in rows if r.cpu_of_cap is not None]
        if window is not None:
            pts = [(t, u) for t, u in pts if window[0] <= t <= window[1]]
        if len(pts) < 2:
            out[dev] = {
                "energy_j": None,
                "energy_per_image_j": None,
                "mean_power_w": None,
                "peak_power_w": None,
                "method": "modelled: too few CPU samples",
            }
            continue
        energy = 0.0
        powers = []
        for (t0, _), (t1, u1) in zip(pts, pts[1:], strict=False):
            # each sample's CPU share covers the interval that ends at it
            p = idle + (peak - idle) * min(1.0, max(0.0, u1))
            powers.append(p)
            energy += p * (t1 - t0)
        span = pts[-1][0] - pts[0][0]
        out[dev] = {
            "energy_j": round(energy, 4),
            "energy_per_image_j": round(energy / images, 5) if images else None,
            "mean_power_w": round(energy / span, 4) if span > 0 else None,
            "peak_power_w": round(max(powers), 4),
            "method": "modelled: idle_w + (max_w - idle_w) x CPU share of cap",
        }
    return out
