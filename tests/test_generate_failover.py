"""Generation in a world that moves (local runtime, `orchestrator run`): a decoder in 4 stages on
edge4 loses the phone mid-run under `failover`, and comes back. The sequences in progress lose the
caches their stages kept; each is re-prefilled on the new plan with its prompt and what it had
generated, so every sequence still generates exactly the whole model's greedy tokens."""

from __future__ import annotations

import json

from orchestrator.models.gpt import build_gpt
from orchestrator.run import execute
from tests.scenario_run_helpers import only, scenario_job

SIZE = {"layers": 4, "hidden": 64, "heads": 4, "kv_heads": 2, "mlp": 128, "vocab": 97, "context": 64}


def test_failover_crash_re_prefills_and_the_tokens_still_match(tmp_path):
    model = build_gpt(tmp_path / "gpt.onnx", seed=5, **SIZE)
    events = [{"at": "2s", "device": "phone", "action": "crash"}, {"at": "4s", "device": "phone", "action": "join"}]
    job = scenario_job(tmp_path, model, "failover", events)
    doc = json.loads(job.read_text())
    del doc["duration_s"], doc["concurrency"]
    doc |= {"task": "generate", "prompt_tokens": 8, "max_new_tokens": 40, "sequences": 2, "requests": 8, "warmup": 0}
    job.write_text(json.dumps(doc))
    run_dir, rep = execute(str(job), out=str(tmp_path / "run"))

    assert rep["complete"] is True and rep["errors"] == 0
    assert rep["sequences"]["failed"] == 0 and rep["sequences"]["tokens_generated"] == 8 * 40
    assert rep["tokens_match"] is True
    crash = only(rep["events"], "crash", device="phone")
    assert crash["resent"], "no step was in flight at the crash"
    assert [p["reason"] for p in rep["plans"]] == ["initial", "lost phone", "join phone"]
    # a resent step went again as a prefill: its prompt and every token generated before it
    lines = [json.loads(x) for x in (run_dir / "generations.jsonl").read_text().splitlines()]
    assert all(len(g["generated"]) == 40 for g in lines)
    steps = {r["id"]: r for r in map(json.loads, (run_dir / "requests.jsonl").read_text().splitlines())}
    assert all(steps[i]["error"] == "" for i in crash["resent"])
