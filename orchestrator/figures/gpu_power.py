"""GPU power measured through NVML while a run drives its pipeline, where a GPU and NVML exist.

Energy of a device with a GPU is then measured for the GPU and modelled for the CPU; without
NVML the report says the GPU's power was not measured, and why.
"""

from __future__ import annotations

import threading
import time


class NvmlPowerSampler:
    """Samples board power (W) of the given GPU indices every `period_s` in a thread."""

    def __init__(self, indices: list[int], period_s: float = 0.2):
        self.indices = sorted(set(indices))
        self.period_s = period_s
        self.samples: dict[int, list[tuple[float, float]]] = {i: [] for i in self.indices}
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._nvml = None
        if not self.indices:
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handles = {i: pynvml.nvmlDeviceGetHandleByIndex(i) for i in self.indices}
        except Exception as e:  # no package, no driver, no such GPU: not measured, and why
            self.error = f"NVML unavailable: {e}"

    @property
    def available(self) -> bool:
        return self._nvml is not None

    def __enter__(self) -> NvmlPowerSampler:
        if self.available and self.indices:
            self._thread = threading.Thread(target=self._run, name="nvml", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            now = time.time()
            for i, h in self._handles.items():
                try:
                    self.samples[i].append((now, self._nvml.nvmlDeviceGetPowerUsage(h) / 1000.0))
                except Exception as e:
                    self.error = f"NVML power read failed: {e}"


def gpu_energy(samples: list[tuple[float, float]], window: tuple[float, float] | None, images: int) -> dict:
    """Energy (trapezoids over the samples in the window), per image, mean and peak power."""
    pts = [(t, w) for t, w in samples if window is None or window[0] <= t <= window[1]]
    if len(pts) < 2:
        return {
            "energy_j": None,
            "energy_per_image_j": None,
            "peak_power_w": None,
            "method": "measured (NVML): too few samples",
        }
    energy = sum((t1 - t0) * (w0 + w1) / 2 for (t0, w0), (t1, w1) in zip(pts, pts[1:], strict=False))
    return {
        "energy_j": round(energy, 4),
        "energy_per_image_j": round(energy / images, 5) if images else None,
        "mean_power_w": round(energy / (pts[-1][0] - pts[0][0]), 3),
        "peak_power_w": round(max(w for _, w in pts), 3),
        "method": "measured (NVML board power)",
    }
