"""Generation across real nodes (local runtime): a decoder cut into 2, 3 and 4 stages generates,
token by token with each stage keeping its own layers' cache, exactly what the whole model's
greedy decode gives in one process; no cache tensor travels; the nodes free each cache when its
sequence ends."""

from __future__ import annotations

import textwrap
from pathlib import Path

import onnx
import pytest

from orchestrator import config
from orchestrator.driving.deploy import deploy
from orchestrator.generation.decoder import DecoderIO
from orchestrator.generation.drive import generate
from orchestrator.generation.records import SequenceRun
from orchestrator.generation.reference import ReferenceDecoder
from orchestrator.models.gpt import build_gpt
from orchestrator.partition import partition
from orchestrator.runtimes.choice import make_runtime

SIZE = {"layers": 4, "hidden": 64, "heads": 4, "kv_heads": 2, "mlp": 128, "vocab": 97, "context": 64}
DEVICES = textwrap.dedent(
    """
    devices:
      - {name: a, cpus: 1, memory: 1GiB, bandwidth: 200mbit, delay: 1ms}
      - {name: b, cpus: 1, memory: 1GiB, bandwidth: 200mbit, delay: 1ms}
      - {name: c, cpus: 1, memory: 1GiB, bandwidth: 200mbit, delay: 1ms}
      - {name: d, cpus: 1, memory: 1GiB, bandwidth: 200mbit, delay: 1ms}
    """
)
PROMPTS = [[5, 17, 3, 44, 9], [60, 2, 8], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [90], [33, 33, 12, 70]]
NEW = 12


@pytest.fixture(scope="module")
def gpt(tmp_path_factory) -> Path:
    return build_gpt(tmp_path_factory.mktemp("gpt") / "gpt.onnx", seed=3, **SIZE)


@pytest.fixture(scope="module")
def expected(gpt) -> list[list[int]]:
    ref = ReferenceDecoder(gpt)
    return [ref.greedy(p, NEW) for p in PROMPTS]


@pytest.mark.parametrize("stages", [2, 3, 4])
def test_stages_generate_the_whole_model_s_greedy_tokens(gpt, expected, stages, tmp_path):
    devices_file = tmp_path / "devices.yaml"
    devices_file.write_text(DEVICES)
    testbed = config.load_devices(devices_file)
    plan = partition(gpt, testbed, algorithm="even", stages=stages, source="a", out_dir=tmp_path / "plan")
    assert len(plan.stages) == stages
    cache = set(plan.state) | set(plan.state.values())
    assert len(cache) == 4 * SIZE["layers"]
    for k in range(-1, stages):  # no cache tensor is ever forwarded
        assert not cache & set(plan.forward_after(k))
    assert sorted(p for k in range(stages) for p in plan.stage_state(k)) == sorted(plan.state)
    io = DecoderIO.of(onnx.load(str(gpt), load_external_data=False), str(gpt))
    seqs = [SequenceRun(i, p, NEW) for i, p in enumerate(PROMPTS)]
    with make_runtime("local", testbed, tmp_path / "logs") as rt:
        dep = rt.start()
        deploy(rt.node_plan(plan, tmp_path / "plan"), testbed, dep, "a")
        records = generate(dep.client("a"), io, seqs, in_flight=3, timeout_s=60)
        stats = {d: dep.client(d).stats() for d in dep.nodes}
    assert [s.error for s in seqs] == [""] * len(seqs)
    assert [s.generated for s in seqs] == expected
    assert len(records) == len(PROMPTS) * NEW
    # hops carry the new tokens' hidden state, positions' tables and mask: a decode step's frames
    # grow by the masks' bytes a token (8 and 4), where a cache would add a stage's share of `per_token`
    per_token = io.token_bytes()
    for seq in seqs:
        sent = [[t.bytes_out for t in rec.timings[:-1]] for rec in seq.steps[1:]]
        pairs = zip(sent, sent[1:], strict=False)
        growth = [b - a for before, after in pairs for a, b in zip(before, after, strict=True)]
        assert growth and max(growth) <= 8 < per_token // stages, growth
    # every cache was kept while its sequence ran and freed after its last step
    keeping = {plan.stages[k].device for k in range(stages) if plan.stage_state(k)}
    assert len(keeping) >= 2
    for d, st in stats.items():
        assert st.kv_cache_bytes == 0 and st.sequences == 0
        assert (st.peak_kv_cache_bytes > 0) == (d in keeping), d
    longest = max(len(p) for p in PROMPTS) + NEW - 1
    assert sum(s.peak_kv_cache_bytes for s in stats.values()) <= 3 * longest * per_token
