"""A plan is refused when a stage cannot fit its device as a node holds it: the weights as ONNX
Runtime keeps them resident, the largest activation and the node's own overhead."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from orchestrator import config
from orchestrator.config import Device
from orchestrator.errors import UserError
from orchestrator.partition import partition
from orchestrator.partition.memory import NODE_OVERHEAD_BYTES, WEIGHTS_RESIDENT_FACTOR

IN, OUT = 1024, 2048
WEIGHTS = IN * OUT * 4  # one float32 MatMul weight: 8 MiB
ACTIVATION = OUT * 4  # the largest tensor at batch 1: the [1, 2048] float32 output
MIB = 1024**2


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


def _one_device(memory: int) -> config.Testbed:
    return config.Testbed(
        devices=[Device(name="phone", memory=f"{memory}B")],
        source="devices.yaml",
    )


FULL = NODE_OVERHEAD_BYTES + WEIGHTS_RESIDENT_FACTOR * WEIGHTS + ACTIVATION


@pytest.mark.parametrize(
    "memory",
    [
        # fits weights held once with the node's overhead, not weights held as ONNX Runtime does
        int((NODE_OVERHEAD_BYTES + WEIGHTS + ACTIVATION + FULL) / 2),
        # fits weights as ONNX Runtime holds them, not with the node itself beside them
        int(WEIGHTS_RESIDENT_FACTOR * WEIGHTS + ACTIVATION + 8 * MIB),
    ],
    ids=["without-resident-factor", "without-node-overhead"],
)
def test_a_stage_between_its_parts_and_its_whole_need_is_refused(matmul_model, tmp_path, memory):
    assert WEIGHTS + ACTIVATION < memory < FULL
    with pytest.raises(UserError) as e:
        partition(matmul_model, _one_device(memory), stages=1, out_dir=tmp_path)
    msg = str(e.value)
    assert "stage 0" in msg and "'phone'" in msg, msg
    assert e.value.field == "devices[0].memory", e.value.field


def test_a_stage_just_above_its_whole_need_is_accepted(matmul_model, tmp_path):
    plan = partition(matmul_model, _one_device(int(FULL) + MIB), stages=1, out_dir=tmp_path)
    assert [s.device for s in plan.stages] == ["phone"]
