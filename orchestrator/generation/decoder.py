"""What a decoder model takes and gives, read off its graph: the HuggingFace/optimum names.

Inputs `input_ids`, `attention_mask`, `position_ids` (the last two optional) and
`past_key_values.N.key/value`; outputs `logits` and `present.N.key/value`. A cache input and the
output of the same N and kind are one piece of *state*: the output of one step is the input of the
next step of the same sequence. Cache tensors are (batch, kv heads, tokens, head dim): the
sequence axis is 2 and one token of a layer's key or value takes `token_bytes` of it."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from common.decoding import CACHE_AXIS, LOGITS, NEXT_TOKEN, greedy_token
from orchestrator.errors import UserError

__all__ = ["CACHE_AXIS", "LOGITS", "NEXT_TOKEN", "DecoderIO", "greedy_token", "present_name", "state_pairs"]

INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
POSITION_IDS = "position_ids"
_PAST = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")


def present_name(past: str) -> str | None:
    """The output that feeds a cache input at the next step (`past_key_values.3.key` -> `present.3.key`)."""
    m = _PAST.match(past)
    return f"present.{m.group(1)}.{m.group(2)}" if m else None


def state_pairs(inputs: list[str], outputs: list[str]) -> dict[str, str]:
    """Cache input -> cache output for a graph's inputs and outputs; {} for a model without a cache.

    A cache input without its output (or the reverse) cannot be carried from step to step: an error."""
    pairs: dict[str, str] = {}
    for name in inputs:
        present = present_name(name)
        if present is None:
            continue
        if present not in outputs:
            raise ValueError(f"cache input {name} has no output {present}")
        pairs[name] = present
    orphans = [o for o in outputs if o.startswith("present.") and o not in pairs.values()]
    if orphans:
        raise ValueError(f"cache output(s) {', '.join(orphans[:3])} have no past_key_values input")
    return pairs


def _dims(tp: onnx.TypeProto) -> tuple[int | None, ...]:
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in tp.tensor_type.shape.dim)


@dataclass(frozen=True)
class DecoderIO:
    """A decoder's interface: its state pairs, cache geometry, vocabulary and context."""

    state: dict[str, str]  # cache input -> cache output
    cache_dims: dict[str, tuple[int | None, ...]]  # cache input -> its declared dims
    cache_dtype: dict[str, np.dtype]
    vocab: int | None  # the logits' last dim where declared
    context: int | None  # the longest sequence the model takes (its rotary/position table), where known
    has_mask: bool
    has_positions: bool

    @classmethod
    def of(cls, model: onnx.ModelProto, path: str = "") -> DecoderIO:
        """Read from a model (weights need not be loaded); UserError where it is no decoder with a cache."""
        g = model.graph
        inits = {t.name for t in g.initializer}
        ins = {i.name: i for i in g.input if i.name not in inits}
        outs = {o.name: o for o in g.output}
        if INPUT_IDS not in ins or LOGITS not in outs:
            raise UserError(
                f"a generation job needs a decoder with inputs {INPUT_IDS} and output {LOGITS}", path, "model"
            )
        try:
            state = state_pairs(list(ins), list(outs))
        except ValueError as e:
            raise UserError(str(e), path, "model") from None
        if not state:
            raise UserError(
                "the model has no cache inputs (past_key_values.N.key/value): it cannot generate token by token",
                path,
                "model",
            )
        dims = {n: _dims(ins[n].type) for n in state}
        bad = [n for n, d in dims.items() if len(d) != 4]
        if bad:
            raise UserError(f"cache input {bad[0]} is not (batch, heads, tokens, head dim)", path, "model")
        dtypes = {n: np.dtype(helper.tensor_dtype_to_np_dtype(ins[n].type.tensor_type.elem_type)) for n in state}
        logits = _dims(outs[LOGITS].type)
        return cls(
            state=state,
            cache_dims=dims,
            cache_dtype=dtypes,
            vocab=logits[-1] if logits else None,
            context=_context(model),
            has_mask=ATTENTION_MASK in ins,
            has_positions=POSITION_IDS in ins,
        )

    def token_bytes(self, names: list[str] | None = None) -> int:
        """Cache bytes one token adds, over the named cache inputs (all by default), at batch 1."""
        total = 0
        for n in self.state if names is None else names:
            d = self.cache_dims[n]
            total += (
                math.prod(x or 1 for k, x in enumerate(d) if k not in (0, CACHE_AXIS)) * self.cache_dtype[n].itemsize
            )
        return total

    def empty_cache(self, names: list[str], batch: int = 1) -> dict[str, np.ndarray]:
        """Zero-token caches for a sequence's first step (prefill)."""
        out = {}
        for n in names:
            shape = [batch if k == 0 else 0 if k == CACHE_AXIS else (x or 1) for k, x in enumerate(self.cache_dims[n])]
            out[n] = np.zeros(shape, self.cache_dtype[n])
        return out

    def step_feeds(self, ids: list[int], past_tokens: int) -> dict[str, np.ndarray]:
        """The non-cache inputs of one step of one sequence: `ids` new tokens after `past_tokens`."""
        n = len(ids)
        feeds = {INPUT_IDS: np.asarray([ids], np.int64)}
        if self.has_mask:
            feeds[ATTENTION_MASK] = np.ones((1, past_tokens + n), np.int64)
        if self.has_positions:
            feeds[POSITION_IDS] = np.arange(past_tokens, past_tokens + n, dtype=np.int64)[None]
        return feeds


CONTEXT_KEY = "max_position_embeddings"  # metadata a model may carry: the longest sequence it takes


def _context(model: onnx.ModelProto) -> int | None:
    for p in model.metadata_props:
        if p.key == CONTEXT_KEY and p.value.isdigit():
            return int(p.value)
    return None
