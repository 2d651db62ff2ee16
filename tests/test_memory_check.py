"""The plan-time memory check: each stage opens its session by default where its node fits the
device, lean (no pre-packed weights) where only that fits or where the device asks for it, and is
refused where neither fits; plan.json carries each stage's predicted resident memory and mode."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from orchestrator import config
from orchestrator.config import Device
from orchestrator.errors import UserError
from orchestrator.partition import load_graph, partition
from orchestrator.partition.memory import (
    LEAN_TIME_FACTOR,
    STAGE_BYTES,
    breakdown,
    source_bytes,
    stage_needs,
    usable_bytes,
)

IN, OUT = 2048, 4096  # one float32 MatMul weight: 32 MiB
MIB = 1024**2
FIX = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="module")
def matmul_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    w = np.zeros((IN, OUT), np.float32)
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", IN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", OUT])],
        initializer=[numpy_helper.from_array(w, "w")],
    )
    path = tmp_path_factory.mktemp("mm") / "mm.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)
    return path


def _needs(model: Path):
    g = load_graph(model)
    return g, stage_needs(g, 0, g.n)


def _one_device(memory: float, mode: str = "default") -> config.Testbed:
    return config.Testbed(
        devices=[Device(name="phone", memory=f"{int(memory)}B", memory_mode=mode)],
        source="devices.yaml",
    )


def test_the_weights_are_what_lean_saves(matmul_model):
    _, needs = _needs(matmul_model)
    default, lean = breakdown(needs, "default"), breakdown(needs, "lean")
    assert needs.weights == IN * OUT * 4 and needs.conv_weights == 0
    assert default.weights == needs.weights and lean.weights == 0 and lean.mapped_weights == needs.weights
    assert default.total - lean.total == pytest.approx(needs.weights)


def test_a_stage_that_fits_only_lean_runs_lean_and_says_so(matmul_model, tmp_path):
    _, needs = _needs(matmul_model)
    default, lean = breakdown(needs, "default").total, breakdown(needs, "lean").total
    memory = (lean + default) / 2 / 0.9  # the lean node fits the usable memory, the default one does not
    assert usable_bytes(memory) < default and lean < usable_bytes(memory)
    plan = partition(matmul_model, _one_device(memory), stages=1, out_dir=tmp_path)
    stage = json.loads((tmp_path / "plan.json").read_text())["stages"][0]
    assert stage["memory_mode"] == "lean" and stage["memory_bytes"] == int(lean)
    assert any("with pre-packed weights: it runs lean" in n for n in plan.notes), plan.notes


def test_a_stage_that_fits_by_default_runs_so(matmul_model, tmp_path):
    _, needs = _needs(matmul_model)
    default = breakdown(needs, "default").total
    plan = partition(matmul_model, _one_device(default / 0.9 + MIB), stages=1, out_dir=tmp_path)
    assert (plan.stages[0].memory_mode, plan.stages[0].memory_bytes) == ("default", int(default))


def test_a_stage_that_fits_neither_way_is_refused(matmul_model, tmp_path):
    _, needs = _needs(matmul_model)
    lean = breakdown(needs, "lean").total
    with pytest.raises(UserError) as e:
        partition(matmul_model, _one_device(lean - MIB), stages=1, out_dir=tmp_path)
    msg = str(e.value)
    assert "stage 0 needs about" in msg and "'phone'" in msg and "without pre-packed weights" in msg, msg
    assert e.value.field == "devices[0].memory", e.value.field
    assert "\n" not in msg


def test_a_lean_device_runs_lean_and_the_cost_model_slows_it(matmul_model, tmp_path):
    roomy = 4 * 1024**3
    fast = partition(matmul_model, _one_device(roomy), stages=1, out_dir=tmp_path / "default")
    slow = partition(matmul_model, _one_device(roomy, "lean"), stages=1, out_dir=tmp_path / "lean")
    assert fast.stages[0].memory_mode == "default" and slow.stages[0].memory_mode == "lean"
    assert slow.stages[0].memory_bytes < fast.stages[0].memory_bytes
    assert slow.predicted.stage_s[0] == pytest.approx(fast.predicted.stage_s[0] * LEAN_TIME_FACTOR, abs=2e-6)
    assert not any("runs lean" in n for n in slow.notes)  # asked for, not chosen: nothing to say


def test_lean_is_not_chosen_where_it_saves_nothing(tmp_path):
    """Conv weights are copied whatever the mode: SqueezeNet gains nothing from lean, so a device it
    does not fit refuses it rather than running it slower for no memory."""
    g, needs = _needs(FIX / "squeezenet1_1.onnx")
    default, lean = breakdown(needs, "default").total, breakdown(needs, "lean").total
    assert needs.conv_weights == needs.weights and lean == default
    with pytest.raises(UserError, match="stage 0 needs about"):
        partition(FIX / "squeezenet1_1.onnx", _one_device(default - MIB), stages=1, out_dir=tmp_path)
    plan = partition(FIX / "squeezenet1_1.onnx", _one_device(default + MIB), stages=1, out_dir=tmp_path)
    assert plan.stages[0].memory_mode == "default"


def test_a_source_that_runs_a_later_stage_also_holds_the_drivers_stream(matmul_model, tmp_path):
    g, _ = _needs(matmul_model)
    tb = config.Testbed(devices=[Device(name="a", memory="4GiB"), Device(name="b", memory="4GiB")])
    apart = partition(matmul_model, tb, stages=2, out_dir=tmp_path / "a")
    at_b = partition(matmul_model, tb, stages=2, source="b", out_dir=tmp_path / "b")
    at_a = partition(matmul_model, tb, stages=2, source="a", out_dir=tmp_path / "c")
    assert [s.device for s in at_b.stages] == ["a", "b"]
    extra = at_b.stages[1].memory_bytes - apart.stages[1].memory_bytes
    assert extra == pytest.approx(source_bytes(g.live_bytes[0]), abs=1)
    # running stage 0, the source takes the driver's frames as that stage's own: nothing besides
    assert at_a.stages[0].memory_bytes == apart.stages[0].memory_bytes


def test_optimal_places_a_stage_lean_where_only_lean_fits(matmul_model, tmp_path):
    """One device too small for the default node, one too slow to be worth it: optimal uses the
    small one lean rather than not at all, and the plan says what it chose."""
    _, needs = _needs(matmul_model)
    default, lean = breakdown(needs, "default").total, breakdown(needs, "lean").total
    tb = config.Testbed(
        devices=[
            Device(name="small", cpus=1.0, memory=f"{int((lean + default) / 2 / 0.9)}B"),
            Device(name="slow", cpus=0.05, memory="4GiB"),
        ],
        source="devices.yaml",
    )
    plan = partition(matmul_model, tb, algorithm="optimal", stages=1, out_dir=tmp_path)
    assert [(s.device, s.memory_mode) for s in plan.stages] == [("small", "lean")]


def test_memory_mode_in_devices_yaml(tmp_path):
    f = tmp_path / "devices.yaml"
    f.write_text(
        textwrap.dedent("""
        devices:
          - {name: watch, cpus: 0.2, memory: 512MiB, memory_mode: lean}
          - {name: phone, cpus: 0.4, memory: 1GiB}
    """)
    )
    tb = config.load_devices(f)
    assert [d.memory_mode for d in tb.devices] == ["lean", "default"]
    f.write_text("devices:\n  - {name: watch, memory: 512MiB, memory_mode: tiny}\n")
    with pytest.raises(UserError) as e:
        config.load_devices(f)
    assert "memory_mode" in str(e.value) and "\n" not in str(e.value)


def test_memory_grows_with_the_batch(matmul_model, tmp_path):
    """Activations and frames scale with the requests' batch: a device that holds the stage at
    batch 1 refuses it at a batch whose activations it cannot hold."""
    _, needs = _needs(matmul_model)
    one, many = breakdown(needs, "default").total, breakdown(needs, "default", batch=256).total
    per_request = breakdown(needs).activations + breakdown(needs).frames - STAGE_BYTES
    assert many - one == pytest.approx(255 * per_request)
    lean_many = breakdown(needs, "lean", batch=256).total
    assert one < lean_many < many
    tb = _one_device((one + lean_many) / 2)
    assert partition(matmul_model, tb, stages=1, out_dir=tmp_path / "one").stages[0].memory_mode == "default"
    with pytest.raises(UserError, match="stage 0 needs about"):
        partition(matmul_model, tb, stages=1, out_dir=tmp_path / "many", batch=256)
