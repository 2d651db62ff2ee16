"""How much memory a node running a stage holds: one model for the planner, the profiler and plan.json.

What is predicted is the node's *resident anonymous* memory: what its cgroup cannot reclaim, what
the memory limit kills it for, and what a run reports as `peak_resident_bytes`. Page cache (the
model files a node reads, shared and reclaimable) is reported apart and not predicted.

Fitted to real node processes (ONNX Runtime 1.32, one intra-op thread, the runtimes' glibc
settings and the node's own two malloc arenas; tests/test_memory_model.py checks it against every
fixture model and a built ViT, local and Docker), a node holds:

- itself: Python, gRPC and ONNX Runtime loaded, serving, idle (`NODE_BYTES`);
- ONNX Runtime's graph and kernels: about a hundred bytes per node of the stage file;
- weights: ONNX Runtime maps the stage's external weights file. By default it pre-packs every
  MatMul/Gemm weight into its own copy and keeps the other weights in memory too (about 1.0x the
  weights, the mapping released); Conv weights are reordered into copies of their own in any mode
  (`CONV_WEIGHT_FACTOR` of them resident, measured). `lean` (session.disable_prepacking) computes
  on the mapped file: the other weights are page cache then, not resident;
- activations: ONNX Runtime's CPU arena, from the largest set of activations alive at once
  (outputs written in place and reshapes counted as ONNX Runtime plans them): its largest
  activation `LARGEST_ACTIVATION_FACTOR` times, the rest `ACTIVATION_FACTOR` times (many
  tensors of several sizes churn through the arena);
- frames: the tensors of the frames it is receiving, queueing, computing and sending, and the
  gRPC and glibc buffers they went through (`FRAME_FACTOR` times a frame's bytes in and out), and
  a loaded stage's fixed share (`STAGE_BYTES`);
- on a source device that does not run stage 0, the driver's stream besides
  (`SOURCE_FRAME_FACTOR` times the model's input bytes, plus `SOURCE_BYTES`, from a source node
  that runs no stage); running stage 0, the driver's frames are that stage's own;
- a decoder's KV cache: the stage keeps its own layers' cache per sequence (never sent), so it
  holds `cache_per_token` bytes for every token of every sequence in flight, counted at the job's
  longest context (`cache_tokens`: context per sequence times sequences).

Measured on ViT-B/16 (330 MiB of weights): whole in one node, 394 MiB resident by default and
68 MiB lean (the weights in the page cache instead); cut in four on edge4 under Docker, 145-156
MiB per stage by default (81-84 MiB of weights each), 64-66 MiB lean. Lean computes
`LEAN_TIME_FACTOR` slower: a factor measured on a ViT-B quarter with one thread (1.11-1.14 here,
fastest of interleaved runs), not a lean profile; smaller matrices lose less (hf_vit_tiny ~1.07).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    from orchestrator.partition.graph import ModelGraph

MemoryMode = Literal["default", "lean"]
MEMORY_MODES: tuple[MemoryMode, ...] = ("default", "lean")

MIB = 1024**2
NODE_BYTES = 32 * MIB  # an idle node: Python, gRPC, numpy and ONNX Runtime loaded
STAGE_BYTES = 22 * MIB // 10  # a loaded stage's fixed share: its session, worker and sender threads
GRAPH_BYTES_PER_NODE = 128  # ONNX Runtime's graph, kernels and plans, per node of the stage file
CONV_WEIGHT_FACTOR = 0.6  # resident bytes per byte of Conv weights, in either mode (reordered copies)
ACTIVATION_FACTOR = 6.8  # arena bytes per byte alive at the peak beside the largest activation
LARGEST_ACTIVATION_FACTOR = 1.9  # arena bytes per byte of the largest activation
FRAME_FACTOR = 8.7  # resident bytes per byte of a frame in and out (queued, decoded, encoded, gRPC)
SOURCE_FRAME_FACTOR = 16.0  # the driver's stream on a source that does not run stage 0: per input byte
SOURCE_BYTES = 2 * MIB
LEAN_TIME_FACTOR = 1.12  # compute time without pre-packed weights (ViT-B, one thread: 298 vs 265 ms)
MEMORY_HEADROOM = 0.10  # share of a device's memory the planner leaves free

# Ops whose output ONNX Runtime writes over an input that dies there (same size), and ops whose
# output is a view of their input: neither takes new arena memory.
_IN_PLACE = frozenset(
    "Relu LeakyRelu Sigmoid Tanh Erf Gelu FastGelu Add Sub Mul Div Sqrt Neg Exp Log Abs Clip "
    "HardSigmoid HardSwish Cast Dropout Softmax BatchNormalization LayerNormalization".split()
)
_ALIAS = frozenset("Reshape Flatten Squeeze Unsqueeze Identity".split())
_CONV = frozenset("Conv ConvTranspose ConvInteger QLinearConv FusedConv".split())


@dataclass(frozen=True)
class StageNeeds:
    """What the memory model reads off the graph for one stage (bytes at batch 1)."""

    weights: int  # initializers the stage holds (shared ones once)
    conv_weights: int  # of which read by Conv nodes (copied whatever the mode)
    nodes: int  # nodes of the stage file: its ops and the constants it copies
    activations: int  # largest set of activations alive at once
    largest_activation: int  # the largest activation among them
    frame_bytes: int  # a frame's tensors in plus out
    cache_per_token: int = 0  # a decoder's KV cache bytes per token of its own layers (one sequence)


@dataclass(frozen=True)
class StageMemory:
    """Predicted resident (anonymous) bytes of a node running one stage, by part."""

    mode: MemoryMode
    node: float
    graph: float
    weights: float
    activations: float
    frames: float
    source: float
    mapped_weights: float  # weights read from the mapped file (page cache, not resident): lean
    cache: float = 0.0  # a decoder's KV cache at the job's longest context, every sequence in flight

    @property
    def total(self) -> float:
        return self.node + self.graph + self.weights + self.activations + self.frames + self.source + self.cache


def breakdown(
    needs: StageNeeds,
    mode: MemoryMode = "default",
    *,
    batch: int = 1,
    input_bytes: int | None = None,
    cache_tokens: int = 0,
) -> StageMemory:
    """The node's resident memory for a stage, by part. `input_bytes` (the model's inputs at batch
    1) when the device is also the run's source: it takes the driver's stream besides.
    `cache_tokens`: a generation job's cache tokens held at once (context per sequence times
    sequences), each taking the stage's `cache_per_token`."""
    conv = CONV_WEIGHT_FACTOR * needs.conv_weights
    if mode == "lean":
        held, mapped = conv, needs.weights - needs.conv_weights
    else:
        held, mapped = needs.weights - needs.conv_weights + conv, 0.0
    return StageMemory(
        mode=mode,
        node=float(NODE_BYTES),
        graph=float(GRAPH_BYTES_PER_NODE * needs.nodes),
        weights=float(held),
        activations=(
            ACTIVATION_FACTOR * (needs.activations - needs.largest_activation)
            + LARGEST_ACTIVATION_FACTOR * needs.largest_activation
        )
        * batch,
        frames=FRAME_FACTOR * needs.frame_bytes * batch + STAGE_BYTES,
        source=0.0 if input_bytes is None else source_bytes(input_bytes, batch),
        mapped_weights=float(mapped),
        cache=float(needs.cache_per_token * cache_tokens),
    )


def resident_bytes(
    needs: StageNeeds,
    mode: MemoryMode = "default",
    *,
    batch: int = 1,
    input_bytes: int | None = None,
    cache_tokens: int = 0,
) -> float:
    """Predicted peak resident (anonymous) bytes of a node running the stage."""
    return breakdown(needs, mode, batch=batch, input_bytes=input_bytes, cache_tokens=cache_tokens).total


def source_bytes(input_bytes: int, batch: int = 1) -> float:
    """What the driver's stream adds to the source device's node."""
    return SOURCE_FRAME_FACTOR * input_bytes * batch + SOURCE_BYTES


def usable_bytes(memory: float, headroom: float = MEMORY_HEADROOM) -> float:
    return memory * (1.0 - headroom)


def format_bytes(n: float) -> str:
    """A size for messages: bytes, KiB, MiB or GiB, whichever reads best."""
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB"):
        n /= 1024
        if n < 1024:
            return f"{n:.1f} {unit}"
    return f"{n / 1024:.1f} GiB"


# -- reading the graph ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Buffers:
    """The arena buffers of a whole model as ONNX Runtime plans them: each from the seq position of
    the node that first writes it to the last position that reads it (or the end, for an output)."""

    start: np.ndarray
    end: np.ndarray
    size: np.ndarray
    conv_weights: frozenset[str]


_CACHE: dict[int, tuple[ModelGraph, _Buffers]] = {}


def _buffers(graph: ModelGraph) -> _Buffers:
    hit = _CACHE.get(id(graph))
    if hit is not None and hit[0] is graph:
        return hit[1]
    nodes = graph.model.graph.node
    n = graph.n
    buf: dict[str, int] = {}
    start: list[int] = []
    end: list[int] = []
    size: list[int] = []
    conv: set[str] = set()

    def last(t: str) -> int:
        return n if t in graph.outputs else graph.last.get(t, -1)

    for p in range(n):
        nd = nodes[graph.seq[p]]
        if nd.op_type in _CONV:
            conv.update(_weights_behind(graph, [x for x in nd.input[1:] if x]))
        ins = [x for x in nd.input if x in buf]
        for o in nd.output:
            if not o:
                continue
            nbytes = graph.nbytes.get(o, 0)
            b = None
            if nd.op_type in _ALIAS and ins:
                b = buf[ins[0]]
            elif nd.op_type in _IN_PLACE:
                b = next((buf[x] for x in ins if size[buf[x]] == nbytes and last(x) == p and end[buf[x]] <= p), None)
            if b is None:
                b = len(size)
                start.append(p)
                end.append(p)
                size.append(nbytes)
            buf[o] = b
            end[b] = max(end[b], last(o))
    out = _Buffers(
        np.array(start, dtype=np.int64), np.array(end, dtype=np.int64), np.array(size, dtype=float), frozenset(conv)
    )
    if len(_CACHE) > 8:
        _CACHE.clear()
    _CACHE[id(graph)] = (graph, out)
    return out


def _weights_behind(graph: ModelGraph, names: list[str]) -> set[str]:
    """Initializers a tensor is, or is computed from through constant nodes (Identity of a weight)."""
    from orchestrator.partition.graph import node_inputs

    nodes = graph.model.graph.node
    found: set[str] = set()
    stack = list(names)
    seen: set[str] = set()
    while stack:
        t = stack.pop()
        if t in seen:
            continue
        seen.add(t)
        if t in graph.initializers:
            found.add(t)
        elif t in graph.const_producer:
            stack.extend(node_inputs(nodes[graph.const_producer[t]]))
    return found


def activation_peaks(graph: ModelGraph, lo: int) -> tuple[np.ndarray, np.ndarray]:
    """(peaks, largest): for a stage holding seq[lo:lo+k+1], peaks[k] is the largest set of
    activations alive at once (its inputs excluded: they arrive in the frame) and largest[k] the
    largest activation it writes. Cumulative, so any end of the stage reads off them."""
    bf = _buffers(graph)
    n = graph.n
    if lo >= n:
        return np.zeros(0), np.zeros(0)
    keep = bf.start >= lo
    diff = np.zeros(n + 2)
    np.add.at(diff, bf.start[keep], bf.size[keep])
    np.add.at(diff, np.minimum(bf.end[keep], n) + 1, -bf.size[keep])
    alive = np.cumsum(diff)[lo:n]
    biggest = np.zeros(n + 1)
    np.maximum.at(biggest, bf.start[keep], bf.size[keep])
    return np.maximum.accumulate(alive), np.maximum.accumulate(biggest[lo:n])


def conv_weights(graph: ModelGraph) -> frozenset[str]:
    """Initializers read by Conv nodes (directly or through constant nodes)."""
    return _buffers(graph).conv_weights


def cache_readers(graph: ModelGraph) -> dict[str, list[int]]:
    """Each cache input of a decoder and the seq positions of the nodes that read it."""
    from orchestrator.partition.graph import node_inputs

    if not graph.state:
        return {}
    out: dict[str, list[int]] = {x: [] for x in graph.state}
    nodes = graph.model.graph.node
    for p in range(graph.n):
        for x in node_inputs(nodes[graph.seq[p]]):
            if x in out and p not in out[x]:
                out[x].append(p)
    return out


def cache_token_bytes(graph: ModelGraph, names: Iterable[str]) -> int:
    """KV cache bytes one token takes in the named cache inputs, for one sequence: each tensor's
    dims but the batch and the token axis (batch, kv heads, tokens, head dim), times its element size."""
    from orchestrator.generation.decoder import CACHE_AXIS
    from orchestrator.partition.graph import elem_size

    total = 0
    for x in names:
        dims = graph.shapes1.get(x, [])
        tp = graph.types.get(x)
        size = elem_size(tp.tensor_type.elem_type) if tp is not None else 4
        total += math.prod(d for k, d in enumerate(dims) if k not in (0, CACHE_AXIS)) * size
    return total


def stage_cache(graph: ModelGraph, lo: int, hi: int) -> list[str]:
    """The cache inputs a stage holding seq[lo:hi] reads, and so keeps."""
    return [x for x, ps in cache_readers(graph).items() if any(lo <= p < hi for p in ps)]


def stage_needs(graph: ModelGraph, lo: int, hi: int) -> StageNeeds:
    """The memory model's inputs for a stage holding seq[lo:hi]."""
    from orchestrator.partition.graph import tensor_nbytes

    names = graph.stage_initializers(lo, hi)
    conv = conv_weights(graph)
    peaks, largest = activation_peaks(graph, lo)
    return StageNeeds(
        weights=sum(tensor_nbytes(graph.initializers[x]) for x in names),
        conv_weights=sum(tensor_nbytes(graph.initializers[x]) for x in names if x in conv),
        nodes=(hi - lo) + len(graph.stage_consts(lo, hi)),
        activations=int(peaks[hi - lo - 1]) if hi > lo else 0,
        largest_activation=int(largest[hi - lo - 1]) if hi > lo else 0,
        frame_bytes=graph.live_bytes[lo] + graph.live_bytes[hi],
        cache_per_token=cache_token_bytes(graph, stage_cache(graph, lo, hi)),
    )
