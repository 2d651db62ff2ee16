"""Partitioning: graph analysis, stage files with shared weights, plans, algorithms, verification."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from orchestrator import config
from orchestrator.config import Device, PartitionPoint, load_devices
from orchestrator.errors import UserError
from orchestrator.models import build_vit
from orchestrator.partition import ALGORITHMS, get_algorithm, load_graph, partition
from orchestrator.partition.plan import Plan
from orchestrator.partition.verify import verify_plan

FIX = Path(__file__).parent / "fixtures"
TINY = dict(image_size=32, patch=8, layers=4, hidden=64, heads=4, mlp=128, classes=10)


def make_testbed(n: int = 4, memory: str = "1GiB", points: list[PartitionPoint] | None = None) -> config.Testbed:
    return config.Testbed(
        devices=[Device(name=f"d{i}", memory=memory) for i in range(n)],
        partition_points=points or [],
        source="devices.yaml",
    )


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_vit(tmp_path_factory.mktemp("vit") / "tiny_vit.onnx", **TINY)


@pytest.fixture(scope="module")
def shape_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """x[batch,8] -> Shape(x) computed first, used by the last Reshape: it crosses every cut."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((8, 16)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "w2")
    c = numpy_helper.from_array(rng.standard_normal((8,)).astype(np.float32), "c")
    nodes = [
        helper.make_node("Shape", ["x"], ["x_shape"]),
        helper.make_node("MatMul", ["x", "w1"], ["m1"]),
        helper.make_node("Relu", ["m1"], ["a"]),
        helper.make_node("MatMul", ["a", "w2"], ["b"]),
        helper.make_node("Reshape", ["b", "x_shape"], ["r"]),
        helper.make_node("Add", ["r", "c"], ["y"]),
    ]
    g = helper.make_graph(
        nodes,
        "shape_chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
        initializer=[w1, w2, c],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    path = tmp_path_factory.mktemp("shape") / "shape_chain.onnx"
    onnx.save(m, str(path))
    return path


def _model(name: str, tiny_vit: Path) -> Path:
    return tiny_vit if name == "tiny_vit" else FIX / name


@pytest.mark.parametrize("name", ["hf_vit_tiny.onnx", "squeezenet1_1.onnx", "tiny_vit"])
@pytest.mark.parametrize("k", [2, 3, 4])
def test_even_partition_verifies(name: str, k: int, tiny_vit: Path, tmp_path: Path) -> None:
    model = _model(name, tiny_vit)
    plan = partition(model, make_testbed(), stages=k, out_dir=tmp_path)
    assert len(plan.stages) == k
    assert [s.device for s in plan.stages] == [f"d{i}" for i in range(k)]
    res = verify_plan(tmp_path / "plan.json", batch=4)
    assert res.max_abs_diff <= 1e-4
    assert res.top1_agreement == 1.0
    # one shared weights file, a hard link to the store's copy; small stage files, each weight written once
    weights = tmp_path / "weights.bin"
    assert weights.exists() and weights.stat().st_nlink >= 2
    src = onnx.load(str(model), load_external_data=False)
    total = sum(numpy_helper.to_array(t).nbytes for t in src.graph.initializer)
    assert weights.stat().st_size <= total + 4096 * len(src.graph.initializer)
    stage_files = sorted(tmp_path.glob("stage_*.onnx"))
    assert len(stage_files) == k
    assert sum(f.stat().st_size for f in stage_files) < 0.1 * total
    for f in stage_files:
        m = onnx.load(str(f), load_external_data=False)
        ext = [t for t in m.graph.initializer if t.data_location == TensorProto.EXTERNAL]
        assert ext and {e.value for t in ext for e in t.external_data if e.key == "location"} == {"weights.bin"}
        for vi in list(m.graph.input) + list(m.graph.output):  # boundary tensors are typed, with a rank
            assert vi.type.tensor_type.elem_type and vi.type.tensor_type.HasField("shape")


def test_vit_cuts_at_block_boundaries(tiny_vit: Path, tmp_path: Path) -> None:
    plan = partition(tiny_vit, make_testbed(), stages=4, out_dir=tmp_path)
    for s in plan.stages[1:]:
        assert len(s.inputs) == 1 and "/Add" in s.inputs[0], s.inputs  # a residual stream, nothing else
    saved = json.loads((tmp_path / "plan.json").read_text())
    assert set(saved) == {
        "model",
        "model_sha256",
        "algorithm",
        "objective",
        "inputs",
        "outputs",
        "stages",
        "predicted",
        "state",
    }
    assert set(saved["stages"][0]) == {
        "index",
        "device",
        "model",
        "inputs",
        "outputs",
        "memory_bytes",
        "memory_mode",
        "level",
    }
    assert all(s["memory_bytes"] > 0 and s["memory_mode"] == "default" for s in saved["stages"])
    assert set(saved["predicted"]) == {
        "stage_s",
        "transfer_s",
        "throughput_fps",
        "latency_s",
        "energy_j",
        "energy_compute_j",
        "energy_idle_j",
        "energy_radio_j",
    }
    assert saved["inputs"] == ["pixel_values"] and saved["outputs"] == ["logits"]
    again = Plan.load(tmp_path)
    assert again.stages == plan.stages and again.dir == tmp_path


def test_hf_vit_block_boundaries_have_one_live_tensor() -> None:
    g = load_graph(FIX / "hf_vit_tiny.onnx")
    single = [
        p
        for p in g.candidates
        if g.live_at(p) and len(g.live_at(p)) == 1 and g.live_at(p)[0].endswith("Add_1_output_0")
    ]
    assert len(single) >= 11
    assert g.live_bytes[single[5]] == 197 * 192 * 4


def test_manual_completes_live_set(shape_model: Path, tmp_path: Path) -> None:
    pts = [
        PartitionPoint(input_names=["x"], output_names=["a"], device_name="d1"),
        PartitionPoint(input_names=["a"], output_names=["y"], device_name="d0"),
    ]
    plan = partition(shape_model, make_testbed(2, points=pts), algorithm="manual", out_dir=tmp_path)
    assert [s.device for s in plan.stages] == ["d1", "d0"]
    assert set(plan.stages[0].outputs) == {"a", "x_shape"}
    assert set(plan.stages[1].inputs) == {"a", "x_shape"}
    assert any("stage 0" in n and "x_shape" in n and "added to the live set" in n for n in plan.notes)
    res = verify_plan(tmp_path, batch=3)
    assert res.max_abs_diff == 0.0


def test_manual_from_ianvs_devices_file(shape_model: Path, tmp_path: Path) -> None:
    f = tmp_path / "devices.yaml"
    f.write_text(
        "devices:\n"
        "  - {name: edge1, type: pi, memory: '1024', freq: '1.5', bandwith: '100'}\n"
        "  - {name: edge2, type: pi, memory: '1024', freq: '1.5', bandwith: '100'}\n"
        "partition_points:\n"
        "  - {input_names: [x], output_names: [m1]}\n"
        "  - {input_names: [m1], output_names: [y]}\n"
    )
    plan = partition(shape_model, load_devices(f), algorithm="manual", out_dir=tmp_path / "out")
    assert [s.device for s in plan.stages] == ["edge1", "edge2"]
    assert verify_plan(tmp_path / "out").max_abs_diff == 0.0


def test_manual_unknown_tensor(shape_model: Path, tmp_path: Path) -> None:
    pts = [PartitionPoint(output_names=["nope"]), PartitionPoint(output_names=["y"])]
    with pytest.raises(UserError) as e:
        partition(shape_model, make_testbed(2, points=pts), algorithm="manual", out_dir=tmp_path)
    assert e.value.field == "partition_points[0].output_names"
    assert "nope" in str(e.value) and e.value.file == "devices.yaml"


def test_manual_needs_points(shape_model: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError) as e:
        partition(shape_model, make_testbed(2), algorithm="manual", out_dir=tmp_path)
    assert e.value.field == "partition_points"


def test_forward_after(shape_model: Path, tmp_path: Path) -> None:
    pts = [
        PartitionPoint(output_names=["m1"]),
        PartitionPoint(output_names=["a"]),
        PartitionPoint(output_names=["y"]),
    ]
    plan = partition(shape_model, make_testbed(3, points=pts), algorithm="manual", out_dir=tmp_path)
    assert plan.forward_after(-1) == ["x"]
    assert plan.forward_after(0) == ["x_shape", "m1"]
    assert plan.forward_after(1) == ["x_shape", "a"]  # the shape crosses both cuts
    assert plan.forward_after(2) == ["y"]
    assert "x_shape" in plan.stages[2].inputs and "x_shape" not in plan.stages[1].inputs
    assert verify_plan(tmp_path).max_abs_diff == 0.0
    g = load_graph(shape_model)
    assert g.live_at(1) == ["x", "x_shape"] and g.live_at(2) == ["x_shape", "m1"]


def test_external_data_source(tiny_vit: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    m = onnx.load(str(tiny_vit))
    onnx.save_model(
        m,
        str(src / "ext.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="ext.onnx.data",
        size_threshold=1024,
    )
    assert (src / "ext.onnx").stat().st_size < 100_000
    plan = partition(src / "ext.onnx", make_testbed(), stages=3, out_dir=tmp_path / "out")
    assert (tmp_path / "out" / "weights.bin").exists()
    res = verify_plan(tmp_path / "out" / "plan.json", batch=4)
    assert res.max_abs_diff <= 1e-4 and res.top1_agreement == 1.0
    assert len(plan.stages) == 3


def test_memory_too_small(tiny_vit: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError) as e:
        partition(tiny_vit, make_testbed(2, memory="64KiB"), stages=2, out_dir=tmp_path)
    assert e.value.field == "devices[0].memory" and "stage 0" in str(e.value) and "'d0'" in str(e.value)


@pytest.mark.parametrize("content", [b"devices:\n  - name: a\n", bytes(range(256)) * 10, b""])
def test_not_onnx(content: bytes, tmp_path: Path) -> None:
    f = tmp_path / "model.onnx"
    f.write_bytes(content)
    with pytest.raises(UserError) as e:
        partition(f, make_testbed(), out_dir=tmp_path / "out")
    assert e.value.file == str(f) and "not an ONNX model" in str(e.value)


def test_bad_requests(shape_model: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError) as e:
        partition(tmp_path / "missing.onnx", make_testbed(), out_dir=tmp_path)
    assert "file not found" in str(e.value)
    with pytest.raises(UserError) as e:
        partition(shape_model, make_testbed(2), stages=3, out_dir=tmp_path)
    assert e.value.field == "stages"
    with pytest.raises(UserError) as e:
        partition(shape_model, make_testbed(8), stages=7, out_dir=tmp_path)  # 5 non-constant nodes
    assert e.value.field == "stages" and e.value.file == str(shape_model)
    with pytest.raises(UserError) as e:
        partition(shape_model, make_testbed(7), out_dir=tmp_path)  # one stage per device by default
    assert e.value.field == "stages"
    with pytest.raises(UserError) as e:
        get_algorithm("fastest")
    assert e.value.field == "algorithm" and all(k in str(e.value) for k in ALGORITHMS)


def test_plan_load_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="file not found"):
        Plan.load(tmp_path / "plan.json")
    (tmp_path / "plan.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        Plan.load(tmp_path)
    (tmp_path / "plan.json").write_text(json.dumps({"model": "m.onnx"}))
    with pytest.raises(UserError) as e:
        Plan.load(tmp_path / "plan.json")
    assert e.value.field == "model_sha256"


def test_graph_constants_are_free() -> None:
    g = load_graph(FIX / "hf_vit_tiny.onnx")
    nodes = g.model.graph.node
    assert all(g.const[i] for i, n in enumerate(nodes) if n.op_type == "Constant")
    assert all(not g.const[i] for i in g.seq)
    assert g.n < len(nodes) - 300
    assert len(g.cost) == g.n
    # The FLOPs a ViT's shapes give: 2 per multiply-add of the patch projection, of every layer's
    # q, k, v, output and two MLP matmuls and its two attention products, and of the classifier
    # on the class token; every other node adds one FLOP per output element, at most the
    # largest activation each.
    inits = {t.name: list(t.dims) for t in g.model.graph.initializer}
    hidden, chans, patch, _ = next(d for n, d in inits.items() if n.endswith("patch_embeddings.projection.weight"))
    image = g.shapes1["pixel_values"][-1]
    up = [d for d in inits.values() if len(d) == 2 and d[0] == hidden and d[1] > hidden]  # one per layer
    layers, mlp, classes = len(up), up[0][1], inits["classifier.weight"][0]
    patches = (image // patch) ** 2
    tokens = patches + 1
    per_layer = 2 * tokens * hidden * (4 * hidden + 2 * mlp) + 2 * 2 * tokens * tokens * hidden
    matmuls = 2 * patches * hidden * chans * patch * patch + layers * per_layer + 2 * hidden * classes
    others = sum(g.model.graph.node[i].op_type not in ("MatMul", "Gemm", "Conv") for i in g.seq)
    largest = max(int(np.prod(s)) for n, s in g.shapes1.items() if n not in g.initializers)
    assert layers == 12 and matmuls == pytest.approx(2.507e9, rel=1e-3)
    assert matmuls <= sum(g.cost) <= matmuls + others * largest, (sum(g.cost), matmuls)
