"""A graph output produced early must cross every later cut: it is live until the model's end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from orchestrator.partition.graph import load_graph
from orchestrator.partition.plan import Plan, StagePlan
from orchestrator.partition.stage_files import write_stages
from orchestrator.partition.verify import verify_plan


@pytest.fixture(scope="module")
def two_outputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """x -> MatMul -> Relu = `aux` (a graph output, also read by the next node) -> MatMul -> Tanh
    -> MatMul -> Sigmoid = `y`: after the second MatMul nothing reads `aux` any more."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
        for name, shape in (("w1", (8, 16)), ("w2", (16, 12)), ("w3", (12, 4)))
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["a"]),
        helper.make_node("Relu", ["a"], ["aux"]),
        helper.make_node("MatMul", ["aux", "w2"], ["b"]),
        helper.make_node("Tanh", ["b"], ["c"]),
        helper.make_node("MatMul", ["c", "w3"], ["d"]),
        helper.make_node("Sigmoid", ["d"], ["y"]),
    ]
    g = helper.make_graph(
        nodes,
        "two_outputs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [
            helper.make_tensor_value_info("aux", TensorProto.FLOAT, ["batch", 16]),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4]),
        ],
        initializer=inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(m)
    path = tmp_path_factory.mktemp("two") / "two_outputs.onnx"
    onnx.save(m, str(path))
    return path


def _plan(model: Path, cuts: list[int], out: Path) -> Plan:
    """The stage files and plan.json for these cuts, as `orchestrator partition` writes them."""
    g = load_graph(model)
    files = write_stages(g, cuts, out)
    plan = Plan(
        model=str(model),
        model_sha256=g.sha256,
        algorithm="manual",
        objective="throughput",
        inputs=list(g.inputs),
        outputs=list(g.outputs),
        stages=[
            StagePlan(index=f.index, device=f"d{f.index}", model=f.model, inputs=f.inputs, outputs=f.outputs)
            for f in files
        ],
    )
    plan.save(out)
    return plan


def _check_chains(plan: Plan) -> None:
    """Each stage is fed by the inputs and earlier stages; both outputs come out of some stage;
    what each stage forwards (what a node sends on) carries every output made so far."""
    have = set(plan.inputs)
    for k, s in enumerate(plan.stages):
        assert set(s.inputs) <= have, (k, s.inputs, have)
        have |= set(s.outputs)
        made = {o for o in plan.outputs if o in have}
        assert made <= set(plan.forward_after(k)), (k, made, plan.forward_after(k))
    assert set(plan.outputs) <= have, (plan.outputs, have)


def test_early_output_is_live_at_every_later_cut(two_outputs: Path) -> None:
    g = load_graph(two_outputs)
    assert g.outputs == ["aux", "y"]
    made = g.prod["aux"]
    assert made == 1 and len(g.candidates) == 5
    for p in g.candidates:
        assert ("aux" in g.live_at(p)) == (p > made), (p, g.live_at(p))
        if p > made:
            assert g.live_bytes[p] >= g.nbytes["aux"]


@pytest.mark.parametrize("cut", [1, 2, 3, 4, 5])
def test_every_single_cut_chains_to_both_outputs(two_outputs: Path, tmp_path: Path, cut: int) -> None:
    plan = _plan(two_outputs, [cut], tmp_path)
    _check_chains(plan)
    res = verify_plan(tmp_path / "plan.json", batch=3)
    assert res.ok and res.max_abs_diff == 0.0 and set(res.outputs) == {"aux", "y"}, res


def test_a_stage_per_node_chains_to_both_outputs(two_outputs: Path, tmp_path: Path) -> None:
    plan = _plan(two_outputs, list(load_graph(two_outputs).candidates), tmp_path)
    assert len(plan.stages) == 6
    _check_chains(plan)
    # the stage that makes the early output lists it; later ones only pass it on (_check_chains)
    assert "aux" in plan.stages[1].outputs, [s.outputs for s in plan.stages]
    res = verify_plan(tmp_path / "plan.json", batch=3)
    assert res.ok and res.max_abs_diff == 0.0, res
