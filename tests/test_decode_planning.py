"""Planning for generation: the KV cache in the memory model, cuts that keep a layer's cache whole,
the exo baseline, decode-step inputs and measurements, and the tokens-per-second objective."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from common.ort_session import open_session
from orchestrator.config import Device, Link
from orchestrator.config import Testbed as TB
from orchestrator.errors import UserError
from orchestrator.generation.predict import predict_generation
from orchestrator.models.gpt import build_gpt
from orchestrator.partition import load_graph, partition
from orchestrator.partition.algorithms import (
    ALGORITHMS,
    check_memory,
    check_placement,
    exo_shares,
    layer_ends,
)
from orchestrator.partition.chain import run_chain
from orchestrator.partition.costmodel import build_arrays, cache_splits, evaluate, reduce_candidates, segment_needs
from orchestrator.partition.decode import best_for_tokens, decode_prediction, held_cache_tokens, mean_past_tokens
from orchestrator.partition.memory import breakdown, resident_bytes, stage_needs, usable_bytes
from orchestrator.partition.plan import Predicted
from orchestrator.partition.problem import Placement, Problem
from orchestrator.partition.seeded_inputs import decode_inputs, has_cache, onnx_inputs
from orchestrator.partition.stage_files import write_stages
from orchestrator.partition.weights_store import WeightsStore
from orchestrator.profiling import cached_profile, profile
from orchestrator.profiling.cache import cache_key
from orchestrator.profiling.calibration import measure_prefill, measure_stages, stage_inputs
from orchestrator.profiling.decode_point import decode_point, holding_cache
from orchestrator.runtimes.local import LocalRuntime

FIX = Path(__file__).parent / "fixtures"
LAYERS, KV_HEADS, HEAD_DIM = 4, 4, 16
TOKEN_BYTES = LAYERS * 2 * KV_HEADS * HEAD_DIM * 4  # key and value per layer, float32


@pytest.fixture(scope="module")
def gpt(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("models") / "gpt.onnx"
    return build_gpt(out, layers=LAYERS, hidden=64, heads=4, mlp=128, vocab=97, context=64, seed=0)


@pytest.fixture(scope="module")
def graph(gpt):
    return load_graph(gpt)


def _problem(graph, devices, objective="throughput", **kw) -> Problem:
    return Problem(
        graph=graph,
        devices=list(devices),
        stages=kw.pop("stages", None),
        objective=objective,
        points=[],
        block_cost=list(graph.cost),
        devices_file="devices.yaml",
        **kw,
    )


def _placed(problem: Problem, algorithm: str):
    """As partition.place does: the algorithm, then the placement's checks."""
    placement = ALGORITHMS[algorithm](problem)
    check_placement(problem, placement)
    check_memory(problem, placement)
    return placement


# -- the cache in the memory model -------------------------------------------------------------------


def test_cache_per_token_is_each_stage_s_own_layers(graph):
    whole = stage_needs(graph, 0, graph.n)
    assert whole.cache_per_token == TOKEN_BYTES
    ends = layer_ends(graph)
    per_stage = [stage_needs(graph, lo, hi).cache_per_token for lo, hi in zip([0, *ends[:-1]], ends, strict=True)]
    assert per_stage == [TOKEN_BYTES // LAYERS] * LAYERS  # one layer's key and value each
    assert stage_needs(graph, ends[-1], graph.n).cache_per_token == 0  # the final norm and head keep none
    # the planner's per-block sums agree with the stage's own reading, cache included
    bounds = [0, *reduce_candidates(graph), graph.n]
    needs = segment_needs(graph, bounds)
    assert any(nd.cache_per_token for nd in needs.values())
    for (i, j), nd in needs.items():
        assert nd == stage_needs(graph, bounds[i], bounds[j]), (i, j)


def test_cache_is_counted_at_every_token_held(graph):
    needs = stage_needs(graph, 0, graph.n)
    none, held = breakdown(needs), breakdown(needs, cache_tokens=4 * 1040)
    assert none.cache == 0 and held.cache == TOKEN_BYTES * 4 * 1040
    assert held.total - none.total == pytest.approx(held.cache)
    assert resident_bytes(needs, "lean", cache_tokens=100) - resident_bytes(needs, "lean") == TOKEN_BYTES * 100
    a0, _ = build_arrays(graph, [Device(name="a", memory="1GiB")])
    a1, bounds = build_arrays(graph, [Device(name="a", memory="1GiB")], cache_tokens=100)
    cache = segment_needs(graph, bounds)
    for i, j in [(0, 1), (0, len(bounds) - 1), (3, 9)]:
        assert a1.mem[i, j] - a0.mem[i, j] == pytest.approx(cache[i, j].cache_per_token * 100)
        assert a1.mem_lean[i, j] - a0.mem_lean[i, j] == pytest.approx(cache[i, j].cache_per_token * 100)


def test_a_stage_whose_cache_cannot_fit_is_refused_in_one_line(graph):
    needs = stage_needs(graph, 0, graph.n)
    no_cache = resident_bytes(needs)
    dev = Device(name="a", memory=f"{int(no_cache / usable_bytes(1)) + 1024}B")
    fits = _problem(graph, [dev], cache_tokens=0, sequences=4)
    assert _placed(fits, "even").devices == ["a"]
    with pytest.raises(UserError) as e:
        _placed(replace(fits, cache_tokens=4 * 1040), "even")
    msg = str(e.value)
    assert "KV cache 8.1 MiB for 4 sequences of 1040 tokens" in msg and "\n" not in msg
    assert e.value.field == "devices[0].memory"


def test_optimal_keeps_every_stage_s_cache_within_its_device(graph):
    # device a holds the whole model without a cache, but not with 8 MiB of it: optimal splits it
    whole = resident_bytes(stage_needs(graph, 0, graph.n))
    mem = f"{int((whole + 4 * 2**20) / usable_bytes(1))}B"
    devices = [Device(name="a", cpus=4, memory=mem), Device(name="b", cpus=1, memory=mem)]
    alone = _placed(_problem(graph, devices, "latency"), "optimal")
    assert alone.devices == ["a"]
    tokens = (8 * 2**20) // TOKEN_BYTES
    split = _placed(_problem(graph, devices, "latency", cache_tokens=tokens, sequences=64), "optimal")
    assert len(split.devices) == 2
    assert all(m <= usable_bytes(Device(name="x", memory=mem).memory) for m in split.memory_bytes or [])


# -- a layer's cache stays in one stage --------------------------------------------------------------


def test_no_cut_parts_a_layer_from_its_cache(graph):
    split = cache_splits(graph)
    nodes = graph.model.graph.node
    readers = [p for p in range(graph.n) if "present.0.value" in nodes[graph.seq[p]].input]
    assert readers and graph.prod["present.0.value"] + 1 in split and readers[0] in split
    assert not split & set(reduce_candidates(graph))
    assert not split & set(layer_ends(graph))
    for algorithm in ("even", "exo", "optimal"):
        placement = ALGORITHMS[algorithm](_problem(graph, [Device(name=n, memory="1GiB") for n in "abcd"]))
        assert not split & set(placement.cuts), algorithm
    with pytest.raises(UserError, match="keeps its own layers' KV cache whole"):
        check_placement(_problem(graph, [Device(name="a"), Device(name="b")]), Placement([readers[0]], ["a", "b"]))


# -- exo ---------------------------------------------------------------------------------------------


def test_exo_shares_layers_by_memory(graph):
    ends = layer_ends(graph)
    assert [graph.node(p - 1).name for p in ends] == [f"/model/layers.{i}/Add_1" for i in range(LAYERS)]
    devices = [Device(name="small", memory="1GiB"), Device(name="big", memory="3GiB")]
    placed = _placed(_problem(graph, devices), "exo")
    assert placed.devices == ["big", "small"]  # the most memory first
    assert placed.cuts == [ends[2]]  # three layers of four on the device with three quarters of the memory
    assert graph.live_at(ends[2])[-1] == "/model/layers.2/Add_1_output_0"
    assert placed.notes[0].startswith("exo-style: layers in proportion to memory (big 3.0 GiB: layers 0-2")
    # ties by name; a share that rounds to no layer leaves its device out, as exo's does
    assert exo_shares([4.0, 4.0, 0.05, 0.05], 4) == [(0, 1), (1, 3), (3, 3), (3, 4)]
    tied = [Device(name=n, memory=m) for n, m in [("d", "50MiB"), ("c", "50MiB"), ("b", "4GiB"), ("a", "4GiB")]]
    out = ALGORITHMS["exo"](_problem(graph, tied))
    assert out.devices == ["a", "b", "d"] and out.cuts == [ends[0], ends[2]]
    assert "left out: c" in out.notes[0]


def test_exo_still_meets_the_memory_check(graph):
    devices = [Device(name="a", memory="3GiB"), Device(name="b", memory="1MiB")]
    with pytest.raises(UserError, match="stage 1 needs about"):
        _placed(_problem(graph, devices), "exo")


def test_exo_on_a_vit_and_on_a_model_without_numbered_layers(tiny_vit):
    vit = load_graph(tiny_vit)
    devices = [Device(name="a", memory="1GiB"), Device(name="b", memory="3GiB")]
    placed = _placed(_problem(vit, devices), "exo")
    assert placed.devices == ["b", "a"] and placed.cuts == [layer_ends(vit)[2]]
    squeeze = load_graph(FIX / "squeezenet1_1.onnx")
    assert layer_ends(squeeze) == []
    placed = _placed(_problem(squeeze, devices), "exo")
    assert placed.devices == ["b", "a"] and len(placed.cuts) == 1
    assert placed.notes[0].startswith("exo-style: blocks in proportion to memory")
    done = sum(squeeze.cost[: placed.cuts[0]]) / sum(squeeze.cost)
    assert 0.5 < done < 0.95  # about three quarters of the compute on the device with three quarters of the memory


# -- decode-step inputs and measurements -------------------------------------------------------------


def test_decode_inputs_are_one_step_after_the_past(graph, gpt):
    specs = onnx_inputs((x, graph.types[x]) for x in graph.inputs)
    assert has_cache(s.name for s in specs) and not has_cache(["pixel_values"])
    feeds = decode_inputs(specs, 7, seed=3)
    assert feeds["input_ids"].shape == (1, 1) and 0 <= feeds["input_ids"][0, 0] < 10
    assert feeds["attention_mask"].tolist() == [[1] * 8]
    assert feeds["position_ids"].tolist() == [[7]]
    assert feeds["past_key_values.3.value"].shape == (1, KV_HEADS, 7, HEAD_DIM)
    assert abs(float(feeds["past_key_values.0.key"].std()) - 1.0) < 0.2
    again = decode_inputs(specs, 7, seed=3)
    assert all(np.array_equal(feeds[x], again[x]) for x in feeds)
    out = dict(zip(graph.outputs, open_session(gpt).run(graph.outputs, feeds), strict=True))
    assert out["logits"].shape == (1, 1, 97) and out["present.0.key"].shape == (1, KV_HEADS, 8, HEAD_DIM)
    assert decode_point(False, 7) is None and decode_point(True, None) == 0 and decode_point(True, 7) == 7


def test_held_cache_files_compute_the_step_without_cache_inputs(graph, gpt, tmp_path):
    specs = onnx_inputs((x, graph.types[x]) for x in graph.inputs)
    feeds = decode_inputs(specs, 9, seed=1)
    zeros = {x: np.zeros_like(v) if x in graph.state else v for x, v in feeds.items()}
    whole = open_session(gpt).run(["logits"], zeros)[0]
    files = write_stages(graph, layer_ends(graph)[:2], tmp_path, WeightsStore(tmp_path / "store"))
    held = holding_cache(files, tmp_path, 9)
    assert all(not has_cache(f.inputs) and not any(o.startswith("present.") for o in f.outputs) for f in held)
    env = run_chain(tmp_path, held, {x: v for x, v in feeds.items() if x not in graph.state})
    assert np.allclose(env["logits"], whole, atol=1e-5)  # the held cache is the step's past, as zeros


def test_profile_keys_are_the_decode_point():
    dev = Device(name="a")
    plain = cache_key("ab" * 32, dev, [0, 5, 9], "local", 1)
    assert "past_tokens" not in plain  # a model without a cache keeps its entries
    points = [cache_key("ab" * 32, dev, [0, 5, 9], "local", 1, p) for p in (None, 0, 40)]
    assert len({str(sorted(k.items())) for k in points}) == 3


def test_decode_profile_and_stage_measurements_on_local_nodes(gpt, tmp_path):
    testbed = TB(devices=[Device(name="a", memory="1GiB"), Device(name="b", memory="1GiB")])
    rt = LocalRuntime(testbed, tmp_path / "logs")
    dep = rt.start()
    try:
        how = {"cache_dir": tmp_path / "cache", "warmup": 1, "reps": 2}
        prof = profile(gpt, testbed, dep, tmp_path / "blocks", past_tokens=40, **how)
        assert prof.past_tokens == 40 and all(x > 0 for v in prof.table.block_s.values() for x in v)
        assert cached_profile(gpt, testbed, "local", cache_dir=tmp_path / "cache", past_tokens=40) is not None
        for other in (41, None):  # a decode profile is never read for another point
            assert cached_profile(gpt, testbed, "local", cache_dir=tmp_path / "cache", past_tokens=other) is None
        plan = partition(gpt, testbed, algorithm="exo", out_dir=tmp_path / "plan", cost_table=prof.table)
        feeds = stage_inputs(plan, past_tokens=40)
        assert feeds[0]["attention_mask"].shape == (1, 41) and not has_cache(x for f in feeds for x in f)
        measured = measure_stages(plan, plan, testbed, dep, past_tokens=40)
        prefill = measure_prefill(plan, plan, testbed, dep, tokens=24, past_tokens=40)
    finally:
        rt.stop()
    assert len(measured) == 2 and all(0 < m.busy_s < 1.0 and 0 < m.compute_s < 1.0 for m in measured)
    # a prefill of 24 tokens: stage 1 takes 24 positions' hidden states in where a step takes one
    assert prefill.tokens == 24 and len(prefill.compute_s) == 2 and all(0 < c < 1.0 for c in prefill.compute_s)
    assert prefill.wall_s == prefill.compute_s  # no CPU quota on local nodes
    assert prefill.bytes_in[1] > 20 * 64 * 4 and prefill.extra_transfer_s == 0.0  # local links are not shaped


def test_prefill_inputs_are_the_prompt_after_the_past(graph, gpt):
    specs = onnx_inputs((x, graph.types[x]) for x in graph.inputs)
    feeds = decode_inputs(specs, 0, seed=2, new_tokens=5)
    assert feeds["input_ids"].shape == (1, 5) and feeds["attention_mask"].tolist() == [[1] * 5]
    assert feeds["position_ids"].tolist() == [[0, 1, 2, 3, 4]] and feeds["past_key_values.0.key"].shape[2] == 0
    out = dict(zip(graph.outputs, open_session(gpt).run(graph.outputs, feeds), strict=True))
    assert out["logits"].shape == (1, 5, 97) and out["present.1.value"].shape == (1, KV_HEADS, 5, HEAD_DIM)
    assert decode_inputs(specs, 3, new_tokens=2)["position_ids"].tolist() == [[3, 4]]
    with pytest.raises(ValueError, match="new_tokens"):
        decode_inputs(specs, 0, new_tokens=0)


# -- time per output token and tokens per second -----------------------------------------------------


def test_decode_prediction_is_the_latency_or_the_sequences_on_the_slowest_step():
    pred = Predicted(latency_s=0.1, throughput_fps=20.0)
    assert decode_prediction(pred, 1) == pytest.approx((0.1, 10.0))
    assert decode_prediction(pred, 2) == pytest.approx((0.1, 20.0))  # both fit in one trip
    assert decode_prediction(pred, 4) == pytest.approx((0.2, 20.0))  # the slowest step bounds it
    # a job's points: measured at the mean context over the decode, memory at the longest one
    assert mean_past_tokens(1024, 32) == 1040 and held_cache_tokens(1024, 16, 4) == 4 * 1040


def test_a_job_s_tpot_counts_the_other_sequences_prefills_and_ttft_the_prefill():
    pred = Predicted(latency_s=0.1, throughput_fps=10.0, stage_s=[0.04, 0.1])  # steady: 2 x 0.1 s
    alone = predict_generation(pred, sequences=2, max_new_tokens=11, measured_sequences=4)
    assert alone.tpot_s == pytest.approx(0.2) and alone.ttft_s is None  # the prefill not measured
    got = predict_generation(
        pred,
        sequences=2,
        max_new_tokens=11,
        measured_sequences=4,
        decode_compute_s=[0.03, 0.05],
        prefill_s=[0.2, 0.4],
        prefill_extra_transfer_s=0.01,
    )
    # one other prefill in ten intervals, holding stage 1 0.3 s beyond its step
    assert got.steady_tpot_s == pytest.approx(0.2) and got.tpot_s == pytest.approx(0.2 + 0.3 / 10)
    assert got.tokens_per_s == pytest.approx(2 / got.tpot_s)
    lone = 0.1 - 0.08 + 0.6 + 0.01  # the step's latency, prefills for steps, the prompt's hidden states
    assert got.lone_ttft_s == pytest.approx(lone)
    # the first two start together (the second waits out the first's 0.4 s prefill), the other two
    # each behind half a step of the one in flight at the slowest stage
    assert got.ttft_s == pytest.approx(lone + (0.0 + 0.4 + 0.05 + 0.05) / 4)
    one = predict_generation(
        pred, sequences=1, max_new_tokens=11, measured_sequences=3, decode_compute_s=[0.03, 0.05], prefill_s=[0.2, 0.4]
    )
    assert one.tpot_s == pytest.approx(0.1) and one.ttft_s == pytest.approx(one.lone_ttft_s)  # nobody else
    with pytest.raises(ValueError, match="different stages"):
        predict_generation(
            pred, sequences=2, max_new_tokens=11, measured_sequences=4, decode_compute_s=[0.03], prefill_s=[0.2, 0.4]
        )


def _testbed() -> list[Device]:
    return [
        Device(name="src", cpus=1.0, memory="1GiB", bandwidth="20mbit", delay="2ms"),
        Device(name="fast", cpus=4.0, memory="1GiB", bandwidth="20mbit", delay="2ms"),
        Device(name="mid", cpus=2.0, memory="1GiB", bandwidth="20mbit", delay="2ms"),
    ]


@pytest.mark.parametrize("sequences", [1, 3, 64])
def test_best_for_tokens_is_the_brute_force_optimum(graph, sequences):
    devices = _testbed()
    links = [Link(**{"from": "src", "to": "fast", "bandwidth": "1gbit", "delay": "20ms"})]
    problem = _problem(graph, devices, links=links, source="src", stages=2, sequences=sequences)
    a, bounds = build_arrays(graph, devices, links, source="src")
    best = np.inf
    for cut in range(1, len(bounds) - 1):
        for devs in itertools.permutations(range(len(devices)), 2):
            ev = evaluate(a, [cut], list(devs))
            if ev.fits:
                best = min(best, max(ev.latency_s, sequences * ev.bottleneck_s))
    placed = _placed(problem, "optimal")  # objective throughput of a generation job
    assert placed.notes[0].startswith(f"optimal (throughput, {sequences} sequence")
    assert placed.predicted is not None
    tpot, tokens = decode_prediction(placed.predicted, sequences)
    assert tpot == pytest.approx(best, rel=1e-3, abs=2e-6)
    assert best_for_tokens(problem, sequences).cuts == placed.cuts
    for objective in ("latency", "throughput"):  # neither plain objective does better
        other = ALGORITHMS["optimal"](replace(problem, objective=objective, sequences=None))
        assert decode_prediction(other.predicted, sequences)[1] <= tokens * (1 + 1e-3)
