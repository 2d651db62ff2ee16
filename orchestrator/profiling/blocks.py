"""Profile a model on the emulated devices: measured seconds per block per device, cached.

A *block* is the graph between two consecutive reduced cut candidates (`reduce_candidates`),
the unit the planner places. Each block is written as its own stage file (`write_stages`), and
every device's node is loaded with a consecutive *chunk* of blocks, all on that device (the
node runs them in a row: stage k's frame goes to the same device as stage k+1). Frames carry
the chunk's input tensors, taken from one reference run of the whole chain in this process on
a seeded synthetic input, so every block computes on real intermediate values. The node's own
`start_ns`/`end_ns` stamps give each block's compute time, measured where the device is
emulated (inside its container under its caps; in the local runtime under the same thread
count). Warm-up frames are dropped; see `chunk_block_times` for how the rest are averaged,
and `DeviceProfile.overhead_s` for the per-frame cost beside compute.

Chunks are cut so that a node holding them fits the device's memory by the planner's own memory
model (`partition.memory`); between chunks the node is emptied first (a Load replaces the
old pipeline only once the new one is built, which a small device could not hold twice).

Devices are profiled in parallel, one thread each, within what the host can give without the
measurements disturbing one another: a capped container counts its CPU quota against the host's
CPUs, an uncapped local node its threads against all CPUs but one (`cpu_budget` overrides).

Results are cached as JSON under `cache_dir`, one file per (model sha256, block bounds, device
spec, runtime kind, batch): a second call is a file read, changing one device re-profiles that
device only, and identical devices are profiled once.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import hashlib
import itertools
import json
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from onnx import helper

from common import testbed_pb2 as pb
from orchestrator.config import Device, Testbed
from orchestrator.driving.client import NodeClient, NodeError
from orchestrator.driving.deploy import threads_for
from orchestrator.driving.driver import Feed, drive
from orchestrator.partition.costmodel import CostTable, reduce_candidates, segment_memory
from orchestrator.partition.graph import ModelGraph, load_graph
from orchestrator.partition.memory import MEMORY_HEADROOM, usable_bytes
from orchestrator.partition.stage_files import WEIGHTS_FILE, StageFile, write_stages
from orchestrator.profiling.stages import step_time_s
from orchestrator.runtimes.base import Deployment

# Docker sets CPU caps (NanoCpus) as CFS quotas over a 100 ms period; local nodes have no quota.
CFS_PERIOD_S = {"docker": 0.1}
# 2: per-block times from chunk totals; 3: per-frame node overhead; 4: overhead at saturation, round trip
CACHE_VERSION = 4
SATURATION_IN_FLIGHT = 2  # enough to keep one node always busy: a frame waits while the other runs
DEFAULT_CACHE_DIR = Path(".cache/profiles")
BLOCKS_MARK = "blocks.json"  # in blocks_dir: which model and bounds the block files hold
_MODELS_INDEX = "models.json"  # in cache_dir: path/size/mtime -> sha256 and block facts


# -- results -----------------------------------------------------------------------------------


@dataclass
class DeviceProfile:
    """One device's measurements (or the cache entry they came from)."""

    device: str
    block_s: list[float]  # per block, seconds (see chunk_block_times)
    samples_s: list[list[float]]  # per block, the measured (non warm-up) times
    chunks: list[tuple[int, int]]  # block ranges [i, j) loaded together
    threads: int
    peak_rss_bytes: int  # the node's peak RSS while profiling (0: not reported)
    seconds: float  # wall time spent on this device
    overhead_s: float = 0.0  # per frame while always busy, beside compute (see `saturation_overhead_s`)
    roundtrip_s: float = 0.0  # per request at one in flight: driver to node and back, less compute
    cached: bool = False

    def to_json(self) -> dict:
        return {
            "block_s": self.block_s,
            "samples_s": self.samples_s,
            "chunks": [list(c) for c in self.chunks],
            "threads": self.threads,
            "peak_rss_bytes": self.peak_rss_bytes,
            "seconds": self.seconds,
            "overhead_s": self.overhead_s,
            "roundtrip_s": self.roundtrip_s,
        }

    @classmethod
    def from_json(cls, device: str, d: dict) -> DeviceProfile:
        return cls(
            device=device,
            block_s=[float(x) for x in d["block_s"]],
            samples_s=[[float(x) for x in s] for s in d.get("samples_s", [])],
            chunks=[(int(a), int(b)) for a, b in d.get("chunks", [])],
            threads=int(d.get("threads", 0)),
            peak_rss_bytes=int(d.get("peak_rss_bytes", 0)),
            seconds=float(d.get("seconds", 0.0)),
            overhead_s=float(d.get("overhead_s", 0.0)),
            roundtrip_s=float(d.get("roundtrip_s", 0.0)),
            cached=True,
        )


@dataclass
class Profile:
    """A model's measured block costs on a testbed.

    `table.block_s[device][b]` is block b's compute time (seconds, at `batch`), `block_memory[b]`
    the bytes block b needs alone (weights + largest activation), `cut_bytes[k]` the bytes live at
    bound k (`cut_bytes[0]` the inputs, `cut_bytes[-1]` the outputs), `block_weights[b]` its weights.
    """

    table: CostTable
    block_memory: list[int]
    block_weights: list[int]
    cut_bytes: list[int]
    cached: bool
    seconds: float
    model_sha256: str
    runtime: str
    batch: int
    devices: dict[str, DeviceProfile] = field(default_factory=dict)
    block_names: list[str] = field(default_factory=list)  # first node of each block, for display
    notes: list[str] = field(default_factory=list)

    @property
    def bounds(self) -> list[int]:
        return self.table.bounds

    def device_total_s(self, device: str) -> float:
        return float(sum(self.table.block_s[device]))


# -- small pieces --------------------------------------------------------------------------------


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


def device_spec(dev: Device) -> dict:
    """The parts of a device that change its measured costs (its name does not)."""
    return {
        "cpus": dev.cpus,
        "memory": dev.memory,
        "gpu": dev.gpu.model_dump() if dev.gpu is not None else None,
        "type": dev.type,
        "cpuset": dev.cpuset,
    }


def cache_key(sha256: str, dev: Device, bounds: Sequence[int], runtime: str, batch: int) -> dict:
    return {
        "version": CACHE_VERSION,
        "model_sha256": sha256,
        "bounds": list(bounds),
        "device": device_spec(dev),
        "runtime": runtime,
        "batch": batch,
    }


def _key_file(cache_dir: Path, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return Path(cache_dir) / key["model_sha256"][:16] / f"{key['runtime']}_b{key['batch']}_{digest}.json"


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}_{threading.get_ident()}")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def block_bounds(graph: ModelGraph) -> list[int]:
    """The blocks' bounds: 0, the reduced cut candidates, n (what the optimiser places)."""
    return [0, *reduce_candidates(graph), graph.n]


@dataclass
class _ModelFacts:
    """What a profile needs of the model besides the measurements; memoised by file stat."""

    sha256: str
    bounds: list[int]
    weights: list[int]  # per block
    activation: list[int]  # per block, largest activation at batch 1
    live: list[int]  # per bound, bytes at batch 1
    names: list[str]


def _facts(graph: ModelGraph, bounds: list[int]) -> _ModelFacts:
    nb = len(bounds) - 1
    return _ModelFacts(
        sha256=graph.sha256,
        bounds=bounds,
        weights=[graph.weights_bytes(bounds[i], bounds[i + 1]) for i in range(nb)],
        activation=[graph.max_activation(bounds[i], bounds[i + 1]) for i in range(nb)],
        live=[int(graph.live_bytes[p]) for p in bounds],
        names=[graph.node(bounds[i]).name or graph.node(bounds[i]).op_type for i in range(nb)],
    )


def _stat_id(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _memo_facts(cache_dir: Path, model_path: Path) -> _ModelFacts | None:
    index = _read_json(Path(cache_dir) / _MODELS_INDEX) or {}
    entry = index.get(str(model_path.resolve()))
    try:
        if entry is None or entry.get("stat") != _stat_id(model_path):
            return None
        return _ModelFacts(**entry["facts"])
    except (OSError, TypeError, KeyError):
        return None


_index_lock = threading.Lock()


def _remember_facts(cache_dir: Path, model_path: Path, facts: _ModelFacts) -> None:
    with _index_lock:
        path = Path(cache_dir) / _MODELS_INDEX
        index = _read_json(path) or {}
        index[str(model_path.resolve())] = {"stat": _stat_id(model_path), "facts": facts.__dict__}
        _write_json(path, index)


def _assemble(
    facts: _ModelFacts, devs: dict[str, DeviceProfile], runtime: str, batch: int, seconds: float, notes: list[str]
) -> Profile:
    return Profile(
        table=CostTable(
            bounds=list(facts.bounds),
            block_s={n: list(p.block_s) for n, p in devs.items()},
            origin="profiled",
            overhead_s={n: p.overhead_s for n, p in devs.items()},
            roundtrip_s={n: p.roundtrip_s for n, p in devs.items()},
            cfs_period_s=CFS_PERIOD_S.get(runtime),
        ),
        block_memory=[w + a * batch for w, a in zip(facts.weights, facts.activation, strict=True)],
        block_weights=list(facts.weights),
        cut_bytes=[b * batch for b in facts.live],
        cached=all(p.cached for p in devs.values()),
        seconds=seconds,
        model_sha256=facts.sha256,
        runtime=runtime,
        batch=batch,
        devices=devs,
        block_names=list(facts.names),
        notes=notes,
    )


def _lookup(
    cache_dir: Path, facts: _ModelFacts, devices: Sequence[Device], runtime: str, batch: int
) -> dict[str, DeviceProfile]:
    """Cache hits by device name (devices without an entry are absent)."""
    hits: dict[str, DeviceProfile] = {}
    nb = len(facts.bounds) - 1
    for dev in devices:
        key = cache_key(facts.sha256, dev, facts.bounds, runtime, batch)
        data = _read_json(_key_file(cache_dir, key))
        if data is None or data.get("key") != key:
            continue
        try:
            dp = DeviceProfile.from_json(dev.name, data)
        except (KeyError, TypeError, ValueError):
            continue
        if len(dp.block_s) == nb:
            hits[dev.name] = dp
    return hits


def cached_profile(
    model_path: str | Path, testbed: Testbed, runtime: str, *, batch: int = 1, cache_dir: str | Path = DEFAULT_CACHE_DIR
) -> Profile | None:
    """The profile from the cache alone, without reading the model when its file is unchanged."""
    t0 = time.perf_counter()
    model_path, cache_dir = Path(model_path), Path(cache_dir)
    facts = _memo_facts(cache_dir, model_path)
    if facts is None:
        return None
    hits = _lookup(cache_dir, facts, testbed.devices, runtime, batch)
    if len(hits) != len(testbed.devices):
        return None
    return _assemble(facts, hits, runtime, batch, time.perf_counter() - t0, [])


# -- chunks and inputs ---------------------------------------------------------------------------


def chunk_blocks(
    graph: ModelGraph, bounds: Sequence[int], dev: Device, *, batch: int = 1, headroom: float = MEMORY_HEADROOM
) -> list[tuple[int, int]]:
    """Consecutive block ranges [i, j) a node on `dev` can hold, by the planner's memory model
    (partition.memory). A block that cannot fit even alone gets a chunk of its own (the node may
    still refuse it)."""
    mem = segment_memory(graph, bounds, batch)
    budget = usable_bytes(dev.memory, headroom)
    nb = len(bounds) - 1
    chunks: list[tuple[int, int]] = []
    i = 0
    while i < nb:
        j = i + 1
        while j < nb and mem[i, j + 1] <= budget:
            j += 1
        chunks.append((i, j))
        i = j
    return chunks


def synthetic_inputs(graph: ModelGraph, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs for the model: first symbolic dim = batch, others 1; floats ~ N(0, 1)."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for name in graph.inputs:
        tp = graph.types.get(name)
        et = tp.tensor_type.elem_type if tp is not None else 1
        dims = (
            [
                d.dim_value if d.HasField("dim_value") else (batch if k == 0 else 1)
                for k, d in enumerate(tp.tensor_type.shape.dim)
            ]
            if tp is not None and tp.tensor_type.HasField("shape")
            else [batch, *graph.shapes1.get(name, [])[1:]]
        )
        dt = np.dtype(helper.tensor_dtype_to_np_dtype(et))
        if np.issubdtype(dt, np.floating):
            feeds[name] = rng.standard_normal(dims).astype(dt)
        elif dt == np.bool_:
            feeds[name] = rng.integers(0, 2, dims).astype(bool)
        else:
            feeds[name] = rng.integers(0, 10, dims).astype(dt)
    return feeds


def reference_run(
    blocks_dir: Path, files: Sequence[StageFile], feeds: dict[str, np.ndarray], threads: int = 0
) -> dict[str, np.ndarray]:
    """Run the block files in order in this process; every tensor that crosses a block bound."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    env = dict(feeds)
    for f in files:
        sess = ort.InferenceSession(str(blocks_dir / f.model), so, providers=["CPUExecutionProvider"])
        outs = sess.run(f.outputs, {x: env[x] for x in f.inputs})
        env.update(zip(f.outputs, outs, strict=True))
        del sess
    return env


def _blocks(graph: ModelGraph, bounds: list[int], blocks_dir: Path) -> list[StageFile]:
    """The block files in blocks_dir, written unless they are already there for this model."""
    mark = blocks_dir / BLOCKS_MARK
    data = _read_json(mark)
    if (
        data is not None
        and data.get("model_sha256") == graph.sha256
        and data.get("bounds") == bounds
        and (blocks_dir / WEIGHTS_FILE).exists()
        and all((blocks_dir / f["model"]).exists() for f in data.get("files", []))
    ):
        return [StageFile(**f) for f in data["files"]]
    mark.unlink(missing_ok=True)
    files = write_stages(graph, bounds[1:-1], blocks_dir)
    _write_json(mark, {"model_sha256": graph.sha256, "bounds": bounds, "files": [f.__dict__ for f in files]})
    return files


# -- measuring -------------------------------------------------------------------------------------


class _HostSlots:
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


def host_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


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
                model_path=dep.node_path(blocks_dir / f.model),
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
        threads=threads_for(dev.cpus),
        queue_depth=2,
    )
    return req, carry


def _empty_request(dev: Device) -> pb.LoadRequest:
    """A Load with no stages: frees the previous chunk before the next one is built."""
    return pb.LoadRequest(
        device=dev.name, num_stages=1, source_device=dev.name, first_device=dev.name, threads=threads_for(dev.cpus)
    )


def _profile_device(
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
    slots: _HostSlots,
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
    threads = threads_for(dev.cpus)
    for ci, (i, j) in enumerate(chunks):
        req, carry = chunk_request(dev, files, graph, bounds, i, j, dep, blocks_dir)
        held = slots.acquire(weight)
        try:
            if ci > 0:
                node.load(_empty_request(dev), timeout_s=timeout_s)
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
            node.load(_empty_request(dev), timeout_s=timeout_s)
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
) -> Profile:
    """Measure every block on every device of `testbed` through `deployment`'s nodes.

    `blocks_dir` must be readable by the nodes (for Docker, inside the deployment's workspace).
    Devices with a cache entry are not measured again; a progress bar is shown on `console`
    (a rich Console) when one is given.
    """
    t0 = time.perf_counter()
    model_path, cache_dir, blocks_dir = Path(model_path), Path(cache_dir), Path(blocks_dir)
    if warmup < 0 or reps < 1 or batch < 1:
        raise ValueError("need warmup >= 0, reps >= 1 and batch >= 1")
    runtime = deployment.runtime
    facts = _memo_facts(cache_dir, model_path)
    hits = _lookup(cache_dir, facts, testbed.devices, runtime, batch) if facts is not None else {}
    if facts is not None and len(hits) == len(testbed.devices):
        return _assemble(facts, hits, runtime, batch, time.perf_counter() - t0, [])

    graph = load_graph(model_path)
    bounds = block_bounds(graph)
    facts = _facts(graph, bounds)
    _remember_facts(cache_dir, model_path, facts)
    hits = _lookup(cache_dir, facts, testbed.devices, runtime, batch)
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
    files = _blocks(graph, bounds, blocks_dir)
    ref = reference_run(blocks_dir, files, synthetic_inputs(graph, batch, seed))
    chunks = {d.name: chunk_blocks(graph, bounds, d, batch=batch) for d in reps_dev}
    for d in reps_dev:
        if len(chunks[d.name]) > 1:
            notes.append(f"{d.name}: blocks loaded in {len(chunks[d.name])} chunks to fit its memory")

    # Side by side only as far as the host has CPUs for it: a capped container counts its quota, an
    # uncapped local node its threads, and without caps one host CPU stays for this process and the
    # system (on a 2-CPU host, measuring two 1-thread nodes at once inflated some blocks by 1.5x).
    capped = runtime != "local"
    if cpu_budget is None:
        cpu_budget = float(host_cpus()) if capped else max(1.0, host_cpus() - 1.0)
    slots = _HostSlots(float(cpu_budget))
    weights = {d.name: (min(d.cpus, threads_for(d.cpus)) if capped else threads_for(d.cpus)) for d in reps_dev}
    if sum(weights.values()) > slots.capacity + 1e-9:
        what = "CPU quota" if capped else "node threads"
        notes.append(
            f"{runtime} runtime: {sum(weights.values()):g} {what} for a budget of {slots.capacity:g} "
            "host CPUs, so devices were measured partly one after another"
        )

    progress = None
    if console is not None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

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
                    _profile_device,
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
            dk = cache_key(facts.sha256, d, bounds, runtime, batch)
            _write_json(_key_file(cache_dir, dk), {"key": dk, "measured_as": dp.device, **dp.to_json()})
            devs[d.name] = dataclasses.replace(dp, device=d.name)
    devs.update(hits)
    ordered = {d.name: devs[d.name] for d in testbed.devices}
    return _assemble(facts, ordered, runtime, batch, time.perf_counter() - t0, notes)


def profile_local(
    model_path: str | Path,
    testbed: Testbed,
    *,
    blocks_dir: str | Path | None = None,
    log_dir: str | Path | None = None,
    batch: int = 1,
    warmup: int = 2,
    reps: int = 5,
    cache_dir: str | Path = DEFAULT_CACHE_DIR,
    console=None,
    **kw,
) -> Profile:
    """Start a LocalRuntime for the testbed, profile, stop it (nothing starts on a cache hit)."""
    import tempfile

    from orchestrator.runtimes.local import LocalRuntime

    hit = cached_profile(model_path, testbed, "local", batch=batch, cache_dir=cache_dir)
    if hit is not None:
        return hit
    with tempfile.TemporaryDirectory(prefix="profile_") as tmp:
        bdir = Path(blocks_dir) if blocks_dir is not None else Path(tmp) / "blocks"
        ldir = Path(log_dir) if log_dir is not None else Path(tmp) / "logs"
        rt = LocalRuntime(testbed, ldir)
        try:
            dep = rt.start()
            return profile(
                model_path,
                testbed,
                dep,
                bdir,
                batch=batch,
                warmup=warmup,
                reps=reps,
                cache_dir=cache_dir,
                console=console,
                **kw,
            )
        finally:
            rt.stop()


# -- display -----------------------------------------------------------------------------------------


def _mib(n: float) -> str:
    return f"{n / 1024**2:.1f}"


def profile_to_rows(p: Profile) -> list[dict[str, str]]:
    """One row per block (and a total row): bounds, first node, memory, bytes after, ms per device."""
    rows: list[dict[str, str]] = []
    names = list(p.table.block_s)
    b = p.table.bounds
    for k in range(len(b) - 1):
        row = {
            "block": str(k),
            "nodes": f"{b[k]}..{b[k + 1] - 1}",
            "first node": p.block_names[k] if k < len(p.block_names) else "",
            "weights MiB": _mib(p.block_weights[k]),
            "memory MiB": _mib(p.block_memory[k]),
            "cut KiB": f"{p.cut_bytes[k + 1] / 1024:.1f}",
        }
        for n in names:
            row[f"{n} ms"] = f"{p.table.block_s[n][k] * 1e3:.2f}"
        rows.append(row)
    total = {
        "block": "total",
        "nodes": f"0..{b[-1] - 1}",
        "first node": "",
        "weights MiB": _mib(sum(p.block_weights)),
        "memory MiB": _mib(max(p.block_memory, default=0)),
        "cut KiB": "",
    }
    for n in names:
        total[f"{n} ms"] = f"{p.device_total_s(n) * 1e3:.2f}"
    rows.append(total)
    blank = {k: "" for k in total}
    rows.append(
        blank
        | {"block": "per frame", "first node": "beside compute, when busy"}
        | {f"{n} ms": f"{p.table.overhead_s.get(n, 0.0) * 1e3:.2f}" for n in names}
    )
    rows.append(
        blank
        | {"block": "round trip", "first node": "driver to node and back"}
        | {f"{n} ms": f"{p.table.roundtrip_s.get(n, 0.0) * 1e3:.2f}" for n in names}
    )
    return rows
