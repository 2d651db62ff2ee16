"""Measuring a decoder at one decode step: the point its per-token cost is taken at.

A decoder's cost per output token is that of one decode step (one new token) after some past
tokens: attention reads the whole cache, so the step grows with the past. Profiles and stage
measurements of a decoder take one step at `past_tokens` (for a generation job, the mean context
over its decode: the longest prompt plus half of max_new_tokens), and the profile cache keys
them by it, so that a figure measured at one point is never read for another.

In a run each stage keeps its cache on its own device; a measured stage must not take it in its
frames instead (megabytes a step, decoded by the node and, for a stage measured over a link, sent
over it). So the files a node measures hold the cache inside: each cache input becomes a
constant of the step's shape (ONNX Runtime folds it once, as a node keeps a sequence's cache
between steps), and the cache outputs are no longer asked for. The attention computes over as
many past tokens as in the run; its values are zeros, which cost the same.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from orchestrator.generation.decoder import CACHE_AXIS, present_name
from orchestrator.partition.stage_files import StageFile


def decode_point(decoder: bool, past_tokens: int | None) -> int | None:
    """The past length a model is measured at: None for a model without a cache, else `past_tokens`
    (0, a step from an empty cache, where none is given)."""
    if not decoder:
        return None
    if past_tokens is not None and past_tokens < 0:
        raise ValueError(f"past_tokens must be 0 or more, got {past_tokens}")
    return past_tokens or 0


def hold_cache(src: Path, dst: Path, past_tokens: int) -> tuple[list[str], list[str]]:
    """Write `dst`: the stage file `src` with each cache input held inside as a constant of
    (1, kv heads, past_tokens, head dim), its cache outputs left out. `dst` must sit in `src`'s
    folder (the weights it references resolve there). Returns its inputs and outputs."""
    m = onnx.load(str(src), load_external_data=False)
    g = m.graph
    held = [vi for vi in g.input if present_name(vi.name) is not None]
    presents = {present_name(vi.name) for vi in held}
    kept_in = [vi for vi in g.input if vi not in held]
    kept_out = [vi for vi in g.output if vi.name not in presents]
    nodes = []
    for vi in held:
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        shape = [1 if k == 0 else past_tokens if k == CACHE_AXIS else (d or 1) for k, d in enumerate(dims)]
        shape_name = f"{vi.name}/held_shape"
        g.initializer.append(numpy_helper.from_array(np.array(shape, np.int64), shape_name))
        zero = numpy_helper.from_array(np.zeros(1, helper.tensor_dtype_to_np_dtype(tt.elem_type)), "value")
        nodes.append(helper.make_node("ConstantOfShape", [shape_name], [vi.name], name=f"{vi.name}/held", value=zero))
    rest = list(g.node)
    del g.node[:]
    g.node.extend([*nodes, *rest])
    del g.input[:]
    g.input.extend(kept_in)
    del g.output[:]
    g.output.extend(kept_out)
    dst.unlink(missing_ok=True)  # a hard link (a plan's files in a workspace) is replaced, not written through
    dst.write_bytes(m.SerializeToString())
    os.chmod(dst, 0o644)  # the node may run as another user
    return [vi.name for vi in kept_in], [vi.name for vi in kept_out]


def held_name(model: str, past_tokens: int, prefix: str = "") -> str:
    """The file name of a stage file's variant holding its cache at `past_tokens`."""
    stem = model[: -len(".onnx")] if model.endswith(".onnx") else model
    return f"{prefix}{stem}.past{past_tokens}.onnx"


def holding_cache(files: list[StageFile], folder: Path, past_tokens: int, prefix: str = "") -> list[StageFile]:
    """Block or stage files in `folder` as a node measures them at `past_tokens`: those that read a
    cache replaced by variants holding it (written beside them, their names after `prefix`), the
    others as they are."""
    out = []
    for f in files:
        if not any(present_name(x) is not None for x in f.inputs):
            out.append(f)
            continue
        name = held_name(f.model, past_tokens, prefix)
        inputs, outputs = hold_cache(Path(folder) / f.model, Path(folder) / name, past_tokens)
        out.append(dataclasses.replace(f, model=name, inputs=inputs, outputs=outputs))
    return out
