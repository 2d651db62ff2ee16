"""A generation run's figures, files, plots and report sections, from sequences whose every stamp is
known: source `src` feeds stage 0 on `a`, stage 1 on `b`, and gets the token back."""

from __future__ import annotations

import itertools
import json

import pytest
from rich.console import Console

from orchestrator.driving.driver import Record, Timing
from orchestrator.figures.generation import generation_figures, write_generations
from orchestrator.generation.records import SequenceRun
from orchestrator.reporting.console import generation_line, print_summary
from orchestrator.reporting.markdown import render_markdown
from orchestrator.reporting.plots import token_breakdown, tokens_over_time

T0 = 1_700_000_000 * 10**9
N = 2  # stages
HIDDEN_BYTES_PER_TOKEN = 256  # what crosses a -> b for one token
TOKEN_BYTES = 8  # one int64 id


def ns(ms: float) -> int:
    return T0 + round(ms * 1e6)


def step(
    ids, seq: int, at: float, tokens: int, *, prefill: bool, queue_a: float = 0.0, error: str = ""
) -> tuple[Record, float]:
    """One step sent at `at` ms carrying `tokens` tokens, and when its token came back (ms). Prefill:
    hops 1, 2, 1 ms and compute 3 ms on each stage; decode: hops 0.5 ms, compute 1 ms on a and 1.5 on
    b. `queue_a`: ms the frame waits on a before its compute."""
    h0, ca, h1, cb, h2 = (1.0, 3.0, 2.0, 3.0, 1.0) if prefill else (0.5, 1.0, 0.5, 1.5, 0.5)
    a_in = at + h0
    a_end = a_in + queue_a + ca
    b_in = a_end + h1
    b_end = b_in + cb
    done = b_end + h2
    timings = [
        Timing(-1, "src", ns(at), ns(at), ns(at), ns(at), tokens * TOKEN_BYTES),
        Timing(0, "a", ns(a_in), ns(a_in + queue_a), ns(a_end), ns(a_end), tokens * HIDDEN_BYTES_PER_TOKEN),
        Timing(1, "b", ns(b_in), ns(b_in), ns(b_end), ns(b_end), TOKEN_BYTES),
        Timing(N, "src", ns(done), 0, 0, 0, 0),
    ]
    rec = Record(id=next(ids), key=seq, intended_ns=ns(at), sent_ns=ns(at), timings=timings)
    if error:
        rec.error = error
    else:
        rec.done_ns = ns(done)
    return rec, done


def sequence(ids, index: int, prompt: list[int], generated: list[int], at: float, **kw) -> SequenceRun:
    """A sequence whose steps follow each other from `at`: a prefill, then one decode per token after
    the first (`fail_after`: that many steps come back, then one is lost)."""
    warmup, queue_a, fail_after = kw.get("warmup", False), kw.get("queue_a", 0.0), kw.get("fail_after")
    seq = SequenceRun(index, prompt, max_new_tokens=len(generated), warmup=warmup, generated=list(generated))
    n_steps = len(generated) if fail_after is None else fail_after
    for i in range(n_steps):
        rec, at = step(ids, index, at, len(prompt) if i == 0 else 1, prefill=i == 0, queue_a=queue_a)
        seq.steps.append(rec)
    if fail_after is not None:
        seq.steps.append(step(ids, index, at, 1, prefill=False, error="b is gone")[0])
        seq.error = "b is gone"
        seq.generated = seq.generated[:fail_after]
    return seq


@pytest.fixture
def sequences() -> list[SequenceRun]:
    ids = itertools.count()
    return [
        # prefill 0-10 ms, decodes 10-14, 14-18
        sequence(ids, 0, [1, 2, 3, 4], [5, 6, 7], 0.0),
        # 2 ms queued on a each step: prefill 30-42, decodes 42-48, 48-54
        sequence(ids, 1, [1, 2, 3, 4, 5, 6], [8, 9, 10], 30.0, queue_a=2.0),
        sequence(ids, 2, [9, 9], [1, 2], -100.0, warmup=True),
        # its prefill comes back (60-70 ms), its first decode is lost
        sequence(ids, 3, [7], [4, 11], 60.0, fail_after=1),
    ]


REFERENCE = [[5, 6, 7], [8, 9, 10], [1, 2], [4, 11]]
KV = {"a": 4096, "b": 8192}
ENERGY = {"per": "inference (one image)", "total": {"predicted": {"total_j": 0.002}, "measured": {"total_j": 0.003}}}


def figures(sequences, reference=REFERENCE, kv=KV, energy=ENERGY) -> dict:
    return generation_figures(sequences, N, None, reference, kv, energy, source="src")


def test_time_to_first_token_and_per_output_token(sequences):
    f = figures(sequences)
    assert f["ttft_ms"] == {"p50": 11.0, "p99": 11.98, "mean": 11.0}  # 10 and 12 ms
    assert f["tpot_ms"] == {"p50": 5.0, "p99": 6.0, "mean": 5.0}  # 4, 4, 6, 6 ms


def test_tokens_per_second_total_and_per_sequence(sequences):
    tps = figures(sequences)["tokens_per_s"]
    assert tps["total"] == pytest.approx(6 / 0.054, abs=1e-3)  # 6 tokens from 0 to 54 ms
    assert tps["per_sequence"]["mean"] == pytest.approx((3 / 0.018 + 3 / 0.024) / 2, abs=1e-3)


def test_sequence_counts_leave_warm_up_and_failed_out(sequences):
    s = figures(sequences)["sequences"]
    assert s == {
        "measured": 2,
        "warmup": 1,
        "failed": 1,
        "first_error": "b is gone",
        "tokens_generated": 6,
        "tokens_generated_all": 6 + 2 + 1,
        "steps": 6,
    }


def test_prefill_and_decode_are_broken_down_apart(sequences):
    f = figures(sequences)
    pre, dec = f["prefill"], f["decode"]
    assert (pre["steps"], dec["steps"]) == (2, 4)
    assert pre["step_ms"]["mean"] == 11.0 and dec["step_ms"]["mean"] == 5.0
    a_pre, b_dec = pre["stages"][0], dec["stages"][1]
    assert a_pre["device"] == "a" and a_pre["compute_ms"]["mean"] == 3.0 and a_pre["queue_ms"]["mean"] == 1.0
    assert b_dec["device"] == "b" and b_dec["compute_ms"]["mean"] == 1.5 and b_dec["queue_ms"]["mean"] == 0.0
    hops = {(h["from"], h["to"]): h for h in dec["hops"]}
    assert set(hops) == {("src", "a"), ("a", "b"), ("b", "src")}
    assert hops[("a", "b")]["bytes_per_step"] == HIDDEN_BYTES_PER_TOKEN  # one token's hidden state, no cache
    assert hops[("a", "b")]["transfer_ms"]["mean"] == 0.5 and hops[("a", "b")]["link_wait_ms"]["mean"] == 0.0
    pre_hops = {(h["from"], h["to"]): h for h in pre["hops"]}
    assert pre_hops[("a", "b")]["bytes_per_step"] == (4 + 6) / 2 * HIDDEN_BYTES_PER_TOKEN
    assert pre_hops[("src", "a")]["bytes_per_step"] == (4 + 6) / 2 * TOKEN_BYTES
    assert pre_hops[("a", "b")]["transfer_ms"]["mean"] == 2.0
    # the breakdown walks the pipeline from the source; compute on a is 1 of the decode step's 5 ms
    rows = {(r["part"], r["where"]): r for r in dec["breakdown"]}
    assert [r["where"] for r in dec["breakdown"]][0] == "src -> a"
    assert rows[("compute", "stage 0 on a")]["share_pct"] == 20.0
    assert rows[("queue", "stage 0 on a")]["mean_ms"] == 1.0


def test_tokens_match_the_reference(sequences):
    complete = [s for s in sequences if not s.error]
    f = figures(complete, reference=[r for s, r in zip(sequences, REFERENCE, strict=True) if not s.error])
    assert f["tokens_match"] is True and f["tokens_mismatch"] == []
    assert figures(sequences)["tokens_mismatch"] == [3]  # it failed after one token


def test_a_differing_sequence_is_named(sequences):
    wrong = [list(r) for r in REFERENCE]
    wrong[1][2] = 99  # a measured one
    wrong[2][0] = 98  # a warm-up
    f = figures(sequences, reference=wrong)
    assert f["tokens_match"] is False and f["tokens_mismatch"] == [1, 2, 3]  # and 3, which failed


def test_a_failed_sequence_never_matches(sequences):
    """Sequence 3 failed after one token: even a reference that begins with it is not matched, so
    a run whose every sequence failed cannot report its tokens as the whole model's."""
    longer = [list(r) for r in REFERENCE]
    longer[3] = [4, 50, 51]
    f = figures(sequences, reference=longer)
    assert f["tokens_match"] is False and f["tokens_mismatch"] == [3]


def test_without_reference_kv_or_energy_those_keys_are_none(sequences):
    f = figures(sequences, reference=None, kv=None, energy=None)
    assert f["tokens_match"] is None and f["tokens_mismatch"] is None
    assert f["kv_cache_bytes"] is None and f["energy_per_token_j"] is None


def test_reference_for_another_number_of_sequences_is_refused(sequences):
    with pytest.raises(ValueError, match="3 reference decodes for 4 sequences"):
        figures(sequences, reference=REFERENCE[:3])


def test_kv_cache_and_energy_per_token(sequences):
    f = figures(sequences)
    assert f["kv_cache_bytes"] == KV
    e = f["energy_per_token_j"]
    # one token per step: per token is per inference
    assert (e["steps"], e["tokens"]) == (6, 6)
    assert e["predicted"] == pytest.approx(0.002) and e["measured"] == pytest.approx(0.003)
    partial = {"total": {"predicted": None, "measured": {"total_j": 0.006}}}
    e = figures(sequences, energy=partial)["energy_per_token_j"]
    assert e["predicted"] is None and e["measured"] == pytest.approx(0.006)


def test_steps_sharing_an_id_are_refused(sequences):
    sequences[1].steps[0].id = sequences[0].steps[0].id
    with pytest.raises(ValueError, match="share ids"):
        figures(sequences)


def test_generations_file_has_one_line_per_sequence(sequences, tmp_path):
    path = tmp_path / "generations.jsonl"
    write_generations(path, list(reversed(sequences)))
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["sequence"] for x in lines] == [0, 1, 2, 3]
    assert lines[0] == {
        "sequence": 0,
        "prompt": [1, 2, 3, 4],
        "generated": [5, 6, 7],
        "warmup": False,
        "ttft_ms": 10.0,
        "tokens": 3,
    }
    assert lines[1]["ttft_ms"] == 12.0 and lines[2]["warmup"] is True
    assert lines[3]["error"] == "b is gone" and lines[3]["generated"] == [4] and lines[3]["tokens"] == 1


def test_both_plots_are_drawn(sequences, tmp_path):
    f = json.loads(json.dumps(figures(sequences) | {"source": "src"}))  # as report.json gives them back
    a = tokens_over_time(tmp_path / "plots" / "tokens.png", sequences)
    b = token_breakdown(tmp_path / "plots" / "token_breakdown.png", f)
    for p in (a, b):
        assert p.exists() and p.stat().st_size > 1000


def _report(sequences, task: str = "generate") -> dict:
    return figures(sequences) | {
        "tokens_match": True,  # as a run whose every sequence matched reports it
        "tokens_mismatch": [],
        "task": task,
        "job": "gen",
        "configuration": "optimal",
        "runtime": "local",
        "model": "gpt.onnx",
        "algorithm": "optimal",
        "source": "src",
        "requests": 6,
        "warmup": 1,
        "batch": 1,
        "errors": 1,
        "throughput_fps": None,
        "latency_ms": None,
        "stages": [{"index": 0, "device": "a"}, {"index": 1, "device": "b"}],
        "hops": [],
        "agreement": {},
        "accuracy": {},
    }


def test_report_md_has_a_generation_section_with_the_numbers(sequences):
    md = render_markdown(_report(sequences))
    assert "## Generation" in md
    assert "| time to first token (ms) | 11.00 | 11.98 | 11.00 |" in md
    assert "| time per output token (ms) | 5.00 | 6.00 | 5.00 |" in md
    assert "| tokens/s in total | 111.11 |" in md
    assert "| tokens equal to the whole model's greedy decode | yes, every sequence |" in md
    assert "| KV cache peak on b | 8192 B (0.0 MiB) |" in md
    assert "energy per token | predicted 2.00 mJ, measured 3.00 mJ" in md
    assert "| compute | stage 0 on a | 3.000 | 27.3% | 1.000 | 20.0% |" in md
    assert "| a -> b | 1280.0 | 256.0 |" in md
    assert "## Generation" not in render_markdown(_report(sequences, task="infer"))


def test_report_md_puts_the_prediction_beside_the_measured(sequences):
    pg = {"ttft_ms": 12.5, "ttft_error_pct": 13.6, "tpot_ms": 5.25, "tpot_error_pct": 5.0, "tokens_per_s": 100.0}
    md = render_markdown(_report(sequences) | {"predicted_generation": pg | {"tokens_per_s_error_pct": -10.0}})
    assert "| predicted time to first token, mean | 12.50 ms (+13.6% of the measured) |" in md
    assert "| predicted time per output token, mean | 5.25 ms (+5.0% of the measured) |" in md
    assert "| predicted tokens/s in total | 100.00 (-10.0% of the measured) |" in md
    unmeasured = render_markdown(_report(sequences) | {"predicted_generation": {"tpot_ms": 5.25}})
    assert "| predicted time per output token, mean | 5.25 ms |" in unmeasured and "first token, mean" not in unmeasured


def test_report_md_names_the_sequences_that_differ(sequences):
    rep = _report(sequences) | {"tokens_match": False, "tokens_mismatch": [1, 3]}
    assert "| tokens equal to the whole model's greedy decode | no: sequences 1, 3 differ |" in render_markdown(rep)


def test_console_prints_one_generation_line(sequences, tmp_path):
    rep = _report(sequences)
    assert generation_line(rep) == (
        "TTFT p50 11.00 ms, TPOT p50 5.00 ms, 111.1 tokens/s (145.8 per sequence p50), tokens match yes"
    )
    console = Console(record=True, width=240)
    print_summary(console, rep, tmp_path)
    assert "TTFT p50 11.00 ms" in console.export_text()
    console = Console(record=True, width=240)
    print_summary(console, _report(sequences, task="infer"), tmp_path)
    assert "TTFT" not in console.export_text()
