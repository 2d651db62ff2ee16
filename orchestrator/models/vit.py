"""Build a ViT classifier ONNX with onnx + numpy only (no torch), seeded random weights.

Same interface as the HuggingFace export (`pixel_values` [batch,3,H,W] -> `logits`
[batch,classes]) so every tool treats it like the real thing, at any size, offline, in
seconds. Block outputs are named `/vit/layers.{i}/Add_1_output_0` like the exporter does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

from orchestrator.models.onnx_builder import GraphBuilder, save_model


def build_vit(
    path: str | Path,
    *,
    image_size: int = 224,
    patch: int = 16,
    layers: int = 12,
    hidden: int = 768,
    heads: int = 12,
    mlp: int = 3072,
    classes: int = 1000,
    seed: int = 0,
    opset: int = 17,
) -> Path:
    """Write a pre-LN ViT (ViT-B/16 by default, ~86M parameters) to `path`; return the path."""
    if image_size % patch or hidden % heads:
        raise ValueError("image_size must be a multiple of patch and hidden a multiple of heads")
    path = Path(path)
    hd = hidden // heads
    tokens = (image_size // patch) ** 2 + 1
    bld = GraphBuilder(np.random.default_rng(seed), std=0.02)
    w = bld.weight
    P = "vit.embeddings"

    # patch embedding: Conv stride=patch -> [B, D, h, w] -> [B, D, h*w] -> [B, h*w, D]
    s = "/vit/embeddings/patch_embeddings"
    x = bld.op(
        "Conv",
        s,
        "Conv",
        ["pixel_values", w(f"{P}.patch.weight", (hidden, 3, patch, patch)), w(f"{P}.patch.bias", (hidden,))],
        kernel_shape=[patch, patch],
        strides=[patch, patch],
    )
    x = bld.op("Reshape", s, "Reshape", [x, bld.const("vit.shape.flatten", [0, hidden, -1])])
    x = bld.op("Transpose", s, "Transpose", [x], perm=[0, 2, 1])
    # CLS token expanded to the batch (a shape chain from the input, as in the HF export)
    s = "/vit/embeddings"
    shp = bld.op("Shape", s, "Shape", ["pixel_values"])
    bsz = bld.op("Slice", s, "Slice", [shp, bld.const("vit.c0", [0]), bld.const("vit.c1", [1])])
    cls_shape = bld.op("Concat", s, "Concat", [bsz, bld.const("vit.cls.tail", [1, hidden])], axis=0)
    cls = bld.op("Expand", s, "Expand", [w(f"{P}.cls_token", (1, 1, hidden)), cls_shape])
    x = bld.op("Concat", s, "Concat_1", [cls, x], axis=1)
    x = bld.op("Add", s, "Add", [x, w(f"{P}.position_embeddings", (1, tokens, hidden))])

    scale = bld.const("vit.attn.scale", [1.0 / float(np.sqrt(hd))], np.float32)
    heads_shape = bld.const("vit.shape.heads", [0, 0, heads, hd])
    merge_shape = bld.const("vit.shape.merge", [0, 0, hidden])
    sqrt2 = bld.const("vit.gelu.sqrt2", [float(np.sqrt(2.0))], np.float32)
    one = bld.const("vit.gelu.one", [1.0], np.float32)
    half = bld.const("vit.gelu.half", [0.5], np.float32)
    for i in range(layers):
        L, s = f"vit.layers.{i}", f"/vit/layers.{i}"
        a = f"{s}/attention"
        h = bld.op(
            "LayerNormalization",
            s,
            "layernorm_before",
            [x, w(f"{L}.ln1.weight", (hidden,), "ones"), w(f"{L}.ln1.bias", (hidden,), "zeros")],
            axis=-1,
            epsilon=1e-12,
        )
        qkv = []
        for j, nm in enumerate(("q", "k", "v")):
            y = bld.linear(
                a,
                h,
                w(f"{L}.attn.{nm}.weight", (hidden, hidden)),
                w(f"{L}.attn.{nm}.bias", (hidden,)),
                f"_{nm}",
            )
            y = bld.op("Reshape", a, f"Reshape_{j}", [y, heads_shape])
            perm = [0, 2, 3, 1] if nm == "k" else [0, 2, 1, 3]
            qkv.append(bld.op("Transpose", a, f"Transpose_{j}", [y], perm=perm))
        q, k, v = qkv
        sc = bld.op("MatMul", a, "MatMul_scores", [q, k])
        sc = bld.op("Mul", a, "Mul_scale", [sc, scale])
        pr = bld.op("Softmax", a, "Softmax", [sc], axis=-1)
        ctx = bld.op("MatMul", a, "MatMul_context", [pr, v])
        ctx = bld.op("Transpose", a, "Transpose_3", [ctx], perm=[0, 2, 1, 3])
        ctx = bld.op("Reshape", a, "Reshape_3", [ctx, merge_shape])
        o = bld.linear(a, ctx, w(f"{L}.attn.o.weight", (hidden, hidden)), w(f"{L}.attn.o.bias", (hidden,)), "_o")
        x = bld.op("Add", s, "Add", [x, o])
        h = bld.op(
            "LayerNormalization",
            s,
            "layernorm_after",
            [x, w(f"{L}.ln2.weight", (hidden,), "ones"), w(f"{L}.ln2.bias", (hidden,), "zeros")],
            axis=-1,
            epsilon=1e-12,
        )
        m = f"{s}/mlp"
        h = bld.linear(m, h, w(f"{L}.mlp.fc1.weight", (hidden, mlp)), w(f"{L}.mlp.fc1.bias", (mlp,)), "_fc1")
        # exact GELU: 0.5 * x * (1 + erf(x / sqrt(2)))
        e = bld.op("Erf", m, "Erf", [bld.op("Div", m, "Div", [h, sqrt2])])
        g = bld.op("Mul", m, "Mul_1", [bld.op("Mul", m, "Mul", [h, half]), bld.op("Add", m, "Add_gelu", [e, one])])
        h = bld.linear(m, g, w(f"{L}.mlp.fc2.weight", (mlp, hidden)), w(f"{L}.mlp.fc2.bias", (hidden,)), "_fc2")
        x = bld.op("Add", s, "Add_1", [x, h])

    s = "/vit"
    x = bld.op(
        "LayerNormalization",
        s,
        "layernorm",
        [x, w("vit.layernorm.weight", (hidden,), "ones"), w("vit.layernorm.bias", (hidden,), "zeros")],
        axis=-1,
        epsilon=1e-12,
    )
    c = bld.op("Gather", s, "Gather", [x, bld.const("vit.cls.index", 0)], axis=1)  # CLS token: [B, D]
    y = bld.op("MatMul", "/classifier", "MatMul", [c, w("classifier.weight", (hidden, classes))])
    bld.nodes.append(helper.make_node("Add", [y, w("classifier.bias", (classes,))], ["logits"], name="/classifier/Add"))

    graph = helper.make_graph(
        bld.nodes,
        "vit",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, image_size, image_size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        initializer=bld.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="edge-testbed vit")
    model.ir_version = min(model.ir_version, 8 if opset <= 17 else model.ir_version)
    return save_model(model, path, bld.nbytes)


def ensure_vit(path: str | Path) -> Path:
    """The default ViT-B/16 at `path`, built there first if it is missing (benchmarks, demos)."""
    path = Path(path)
    if not path.exists():
        print(f"building ViT-B/16 at {path}")
        build_vit(path)
    return path
