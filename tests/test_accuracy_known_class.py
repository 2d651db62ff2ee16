"""Accuracy through the pipeline on a model whose answer is known from its input: every label
must meet its own image, batch after batch."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from orchestrator.run import execute

SIZE = 4  # 4x4 images: class c lights pixel c of 16
CLASSES = SIZE * SIZE
DEVICES = """
devices:
  - {name: phone, cpus: 1, memory: 1GiB}
  - {name: laptop, cpus: 1, memory: 1GiB}
"""


def _pixel_classifier(path: Path) -> Path:
    """pixel_values [batch, 3, 4, 4] -> logits [batch, 16] = 2 x the red channel, flattened: the
    class is the brightest pixel. Reshape, MatMul and Mul leave two places to cut."""
    pick = np.zeros((3 * CLASSES, CLASSES), np.float32)
    pick[np.arange(CLASSES), np.arange(CLASSES)] = 1.0  # the red channel comes first in CHW
    g = helper.make_graph(
        [
            helper.make_node("Reshape", ["pixel_values", "flat"], ["v"]),
            helper.make_node("MatMul", ["v", "pick"], ["red"]),
            helper.make_node("Mul", ["red", "two"], ["logits"]),
        ],
        "pixel_classifier",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])],
        initializer=[
            numpy_helper.from_array(np.array([0, 3 * CLASSES], np.int64), "flat"),
            numpy_helper.from_array(pick, "pick"),
            numpy_helper.from_array(np.array(2.0, np.float32), "two"),
        ],
    )
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)
    return path


def _labelled_images(folder: Path) -> Path:
    """One lossless 4x4 PNG per class, listed in a shuffled order so that every batch of four
    holds four different classes; the list file says `path label`."""
    folder.mkdir()
    order = np.random.default_rng(0).permutation(CLASSES)
    lines = []
    for c in order:
        a = np.zeros((SIZE, SIZE, 3), np.uint8)
        a[c // SIZE, c % SIZE] = 255
        Image.fromarray(a).save(folder / f"img{c}.png")
        lines.append(f"img{c}.png {c}")
    listfile = folder / "val.txt"
    listfile.write_text("\n".join(lines) + "\n")
    return listfile


def test_top1_is_exact_when_the_class_is_in_the_image(tmp_path):
    model = _pixel_classifier(tmp_path / "pixels.onnx")
    listfile = _labelled_images(tmp_path / "val")
    (tmp_path / "devices.yaml").write_text(textwrap.dedent(DEVICES))
    job = {
        "name": "known",
        "model": str(model),
        "devices": "devices.yaml",
        "runtime": "local",
        "stages": 2,
        "batch": 4,
        "requests": 8,  # two laps of the 16 images
        "warmup": 0,
        "concurrency": 2,
        "measure_stages": False,
        "dataset": {"kind": "list", "path": str(listfile), "preprocessing": {"size": SIZE}},
    }
    (tmp_path / "job.yaml").write_text(json.dumps(job))
    _, rep = execute(str(tmp_path / "job.yaml"), out=str(tmp_path / "run"))
    assert rep["errors"] == 0 and len(rep["stages"]) == 2
    assert rep["accuracy"]["images"] == 32
    assert rep["accuracy"]["top1"] == 1.0 and rep["accuracy"]["top5"] == 1.0, rep["accuracy"]
