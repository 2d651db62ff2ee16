"""A generation run's report keys, file and plots, from its sequences and the run's report so far:
measured figures (figures.generation), the planner's prediction of them beside, tokens_match
against the whole model's greedy decode."""

from __future__ import annotations

from pathlib import Path

from orchestrator.config import Testbed
from orchestrator.figures.generation import generation_figures, write_generations
from orchestrator.generation.records import SequenceRun
from orchestrator.generation.run_steps import GenerationRun
from orchestrator.partition.decode import decode_prediction
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
    """`task`, the figures of DESIGN's "Generation", and `predicted_generation`: the plan's TPOT and
    tokens/s with the job's sequences in flight (partition.decode, the figures the planner weighs),
    and the error of each against the measured mean."""
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
    tpot_s, tokens_s = decode_prediction(plan.predicted, gen.setup.sequences)
    measured_tpot = (figs["tpot_ms"] or {}).get("mean")
    measured_tokens = (figs["tokens_per_s"] or {}).get("total")
    predicted = {
        "tpot_ms": round(tpot_s * 1e3, 3) if tpot_s is not None else None,
        "tokens_per_s": round(tokens_s, 3) if tokens_s is not None else None,
        "tpot_error_pct": _err_pct(tpot_s * 1e3 if tpot_s is not None else None, measured_tpot),
        "tokens_per_s_error_pct": _err_pct(tokens_s, measured_tokens),
    }
    return {"task": "generate", **figs, "predicted_generation": predicted}


def generation_plots(run_dir: Path, sequences: list[SequenceRun], rep: dict) -> list[str]:
    """tokens/s over time and the per-token breakdown, paths relative to the run folder."""
    out = run_dir / "plots"
    out.mkdir(parents=True, exist_ok=True)
    paths = [tokens_over_time(out / "tokens_per_s.png", sequences), token_breakdown(out / "token_breakdown.png", rep)]
    return [str(p.relative_to(run_dir)) for p in paths]
