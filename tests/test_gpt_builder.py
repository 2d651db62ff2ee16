"""The decoder builder (orchestrator/models/gpt.py): HuggingFace/optimum names, one graph for
prefill and decode whose cache gives what recomputing the whole sequence gives, grouped-query
attention, padding, and a greedy decode that moves with its prompt."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from orchestrator.models.gpt import build_gpt

ROOT = Path(__file__).resolve().parents[1]
SIZE = {"layers": 2, "hidden": 64, "heads": 4, "mlp": 128, "vocab": 97, "context": 64}


class Decoder:
    """The built graph run as a decoder with its cache, one process, no partitioning."""

    def __init__(self, path: Path, layers: int, kv_heads: int, head_dim: int):
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        self.sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.layers, self.kv_heads, self.head_dim = layers, kv_heads, head_dim

    def empty(self, batch: int = 1) -> list[tuple[np.ndarray, np.ndarray]]:
        z = np.zeros((batch, self.kv_heads, 0, self.head_dim), np.float32)
        return [(z, z) for _ in range(self.layers)]

    def step(self, ids: np.ndarray, past, mask: np.ndarray | None = None, pos0: int | None = None):
        b, n = ids.shape
        p = past[0][0].shape[2]
        mask = np.ones((b, p + n), np.int64) if mask is None else mask
        start = p if pos0 is None else pos0
        feed = {
            "input_ids": ids,
            "attention_mask": mask,
            "position_ids": np.arange(start, start + n, dtype=np.int64)[None].repeat(b, 0),
        }
        for i, (k, v) in enumerate(past):
            feed[f"past_key_values.{i}.key"], feed[f"past_key_values.{i}.value"] = k, v
        out = self.sess.run(None, feed)
        return out[0], [(out[1 + 2 * i], out[2 + 2 * i]) for i in range(self.layers)]

    def greedy(self, prompt: list[int], n: int) -> list[int]:
        logits, past = self.step(np.array([prompt], np.int64), self.empty())
        out = []
        for _ in range(n):
            t = int(logits[0, -1].argmax())
            out.append(t)
            logits, past = self.step(np.array([[t]], np.int64), past)
        return out


@pytest.fixture(scope="module", params=[4, 2], ids=["mha", "gqa"])
def decoder(request, tmp_path_factory) -> Decoder:
    path = build_gpt(tmp_path_factory.mktemp("gpt") / "gpt.onnx", kv_heads=request.param, seed=1, **SIZE)
    return Decoder(path, SIZE["layers"], request.param, SIZE["hidden"] // SIZE["heads"])


def test_names_and_shapes_are_the_optimum_export_s(tmp_path):
    m = onnx.load(str(build_gpt(tmp_path / "g.onnx", kv_heads=2, **SIZE)))
    ins = [i.name for i in m.graph.input]
    outs = [o.name for o in m.graph.output]
    assert ins[:3] == ["input_ids", "attention_mask", "position_ids"]
    assert ins[3:] == [f"past_key_values.{i}.{kv}" for i in range(2) for kv in ("key", "value")]
    assert outs == ["logits"] + [f"present.{i}.{kv}" for i in range(2) for kv in ("key", "value")]
    past = m.graph.input[3].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in past] == ["batch", 2, "past_sequence", 16]
    cut_points = {n.output[0] for n in m.graph.node if n.name.endswith("/Add_1")}
    assert cut_points == {f"/model/layers.{i}/Add_1_output_0" for i in range(2)}


def test_decoding_with_the_cache_gives_what_the_whole_sequence_gives(decoder):
    ids = np.array([[5, 17, 3, 44, 9, 60, 2, 8]], np.int64)
    whole, _ = decoder.step(ids, decoder.empty())
    logits, past = decoder.step(ids[:, :5], decoder.empty())  # prefill
    got = [logits[:, -1]]
    for t in range(5, 8):  # then one token at a time
        logits, past = decoder.step(ids[:, t : t + 1], past)
        got.append(logits[:, -1])
        assert past[0][0].shape[2] == t + 1  # the cache grew by one
    np.testing.assert_allclose(np.stack(got, 1), whole[:, 4:], rtol=1e-4, atol=1e-4)


def test_a_left_padded_prompt_decodes_as_the_unpadded_one(decoder):
    """Padding masked out by attention_mask, positions counted from the first real token."""
    plain, _ = decoder.step(np.array([[7, 8, 9]], np.int64), decoder.empty())
    padded_ids = np.array([[0, 0, 7, 8, 9]], np.int64)
    mask = np.array([[0, 0, 1, 1, 1]], np.int64)
    feed_pos = np.array([[0, 0, 0, 1, 2]], np.int64)
    feed = {"input_ids": padded_ids, "attention_mask": mask, "position_ids": feed_pos}
    for i in range(decoder.layers):
        z = decoder.empty()[0][0]
        feed[f"past_key_values.{i}.key"] = feed[f"past_key_values.{i}.value"] = z
    padded = decoder.sess.run(["logits"], feed)[0]
    np.testing.assert_allclose(padded[:, 2:], plain, rtol=1e-4, atol=1e-4)


def test_the_greedy_decode_moves_with_its_prompt(decoder):
    """Not one token repeated whatever the prompt: different prompts, different continuations."""
    rng = np.random.default_rng(0)
    runs = [tuple(decoder.greedy(list(rng.integers(0, SIZE["vocab"], 6)), 10)) for _ in range(8)]
    assert len(set(runs)) >= 6, runs
    assert np.mean([len(set(r)) for r in runs]) >= 3, runs


def test_bad_sizes_are_one_line_exit_2(tmp_path):
    for flags in (["--hidden", "60", "--heads", "8"], ["--heads", "4", "--kv-heads", "3", "--hidden", "64"]):
        r = subprocess.run(
            [sys.executable, "-m", "orchestrator", "model", "gpt", "--out", str(tmp_path / "g.onnx"), *flags],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not (tmp_path / "g.onnx").exists()
