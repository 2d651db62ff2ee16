"""Side by side: the planner's prediction against the measurement, and configurations of a job."""

from __future__ import annotations


def _err_pct(predicted: float | None, measured: float | None) -> float | None:
    if predicted is None or not measured:
        return None
    return round((predicted / measured - 1) * 100, 1)


def loaded_throughput_fps(predicted: dict, load: dict) -> float | None:
    """The frames per second the plan predicts under the run's load. A closed loop with N requests in
    flight cannot keep the bottleneck busy when N requests take longer to cross the whole pipeline
    than N frames take at the bottleneck: it then completes N per unloaded latency. (For fixed step
    times this is exact: the cycle time is the larger of the N-request circuit and the slowest step.)
    An open loop completes what arrives, up to the pipeline's capacity."""
    fps, lat = predicted.get("throughput_fps"), predicted.get("latency_s")
    if not fps:
        return None
    mode = load.get("mode", "closed")
    if mode == "closed" and lat:
        n = load.get("concurrency", 1)
        # one at a time, no step ever holds two frames: the lone request's time is the whole story
        return 1.0 / lat if n == 1 else min(fps, n / lat)
    if mode == "open" and load.get("rate_hz"):
        return min(fps, float(load["rate_hz"]))
    return fps


def loaded_latency_s(predicted: dict, load: dict) -> float | None:
    """The latency the plan predicts under the run's load. With N requests in flight in a closed
    loop, a request waits behind the others once the pipeline is full: by Little's law it takes
    N / throughput, never less than the unloaded sum. An open loop below capacity adds no queue."""
    lat, fps = predicted.get("latency_s"), predicted.get("throughput_fps")
    if lat is None:
        return None
    if load.get("mode", "closed") == "closed" and fps:
        n = load.get("concurrency", 1)
        return lat if n == 1 else max(lat, n / fps)  # fps: the plan's frames (requests) per second
    return lat


def prediction_vs_measured(predicted: dict | None, rep: dict) -> dict | None:
    """Predicted and measured throughput, latency, per-stage compute and per-cut transfer, with the
    error of the prediction in percent of the measurement (positive: it promised too much time)."""
    if not predicted:
        return None
    lat = rep.get("latency_ms") or {}
    fps = rep.get("throughput_fps")
    pred_lat = loaded_latency_s(predicted, rep.get("load") or {})
    batch = rep.get("batch", 1)
    # the plan predicts frames per second; a frame carries `batch` images
    frames = loaded_throughput_fps(predicted, rep.get("load") or {})
    pred_fps = frames * batch if frames else None
    out = {
        "throughput_fps": {
            "predicted": round(pred_fps, 3) if pred_fps else None,
            "predicted_unloaded": predicted.get("throughput_fps"),
            "measured": fps,
            "error_pct": _err_pct(pred_fps, fps),
        },
        "latency_ms": {
            "predicted": round(pred_lat * 1e3, 3) if pred_lat is not None else None,
            "predicted_unloaded": round(predicted["latency_s"] * 1e3, 3)
            if predicted.get("latency_s") is not None
            else None,
            "measured_p50": lat.get("p50"),
            "error_pct": _err_pct(pred_lat * 1e3 if pred_lat is not None else None, lat.get("p50")),
        },
        "stages": [],
        "transfers": [],
    }
    for s, p in zip(rep["stages"], predicted.get("stage_s") or [], strict=False):
        m = (s.get("compute_ms") or {}).get("mean")
        out["stages"].append(
            {
                "index": s["index"],
                "device": s["device"],
                "predicted_ms": round(p * 1e3, 3),
                "measured_ms": m,
                "error_pct": _err_pct(p * 1e3, m),
            }
        )
    devices = [s["device"] for s in rep["stages"]]
    hops = {(h["from"], h["to"]): h for h in rep["hops"]}
    for k, p in enumerate(predicted.get("transfer_s") or []):
        if k + 1 >= len(devices):
            break
        h = hops.get((devices[k], devices[k + 1]))
        m = (h.get("transfer_ms") or {}).get("mean") if h else None
        out["transfers"].append(
            {
                "from": devices[k],
                "to": devices[k + 1],
                "predicted_ms": round(p * 1e3, 3),
                "measured_ms": m,
                "error_pct": _err_pct(p * 1e3, m),
            }
        )
    return out


def comparison_rows(reports: list[tuple[str, dict]]) -> list[dict]:
    """One row per configuration: what it was, what it predicted, what it achieved."""
    rows = []
    for name, rep in reports:
        lat = rep.get("latency_ms") or {}
        pred = rep.get("predicted") or {}
        rows.append(
            {
                "name": name,
                "algorithm": rep.get("algorithm"),
                "objective": rep.get("objective"),
                "devices": [s["device"] for s in rep["stages"]],
                "cut_tensors": rep.get("cut_tensors"),
                "throughput_fps": rep.get("throughput_fps"),
                "latency_p50_ms": lat.get("p50"),
                "latency_p99_ms": lat.get("p99"),
                "predicted_fps": pred.get("throughput_fps"),
                "predicted_latency_ms": round(pred["latency_s"] * 1e3, 3) if pred.get("latency_s") else None,
                "errors": rep.get("errors"),
                "run_dir": rep.get("run_dir"),
            }
        )
    return rows
