"""Write stage models: one shared weights file, stage graphs that point into it by offset.

Why not `onnx.utils.extract_model`: it loads every weight, re-runs the checker and shape
inference per stage and writes the weights again for each stage (seconds per stage on a
ViT-B, and it breaks past 2 GB). Here each weight is copied once, streaming, into
`weights.bin`; every `stage_k.onnx` references its initializers there (external data:
location/offset/length), so stage files are small and models over 2 GB work.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from orchestrator.partition.graph import SMALL_TENSOR_BYTES, ModelGraph, node_inputs, tensor_nbytes

WEIGHTS_FILE = "weights.bin"
_ALIGN_BIG = 4096  # page-aligned offsets let ONNX Runtime map big tensors instead of copying
_ALIGN = 64
_CHUNK = 16 * 1024 * 1024


@dataclass
class StageFile:
    """What was written for one stage."""

    index: int
    model: str  # file name, relative to the output folder
    inputs: list[str]
    outputs: list[str]
    lo: int  # seq positions [lo, hi)
    hi: int
    weights_bytes: int


def stage_bounds(graph: ModelGraph, cuts: list[int]) -> list[tuple[int, int]]:
    """[lo, hi) seq ranges of the stages given the cut positions."""
    b = [0, *cuts, graph.n]
    return [(b[i], b[i + 1]) for i in range(len(b) - 1)]


def stage_io(graph: ModelGraph, lo: int, hi: int) -> tuple[list[str], list[str]]:
    """A stage's inputs (consumed, not produced here, not constants) and outputs (used later)."""
    nodes = graph.model.graph.node
    produced: set[str] = set()
    inputs: dict[str, None] = {}
    outputs: list[str] = []
    for p in range(lo, hi):
        nd = nodes[graph.seq[p]]
        for x in node_inputs(nd):
            if x not in produced and x in graph.prod:  # prod holds graph inputs and non-constant outputs
                inputs[x] = None
        for o in nd.output:
            if o:
                produced.add(o)
                if graph.last.get(o, -1) >= hi:
                    outputs.append(o)
    return list(inputs), outputs


def _typed(graph: ModelGraph, name: str) -> onnx.ValueInfoProto:
    """value_info with type and rank (batch dim symbolic) for a stage boundary tensor."""
    tp = graph.types.get(name)
    if tp is not None and tp.tensor_type.HasField("shape"):
        vi = onnx.ValueInfoProto(name=name)
        vi.type.CopyFrom(tp)
        return vi
    et = tp.tensor_type.elem_type if tp is not None else TensorProto.FLOAT
    rank = len(graph.shapes1[name]) if name in graph.shapes1 else None
    return helper.make_tensor_value_info(name, et, [None] * rank if rank is not None else None)


class _WeightsWriter:
    """Appends each initializer's bytes once to the shared weights file."""

    def __init__(self, graph: ModelGraph, path: Path):
        self.graph = graph
        self.path = path
        self.base = graph.path.parent
        self.f: BinaryIO = open(path, "wb")  # noqa: SIM115 - closed in close()
        self.pos = 0
        self.where: dict[str, tuple[int, int]] = {}
        self.sources: dict[str, BinaryIO] = {}

    def close(self) -> None:
        self.f.close()
        for s in self.sources.values():
            s.close()

    def _pad(self, align: int) -> None:
        pad = (-self.pos) % align
        if pad:
            self.f.write(b"\0" * pad)
            self.pos += pad

    def add(self, t: TensorProto) -> tuple[int, int]:
        if t.name in self.where:
            return self.where[t.name]
        length = tensor_nbytes(t)
        self._pad(_ALIGN_BIG if length >= 65536 else _ALIGN)
        offset = self.pos
        if t.data_location == TensorProto.EXTERNAL:
            length = self._copy_external(t)
        else:
            data = (
                t.raw_data
                if t.HasField("raw_data")
                else numpy_helper.to_array(t)
                .astype(np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).newbyteorder("<"), copy=False)
                .tobytes()
            )
            self.f.write(data)
            length = len(data)
        self.pos += length
        self.where[t.name] = (offset, length)
        return offset, length

    def _copy_external(self, t: TensorProto) -> int:
        info = {e.key: e.value for e in t.external_data}
        loc = info["location"]
        src_off = int(info.get("offset", 0))
        length = int(info["length"]) if "length" in info else tensor_nbytes(t)
        src = self.sources.get(loc)
        if src is None:
            src = self.sources[loc] = open(self.base / loc, "rb")  # noqa: SIM115 - closed in close()
        self.f.flush()
        left, s_off, d_off = length, src_off, self.pos
        try:  # kernel-side copy where the platform has it
            while left > 0:
                n = os.copy_file_range(src.fileno(), self.f.fileno(), left, s_off, d_off)
                if n <= 0:
                    raise OSError("short copy")
                left, s_off, d_off = left - n, s_off + n, d_off + n
            self.f.seek(self.pos + length)
        except (AttributeError, OSError):
            self.f.seek(d_off)
            src.seek(s_off)
            while left > 0:
                chunk = src.read(min(_CHUNK, left))
                if not chunk:
                    raise OSError(f"{loc}: external data ends early for {t.name}") from None
                self.f.write(chunk)
                left -= len(chunk)
        return length


def _embedded_small(t: TensorProto, base: Path) -> TensorProto:
    c = TensorProto()
    c.CopyFrom(t)
    if c.data_location == TensorProto.EXTERNAL:
        onnx.external_data_helper.load_external_data_for_tensor(c, str(base))
        c.data_location = TensorProto.DEFAULT
        del c.external_data[:]
    return c


def write_stages(graph: ModelGraph, cuts: list[int], out_dir: str | Path) -> list[StageFile]:
    """Write weights.bin and stage_k.onnx for the given cut positions; return what each holds."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("stage_*.onnx"):
        old.unlink()
    src = graph.model
    nodes = src.graph.node
    writer = _WeightsWriter(graph, out / WEIGHTS_FILE)
    stages: list[StageFile] = []
    rank = {i: p for p, i in enumerate(graph.order)}  # stage nodes keep the source's topological order
    try:
        for k, (lo, hi) in enumerate(stage_bounds(graph, cuts)):
            inputs, outputs = stage_io(graph, lo, hi)
            idx = sorted(
                {graph.seq[p] for p in range(lo, hi)} | set(graph.stage_consts(lo, hi)),
                key=rank.__getitem__,
            )
            m = onnx.ModelProto(
                ir_version=src.ir_version,
                producer_name="edge-testbed partition",
                producer_version=src.producer_version,
                domain=src.domain,
                model_version=src.model_version,
            )
            m.opset_import.extend(src.opset_import)
            m.functions.extend(src.functions)
            g = m.graph
            g.name = f"stage_{k}"
            g.node.extend(nodes[i] for i in idx)
            g.input.extend(_typed(graph, x) for x in inputs)
            g.output.extend(_typed(graph, x) for x in outputs)
            wbytes = 0
            for name in graph.stage_initializers(lo, hi):
                t = graph.initializers[name]
                size = tensor_nbytes(t)
                if size <= SMALL_TENSOR_BYTES or t.data_type == TensorProto.STRING:
                    g.initializer.append(_embedded_small(t, graph.path.parent))
                    continue
                offset, length = writer.add(t)
                ref = g.initializer.add()
                ref.name = name
                ref.data_type = t.data_type
                ref.dims.extend(t.dims)
                ref.data_location = TensorProto.EXTERNAL
                for key, val in (
                    ("location", WEIGHTS_FILE),
                    ("offset", str(offset)),
                    ("length", str(length)),
                ):
                    e = ref.external_data.add()
                    e.key, e.value = key, val
                wbytes += length
            fname = f"stage_{k}.onnx"
            (out / fname).write_bytes(m.SerializeToString())
            stages.append(StageFile(k, fname, inputs, outputs, lo, hi, wbytes))
    finally:
        writer.close()
    return stages
