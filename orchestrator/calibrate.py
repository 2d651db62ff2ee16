"""Each planned stage measured as a whole on its device, just before the run.

Summing a stage's blocks misestimates it (DIME's point): merged into one ONNX Runtime session the
blocks run differently, and a busy stage also spends its device's quota on taking its frame in and
sending its result on. So before the pipeline is loaded, every device holds its stage alone and
is driven with two frames in flight, all devices at once. A device under a CPU quota that its
threads could exceed takes, per frame, the CPU its node spent (ORT and everything beside it) over
its CPU share (what the quota grants it in the run, without the waits of a host busier now, with
every device saturated, than while one stage limits the rest), or the interval between completions
where that is smaller. Elsewhere (no quota, or threads within it) the interval is the step time.

A few requests also go through each stage one at a time first (warm-up, then measured): their
compute and the round trip through the source's node give the latency of a request alone.

The planner's choice does not change: this only makes the prediction a measurement of the
stages chosen. Stage inputs are real intermediate tensors: the plan's stages run once in this
process on a seeded input.
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import numpy as np
import onnxruntime as ort

from common import testbed_pb2 as pb
from common import testbed_pb2_grpc as pbg
from common.grpc_options import CHANNEL_OPTIONS

from .config import Testbed
from .deploy import threads_for
from .driver import Feed, drive
from .partition.plan import Plan, Predicted
from .partition.verify import random_feeds
from .runtimes.base import Deployment

IN_FLIGHT = 2  # one frame waits while the other runs: the stage never idles
LONE_WARMUP = 2  # one request at a time: a fresh session's first runs, not measured
LONE_S, MIN_LONE, MAX_LONE = 3.0, 4, 12  # then about three seconds of lone requests
MEASURE_S = 3.0  # per stage, about: thirty CFS periods, so a quota shows as it does in the run
MIN_FRAMES, MAX_FRAMES = 8, 40


def stage_inputs(plan: Plan, batch: int = 1, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """What each stage's frame carries in (its inputs and what it passes on), from one pass of the
    plan's stages in this process on a seeded input."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    have: dict[str, np.ndarray] = {}
    out: list[dict[str, np.ndarray]] = []
    for k, s in enumerate(plan.stages):
        sess = ort.InferenceSession(str(plan.stage_path(k)), so, providers=["CPUExecutionProvider"])
        if k == 0:
            have.update(random_feeds(sess, batch, seed))
        out.append({x: have[x] for x in plan.forward_after(k - 1) if x in have})
        have.update(zip(s.outputs, sess.run(list(s.outputs), {x: have[x] for x in s.inputs}), strict=True))
    return out


def frames_for(expected_s: float | None, seconds: float = MEASURE_S, lo: int = MIN_FRAMES,
               hi: int = MAX_FRAMES) -> int:
    """Frames to drive for about `seconds` of a stage expected to take `expected_s` per frame."""
    if not expected_s or expected_s <= 0:
        return lo
    return max(lo, min(hi, math.ceil(seconds / expected_s)))


def step_time_s(done_ns: Sequence[int], skip: int = IN_FLIGHT) -> float | None:
    """Mean interval between completions once the pipe is full (the first `skip` fill it)."""
    t = sorted(done_ns)[skip:]
    return (t[-1] - t[0]) / 1e9 / (len(t) - 1) if len(t) >= 2 else None


@dataclass
class StageMeasure:
    """One stage alone on its device: its step time kept busy, and a lone request through it."""

    busy_s: float  # per frame with two in flight (see the module's docstring)
    compute_s: float  # median compute of a lone request (one in flight)
    roundtrip_s: float  # a lone request from the driver through the node and back, less compute


def _measure(plan: Plan, node_plan: Plan, k: int, testbed: Testbed, dep: Deployment,
             feed: dict[str, np.ndarray], frames: int, lone_frames: int, timeout_s: float) -> StageMeasure:
    s = plan.stages[k]
    dev = testbed.device(s.device)
    req = pb.LoadRequest(
        device=dev.name, num_stages=1, source_device=dev.name, first_device=dev.name,
        threads=threads_for(dev.cpus), queue_depth=IN_FLIGHT,
        stages=[pb.StageSpec(index=0, model_path=dep.node_path(node_plan.stage_path(k)), inputs=list(s.inputs),
                             outputs=list(s.outputs), forward=list(plan.forward_after(k)), next_device=dev.name)])
    address = dep.nodes[dev.name].control_address
    with grpc.insecure_channel(address, options=CHANNEL_OPTIONS) as ch:
        stub = pbg.NodeStub(ch)
        reply = stub.Load(req, timeout=timeout_s)
        if not reply.ok:
            raise RuntimeError(f"measuring stage {k} on {dev.name}: the node refused it: {reply.error}")
        lone = drive(address, itertools.repeat(Feed(arrays=feed)), total=LONE_WARMUP + lone_frames, concurrency=1,
                     timeout_s=timeout_s)[LONE_WARMUP:]  # the first runs of a fresh session allocate
        cpu0 = stub.Stats(pb.Empty(), timeout=timeout_s).cpu_seconds
        records = drive(address, itertools.repeat(Feed(arrays=feed)), total=IN_FLIGHT + frames,
                        concurrency=IN_FLIGHT, timeout_s=timeout_s)
        cpu = stub.Stats(pb.Empty(), timeout=timeout_s).cpu_seconds - cpu0
    bad = [r.error for r in [*lone, *records] if r.error]
    if bad:
        raise RuntimeError(f"measuring stage {k} on {dev.name}: {bad[0]}")
    t = step_time_s([r.done_ns for r in records])
    if t is None:
        raise RuntimeError(f"measuring stage {k} on {dev.name}: too few frames came back")
    if reply.cpu_quota and reply.cpu_quota < reply.threads:
        # each figure can only overstate the step: the interval by the host's waits, the CPU by
        # whatever else the node did meanwhile; the smaller is the closer
        t = min(t, cpu / len(records) / reply.cpu_quota)
    compute = [sum((x.end_ns - x.start_ns) / 1e9 for x in r.timings if x.stage == 0) for r in lone]
    trip = [(r.done_ns - r.sent_ns) / 1e9 - c for r, c in zip(lone, compute, strict=True)]
    # medians: a lone request under a quota can fall on either side of a period's end
    return StageMeasure(t, float(np.median(compute)), max(0.0, float(np.median(trip))))


def measure_stages(plan: Plan, node_plan: Plan, testbed: Testbed, dep: Deployment, *, batch: int = 1,
                   timeout_s: float = 300.0) -> list[StageMeasure]:
    """Each stage on its device, all devices at once: kept busy, and one request at a time.

    Leaves each node holding its stage alone: load the pipeline afterwards."""
    feeds = stage_inputs(plan, batch)
    expected = plan.predicted.stage_s or [None] * len(plan.stages)
    by_device: dict[str, list[int]] = {}
    for s in plan.stages:
        by_device.setdefault(s.device, []).append(s.index)
    out: list[StageMeasure] = [StageMeasure(0.0, 0.0, 0.0)] * len(plan.stages)

    def run_device(ks: list[int]) -> None:  # a device holding two stages measures them in turn
        for k in ks:
            out[k] = _measure(plan, node_plan, k, testbed, dep, feeds[k], frames_for(expected[k]),
                              frames_for(expected[k], LONE_S, MIN_LONE, MAX_LONE), timeout_s)

    with cf.ThreadPoolExecutor(max_workers=len(by_device), thread_name_prefix="calibrate") as ex:
        for f in [ex.submit(run_device, ks) for ks in by_device.values()]:
            f.result()
    return out


def calibrated(predicted: Predicted, measured: Sequence[StageMeasure], source_index: int | None) -> Predicted:
    """The prediction from the stages measured as a whole: throughput from the slowest of their
    busy step times and of the steps that are not stages (links, the source's relay); latency as
    their lone compute plus the transfers, plus the round trip of the source's stage
    (`source_index`; None when the source holds no stage, and the profile's figure stands)."""
    others = predicted.slowest_other_s if predicted.slowest_other_s is not None else max(predicted.transfer_s or [0.0])
    busy = [m.busy_s for m in measured]
    slowest = max([*busy, others])
    update: dict = {"stage_s": [round(x, 6) for x in busy],
                    "throughput_fps": round(1.0 / slowest, 3) if slowest > 0 else None}
    if predicted.transfers_total_s is not None:
        trip = measured[source_index].roundtrip_s if source_index is not None else (predicted.source_roundtrip_s or 0.0)
        update["latency_s"] = round(sum(m.compute_s for m in measured) + predicted.transfers_total_s + trip, 6)
    return predicted.model_copy(update=update)
