"""A GPT-2 decoder graph in the shape `optimum-cli export onnx --task text-generation-with-past`
gives one, built with onnx and numpy alone (no torch), seeded weights.

What makes it unlike the Llama-style decoder of orchestrator/models/gpt.py, and as the export has it:

- names and dims: `input_ids` (batch_size x sequence_length), the cache inputs next (the exporter
  orders inputs by `GPT2LMHeadModel.forward`'s parameters), then `attention_mask`
  (batch_size x "past_sequence_length + 1") and `position_ids`; `past_key_values.N.key/value`
  (batch_size x heads x past_sequence_length x head dim) -> `logits`, `present.N.key/value`
  (batch_size x heads x "past_sequence_length + 1" x head dim);
- opset 14: LayerNorm (with bias) spelled out as ReduceMean/Sub/Pow/Sqrt/Div/Mul/Add; learned
  position embeddings (`wpe` gathered by position_ids); Conv1D layers as MatMul + Add; the fused
  `c_attn` projection split in three; the "gelu_new" (tanh) MLP;
- attention as GPT-2's eager code: the cache concatenated on axis -2, the causal mask sliced out of
  each layer's `attn.bias` table (positions x positions) from the key and query lengths, then the
  additive padding mask `(1 - attention_mask) * min` built once before the blocks;
- the output projection tied to the token embedding: `lm_head` multiplies by the transpose of
  `transformer.wte.weight`, so the first and the last stage read one initializer;
- node names as the exporter writes them: `/transformer/h.0/attn/...`, blocks ending in
  `/transformer/h.{i}/Add_1_output_0`.

Weights are wider than GPT-2's 0.02 for the reason gpt.py gives (the greedy decode must move with
the context): projections by 1/sqrt(fan-in), position embeddings unit normal, and the token
embedding at a quarter of that: with the output projection tied to it, a token embedding that
dominates the residual stream makes each step choose the token it was fed, and one much smaller
leaves the positions alone to decide.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

from orchestrator.generation.decoder import CONTEXT_KEY
from orchestrator.models.onnx_builder import GraphBuilder, save_model

OPSET = 14
EPS = 1e-5
MIN = float(np.finfo(np.float32).min)  # what torch.finfo(float32).min masks with
WTE_STD = 0.25
BIAS_STD = 0.1


def build_optimum_gpt2(
    path: str | Path,
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    vocab: int = 97,
    positions: int = 64,
    seed: int = 0,
    *,
    past_length_from_cache: bool = False,
) -> Path:
    """Write the GPT-2 graph to `path`; `positions` is its context (n_positions), also written as
    the metadata `max_position_embeddings` that the testbed reads a decoder's context from.

    `past_length_from_cache`: take the past length from `past_key_values.0.key`'s shape once, before
    the blocks, as newer transformers do for `cache_position` (`past_key_values.get_seq_length()`),
    instead of from each layer's key and query lengths: layer 0's cache input then has a second
    reader, far from the node that writes its output."""
    if hidden % heads:
        raise ValueError("hidden must be a multiple of heads")
    if min(layers, heads, vocab, positions) < 1:
        raise ValueError("layers, heads, vocab and positions must be at least 1")
    path = Path(path)
    hd, inner = hidden // heads, 4 * hidden
    bld = GraphBuilder(np.random.default_rng(seed), std=1.0)
    w, c, op = bld.weight, bld.const, bld.op

    def bias(name: str, size: int) -> str:
        return w(name, (size,), std=BIAS_STD)

    def layer_norm(x: str, scope: str, prefix: str) -> str:
        """LayerNorm over the last axis with weight and bias, as opset-14 exports spell it."""
        mean = op("ReduceMean", scope, "ReduceMean", [x], axes=[-1], keepdims=1)
        d = op("Sub", scope, "Sub", [x, mean])
        var = op("ReduceMean", scope, "ReduceMean_1", [op("Pow", scope, "Pow", [d, two])], axes=[-1], keepdims=1)
        y = op("Div", scope, "Div", [d, op("Sqrt", scope, "Sqrt", [op("Add", scope, "Add", [var, eps])])])
        y = op("Mul", scope, "Mul", [y, w(f"{prefix}.weight", (hidden,), "ones")])
        return op("Add", scope, "Add_1", [y, bias(f"{prefix}.bias", hidden)])

    def conv1d(x: str, scope: str, prefix: str, fan_in: int, fan_out: int) -> str:
        """transformers' Conv1D: x @ W (fan_in x fan_out) + b."""
        y = op("MatMul", scope, "MatMul", [x, w(f"{prefix}.weight", (fan_in, fan_out), std=fan_in**-0.5)])
        return op("Add", scope, "Add", [y, bias(f"{prefix}.bias", fan_out)])

    two = c("two", [2.0], np.float32)
    eps = c("eps", [EPS], np.float32)
    one_f = c("one_f", 1.0, np.float32)
    min_f = c("min_f", MIN, np.float32)
    root_hd = c("root_head_dim", float(np.sqrt(hd)), np.float32)
    half, gelu_c, gelu_k = c("half", 0.5, np.float32), c("gelu_c", 0.044715, np.float32), c("three", 3.0, np.float32)
    gelu_s = c("gelu_s", float(np.sqrt(2.0 / np.pi)), np.float32)
    split3 = c("split3", [hidden, hidden, hidden])
    heads_shape = c("heads_shape", [0, 0, heads, hd])
    merge_shape = c("merge_shape", [0, 0, hidden])
    axis2, axis3 = c("axis2", [2]), c("axis3", [3])
    axes12 = c("axes12", [1, 2])
    idx2, zero_1d = c("idx2", 2), c("zero_1d", [0])
    axis0 = c("axis0", [0])
    causal = np.tril(np.ones((positions, positions), dtype=bool))[None, None]

    s = "/transformer"
    wte = w("transformer.wte.weight", (vocab, hidden), std=WTE_STD)
    tok = op("Gather", f"{s}/wte", "Gather", [wte, "input_ids"], axis=0)
    pos = op("Gather", f"{s}/wpe", "Gather", [w("transformer.wpe.weight", (positions, hidden)), "position_ids"], axis=0)
    x = op("Add", s, "Add", [tok, pos])
    # the padding mask, once for every layer: (1 - mask[:, None, None, :]) * min, (batch, 1, 1, total)
    m = op("Cast", s, "Cast", [op("Unsqueeze", s, "Unsqueeze", ["attention_mask", axes12])], to=TensorProto.FLOAT)
    pad = op("Mul", s, "Mul", [op("Sub", s, "Sub", [one_f, m]), min_f])
    if past_length_from_cache:
        seen_tokens = op("Gather", s, "Gather", [op("Shape", s, "Shape", ["past_key_values.0.key"]), idx2], axis=0)
        first_row = op("Unsqueeze", s, "Unsqueeze_1", [seen_tokens, axis0])

    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch_size", "sequence_length", vocab])]
    for i in range(layers):
        L, b = f"transformer.h.{i}", f"{s}/h.{i}"
        a = f"{b}/attn"
        h = layer_norm(x, f"{b}/ln_1", f"{L}.ln_1")
        qkv = conv1d(h, f"{a}/c_attn", f"{L}.attn.c_attn", hidden, 3 * hidden)
        q, k, v = (f"{a}/Split_output_{j}" for j in range(3))
        bld.nodes.append(helper.make_node("Split", [qkv, split3], [q, k, v], name=f"{a}/Split", axis=2))
        q, k, v = (
            op("Transpose", a, f"Transpose{t}", [op("Reshape", a, f"Reshape{t}", [y, heads_shape])], perm=[0, 2, 1, 3])
            for t, y in (("", q), ("_1", k), ("_2", v))
        )
        past_k, past_v = f"past_key_values.{i}.key", f"past_key_values.{i}.value"
        present_k, present_v = f"present.{i}.key", f"present.{i}.value"
        bld.nodes.append(helper.make_node("Concat", [past_k, k], [present_k], name=f"{a}/Concat", axis=-2))
        bld.nodes.append(helper.make_node("Concat", [past_v, v], [present_v], name=f"{a}/Concat_1", axis=-2))
        for name in (past_k, past_v):
            inputs.append(
                helper.make_tensor_value_info(
                    name, TensorProto.FLOAT, ["batch_size", heads, "past_sequence_length", hd]
                )
            )
        for name in (present_k, present_v):
            outputs.append(
                helper.make_tensor_value_info(
                    name, TensorProto.FLOAT, ["batch_size", heads, "past_sequence_length + 1", hd]
                )
            )
        kt = op("Transpose", a, "Transpose_3", [present_k], perm=[0, 1, 3, 2])
        scores = op("Div", a, "Div", [op("MatMul", a, "MatMul", [q, kt]), root_hd])
        # bias[:, :, past : key_len, :key_len], past = key_len - query_len
        k_len = op("Gather", a, "Gather_1", [op("Shape", a, "Shape_1", [present_k]), idx2], axis=0)
        if past_length_from_cache:
            start = first_row
        else:
            q_len = op("Gather", a, "Gather", [op("Shape", a, "Shape", [q]), idx2], axis=0)
            start = op("Unsqueeze", a, "Unsqueeze", [op("Sub", a, "Sub", [k_len, q_len]), axis0])
        end = op("Unsqueeze", a, "Unsqueeze_1", [k_len, axis0])
        table = c(f"{L}.attn.bias", causal, np.bool_)
        rows = op("Slice", a, "Slice", [table, start, end, axis2])
        seen = op("Slice", a, "Slice_1", [rows, zero_1d, end, axis3])
        scores = op("Add", a, "Add", [op("Where", a, "Where", [seen, scores, min_f]), pad])
        probs = op("Softmax", a, "Softmax", [scores], axis=-1)
        ctx = op("MatMul", a, "MatMul_1", [probs, present_v])
        ctx = op("Reshape", a, "Reshape_3", [op("Transpose", a, "Transpose_4", [ctx], perm=[0, 2, 1, 3]), merge_shape])
        x = op("Add", b, "Add", [conv1d(ctx, f"{a}/c_proj", f"{L}.attn.c_proj", hidden, hidden), x])
        h = layer_norm(x, f"{b}/ln_2", f"{L}.ln_2")
        f = f"{b}/mlp"
        u = conv1d(h, f"{f}/c_fc", f"{L}.mlp.c_fc", hidden, inner)
        # gelu_new: 0.5 u (1 + tanh(sqrt(2/pi) (u + 0.044715 u^3)))
        g = f"{f}/act"
        cube = op("Mul", g, "Mul", [gelu_c, op("Pow", g, "Pow", [u, gelu_k])])
        t = op("Tanh", g, "Tanh", [op("Mul", g, "Mul_1", [gelu_s, op("Add", g, "Add", [u, cube])])])
        act = op("Mul", g, "Mul_3", [op("Mul", g, "Mul_2", [half, u]), op("Add", g, "Add_1", [one_f, t])])
        x = op("Add", b, "Add_1", [x, conv1d(act, f"{f}/c_proj", f"{L}.mlp.c_proj", inner, hidden)])

    inputs.append(
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch_size", "past_sequence_length + 1"])
    )
    inputs.append(helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch_size", "sequence_length"]))
    h = layer_norm(x, f"{s}/ln_f", "transformer.ln_f")
    tied = op("Transpose", "/lm_head", "Transpose", [wte], perm=[1, 0])  # constant: folded by the runtime
    bld.nodes.append(helper.make_node("MatMul", [h, tied], ["logits"], name="/lm_head/MatMul"))
    graph = helper.make_graph(bld.nodes, "main_graph", inputs, outputs, initializer=bld.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edge-testbed gpt2")
    model.ir_version = 8
    helper.set_model_props(model, {CONTEXT_KEY: str(positions)})
    return save_model(model, path, bld.nbytes)
