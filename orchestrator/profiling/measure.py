"""Measure a model's blocks on the emulated devices, through their nodes.

Each block is written as its own stage file (cache.block_files), and every device's node is
loaded with a consecutive *chunk* of blocks, all on that device (the node runs them in a row:
stage k's frame goes to the same device as stage k+1). Frames carry the chunk's input tensors,
taken from one run of the whole chain in this process on seeded inputs (partition.chain), so every
block computes on real intermediate values. The node's own `start_ns`/`end_ns` stamps give each
block's compute time, measured where the device is emulated (inside its container under its caps;
in the local runtime under the same thread count). Warm-up frames are dropped; see
`chunk_block_times` for how the rest are averaged, and `DeviceProfile.overhead_s` for the
per-frame cost beside compute.

Chunks are cut so that a node holding them fits the device's memory by the planner's own memory
model (`partition.memory`); between chunks the node is emptied first (a Load replaces the old
pipeline only once the new one is built, which a small device could not hold twice).

A decoder is measured at one decode step after `past_tokens` (profiling.decode_point): the chain
runs on `decode_inputs`, and the block files the nodes load hold their cache inside, as a run's
stages keep it, rather than take it in every frame.

Devices are profiled in parallel, one thread each, within what the host can give without the
measurements disturbing one another: a capped container counts its CPU quota against the host's
CPUs, an uncapped local node its threads against all CPUs but one (`cpu_budget` overrides).
Measurements go to the cache (cache.py); devices found there are not measured again.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import itertools
import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from common import testbed_pb2 as pb
from common.cpu_quota import available_cores, ort_threads
from orchestrator.config import Device, Testbed
from orchestrator.driving.client import NodeClient, NodeError
from orchestrator.driving.driver import Feed, drive
from orchestrator.partition.chain import run_chain
from orchestrator.partition.costmodel import segment_memory
from orchestrator.partition.graph import ModelGraph, load_graph
from orchestrator.partition.memory import MEMORY_HEADROOM, NODE_BYTES, usable_bytes
from orchestrator.partition.seeded_inputs import decode_inputs, onnx_inputs, seeded_inputs
from orchestrator.partition.stage_files import StageFile
from orchestrator.profiling.cache import (
    DEFAULT_CACHE_DIR,
    block_files,
    device_spec,
    lookup,
    memo_facts,
    remember_facts,
    store,
)
from orchestrator.profiling.calibration import step_time_s
from orchestrator.profiling.decode_point import decode_point, holding_cache
from orchestrator.profiling.results import DeviceProfile, Profile, assemble, block_bounds, model_facts
from orchestrator.runtimes.base import Deployment

SATURATION_IN_FLIGHT = 2  # enough to keep one node always busy: a frame waits while the other runs


def chunk_block_times(samples: Sequence[Sequence[float]], totals: Sequence[float]) -> list[float]:
    """Each block's time: its share of the chunk from the plain mean of its samples, scaled to the
    median of the per-frame chunk totals.

    Under a CPU quota a block either runs at full speed or waits out the rest of the CFS period,
    so its samples are bimodal: trimming them per block would drop exactly the throttled waits
    that the quota adds. The per-frame total carries those waits evenly; its median keeps one
    disturbed frame from counting.
    """
    means = [float(np.mean(s)) if len(s) else 0.0 for s in samples]
    chunk = sum(means)
    if chunk <= 0 or not totals:
        return means
    scale = float(np.median(totals)) / chunk
    return [m * scale for m in means]


def saturation_overhead_s(done_ns: Sequence[int], skip: int, compute_s: float) -> float:
    """Per-frame time beside compute of a node kept always busy: the interval between completions
    (after `skip` frames that filled the pipe) less the chunk's compute per frame.

    Everything the node spends per frame outside its stages (decoding the input, encoding the
    output, gRPC) shares the device's CPU quota with compute, so it stretches every frame of a busy
    stage; at one in flight it hides in the gaps between frames, so it is measured here.
    """
    step = step_time_s(done_ns, skip)
    return max(0.0, step - compute_s) if step is not None else 0.0


def chunk_blocks(
    graph: ModelGraph,
    bounds: Sequence[int],
    dev: Device,
    *,
    batch: int = 1,
    headroom: float = MEMORY_HEADROOM,
    cache_tokens: int = 0,
) -> list[tuple[int, int]]:
    """Consecutive block ranges [i, j) a node on `dev` can hold, by the planner's memory model
    (partition.memory). A chunk's blocks are loaded as stages of their own, each a session with its
    own graph, arena and frames: the node's own bytes once, and every block's stage beside them. A
    block that cannot fit even alone gets a chunk of its own (the node may still refuse it).
    `cache_tokens`: a decoder's blocks hold their cache of that many tokens."""
    mem = segment_memory(graph, bounds, batch, cache_tokens=cache_tokens)
    budget = usable_bytes(dev.memory, headroom)
    nb = len(bounds) - 1
    own = [float(mem[k, k + 1]) - NODE_BYTES for k in range(nb)]  # a block as a stage, beside the node
    chunks: list[tuple[int, int]] = []
    i = 0
    while i < nb:
        j, held = i + 1, NODE_BYTES + own[i]
        while j < nb and held + own[j] <= budget:
            held += own[j]
            j += 1
        chunks.append((i, j))
        i = j
    return chunks


class HostSlots:
    """Weighted semaphore over the host's CPUs: profiles run side by side only where they fit."""

    def __init__(self, capacity: float):
        self.capacity = capacity
        self.used = 0.0
        self.cond = threading.Condition()

    def acquire(self, w: float) -> float:
        w = min(w, self.capacity)
        with self.cond:
            while self.used > 0 and self.used + w > self.capacity + 1e-9:
                self.cond.wait()
            self.used += w
        return w

    def release(self, w: float) -> None:
        with self.cond:
            self.used -= w
            self.cond.notify_all()


def chunk_request(
    dev: Device,
    files: Sequence[StageFile],
    graph: ModelGraph,
    bounds: Sequence[int],
    i: int,
    j: int,
    dep: Deployment,
    blocks_dir: Path,
) -> tuple[pb.LoadRequest, list[str]]:
    """LoadRequest for blocks i..j-1 all on `dev` (stages renumbered 0..j-i-1), and the names the
    frame must carry in (the live set at the chunk's start that the chunk uses or passes on)."""
    out_live = set(graph.live_at(bounds[j]))
    stages = []
    for k in range(i, j):
        later = {x for f in files[k + 1 : j] for x in f.inputs} | out_live
        forward = [x for x in graph.live_at(bounds[k + 1]) if x in later]
        f = files[k]
        stages.append(
            pb.StageSpec(
                index=k - i,
                model_path=dep.stage_path(dev.name, blocks_dir / f.model),
                inputs=list(f.inputs),
                outputs=list(f.outputs),
                forward=forward,
                next_device=dev.name,
            )
        )
    used = {x for f in files[i:j] for x in f.inputs} | out_live
    carry = [x for x in graph.live_at(bounds[i]) if x in used]
    req = pb.LoadRequest(
        device=dev.name,
        num_stages=j - i,
        source_device=dev.name,
        stages=stages,
        peers=[],
        first_device=dev.name,
        threads=ort_threads(dev.cpus),
        queue_depth=2,
    )
    return req, carry


def empty_request(dev: Device) -> pb.LoadRequest:
    """A Load with no stages: frees the previous chunk before the next one is built."""
    return pb.LoadRequest(
        device=dev.name, num_stages=1, source_device=dev.name, first_device=dev.name, threads=ort_threads(dev.cpus)
    )


def profile_device(
    dev: Device,
    node: NodeClient,
    graph: ModelGraph,
    bounds: list[int],
    files: list[StageFile],
    ref: dict[str, np.ndarray],
    dep: Deployment,
    blocks_dir: Path,
    chunks: list[tuple[int, int]],
    warmup: int,
    reps: int,
    slots: HostSlots,
    weight: float,
    advance,
    timeout_s: float,
) -> DeviceProfile:
    t0 = time.perf_counter()
    nb = len(bounds) - 1
    samples: list[list[float]] = [[] for _ in range(nb)]
    block_s: list[float] = [0.0] * nb
    roundtrips: list[float] = []
    overheads: list[float] = []
    peak = 0
    threads = ort_threads(dev.cpus)
    for ci, (i, j) in enumerate(chunks):
        req, carry = chunk_request(dev, files, graph, bounds, i, j, dep, blocks_dir)
        held = slots.acquire(weight)
        try:
            if ci > 0:
                node.load(empty_request(dev), timeout_s=timeout_s)
            reply = node.load(req, timeout_s=timeout_s)
            threads = reply.threads or threads
            feed = Feed(arrays={x: ref[x] for x in carry})
            records = drive(
                node,
                itertools.repeat(feed),
                total=warmup + reps,
                concurrency=1,
                on_done=lambda _r, c=ci: advance(c),
                timeout_s=timeout_s,
            )
            busy = drive(
                node,
                itertools.repeat(feed),
                total=SATURATION_IN_FLIGHT + reps,
                concurrency=SATURATION_IN_FLIGHT,
                on_done=lambda _r, c=ci: advance(c),
                timeout_s=timeout_s,
            )
        finally:
            slots.release(held)
        for r in [*records, *busy]:
            if r.error:
                raise RuntimeError(f"profiling {dev.name}: blocks {i}..{j - 1}: {r.error}")
        totals = []
        for r in records[warmup:]:
            total = 0.0
            for t in r.timings:
                if 0 <= t.stage < j - i:
                    samples[i + t.stage].append((t.end_ns - t.start_ns) / 1e9)
                    total += (t.end_ns - t.start_ns) / 1e9
            totals.append(total)
            # the round trip less compute: the driver's trip in, the node's handling, the trip out
            roundtrips.append(max(0.0, (r.done_ns - r.sent_ns) / 1e9 - total))
        block_s[i:j] = chunk_block_times(samples[i:j], totals)
        overheads.append(saturation_overhead_s([r.done_ns for r in busy], SATURATION_IN_FLIGHT, sum(block_s[i:j])))
        try:
            st = node.stats(timeout_s=10.0)
            peak = max(peak, st.peak_rss_bytes, st.rss_bytes)
        except NodeError:
            pass
    if len(chunks) > 0:
        try:  # leave the node empty: the deployment that follows loads into a clean node
            node.load(empty_request(dev), timeout_s=timeout_s)
        except NodeError:
            pass
    missing = [b for b in range(nb) if not samples[b]]
    if missing:
        raise RuntimeError(f"profiling {dev.name}: no timing came back for blocks {missing}")
    return DeviceProfile(
        device=dev.name,
        block_s=block_s,
        samples_s=samples,
        chunks=chunks,
        threads=threads,
        peak_rss_bytes=int(peak),
        seconds=time.perf_counter() - t0,
        overhead_s=float(np.median(overheads)) if overheads else 0.0,
        roundtrip_s=float(np.median(roundtrips)) if roundtrips else 0.0,
        quota_period_s=dep.cpu_quota_period_s,
    )


def profile(
    model_path: str | Path,
    testbed: Testbed,
    deployment: Deployment,
    blocks_dir: str | Path,
    *,
    batch: int = 1,
    warmup: int = 2,
    reps: int = 5,
    cache_dir: str | Path = DEFAULT_CACHE_DIR,
    console=None,
    seed: int = 0,
    timeout_s: float = 600.0,
    cpu_budget: float | None = None,
    past_tokens: int | None = None,
) -> Profile:
    """Measure every block on every device of `testbed` through `deployment`'s nodes.

    `blocks_dir` must be readable by the nodes (for Docker, inside the deployment's workspace).
    Devices with a cache entry are not measured again; a progress bar is shown on `console`
    (a rich Console) when one is given. A decoder is measured at one decode step after
    `past_tokens` (0 where None; ignored for a model without a cache), and cached for that point.
    """
    t0 = time.perf_counter()
    model_path, cache_dir, blocks_dir = Path(model_path), Path(cache_dir), Path(blocks_dir)
    if warmup < 0 or reps < 1 or batch < 1:
        raise ValueError("need warmup >= 0, reps >= 1 and batch >= 1")
    runtime = deployment.runtime
    facts = memo_facts(cache_dir, model_path)
    if facts is not None:
        point = decode_point(facts.decoder, past_tokens)
        hits = lookup(cache_dir, facts, testbed.devices, runtime, batch, point)
        if len(hits) == len(testbed.devices):
            return assemble(facts, hits, runtime, batch, time.perf_counter() - t0, [], point)

    graph = load_graph(model_path)
    bounds = block_bounds(graph)
    facts = model_facts(graph, bounds)
    point = decode_point(facts.decoder, past_tokens)
    if point is not None and batch != 1:
        raise ValueError("a decoder is measured one sequence at a time: batch must be 1")
    remember_facts(cache_dir, model_path, facts)
    hits = lookup(cache_dir, facts, testbed.devices, runtime, batch, point)
    todo = [d for d in testbed.devices if d.name not in hits]
    # identical devices are measured once
    groups: dict[str, list[Device]] = {}
    for d in todo:
        groups.setdefault(json.dumps(device_spec(d), sort_keys=True), []).append(d)
    reps_dev = [g[0] for g in groups.values()]
    absent = [d.name for d in reps_dev if d.name not in deployment.nodes]
    if absent:
        raise RuntimeError(f"no running node for device(s) {', '.join(absent)}")

    notes: list[str] = []
    files = block_files(graph, bounds, blocks_dir)
    specs = onnx_inputs((x, graph.types[x]) for x in graph.inputs)
    if point is None:
        ref = run_chain(blocks_dir, files, seeded_inputs(specs, batch, seed))
    else:  # one decode step; the nodes' block files hold their cache (see the module's docstring)
        ref = run_chain(blocks_dir, files, decode_inputs(specs, point, seed))
        files = holding_cache(files, blocks_dir, point)
        notes.append(f"decoder: blocks measured at one decode step after {point} past tokens")
    chunks = {d.name: chunk_blocks(graph, bounds, d, batch=batch, cache_tokens=point or 0) for d in reps_dev}
    for d in reps_dev:
        if len(chunks[d.name]) > 1:
            notes.append(f"{d.name}: blocks loaded in {len(chunks[d.name])} chunks to fit its memory")

    # Side by side only as far as the host has CPUs for it: a capped container counts its quota, an
    # uncapped local node its threads, and without caps one host CPU stays for this process and the
    # system (on a 2-CPU host, measuring two 1-thread nodes at once inflated some blocks by 1.5x).
    capped = deployment.cpu_quota_period_s is not None
    if cpu_budget is None:
        cpu_budget = float(available_cores()) if capped else max(1.0, available_cores() - 1.0)
    slots = HostSlots(float(cpu_budget))
    weights = {d.name: (min(d.cpus, ort_threads(d.cpus)) if capped else ort_threads(d.cpus)) for d in reps_dev}
    if sum(weights.values()) > slots.capacity + 1e-9:
        what = "CPU quota" if capped else "node threads"
        notes.append(
            f"{runtime} runtime: {sum(weights.values()):g} {what} for a budget of {slots.capacity:g} "
            "host CPUs, so devices were measured partly one after another"
        )

    progress = None
    if console is not None:
        progress = Progress(
            TextColumn("{task.description:<24}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[note]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
    tasks: dict[str, int] = {}
    per_frame = warmup + reps + SATURATION_IN_FLIGHT + reps

    def advancer(name: str):
        n = len(chunks[name])

        def advance(ci: int) -> None:
            if progress is not None:
                progress.update(tasks[name], advance=1, note=f"chunk {ci + 1}/{n}" if n > 1 else "")

        return advance

    results: dict[str, DeviceProfile] = {}
    try:
        if progress is not None:
            progress.start()
            for g in groups.values():
                d = g[0]
                label = d.name + (f" (= {', '.join(x.name for x in g[1:])})" if len(g) > 1 else "")
                tasks[d.name] = progress.add_task(label, total=per_frame * len(chunks[d.name]), note="")
        with cf.ThreadPoolExecutor(max_workers=max(1, len(reps_dev)), thread_name_prefix="profile") as ex:
            futs = {
                ex.submit(
                    profile_device,
                    d,
                    deployment.client(d.name),
                    graph,
                    bounds,
                    files,
                    ref,
                    deployment,
                    blocks_dir,
                    chunks[d.name],
                    warmup,
                    reps,
                    slots,
                    weights[d.name],
                    advancer(d.name),
                    timeout_s,
                ): d
                for d in reps_dev
            }
            for fut in cf.as_completed(futs):
                results[futs[fut].name] = fut.result()
    finally:
        if progress is not None:
            progress.stop()

    devs: dict[str, DeviceProfile] = {}
    for group in groups.values():
        dp = results[group[0].name]
        for d in group:
            store(cache_dir, facts, d, runtime, batch, dp, point)
            devs[d.name] = dataclasses.replace(dp, device=d.name)
    devs.update(hits)
    ordered = {d.name: devs[d.name] for d in testbed.devices}
    return assemble(facts, ordered, runtime, batch, time.perf_counter() - t0, notes, point)
