"""Energy from each device's CPU use and its power model in devices.yaml.

`device_energy` (report.json `energy`): linear in utilisation of the device's own CPU cap,
P = idle + (max - idle) * u; modelled, not measured; a GPU's NVML power, where present, is measured.

`energy_split` (report.json `energy_split`): per inference, per device and in all, as DIME reports
it (computation = compute + idle, communication = radio), the plan's prediction beside what the
run measured: each node's CPU time over the measured window and the bytes of the frames it sent and
received, at the devices file's power per unit (the level it ran at, idle, nanojoules per bit).
Each figure says which it is.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.config import Device, Testbed
from orchestrator.partition.energy import NJ, Energy
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


# --- energy per inference as DIME reports it: predicted beside measured, computation and
# communication apart ------------------------------------------------------------------------

PREDICTED_LABEL = "modelled: the plan's busy times, period and hop bytes at the devices file's power"
MEASURED_LABEL = "measured CPU time and bytes at the modelled power (the devices file's, per unit)"
METHOD = (
    "predicted: plan.json's energy per frame (partition/energy.py), by device as it weighs them, over the "
    "images a frame carries. Measured: each node's CPU seconds over the measured window (its stats lines' "
    "cores, each over the interval that ends at it) times (max_w - idle_w) / cpus of the level its cap "
    "names (its own cpus and max_w for a cap no level has); idle_w times the window for each device taking "
    "part; the bytes of every frame it sent and received on a hop between two devices over the measured "
    "requests (as the nodes stamped them: the tensors, the hops the model counts) at tx_nj_per_bit and "
    "rx_nj_per_bit. All over the images measured. counted_bytes_out/in: what the device's counters grew by "
    "over the window (frame headers, the driver's own frames with the source, control traffic and, under "
    "docker, the network interface's TCP/IP included), for reference, not in the energy."
)
GPU_LABEL = "measured (NVML board power)"
SAME_CAP = 1e-6


def _level(device: Device, cap: float | None) -> tuple[float, float]:
    """(CPU share, power at full use of it) of the level at `cap`; the device's own cpus and max_w
    where `cap` is unknown or no level has it (a cap a scenario set: its CPU time is weighed as a
    share of the device's own cpus)."""
    if cap is not None:
        for lv in device.levels():
            if abs(lv.cpus - cap) <= SAME_CAP:
                return lv.cpus, lv.max_w
    return device.cpus, device.power.max_w


def _overlap(t0: float, t1: float, window: tuple[float, float] | None) -> float:
    if window is None:
        return max(0.0, t1 - t0)
    return max(0.0, min(t1, window[1]) - max(t0, window[0]))


def _counted(before: int | None, after: int | None) -> int | None:
    """Bytes a cumulative counter grew by between two samples (a counter that went back started
    again from zero: a revived node, a new container)."""
    if before is None or after is None:
        return None
    return after - before if after >= before else after


@dataclass(frozen=True)
class MeasuredUse:
    """A device's CPU time and bytes over a window, from its stats lines, and the compute energy
    above idle of that CPU time at the levels the lines' caps name."""

    cpu_s: float
    compute_j: float
    bytes_out: float
    bytes_in: float
    covered_s: float  # the part of the window the CPU samples cover
    caps: tuple[float, ...]  # the CPU caps in force over the window (levels), as the lines say


def measured_use(rows: list[StatsLine], device: Device, window: tuple[float, float] | None) -> MeasuredUse | None:
    """Each line's CPU cores (its mean since the line before) and byte counters (their growth since
    the line before) cover the interval that ends at it; the part of each interval inside `window`
    counts, as if the rate were even over it. None with fewer than two lines that carry CPU."""
    idle = device.power.idle_w
    cpu_s = compute = out_b = in_b = covered = 0.0
    caps: list[float] = []
    n_cpu = 0
    for prev, cur in zip(rows, rows[1:], strict=False):
        dt = cur.time - prev.time
        part = _overlap(prev.time, cur.time, window)
        if dt <= 0 or part <= 0:
            continue
        if cur.cpu_cores is not None:
            n_cpu += 1
            lv_cpus, lv_max = _level(device, cur.cpu_cap)
            used = cur.cpu_cores * part
            cpu_s += used
            compute += (lv_max - idle) * used / lv_cpus
            covered += part
            cap = cur.cpu_cap if cur.cpu_cap is not None else device.cpus
            if not caps or abs(caps[-1] - cap) > SAME_CAP:
                caps.append(cap)
        sent, got = _counted(prev.bytes_out, cur.bytes_out), _counted(prev.bytes_in, cur.bytes_in)
        if sent is not None:
            out_b += sent * part / dt
        if got is not None:
            in_b += got * part / dt
    if n_cpu == 0:
        return None
    return MeasuredUse(cpu_s, compute, out_b, in_b, covered, tuple(caps))


def _figure(compute_j: float, idle_j: float, radio_j: float, per: float, label: str) -> dict:
    """One energy figure per inference (joules over `per` inferences), computation and communication apart."""

    def r(x: float) -> float:
        return round(x / per, 9)

    return {
        "compute_j": r(compute_j),
        "idle_j": r(idle_j),
        "radio_j": r(radio_j),
        "computation_j": r(compute_j + idle_j),
        "communication_j": r(radio_j),
        "total_j": r(compute_j + idle_j + radio_j),
        "label": label,
    }


def energy_split(
    samples: dict[str, list[StatsLine]],
    testbed: Testbed,
    window: tuple[float, float] | None,
    images: int,
    *,
    taking_part: list[str],
    batch: int = 1,
    predicted: dict | None = None,
    predicted_by_device: dict[str, Energy] | None = None,
    frame_bytes: dict[str, tuple[int, int]] | None = None,
    gpu: dict[str, dict] | None = None,
) -> dict:
    """Energy per inference (one image) per device and in all, predicted (plan.json's figures per
    frame of `batch` images, by device as partition/energy.py weighs them) beside measured
    (`measured_use` over the window, idle_w over the window for each device taking part, and
    `frame_bytes`, device -> (bytes sent, bytes received) in the frames of the measured requests'
    hops, at the device's radio energy per bit), each labelled. A GPU's NVML energy (`gpu`,
    figures.gpu_power's) is shown beside, measured, not in the total."""
    span = (window[1] - window[0]) if window is not None else None
    devices: dict[str, dict] = {}
    notes: list[str] = []
    meas_sum = [0.0, 0.0, 0.0]
    meas_whole = bool(images) and span is not None
    for name in taking_part:
        dev = testbed.device(name)
        row: dict = {"predicted": None, "measured": None}
        pe = (predicted_by_device or {}).get(name)
        if pe is not None:
            row["predicted"] = _figure(pe.compute_j, pe.idle_j, pe.radio_j, batch, PREDICTED_LABEL)
        use = measured_use(samples.get(name, []), dev, window) if images and span is not None else None
        if use is None:
            meas_whole = False
            notes.append(f"{name}: energy not measured (too few CPU samples in the measured window)")
        else:
            b_out, b_in = (frame_bytes or {}).get(name, (0, 0))
            radio = (b_out * 8 * dev.power.tx_nj_per_bit + b_in * 8 * dev.power.rx_nj_per_bit) * NJ
            idle = dev.power.idle_w * span
            fig = _figure(use.compute_j, idle, radio, images, MEASURED_LABEL)
            fig |= {
                "cpu_s": round(use.cpu_s, 6),
                "bytes_out": int(b_out),
                "bytes_in": int(b_in),
                "counted_bytes_out": round(use.bytes_out),
                "counted_bytes_in": round(use.bytes_in),
                "level_cpus": use.caps[0] if len(use.caps) == 1 else list(use.caps),
                "window_j": round(use.compute_j + idle + radio, 6),
                "covered_s": round(use.covered_s, 3),
            }
            row["measured"] = fig
            for i, x in enumerate((use.compute_j, idle, radio)):
                meas_sum[i] += x
            if span and use.covered_s < 0.9 * span:
                notes.append(
                    f"{name}: CPU samples cover {use.covered_s:.2f} s of the {span:.2f} s window: "
                    "its measured compute energy is short by the rest"
                )
        g = (gpu or {}).get(name)
        if g and g.get("energy_per_image_j") is not None:
            row["gpu"] = {"total_j": g["energy_per_image_j"], "label": GPU_LABEL}
        devices[name] = row
    gaps = sorted(b.time - a.time for rows in samples.values() for a, b in zip(rows, rows[1:], strict=False))
    gap = gaps[len(gaps) // 2] if gaps else None
    if span is not None and gap and span < 2 * gap:
        notes.append(
            f"the measured window ({span:.2f} s) spans fewer than two stats samples (one every {gap:.2f} s): "
            "its measured CPU time and bytes are the samples' mean rates over it, a rough figure"
        )
    pred_total = None
    if predicted and predicted.get("energy_j") is not None:
        pred_total = _figure(
            predicted.get("energy_compute_j") or 0.0,
            predicted.get("energy_idle_j") or 0.0,
            predicted.get("energy_radio_j") or 0.0,
            batch,
            PREDICTED_LABEL,
        )
    meas_total = _figure(*meas_sum, images, MEASURED_LABEL) if meas_whole else None
    err = None
    if pred_total is not None and meas_total is not None and meas_total["total_j"]:
        err = round((pred_total["total_j"] / meas_total["total_j"] - 1) * 100, 1)
    return {
        "per": "inference (one image)",
        "images": images,
        "window_s": round(span, 3) if span is not None else None,
        "labels": {"predicted": PREDICTED_LABEL, "measured": MEASURED_LABEL, "gpu": GPU_LABEL},
        "method": METHOD,
        "devices": devices,
        "total": {"predicted": pred_total, "measured": meas_total, "error_pct": err},
        "notes": notes,
    }
