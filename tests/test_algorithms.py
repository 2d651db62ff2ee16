"""Placement algorithms: the exact optimiser against brute force, the memory baseline, user algorithms."""

from __future__ import annotations

import itertools
import textwrap
from pathlib import Path

import numpy as np
import onnx.utils
import pytest

from orchestrator.config import OBJECTIVES, TIME_OBJECTIVES, Device, Link
from orchestrator.config import Testbed as TB
from orchestrator.errors import UserError
from orchestrator.partition import ALGORITHMS, Problem, get_algorithm, load_graph, partition
from orchestrator.partition.costmodel import (
    Arrays,
    CostTable,
    build_arrays,
    evaluate,
    reduce_candidates,
    segment_memory,
)
from orchestrator.partition.memory import resident_bytes, source_bytes, stage_needs, usable_bytes
from orchestrator.partition.memory_baseline import memory_cuts
from orchestrator.partition.optimal import device_types, solve, solve_arrays
from orchestrator.partition.verify import verify_plan

FIX = Path(__file__).parent / "fixtures"
INF = float("inf")


def _brute(a: Arrays, objective: str, stages: int | None) -> tuple[float, float]:
    """(best value, lowest latency among the placements reaching it) over every cut set x device sequence."""
    d_n, b_n = a.block_cost.shape
    best: tuple[float, float] = (INF, INF)
    for r in range(b_n):
        for cuts in itertools.combinations(range(1, b_n), r):
            k = r + 1
            if stages is not None and k != stages:
                continue
            for devs in itertools.permutations(range(d_n), k):
                ev = evaluate(a, list(cuts), list(devs))
                if not ev.fits:
                    continue
                key = (ev.bottleneck_s, ev.latency_s) if objective == "throughput" else (ev.latency_s, 0.0)
                if key[0] < best[0] - 1e-12 or (abs(key[0] - best[0]) <= 1e-12 and key[1] < best[1]):
                    best = key
    return best


def _random_arrays(rng: np.random.Generator) -> Arrays:
    d_n, b_n = int(rng.integers(2, 5)), int(rng.integers(3, 8))
    rate = rng.choice([0.0, 1e6, 1e7, 1e8], size=(d_n, d_n))
    two_d = rng.random() < 0.5
    if two_d:  # a per-stage memory table that is not additive (a shared weight, a peak activation)
        blk = rng.uniform(10, 100, b_n)
        mem = np.full((b_n + 1, b_n + 1), np.inf)
        for i in range(b_n):
            for j in range(i + 1, b_n + 1):
                mem[i, j] = blk[i:j].sum() * rng.uniform(0.7, 1.0)
    else:
        mem = rng.uniform(10, 100, b_n)
    return Arrays(
        block_cost=rng.uniform(0.001, 0.1, (d_n, b_n)),
        cut_bytes=rng.integers(1, 200_000, b_n + 1).astype(float),
        link_rate=rate,
        link_delay=rng.uniform(0, 0.01, (d_n, d_n)),
        mem=mem,
        dev_mem=rng.uniform(30, 300, d_n),  # sometimes nothing fits
        source=int(rng.integers(0, d_n)) if rng.random() < 0.5 else None,
        overhead=rng.uniform(0, 0.05, d_n) if rng.random() < 0.5 else None,  # per-frame node overhead
    )


def _assert_reaches(a: Arrays, got, objective: str, stages: int | None, want: float, want_lat: float) -> None:
    """The solver's value is brute force's, and the placement it returned really achieves it, fits,
    uses each device once and has the stage count asked (throughput ties broken by latency)."""
    assert got.value == pytest.approx(want, rel=1e-9)
    ev = evaluate(a, got.cuts, got.devices)
    assert ev.fits and len(set(got.devices)) == len(got.devices)
    assert stages is None or len(got.devices) == stages
    if objective == "throughput":
        assert ev.bottleneck_s == pytest.approx(want, rel=1e-9)
        assert ev.latency_s == pytest.approx(want_lat, rel=1e-9)
    else:
        assert ev.latency_s == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_optimal_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    infeasible = 0
    for _ in range(75):
        a = _random_arrays(rng)
        d_n, b_n = a.block_cost.shape
        for objective in TIME_OBJECTIVES:
            for stages in (None, int(rng.integers(1, min(d_n, b_n) + 1))):
                want, want_lat = _brute(a, objective, stages)
                got = solve(
                    a.block_cost,
                    a.cut_bytes,
                    a.link_rate,
                    a.link_delay,
                    a.mem,
                    a.dev_mem,
                    objective,
                    stages=stages,
                    source=a.source,
                    overhead=a.overhead,
                )
                if want == INF:
                    infeasible += 1
                    assert got.value == INF and got.cuts == [] and got.devices == []
                    continue
                _assert_reaches(a, got, objective, stages, want, want_lat)
    assert infeasible > 0  # the random memory limits do exercise the no-fit path


def test_solve_prefers_fast_device_and_skips_slow_link() -> None:
    # two blocks; device 1 is ten times faster but the source 0 reaches it over 1 kbit/s
    cost = np.array([[1.0, 1.0], [0.1, 0.1]])
    rate = np.full((2, 2), 1e9)
    rate[0, 1] = 1e3
    delay = np.zeros((2, 2))
    got = solve(cost, [1000, 1000, 10], rate, delay, [1, 1], [10, 10], "latency", source=0)
    assert got.devices == [0] and got.cuts == [] and got.value == pytest.approx(2.0)
    got = solve(cost, [1000, 1000, 10], rate, delay, [1, 1], [10, 10], "latency", source=1)
    assert got.devices == [1] and got.value == pytest.approx(0.2)
    got = solve(cost, [1000, 1000, 10], rate, delay, [1, 1], [1, 10], "throughput", source=1)
    assert got.devices == [1] and got.value == pytest.approx(0.2)  # both blocks (mem 2) fit device 1 only


def test_a_link_s_delay_lengthens_the_path_but_not_its_step() -> None:
    # two blocks of 0.1 s, one per device; the cut carries 1000 bytes at 8 kbit/s (1 s) over a 5-s delay
    cost = np.array([[0.1, 9.0], [9.0, 0.1]])
    rate = np.full((2, 2), 8e3)
    delay = np.full((2, 2), 5.0)
    a = Arrays(
        block_cost=cost,
        cut_bytes=np.array([0.0, 1000.0, 0.0]),
        link_rate=rate,
        link_delay=delay,
        mem=np.array([1.0, 1.0]),
        dev_mem=np.array([10.0, 10.0]),
    )
    ev = evaluate(a, [1], [0, 1])
    assert ev.latency_s == pytest.approx(0.1 + 1.0 + 5.0 + 0.1)  # the path waits out the delay
    assert ev.bottleneck_s == pytest.approx(1.0)  # the link is held for the serialisation alone
    got = solve(cost, [0, 1000, 0], rate, delay, [1, 1], [10, 10], "throughput")
    assert got.devices == [0, 1] and got.value == pytest.approx(1.0)  # not 6 s: one device alone takes 9.1


def _testbed() -> TB:
    specs = [("phone", 0.5, "1GiB"), ("laptop", 2.0, "2GiB"), ("pi", 1.0, "512MiB"), ("tiny", 4.0, "64MiB")]
    return TB(
        devices=[Device(name=n, cpus=c, memory=m, bandwidth="50mbit", delay="5ms") for n, c, m in specs],
        links=[Link(**{"from": "phone", "to": "laptop", "bandwidth": "1gbit", "delay": "1ms"})],
        source="devices.yaml",
    )


@pytest.mark.parametrize("model", ["squeezenet1_1.onnx", "hf_vit_tiny.onnx"])
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_optimal_end_to_end_verifies(model: str, objective: str, tmp_path: Path) -> None:
    plan = partition(FIX / model, _testbed(), algorithm="optimal", objective=objective, out_dir=tmp_path)
    assert plan.algorithm == "optimal" and plan.objective == objective
    assert len({s.device for s in plan.stages}) == len(plan.stages)
    assert plan.predicted.throughput_fps and plan.predicted.latency_s
    assert len(plan.predicted.stage_s or []) == len(plan.stages)
    assert any(n.startswith("optimal") for n in plan.notes)
    res = verify_plan(tmp_path / "plan.json", batch=2)
    assert res.ok, res


def test_optimal_fixed_stages(tmp_path: Path) -> None:
    plan = partition(FIX / "hf_vit_tiny.onnx", _testbed(), algorithm="optimal", stages=3, out_dir=tmp_path)
    assert len(plan.stages) == 3


def test_optimal_no_fit_names_block_and_device(tmp_path: Path) -> None:
    tb = TB(devices=[Device(name="a", memory="1MiB"), Device(name="laptop", memory="2MiB")], source="d.yaml")
    with pytest.raises(UserError) as e:
        partition(FIX / "squeezenet1_1.onnx", tb, algorithm="optimal", out_dir=tmp_path)
    msg = str(e.value)
    assert "no placement fits: the largest block needs" in msg and "largest device, laptop, has 2.0 MiB" in msg
    assert e.value.file == "d.yaml"


def test_optimal_no_split_fits(tmp_path: Path) -> None:
    # every block fits the device, the whole model does not (lean or not), and there is one device
    g = load_graph(FIX / "hf_vit_tiny.onnx")
    bounds = [0, *reduce_candidates(g), g.n]

    def least(a: int, b: int) -> float:
        return min(resident_bytes(stage_needs(g, a, b), mode) for mode in ("default", "lean"))

    whole = least(0, g.n)
    largest = max(least(a, b) for a, b in zip(bounds, bounds[1:], strict=False))
    assert largest < whole
    tb = TB(devices=[Device(name="a", memory=f"{int((largest + whole) / 2 / usable_bytes(1))}B")])
    with pytest.raises(UserError, match="every block fits some device"):
        partition(FIX / "hf_vit_tiny.onnx", tb, algorithm="optimal", out_dir=tmp_path)


def test_cost_model_pieces() -> None:
    g = load_graph(FIX / "hf_vit_tiny.onnx")
    cands = reduce_candidates(g)
    assert 10 <= len(cands) <= 32
    singles = [p for p in g.candidates if len(g.live_at(p)) == 1 and g.live_at(p)[0].endswith("Add_1_output_0")]
    assert sum(p in cands for p in singles) >= 11  # block boundaries survive
    bounds = [0, *cands, g.n]
    mem = segment_memory(g, bounds)
    for i, j in [(0, 1), (0, len(bounds) - 1), (3, 9)]:
        assert mem[i, j] == resident_bytes(stage_needs(g, bounds[i], bounds[j]))
    devs = _testbed().devices
    fine = CostTable.from_flops(g, devs)
    coarse = CostTable.from_flops(g, devs, bounds)
    assert np.allclose(fine.regroup(bounds).block_s["pi"], coarse.block_s["pi"])
    a, used = build_arrays(g, devs, _testbed().links, source="phone")
    assert used == bounds and a.source == 0
    assert a.link_rate[0, 1] == 1e9 and a.link_delay[1, 0] == pytest.approx(0.005)
    assert a.dev_mem[0] == pytest.approx(0.9 * 1024**3 - source_bytes(g.live_bytes[0]))  # the source's driver stream


def test_memory_baseline(tmp_path: Path) -> None:
    assert memory_cuts([10, 10, 10, 10], [1.0, 1.0]) == [2]
    assert memory_cuts([10, 10, 10, 10], [3.0, 1.0]) == [3]
    assert memory_cuts([0, 0, 40, 0], [1.0, 1.0, 1.0]) == [2, 3]  # every stage keeps a node
    plan = partition(FIX / "squeezenet1_1.onnx", _testbed(), algorithm="memory", stages=2, out_dir=tmp_path)
    assert [s.device for s in plan.stages] == ["phone", "laptop"]
    assert verify_plan(tmp_path / "plan.json", batch=2).ok
    assert {"optimal", "memory", "even", "manual"} <= set(ALGORITHMS)


def _user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, body: str) -> str:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_user_algorithm_our_signature(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mod = _user_module(
        tmp_path,
        monkeypatch,
        "algo_ours",
        """
        from orchestrator.partition import Placement

        def halves(problem):
            return Placement([problem.graph.n // 2], ["laptop", "phone"])

        def bad_device(problem):
            return Placement([3], ["laptop", "watch"])

        def bad_cuts(problem):
            return Placement([5, 2], ["laptop", "phone", "pi"])

        def boom(problem):
            raise RuntimeError("oops")
        """,
    )
    plan = partition(FIX / "squeezenet1_1.onnx", _testbed(), algorithm=f"{mod}:halves", out_dir=tmp_path / "o")
    assert [s.device for s in plan.stages] == ["laptop", "phone"]
    for fn, text in [("bad_device", "unknown device 'watch'"), ("bad_cuts", "increasing"), ("boom", "oops")]:
        with pytest.raises(UserError, match=text) as e:
            partition(FIX / "squeezenet1_1.onnx", _testbed(), algorithm=f"{mod}:{fn}", out_dir=tmp_path / fn)
        assert f"{mod}:{fn}" in str(e.value) and e.value.field == "algorithm"


def test_user_algorithm_ianvs_signature(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    g = load_graph(FIX / "squeezenet1_1.onnx")
    p = reduce_candidates(g)[5]
    mid = g.live_at(p)
    stages_dir = tmp_path / "ianvs_models"
    stages_dir.mkdir()
    src = str(FIX / "squeezenet1_1.onnx")
    onnx.utils.extract_model(src, str(stages_dir / "sub_model_1.onnx"), g.inputs, mid)
    onnx.utils.extract_model(src, str(stages_dir / "sub_model_2.onnx"), mid, g.outputs)
    mod = _user_module(
        tmp_path,
        monkeypatch,
        "algo_ianvs",
        f"""
        MODELS = {str(stages_dir)!r}

        def partition(initial_model):
            # dict order reversed on purpose: the chain is rebuilt from the stage files
            return MODELS, {{"sub_model_2.onnx": "laptop", "sub_model_1.onnx": "phone"}}

        def missing_output(initial_model):
            return MODELS, {{"sub_model_1.onnx": "phone"}}

        def broken_chain(initial_model):
            return MODELS, {{"sub_model_2.onnx": "laptop"}}

        def unknown_device(initial_model):
            return MODELS, {{"sub_model_1.onnx": "phone", "sub_model_2.onnx": "fridge"}}
        """,
    )
    plan = partition(src, _testbed(), algorithm=f"{mod}:partition", out_dir=tmp_path / "o")
    assert [s.device for s in plan.stages] == ["phone", "laptop"]
    assert plan.stages[1].inputs == mid
    assert verify_plan(tmp_path / "o" / "plan.json", batch=2).ok
    for fn, text in [
        ("missing_output", "produced by no stage"),
        ("broken_chain", "which no earlier stage or model input provides"),
        ("unknown_device", "unknown device 'fridge'"),
    ]:
        with pytest.raises(UserError, match=text):
            get_algorithm(f"{mod}:{fn}")(_problem(g))


def _problem(g) -> Problem:  # noqa: ANN001
    tb = _testbed()
    return Problem(graph=g, devices=tb.devices, stages=None, objective="throughput", points=[], block_cost=g.cost)


def test_cost_table_splits_a_block_by_flops_for_cuts_between_bounds() -> None:
    g = load_graph(FIX / "squeezenet1_1.onnx")
    bounds = [0, *reduce_candidates(g), g.n]
    coarse = CostTable(bounds=[0, g.n], block_s={"a": [1.0]}, origin="profiled")
    mid = bounds[len(bounds) // 2]
    fine = coarse.regroup([0, mid, g.n], g)
    flops = sum(g.cost[:mid]) / sum(g.cost)
    assert fine.block_s["a"] == pytest.approx([flops, 1.0 - flops])
    with pytest.raises(ValueError):
        coarse.regroup([0, mid, g.n])  # without the graph there is nothing to split by


def test_burst_wall_time_under_a_quota():
    from orchestrator.partition.costmodel import burst_wall_s

    # 0.2 CPU, 100 ms period: 10 ms of CPU, always busy, takes 50 ms; from a fresh quota, 10 ms
    assert burst_wall_s(0.050, 0.2, 0.1) == pytest.approx(0.010)
    # 50 ms of CPU: two periods' quota (40 ms) with their waits, then 10 ms
    assert burst_wall_s(0.250, 0.2, 0.1) == pytest.approx(0.210)
    assert burst_wall_s(0.3, 1.0, 0.1) == 0.3  # a whole CPU is never throttled


def _typed_arrays(rng: np.random.Generator) -> tuple[Arrays, list[int]]:
    """A random problem whose devices come in types: copies of one device, links alike."""
    counts = [int(c) for c in rng.integers(1, 4, int(rng.integers(1, 4)))]
    while sum(counts) > 5:  # brute force stays quick
        counts[int(np.argmax(counts))] -= 1
    t_n, b_n = len(counts), int(rng.integers(3, 7))
    kind = np.repeat(np.arange(t_n), counts)
    cost = rng.uniform(0.001, 0.1, (t_n, b_n))[kind]
    rate = rng.choice([0.0, 1e6, 1e7, 1e8], size=(t_n, t_n))[np.ix_(kind, kind)]
    delay = rng.uniform(0, 0.01, (t_n, t_n))[np.ix_(kind, kind)]
    a = Arrays(
        block_cost=cost,
        cut_bytes=rng.integers(1, 200_000, b_n + 1).astype(float),
        link_rate=rate,
        link_delay=delay,
        mem=rng.uniform(10, 100, b_n),
        dev_mem=rng.uniform(30, 300, t_n)[kind],
        source=int(rng.integers(0, len(kind))) if rng.random() < 0.5 else None,
        overhead=rng.uniform(0, 0.05, t_n)[kind] if rng.random() < 0.5 else None,
    )
    return a, counts


@pytest.mark.parametrize("seed", range(3))
def test_optimal_over_device_types_matches_brute_force(seed: int) -> None:
    """Identical devices are planned as one type with a count, exactly: the same optimum as brute
    force over every device sequence, and a placement that reaches it."""
    rng = np.random.default_rng(100 + seed)
    grouped = 0
    for _ in range(60):
        a, counts = _typed_arrays(rng)
        types = device_types(a)
        grouped += len(types) < len(a.dev_mem)
        assert sorted(len(t) for t in types) == sorted(
            [c for c in counts if c] if a.source is None else _split_source(counts, a.source)
        )
        d_n, b_n = a.block_cost.shape
        for objective in TIME_OBJECTIVES:
            for stages in (None, int(rng.integers(1, min(d_n, b_n) + 1))):
                want, want_lat = _brute(a, objective, stages)
                got = solve_arrays(a, objective, stages)
                if want == INF:
                    assert got.value == INF and got.devices == []
                    continue
                _assert_reaches(a, got, objective, stages, want, want_lat)
    assert grouped > 20  # most instances did plan over types with counts above one


def _split_source(counts: list[int], source: int) -> list[int]:
    """Type sizes once the source device stands alone."""
    out, start = [], 0
    for c in counts:
        if start <= source < start + c:
            out += [1] + ([c - 1] if c > 1 else [])
        else:
            out.append(c)
        start += c
    return out
