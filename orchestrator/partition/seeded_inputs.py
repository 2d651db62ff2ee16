"""Seeded random inputs for a model: the same tensors for the same seed, whoever asks.

The symbolic first dimension is the batch, other symbolic dimensions 1; floats are N(0, 1)
(image-like), booleans 0 or 1, integers 0..9 (valid ids and positions for any vocabulary).

A decoder with a KV cache (`past_key_values.N.key/value` inputs) takes `decode_inputs` instead:
one decode step at a given past length, the point its per-token cost is measured at.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from orchestrator.generation.decoder import ATTENTION_MASK, CACHE_AXIS, INPUT_IDS, POSITION_IDS, present_name


class InputSpec(NamedTuple):
    """One model input: its name, element type, and shape (a dimension's name or None where symbolic)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...]


def session_inputs(sess: ort.InferenceSession) -> list[InputSpec]:
    """The inputs an ONNX Runtime session declares (its types read as "tensor(float)" and the like)."""
    return [
        InputSpec(
            i.name,
            np.dtype(helper.tensor_dtype_to_np_dtype(TensorProto.DataType.Value(i.type[len("tensor(") : -1].upper()))),
            tuple(i.shape),
        )
        for i in sess.get_inputs()
    ]


def onnx_inputs(types: Iterable[tuple[str, onnx.TypeProto]]) -> list[InputSpec]:
    """Inputs from their ONNX types (a graph's declared inputs), by name."""
    out = []
    for name, tp in types:
        tt = tp.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim)
        out.append(InputSpec(name, np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)), dims))
    return out


def seeded_inputs(specs: Iterable[InputSpec], batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """One array per input, drawn in the given order from a generator seeded with `seed`."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for spec in specs:
        shape = [d if isinstance(d, int) else (batch if k == 0 else 1) for k, d in enumerate(spec.shape)]
        if np.issubdtype(spec.dtype, np.floating):
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        elif spec.dtype == np.bool_:
            feeds[spec.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            feeds[spec.name] = rng.integers(0, 10, shape).astype(spec.dtype)
    return feeds


def has_cache(names: Iterable[str]) -> bool:
    """Do these inputs carry a decoder's cache (`past_key_values.N.key/value`)?"""
    return any(present_name(x) is not None for x in names)


def decode_inputs(
    specs: Iterable[InputSpec], past_tokens: int, seed: int = 0, new_tokens: int = 1
) -> dict[str, np.ndarray]:
    """One step of one sequence taking `new_tokens` after `past_tokens` (a decode step: 1; a prefill:
    the prompt after 0): input_ids (1, new) in 0..9, attention_mask ones (1, past + new),
    position_ids [[past .. past + new - 1]], each cache input (1, kv heads, past, head dim) N(0, 1);
    any other input as `seeded_inputs` draws it at batch 1. Drawn in the given order from a generator
    seeded with `seed`."""
    if past_tokens < 0:
        raise ValueError(f"past_tokens must be 0 or more, got {past_tokens}")
    if new_tokens < 1:
        raise ValueError(f"new_tokens must be 1 or more, got {new_tokens}")
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for spec in specs:
        if spec.name == INPUT_IDS:
            feeds[spec.name] = rng.integers(0, 10, (1, new_tokens)).astype(spec.dtype)
        elif spec.name == ATTENTION_MASK:
            feeds[spec.name] = np.ones((1, past_tokens + new_tokens), spec.dtype)
        elif spec.name == POSITION_IDS:
            feeds[spec.name] = np.arange(past_tokens, past_tokens + new_tokens, dtype=spec.dtype).reshape(1, -1)
        elif present_name(spec.name) is not None:
            shape = [
                1 if k == 0 else past_tokens if k == CACHE_AXIS else (d if isinstance(d, int) else 1)
                for k, d in enumerate(spec.shape)
            ]
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        else:
            feeds.update(seeded_inputs([spec], 1, int(rng.integers(2**31))))
    return feeds
