from __future__ import annotations

from orchestrator.figures.metrics import pipeline_order


def _names(order):
    return [f["device"] if k == "stage" else f"{f['from']}>{f['to']}" for k, f in order]


def test_the_hop_home_comes_last_when_the_source_runs_stage_0():
    stages = [{"index": 0, "device": "laptop"}, {"index": 1, "device": "watch"}]
    hops = [{"from": "watch", "to": "laptop"}, {"from": "laptop", "to": "watch"}]
    assert _names(pipeline_order(stages, hops)) == ["laptop", "laptop>watch", "watch", "watch>laptop"]
    assert _names(pipeline_order(stages, hops, "laptop")) == ["laptop", "laptop>watch", "watch", "watch>laptop"]


def test_a_source_without_a_stage_sends_in_first_and_gets_the_result():
    stages = [{"index": 0, "device": "a"}, {"index": 1, "device": "b"}]
    hops = [{"from": "b", "to": "cam"}, {"from": "a", "to": "b"}, {"from": "cam", "to": "a"}]
    assert _names(pipeline_order(stages, hops, "cam")) == ["cam>a", "a", "a>b", "b", "b>cam"]
    assert _names(pipeline_order(stages, hops)) == ["cam>a", "a", "a>b", "b", "b>cam"]
