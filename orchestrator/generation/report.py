"""A generation run's report keys, file and plots, from its sequences and the run's report so far:
measured figures (figures.generation), the planner's prediction of them beside, tokens_match
against the whole model's greedy decode."""

from __future__ import annotations

from pathlib import Path

from orchestrator.config import Testbed
from orchestrator.figures.generation import generation_figures, write_generations
from orchestrator.generation.predict import predict_generation
from orchestrator.generation.records import SequenceRun
from orchestrator.generation.run_steps import GenerationRun
from orchestrator.partition.plan import Plan
from orchestrator.reporting.plots import token_breakdown, tokens_over_time

__all__ = ["generation_plots", "generation_report", "write_generations"]


def _err_pct(predicted: float | None, measured: float | None) -> float | None:
    if predicted is None or not measured:
        return None
    return round(100.0 * (predicted - measured) / measured, 1)


def generation_report(
    gen: GenerationRun, model: Path, plan: Plan, testbed: Testbed, offsets: dict[str, int] | None, rep: dict
) -> dict:
    """`task`, the figures of DESIGN's "Generation", and `predicted_generation`: the plan's TPOT
    (mean, the other sequences' prefills counted; steady, the planner's figure), tokens/s with the
    job's sequences in flight and TTFT where the prefill was measured (generation.predict), and the
    error of each against the measured mean."""
    energy = rep.get("energy_split")
    figs = generation_figures(
        gen.sequences,
        len(plan.stages),
        offsets,
        gen.reference(model),
        gen.kv_cache,
        energy if isinstance(energy, dict) else None,
        source=rep.get("source"),
        delay_s=lambda a, b: testbed.link(a, b).delay_s,
    )
    pre = gen.prefill
    pred = predict_generation(
        plan.predicted,
        sequences=gen.setup.sequences,
        max_new_tokens=gen.setup.max_new_tokens,
        measured_sequences=len(gen.setup.prompts) - gen.setup.warmup,
        decode_compute_s=gen.measured_decode_s,
        prefill_s=pre.wall_s if pre is not None else None,
        prefill_extra_transfer_s=pre.extra_transfer_s if pre is not None else 0.0,
    )
    measured_tpot = (figs["tpot_ms"] or {}).get("mean")
    measured_tokens = (figs["tokens_per_s"] or {}).get("total")
    measured_ttft = (figs["ttft_ms"] or {}).get("mean")
    ttft_ms = round(pred.ttft_s * 1e3, 3) if pred.ttft_s is not None else None
    predicted = {
        "tpot_ms": round(pred.tpot_s * 1e3, 3),
        "steady_tpot_ms": round(pred.steady_tpot_s * 1e3, 3),
        "tokens_per_s": round(pred.tokens_per_s, 3),
        "ttft_ms": ttft_ms,
        "lone_ttft_ms": round(pred.lone_ttft_s * 1e3, 3) if pred.lone_ttft_s is not None else None,
        "tpot_error_pct": _err_pct(pred.tpot_s * 1e3, measured_tpot),
        "tokens_per_s_error_pct": _err_pct(pred.tokens_per_s, measured_tokens),
        "ttft_error_pct": _err_pct(ttft_ms, measured_ttft),
    }
    return {"task": "generate", **figs, "predicted_generation": predicted}


def generation_plots(run_dir: Path, sequences: list[SequenceRun], rep: dict) -> list[str]:
    """tokens/s over time and the per-token breakdown, paths relative to the run folder."""
    out = run_dir / "plots"
    out.mkdir(parents=True, exist_ok=True)
    paths = [tokens_over_time(out / "tokens_per_s.png", sequences), token_breakdown(out / "token_breakdown.png", rep)]
    return [str(p.relative_to(run_dir)) for p in paths]
