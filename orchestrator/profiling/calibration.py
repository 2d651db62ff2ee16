"""Each planned stage measured as a whole on its device, just before the run.

Summing a stage's blocks misestimates it (DIME's point): merged into one ONNX Runtime session the
blocks run differently, and a busy stage also spends its device's quota on taking its frame in and
sending its output over its link. So before the pipeline is loaded:

- kept busy: two frames in flight while the stage's output crosses its real link to the next
  stage's device, where a sink takes it (one number per tensor goes home), and, where tc shapes
  the links, its input comes over its real link from the previous stage's device, where a relay
  passes the driver's frames on (taking a trickle in costs more than a burst). Devices take part in
  at most one measurement at a time, so this runs in rounds. A device under a CPU quota that its
  threads could exceed takes, per frame, the CPU its node spent (ORT and everything beside it)
  over its CPU share (what the quota grants it in the run, without the waits of a host busier now
  than while one stage limits the rest), or the interval between completions where that is
  smaller. Elsewhere (no quota, or threads within it) the interval is the step time;
- then one request at a time: every device holds its stage alone (all devices at once); the lone
  requests' compute, and the round trip through the source's node, give a request's latency.

The planner's choice does not change: this only makes the prediction a measurement of the
stages chosen. Stage inputs are real intermediate tensors: the plan's stages run once in this
process on a seeded input. A decoder's stages are measured at one decode step after
`past_tokens`, each holding its cache inside as it keeps it in the run (profiling.decode_point).
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import math
import os
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from common import testbed_pb2 as pb
from common.cpu_quota import CFS_PERIOD_S
from orchestrator.config import Testbed
from orchestrator.driving.deploy import load_requests
from orchestrator.driving.driver import Feed, drive
from orchestrator.partition.chain import run_chain
from orchestrator.partition.costmodel import burst_wall_s
from orchestrator.partition.plan import Plan, Predicted, StagePlan
from orchestrator.partition.seeded_inputs import InputSpec, decode_inputs, onnx_inputs, seeded_inputs
from orchestrator.partition.stage_files import StageFile
from orchestrator.profiling.decode_point import decode_point, holding_cache
from orchestrator.runtimes.base import Deployment

IN_FLIGHT = 2  # one frame waits while the other runs: the stage never idles
LONE_WARMUP = 3  # one request at a time: a fresh session's first runs, not measured
LONE_S, MIN_LONE, MAX_LONE = 3.0, 4, 12  # then about three seconds of lone requests
MEASURE_S = 3.0  # per stage, about: thirty CFS periods, so a quota shows as it does in the run
MIN_FRAMES, MAX_FRAMES = 8, 40


def stage_inputs(
    plan: Plan, batch: int = 1, seed: int = 0, past_tokens: int | None = None, new_tokens: int = 1
) -> list[dict[str, np.ndarray]]:
    """What each stage's frame carries in (its inputs and what it passes on), from one pass of the
    plan's stages in this process on seeded model inputs (typed as the stage files declare them);
    a decoder's (a plan with `state`) one step of `new_tokens` (1: a decode step; a prompt's
    length: a prefill) after `past_tokens` (0 where None), each stage's cache inputs drawn too
    (they stay out of the frames: its own device keeps them)."""
    specs: dict[str, InputSpec] = {}
    for k in range(len(plan.stages)):
        declared = onnx.load(str(plan.stage_path(k)), load_external_data=False).graph.input
        specs.update({x.name: x for x in onnx_inputs((vi.name, vi.type) for vi in declared)})
    point = decode_point(bool(plan.state), past_tokens)
    if point is None:
        feeds = seeded_inputs([specs[x] for x in plan.inputs if x in specs], batch, seed)
    else:
        feeds = decode_inputs([specs[x] for x in [*plan.inputs, *plan.state] if x in specs], point, seed, new_tokens)
    env = run_chain(plan.dir, plan.stages, feeds)
    return [{x: env[x] for x in plan.forward_after(k - 1) if x in env} for k in range(len(plan.stages))]


def held_stages(plan: Plan, node_plan: Plan, past_tokens: int | None) -> Plan:
    """The plan as its stages are measured: a decoder's stage files holding their cache at the
    decode step (written beside them in the nodes' folder), the plan itself otherwise."""
    point = decode_point(bool(plan.state), past_tokens)
    if point is None:
        return plan
    files = [StageFile(s.index, s.model, list(s.inputs), list(s.outputs), 0, 0, 0) for s in plan.stages]
    held = holding_cache(files, node_plan.dir, point, prefix="calibration_")
    stages = [
        s.model_copy(update={"model": f.model, "inputs": f.inputs, "outputs": f.outputs})
        for s, f in zip(plan.stages, held, strict=True)
    ]
    out = plan.model_copy(update={"stages": stages, "state": {}})
    out._dir = plan.dir
    return out


def frames_for(expected_s: float | None, seconds: float = MEASURE_S, lo: int = MIN_FRAMES, hi: int = MAX_FRAMES) -> int:
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
    """One stage on its device: its step time kept busy, and a lone request through it."""

    busy_s: float  # per frame with two in flight (see the module's docstring)
    compute_s: float  # median compute of a lone request (one in flight)
    roundtrip_s: float  # a lone request from the driver through the node and back, less compute


def sink_model(path: Path, arrays: dict[str, np.ndarray]) -> list[str]:
    """A stage that takes `arrays` in and sends home one number per tensor: it stands for the next
    stage while a stage is measured sending its output over its real link. Returns its outputs."""
    nodes, inputs, outputs = [], [], []
    for i, (name, a) in enumerate(arrays.items()):
        inputs.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(a.dtype), list(a.shape)))
        nodes.append(helper.make_node("Cast", [name], [f"calibration_f{i}"], to=TensorProto.FLOAT))
        nodes.append(helper.make_node("ReduceSum", [f"calibration_f{i}"], [f"calibration_sum{i}"], keepdims=0))
        outputs.append(helper.make_tensor_value_info(f"calibration_sum{i}", TensorProto.FLOAT, []))
    graph = helper.make_graph(nodes, "calibration_sink", inputs, outputs)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    os.chmod(path, 0o644)  # the node may run as another user
    return [o.name for o in outputs]


def relay_model(path: Path, arrays: dict[str, np.ndarray]) -> dict[str, str]:
    """A stage that passes `arrays` on unchanged under their own names, taking them in under new
    ones: it stands for the previous stage, so that a measured stage takes its input over its real
    incoming link. Returns {new input name: tensor name}."""
    names = {f"calibration_in{i}": name for i, name in enumerate(arrays)}
    nodes = [helper.make_node("Identity", [new], [name]) for new, name in names.items()]
    inputs = [
        helper.make_tensor_value_info(new, helper.np_dtype_to_tensor_dtype(arrays[n].dtype), list(arrays[n].shape))
        for new, n in names.items()
    ]
    outputs = [
        helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(arrays[n].dtype), list(arrays[n].shape))
        for n in names.values()
    ]
    graph = helper.make_graph(nodes, "calibration_relay", inputs, outputs)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    os.chmod(path, 0o644)
    return names


def _load(dep: Deployment, requests: dict[str, pb.LoadRequest], timeout_s: float) -> dict[str, pb.LoadReply]:
    replies = {}
    for name, req in requests.items():
        replies[name] = dep.client(name).load(req, timeout_s=timeout_s)
    return replies


def _mini_plan(
    plan: Plan,
    node_plan: Plan,
    k: int,
    sink: tuple[str, str, list[str]] | None,
    relay: tuple[str, str, list[str]] | None = None,
) -> Plan:
    """Stage k, after a relay (device, file, its inputs) on the previous stage's device and before
    a sink (device, file, outputs) on the next stage's device, where given."""
    s = plan.stages[k]
    stages: list[StagePlan] = []
    inputs = list(plan.forward_after(k - 1))
    if relay is not None:
        device, file, inputs = relay
        stages.append(
            StagePlan(index=0, device=device, model=file, inputs=inputs, outputs=list(plan.forward_after(k - 1)))
        )
    stages.append(s.model_copy(update={"index": len(stages)}))  # as planned: its memory mode too
    outputs = list(plan.forward_after(k))
    if sink is not None:
        device, file, outputs = sink
        stages.append(
            StagePlan(index=len(stages), device=device, model=file, inputs=list(plan.forward_after(k)), outputs=outputs)
        )
    mini = Plan(
        model=plan.model,
        model_sha256=plan.model_sha256,
        algorithm=plan.algorithm,
        objective=plan.objective,
        inputs=inputs,
        outputs=outputs,
        stages=stages,
    )
    mini._dir = node_plan.dir
    return mini


def _lone(
    dep: Deployment, device: str, feed: dict[str, np.ndarray], frames: int, timeout_s: float, quota: float | None
) -> tuple[float, float, float]:
    """(median compute, median round trip less compute, the node's CPU per request) of lone requests
    through stage 0; `quota`: the node's CPU quota in CPUs where its threads could exceed it (None
    elsewhere)."""
    node, feeds = dep.client(device), _spaced(feed, quota)
    # the first runs of a fresh session allocate: not measured
    _raise_errors(device, drive(node, feeds, total=LONE_WARMUP, concurrency=1, timeout_s=timeout_s))
    cpu0 = node.stats(timeout_s).cpu_seconds
    records = drive(node, feeds, total=frames, concurrency=1, timeout_s=timeout_s)
    cpu = node.stats(timeout_s).cpu_seconds - cpu0
    _raise_errors(device, records)
    compute = [sum((x.end_ns - x.start_ns) / 1e9 for x in r.timings if x.stage == 0) for r in records]
    trip = [(r.done_ns - r.sent_ns) / 1e9 - c for r, c in zip(records, compute, strict=True)]
    # medians: a lone request under a quota can fall on either side of a period's end
    return float(np.median(compute)), max(0.0, float(np.median(trip))), cpu / len(records)


def _spaced(feed: dict[str, np.ndarray], quota: float | None, seed: int = 0) -> Iterator[Feed]:
    """The same feed after a pause, off the timed path. A random part of up to one CFS period: a
    lone request under a quota takes a period more or less by where in the period it starts, and
    back-to-back requests can lock into one phase; spacing them samples every phase. Under a quota
    below one CPU, a whole period more: the quota is granted per period, so after one that the node
    spent idle a lone request starts with its quota unspent, as on a device whose other stages
    take longer, not one whose quota the last request used up."""
    rng = random.Random(seed)
    idle = CFS_PERIOD_S if quota is not None and 0 < quota < 1 else 0.0
    while True:
        time.sleep(idle + rng.uniform(0.0, CFS_PERIOD_S))
        yield Feed(arrays=feed)


def _busy(
    dep: Deployment,
    device: str,
    driven: str,
    reply: pb.LoadReply,
    feed: dict[str, np.ndarray],
    frames: int,
    timeout_s: float,
) -> float:
    """Step time of `device`'s stage, frames driven into `driven` (the device itself or its relay)."""
    source, node = dep.client(driven), dep.client(device)
    drive(
        source, itertools.repeat(Feed(arrays=feed)), total=IN_FLIGHT, concurrency=IN_FLIGHT, timeout_s=timeout_s
    )  # a fresh session's first runs, the link's first frames
    cpu0 = node.stats(timeout_s).cpu_seconds
    records = drive(
        source,
        itertools.repeat(Feed(arrays=feed)),
        total=IN_FLIGHT + frames,
        concurrency=IN_FLIGHT,
        timeout_s=timeout_s,
    )
    cpu = node.stats(timeout_s).cpu_seconds - cpu0
    _raise_errors(device, records)
    t = step_time_s([r.done_ns for r in records])
    if t is None:
        raise RuntimeError(f"measuring the stage on {device}: too few frames came back")
    if _binding_quota(reply) is not None:
        # each figure can only overstate the step: the interval by the host's waits, the CPU by
        # whatever else the node did meanwhile; the smaller is the closer
        t = min(t, cpu / len(records) / reply.cpu_quota)
    return t


def _binding_quota(reply: pb.LoadReply) -> float | None:
    """The node's CPU quota in CPUs where its threads could exceed it, else None."""
    return reply.cpu_quota if reply.cpu_quota and reply.cpu_quota < reply.threads else None


def _raise_errors(device: str, records) -> None:
    bad = [r.error for r in records if r.error]
    if bad:
        raise RuntimeError(f"measuring the stage on {device}: {bad[0]}")


def rounds(groups: Sequence[Sequence[str | None]]) -> list[list[int]]:
    """Stage indices grouped so that no device takes part twice in a group: stage k uses the devices
    in groups[k] (its own; the previous and next stage's while its input and output cross links)."""
    out: list[tuple[set[str], list[int]]] = []
    for k, devs in enumerate(groups):
        uses = {d for d in devs if d}
        for used, ks in out:
            if not used & uses:
                used |= uses
                ks.append(k)
                break
        else:
            out.append((set(uses), [k]))
    return [ks for _, ks in out]


def measure_stages(
    plan: Plan,
    node_plan: Plan,
    testbed: Testbed,
    dep: Deployment,
    *,
    batch: int = 1,
    timeout_s: float = 300.0,
    past_tokens: int | None = None,
) -> list[StageMeasure]:
    """Each stage on its device: kept busy while its output crosses its real link to the next
    stage's device, where a sink takes it (in rounds, every device in at most one measurement at a
    time), then one request at a time (every device at once, each stage alone). A decoder's stages
    take one decode step after `past_tokens` (0 where None), each holding its cache.

    Leaves the nodes holding calibration stages: load the pipeline afterwards."""
    n = len(plan.stages)
    feeds = stage_inputs(plan, batch, past_tokens=past_tokens)
    plan = held_stages(plan, node_plan, past_tokens)
    expected = plan.predicted.stage_s or [None] * n

    def pool(jobs):
        with cf.ThreadPoolExecutor(max_workers=max(1, len(jobs)), thread_name_prefix="calibrate") as ex:
            return [f.result() for f in [ex.submit(j) for j in jobs]]

    # kept busy, the input over the link from the previous stage's device (where tc shapes links:
    # receiving a trickle costs more than a burst) and the output over the link to the next one
    # (the last stage's result goes home over a link too, but it is small: it goes to the driver)
    groups: list[tuple[str | None, str, str | None]] = []
    for k, s in enumerate(plan.stages):
        prv = plan.stages[k - 1].device if k > 0 and dep.link_emulation.tc_shaped else None
        nxt = plan.stages[k + 1].device if k + 1 < n else None
        groups.append((prv if prv != s.device else None, s.device, nxt if nxt != s.device else None))
    busy: dict[int, float] = {}
    for ks in rounds(groups):
        replies: dict[int, pb.LoadReply] = {}
        feeds_in: dict[int, dict[str, np.ndarray]] = {}
        for k in ks:
            prv, dev, nxt = groups[k]
            sink = relay = None
            feeds_in[k] = feeds[k]
            if nxt is not None:
                file = f"calibration_sink_{k}.onnx"
                sink = (nxt, file, sink_model(node_plan.dir / file, feeds[k + 1]))
            if prv is not None:
                file = f"calibration_relay_{k}.onnx"
                names = relay_model(node_plan.dir / file, feeds[k])
                relay = (prv, file, list(names))
                feeds_in[k] = {new: feeds[k][old] for new, old in names.items()}
            driven = prv or dev
            reqs = load_requests(
                _mini_plan(plan, node_plan, k, sink, relay), testbed, dep, driven, queue_depth=IN_FLIGHT
            )
            order = [d for d in (nxt, dev, prv) if d]  # downstream first: a frame finds its next stage
            replies[k] = _load(dep, {d: reqs[d] for d in dict.fromkeys(order)}, timeout_s)[dev]
        got = pool(
            [
                lambda k=k, r=replies[k], f=feeds_in[k]: _busy(
                    dep, groups[k][1], groups[k][0] or groups[k][1], r, f, frames_for(expected[k]), timeout_s
                )
                for k in ks
            ]
        )
        busy.update(zip(ks, got, strict=True))
    # then one request at a time, each stage alone on its device, devices in parallel (after the
    # busy rounds: the weights are in memory and the host is warm, as they are during the run)
    lone: dict[int, tuple[float, float]] = {}
    for ks in rounds([(s.device,) for s in plan.stages]):
        quotas: dict[int, float | None] = {}
        for k in ks:
            reply = _load(dep, _alone_requests(plan, node_plan, k, testbed, dep), timeout_s)[plan.stages[k].device]
            quotas[k] = _binding_quota(reply)
        got = pool(
            [
                lambda k=k, q=quotas[k]: _lone(
                    dep,
                    plan.stages[k].device,
                    feeds[k],
                    frames_for(expected[k], LONE_S, MIN_LONE, MAX_LONE),
                    timeout_s,
                    q,
                )
                for k in ks
            ]
        )
        lone.update(zip(ks, got, strict=True))

    return [StageMeasure(busy[k], lone[k][0], lone[k][1]) for k in range(n)]


PREFILL_FRAMES = 4  # lone prefills a stage, after LONE_WARMUP


@dataclass
class PrefillMeasure:
    """A plan's stages each taking one prefill (a prompt from an empty cache) alone on its device."""

    tokens: int  # the prompt's length
    compute_s: list[float]  # per stage, median compute of a lone prefill
    wall_s: list[float]  # per stage, a prefill's time in a run (see measure_prefill)
    bytes_in: list[int]  # per stage, what its frame carries in (stage 0: the prompt's inputs)
    extra_transfer_s: float  # the hops between stages, beyond a decode step's: the prompt's hidden states


def measure_prefill(
    plan: Plan,
    node_plan: Plan,
    testbed: Testbed,
    dep: Deployment,
    *,
    tokens: int,
    past_tokens: int | None = None,
    timeout_s: float = 300.0,
) -> PrefillMeasure:
    """Each stage of a decoder's plan taking a prefill of `tokens` tokens, one request at a time,
    devices in parallel, each holding its (empty) cache inside, requests spaced as `_lone` spaces
    them. The prefill is a decode step's shape with the prompt in place of one token: its compute
    and the hidden states it passes on grow with the prompt. Where a CPU quota below one CPU holds
    a node, a prefill can outlast the quota of a period: its time in a run is the node's CPU per
    prefill run at full speed from the start of a period and waiting out the rest of each period
    whose quota it spent (costmodel.burst_wall_s), as a stage waiting for its frames runs; a lone
    request's compute, which a request started late in a period may finish before it is throttled,
    would understate it.

    `past_tokens`: the decode step the hops' extra time is counted against (0 where None).
    Leaves the nodes holding calibration stages: load the pipeline afterwards."""
    if not plan.state:
        raise ValueError("measure_prefill: the plan is not a decoder's (no stage state)")
    feeds = stage_inputs(plan, past_tokens=0, new_tokens=tokens)
    held = held_stages(plan, node_plan, 0)
    compute: dict[int, float] = {}
    wall: dict[int, float] = {}
    period = dep.cpu_quota_period_s or CFS_PERIOD_S
    for ks in rounds([(s.device,) for s in held.stages]):
        quotas: dict[int, float | None] = {}
        for k in ks:
            reply = _load(dep, _alone_requests(held, node_plan, k, testbed, dep), timeout_s)[held.stages[k].device]
            quotas[k] = _binding_quota(reply)
        with cf.ThreadPoolExecutor(max_workers=len(ks), thread_name_prefix="prefill") as ex:
            futures = {
                k: ex.submit(_lone, dep, held.stages[k].device, feeds[k], PREFILL_FRAMES, timeout_s, quotas[k])
                for k in ks
            }
            for k, f in futures.items():
                compute[k], _, cpu = f.result()
                q = quotas[k]
                wall[k] = burst_wall_s(cpu / q, q, period) if q is not None and q < 1 else compute[k]
    n = len(plan.stages)
    bytes_in = [int(sum(a.nbytes for a in f.values())) for f in feeds]
    step = [int(sum(a.nbytes for a in f.values())) for f in stage_inputs(plan, past_tokens=past_tokens or 0)]
    extra = 0.0
    for k in range(1, n):
        a, b = plan.stages[k - 1].device, plan.stages[k].device
        rate = testbed.link(a, b).rate_bps
        if a != b and rate > 0:
            extra += max(0, bytes_in[k] - step[k]) * 8.0 / rate
    return PrefillMeasure(
        tokens=tokens,
        compute_s=[compute[k] for k in range(n)],
        wall_s=[wall[k] for k in range(n)],
        bytes_in=bytes_in,
        extra_transfer_s=extra,
    )


def _alone_requests(
    plan: Plan, node_plan: Plan, k: int, testbed: Testbed, dep: Deployment
) -> dict[str, pb.LoadRequest]:
    dev = plan.stages[k].device
    reqs = load_requests(_mini_plan(plan, node_plan, k, None), testbed, dep, dev, queue_depth=IN_FLIGHT)
    return {dev: reqs[dev]}


def at_levels(measured: Sequence[StageMeasure], plan: Plan, testbed: Testbed) -> list[StageMeasure]:
    """Stages are measured at their devices' own cpus, before a plan's DVFS levels are put in force
    (the fidelity check measures the devices file's caps in between): a stage at a lower level runs
    its step and its compute cpus / level longer, as the planner scales its profile."""
    out = []
    for m, f in zip(measured, level_factors(plan, testbed), strict=True):
        out.append(m if f == 1.0 else replace(m, busy_s=m.busy_s * f, compute_s=m.compute_s * f))
    return out


def prefill_at_levels(prefill: PrefillMeasure, plan: Plan, testbed: Testbed) -> PrefillMeasure:
    """The prefill measured at the devices' own cpus, scaled to the plan's levels as `at_levels`
    scales a stage's step."""
    f = level_factors(plan, testbed)
    return replace(
        prefill,
        compute_s=[c * x for c, x in zip(prefill.compute_s, f, strict=True)],
        wall_s=[w * x for w, x in zip(prefill.wall_s, f, strict=True)],
    )


def level_factors(plan: Plan, testbed: Testbed) -> list[float]:
    """Per stage, how much longer it runs at its DVFS level than at its device's cpus (1: none)."""
    return [testbed.device(s.device).cpus / s.level if s.level else 1.0 for s in plan.stages]


def calibrated(predicted: Predicted, measured: Sequence[StageMeasure], source_index: int | None) -> Predicted:
    """The prediction from the stages measured as a whole: throughput from the slowest of their
    busy step times and of the steps that are not stages (links, the source's relay); latency as
    their lone compute plus the transfers, plus the round trip of the source's stage
    (`source_index`; None when the source holds no stage, and the profile's figure stands)."""
    others = predicted.slowest_other_s if predicted.slowest_other_s is not None else max(predicted.transfer_s or [0.0])
    busy = [m.busy_s for m in measured]
    slowest = max([*busy, others])
    update: dict = {
        "stage_s": [round(x, 6) for x in busy],
        "throughput_fps": round(1.0 / slowest, 3) if slowest > 0 else None,
    }
    if predicted.transfers_total_s is not None:
        trip = measured[source_index].roundtrip_s if source_index is not None else (predicted.source_roundtrip_s or 0.0)
        update["latency_s"] = round(sum(m.compute_s for m in measured) + predicted.transfers_total_s + trip, 6)
    return predicted.model_copy(update=update)


def calibration_note(
    stages: Sequence[StagePlan], measured: Sequence[StageMeasure], before: Predicted, after: Predicted, seconds: float
) -> str:
    """The run's note on the calibration: each stage's busy time measured whole beside what the sum
    of its profiled blocks said (`before`), and a lone request's latency before and `after`."""
    busy = ", ".join(f"{s.device} {m.busy_s * 1e3:.0f} ms" for s, m in zip(stages, measured, strict=True))
    from_blocks = ", ".join(f"{x * 1e3:.0f} ms" for x in before.stage_s or [])
    return (
        f"prediction: each stage measured as a whole on its device in {seconds:.1f} s, busy ({busy}; the sum of "
        f"its profiled blocks and the node's overhead said {from_blocks}); a lone request "
        f"{after.latency_s * 1e3:.0f} ms (the profile said {before.latency_s * 1e3:.0f} ms)"
        + (
            "; stages at a DVFS level measured at their device's cpus and scaled"
            if any(s.level for s in stages)
            else ""
        )
    )


def prefill_note(stages: Sequence[StagePlan], prefill: PrefillMeasure) -> str:
    """The run's note on the prefill measured per stage."""
    each = ", ".join(
        f"{s.device} {c * 1e3:.0f} ms" + (f" ({w * 1e3:.0f} ms under its quota)" if w > c * 1.05 else "")
        for s, c, w in zip(stages, prefill.compute_s, prefill.wall_s, strict=True)
    )
    return (
        f"prediction: each stage's prefill of {prefill.tokens} tokens measured alone on its device ({each}; "
        f"the hops carry {prefill.extra_transfer_s * 1e3:.1f} ms more than a decode step's)"
    )
