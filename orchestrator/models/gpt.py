"""Build a decoder-only transformer ONNX (Llama-style) with onnx + numpy only, seeded weights.

RMSNorm, rotary positions, a SwiGLU MLP, grouped-query attention where `kv_heads` < `heads`, and
a KV cache, with the HuggingFace/optimum decoder's inputs and outputs: `input_ids`,
`attention_mask` (batch x past + new), `position_ids`, `past_key_values.N.key/value` (batch x
kv_heads x past x head_dim) -> `logits` (batch x new x vocab), `present.N.key/value` (the cache
with the new tokens appended). One graph serves prefill (past length 0) and each decode step.
Block outputs are named `/model/layers.{i}/Add_1_output_0`, as the exporter names them.

Weights are drawn wider than the usual 0.02: at that scale a random decoder's residual stream is
dominated by its token embedding and the greedy decode repeats one token whatever the prompt, so
that a token-for-token agreement would prove nothing. Here attention and MLP weights are scaled
by 1/sqrt(fan-in) and the embeddings are unit normal: the greedy decode moves with the context.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

from orchestrator.generation.decoder import CONTEXT_KEY
from orchestrator.models.onnx_builder import GraphBuilder, save_model

EPS = 1e-5
NEG = -1e9  # added to the scores of positions a query must not see
ROPE_BASE = 10000.0


def rope_tables(context: int, head_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of each position's rotary angles: (context, head_dim / 2) each."""
    inv = 1.0 / ROPE_BASE ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    ang = np.arange(context, dtype=np.float64)[:, None] * inv[None, :]
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


def build_gpt(
    path: str | Path,
    *,
    layers: int = 12,
    hidden: int = 768,
    heads: int = 12,
    kv_heads: int | None = None,
    mlp: int = 3072,
    vocab: int = 50257,
    context: int = 1024,
    seed: int = 0,
    opset: int = 17,
) -> Path:
    """Write the decoder (GPT-2 small's geometry by default, ~190M parameters) to `path`."""
    kv_heads = heads if kv_heads is None else kv_heads
    if hidden % heads or (hidden // heads) % 2:
        raise ValueError("hidden must be a multiple of heads, and the head size even (rotary pairs)")
    if kv_heads < 1 or heads % kv_heads:
        raise ValueError("kv_heads must divide heads")
    if min(layers, mlp, vocab, context) < 1:
        raise ValueError("layers, mlp, vocab and context must be at least 1")
    path = Path(path)
    hd = hidden // heads
    group = heads // kv_heads
    bld = GraphBuilder(np.random.default_rng(seed), std=1.0)
    w, c, op = bld.weight, bld.const, bld.op

    cos, sin = rope_tables(context, hd)
    cos_t, sin_t = c("model.rope.cos", cos, np.float32), c("model.rope.sin", sin, np.float32)
    eps = c("model.eps", [EPS], np.float32)
    two = c("model.two", [2.0], np.float32)
    neg = c("model.neg", [NEG], np.float32)
    scale = c("model.attn.scale", [1.0 / float(np.sqrt(hd))], np.float32)
    q_shape = c("model.shape.q", [0, 0, heads, hd])
    kv_shape = c("model.shape.kv", [0, 0, kv_heads, hd])
    merge = c("model.shape.merge", [0, 0, hidden])
    rep_shape = c("model.shape.rep", [0, heads, -1, hd]) if group > 1 else ""
    split = c("model.rope.split", [hd // 2, hd // 2])
    axis_1, axis_last = c("model.axis1", [1]), c("model.axis-1", [-1])
    axis_2 = c("model.axis2", [2]) if group > 1 else ""
    zero, one = c("model.zero", 0), c("model.one", 1)

    def rms(x: str, scope: str, name: str, weight: str) -> str:
        sq = op("Pow", scope, f"{name}_Pow", [x, two])
        mean = op("ReduceMean", scope, f"{name}_ReduceMean", [sq], axes=[-1], keepdims=1)
        root = op("Sqrt", scope, f"{name}_Sqrt", [op("Add", scope, f"{name}_Add", [mean, eps])])
        y = op("Div", scope, f"{name}_Div", [x, root])
        return op("Mul", scope, f"{name}_Mul", [y, w(weight, (hidden,), "ones")])

    def rotary(x: str, scope: str, tag: str, cos_b: str, sin_b: str) -> str:
        """x [b, h, s, hd] rotated by each position's angles (the first and second halves as pairs)."""
        x1, x2 = f"{scope}/Split_{tag}_output_0", f"{scope}/Split_{tag}_output_1"
        bld.nodes.append(helper.make_node("Split", [x, split], [x1, x2], name=f"{scope}/Split_{tag}", axis=-1))
        a = op(
            "Sub",
            scope,
            f"Sub_{tag}",
            [op("Mul", scope, f"Mul_{tag}_0", [x1, cos_b]), op("Mul", scope, f"Mul_{tag}_1", [x2, sin_b])],
        )
        b = op(
            "Add",
            scope,
            f"Add_{tag}",
            [op("Mul", scope, f"Mul_{tag}_2", [x2, cos_b]), op("Mul", scope, f"Mul_{tag}_3", [x1, sin_b])],
        )
        return op("Concat", scope, f"Concat_{tag}", [a, b], axis=-1)

    s = "/model"
    x = op("Gather", s, "embed_tokens", [w("model.embed_tokens.weight", (vocab, hidden)), "input_ids"], axis=0)
    # rotary angles of each new token: [b, 1, s, hd/2], shared by every layer
    cos_b = op("Unsqueeze", s, "Unsqueeze_cos", [op("Gather", s, "Gather_cos", [cos_t, "position_ids"]), axis_1])
    sin_b = op("Unsqueeze", s, "Unsqueeze_sin", [op("Gather", s, "Gather_sin", [sin_t, "position_ids"]), axis_1])
    # which keys each new token may see: the causal order over past + new, and the attention mask
    total = op("Shape", s, "Shape_mask", ["attention_mask"], start=1, end=2)
    new = op("Shape", s, "Shape_ids", ["input_ids"], start=1, end=2)
    total_s = op("Squeeze", s, "Squeeze_total", [total])
    first = op("Sub", s, "Sub_first", [total_s, op("Squeeze", s, "Squeeze_new", [new])])
    rows = op("Range", s, "Range_rows", [first, total_s, one])  # absolute positions of the new tokens
    cols = op("Range", s, "Range_cols", [zero, total_s, one])
    causal = op(
        "LessOrEqual",
        s,
        "LessOrEqual",
        [
            op("Unsqueeze", s, "Unsqueeze_cols", [cols, c("model.axis0", [0])]),
            op("Unsqueeze", s, "Unsqueeze_rows", [rows, axis_last]),
        ],
    )  # [s, T]
    pad = op("Cast", s, "Cast_mask", ["attention_mask"], to=TensorProto.BOOL)  # [b, T]
    pad = op("Unsqueeze", s, "Unsqueeze_mask", [pad, c("model.axes12", [1, 2])])  # [b, 1, 1, T]
    visible = op("And", s, "And_mask", [causal, pad])  # [b, 1, s, T]
    bias = op("Where", s, "Where_mask", [visible, c("model.zerof", [0.0], np.float32), neg])

    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total_sequence"]),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "sequence"]),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence", vocab])]
    attn_std, mlp_std = 1.0 / np.sqrt(hidden), 1.0 / np.sqrt(mlp)
    for i in range(layers):
        L, s = f"model.layers.{i}", f"/model/layers.{i}"
        a = f"{s}/self_attn"
        h = rms(x, s, "input_layernorm", f"{L}.input_layernorm.weight")
        q = op("MatMul", a, "q_proj", [h, w(f"{L}.self_attn.q_proj.weight", (hidden, hidden), std=attn_std)])
        k = op("MatMul", a, "k_proj", [h, w(f"{L}.self_attn.k_proj.weight", (hidden, kv_heads * hd), std=attn_std)])
        v = op("MatMul", a, "v_proj", [h, w(f"{L}.self_attn.v_proj.weight", (hidden, kv_heads * hd), std=attn_std)])
        q = op("Transpose", a, "Transpose_q", [op("Reshape", a, "Reshape_q", [q, q_shape])], perm=[0, 2, 1, 3])
        k = op("Transpose", a, "Transpose_k", [op("Reshape", a, "Reshape_k", [k, kv_shape])], perm=[0, 2, 1, 3])
        v = op("Transpose", a, "Transpose_v", [op("Reshape", a, "Reshape_v", [v, kv_shape])], perm=[0, 2, 1, 3])
        q = rotary(q, a, "q", cos_b, sin_b)
        k = rotary(k, a, "k", cos_b, sin_b)
        past_k, past_v = f"past_key_values.{i}.key", f"past_key_values.{i}.value"
        present_k, present_v = f"present.{i}.key", f"present.{i}.value"
        bld.nodes.append(helper.make_node("Concat", [past_k, k], [present_k], name=f"{a}/Concat_present_k", axis=2))
        bld.nodes.append(helper.make_node("Concat", [past_v, v], [present_v], name=f"{a}/Concat_present_v", axis=2))
        for name in (past_k, past_v):
            inputs.append(
                helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", kv_heads, "past_sequence", hd])
            )
        for name in (present_k, present_v):
            outputs.append(
                helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", kv_heads, "total_sequence", hd])
            )
        keys, values = present_k, present_v
        if group > 1:  # grouped-query attention: each key/value head serves `group` query heads
            tile = c(f"{L}.gqa.tile", [1, 1, group, 1, 1])
            keys = op(
                "Reshape",
                a,
                "Reshape_krep",
                [op("Tile", a, "Tile_k", [op("Unsqueeze", a, "Unsqueeze_k", [keys, axis_2]), tile]), rep_shape],
            )
            values = op(
                "Reshape",
                a,
                "Reshape_vrep",
                [op("Tile", a, "Tile_v", [op("Unsqueeze", a, "Unsqueeze_v", [values, axis_2]), tile]), rep_shape],
            )
        scores = op("MatMul", a, "MatMul_scores", [q, op("Transpose", a, "Transpose_kt", [keys], perm=[0, 1, 3, 2])])
        scores = op("Add", a, "Add_mask", [op("Mul", a, "Mul_scale", [scores, scale]), bias])
        probs = op("Softmax", a, "Softmax", [scores], axis=-1)
        ctx = op("MatMul", a, "MatMul_context", [probs, values])
        ctx = op("Reshape", a, "Reshape_merge", [op("Transpose", a, "Transpose_ctx", [ctx], perm=[0, 2, 1, 3]), merge])
        o = op("MatMul", a, "o_proj", [ctx, w(f"{L}.self_attn.o_proj.weight", (hidden, hidden), std=attn_std)])
        x = op("Add", s, "Add", [x, o])
        m = f"{s}/mlp"
        h = rms(x, s, "post_attention_layernorm", f"{L}.post_attention_layernorm.weight")
        gate = op("MatMul", m, "gate_proj", [h, w(f"{L}.mlp.gate_proj.weight", (hidden, mlp), std=attn_std)])
        up = op("MatMul", m, "up_proj", [h, w(f"{L}.mlp.up_proj.weight", (hidden, mlp), std=attn_std)])
        act = op("Mul", m, "Mul_silu", [gate, op("Sigmoid", m, "Sigmoid", [gate])])
        down = op(
            "MatMul",
            m,
            "down_proj",
            [op("Mul", m, "Mul", [act, up]), w(f"{L}.mlp.down_proj.weight", (mlp, hidden), std=mlp_std)],
        )
        x = op("Add", s, "Add_1", [x, down])

    h = rms(x, "/model", "norm", "model.norm.weight")
    bld.nodes.append(
        helper.make_node(
            "MatMul", [h, w("lm_head.weight", (hidden, vocab), std=attn_std)], ["logits"], name="/lm_head/MatMul"
        )
    )
    graph = helper.make_graph(bld.nodes, "gpt", inputs, outputs, initializer=bld.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="edge-testbed gpt")
    model.ir_version = min(model.ir_version, 8 if opset <= 17 else model.ir_version)
    helper.set_model_props(model, {CONTEXT_KEY: str(context)})  # the longest sequence its position tables take
    return save_model(model, path, bld.nbytes)
