"""Figures of a run, computed from the request records (warm-up excluded)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from orchestrator.driving.driver import Record


def _pct(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    a = np.asarray(values, dtype=np.float64)
    return {
        "p50": round(float(np.percentile(a, 50)), 3),
        "p99": round(float(np.percentile(a, 99)), 3),
        "mean": round(float(a.mean()), 3),
    }


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


def _off(offsets: dict[str, int] | None, device: str) -> int:
    return offsets.get(device, 0) if offsets else 0


def _ns(t, name: str) -> int:
    """A stamp the record may lack (records from before the field existed read 0)."""
    return int(getattr(t, name, 0) or 0)


def _hops(
    rec: Record, num_stages: int, offsets: dict[str, int] | None = None
) -> list[tuple[str, str, int, int, int, int, int]]:
    """(from, to, bytes, send ns, receive ns, serialize ns, deserialize ns) per hop between two
    devices; send and receive on the orchestrator's clock (each device's offset subtracted)."""
    by_stage = {t.stage: t for t in rec.timings}
    out = []
    order = [s for s in sorted(by_stage) if -1 <= s <= num_stages]
    for a, b in zip(order, order[1:], strict=False):
        ta, tb = by_stage[a], by_stage[b]
        if ta.device == tb.device:
            continue
        out.append(
            (
                ta.device,
                tb.device,
                ta.bytes_out,
                ta.send_ns - _off(offsets, ta.device),
                tb.recv_ns - _off(offsets, tb.device),
                max(0, _ns(ta, "serialize_ns")),
                max(0, _ns(tb, "deserialize_ns")),
            )
        )
    return out


@dataclass
class HopSample:
    """One frame on one link: time queued behind earlier frames, serialisation, time on the
    link, deserialisation (they add up to the hop's send-to-receive time)."""

    id: int
    src: str
    dst: str
    bytes: int
    wait_ms: float  # behind earlier frames on the same link
    transfer_ms: float  # from the link taking the frame to its last byte in (delay included)
    busy_s: float  # transmission alone (delay excluded): what the link's rate governs
    serialize_ms: float = 0.0  # sender encoding the frame before its first byte left
    deserialize_ms: float = 0.0  # receiver decoding it after its last byte arrived
    recv_ns: int = 0  # the receiver's stamp on the orchestrator's clock: when, for windows over time


def hop_samples(
    records: list[Record],
    num_stages: int,
    delay_s: Callable[[str, str], float] = lambda a, b: 0.0,
    offsets: dict[str, int] | None = None,
) -> list[HopSample]:
    """Split each hop's time into link queueing, serialisation, transfer, deserialisation.

    Frames on one link are sent in order; a frame is serialized when handed over, and the link
    takes it then or when the frame before it has finished transmitting (its arrival less its
    deserialisation and the link delay), whichever is later. Without this, frames sent back to
    back would count each other's time. offsets: per device, its clock less the orchestrator's
    (orchestrator/driving/clocks.py offsets_ns): send and receive stamps are brought to the
    orchestrator's clock first, so a hop across two clocks is right.
    """
    per_link: dict[tuple[str, str], list[tuple[int, int, int, int, int, int]]] = defaultdict(list)
    for r in records:
        for src, dst, nbytes, send_ns, recv_ns, ser, deser in _hops(r, num_stages, offsets):
            per_link[(src, dst)].append((send_ns, recv_ns, nbytes, r.id, ser, deser))
    out = []
    for (src, dst), frames in per_link.items():
        delay_ns = int(delay_s(src, dst) * 1e9)
        free_at = 0
        for send_ns, recv_ns, nbytes, rid, ser, deser in sorted(frames):
            start = max(send_ns + ser, free_at)  # the link takes the frame
            arrived = recv_ns - deser  # its last byte is in
            free_at = arrived - delay_ns
            out.append(
                HopSample(
                    rid,
                    src,
                    dst,
                    nbytes,
                    (start - send_ns - ser) / 1e6,
                    (arrived - start) / 1e6,
                    (arrived - delay_ns - start) / 1e9,
                    ser / 1e6,
                    deser / 1e6,
                    recv_ns,
                )
            )
    return out


def stage_figures(measured: list[Record], num_stages: int, offsets: dict[str, int] | None = None) -> list[dict]:
    """Per stage: queue wait (received to compute start) and compute, p50/p99/mean in ms.

    Both are differences of one device's stamps, so clock offsets cancel; `offsets` is taken
    for symmetry with the hop functions."""
    compute: dict[int, list[float]] = defaultdict(list)
    queue: dict[int, list[float]] = defaultdict(list)
    device: dict[int, str] = {}
    for r in measured:
        for t in r.timings:
            if 0 <= t.stage < num_stages:
                compute[t.stage].append((t.end_ns - t.start_ns) / 1e6)
                queue[t.stage].append((t.start_ns - t.recv_ns) / 1e6)
                device[t.stage] = t.device
    return [
        {"index": k, "device": device.get(k), "compute_ms": _pct(compute[k]), "queue_ms": _pct(queue[k])}
        for k in range(num_stages)
    ]


def hop_figures(samples: list[HopSample], measured_ids: set[int]) -> list[dict]:
    """Per link: median bytes, and link wait, serialisation, transfer, deserialisation in ms."""
    acc: dict[tuple[str, str], list[HopSample]] = defaultdict(list)
    for h in samples:
        if h.id in measured_ids:
            acc[(h.src, h.dst)].append(h)
    return [
        {
            "from": s,
            "to": d,
            "bytes": int(np.median([h.bytes for h in v])),
            "transfer_ms": _pct([h.transfer_ms for h in v]),
            "link_wait_ms": _pct([h.wait_ms for h in v]),
            "serialize_ms": _pct([h.serialize_ms for h in v]),
            "deserialize_ms": _pct([h.deserialize_ms for h in v]),
        }
        for (s, d), v in acc.items()
    ]


STAGE_PARTS = (("queue", "queue_ms"), ("compute", "compute_ms"))
HOP_PARTS = (
    ("link wait", "link_wait_ms"),
    ("serialisation", "serialize_ms"),
    ("transfer", "transfer_ms"),
    ("deserialisation", "deserialize_ms"),
)


def pipeline_order(stage_figs: list[dict], hop_figs: list[dict], source: str | None = None) -> list[tuple[str, dict]]:
    """Stages and hops as a request meets them: ("hop", h) into stage 0's device, ("stage", s),
    the hop to the next stage's device, ... the hop home; hops not on that path at the end.
    Without `source`, a hop into stage 0's device from the last stage's is taken for the one home."""
    left = list(hop_figs)
    ordered = sorted(stage_figs, key=lambda s: s["index"])
    if source is None and ordered:
        last = ordered[-1]["device"]
        ins = [h for h in left if h["to"] == ordered[0]["device"] and h["from"] != last]
        source = ins[0]["from"] if ins else ordered[0]["device"]

    def take(src: str | None, dst: str | None) -> list[tuple[str, dict]]:
        found = [h for h in left if (src is None or h["from"] == src) and (dst is None or h["to"] == dst)]
        for h in found:
            left.remove(h)
        return [("hop", h) for h in found]

    out: list[tuple[str, dict]] = []
    prev = None
    for s in ordered:
        if prev is None:
            out += take(source, s["device"]) if source != s["device"] else []
        elif prev != s["device"]:
            out += take(prev, s["device"])
        out.append(("stage", s))
        prev = s["device"]
    if prev is not None and prev != source:
        out += take(prev, source)
    return out + [("hop", h) for h in left]


def breakdown_table(
    stage_figs: list[dict], hop_figs: list[dict], end_to_end_ms: float | None = None, source: str | None = None
) -> list[dict]:
    """Where the time goes, one row per part in pipeline order: {"part", "where", "p50_ms",
    "mean_ms", "share_pct"}; share_pct is the part's mean as a percentage of end_to_end_ms (the
    end-to-end mean latency), or, when that is not given, of the sum of the parts' means.
    Parts: a stage's queue and compute; a hop's link wait, serialisation, transfer and
    deserialisation (hops that carry no such field, from older runs, leave it out)."""
    rows = []
    for kind, fig in pipeline_order(stage_figs, hop_figs, source):
        if kind == "stage":
            where, parts = f"stage {fig['index']} on {fig['device']}", STAGE_PARTS
        else:
            where, parts = f"{fig['from']} -> {fig['to']}", HOP_PARTS
        for part, key in parts:
            v = fig.get(key)
            if v is None:
                continue
            rows.append({"part": part, "where": where, "p50_ms": v["p50"], "mean_ms": v["mean"]})
    total = end_to_end_ms if end_to_end_ms else sum(r["mean_ms"] for r in rows)
    for r in rows:
        r["share_pct"] = round(100.0 * r["mean_ms"] / total, 1) if total else None
    return rows


def timeline_rows(records: list[Record], num_stages: int, offsets: dict[str, int] | None = None) -> list[dict]:
    """Per completed request, for plots.timeline, every time on the orchestrator's clock:
    {"id", "sent_ns", "done_ns", "stages": [(stage, device, start_ns, end_ns, recv_ns)],
    "hops": [(src, dst, send_ns, recv_ns, serialize_ns, deserialize_ns)]}."""
    return [
        {
            "id": r.id,
            "sent_ns": r.sent_ns,
            "done_ns": r.done_ns,
            "stages": [
                (
                    t.stage,
                    t.device,
                    t.start_ns - _off(offsets, t.device),
                    t.end_ns - _off(offsets, t.device),
                    t.recv_ns - _off(offsets, t.device),
                )
                for t in r.timings
                if 0 <= t.stage < num_stages
            ],
            "hops": [
                (src, dst, send, recv, ser, deser)
                for src, dst, _, send, recv, ser, deser in _hops(r, num_stages, offsets)
            ],
        }
        for r in records
        if r.done_ns and not r.error
    ]
