"""A decoder in the shape optimum exports GPT-2 (tests/optimum_gpt2.py: cache inputs before the
mask, learned positions, LayerNorm with bias, a causal table sliced per layer, a tied output
projection) is read, cut and run as the built Llama-style one is: the cache is stage state, and
stages chained step by step, each keeping its own layers' cache, decode what the whole model does."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest

from common.ort_session import SessionSettings, open_session
from orchestrator import config
from orchestrator.config import Device
from orchestrator.generation.decoder import LOGITS, DecoderIO, greedy_token
from orchestrator.generation.reference import ReferenceDecoder
from orchestrator.partition import load_graph, partition
from orchestrator.partition.plan import Plan
from orchestrator.partition.weights_store import WeightsStore
from tests.optimum_gpt2 import build_optimum_gpt2

SIZE = {"layers": 2, "hidden": 64, "heads": 4, "vocab": 97, "positions": 64}
HEAD_DIM = SIZE["hidden"] // SIZE["heads"]
PROMPTS = [[5, 17, 3, 44, 9], [60, 2, 8], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [90]]
NEW = 10


@pytest.fixture(scope="module", params=[False, True], ids=["length-per-layer", "length-from-cache"])
def from_cache(request) -> bool:
    """Both ways an export finds the past length: each layer from its key, or once from layer 0's cache."""
    return request.param


@pytest.fixture(scope="module")
def gpt2(from_cache, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gpt2") / "model.onnx"
    return build_optimum_gpt2(out, seed=1, **SIZE, past_length_from_cache=from_cache)


@pytest.fixture(scope="module")
def reference(gpt2) -> ReferenceDecoder:
    return ReferenceDecoder(gpt2)


@pytest.fixture(scope="module")
def expected(reference) -> list[list[int]]:
    return [reference.greedy(p, NEW) for p in PROMPTS]


def _pairs(layers: int) -> dict[str, str]:
    return {f"past_key_values.{i}.{kv}": f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")}


def test_names_dims_and_order_are_the_gpt2_export_s(gpt2, from_cache):
    m = onnx.load(str(gpt2))
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in m.graph.input}
    dims |= {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in m.graph.output}
    assert [v.name for v in m.graph.input] == ["input_ids", *_pairs(2), "attention_mask", "position_ids"]
    assert dims["attention_mask"] == ["batch_size", "past_sequence_length + 1"]
    assert dims["past_key_values.1.value"] == ["batch_size", 4, "past_sequence_length", HEAD_DIM]
    assert dims["present.1.value"] == ["batch_size", 4, "past_sequence_length + 1", HEAD_DIM]
    assert dims["logits"] == ["batch_size", "sequence_length", 97]
    nodes = {n.name: n for n in m.graph.node}
    readers = [n.name for n in m.graph.node if "past_key_values.0.key" in n.input]
    assert readers == ["/transformer/Shape"] * from_cache + ["/transformer/h.0/attn/Concat"]
    assert nodes["/transformer/h.0/attn/Concat"].output == ["present.0.key"]
    assert [a.i for a in nodes["/transformer/h.0/attn/Concat"].attribute] == [-2]
    blocks = {n.output[0] for n in m.graph.node if re.fullmatch(r"/transformer/h\.\d+/Add_1", n.name)}
    assert blocks == {"/transformer/h.0/Add_1_output_0", "/transformer/h.1/Add_1_output_0"}
    lm_head = nodes["/lm_head/MatMul"]  # tied: the transpose of the token embedding
    assert nodes["/lm_head/Transpose"].input == ["transformer.wte.weight"]
    assert lm_head.input[1] == nodes["/lm_head/Transpose"].output[0]


def test_decoding_with_the_cache_gives_what_the_whole_sequence_gives(reference):
    ids = [5, 17, 3, 44, 9, 60, 2, 8]
    empty = reference.io.empty_cache(list(reference.io.state))
    whole, _ = reference.step(ids, empty)
    logits, cache = reference.step(ids[:5], empty)  # prefill
    got = [logits[:, -1]]
    for t in range(5, 8):  # then one token at a time
        logits, cache = reference.step(ids[t : t + 1], cache)
        got.append(logits[:, -1])
        assert {v.shape[2] for v in cache.values()} == {t + 1}
    np.testing.assert_allclose(np.stack(got, 1), whole[:, 4:], rtol=1e-4, atol=1e-4)


def test_the_decoder_interface_is_read_off_the_graph(gpt2):
    io = DecoderIO.of(onnx.load(str(gpt2), load_external_data=False), str(gpt2))
    assert io.state == _pairs(2)
    assert io.vocab == 97 and io.context == 64
    assert io.has_mask and io.has_positions
    assert io.cache_dims["past_key_values.0.key"] == (None, 4, None, HEAD_DIM)
    assert io.token_bytes() == 2 * 2 * SIZE["hidden"] * 4  # layers x (key, value) x heads x head dim x float
    assert io.token_bytes(["past_key_values.1.value"]) == SIZE["hidden"] * 4
    feeds = io.step_feeds([7], past_tokens=5)
    assert feeds["attention_mask"].shape == (1, 6) and feeds["position_ids"].tolist() == [[5]]


def test_the_greedy_decode_moves_with_its_prompt(reference):
    """Not one token repeated whatever the prompt, nor the fed token echoed back."""
    rng = np.random.default_rng(0)
    runs = [tuple(reference.greedy([int(t) for t in rng.integers(0, SIZE["vocab"], 6)], 10)) for _ in range(8)]
    assert len(set(runs)) >= 6, runs
    assert np.mean([len(set(r)) for r in runs]) >= 3, runs


def test_the_cache_is_never_live_at_a_cut(gpt2, from_cache):
    g = load_graph(gpt2)
    assert g.state == _pairs(2)
    cache = g.state_names
    for p in g.candidates:
        live = g.live_at(p)
        assert not cache & set(live), p
        assert g.live_bytes[p] == sum(g.nbytes[t] for t in live), p
    # layer 1's cache input is read only inside layer 1: at the block boundary before it, it is
    # alive (produced before, read after) and kept out all the same
    boundary = g.prod["/transformer/h.0/Add_1_output_0"] + 1
    past = "past_key_values.1.key"
    assert g.prod[past] < boundary <= g.last[past]
    carried = {"/transformer/Mul_output_0", "/transformer/h.0/Add_1_output_0"}  # the padding mask, the hidden state
    if from_cache:  # and the past length, read once from layer 0's cache
        carried.add("/transformer/Unsqueeze_1_output_0")
    assert set(g.live_at(boundary)) == carried


def _testbed() -> config.Testbed:
    return config.Testbed(devices=[Device(name=f"d{i}", memory="1GiB") for i in range(3)], source="devices.yaml")


@pytest.fixture(scope="module", params=[2, 3], ids=["2-stages", "3-stages"])
def plan(request, gpt2, tmp_path_factory) -> Plan:
    tmp = tmp_path_factory.mktemp(f"plan{request.param}")
    return partition(
        gpt2,
        _testbed(),
        algorithm="even",
        stages=request.param,
        out_dir=tmp / "plan",
        store=WeightsStore(tmp / "store"),
    )


def test_each_stage_keeps_its_own_layers_cache(plan):
    cache = set(plan.state) | set(plan.state.values())
    assert plan.state == _pairs(2)
    assert not cache & (set(plan.inputs) | set(plan.outputs))
    kept: list[str] = []
    for k, stage in enumerate(plan.stages):
        own = plan.stage_state(k)
        assert set(own) <= set(stage.inputs) and set(own.values()) <= set(stage.outputs)
        assert cache & (set(stage.inputs) | set(stage.outputs)) == set(own) | set(own.values())
        # the pairs it keeps are those its own attention layers concatenate
        m = onnx.load(str(plan.stage_path(k)), load_external_data=False)
        concats = {n.output[0] for n in m.graph.node if n.op_type == "Concat" and n.output[0] in cache}
        assert concats == set(own.values()), k
        kept += own
    assert sorted(kept) == sorted(plan.state)
    # the tied embedding: the first stage gathers tokens from it, the last multiplies by its transpose
    for k in (0, len(plan.stages) - 1):
        m = onnx.load(str(plan.stage_path(k)), load_external_data=False)
        assert "transformer.wte.weight" in {t.name for t in m.graph.initializer}, k
    for k in range(-1, len(plan.stages)):
        assert not cache & set(plan.forward_after(k)), k


class Chain:
    """The plan's stage files run one after the other in this process, as the nodes run them: each
    stage gets the non-cache tensors the previous one forwards and its own cache, and keeps what
    its cache outputs become."""

    def __init__(self, plan: Plan, io: DecoderIO):
        self.plan, self.io = plan, io
        one = SessionSettings(threads=1)
        self.sessions = [open_session(plan.stage_path(k), one) for k in range(len(plan.stages))]

    def step(self, ids: list[int], caches: list[dict[str, np.ndarray]], past: int) -> np.ndarray:
        forwarded = {x: v for x, v in self.io.step_feeds(ids, past).items() if x in self.plan.forward_after(-1)}
        for k, (stage, sess) in enumerate(zip(self.plan.stages, self.sessions, strict=True)):
            own = self.plan.stage_state(k)
            feeds = {x: forwarded[x] for x in stage.inputs if x not in own} | caches[k]
            out = dict(zip(stage.outputs, sess.run(stage.outputs, feeds), strict=True))
            caches[k] = {p: out[own[p]] for p in own}
            have = forwarded | {x: v for x, v in out.items() if x not in own.values()}
            forwarded = {x: have[x] for x in self.plan.forward_after(k)}
        return forwarded[LOGITS]

    def greedy(self, prompt: list[int], n: int) -> list[int]:
        caches = [self.io.empty_cache(list(self.plan.stage_state(k))) for k in range(len(self.plan.stages))]
        ids, past, out = list(prompt), 0, []
        for _ in range(n):
            logits = self.step(ids, caches, past)
            past += len(ids)
            ids = [int(greedy_token(logits)[0, 0])]
            out.append(ids[0])
        assert all(v.shape[2] == past for c in caches for v in c.values())  # each cache grew by every step
        return out


def test_chained_stages_decode_the_whole_model_s_greedy_tokens(plan, reference, expected):
    chain = Chain(plan, reference.io)
    assert [chain.greedy(p, NEW) for p in PROMPTS] == expected
