"""What the model builders share: an ONNX graph written node by node with seeded weights, and
saving it (weights in a file beside it past protobuf's 2 GB)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

_TWO_GB = 2 * 1024**3


class GraphBuilder:
    """Nodes and initialisers of one graph; outputs named `{scope}/{name}_output_0` as exporters do."""

    def __init__(self, rng: np.random.Generator, std: float):
        self.rng = rng
        self.std = std
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []
        self.nbytes = 0

    def weight(self, name: str, shape: tuple[int, ...], kind: str = "normal", std: float | None = None) -> str:
        """A seeded weight: normal with the builder's std (or `std`), or all ones or zeros."""
        if kind == "ones":
            arr = np.ones(shape, np.float32)
        elif kind == "zeros":
            arr = np.zeros(shape, np.float32)
        else:
            arr = self.rng.standard_normal(shape, dtype=np.float32)
            arr *= self.std if std is None else std
        self.inits.append(numpy_helper.from_array(arr, name))
        self.nbytes += arr.nbytes
        return name

    def const(self, name: str, values: list[int] | list[float] | np.ndarray, dtype: type = np.int64) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(values, dtype=dtype), name))
        return name

    def op(self, op: str, scope: str, name: str, inputs: list[str], **attrs: object) -> str:
        out = f"{scope}/{name}_output_0"
        self.nodes.append(helper.make_node(op, inputs, [out], name=f"{scope}/{name}", **attrs))
        return out

    def linear(self, scope: str, x: str, w: str, b: str, tag: str = "") -> str:
        y = self.op("MatMul", scope, f"MatMul{tag}", [x, w])
        return self.op("Add", scope, f"Add{tag}", [y, b])


def save_model(model: onnx.ModelProto, path: Path, nbytes: int) -> Path:
    """Check and write `model`; weights past protobuf's 2 GB go to `<name>.data` beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if nbytes > _TWO_GB - 64 * 1024**2:
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=path.name + ".data",
            size_threshold=1024,
        )
        onnx.checker.check_model(str(path))
    else:
        onnx.checker.check_model(model)
        path.write_bytes(model.SerializeToString())
    return path
