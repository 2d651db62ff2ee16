"""Stages measured as a whole before the run: step times, stage inputs, the calibrated prediction."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest

from common.ort_session import open_session
from orchestrator.config import load_devices
from orchestrator.partition import partition
from orchestrator.partition.plan import Predicted
from orchestrator.profiling.calibration import (
    StageMeasure,
    calibrated,
    frames_for,
    measure_stages,
    relay_model,
    rounds,
    sink_model,
    stage_inputs,
    step_time_s,
)
from orchestrator.run import execute
from orchestrator.runtimes.local import LocalRuntime

DEVICES = """
devices:
  - {name: a, cpus: 1, memory: 1GiB}
  - {name: b, cpus: 1, memory: 1GiB}
"""


def test_step_time_is_the_interval_between_completions_once_the_pipe_is_full():
    ms = 1_000_000
    # two frames fill the pipe (their completions come early), then one every 50 ms
    done = [10 * ms, 20 * ms, 70 * ms, 120 * ms, 170 * ms, 220 * ms]
    assert step_time_s(done) == pytest.approx(0.050)
    assert step_time_s(list(reversed(done))) == pytest.approx(0.050)  # order of arrival does not matter
    assert step_time_s(done[:3]) is None  # one frame after the fill is no interval


def test_frames_cover_a_couple_of_seconds_within_bounds():
    assert frames_for(0.1) == 30
    assert frames_for(0.001) == 40  # a fast stage: capped
    assert frames_for(5.0) == 8  # a slow one: a few frames still
    assert frames_for(None) == 8
    assert frames_for(0.35, 3.0, 4, 12) == 9  # lone requests: about three seconds too


def test_calibrated_prediction_comes_from_the_measured_stages():
    pred = Predicted(
        stage_s=[0.1, 0.1],
        transfer_s=[0.02],
        throughput_fps=10.0,
        latency_s=0.25,
        slowest_other_s=0.02,
        transfers_total_s=0.03,
        source_roundtrip_s=0.01,
    )
    measured = [
        StageMeasure(busy_s=0.125, compute_s=0.09, roundtrip_s=0.005),
        StageMeasure(busy_s=0.08, compute_s=0.07, roundtrip_s=0.004),
    ]
    cal = calibrated(pred, measured, source_index=0)
    assert cal.throughput_fps == pytest.approx(8.0) and cal.stage_s == [0.125, 0.08]
    # a lone request: both stages' compute, the links, and the trip through the source's stage
    assert cal.latency_s == pytest.approx(0.09 + 0.07 + 0.03 + 0.005)
    # the source holds no stage: the profile's round trip through it stands
    assert calibrated(pred, measured, source_index=None).latency_s == pytest.approx(0.09 + 0.07 + 0.03 + 0.01)
    slow_link = pred.model_copy(update={"slowest_other_s": 0.2})
    assert calibrated(slow_link, measured, 0).throughput_fps == pytest.approx(5.0)
    # a plan read back from plan.json keeps none of the in-memory parts: transfers stand in, latency stays
    read_back = Predicted.model_validate(json.loads(pred.model_dump_json()))
    assert read_back.slowest_other_s is None and read_back.transfers_total_s is None
    fast = [StageMeasure(0.01, 0.01, 0.0)] * 2
    assert calibrated(read_back, fast, 0).throughput_fps == pytest.approx(50.0)
    assert calibrated(read_back, fast, 0).latency_s == 0.25


def test_rounds_never_put_one_device_in_two_measurements_at_once():
    # a > b > c > d, each stage sending to the next device: a->b and c->d together, then b->c and d alone
    pairs = [("a", "b"), ("b", "c"), ("c", "d"), ("d", None)]
    got = rounds(pairs)
    assert got == [[0, 2], [1, 3]]
    for ks in got:
        used = [d for k in ks for d in pairs[k] if d]
        assert len(used) == len(set(used))
    assert rounds([("a",), ("b",), ("c",)]) == [[0, 1, 2]]  # alone: all at once
    assert sorted(k for ks in rounds([("a", "b"), ("a", "c")]) for k in ks) == [0, 1]  # a twice: two rounds
    # with the input over a link too: previous, own, next device
    triples = [(None, "a", "b"), ("a", "b", "c"), ("b", "c", "d"), ("c", "d", None)]
    assert rounds(triples) == [[0, 3], [1], [2]]


def test_relay_passes_tensors_on_under_their_names(tmp_path):
    arrays = {"/vit/h": np.ones((1, 3, 4), np.float32), "ids": np.arange(3, dtype=np.int64)}
    names = relay_model(tmp_path / "relay.onnx", arrays)
    assert list(names.values()) == list(arrays)
    sess = open_session(tmp_path / "relay.onnx")
    out = sess.run(list(arrays), {new: arrays[old] for new, old in names.items()})
    assert all(np.array_equal(o, a) for o, a in zip(out, arrays.values(), strict=True))


def test_sink_takes_any_tensor_and_sends_one_number_each(tmp_path):
    arrays = {
        "h": np.ones((1, 3, 4), np.float32),
        "ids": np.arange(6, dtype=np.int64).reshape(2, 3),
        "mask": np.array([True, False]),
    }
    outs = sink_model(tmp_path / "sink.onnx", arrays)
    sess = open_session(tmp_path / "sink.onnx")
    got = dict(zip(outs, sess.run(outs, arrays), strict=True))
    assert [float(got[o]) for o in outs] == [12.0, 15.0, 1.0]


def test_stage_inputs_are_the_tensors_each_stage_takes_in(tmp_path, tiny_vit):
    (tmp_path / "d.yaml").write_text(textwrap.dedent(DEVICES))
    testbed = load_devices(tmp_path / "d.yaml")
    plan = partition(tiny_vit, testbed, algorithm="even", stages=2, out_dir=tmp_path / "plan")
    feeds = stage_inputs(plan)
    assert list(feeds[0]) == plan.inputs
    assert set(feeds[1]) == set(plan.forward_after(0))
    # stage 1 run on what it was given gives the whole model's output for stage 0's input
    whole = open_session(tiny_vit).run(None, feeds[0])[0]
    s1 = open_session(plan.stage_path(1))
    out = s1.run(None, {x: feeds[1][x] for x in plan.stages[1].inputs})[0]
    assert np.abs(out - whole).max() <= 1e-4


def test_measure_stages_on_local_nodes(tmp_path, tiny_vit):
    (tmp_path / "d.yaml").write_text(textwrap.dedent(DEVICES))
    testbed = load_devices(tmp_path / "d.yaml")
    plan = partition(tiny_vit, testbed, algorithm="even", stages=2, out_dir=tmp_path / "plan")
    rt = LocalRuntime(testbed, tmp_path / "logs")
    dep = rt.start()
    try:
        busy = measure_stages(plan, plan, testbed, dep)
    finally:
        rt.stop()
    assert len(busy) == 2 and all(0 < m.busy_s < 1.0 and 0 < m.compute_s < 1.0 for m in busy), busy
    assert all(m.roundtrip_s > 0 for m in busy)  # a request's trip in and out takes some time


def test_a_run_predicts_from_the_measured_stages_and_keeps_the_block_sums(tmp_path, tiny_vit):
    (tmp_path / "d.yaml").write_text(textwrap.dedent(DEVICES))
    job = {
        "name": "t",
        "model": str(tiny_vit),
        "devices": "d.yaml",
        "runtime": "local",
        "requests": 6,
        "warmup": 1,
        "concurrency": 2,
        "algorithm": "even",
        "stages": 2,
    }
    (tmp_path / "job.yaml").write_text(json.dumps(job))
    run_dir, rep = execute(str(tmp_path / "job.yaml"), out=str(tmp_path / "run"))
    assert rep["predicted_from_blocks"]["stage_s"] and rep["predicted"]["stage_s"]
    assert rep["predicted"]["stage_s"] != rep["predicted_from_blocks"]["stage_s"]
    assert any(n.startswith("prediction: each stage measured as a whole") for n in rep["notes"])
    saved = json.loads((run_dir / "plan.json").read_text())["predicted"]
    assert saved["stage_s"] == rep["predicted"]["stage_s"] and "slowest_other_s" not in saved

    job["measure_stages"] = False
    (tmp_path / "job.yaml").write_text(json.dumps(job))
    _, rep = execute(str(tmp_path / "job.yaml"), out=str(tmp_path / "run2"))
    assert rep["predicted_from_blocks"] is None
