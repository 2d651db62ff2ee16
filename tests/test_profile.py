"""The profiler on the local runtime: measured block costs, chunking by memory, the cache, planning."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from common.ort_session import SessionSettings, open_session
from orchestrator.config import Device
from orchestrator.config import Testbed as TB
from orchestrator.partition import partition
from orchestrator.partition.graph import load_graph
from orchestrator.partition.memory import resident_bytes, stage_needs, usable_bytes
from orchestrator.partition.seeded_inputs import seeded_inputs, session_inputs
from orchestrator.partition.stage_files import write_stages
from orchestrator.partition.verify import verify_plan
from orchestrator.profiling import cached_profile, profile
from orchestrator.profiling.cache import cache_key
from orchestrator.profiling.display import profile_to_rows
from orchestrator.profiling.measure import chunk_block_times, chunk_blocks, chunk_request
from orchestrator.profiling.results import block_bounds
from orchestrator.runtimes.base import Deployment, LinkEmulation
from orchestrator.runtimes.local import LocalRuntime

ROOT = Path(__file__).resolve().parents[1]
SQUEEZENET = ROOT / "tests" / "fixtures" / "squeezenet1_1.onnx"
FAST = {"warmup": 1, "reps": 4}


def _dev(name: str, cpus: float = 1, memory: str = "1GiB") -> Device:
    return Device(name=name, cpus=cpus, memory=memory)


# "small" has barely more than a node's own footprint: the blocks go in many loads
BIG, SMALL, TWIN = _dev("big"), _dev("small", memory="50MiB"), _dev("twin")


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    rt = LocalRuntime(TB(devices=[BIG, SMALL, TWIN]), tmp_path_factory.mktemp("logs"))
    try:
        yield rt.start()
    finally:
        rt.stop()


def _blocks_in_process_s(graph, folder: Path, frames: int = 12, warmup: int = 2) -> list[list[float]]:
    """Each block's session run times in this process, blocks chained frame by frame."""
    files = write_stages(graph, block_bounds(graph)[1:-1], folder)
    settings = SessionSettings(threads=1, spinning=False)
    sessions = [open_session(folder / f.model, settings) for f in files]
    times: list[list[float]] = [[] for _ in files]
    for frame in range(frames):
        env = seeded_inputs(session_inputs(sessions[0]))
        for k, (f, sess) in enumerate(zip(files, sessions, strict=True)):
            feeds = {x: env[x] for x in f.inputs}
            t = time.perf_counter()
            outs = sess.run(f.outputs, feeds)
            if frame >= warmup:
                times[k].append(time.perf_counter() - t)
            env.update(zip(f.outputs, outs, strict=True))
    return times


# -- without nodes ------------------------------------------------------------------------------------


def test_block_times_keep_the_quota_waits_and_sum_to_the_median_frame():
    # under a quota, block 1 sometimes waits out the period (the 0.08 s samples); those waits are
    # part of what the device costs, so they must stay in, and the chunk sums to the median frame
    samples = [[0.01, 0.01, 0.01], [0.02, 0.10, 0.02]]
    totals = [0.03, 0.11, 0.03 + 0.08]
    out = chunk_block_times(samples, totals)
    assert sum(out) == pytest.approx(0.11)
    assert out[1] / out[0] == pytest.approx((0.14 / 3) / 0.01)


def test_chunks_cover_every_block_and_fit():
    g = load_graph(SQUEEZENET)
    b = block_bounds(g)
    nb = len(b) - 1
    assert chunk_blocks(g, b, BIG) == [(0, nb)]
    # room for the node holding the smallest block and about 2 MiB more
    least = min(resident_bytes(stage_needs(g, b[k], b[k + 1])) for k in range(nb))
    dev = _dev("x", memory=f"{int((least + 2 * 1024**2) / 0.9)}B")
    small = chunk_blocks(g, b, dev)
    assert len(small) > 2
    assert [c[0] for c in small] == [0, *[c[1] for c in small[:-1]]] and small[-1][1] == nb
    for i, j in small:
        assert j - i == 1 or resident_bytes(stage_needs(g, b[i], b[j])) <= usable_bytes(dev.memory)
    assert len(chunk_blocks(g, b, SMALL)) > 3
    assert all(j - i == 1 for i, j in chunk_blocks(g, b, _dev("tiny", memory="32MiB")))  # below a node's own size


def test_chunk_request_routes_everything_home_on_the_same_device(tmp_path):
    g = load_graph(SQUEEZENET)
    b = block_bounds(g)
    files = write_stages(g, b[1:-1], tmp_path)
    dep = Deployment("local", {}, LinkEmulation.NODE_PACED, workspace=tmp_path, cpu_quota_period_s=None)
    req, carry = chunk_request(BIG, files, g, b, 2, 5, dep, tmp_path)
    assert req.num_stages == 3 and req.source_device == req.first_device == "big" and not req.peers
    assert [s.index for s in req.stages] == [0, 1, 2]
    assert all(s.next_device == "big" for s in req.stages)
    assert set(carry) <= set(g.live_at(b[2])) and set(files[2].inputs) <= set(carry)
    assert set(req.stages[-1].forward) == set(g.live_at(b[5]))
    for k, s in enumerate(req.stages[:-1]):  # each stage passes on what the next needs
        assert set(files[2 + k + 1].inputs) <= set(s.forward)


def test_cache_key_depends_on_what_changes_costs():
    base = cache_key("ab" * 32, BIG, [0, 5, 9], "local", 1)
    assert cache_key("ab" * 32, _dev("other-name"), [0, 5, 9], "local", 1) == base
    for other in (
        cache_key("ab" * 32, _dev("big", cpus=2), [0, 5, 9], "local", 1),
        cache_key("ab" * 32, _dev("big", memory="2GiB"), [0, 5, 9], "local", 1),
        cache_key("ab" * 32, BIG, [0, 4, 9], "local", 1),
        cache_key("ab" * 32, BIG, [0, 5, 9], "docker", 1),
        cache_key("ab" * 32, BIG, [0, 5, 9], "local", 8),
        cache_key("cd" * 32, BIG, [0, 5, 9], "local", 1),
    ):
        assert other != base


# -- on local nodes -------------------------------------------------------------------------------


def test_profile_squeezenet_measures_every_block(nodes, tmp_path):
    testbed = TB(devices=[BIG, SMALL])
    cache = tmp_path / "cache"
    p = profile(SQUEEZENET, testbed, nodes, tmp_path / "blocks", cache_dir=cache, **FAST)
    g = load_graph(SQUEEZENET)
    nb = len(block_bounds(g)) - 1
    assert not p.cached and p.table.origin == "profiled"
    assert p.table.bounds == block_bounds(g)
    assert set(p.table.block_s) == {"big", "small"}
    assert all(len(v) == nb for v in p.table.block_s.values())
    assert all(t > 0 for v in p.table.block_s.values() for t in v)
    assert len(p.block_memory) == nb and len(p.cut_bytes) == nb + 1
    assert p.cut_bytes[0] == 3 * 224 * 224 * 4 and p.cut_bytes[-1] == 1000 * 4
    assert all(m >= w for m, w in zip(p.block_memory, p.block_weights, strict=True))

    # the memory-limited device took several loads and still measured every block
    assert p.devices["big"].chunks == [(0, nb)]
    chunks = p.devices["small"].chunks
    assert len(chunks) > 3 and chunks == chunk_blocks(g, block_bounds(g), SMALL)
    assert all(len(s) == FAST["reps"] for s in p.devices["small"].samples_s)

    # A device's total is its median frame: between the sums of each block's fastest and slowest
    # samples. The node runs the same block sessions (one thread, no spinning) that this process
    # times here chained frame by frame, as the node runs them: host noise only adds time, so
    # the node's fastest blocks are no faster than this process's fastest (less a fifth: the
    # fastest of a dozen runs still carries some noise), and no slower than its median runs
    # plus what the node's own gRPC threads take beside them on this host's cores (a half).
    inproc = _blocks_in_process_s(g, tmp_path / "inproc")
    fastest, typical = sum(min(t) for t in inproc), sum(float(np.median(t)) for t in inproc)
    for dev in ("big", "small"):
        s = p.devices[dev].samples_s
        lo, hi = sum(min(x) for x in s), sum(max(x) for x in s)
        assert lo - 1e-9 <= p.device_total_s(dev) <= hi + 1e-9, (dev, lo, p.device_total_s(dev), hi)
        assert 0.8 * fastest <= lo <= 1.5 * typical, (dev, lo, fastest, typical)

    rows = profile_to_rows(p)
    assert len(rows) == nb + 3 and rows[nb]["block"] == "total" and "small ms" in rows[0]
    assert [r["block"] for r in rows[-2:]] == ["per frame", "round trip"]
    assert float(rows[-1]["small ms"]) > 0, (p.devices["small"], p.table.roundtrip_s)

    # second call: from the cache, no node touched
    t = time.perf_counter()
    again = profile(SQUEEZENET, testbed, nodes, tmp_path / "blocks", cache_dir=cache, **FAST)
    assert time.perf_counter() - t < 0.5
    assert again.cached and again.table.block_s == p.table.block_s
    assert cached_profile(SQUEEZENET, testbed, "local", cache_dir=cache) is not None
    assert cached_profile(SQUEEZENET, testbed, "docker", cache_dir=cache) is None

    # a device whose cpus change is measured again; the other one still comes from the cache
    changed = TB(devices=[_dev("big", cpus=2), SMALL])
    assert cached_profile(SQUEEZENET, changed, "local", cache_dir=cache) is None
    p2 = profile(SQUEEZENET, changed, nodes, tmp_path / "blocks", cache_dir=cache, **FAST)
    assert not p2.cached
    assert not p2.devices["big"].cached and p2.devices["small"].cached
    assert p2.devices["big"].threads == 2


def test_profiled_plan_verifies(nodes, tmp_path, tiny_vit):
    testbed = TB(devices=[BIG, TWIN])  # same spec: measured once, figures shared
    p = profile(tiny_vit, testbed, nodes, tmp_path / "blocks", cache_dir=tmp_path / "cache", **FAST)
    assert p.table.block_s["big"] == p.table.block_s["twin"]
    assert all(t > 0 for t in p.table.block_s["big"])
    plan = partition(tiny_vit, testbed, algorithm="optimal", cost_table=p.table, out_dir=tmp_path / "plan")
    assert verify_plan(tmp_path / "plan" / "plan.json").ok
    # the plan's prediction is made of the measured figures
    pred = plan.predicted.stage_s
    # (each busy stage also spends its device's measured per-frame overhead beside compute)
    beside = sum(p.table.overhead_s[s.device] for s in plan.stages)
    assert sum(pred) == pytest.approx(p.device_total_s("big") + beside, rel=1e-3, abs=1e-5)
    assert p.table.roundtrip_s["big"] > 0 and p.table.roundtrip_s["twin"] == p.table.roundtrip_s["big"]


def test_partition_refuses_a_table_for_another_model(nodes, tmp_path, tiny_vit):
    from orchestrator.errors import UserError

    testbed = TB(devices=[BIG])
    p = profile(SQUEEZENET, testbed, nodes, tmp_path / "blocks", cache_dir=tmp_path / "cache", warmup=0, reps=1)
    with pytest.raises(UserError):
        partition(tiny_vit, testbed, algorithm="optimal", cost_table=p.table, out_dir=tmp_path / "plan")
