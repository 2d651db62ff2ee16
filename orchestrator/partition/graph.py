"""Graph analysis for partitioning: topological order, free (constant) nodes, cut candidates.

The model is read WITHOUT its external weights: planning needs only names, shapes and sizes,
and reading a multi-GB weights file just to decide where to cut would dominate the run.

Vocabulary used across `orchestrator.partition`:

* `seq`: the non-constant nodes in topological order. Constant-foldable nodes (those that
  depend only on initializers and other constants: `Constant`, `Identity` of a weight, shape
  arithmetic on constants) are not in `seq`; they are free and are copied into every stage
  that consumes them.
* cut position `p` (1 <= p < len(seq)): stage boundary before `seq[p]`; the stage on the
  left holds `seq[:p]`. The *live set* at `p` is what has to travel across the cut: tensors
  produced before `p` (graph inputs included) and consumed at or after `p`, plus graph
  outputs already produced.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, shape_inference

from orchestrator.errors import UserError
from orchestrator.generation.decoder import state_pairs

# Initializers up to this size stay embedded in the copy used for shape inference (Reshape
# targets, axes, scalars: inference needs their values); bigger ones become typed inputs.
SMALL_TENSOR_BYTES = 1024
# Ops whose output changes from run to run: never treat them as foldable constants.
_NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial"}
# Rough cost of one output element of an op that is not a matmul/conv, in FLOPs.
ELEMENTWISE_FLOPS = 1.0


@cache
def elem_size(elem_type: int) -> int:
    """Bytes per element of an ONNX tensor type (strings counted as 8)."""
    if elem_type == TensorProto.STRING:
        return 8
    try:
        return int(np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).itemsize)
    except Exception:
        return 4


def tensor_nbytes(t: TensorProto) -> int:
    """Size of an initializer's data, from its dims (works without its data loaded)."""
    return math.prod(t.dims) * elem_size(t.data_type)


def _subgraph_inputs(node: onnx.NodeProto) -> list[str]:
    """Outer-scope names used inside a node's subgraphs (If/Loop/Scan bodies)."""
    out: list[str] = []
    for attr in node.attribute:
        graphs = list(attr.graphs) + ([attr.g] if attr.HasField("g") else [])
        for g in graphs:
            local = {i.name for i in g.input} | {t.name for t in g.initializer}
            for n in g.node:
                local.update(n.output)
            for n in g.node:
                for name in list(n.input) + _subgraph_inputs(n):
                    if name and name not in local and name not in out:
                        out.append(name)
    return out


def node_inputs(node: onnx.NodeProto) -> list[str]:
    """Every tensor a node reads: its explicit inputs and what its subgraphs capture."""
    names = [n for n in node.input if n]
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
        names += [n for n in _subgraph_inputs(node) if n not in names]
    return names


@dataclass
class ModelGraph:
    """A model's graph, analysed for cutting. Weights are not loaded."""

    path: Path
    model: onnx.ModelProto  # the source model, external data NOT loaded
    sha256: str
    order: list[int]  # topological order of all node indices
    const: list[bool]  # per node index: constant-foldable
    seq: list[int]  # node indices of the non-constant nodes, in topological order
    inputs: list[str]  # graph inputs (initializers excluded)
    outputs: list[str]
    initializers: dict[str, TensorProto]
    types: dict[str, onnx.TypeProto]  # symbolic types (batch dim kept symbolic)
    shapes1: dict[str, list[int]]  # shapes at batch 1, unknown dims as 1
    nbytes: dict[str, int]  # tensor bytes at batch 1
    prod: dict[str, int]  # tensor -> seq position of its producer (-1: graph input)
    last: dict[str, int]  # tensor -> last seq position consuming it (len(seq): a graph output)
    const_producer: dict[str, int]  # tensor -> node index of the constant node producing it
    cost: list[float]  # estimated FLOPs per seq position, batch 1
    live_bytes: list[int]  # live bytes at each cut position 0..len(seq) (0 and len(seq) are the ends)
    notes: list[str] = field(default_factory=list)
    # a decoder's cache: input -> output of the same layer and kind (generation.decoder). Stage state,
    # kept by the stage that reads and writes it: never in a live set, never sent
    state: dict[str, str] = field(default_factory=dict)

    @property
    def state_names(self) -> set[str]:
        return set(self.state) | set(self.state.values())

    @property
    def n(self) -> int:
        """Number of non-constant nodes (the blocks that are cut into stages)."""
        return len(self.seq)

    @property
    def candidates(self) -> range:
        """Cut positions: between any two consecutive non-constant nodes."""
        return range(1, self.n)

    def live_at(self, p: int) -> list[str]:
        """Tensors that must cross the cut at position p, in production order."""
        kept = self.state_names
        names = [t for t, a in self.prod.items() if a < p <= self.last[t] and t not in kept]
        return sorted(names, key=lambda t: (self.prod[t], t))

    def node(self, pos: int) -> onnx.NodeProto:
        return self.model.graph.node[self.seq[pos]]

    def weights_bytes(self, lo: int, hi: int) -> int:
        """Bytes of initializers a stage holding seq[lo:hi] needs (constants it copies included)."""
        return sum(tensor_nbytes(self.initializers[n]) for n in self.stage_initializers(lo, hi))

    def stage_consts(self, lo: int, hi: int) -> list[int]:
        """Indices of the constant nodes a stage holding seq[lo:hi] needs, transitively."""
        nodes = self.model.graph.node
        need: set[int] = set()
        stack = [name for pos in range(lo, hi) for name in node_inputs(nodes[self.seq[pos]])]
        while stack:
            name = stack.pop()
            i = self.const_producer.get(name)
            if i is not None and i not in need:
                need.add(i)
                stack.extend(node_inputs(nodes[i]))
        return sorted(need)

    def stage_initializers(self, lo: int, hi: int) -> list[str]:
        """Initializer names read by seq[lo:hi] and by the constant nodes it copies."""
        nodes = self.model.graph.node
        idx = [self.seq[p] for p in range(lo, hi)] + self.stage_consts(lo, hi)
        seen: dict[str, None] = {}
        for i in idx:
            for name in node_inputs(nodes[i]):
                if name in self.initializers:
                    seen[name] = None
        return list(seen)

    def max_activation(self, lo: int, hi: int) -> int:
        """Largest tensor a stage produces or receives, bytes at batch 1."""
        nodes = self.model.graph.node
        best = 0
        for p in range(lo, hi):
            nd = nodes[self.seq[p]]
            for name in list(nd.output) + list(nd.input):
                if name and name not in self.initializers:
                    best = max(best, self.nbytes.get(name, 0))
        return best


def _topo_order(nodes: list[onnx.NodeProto], available: set[str]) -> list[int]:
    """File order if it is already topological (the usual case), else Kahn's order by file index."""
    have = set(available)
    ok = True
    for nd in nodes:
        if any(x not in have for x in node_inputs(nd)):
            ok = False
            break
        have.update(o for o in nd.output if o)
    if ok:
        return list(range(len(nodes)))
    producer: dict[str, int] = {}
    for i, nd in enumerate(nodes):
        for o in nd.output:
            if o:
                producer[o] = i
    deps = [0] * len(nodes)
    users: list[list[int]] = [[] for _ in nodes]
    for i, nd in enumerate(nodes):
        srcs = {producer[x] for x in node_inputs(nd) if x not in available and x in producer}
        deps[i] = len(srcs)
        for s in srcs:
            users[s].append(i)
    heap = [i for i, d in enumerate(deps) if d == 0]
    heapq.heapify(heap)
    order: list[int] = []
    while heap:
        i = heapq.heappop(heap)
        order.append(i)
        for u in users[i]:
            deps[u] -= 1
            if deps[u] == 0:
                heapq.heappush(heap, u)
    if len(order) != len(nodes):
        raise UserError("the graph has a cycle or reads a tensor nothing produces", None, "graph")
    return order


def _value_info(name: str, t: TensorProto) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, t.data_type, list(t.dims))


def embedded(t: TensorProto, base: Path) -> TensorProto:
    """The initializer with its data inside (read from its external file into a copy if need be)."""
    if t.data_location != TensorProto.EXTERNAL:
        return t
    c = TensorProto()
    c.CopyFrom(t)
    onnx.external_data_helper.load_external_data_for_tensor(c, str(base))
    c.data_location = TensorProto.DEFAULT
    del c.external_data[:]
    return c


def _infer(model: onnx.ModelProto, inits: dict[str, TensorProto], base: Path, batch1: bool) -> onnx.ModelProto:
    """Shape inference on a light copy: big initializers replaced by typed inputs."""
    src = model.graph
    m = onnx.ModelProto(ir_version=model.ir_version)
    m.opset_import.extend(model.opset_import)
    m.functions.extend(model.functions)
    g = m.graph
    g.name = src.name
    g.node.extend(src.node)
    inputs = [i for i in src.input if i.name not in inits]
    for vi in inputs:
        v = g.input.add()
        v.CopyFrom(vi)
        if batch1 and v.type.HasField("tensor_type"):
            for d in v.type.tensor_type.shape.dim:
                if not d.HasField("dim_value"):
                    d.Clear()
                    d.dim_value = 1
    for name, t in inits.items():
        if tensor_nbytes(t) <= SMALL_TENSOR_BYTES:
            g.initializer.append(embedded(t, base))
        else:
            g.input.append(_value_info(name, t))
    g.output.extend(src.output)
    g.value_info.extend(src.value_info)
    try:
        return shape_inference.infer_shapes(m, data_prop=True)
    except Exception:
        try:
            return shape_inference.infer_shapes(m)
        except Exception:
            return m


def _all_types(m: onnx.ModelProto) -> Iterator[tuple[str, onnx.TypeProto]]:
    g = m.graph
    for vi in list(g.value_info) + list(g.output) + list(g.input):
        if vi.type.HasField("tensor_type"):
            yield vi.name, vi.type


def _shape1(tp: onnx.TypeProto) -> tuple[list[int], bool]:
    """Dims with unknowns as 1; the flag says whether any was unknown (or the rank was)."""
    tt = tp.tensor_type
    if not tt.HasField("shape"):
        return [], True
    dims, unknown = [], False
    for d in tt.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        else:
            dims.append(1)
            unknown = True
    return dims, unknown


def _flops(nd: onnx.NodeProto, shape: dict[str, list[int]]) -> float:
    """Rough FLOPs of one node at batch 1: matmuls and convs by their shapes, others per element."""
    outs = [shape.get(o) for o in nd.output if o]
    out_elems = float(sum(math.prod(s) for s in outs if s is not None))
    op = nd.op_type
    try:
        if op == "MatMul" or op == "MatMulInteger":
            a = shape[nd.input[0]]
            return 2.0 * out_elems * (a[-1] if a else 1)
        if op == "Gemm":
            a = shape[nd.input[0]]
            trans_a = any(at.name == "transA" and at.i for at in nd.attribute)
            k = a[0] if trans_a else a[-1]
            return 2.0 * out_elems * k
        if op in ("Conv", "ConvTranspose", "ConvInteger", "QLinearConv"):
            w = shape[nd.input[1] if op != "QLinearConv" else nd.input[3]]
            per = float(math.prod(w[1:])) if op != "ConvTranspose" else float(w[0] * math.prod(w[2:]))
            return 2.0 * out_elems * per
    except (KeyError, IndexError):
        pass
    return ELEMENTWISE_FLOPS * out_elems


def read_model(path: str | Path) -> tuple[onnx.ModelProto, str]:
    """Parse an ONNX file without its external data; UserError if it is missing or not ONNX."""
    p = Path(path)
    if not p.exists():
        raise UserError("file not found", str(p))
    if p.is_dir():
        raise UserError("is a folder, not an ONNX model", str(p))
    data = p.read_bytes()
    digest = hashlib.sha256()
    hasher = threading.Thread(target=digest.update, args=(data,))  # hashlib drops the GIL: hash while parsing
    hasher.start()
    try:
        model = onnx.load_model_from_string(data)
    except Exception:
        raise UserError("not an ONNX model (the file does not parse as one)", str(p)) from None
    finally:
        hasher.join()
    sha = digest.hexdigest()
    if not model.graph.node or not model.opset_import or model.ir_version <= 0:
        raise UserError("not an ONNX model (no graph, opset or IR version)", str(p))
    return model, sha


def analyse(model: onnx.ModelProto, path: str | Path, sha256: str = "") -> ModelGraph:
    """Analyse a parsed model: topology, constants, shapes, per-node cost and live bytes per cut."""
    path = Path(path)
    g = model.graph
    nodes = list(g.node)
    inits = {t.name: t for t in g.initializer}
    inputs = [i.name for i in g.input if i.name not in inits]
    outputs = [o.name for o in g.output]
    order = _topo_order(nodes, set(inputs) | set(inits))

    const = [False] * len(nodes)
    const_names: set[str] = set(inits)
    const_producer: dict[str, int] = {}
    for i in order:
        nd = nodes[i]
        ins = node_inputs(nd)
        if nd.op_type not in _NONDETERMINISTIC and all(x in const_names for x in ins):
            const[i] = True
            for o in nd.output:
                if o:
                    const_names.add(o)
                    const_producer[o] = i
    seq = [i for i in order if not const[i]]
    n = len(seq)

    notes: list[str] = []
    sym = _infer(model, inits, path.parent, batch1=False)
    one = _infer(model, inits, path.parent, batch1=True)
    types = dict(_all_types(sym))
    for vi in list(g.input) + list(g.output):  # declared types win: they carry the batch dim's name
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            types[vi.name] = vi.type
    shapes1: dict[str, list[int]] = {}
    unknown: list[str] = []
    for name, tp in _all_types(one):
        dims, unk = _shape1(tp)
        shapes1[name] = dims
        if unk:
            unknown.append(name)
    for name, t in inits.items():
        shapes1[name] = list(t.dims)
    sym_inputs = [
        i.name
        for i in g.input
        if i.name not in inits and any(not d.HasField("dim_value") for d in i.type.tensor_type.shape.dim[1:])
    ]
    if sym_inputs:
        notes.append(f"inputs {', '.join(sym_inputs)}: symbolic dims other than the batch taken as 1 for sizes")

    nbytes: dict[str, int] = {}
    for name, dims in shapes1.items():
        tp = types.get(name)
        et = tp.tensor_type.elem_type if tp is not None else TensorProto.FLOAT
        nbytes[name] = math.prod(dims) * elem_size(et)

    prod: dict[str, int] = {x: -1 for x in inputs}
    last: dict[str, int] = {}
    cost: list[float] = []
    for pos, i in enumerate(seq):
        nd = nodes[i]
        for x in node_inputs(nd):
            if x in prod:
                last[x] = pos
        for o in nd.output:
            if o:
                prod[o] = pos
        cost.append(_flops(nd, shapes1))
    for o in outputs:
        if o in prod:
            last[o] = n
    for x in list(prod):  # produced and never used: not live anywhere
        last.setdefault(x, prod[x])
    missing = [x for x in set(prod) if x not in nbytes]
    live_unknown = [x for x in missing + unknown if x in prod and last[x] > prod[x] and last[x] > 0]
    if live_unknown:
        shown = ", ".join(sorted(live_unknown)[:3]) + (" ..." if len(live_unknown) > 3 else "")
        notes.append(f"{len(live_unknown)} tensors have unknown dims (taken as 1 for sizes): {shown}")

    try:
        state = state_pairs(inputs, outputs)
    except ValueError as e:
        raise UserError(str(e), str(path), "model") from None
    kept = set(state) | set(state.values())
    for past, present in state.items():  # read and written by one node, else the cache could not stay there
        if past in last and present in prod and last[past] != prod[present]:
            raise UserError(f"cache input {past} is not read by the node that writes {present}", str(path), "model")
    diff = np.zeros(n + 2, dtype=np.int64)
    for x, a in prod.items():
        b = last[x]
        if b > a and x not in kept:
            diff[a + 1] += nbytes.get(x, 0)
            diff[b + 1] -= nbytes.get(x, 0)
    live_bytes = [int(v) for v in np.cumsum(diff)[: n + 1]]

    return ModelGraph(
        path=path,
        model=model,
        sha256=sha256,
        order=order,
        const=const,
        seq=seq,
        inputs=inputs,
        outputs=outputs,
        initializers=inits,
        types=types,
        shapes1=shapes1,
        nbytes=nbytes,
        prod=prod,
        last=last,
        const_producer=const_producer,
        cost=cost,
        live_bytes=live_bytes,
        notes=notes,
        state=state,
    )


def load_graph(path: str | Path) -> ModelGraph:
    """Read and analyse a model file, weights left on disk."""
    model, sha = read_model(path)
    return analyse(model, path, sha)


def prefix(values: Iterable[float]) -> list[float]:
    """Prefix sums with a leading 0: prefix(c)[p] is the cost of seq[:p]."""
    out = [0.0]
    for v in values:
        out.append(out[-1] + v)
    return out
