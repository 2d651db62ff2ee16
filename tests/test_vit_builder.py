"""The ViT builder: a valid ONNX model with the HF export's interface and sane outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from common.ort_session import open_session
from orchestrator.models import build_vit

TINY = dict(image_size=32, patch=8, layers=4, hidden=64, heads=4, mlp=128, classes=10)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_vit(tmp_path_factory.mktemp("vit") / "tiny.onnx", **TINY)


def test_valid_onnx_with_hf_interface(tiny: Path) -> None:
    m = onnx.load(str(tiny))
    onnx.checker.check_model(m)
    assert [i.name for i in m.graph.input] == ["pixel_values"]
    assert [o.name for o in m.graph.output] == ["logits"]
    dims = m.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [3, 32, 32]
    outs = {o for n in m.graph.node for o in n.output}
    assert {f"/vit/layers.{i}/Add_1_output_0" for i in range(4)} <= outs
    ops = {n.op_type for n in m.graph.node}
    assert {"Conv", "LayerNormalization", "Softmax", "Erf", "MatMul", "Transpose", "Reshape"} <= ops


def test_runs_finite_and_classes_differ(tiny: Path) -> None:
    sess = open_session(tiny)
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 32, 32)).astype(np.float32)
        (logits,) = sess.run(["logits"], {"pixel_values": x})
        assert logits.shape == (batch, 10)
        assert np.isfinite(logits).all()
        assert np.ptp(logits, axis=1).min() > 1e-3  # classes differ


def test_seeded(tmp_path: Path) -> None:
    a = build_vit(tmp_path / "a.onnx", seed=1, **TINY).read_bytes()
    b = build_vit(tmp_path / "b.onnx", seed=1, **TINY).read_bytes()
    c = build_vit(tmp_path / "c.onnx", seed=2, **TINY).read_bytes()
    assert a == b and a != c


def test_bad_geometry(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        build_vit(tmp_path / "x.onnx", image_size=30, patch=8)
