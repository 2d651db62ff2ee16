"""The memory model against real nodes: for every fixture model and a built ViT, cut in two, the
resident (anonymous) memory each node peaks at while requests flow is what plan.json predicted,
within 10%; a lean stage's node holds its weights as page cache instead, and computes about
`LEAN_TIME_FACTOR` slower. Local nodes are read from /proc (RssAnon), Docker nodes from their
container's cgroup (rss, and the page cache apart)."""

from __future__ import annotations

import os
import textwrap
import time
from pathlib import Path

import onnx
import pytest

from common.ort_session import SessionSettings, open_session
from orchestrator.config import Device, load_devices
from orchestrator.config import Testbed as TB
from orchestrator.driving.deploy import deploy
from orchestrator.driving.driver import Feed, drive
from orchestrator.partition import load_graph, partition
from orchestrator.partition.costmodel import segment_needs
from orchestrator.partition.graph import tensor_nbytes
from orchestrator.partition.memory import LEAN_TIME_FACTOR, stage_needs
from orchestrator.partition.plan import Plan
from orchestrator.partition.seeded_inputs import onnx_inputs, seeded_inputs
from orchestrator.profiling.results import block_bounds
from orchestrator.runtimes.base import Runtime
from orchestrator.runtimes.stats import MemoryPeaks, StatsLine, memory_peaks

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures"
VIT_B = ROOT / "models" / "vit_b16.onnx"
TOLERANCE = 0.10
REQUESTS, CONCURRENCY = 40, 4  # as a run drives them: several frames in flight and queued

DEVICES = """
devices:
  - {{name: first, cpus: 0.5, memory: 1GiB, memory_mode: {mode}}}
  - {{name: second, cpus: 0.5, memory: 1GiB, memory_mode: {mode}}}
"""


def _models(scenario_vit: Path) -> dict[str, Path]:
    return {"hf_vit_tiny": FIX / "hf_vit_tiny.onnx", "squeezenet1_1": FIX / "squeezenet1_1.onnx", "vit": scenario_vit}


def _testbed(folder: Path, mode: str = "default") -> TB:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "devices.yaml").write_text(textwrap.dedent(DEVICES.format(mode=mode)))
    return load_devices(folder / "devices.yaml")


def _drive(rt: Runtime, plan: Plan, testbed: TB, model: Path, out: Path) -> dict[str, MemoryPeaks]:
    """Load the plan, drive requests through it while the runtime's sampler watches; its peaks."""
    deploy(rt.node_plan(plan, out), testbed, rt.running, "first")
    g = load_graph(model)
    specs = onnx_inputs((i.name, i.type) for i in g.model.graph.input if i.name not in g.initializers)
    pool = [seeded_inputs(specs, 1, s) for s in range(4)]
    with rt.stats_sampler(out / "stats") as sampler:
        for start in range(0, REQUESTS, 10):
            feeds = (Feed(pool[i % 4], i) for i in range(start, start + 10))
            records = drive(rt.running.client("first"), feeds, total=10, concurrency=CONCURRENCY, timeout_s=120)
            assert all(not r.error for r in records), [r.error for r in records if r.error][:2]
            sampler.take_sample()
        return sampler.peaks()


def _check(plan: Plan, peaks: dict[str, MemoryPeaks], label: str) -> list[float]:
    errors = []
    for s in plan.stages:
        measured = peaks[s.device].resident
        assert measured, (label, s.device, peaks)
        err = s.memory_bytes / measured - 1.0
        print(
            f"{label} stage {s.index} ({s.memory_mode}): predicted {s.memory_bytes / 2**20:.1f} MiB, "
            f"measured {measured / 2**20:.1f} MiB resident ({err:+.1%})"
        )
        errors.append(err)
    assert all(abs(e) <= TOLERANCE for e in errors), (label, errors)
    return errors


# -- the model's reading of the graph -----------------------------------------------------------


@pytest.mark.parametrize("name", ["hf_vit_tiny.onnx", "squeezenet1_1.onnx"])
def test_a_stage_reads_the_same_whether_whole_or_from_blocks(name):
    """The planner's per-block matrix (every candidate stage at once) and the check of one placed
    stage must agree: a plan the optimiser deems fitting is the plan the check lets through."""
    g = load_graph(FIX / name)
    bounds = block_bounds(g)
    needs = segment_needs(g, bounds)
    nb = len(bounds) - 1
    for i, j in [(0, 1), (0, nb), (1, nb), (nb // 3, 2 * nb // 3), (nb - 1, nb)]:
        assert needs[i, j] == stage_needs(g, bounds[i], bounds[j]), (name, i, j)


def test_lean_holds_conv_weights_and_maps_the_rest():
    g = load_graph(FIX / "squeezenet1_1.onnx")
    assert stage_needs(g, 0, g.n).conv_weights == stage_needs(g, 0, g.n).weights  # every weight is a Conv's
    vit = load_graph(FIX / "hf_vit_tiny.onnx")
    whole = stage_needs(vit, 0, vit.n)
    assert 0 < whole.conv_weights < 0.05 * whole.weights  # the patch embedding only


# -- local nodes --------------------------------------------------------------------------------


@pytest.fixture()
def local_rt(tmp_path):
    from orchestrator.runtimes.local import LocalRuntime

    def make(testbed: TB) -> LocalRuntime:
        return LocalRuntime(testbed, tmp_path / "logs", workspace=tmp_path)

    return make


@pytest.mark.parametrize("name", ["hf_vit_tiny", "squeezenet1_1", "vit"])
def test_predicted_memory_is_what_local_nodes_hold(name, scenario_vit, local_rt, tmp_path):
    model = _models(scenario_vit)[name]
    tb = _testbed(tmp_path)
    plan = partition(model, tb, stages=2, source="first", out_dir=tmp_path / "plan")
    with local_rt(tb) as rt:
        rt.start()
        peaks = _drive(rt, plan, tb, model, tmp_path)
    _check(plan, peaks, f"local {name}")
    assert all(p.page_cache is None for p in peaks.values())  # a plain process has no page cache of its own


def test_lean_nodes_hold_their_weights_as_page_cache_not_resident(local_rt, tmp_path):
    """The lean mode reaches the node (LoadRequest -> session without pre-packing): its resident
    memory drops by about the stage's weights, as predicted."""
    model = FIX / "hf_vit_tiny.onnx"
    measured = {}
    for mode in ("default", "lean"):
        tb = _testbed(tmp_path / mode, mode)
        plan = partition(model, tb, stages=2, source="first", out_dir=tmp_path / mode / "plan")
        assert {s.memory_mode for s in plan.stages} == {mode}
        with local_rt(tb) as rt:
            rt.start()
            peaks = _drive(rt, plan, tb, model, tmp_path / mode)
        _check(plan, peaks, f"local hf_vit_tiny {mode}")
        measured[mode] = peaks["second"].resident
    weights = _weights(plan.stage_path(1))
    saved = measured["default"] - measured["lean"]
    print(f"lean saved {saved / 2**20:.1f} MiB resident on a stage of {weights / 2**20:.1f} MiB of weights")
    assert 0.7 * weights < saved < 1.3 * weights


def _weights(stage_file: Path) -> int:
    """Bytes of the initializers a stage file holds (read without its weights)."""
    return sum(tensor_nbytes(t) for t in onnx.load(str(stage_file), load_external_data=False).graph.initializer)


def test_the_lean_time_factor_is_what_lean_costs(tmp_path):
    """The cost model's LEAN_TIME_FACTOR (measured on ViT-B) against a lean session timed here,
    interleaved with a default one, fastest of many runs (the host's noise only adds time)."""
    model = VIT_B if VIT_B.exists() else FIX / "hf_vit_tiny.onnx"
    quarters = TB(devices=[Device(name=f"d{i}") for i in range(4)])
    plan = partition(model, quarters, stages=4, out_dir=tmp_path / "plan")  # a quarter of ViT-B: ~70 ms
    path = plan.stage_path(1)
    sessions = {p: open_session(path, SessionSettings(threads=1, spinning=False, prepacking=p)) for p in (True, False)}
    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {t.name for t in graph.initializer}
    feeds = seeded_inputs(onnx_inputs((i.name, i.type) for i in graph.input if i.name not in weights), 1, 0)
    times: dict[bool, list[float]] = {True: [], False: []}
    for k in range(24):
        for p in (True, False) if k % 2 else (False, True):
            t = time.perf_counter()
            sessions[p].run(None, feeds)
            times[p].append(time.perf_counter() - t)
    factor = min(times[False]) / min(times[True])
    print(
        f"{model.name}: lean {min(times[False]) * 1e3:.1f} ms, default {min(times[True]) * 1e3:.1f} ms: x{factor:.3f}"
    )
    assert factor > 0.97  # lean is never the faster
    if model == VIT_B:
        assert abs(factor - LEAN_TIME_FACTOR) < 0.2, factor
    else:
        assert factor < LEAN_TIME_FACTOR + 0.2, factor  # smaller matrices gain less from pre-packing


# -- Docker nodes -------------------------------------------------------------------------------


@pytest.fixture()
def docker_rt(docker_client, node_image, tmp_path):
    from orchestrator.runtimes.docker import DockerRuntime

    def make(testbed: TB) -> DockerRuntime:
        name = f"mem{os.getpid() % 100000}"
        subnet = f"10.215.{100 + os.getpid() % 100}.0/24"
        return DockerRuntime(
            testbed,
            tmp_path / "logs",
            tmp_path / "ws",  # made here, readable by the containers' node user (tmp_path is private to root)
            testbed_name=name,
            subnet=subnet,
            image=node_image,
            client=docker_client,
        )

    return make


@pytest.mark.docker
@pytest.mark.parametrize(
    ("name", "mode"),
    [("hf_vit_tiny", "default"), ("squeezenet1_1", "default"), ("vit", "default"), ("hf_vit_tiny", "lean")],
)
def test_predicted_memory_is_what_docker_nodes_hold(name, mode, scenario_vit, docker_rt, tmp_path):
    model = _models(scenario_vit)[name]
    tb = _testbed(tmp_path, mode)
    ws = tmp_path / "ws"
    plan = partition(model, tb, stages=2, source="first", out_dir=ws / "plan")
    assert {s.memory_mode for s in plan.stages} == {mode}
    with docker_rt(tb) as rt:
        rt.start()
        peaks = _drive(rt, plan, tb, model, ws)
    _check(plan, peaks, f"docker {name} {mode}")
    for dev, p in peaks.items():  # the container's page cache, told apart from the node's memory
        assert p.page_cache is not None and p.peak is not None and p.limit == 1024**3, (dev, p)
        cache, engine = p.page_cache / 2**20, p.peak / 2**20
        print(f"docker {name} {mode} {dev}: page cache {cache:.1f} MiB, engine peak {engine:.1f} MiB")


def test_peaks_are_the_highest_samples():
    """`peaks()`, the samplers' answer for a device's memory over a run: resident and page cache apart."""
    rows = [
        StatsLine(time=0.0, memory_resident_bytes=3, memory_page_cache_bytes=9, memory_bytes=12, memory_limit=64),
        StatsLine(time=1.0, memory_resident_bytes=5, memory_page_cache_bytes=7, memory_peak_bytes=20, memory_limit=64),
        StatsLine(time=2.0, memory_resident_bytes=4, memory_limit=64),
    ]
    assert memory_peaks({"d": rows})["d"] == MemoryPeaks(resident=5, page_cache=9, peak=20, limit=64)
    assert memory_peaks({"d": [StatsLine(time=0.0)]})["d"] == MemoryPeaks(None, None, None, None)
