"""Write stage models: small graphs whose big initializers point into the model's stored weights.

Why not `onnx.utils.extract_model`: it loads every weight, re-runs the checker and shape
inference per stage and writes the weights again for each stage (seconds per stage on a
ViT-B, and it breaks past 2 GB). Here the weights are stored once per model (weights_store),
every `stage_k.onnx` references its initializers in `weights.bin` (external data:
location/offset/length), and the folder's `weights.bin` is a hard link to the stored file, so
stage files are small, a stored model is cut without reading its weights, and models over 2 GB work.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from orchestrator.partition.graph import ModelGraph, embedded, node_inputs
from orchestrator.partition.weights_store import WEIGHTS_FILE, WeightsStore, kept_apart


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


def write_stages(
    graph: ModelGraph, cuts: list[int], out_dir: str | Path, store: WeightsStore | None = None
) -> list[StageFile]:
    """Write stage_k.onnx for the given cut positions and link weights.bin from the store (the
    default store unless given; the model is stored first where it is not); return what each
    stage holds. Where the weights had to be copied instead, graph.notes says so."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("stage_*.onnx"):
        old.unlink()
    stored = (store or WeightsStore()).put(graph)
    note = stored.link_into(out)
    if note:
        graph.notes.append(note)
    src = graph.model
    nodes = src.graph.node
    base = graph.path.parent
    stages: list[StageFile] = []
    rank = {i: p for p, i in enumerate(graph.order)}  # stage nodes keep the source's topological order
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
            if not kept_apart(t):
                g.initializer.append(embedded(t, base))
                continue
            offset, length = stored.index[name]
            ref = g.initializer.add(name=name, data_type=t.data_type, dims=t.dims)
            ref.data_location = TensorProto.EXTERNAL
            for key, val in (("location", WEIGHTS_FILE), ("offset", str(offset)), ("length", str(length))):
                ref.external_data.add(key=key, value=val)
            wbytes += length
        fname = f"stage_{k}.onnx"
        (out / fname).write_bytes(m.SerializeToString())
        stages.append(StageFile(k, fname, inputs, outputs, lo, hi, wbytes))
    return stages
