"""Figures of a run, computed from the request records (warm-up excluded)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .driver import Record


def _pct(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    a = np.asarray(values, dtype=np.float64)
    return {"p50": round(float(np.percentile(a, 50)), 3), "p99": round(float(np.percentile(a, 99)), 3),
            "mean": round(float(a.mean()), 3)}


def throughput(measured: list[Record], batch: int) -> float | None:
    """Completed images per second over the measured window.

    The window runs from the first measured completion to the last; the request that opens
    it is not counted (n completions span n-1 intervals), so a cold start cannot inflate it.
    """
    done = sorted(r.done_ns for r in measured)
    if len(done) < 2:
        return None
    span = (done[-1] - done[0]) / 1e9
    return (len(done) - 1) * batch / span if span > 0 else None


def hops_of(rec: Record, num_stages: int) -> list[tuple[str, str, int, int, int]]:
    """(from, to, bytes, send ns, receive ns) for every hop that crossed between two devices."""
    by_stage = {t.stage: t for t in rec.timings}
    out = []
    order = [s for s in sorted(by_stage) if -1 <= s <= num_stages]
    for a, b in zip(order, order[1:], strict=False):
        ta, tb = by_stage[a], by_stage[b]
        if ta.device == tb.device:
            continue
        out.append((ta.device, tb.device, ta.bytes_out, ta.send_ns, tb.recv_ns))
    return out


@dataclass
class HopSample:
    """One frame on one link: time queued behind earlier frames, then time on the link."""

    id: int
    src: str
    dst: str
    bytes: int
    wait_ms: float  # behind earlier frames on the same link
    transfer_ms: float  # from the link taking the frame to the receiver having it (delay included)
    busy_s: float  # transmission alone (delay excluded): what the link's rate governs


def hop_samples(records: list[Record], num_stages: int,
                delay_s: Callable[[str, str], float] = lambda a, b: 0.0) -> list[HopSample]:
    """Split each hop's time into link queueing and transfer.

    Frames on one link are sent in order; a frame starts transmitting when it is handed over
    or when the frame before it has finished transmitting (its arrival less the link delay),
    whichever is later. Without this, frames sent back to back would count each other's time.
    """
    per_link: dict[tuple[str, str], list[tuple[int, int, int, int]]] = defaultdict(list)
    for r in records:
        for src, dst, nbytes, send_ns, recv_ns in hops_of(r, num_stages):
            per_link[(src, dst)].append((send_ns, recv_ns, nbytes, r.id))
    out = []
    for (src, dst), frames in per_link.items():
        delay_ns = int(delay_s(src, dst) * 1e9)
        free_at = 0
        for send_ns, recv_ns, nbytes, rid in sorted(frames):
            start = max(send_ns, free_at)
            free_at = recv_ns - delay_ns
            out.append(HopSample(rid, src, dst, nbytes, (start - send_ns) / 1e6, (recv_ns - start) / 1e6,
                                 (recv_ns - delay_ns - start) / 1e9))
    return out


def stage_figures(measured: list[Record], num_stages: int) -> list[dict]:
    compute: dict[int, list[float]] = defaultdict(list)
    queue: dict[int, list[float]] = defaultdict(list)
    device: dict[int, str] = {}
    for r in measured:
        for t in r.timings:
            if 0 <= t.stage < num_stages:
                compute[t.stage].append((t.end_ns - t.start_ns) / 1e6)
                queue[t.stage].append((t.start_ns - t.recv_ns) / 1e6)
                device[t.stage] = t.device
    return [{"index": k, "device": device.get(k), "compute_ms": _pct(compute[k]), "queue_ms": _pct(queue[k])}
            for k in range(num_stages)]


def hop_figures(samples: list[HopSample], measured_ids: set[int]) -> list[dict]:
    acc: dict[tuple[str, str], list[HopSample]] = defaultdict(list)
    for h in samples:
        if h.id in measured_ids:
            acc[(h.src, h.dst)].append(h)
    return [{"from": s, "to": d, "bytes": int(np.median([h.bytes for h in v])),
             "transfer_ms": _pct([h.transfer_ms for h in v]), "link_wait_ms": _pct([h.wait_ms for h in v])}
            for (s, d), v in acc.items()]


def agreement(records: list[Record], reference: list[dict[str, np.ndarray]]) -> dict:
    """Largest absolute difference and top-1 agreement against the whole model's outputs."""
    max_diff = 0.0
    same = total = 0
    for r in records:
        if r.outputs is None:
            continue
        ref = reference[r.pool_index]
        for name, want in ref.items():
            got = r.outputs.get(name)
            if got is None or got.shape != want.shape:
                return {"max_abs_diff": None, "top1": 0.0, "checked": total, "error": f"output {name} missing"}
            max_diff = max(max_diff, float(np.max(np.abs(got.astype(np.float64) - want))))
        first = next(iter(ref))
        w, g = ref[first], r.outputs[first]
        if w.ndim >= 2 and np.issubdtype(w.dtype, np.floating):
            same += int(np.sum(np.argmax(w.reshape(w.shape[0], -1), 1) == np.argmax(g.reshape(g.shape[0], -1), 1)))
            total += w.shape[0]
    return {"max_abs_diff": max_diff, "top1": (same / total) if total else None, "checked": total}
